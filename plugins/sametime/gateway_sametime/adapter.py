"""Between Sametime service payloads and gateway model events: status, IM text/HTML/MIME, buddy lists."""

from __future__ import annotations

import email
import email.policy
import html as html_module
from html.parser import HTMLParser
from typing import Optional

import attrs

from gateway.plugin import Address, AddressError, PresenceStatus

from gateway_sametime import codec

NETWORK = "sametime"
# HTML and MIME bodies longer than this go out in pieces between MULTI_START and MULTI_STOP.
SEGMENT = 2048

_FROM_STATUS = {
    codec.STATUS_ACTIVE: PresenceStatus.AVAILABLE,
    codec.STATUS_IDLE: PresenceStatus.IDLE,
    codec.STATUS_AWAY: PresenceStatus.AWAY,
    codec.STATUS_BUSY: PresenceStatus.BUSY,
    codec.STATUS_OFFLINE: PresenceStatus.OFFLINE,
}
_TO_STATUS = {value: key for key, value in _FROM_STATUS.items()}


def presence_status(code: int) -> PresenceStatus:
    """A Sametime status code (the mobile bit ignored) as model presence; unknown codes count as away."""
    return _FROM_STATUS.get(code & ~codec.STATUS_MOBILE, PresenceStatus.AWAY)


def status_code(status: PresenceStatus) -> int:
    return _TO_STATUS[PresenceStatus(status)]


def user_status(status: PresenceStatus, note: str = "", since: int = 0) -> Optional[codec.UserStatus]:
    """The `codec.UserStatus` shown for a presence, or None when offline."""
    status = PresenceStatus(status)
    if status is PresenceStatus.OFFLINE:
        return None
    return codec.UserStatus(status_code(status), since, note)


def address_of(user_id: str) -> Address:
    """
    The address a Sametime user id names: ``bob`` is ``sametime:bob``; an id
    written as a full address (``xmpp:carol@localhost``) names that address.
    Raises `AddressError`.
    """
    user_id = user_id.strip()
    network, sep, rest = user_id.partition(":")
    if sep and rest and network.isalnum() and network.lower() != NETWORK:
        return Address.parse(user_id)
    if sep and network.lower() == NETWORK:
        user_id = rest
    return Address(NETWORK, user_id)


def user_id_of(address: Address) -> str:
    """The Sametime user id for an address on the sametime network."""
    return address.handle


# -- HTML and MIME -------------------------------------------------------------


class _TextOf(HTMLParser):
    BREAKS = {"br", "p", "div", "li", "tr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []

    def handle_starttag(self, tag, attrs_):
        if tag in self.BREAKS and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The plain text of an HTML fragment."""
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts).strip()


def text_to_html(text: str) -> str:
    return html_module.escape(text).replace("\n", "<br>")


def mime_to_message(raw: bytes) -> tuple:
    """``(text, html)`` of a MIME message body (html None when it has no HTML part)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    text = markup = None
    for part in parsed.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        try:
            content = part.get_content()
        except (LookupError, ValueError):
            continue
        if not isinstance(content, str):
            continue
        if kind == "text/plain" and text is None:
            text = content
        elif kind == "text/html" and markup is None:
            markup = content
    if text is None:
        text = html_to_text(markup) if markup is not None else ""
    return text.strip(), markup


@attrs.frozen(slots=True)
class Incoming:
    """What one IM payload (or a finished multipart run) amounts to."""

    kind: str  # "message", "typing" or "subject"
    text: str = ""
    html: Optional[str] = None
    active: bool = True


class ImAssembler:
    """Turns one channel's IM payloads into `Incoming` values, joining multipart runs (bounded)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._parts = None
        self._kind = None

    def feed(self, payload) -> Optional[Incoming]:
        """Raises `codec.CodecError` for a run over the limit or a part out of place."""
        if isinstance(payload, codec.ImText):
            return Incoming("message", payload.text)
        kind = payload.type
        if kind == codec.IM_DATA_TYPING:
            return Incoming("typing", active=payload.subtype == 0)
        if kind == codec.IM_DATA_MULTI_START:
            if self._parts is not None:
                raise codec.CodecError("multipart start inside a multipart message")
            self._parts, self._kind = [], None
            return None
        if kind == codec.IM_DATA_MULTI_STOP:
            if self._parts is None:
                raise codec.CodecError("multipart stop without a start")
            data, kind = b"".join(self._parts), self._kind
            self._parts = self._kind = None
            return self._whole(kind, data) if kind is not None else None
        if kind in (codec.IM_DATA_HTML, codec.IM_DATA_MIME):
            if self._parts is not None:
                if self._kind not in (None, kind):
                    raise codec.CodecError("multipart message mixes HTML and MIME parts")
                self._kind = kind
                self._parts.append(payload.data)
                if sum(map(len, self._parts)) > self.limit:
                    raise codec.CodecError(f"multipart message over {self.limit} bytes")
                return None
            return self._whole(kind, payload.data)
        if kind == codec.IM_DATA_SUBJECT:
            return Incoming("subject", payload.data.decode("utf-8", "replace"))
        return None  # timestamps, invitations: nothing to pass on

    @staticmethod
    def _whole(kind, data):
        if kind == codec.IM_DATA_MIME:
            text, markup = mime_to_message(data)
            return Incoming("message", text, markup)
        markup = data.decode("utf-8", "replace")
        return Incoming("message", html_to_text(markup), markup)


def im_payloads(text: str, html: Optional[str], rich: bool) -> list:
    """The IM payloads (CHANNEL_SEND 0x0064 data) that show a message; ``rich``: the channel takes HTML."""
    if not rich or not html:
        return [codec.encode_im(codec.ImText(text))]
    raw = html.encode("utf-8")
    if len(raw) <= SEGMENT:
        return [codec.encode_im(codec.ImData(codec.IM_DATA_HTML, 0, raw))]
    out = [codec.encode_im(codec.ImData(codec.IM_DATA_MULTI_START))]
    for start in range(0, len(raw), SEGMENT):
        out.append(codec.encode_im(codec.ImData(codec.IM_DATA_HTML, 0, raw[start:start + SEGMENT])))
    out.append(codec.encode_im(codec.ImData(codec.IM_DATA_MULTI_STOP)))
    return out


def typing_payload(active: bool) -> bytes:
    return codec.encode_im(codec.ImData(codec.IM_DATA_TYPING, 0 if active else 1))


# -- buddy lists -------------------------------------------------------------


def list_to_entries(text: str) -> list:
    """``[(group, user_id, name)]`` of a stored Sametime buddy list."""
    out = []
    for group in codec.parse_buddy_list(text):
        for user in group.users:
            out.append((group.name or "Buddies", user.id, user.alias or user.name))
    return out


def entries_to_list(entries) -> str:
    """A Sametime buddy list text for ``[(group, user_id, name)]``, groups in first-seen order."""
    groups = {}
    for group, user_id, name in entries:
        groups.setdefault(group or "Buddies", []).append(codec.ListUser(user_id, name))
    return codec.render_buddy_list(
        [codec.ListGroup(name, tuple(users)) for name, users in groups.items()]
    )


def safe_address(user_id: str) -> Optional[Address]:
    try:
        return address_of(user_id)
    except AddressError:
        return None
