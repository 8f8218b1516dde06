"""What the logging proxy reads in what it relays (IMs, rendezvous, chat messages), and how it re-renders it."""

from __future__ import annotations

from typing import Optional

import attrs

from gateway.plugin import Address, PresenceStatus

from gateway_oscar import adapter, codec
from gateway_oscar.codec import OscarCodecError, encode_tlvs, first_tlv, u16

# The SNACs the proxy reads: IMs both ways, and messages on a chat-room connection.
IM_OUT, IM_IN = (0x04, 0x06), (0x04, 0x07)
CHAT_OUT, CHAT_IN = (0x0E, 0x05), (0x0E, 0x06)
CHAT_SERVICE = 0x0E

# What the upstream tells a client about others: arrivals, departures, user info answers.
DISCLOSURES = frozenset({(0x03, 0x0B), (0x03, 0x0C), (0x02, 0x06)})

# Who an event names when the proxy cannot tell (a connection whose login it did not see, an
# IM it cannot read): an AIM handle never has a domain, so this is nobody's address.
UNKNOWN = Address("aim", "unknown", "oscar-proxy.invalid")

# Rendezvous TLVs relayed as they came besides the transfer parameters: a chat invitation's room.
_ROOM_INFO = frozenset({0x2711})


def snac_key(payload: bytes) -> Optional[tuple]:
    """``(family, subtype)`` of a channel-2 payload, read without parsing the rest; None when too short."""
    if len(payload) < 4:
        return None
    return (payload[0] << 8) | payload[1], (payload[2] << 8) | payload[3]


def request_id(payload: bytes) -> Optional[int]:
    return int.from_bytes(payload[6:10], "big") if len(payload) >= 10 else None


def parse_icbm(snac, to_client: bool):
    return codec.parse_icbm_receive(snac.body) if to_client else codec.parse_icbm_send(snac.body)


def render_icbm(snac, icbm, to_client: bool, tlvs) -> bytes:
    """The SNAC payload of an ICBM with its TLVs replaced by ``tlvs`` (the header as it came)."""
    if to_client:
        head = icbm.cookie + u16(icbm.channel) + codec.encode_user_info(icbm.screen_name, icbm.user_tlvs, icbm.warning)
    else:
        head = icbm.cookie + u16(icbm.channel) + bytes((len(icbm.screen_name),)) + icbm.screen_name
    return codec.encode_snac(snac.family, snac.subtype, head + encode_tlvs(tlvs), snac.flags & ~0x8000,
                             snac.request_id)


def render_im(snac, icbm, to_client: bool, event, profile) -> bytes:
    """A channel-1 ICBM whose text (TLV 2) is rendered from ``event`` for a client with ``profile``."""
    tlv2 = adapter.im_tlv2(event.text, event.html, profile)
    return render_icbm(snac, icbm, to_client, [(t, tlv2 if t == 0x0002 else v) for t, v in icbm.tlvs])


def rendezvous_tlvs(rdv, to_client: bool, event, files=None) -> list:
    """
    A rendezvous block's TLVs as relayed: transfer parameters as they came
    (0x0004 only on its way to a client, added by the upstream server), a
    chat invitation's room as it came, and what a person is shown rendered
    from the decided ``event`` (a `FileOffer`, a `ChatEvent`, or None for an
    answer that shows nothing).
    """
    keep = adapter.TRANSFER_PARAMS | ({0x0004} if to_client else frozenset())
    if rdv.capability == codec.CAP_CHAT:
        keep = keep | _ROOM_INFO
    tlvs = [(t, v) for t, v in rdv.tlvs if t in keep]
    if event is None:
        return tlvs
    if rdv.capability == codec.CAP_CHAT:
        if event.text:
            tlvs += [(0x000C, event.text.encode("utf-8")), (0x000D, adapter.charset_name(event.text))]
        return tlvs
    # Only what the frame carried is rendered: a further proposal with no file data gets none.
    return tlvs + adapter.offer_tlvs(rdv.capability, event.name, event.size, event.text, files,
                                     with_text=rdv.tlv(0x000C) is not None, with_files=rdv.tlv(0x2711) is not None)


def render_rendezvous(snac, icbm, to_client: bool, rdv, tlvs) -> bytes:
    block = codec.encode_rendezvous(rdv.kind, rdv.cookie, rdv.capability, tlvs)
    return render_icbm(snac, icbm, to_client, [(t, block if t == 0x0005 else v) for t, v in icbm.tlvs])


@attrs.frozen(slots=True)
class ChatMessage:
    """A chat-room message (0E/05 from a client, 0E/06 to it): cookie, channel, TLVs, the text's TLVs (5)."""

    cookie: bytes
    channel: int
    tlvs: list
    inner: list
    author: Optional[bytes]  # the sender's screen name of a 0E/06

    @property
    def text(self) -> str:
        data = first_tlv(self.inner, 0x0001)
        return adapter.charset_text(data, first_tlv(self.inner, 0x0002)) if data else ""


