"""The Sametime server side of one client connection: a Twisted Protocol and its state machine."""

from __future__ import annotations

import os
import struct
from typing import Optional

from twisted.internet import protocol
from twisted.logger import Logger

from gateway.plugin import Address, AddressError, DirectoryUnavailable, LoginThrottled

from gateway_sametime import adapter, codec, crypto
from gateway_sametime.buddies import BuddyServices
from gateway_sametime.conference import Conferences
from gateway_sametime.common import (
    ACTIVE, AUTHENTICATING, CLOSED, HANDSHAKE, LOGIN, PENDING_LIMIT, REDIRECTED, SERVER_CHANNEL, Channel,
    ChannelGone,
)
from gateway_sametime.files import FileService
from gateway_sametime.im import OUTCOME_ERRORS, ImService

__all__ = [
    "SametimeServerProtocol", "Channel", "ChannelGone", "SERVICES", "OUTCOME_ERRORS", "AUTH_NAMES",
    "CIPHER_NAMES", "SERVER_CHANNEL", "PENDING_LIMIT",
    "HANDSHAKE", "LOGIN", "AUTHENTICATING", "REDIRECTED", "ACTIVE", "CLOSED",
]

# The services this server offers, with the proto type / version it answers.
SERVICES = {
    codec.SERVICE_AWARE: "aware",
    codec.SERVICE_RESOLVE: "resolve",
    codec.SERVICE_STORAGE: "storage",
    codec.SERVICE_IM: "im",
    codec.SERVICE_FILE: "file",
    codec.SERVICE_CONFERENCE: "conf",
}

AUTH_NAMES = {codec.AUTH_PLAIN: "plain", codec.AUTH_RC2_40: "RC2/40", codec.AUTH_RC2_128: "DH + RC2/128"}
CIPHER_NAMES = {None: "none", codec.CIPHER_RC2_40: "RC2/40", codec.CIPHER_RC2_128: "RC2/128"}


