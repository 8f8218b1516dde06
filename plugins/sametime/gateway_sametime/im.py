"""The IM service: messages and typing from a client, and the events delivered to it over IM channels."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from gateway.plugin import ChatEvent, FileOffer, Message, Presence, Typing

from gateway_sametime import adapter, codec
from gateway_sametime.common import ACTIVE, CLOSED, PENDING_LIMIT, SERVER_CHANNEL, Channel, ChannelGone

# Outcome codes of the gateway -> the Meanwhile error a client is shown.
OUTCOME_ERRORS = {
    "policy": codec.ERR_NOT_AUTHORIZED,
    "unknown-recipient": codec.ERR_NO_USER,
    "offline-full": codec.ERR_STARVING,
    "archive-unavailable": codec.ERR_SERVER_BROKEN,
}


class ImService:
    """The `SametimeServerProtocol`'s IM service (a mixin: its state is the protocol's)."""

    # -- IM ------------------------------------------------------------------

    def _im_data(self, channel, send_type, data):
        if send_type != codec.IM_MESSAGE:
            self.log.info(
                "sametime: IM message type 0x{t:04x} from {user} ignored", t=send_type, user=self.user_id
            )
            return
        capturing = self.api.capturing
        if capturing:
            channel.captured.append(data)
        incoming = channel.assembler.feed(codec.decode_im(data))
        if incoming is None:
            return
        parts, channel.captured = channel.captured, []
        if incoming.kind == "typing":
            self.api.submit(self.api.typing(self.address, channel.peer, incoming.active), origin=self.connector)
        elif incoming.kind == "message" and (incoming.text or incoming.html):
            if len(incoming.text.encode("utf-8")) > self.settings.max_message:
                raise codec.CodecError(f"message over {self.settings.max_message} bytes")
            event = self.api.message(self.address, channel.peer, incoming.text, html=incoming.html)
            if capturing:
                # The IM service's data as the client sent it, decrypted if the channel is encrypted.
                self.api.capture(event.id, "received", self.address.network, b"".join(parts),
                                 ("decrypted",) if channel.incoming is not None else ())
            d = self.api.submit(event, origin=self.connector)
            d.addCallback(self._im_outcome, channel)

    def _im_outcome(self, outcome, channel):
        if not outcome.rejected or self.state == CLOSED:
            return outcome
        code = OUTCOME_ERRORS.get(outcome.code, codec.ERR_FAILURE)
        if self.channels.get(channel.id) is channel:
            why = f"message to {channel.peer} rejected ({outcome.code}): {outcome.reason}"
            self.destroy_channel(channel.id, code, why)
        return outcome

    def deliver(self, event):
        """Show a gateway event to this client; a Deferred when it must wait for a channel."""
        if self.state != ACTIVE:
            if isinstance(event, Message):
                raise ChannelGone(f"session of {self.user_id} is {self.state}")
            return None
        user = adapter.user_id_of(event.sender)
        if isinstance(event, Presence):
            return self._presence(user, event)
        if isinstance(event, Message):
            channel = self.im_by_peer.get(user.lower())
            payloads = None
            if channel is None:
                channel = self._open_im(user, event.sender)
            rich = channel.features == codec.IM_CLIENT_NOTESBUDDY
            payloads = adapter.im_payloads(event.text, event.html, rich)
            if self.api.capturing:
                # The IM service's data before the channel's encryption.
                self.api.capture(event.id, "sent", self.address.network, b"".join(payloads),
                                 ["html-dropped"] if event.html and not rich else [])
            return self._queue(channel, payloads)
        if isinstance(event, Typing):
            channel = self.im_by_peer.get(user.lower())
            if channel is not None and channel.open:
                self._channel_send(channel, codec.IM_MESSAGE, adapter.typing_payload(event.active))
            return None
        if isinstance(event, ChatEvent) and event.action != "invite":
            return self.deliver_conference(event)  # gateway_sametime.conference
        if isinstance(event, (FileOffer, ChatEvent)):
            # Shown as a notice in an IM channel: Sametime clients here take no relayed offers or invitations.
            if isinstance(event, FileOffer):
                notice = f"{event.sender} offers a file: {event.summary()}"
                if not event.url:
                    notice += " (it cannot be transferred to this network)"
            else:
                notice = f"[{event.room}] {event.text}"
            channel = self.im_by_peer.get(user.lower()) or self._open_im(user, event.sender)
            return self._queue(channel, adapter.im_payloads(notice, None, False))
        # Delivered means shown: a kind this client cannot be shown is not delivered.
        raise ChannelGone(f"a Sametime client cannot be shown a {event.kind} event")

    def _queue(self, channel, payloads):
        if channel.open:
            for payload in payloads:
                self._channel_send(channel, codec.IM_MESSAGE, payload)
            return None
        if len(channel.pending) + len(payloads) > PENDING_LIMIT:
            raise ChannelGone(
                f"{len(channel.pending)} messages already wait for {self.user_id} to accept a channel"
            )
        d = Deferred()
        for payload in payloads[:-1]:
            channel.pending.append((codec.IM_MESSAGE, payload, None))
        channel.pending.append((codec.IM_MESSAGE, payloads[-1], d))
        return d

    def _open_im(self, user, sender):
        """Open a server-created IM channel to the client on behalf of ``sender``."""
        if len(self.channels) >= self.settings.max_channels:
            raise ChannelGone(f"{self.user_id} has {len(self.channels)} channels open")
        self._server_ids += 1
        cid = SERVER_CHANNEL | self._server_ids
        channel = Channel(cid, codec.SERVICE_IM, codec.SERVICE_IM, 3, server_created=True)
        channel.peer, channel.peer_user, channel.shown = sender, user, user.lower()
        channel.assembler = adapter.ImAssembler(self.settings.max_message)
        features = codec.IM_CLIENT_NOTESBUDDY if (
            self.settings.rich_text and self.client_features == codec.IM_CLIENT_NOTESBUDDY
        ) else codec.IM_CLIENT_PLAIN
        creator = self.peer_login(user, str(sender) if sender.network != adapter.NETWORK else user)
        offer = codec.EncryptOffer()
        if self.settings.cipher_ids:
            channel.offer_keypair = self._channel_keys()
            channel.offer_login = creator
            items = []
            for cipher in self.settings.cipher_ids:
                info = channel.offer_keypair.public_bytes if cipher == codec.CIPHER_RC2_128 else b""
                items.append(codec.EncryptItem(cipher, info))
            # With "whatever" Meanwhile picks any; naming our first choice makes it pick that one.
            first = self.settings.cipher_ids[0]
            mode = codec.ENCRYPT_RC2_128 if first == codec.CIPHER_RC2_128 else codec.ENCRYPT_RC2_40
            offer = codec.EncryptOffer(mode, tuple(items))
        self.channels[cid] = channel
        self.im_by_peer[user.lower()] = channel
        channel.timer = self.clock.callLater(self.settings.accept_timeout, self._accept_timeout, channel)
        self.send(codec.ChannelCreate(
            cid, codec.IdBlock(self.user_id, self.settings.community), codec.SERVICE_IM, codec.SERVICE_IM, 3,
            codec.ImAddtl(features).encode(), creator, offer,
        ))
        return channel

    def _accept_timeout(self, channel):
        channel.timer = None
        if self.channels.get(channel.id) is channel and not channel.open:
            why = f"client did not accept within {self.settings.accept_timeout:g}s"
            self.destroy_channel(channel.id, codec.ERR_FAILURE, why)
