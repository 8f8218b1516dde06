"""SIP <-> gateway model: URIs and addresses, MESSAGE bodies and events, PIDF and presence, outcomes and status codes."""

from __future__ import annotations

import html.parser
import os
import re

import attrs

from gateway.plugin import Address, AddressError, PresenceStatus

from gateway_sip.codec import SipError, SipUri, escape_user, parse_uri, quote
from gateway_sip.pidf import PidfError, PresenceDoc, parse_composing, render_composing, render_pidf

NETWORK = "sip"
TEXT_TYPES = ("text/plain", "text/html")
COMPOSING_TYPE = "application/im-iscomposing+xml"


def address_of_uri(uri) -> Address:
    """``sip:alice@example.com`` (text or `SipUri`) -> Address("sip", "alice", "example.com")."""
    if not isinstance(uri, SipUri):
        uri = parse_uri(uri)
    if not uri.user:
        raise SipError(f"{uri} names no user", 404)
    try:
        return Address(NETWORK, uri.user, uri.host)
    except AddressError as e:
        raise SipError(f"not an address: {e}", 400) from None


def uri_of(address: Address) -> str:
    """Address("sip", "alice", "example.com") -> ``sip:alice@example.com`` (user escaped)."""
    return f"sip:{escape_user(address.user)}@{address.domain or 'localhost'}"


def new_tag() -> str:
    return os.urandom(6).hex()


def new_call_id(host: str) -> str:
    return f"{os.urandom(12).hex()}@{host}"


def content_type(value: str) -> tuple:
    """``text/plain; charset=UTF-8`` -> ("text/plain", {"charset": "utf-8"})."""
    media, *params = (value or "text/plain").split(";")
    values = {}
    for param in params:
        name, _, v = param.partition("=")
        values[name.strip().lower()] = v.strip().strip('"').lower()
    return media.strip().lower(), values


def decode_text(body: bytes, params: dict) -> str:
    charset = params.get("charset", "utf-8")
    try:
        return body.decode(charset)
    except LookupError:
        raise SipError(f"unknown charset {charset!r}", 415) from None
    except UnicodeDecodeError:
        raise SipError(f"body is not valid {charset}", 400) from None


class _TextOf(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "p", "div"):
            self.parts.append("\n")


def html_to_text(markup: str) -> str:
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts).strip()


def message_content(headers, body: bytes):
    """
    What a MESSAGE carries: ``("im", text, html)`` or ``("typing", active)``.
    Raise `SipError` 415 for other content types.
    """
    media, params = content_type(headers.get("content-type", "text/plain"))
    if media == "text/plain":
        return ("im", decode_text(body, params), None)
    if media == "text/html":
        markup = decode_text(body, params)
        return ("im", html_to_text(markup), markup)
    if media == COMPOSING_TYPE:
        try:
            return ("typing", parse_composing(body).active)
        except PidfError as e:
            raise SipError(f"bad isComposing document: {e}", 400) from None
    raise SipError(f"content type {media!r} is not supported", 415)


@attrs.frozen(slots=True)
class SdpFile:
    """One file an SDP offer proposes to send (or, ``pull``, asks for): RFC 5547's file-selector."""

    name: str
    size: int = 0
    media_type: str = ""
    title: str = ""
    pull: bool = False


_SELECTOR = re.compile(r'(name|type|size|hash):("(?:[^"\\]|\\.)*"|\S+)')


def sdp_files(headers, body: bytes) -> list:
    """
    The files an INVITE's SDP offers over MSRP (RFC 5547): one `SdpFile`
    per ``m=message`` section with an ``a=file-selector``; [] when the
    INVITE is not an application/sdp file offer (a call, a chat session).
    """
    media, _ = content_type(headers.get("content-type", ""))
    if media != "application/sdp":
        return []
    text = body.decode("utf-8", "replace")
    files, section = [], None
    for line in text.splitlines():
        kind, _, value = line.strip().partition("=")
        if kind == "m":
            section = {"message": value.split(" ", 1)[0] == "message", "attributes": {}, "title": ""}
            files.append(section)
        elif section is not None and kind == "i":
            section["title"] = value.strip()
        elif section is not None and kind == "a":
            name, _, attribute = value.partition(":")
            section["attributes"].setdefault(name.strip().lower(), attribute.strip())
    found = []
    for section in files:
        selector = section["attributes"].get("file-selector")
        if not section["message"] or selector is None:
            continue
        fields = {}
        for key, raw in _SELECTOR.findall(selector):
            fields.setdefault(key, raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw)
        size = fields.get("size", "0")
        found.append(SdpFile(fields.get("name", "")[:256], int(size) if size.isdigit() and len(size) < 19 else 0,
                             fields.get("type", "")[:128], section["title"][:1024],
                             "recvonly" in section["attributes"]))
    return found