def parse_chat(body: bytes, incoming: bool) -> ChatMessage:
    r = codec.Reader(body, "chat message")
    cookie, channel = r.take(8), r.u16()
    tlvs = r.tlvs()
    block = first_tlv(tlvs, 0x0005)
    if block is None:
        raise OscarCodecError("chat message without its message block (TLV 5)")
    author = None
    if incoming:
        info = first_tlv(tlvs, 0x0003)
        if info is None:
            raise OscarCodecError("chat message without its sender (TLV 3)")
        author = codec.parse_user_info(codec.Reader(info, "chat sender"))[0]
    return ChatMessage(cookie, channel, tlvs, codec.parse_tlvs(block), author)


def render_chat(snac, message: ChatMessage, event) -> bytes:
    """A chat-room message with its text rendered from ``event``: AIM HTML, charset named in TLV 2."""
    text = adapter.text_to_html(event.text) if event.text else ""
    inner = [(0x0001, text.encode("utf-8")), (0x0002, adapter.charset_name(text))]
    inner += [(t, v) for t, v in message.inner if t not in (0x0001, 0x0002)]
    tlvs = [(t, encode_tlvs(inner) if t == 0x0005 else v) for t, v in message.tlvs]
    body = message.cookie + u16(message.channel) + encode_tlvs(tlvs)
    return codec.encode_snac(snac.family, snac.subtype, body, snac.flags & ~0x8000, snac.request_id)


# -- disclosures ------------------------------------------------------------------------


def parse_user_blocks(body: bytes) -> list:
    """The user info blocks of a 03/0B or 03/0C: ``[(screen name, warning, TLVs), ...]``."""
    r = codec.Reader(body, "buddy arrival or departure")
    users = [codec.parse_user_info(r)]
    while r.remaining:
        users.append(codec.parse_user_info(r))
    return users


def status_of(tlvs) -> PresenceStatus:
    """The presence a user info block shows: away (class bit or ICQ status), idle, or available."""
    user_class = first_tlv(tlvs, 0x0001)
    if user_class is not None and int.from_bytes(user_class[-2:], "big") & adapter.CLASS_AWAY:
        return PresenceStatus.AWAY
    icq = first_tlv(tlvs, 0x0006)
    if icq is not None and adapter.status_from_icq(icq) is not PresenceStatus.AVAILABLE:
        return adapter.status_from_icq(icq)
    idle = first_tlv(tlvs, 0x0004)
    if idle is not None and idle.strip(b"\x00"):
        return PresenceStatus.IDLE
    return PresenceStatus.AVAILABLE


@attrs.frozen(slots=True)
class InfoAnswer:
    """A 02/06: whom it is about, their user info block, and the profile and away message it carries."""

    name: bytes
    warning: int
    user_tlvs: list
    tlvs: list

    @property
    def status(self) -> PresenceStatus:
        return status_of(self.user_tlvs)

    @property
    def text(self) -> str:
        return self._profile()[0]

    @property
    def html(self) -> Optional[str]:
        return self._profile()[1]

    @property
    def away(self) -> str:
        data = first_tlv(self.tlvs, 0x0004)
        return adapter.plain_text(adapter.decode_rich(data, first_tlv(self.tlvs, 0x0003))) if data else ""

    def _profile(self):
        data = first_tlv(self.tlvs, 0x0002)
        if not data:
            return "", None
        return adapter.rich_parts(adapter.decode_rich(data, first_tlv(self.tlvs, 0x0001)))


def parse_info_answer(body: bytes) -> InfoAnswer:
    r = codec.Reader(body, "user info answer 02/06")
    name, warning, user_tlvs = codec.parse_user_info(r)
    return InfoAnswer(name, warning, user_tlvs, r.tlvs())


def render_info_answer(snac, info: InfoAnswer, profile) -> bytes:
    """A 02/06 whose profile and away message are rendered from the decided ``profile``; capabilities as they came."""
    tlvs = []
    if first_tlv(info.tlvs, 0x0002) is not None:
        tlvs += [(0x0001, adapter.RICH_MIME), (0x0002, adapter.render_rich(profile.text, profile.html))]
    if first_tlv(info.tlvs, 0x0004) is not None:
        tlvs += [(0x0003, adapter.RICH_MIME), (0x0004, adapter.render_rich(profile.note, None))]
    tlvs += [(t, v) for t, v in info.tlvs if t == 0x0005]
    body = codec.encode_user_info(info.name, info.user_tlvs, info.warning) + encode_tlvs(tlvs)
    return codec.encode_snac(snac.family, snac.subtype, body, snac.flags & ~0x8000, snac.request_id)
