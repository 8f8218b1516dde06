"""A small Sametime client model for the tests: drives the server protocol over StringTransport."""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway_sametime import codec, crypto
from gateway_sametime.protocol import SametimeServerProtocol


class _Transport(StringTransport):
    """StringTransport that tells its client about each write (for clients that answer at once)."""

    client = None

    def write(self, data):
        super().write(data)
        if self.client is not None and self.client.auto_accept:
            self.client.answer()


def seeded(seed=1):
    """A deterministic ``random_bytes`` for the server under test."""
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


class Client:
    """
    A client as libpurple behaves, reduced to what the tests need: login,
    channels (accepting the server's, with or without a cipher), IM, AWARE,
    STORAGE and RESOLVE payloads. ``inbox`` collects decoded server messages.
    """

    def __init__(self, connector, seed=1, port=40000, auto_accept=False):
        self.auto_accept = auto_accept
        self._answering = False
        self.protocol = SametimeServerProtocol(connector, random_bytes=seeded(seed))
        self.transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.transport.client = self
        self.protocol.makeConnection(self.transport)
        self.inbox = []
        self.channels = {}  # id -> dict(service, peer, cipher streams)
        self.login_id = None
        self.next_channel = 0
        self.keypair = crypto.DHKeypair(private=0x1234567890ABCDEF ^ seed)
        self.accept_cipher = None  # cipher id to pick from the server's offers

    # -- wire ---------------------------------------------------------------

    def answer(self):
        """Accept every IM channel the server opened (as libpurple does), right away."""
        if self._answering:
            return
        self._answering = True
        try:
            self.read()
            for cid, channel in list(self.channels.items()):
                if cid & 0x80000000 and not channel["open"] and "destroyed" not in channel:
                    self.accept(cid)
        finally:
            self._answering = False

    def send(self, message):
        self.protocol.dataReceived(codec.frame(message))

    def read(self):
        """Decode everything the server wrote since the last call; append it to ``inbox``; return it."""
        data = self.transport.value()
        self.transport.clear()
        payloads, rest, _ = codec.split_frames(data, 1 << 24)
        assert rest == b"", rest
        out = [codec.decode(p) for p in payloads]
        for message in out:
            self._track(message)
        self.inbox.extend(out)
        return out

    def _track(self, message):
        if isinstance(message, codec.LoginAck):
            self.login_id = message.login.login_id
        elif isinstance(message, codec.ChannelCreate):
            peer = message.creator.user_id if message.creator else message.target.user
            self.channels[message.id] = {"service": message.service, "peer": peer,
                                         "creator": message.creator, "offer": message.encrypt, "open": False}
        elif isinstance(message, codec.ChannelAccept) and message.channel in self.channels:
            self.channels[message.channel]["open"] = True
            self.channels[message.channel]["acceptor"] = message.acceptor
            item = message.encrypt.item
            if item is not None:
                self._key(message.channel, item.cipher, item.info, message.acceptor)
        elif isinstance(message, codec.ChannelDestroy) and message.channel in self.channels:
            self.channels[message.channel]["open"] = False
            self.channels[message.channel]["destroyed"] = message.reason

    def _key(self, cid, cipher, info, peer_login):
        channel = self.channels[cid]
        if cipher == codec.CIPHER_RC2_128:
            key = self.keypair.rc2_key(info)
            channel["out"], channel["in"] = crypto.Rc2Stream(key), crypto.Rc2Stream(key)
        else:
            channel["out"] = crypto.Rc2Stream(crypto.rc2_40_key(self.login_id))
            channel["in"] = crypto.Rc2Stream(crypto.rc2_40_key(peer_login.login_id))
        channel["cipher"] = cipher

    def of(self, kind):
        return [m for m in self.inbox if isinstance(m, kind)]

    # -- session ----------------------------------------------------------

    def login(self, user, password="secret", auth=None):
        self.send(codec.Handshake())
        self.read()
        ack = self.of(codec.HandshakeAck)[-1]
        if auth is None:
            # A server that sends a Diffie-Hellman key takes RC2/128 (the key is
            # its shortest big-endian form: 63 bytes or fewer once in 256 times).
            auth = codec.AUTH_RC2_128 if ack.key else codec.AUTH_RC2_40
        if auth == codec.AUTH_RC2_128:
            data = crypto.compose_auth_rc2_128(password, ack.magic, ack.key, self.keypair)
        elif auth == codec.AUTH_RC2_40:
            data = crypto.compose_auth_rc2_40(password, b"\x11\x22\x33\x44\x55")
        else:
            data = password.encode()
        start = len(self.inbox)
        self.send(codec.Login(0x1700, user, data, auth))
        self.read()
        return self.inbox[start:]

    def open_channel(self, service, proto_type, proto_ver, target="", addtl=b"", offer=codec.EncryptOffer()):
        self.next_channel += 1
        cid = self.next_channel
        self.channels[cid] = {"service": service, "peer": target, "open": False}
        self.send(codec.ChannelCreate(cid, codec.IdBlock(target), service, proto_type, proto_ver, addtl, None, offer))
        self.read()
        return cid

    def open_im(self, peer, features=codec.IM_CLIENT_PLAIN, ciphers=()):
        offer = codec.EncryptOffer()
        if ciphers:
            items = []
            for cipher in ciphers:
                info = self.keypair.public_bytes if cipher == codec.CIPHER_RC2_128 else b""
                items.append(codec.EncryptItem(cipher, info))
            offer = codec.EncryptOffer(codec.ENCRYPT_WHATEVER, tuple(items))
        return self.open_channel(codec.SERVICE_IM, 0x1000, 3, peer, codec.ImAddtl(features).encode(), offer)

    def accept(self, cid, features=codec.IM_CLIENT_PLAIN):
        channel = self.channels[cid]
        reply = codec.EncryptAccept()
        offer = channel["offer"]
        chosen = [i for i in offer.items if i.cipher == self.accept_cipher]
        if chosen:
            item = chosen[0]
            info = self.keypair.public_bytes if item.cipher == codec.CIPHER_RC2_128 else b""
            reply = codec.EncryptAccept(offer.mode, codec.EncryptItem(item.cipher, info))
            self._key(cid, item.cipher, item.info, channel["creator"])
        addtl = codec.ImAddtl(features, 1, codec.UserStatus()).encode()
        self.send(codec.ChannelAccept(codec.SERVICE_IM, 0x1000, 3, addtl, None, reply, channel=cid))
        channel["open"] = True
        return self.read()

    def channel_send(self, cid, send_type, data):
        channel = self.channels[cid]
        if "out" in channel:
            self.send(codec.ChannelSend(send_type, channel["out"].encrypt(data), True, channel=cid))
        else:
            self.send(codec.ChannelSend(send_type, data, channel=cid))
        return self.read()

    def say(self, cid, text):
        return self.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(codec.ImText(text)))

    def payloads(self, cid, send_type=None):
        """Decrypted CHANNEL_SEND payloads received on ``cid`` (in order), as (type, data)."""
        self.read()
        out = []
        channel = self.channels.get(cid, {})
        for message in self.inbox:
            if isinstance(message, codec.ChannelSend) and message.channel == cid:
                if "seen" not in channel:
                    channel["seen"] = {}
                if id(message) not in channel["seen"]:
                    data = message.data
                    if message.encrypted:
                        data = channel["in"].decrypt(data)
                    channel["seen"][id(message)] = data
                data = channel["seen"][id(message)]
                if send_type is None or message.type == send_type:
                    out.append((message.type, data))
        return out

    def texts(self):
        """Every IM text shown to this client, on any channel, as (peer, text)."""
        out = []
        for cid, channel in self.channels.items():
            if channel["service"] != codec.SERVICE_IM:
                continue
            for send_type, data in self.payloads(cid, codec.IM_MESSAGE):
                im = codec.decode_im(data)
                if isinstance(im, codec.ImText):
                    out.append((channel["peer"], im.text))
        return out