class SametimeServerProtocol(ImService, FileService, BuddyServices, Conferences, protocol.Protocol):
    """
    One client connection. States: handshake -> login -> authenticating
    [-> redirected] -> active -> closed. Bad input closes this connection
    (or only the channel it concerns) with a Meanwhile error code and a log
    line; nothing raises out of ``dataReceived``.
    """

    log = Logger(namespace="gateway.sametime")

    def __init__(self, connector, random_bytes=os.urandom):
        self.connector = connector
        self.api = connector.api
        self.clock = connector.api.clock
        self.settings = connector.settings
        self._random = random_bytes
        self.state = HANDSHAKE
        self.session = None
        self.identity = None
        self.address: Optional[Address] = None
        self.user_id = ""
        self.login_info: Optional[codec.LoginInfo] = None
        self.channels = {}
        self.im_by_peer = {}
        self.conferences = {}  # room -> gateway_sametime.conference.ConferenceLink
        self.aware_channel: Optional[Channel] = None
        self.watched = set()
        self.client_features = codec.IM_CLIENT_PLAIN
        self._buffer = b""
        self._keypair = None
        self._channel_keypair = None
        self._magic = 0
        self._ack = None
        self._pending_login = None
        self._server_ids = 0
        self._window_start = 0.0
        self._in_window = 0
        self._idle = None
        self._login_timer = None
        self.peer = "?"
        self.host = None
        self.auth_type = None
        self._pending_status = None

    # -- connection ------------------------------------------------------

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass
        peer = self.transport.getPeer()
        self.peer = str(peer)
        self.host = getattr(peer, "host", None)
        self._idle = self.clock.callLater(self.settings.idle_timeout, self._idle_timeout)
        self._login_timer = self.clock.callLater(self.settings.login_timeout, self._login_timeout)

    def dataReceived(self, data):
        if self.state == CLOSED:
            return
        try:
            self._touch()
            self._buffer += data
            payloads, self._buffer, keepalives = codec.split_frames(self._buffer, self.settings.max_frame)
            if keepalives and self.settings.trace:
                self.log.debug("sametime: {user} -> keepalive", user=self.user_id or self.peer)
            for payload in payloads:
                if self.state == CLOSED:
                    return
                if not self._rate_ok():
                    self.protocol_error(codec.ERR_STARVING, f"more than {self.settings.rate} messages a second")
                    return
                self._handle_payload(payload)
        except codec.CodecError as e:
            self.protocol_error(codec.ERR_FAT_MESSAGE, str(e))
        except Exception:
            self.log.failure("sametime: internal error on {peer}", peer=self.peer, user=self.user_id)
            self.protocol_error(codec.ERR_FAILURE, "internal error")

    def _handle_payload(self, payload):
        try:
            message = codec.decode(payload)
        except codec.UnknownMessage as e:
            self.protocol_error(codec.ERR_REQUEST_INVALID, str(e))
            return
        except codec.CodecError as e:
            self.protocol_error(codec.ERR_BAD_DATA, f"malformed message: {e}")
            return
        if self.settings.trace:
            self.log.debug("sametime: {user} -> {message!r}", user=self.user_id or self.peer, message=message)
        handler = getattr(self, f"_on_{type(message).__name__}_{self.state}", None)
        if handler is None:
            handler = getattr(self, f"_on_{type(message).__name__}", None)
            if handler is None or self.state != ACTIVE:
                self.protocol_error(
                    codec.ERR_REQUEST_INVALID if self.state == ACTIVE else codec.ERR_NOT_LOGGED_IN,
                    f"{type(message).__name__} not expected in state {self.state}",
                )
                return
        handler(message)

    def _rate_ok(self):
        now = self.clock.seconds()
        if now - self._window_start >= 1.0:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        return self._in_window <= self.settings.rate

    def _touch(self):
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.settings.idle_timeout)

    def _idle_timeout(self):
        self._idle = None
        why = f"nothing received for {self.settings.idle_timeout:g}s"
        self.protocol_error(codec.ERR_USER_TOO_IDLE, why, level="info")

    def _login_timeout(self):
        self._login_timer = None
        if self.state != ACTIVE:
            self.protocol_error(codec.ERR_NOT_LOGGED_IN, f"not logged in within {self.settings.login_timeout:g}s")

    def send(self, message):
        if self.state != CLOSED or isinstance(message, codec.ChannelDestroy):
            if self.settings.trace:
                self.log.debug("sametime: {user} <- {message!r}", user=self.user_id or self.peer, message=message)
            self.transport.write(codec.frame(message))

    def protocol_error(self, code, why, level="warn"):
        """End this session: CHANNEL_DESTROY on channel 0 with ``code``, a log line, close."""
        if self.state == CLOSED:
            return
        getattr(self.log, level)(
            "sametime: closing {peer} ({user}): {why} (0x{code:08x})",
            peer=self.peer, user=self.user_id or "-", why=why, code=code, state=self.state,
        )
        self.send(codec.ChannelDestroy(code, channel=0))
        self.close()

    def close(self):
        """Stop taking input, log the session out and close the connection."""
        if self.state != CLOSED:
            self.state = CLOSED
            self._end()
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.state = CLOSED
        self._end()

    def _end(self):
        for timer in (self._idle, self._login_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._login_timer = None
        for channel in list(self.channels.values()):
            self._drop_channel(channel, "the session ended")
        self.channels.clear()
        if self.session is not None:
            session, self.session = self.session, None
            self.connector.sessions.discard(session)
            self.api.logout(session)

    # -- handshake and login ---------------------------------------------

    def _on_Handshake_handshake(self, message):
        if message.channel != 0:
            self.protocol_error(codec.ERR_REQUEST_INVALID, "handshake on a channel other than 0")
            return
        self._magic = struct.unpack(">I", self._random(4))[0]
        key = b""
        if self.settings.login_cipher == "dh":
            self._keypair = crypto.DHKeypair(random_bytes=self._random)
            key = self._keypair.public_bytes
        self._ack = codec.HandshakeAck(0x001E, 0x001D, 0, self._magic, key)
        self.send(self._ack)
        self.state = LOGIN

    def _on_Login_login(self, message):
        self.state = AUTHENTICATING
        self.user_id = message.user_id
        allowed = self.settings.auth_types
        if message.auth_type not in allowed:
            name = AUTH_NAMES.get(message.auth_type, f"0x{message.auth_type:04x}")
            why = f"{name} login is not allowed here" + (
                " (weak: its key travels with it; allow_weak_login)" if message.auth_type == codec.AUTH_RC2_40 else "")
            self._refuse_login(why, codec.ERR_ENCRYPT_NO_SUPPORT)
            return
        try:
            address = adapter.address_of(message.user_id)
            if address.network != adapter.NETWORK:
                raise AddressError("not a Sametime user id")
            password = crypto.login_password(message.auth_type, message.auth_data, self._keypair, self._magic)
        except (AddressError, codec.CodecError, crypto.CryptoError) as e:
            self._refuse_login(f"unreadable login: {e}")
            return
        self.auth_type = message.auth_type
        d = self.api.authenticate(address, password, source=self.host)
        d.addCallback(self._authenticated, address, message)
        d.addErrback(self._login_unavailable)
        d.addErrback(self._internal, "login")

    def _login_unavailable(self, failure):
        """The directory is down or this login is throttled: "try again later" in Meanwhile's terms."""
        failure.trap(DirectoryUnavailable, LoginThrottled)
        code = codec.ERR_VERIFICATION_DOWN if failure.check(DirectoryUnavailable) else codec.ERR_SERVER_BUSY
        self._refuse_login(failure.getErrorMessage(), code)

    def _refuse_login(self, why, code=codec.ERR_INCORRECT_LOGIN, counted=False):
        self.log.info(
            "sametime: login of {user} from {peer} refused: {why}", user=self.user_id, peer=self.peer, why=why
        )
        if not counted and self.user_id:
            # authenticate archived wrong passwords itself; the rest is archived here.
            self.api.audit(f"{adapter.NETWORK}:{self.user_id}", "login-failed", self.host,
                           connector=self.connector.name, reason=why)
        self.send(codec.ChannelDestroy(code, channel=0))
        self.close()

    def _authenticated(self, identity, address, message):
        if self.state == CLOSED:
            return
        if identity is None:
            self._refuse_login("wrong user id or password", counted=True)
            return
        self.identity, self.address = identity, address
        host = self.settings.redirect_host or self._placement()
        if host:
            self._pending_login = message
            self.state = REDIRECTED
            self.log.info("sametime: redirecting {user} to {host}", user=self.user_id, host=host)
            self.send(codec.LoginRedirect(host, self.settings.redirect_server_id))
            return
        self._complete_login(message)

    def _placement(self):
        """
        In a cluster, the host of the node this login should go to (None:
        here). LOGIN_REDIRECT names a host only, and the client connects
        to it on the port it used here: a node listening on another port
        cannot be sent to.
        """
        target = self.connector.api.placement(adapter.NETWORK)
        if not target:
            return None
        host, _, port = target.rpartition(":")
        here = getattr(self.transport.getHost(), "port", None)
        if not port.isdigit() or int(port) != here:
            self.connector.cannot_redirect(target, here)
            return None
        return host[1:-1] if host.startswith("[") else host

    def _on_LoginContinue_redirected(self, message):
        # The client stays (force_login): the handshake ack moves it back to its login state.
        self.send(self._ack)
        self._complete_login(self._pending_login)

    def _complete_login(self, message):
        identity = self.identity
        self.login_info = codec.LoginInfo(
            self.connector.new_login_id(),
            message.login_type,
            self.user_id,
            identity.display_name or self.user_id,
            self.settings.community,
        )
        privacy = self.connector.privacy.get(identity.id, codec.PrivacyInfo(True, ()))
        self.send(codec.LoginAck(self.login_info, privacy, codec.UserStatus(codec.STATUS_ACTIVE, 0, "")))
        self.state = ACTIVE
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        self.log.info(
            "sametime: {user} logged in from {peer} ({auth})",
            user=self.user_id, peer=self.peer, identity=identity.id, auth=AUTH_NAMES.get(self.auth_type, "?"),
        )
        d = self.api.login(identity, self.address, self.connector.name, handler=self, source=self.host)
        d.addCallback(self._logged_in)
        d.addErrback(self._internal, "login")

    def _logged_in(self, session):
        if self.state == CLOSED:
            self.api.logout(session)
            return
        self.session = session
        self.connector.sessions.add(session)
        status, self._pending_status = self._pending_status, None
        if status is not None and adapter.presence_status(status.status) != session.status:
            self.api.set_presence(session, adapter.presence_status(status.status), status.desc)

    def _internal(self, failure, what):
        self.log.failure("sametime: {what} failed for {user}", failure, what=what, user=self.user_id)
        self.protocol_error(codec.ERR_FAILURE, f"{what} failed")

    # -- master channel messages ------------------------------------------

    def _on_ChannelDestroy(self, message):
        if message.channel == 0:
            self.log.info("sametime: {user} logged out", user=self.user_id, reason=message.reason)
            self.close()
            return
        channel = self.channels.pop(message.channel, None)
        if channel is not None:
            self._drop_channel(channel, f"the client closed it (0x{message.reason:08x})")
            self.conf_closed(channel)

    def _on_SetUserStatus(self, message):
        status = message.status
        self.send(codec.SetUserStatus(status))
        if self.session is None:  # still being registered: applied once it is
            self._pending_status = status
            return
        self.api.set_presence(self.session, adapter.presence_status(status.status), status.desc)

    def _on_SetPrivacyList(self, message):
        self.connector.set_privacy(self.identity.id, message.privacy)
        self.send(codec.SetPrivacyList(message.privacy))

    def _on_SenseService(self, message):
        if message.service in SERVICES:
            self.send(codec.SenseService(message.service))
        else:
            self.log.info("sametime: {user} asked for service 0x{service:08x}, which is not offered",
                          user=self.user_id, service=message.service)

    def _on_Admin(self, message):
        self.log.info("sametime: ignoring an ADMIN message from {user}", user=self.user_id)

    def _on_Announce(self, message):
        """An announcement to several users: one message to each, through the path (no replies expected)."""
        if len(message.recipients) > self.settings.max_watched:
            self.protocol_error(codec.ERR_REQUEST_INVALID, f"announcement to {len(message.recipients)} users")
            return
        if len(message.text.encode("utf-8")) > self.settings.max_message:
            self.protocol_error(codec.ERR_FAT_MESSAGE, "announcement text over the message limit")
            return
        for name in message.recipients:
            kind, _, user = name.partition(" ")
            recipient = adapter.safe_address(user) if kind == "@U" else None
            if recipient is None:
                self.log.info("sametime: announcement of {user} to {to!r} skipped: only \"@U user\" is served",
                              user=self.user_id, to=name)
                continue
            d = self.api.submit(self.api.message(self.address, recipient, message.text), origin=self.connector)
            d.addCallback(self._announce_outcome, recipient)

    def _announce_outcome(self, outcome, recipient):
        if outcome.rejected:
            self.log.info(
                "sametime: announcement of {user} to {to} rejected ({code}): {why}",
                user=self.user_id, to=str(recipient), code=outcome.code, why=outcome.reason,
            )

    # -- channels ----------------------------------------------------------

    def destroy_channel(self, channel_id, code, why, level="info"):
        """Close one channel with ``code``; the session goes on."""
        getattr(self.log, level)(
            "sametime: closing channel 0x{channel:08x} of {user}: {why} (0x{code:08x})",
            channel=channel_id, user=self.user_id, why=why, code=code,
        )
        channel = self.channels.pop(channel_id, None)
        if channel is not None:
            self._drop_channel(channel, why)
        self.send(codec.ChannelDestroy(code, channel=channel_id))

    def _drop_channel(self, channel, why):
        if channel.timer is not None and channel.timer.active():
            channel.timer.cancel()
        channel.timer = None
        if self.im_by_peer.get(channel.shown) is channel:
            del self.im_by_peer[channel.shown]
        if self.aware_channel is channel:
            self.aware_channel = None
        pending, channel.pending = channel.pending, []
        for _, _, d in pending:
            if d is not None and not d.called:
                d.errback(ChannelGone(f"channel to {channel.peer_user} closed before delivery: {why}"))

    def _on_ChannelCreate(self, message):
        cid = message.id
        if message.channel != 0 or cid == 0 or cid & SERVER_CHANNEL or cid in self.channels:
            self.destroy_channel(cid, codec.ERR_CHANNEL_EXISTS, "bad or duplicate channel id", "warn")
            return
        if len(self.channels) >= self.settings.max_channels:
            self.send(codec.ChannelDestroy(codec.ERR_STARVING, channel=cid))
            self.log.warn(
                "sametime: {user} has {n} channels, refusing another", user=self.user_id, n=len(self.channels)
            )
            return
        service = SERVICES.get(message.service)
        if service is None:
            self.log.info("sametime: {user} asked for service 0x{service:08x}: not supported",
                          user=self.user_id, service=message.service)
            self.send(codec.ChannelDestroy(codec.ERR_SERVICE_NO_SUPPORT, channel=cid))
            return
        channel = Channel(cid, message.service, message.proto_type, message.proto_ver)
        self.channels[cid] = channel
        if service == "im":
            self._create_im(channel, message)
            return
        if service == "file":
            self._create_file(channel, message)
            return
        if service == "conf":
            self._create_conf(channel, message)  # gateway_sametime.conference: the join
            return
        if service == "aware":
            self.aware_channel = channel
        self._accept(channel, b"", None, codec.EncryptAccept())

    def _accept(self, channel, addtl, acceptor, encrypt):
        channel.open = True
        self.send(codec.ChannelAccept(
            channel.service, channel.proto_type, channel.proto_ver, addtl, acceptor, encrypt, channel=channel.id,
        ))

    def _create_im(self, channel, message):
        try:
            addtl = codec.ImAddtl.decode(message.addtl)
        except codec.CodecError as e:
            self.destroy_channel(channel.id, codec.ERR_BAD_DATA, f"bad IM channel parameters: {e}", "warn")
            return
        if addtl.kind != 1:
            self.destroy_channel(channel.id, codec.ERR_SERVICE_NO_SUPPORT, f"IM channel kind {addtl.kind}")
            return
        peer = adapter.safe_address(message.target.user)
        if peer is None:
            self.destroy_channel(channel.id, codec.ERR_NO_USER, f"no such user {message.target.user!r}")
            return
        if addtl.features == codec.IM_CLIENT_NOTESBUDDY:
            self.client_features = addtl.features
        rich = self.settings.rich_text and addtl.features == codec.IM_CLIENT_NOTESBUDDY
        channel.features = codec.IM_CLIENT_NOTESBUDDY if rich else codec.IM_CLIENT_PLAIN
        channel.peer, channel.peer_user = peer, message.target.user
        channel.assembler = adapter.ImAssembler(self.settings.max_message)
        d = self.connector.known(peer)
        d.addCallback(self._im_target_known, channel, message)
        d.addErrback(self._internal, "IM channel")

    def _im_target_known(self, display, channel, message):
        if self.channels.get(channel.id) is not channel:
            return None
        if display is None:
            self.destroy_channel(channel.id, codec.ERR_NO_USER, f"no such user {channel.peer_user!r}")
            return None
        # Replies arrive from the peer's Sametime handle or alias: key the channel by that.
        return self.connector.shown_as(channel.peer).addCallback(self._im_target_shown, display, channel, message)

    def _im_target_shown(self, shown, display, channel, message):
        if self.channels.get(channel.id) is not channel:
            return
        try:
            encrypt = self._choose_cipher(channel, message.encrypt, self.peer_login(channel.peer_user, display))
        except crypto.CryptoError as e:
            self.destroy_channel(channel.id, codec.ERR_ENCRYPT_INVALID, str(e), "warn")
            return
        addtl = codec.ImAddtl(channel.features, 1, codec.UserStatus(codec.STATUS_ACTIVE)).encode()
        self._accept(channel, addtl, self.peer_login(channel.peer_user, display), encrypt)
        channel.shown = shown.lower()
        self.im_by_peer[channel.shown] = channel
        self._log_im_channel(channel, "client")

    def _log_im_channel(self, channel, opener):
        self.log.info(
            "sametime: IM channel 0x{channel:08x} {user} <-> {peer} open ({opener}-created, cipher {cipher})",
            channel=channel.id, user=self.user_id, peer=str(channel.peer), opener=opener,
            cipher=CIPHER_NAMES.get(channel.cipher, "?"),
        )

    def peer_login(self, user, display=""):
        """The login info shown for someone a client talks to through the gateway."""
        login_id = f"{user}:{self.api.node or 'gateway'}"
        return codec.LoginInfo(login_id, 0x1700, user, display or user, self.settings.community)

    def _choose_cipher(self, channel, offer, peer_login):
        """Pick a cipher from a client's offer and set up the channel's streams; the accept to send."""
        by_id = {item.cipher: item for item in offer.items}
        for cipher in self.settings.cipher_ids:
            item = by_id.get(cipher)
            if item is None or (cipher == codec.CIPHER_RC2_128 and not item.info):
                continue
            reply = self._start_cipher(channel, item, peer_login)
            return codec.EncryptAccept(offer.mode, reply, offer.extra, offer.flag)
        if offer.mode == codec.ENCRYPT_ALL or offer.mode in (codec.ENCRYPT_RC2_40, codec.ENCRYPT_RC2_128):
            raise crypto.CryptoError("the client insists on a cipher this server does not accept")
        return codec.EncryptAccept()

    def _start_cipher(self, channel, item, peer_login, keypair=None):
        """Key the channel's two RC2 streams for ``item`` (the peer's); the item to answer with."""
        if item.cipher == codec.CIPHER_RC2_128:
            keypair = keypair or self._channel_keys()
            key = keypair.rc2_key(item.info)
            channel.incoming, channel.outgoing = crypto.Rc2Stream(key), crypto.Rc2Stream(key)
            answer = codec.EncryptItem(codec.CIPHER_RC2_128, keypair.public_bytes)
        else:
            # Each side encrypts with the first five bytes of its own login id.
            channel.incoming = crypto.Rc2Stream(crypto.rc2_40_key(self.login_info.login_id))
            channel.outgoing = crypto.Rc2Stream(crypto.rc2_40_key(peer_login.login_id))
            answer = codec.EncryptItem(codec.CIPHER_RC2_40)
        channel.cipher = item.cipher
        return answer

    def _channel_keys(self):
        if self._channel_keypair is None:
            self._channel_keypair = crypto.DHKeypair(random_bytes=self._random)
        return self._channel_keypair

    def _on_ChannelAccept(self, message):
        channel = self.channels.get(message.channel)
        if channel is None or not channel.server_created or channel.open:
            why = "accept for no channel waiting for one"
            self.destroy_channel(message.channel, codec.ERR_REQUEST_INVALID, why, "warn")
            return
        if channel.timer is not None and channel.timer.active():
            channel.timer.cancel()
        channel.timer = None
        try:
            features = codec.ImAddtl.decode(message.addtl).features
        except codec.CodecError:
            features = codec.IM_CLIENT_PLAIN
        if not (self.settings.rich_text and features == codec.IM_CLIENT_NOTESBUDDY):
            features = codec.IM_CLIENT_PLAIN
        channel.features = features
        item = message.encrypt.item
        try:
            if item is not None and item.cipher in self.settings.cipher_ids and channel.offer_login is not None:
                self._start_cipher(channel, item, channel.offer_login, channel.offer_keypair)
            elif item is not None:
                raise crypto.CryptoError(f"cipher 0x{item.cipher:04x} was not offered")
        except crypto.CryptoError as e:
            self.destroy_channel(channel.id, codec.ERR_BAD_DATA, f"bad cipher in accept: {e}", "warn")
            return
        channel.open = True
        self._log_im_channel(channel, "server")
        pending, channel.pending = channel.pending, []
        for send_type, data, d in pending:
            self._channel_send(channel, send_type, data)
            if d is not None and not d.called:
                d.callback(None)

    def _on_ChannelSend(self, message):
        channel = self.channels.get(message.channel)
        if channel is None or not channel.open:
            why = "data on a channel that is not open"
            self.destroy_channel(message.channel, codec.ERR_REQUEST_INVALID, why, "warn")
            return
        data = message.data
        try:
            if message.encrypted:
                if channel.incoming is None:
                    raise crypto.CryptoError("encrypted data on a channel without a cipher")
                data = channel.incoming.decrypt(data)
            service = SERVICES[channel.service]
            getattr(self, f"_{service}_data")(channel, message.type, data)
        except (codec.CodecError, crypto.CryptoError) as e:
            why = f"bad {SERVICES[channel.service]} data: {e}"
            self.destroy_channel(channel.id, codec.ERR_BAD_DATA, why, "warn")

    def _channel_send(self, channel, send_type, data):
        if channel.outgoing is not None:
            self.send(codec.ChannelSend(send_type, channel.outgoing.encrypt(data), True, channel=channel.id))
        else:
            self.send(codec.ChannelSend(send_type, data, channel=channel.id))