def event_body(event) -> tuple:
    """(Content-Type, body) of a MESSAGE for a model `Message` or `Typing`."""
    if event.kind == "typing":
        return COMPOSING_TYPE, render_composing(event.active)
    if event.kind == "chat":
        return "text/plain;charset=UTF-8", f"[{event.room}] {event.text}".encode("utf-8")
    if event.kind == "file":
        # SIP clients here take no file offers the gateway could relay: shown as a notice.
        notice = f"{event.sender} offers a file: {event.summary()}"
        if not event.url:
            notice += " (it cannot be transferred to this network)"
        return "text/plain;charset=UTF-8", notice.encode("utf-8")
    if getattr(event, "html", None):
        return "text/html;charset=UTF-8", event.html.encode("utf-8")
    return "text/plain;charset=UTF-8", event.text.encode("utf-8")


# Presence: model status <-> PIDF basic + RPID activity.
_ACTIVITY = {
    PresenceStatus.AWAY: "away",
    PresenceStatus.BUSY: "busy",
    PresenceStatus.IDLE: "away",
}
_FROM_ACTIVITY = {"away": PresenceStatus.AWAY, "busy": PresenceStatus.BUSY, "on-the-phone": PresenceStatus.BUSY,
                  "meeting": PresenceStatus.BUSY, "vacation": PresenceStatus.AWAY, "sleeping": PresenceStatus.AWAY,
                  "lunch": PresenceStatus.AWAY, "meal": PresenceStatus.AWAY, "busy-dnd": PresenceStatus.BUSY}


def presence_body(entity: str, status: PresenceStatus, note: str = "") -> bytes:
    status = PresenceStatus(status)
    return render_pidf(entity, status is not PresenceStatus.OFFLINE, _ACTIVITY.get(status, ""), note)


def status_of(doc: PresenceDoc) -> PresenceStatus:
    if not doc.open:
        return PresenceStatus.OFFLINE
    if doc.activity in _FROM_ACTIVITY:
        return _FROM_ACTIVITY[doc.activity]
    note = doc.note.lower()
    if note in ("away", "be right back", "out to lunch", "idle"):
        return PresenceStatus.AWAY
    if note in ("busy", "on the phone", "do not disturb"):
        return PresenceStatus.BUSY
    return PresenceStatus.AVAILABLE


# Outcome -> response to the sender.
_CODES = {
    "unknown-recipient": 404,
    "offline": 480,
    "offline-full": 480,
    "archive-unavailable": 503,
    "delivery-failed": 480,
    "transform": 403,
    "invalid": 400,
    "bad-room": 400,
    "internal": 500,
}


def outcome_response(outcome) -> tuple:
    """(status, reason phrase, extra headers) for an `Outcome` of a MESSAGE."""
    if outcome.delivered:
        return 200, "OK", []
    if outcome.queued:
        return 202, "Accepted", []
    if outcome.code == "policy":
        text = outcome.reason or "denied by policy"
        if outcome.rule and outcome.rule not in text:
            text = f"{text} (rule {outcome.rule})"
        text = text.replace("\r", " ").replace("\n", " ")[:200]
        headers = [("Warning", f"399 gateway {quote(text)}"), ("Reason", f"SIP;cause=403;text={quote(text)}")]
        return 403, "Forbidden", headers
    status = _CODES.get(outcome.code, 500)
    text = (outcome.reason or outcome.code).replace("\r", " ").replace("\n", " ")[:200]
    headers = [("Warning", f"399 gateway {quote(text)}")]
    if status == 503:
        headers.append(("Retry-After", "5"))
    return status, None, headers
