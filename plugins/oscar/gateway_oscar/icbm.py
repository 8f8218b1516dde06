"""ICBM (family 4) from the client, and the events the gateway delivers to it."""

from __future__ import annotations

import os

from gateway.plugin import AddressError, ChatEvent, FileOffer, Message, Presence, PresenceStatus, Typing

from gateway_oscar import adapter, codec
from gateway_oscar.codec import OscarCodecError, u16, u32

# How many ICBM cookies wait for their IM's delivery at most (the oldest are forgotten).
MAX_PENDING_COOKIES = 10000


class Icbm:
    """The `OscarServerProtocol`'s ICBM family and its deliveries (a mixin: its state is the protocol's)."""

    # -- family 4: ICBM -------------------------------------------------------------------

    def on_icbm_rights(self, snac):
        body = u16(2) + u32(0x0000000B) + u16(self.connector.max_message) + u16(999) + u16(999) + u32(0)
        self.send_snac(0x04, 0x05, body, snac.request_id)

    def on_icbm_send(self, snac):
        self.im_send(snac.body, 0, snac.request_id)

    def im_send(self, data, pos, request_id):
        """04/06 whose body starts at ``data[pos]``: submit the IM; the outcome becomes an ack or an error."""
        cookie, channel, name, tlv2, want_ack = codec.parse_im_send(data, pos)
        if channel != 1:
            self.other_channel(codec.parse_icbm_send(data[pos:] if pos else data), request_id, want_ack)
            return
        connector = self.connector
        try:
            recipient = connector.address_for(name, self.address.network)
        except AddressError:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        if tlv2 is None:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        text, html = adapter.im_text(tlv2)
        if len(text) > connector.max_message:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        event = self.api.message(self.address, recipient, text, html=html)
        if self.api.capturing:
            # The ICBM (SNAC 04/06 body) exactly as the client sent it.
            self.api.capture(event.id, "received", self.address.network, bytes(data[pos:]))
        cookies = connector.icbm_cookies
        cookies[event.id] = cookie
        if len(cookies) > MAX_PENDING_COOKIES:
            cookies.popitem(last=False)
        # submit never fails; _icbm_outcome catches its own errors, so one callback is all it takes.
        self.api.submit(event, origin=connector).addCallback(
            self._icbm_outcome, event.id, cookie, name, request_id, want_ack)

    def other_channel(self, icbm, request_id, want_ack):
        """ICBM channel 2 (rendezvous) goes to the connector's `Rendezvous`; others are refused and archived."""
        if icbm.channel == 2:
            self.connector.rendezvous.received(self, icbm, request_id, want_ack)
            return
        try:
            recipient = self.connector.address_for(icbm.screen_name, self.address.network)
        except AddressError:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        text = adapter.icq_message_text(icbm.tlv(0x0005)) if icbm.channel == 4 else ""
        self.api.refuse(self.api.message(self.address, recipient, text),
                        f"ICBM channel {icbm.channel} is not supported on this gateway", "unsupported")
        self.send_error(0x04, request_id, adapter.ERR_NOT_SUPPORTED)

    def _icbm_outcome(self, outcome, event_id, cookie, name, request_id, want_ack):
        try:
            if outcome.rejected:
                self.connector.icbm_cookies.pop(event_id, None)
                if self.state == "closed":
                    return
                self.log.info(
                    "oscar: IM from {who} to {to} rejected: {code} {reason}",
                    who=str(self.address), to=name.decode("latin-1"), code=outcome.code, reason=outcome.reason,
                )
                self.send_error(0x04, request_id, adapter.icbm_error_for(outcome.code))
            elif want_ack and self.state != "closed":
                self.send_snac(0x04, 0x0C, cookie + b"\x00\x01" + bytes((len(name),)) + name, request_id)
        except Exception:
            self.log.failure("oscar: IM outcome handling failed")

    def on_typing(self, snac):
        body = snac.body
        if len(body) < 11 or len(body) < 13 + body[10]:
            raise OscarCodecError(f"typing notification 04/14 of {len(body)} bytes is too short")
        end = 11 + body[10]
        name, kind = body[11:end], (body[end] << 8) | body[end + 1]
        try:
            recipient = self.connector.address_for(name, self.address.network)
        except AddressError:
            return
        self.api.submit(self.api.typing(self.address, recipient, kind == 0x0002), origin=self.connector)

    # -- from the gateway to the client ---------------------------------------------------------

    def deliver(self, event):
        if self.state != "bos":
            raise ConnectionError(f"OSCAR connection of {self.address} is closed")
        if isinstance(event, Message):
            self._deliver_message(event)
        elif isinstance(event, Presence):
            self._deliver_presence(event)
        elif isinstance(event, Typing):
            body = b"\x00" * 8 + u16(1) + self._name8(event.sender) + u16(2 if event.active else 0)
            self.send_snac(0x04, 0x14, body)
        elif isinstance(event, FileOffer):
            self.connector.rendezvous.deliver(self, event)
        elif isinstance(event, ChatEvent):
            self.deliver_chat(event)  # gateway_oscar.chat: on the room's connection (an invitation as an IM)

    def _name8(self, address):
        name = adapter.screen_name_of(address)[:255]
        return bytes((len(name),)) + name

    def _deliver_message(self, event):
        connector = self.connector
        cookie = connector.icbm_cookies.pop(event.id, None) or os.urandom(8)
        parts = [cookie, b"\x00\x01", connector.sender_block(event.sender, self.address.network),
                 adapter.im_tlv(event.text, event.html, self.profile)]
        if event.created and event.created < self.signed_on_time:
            parts.append(b"\x00\x06\x00\x00")  # TLV 6: held while the recipient was offline
        body = b"".join(parts)
        self.send_snac(0x04, 0x07, body)
        if self.api.capturing:
            self.api.capture(event.id, "sent", self.address.network, body, adapter.lost_in_rendering(event, self.profile))

    def send_rendezvous(self, sender, cookie, block):
        """A channel-2 04/07 from ``sender`` (an `Address`) with the rendezvous ``block`` (TLV 5)."""
        info = self.connector.sender_block(sender, self.address.network)
        body = cookie + b"\x00\x02" + info + codec.encode_tlv(5, block)
        self.send_snac(0x04, 0x07, body)

    def deliver_notice(self, sender, text, event):
        """An IM from ``sender`` with ``text`` standing for an event the client has no native form for."""
        parts = [os.urandom(8), b"\x00\x01", self.connector.sender_block(sender, self.address.network),
                 adapter.im_tlv(text, None, self.profile)]
        if event.created and event.created < self.signed_on_time:
            parts.append(b"\x00\x06\x00\x00")
        self.send_snac(0x04, 0x07, b"".join(parts))

    def _deliver_presence(self, event):
        sender = adapter.screen_name_of(event.sender)[:255]
        if event.status is PresenceStatus.OFFLINE:
            self.send_snac(0x03, 0x0C, codec.encode_user_info(sender, []))
            return
        tlvs = adapter.user_info_tlvs(event.status, self.address.network, int(event.created))
        self.send_snac(0x03, 0x0B, codec.encode_user_info(sender, tlvs))
