"""Stanzas <-> gateway model events: addresses as JIDs, presence, messages, chat states, errors."""

from __future__ import annotations

import functools
from typing import Optional

from twisted.words.protocols.jabber.jid import InvalidFormat, JID
from twisted.words.xish import domish

from gateway.plugin import (
    Address, AddressError, ChatEvent, FileOffer, Message, Presence, PresenceStatus, Typing, xhtml_of,
)

from gateway_xmpp.codec import (
    Limits,
    StreamViolation,
    clean_text,
    element_to_bytes,
    escape_attr,
    escape_node,
    escape_text,
    parse_one,
    unescape_node,
)

NETWORK = "xmpp"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"
NS_XHTML = "http://www.w3.org/1999/xhtml"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_OOB = "jabber:x:oob"
NS_SI = "http://jabber.org/protocol/si"
NS_SI_FILE = "http://jabber.org/protocol/si/profile/file-transfer"
NS_JINGLE = "urn:xmpp:jingle:1"
# Jingle file transfer (XEP-0234), each version a client may speak.
NS_JINGLE_FILES = ("urn:xmpp:jingle:apps:file-transfer:5", "urn:xmpp:jingle:apps:file-transfer:4",
                   "urn:xmpp:jingle:apps:file-transfer:3")

# XMPP <show/> -> gateway status, and back.
_SHOW_TO_STATUS = {
    None: PresenceStatus.AVAILABLE,
    "chat": PresenceStatus.AVAILABLE,
    "away": PresenceStatus.AWAY,
    "xa": PresenceStatus.IDLE,
    "dnd": PresenceStatus.BUSY,
}
_STATUS_TO_SHOW = {
    PresenceStatus.AVAILABLE: None,
    PresenceStatus.AWAY: "away",
    PresenceStatus.IDLE: "xa",
    PresenceStatus.BUSY: "dnd",
}

# Outcome code -> (stanza error condition, error type) (RFC 6120 8.3.3).
OUTCOME_ERRORS = {
    "policy": ("forbidden", "auth"),
    "transform": ("not-acceptable", "modify"),
    "unknown-recipient": ("item-not-found", "cancel"),
    "offline": ("recipient-unavailable", "wait"),
    "offline-full": ("recipient-unavailable", "wait"),
    "archive-unavailable": ("service-unavailable", "wait"),
    "delivery-failed": ("recipient-unavailable", "wait"),
    "invalid": ("bad-request", "modify"),
    "internal": ("internal-server-error", "wait"),
}


class Domains:
    """
    Which JID domains are this gateway's: the c2s ``domain`` and an optional
    component domain that stands for the same people.
    """

    def __init__(self, domain: str, component_domain: str = ""):
        self.domain = domain.lower()
        self.component_domain = component_domain.lower()

    def is_local(self, domain: str) -> bool:
        return domain.lower() in (self.domain, self.component_domain)

    def jid_to_address(self, jid: JID) -> Optional[Address]:
        """The gateway address of a JID (its bare part), or None for a domain-only JID."""
        if not jid.user:
            return None
        host = jid.host.lower()
        if host == self.component_domain:
            host = self.domain
        try:
            return Address(NETWORK, unescape_node(jid.user), host)
        except AddressError:
            return None

    def address_to_jid(self, address: Address, via_component: bool = False) -> str:
        """The bare JID text for an address on the xmpp network (own domain mapped for the component)."""
        domain = address.domain or self.domain
        if via_component and domain == self.domain and self.component_domain:
            domain = self.component_domain
        return f"{escape_node(address.user)}@{domain}"


def parse_jid(text) -> Optional[JID]:
    """A `JID` or None when ``text`` is missing or not a JID (stringprep is slow: results are cached)."""
    if not text:
        return None
    return _parse_jid(text)


@functools.lru_cache(maxsize=8192)
def _parse_jid(text: str) -> Optional[JID]:
    if len(text) > 3071:  # RFC 7622: three parts of at most 1023 bytes each
        return None
    try:
        return JID(text)
    except (InvalidFormat, UnicodeError, ValueError, IndexError):
        # IndexError: Twisted's nameprep looks at the first character of
        # each dot-separated label, so an empty one ("a@b..c") raises it.
        return None


# -- inbound ----------------------------------------------------------------------


def presence_status(element: domish.Element) -> tuple:
    """(`PresenceStatus`, note) of an available or unavailable ``<presence/>``."""
    note = ""
    show = None
    for child in element.elements():
        if child.name == "show":
            show = str(child).strip()
        elif child.name == "status" and not note:
            note = str(child).strip()
    if element.getAttribute("type") == "unavailable":
        return PresenceStatus.OFFLINE, note
    return _SHOW_TO_STATUS.get(show, PresenceStatus.AVAILABLE), note


def message_parts(element: domish.Element) -> tuple:
    """``(body, html, chat_state, wants_receipt, thread)`` of a ``<message/>``."""
    body = html = state = thread = None
    receipt = False
    for child in element.elements():
        uri = child.uri
        if child.name == "body" and uri in ("jabber:client", "jabber:server", "jabber:component:accept") and body is None:
            body = str(child)
        elif child.name == "thread" and thread is None:
            thread = str(child) or None
        elif uri == NS_CHATSTATES:
            state = child.name
        elif uri == NS_RECEIPTS and child.name == "request":
            receipt = True
        elif uri == NS_XHTML_IM and child.name == "html":
            for inner in child.elements():
                if inner.name == "body" and inner.uri == NS_XHTML:
                    html = "".join(
                        c.toXml(defaultUri=NS_XHTML) if isinstance(c, domish.Element) else escape_text(c)
                        for c in inner.children
                    )
                    break
    return body, html, state, receipt, thread


def message_event(api, element, sender: Address, recipient: Address):
    """The gateway event for a message stanza: a `Message`, a `Typing`, or None (nothing to pass on)."""
    body, html, state, _, thread = message_parts(element)
    now = api.clock.seconds()
    if body is not None and body != "":
        return Message(sender, recipient, body, html=html, thread=thread, created=now)
    if state == "composing":
        return Typing(sender, recipient, True, created=now)
    if state in ("paused", "active", "inactive", "gone"):
        return Typing(sender, recipient, False, created=now)
    return None


# -- outbound ---------------------------------------------------------------------


def _xhtml(event) -> str:
    """The XHTML-IM body of ``event``: its sanitized rich text written as XML ("" when it has none)."""
    html = getattr(event, "html", None)
    if not html:
        return ""
    xhtml = xhtml_of(html)
    return xhtml if _html_ok(xhtml) else ""


def _html_ok(html: str) -> bool:
    try:
        parse_one(("<body xmlns='" + NS_XHTML + "'>" + html + "</body>").encode("utf-8"),
                  limits=Limits(stanza_size=1 << 20))
    except (StreamViolation, UnicodeError):
        return False
    return True


def oob_offer(element: domish.Element):
    """``(url, description)`` of a message's out-of-band data (XEP-0066), or None."""
    for child in element.elements():
        if child.uri == NS_OOB and child.name == "x":
            url = desc = ""
            for inner in child.elements():
                if inner.name == "url":
                    url = str(inner).strip()
                elif inner.name == "desc":
                    desc = str(inner).strip()
            if url:
                return url, desc
    return None


def file_offer_event(api, element, sender: Address, recipient: Address):
    """The `FileOffer` of a message carrying a link to a file (XEP-0066), or None."""
    offer = oob_offer(element)
    if offer is None:
        return None
    url, desc = offer
    name = url.rstrip("/").rpartition("/")[2].split("?")[0] or url
    body, _, _, _, _ = message_parts(element)
    text = desc or (body if body and body.strip() != url else "")
    return api.file_offer(sender, recipient, name[:256], 0, text, url)


def _child(element, uri, name):
    return next((c for c in element.elements() if c.uri == uri and c.name == name), None)


def _size(text) -> int:
    try:
        size = int(str(text or "").strip())
    except ValueError:
        return 0
    return size if 0 <= size < 1 << 63 else 0


def _si_file(payload):
    """``(name, size, description)`` of a stream-initiation offer (XEP-0095/0096), or None."""
    if payload.getAttribute("profile") != NS_SI_FILE:
        return None
    file = _child(payload, NS_SI_FILE, "file")
    if file is None:
        return None
    desc = _child(file, NS_SI_FILE, "desc")
    return file.getAttribute("name", ""), _size(file.getAttribute("size")), str(desc or "").strip()


def _jingle_files(payload):
    """``(name, size, description)`` of each file a Jingle session-initiate offers or asks for (XEP-0234)."""
    found = []
    for content in payload.elements():
        if content.name != "content":
            continue
        for description in content.elements():
            if description.name != "description" or description.uri not in NS_JINGLE_FILES:
                continue
            files = [c for c in description.elements() if c.name == "file"]
            for wrapper in description.elements():  # version 3 wraps the file in <offer/> or <request/>
                if wrapper.name in ("offer", "request"):
                    files += [c for c in wrapper.elements() if c.name == "file"]
            for file in files:
                fields = {c.name: str(c).strip() for c in file.elements()}
                asks = content.getAttribute("senders") == "responder" or any(
                    w.name == "request" for w in description.elements())
                desc = fields.get("desc", "")
                if asks:
                    desc = ("asks for this file. " + desc).strip()
                found.append((fields.get("name", ""), _size(fields.get("size")), desc))
    return found


def stream_offer_event(api, element, sender: Address, recipient: Address):
    """
    The `FileOffer` of an ``<iq type='set'/>`` that opens a file transfer
    (stream initiation, XEP-0096, or a Jingle session-initiate with a
    file-transfer description, XEP-0234), or None when it opens none. Several
    files in one Jingle session are one offer naming them all.
    """
    if element.getAttribute("type") != "set":
        return None
    payload = next(iter(element.elements()), None)
    if payload is None:
        return None
    if payload.uri == NS_SI and payload.name == "si":
        offered = _si_file(payload)
        files = [offered] if offered is not None else []
        key = "xmpp-si:" + payload.getAttribute("id", "")
    elif payload.uri == NS_JINGLE and payload.name == "jingle" and payload.getAttribute("action") == "session-initiate":
        files = _jingle_files(payload)
        key = "xmpp-jingle:" + payload.getAttribute("sid", "")
    else:
        return None
    if not files:
        return None
    name = ", ".join(n or "unnamed" for n, _, _ in files)[:256]
    size = sum(s for _, s, _ in files)
    text = " ".join(d for _, _, d in files if d)
    return api.file_offer(sender, recipient, name, size, text, transfer=key[:128])


def capture_received(api, event, element) -> None:
    """
    Native capture of the stanza ``event`` came in: serialized again from
    the parsed element (the stream parser keeps no raw bytes), so the note
    ``reserialized`` says attribute order and prefixes may differ.
    """
    if api.capturing:
        api.capture(event.id, "received", event.sender.network, element.toXml().encode("utf-8"), ("reserialized",))


def lost_in_rendering(event) -> list:
    """What an XMPP recipient cannot be shown of ``event`` (for native capture)."""
    lost = []
    if getattr(event, "html", None) and not _xhtml(event):
        lost.append("html-dropped")
    if isinstance(event, FileOffer) and not event.url:
        lost.append("file-not-transferred")
    return lost


def capture_sent(api, event, data: bytes) -> None:
    """Native capture of the stanza rendered for ``event``'s recipient."""
    if api.capturing and isinstance(event, (Message, FileOffer, ChatEvent)):
        api.capture(event.id, "sent", event.recipient.network, data, lost_in_rendering(event))


def render_offer(event, sender: str, to: str) -> bytes:
    """A file offer (or room traffic this server cannot join) as a chat message: a link where there is one."""
    if isinstance(event, FileOffer):
        notice = f"{sender} offers a file: {event.summary()}"
        oob = ""
        if event.url:
            oob = (f"<x xmlns='{NS_OOB}'><url>{escape_text(clean_text(event.url))}</url>"
                   + (f"<desc>{escape_text(clean_text(event.text))}</desc>" if event.text else "") + "</x>")
        else:
            notice += " (it cannot be transferred to this network)"
    else:
        notice = f"{sender} in room {getattr(event, 'room', '')}: {getattr(event, 'text', '')}"
        oob = ""
    return (f"<message type='chat' from='{escape_attr(sender)}' to='{escape_attr(to)}' id='{event.id}'>"
            f"<body>{escape_text(clean_text(notice))}</body>{oob}</message>").encode("utf-8")


def render_message(event: Message, sender: str, to: str, stamp: str = "") -> bytes:
    """``<message type='chat'>`` with body (and XHTML-IM when the HTML is well-formed XML)."""
    parts = [
        "<message type='chat' from='", escape_attr(sender), "' to='", escape_attr(to),
        "' id='", event.id, "'><body>", escape_text(clean_text(event.text)), "</body>",
    ]
    if event.thread:
        parts.append(f"<thread>{escape_text(clean_text(event.thread))}</thread>")
    xhtml = _xhtml(event)
    if xhtml:
        parts.append(f"<html xmlns='{NS_XHTML_IM}'><body xmlns='{NS_XHTML}'>{xhtml}</body></html>")
    parts.append(f"<active xmlns='{NS_CHATSTATES}'/>")
    if stamp:
        parts.append(f"<delay xmlns='{NS_DELAY}' stamp='{stamp}'/>")
    parts.append("</message>")
    return "".join(parts).encode("utf-8")


def render_typing(event: Typing, sender: str, to: str) -> bytes:
    state = "composing" if event.active else "paused"
    return (
        f"<message type='chat' from='{escape_attr(sender)}' to='{escape_attr(to)}' id='{event.id}'>"
        f"<{state} xmlns='{NS_CHATSTATES}'/></message>"
    ).encode("utf-8")


def render_presence(event: Presence, sender: str, to: str, kind: str = "") -> bytes:
    """An available or unavailable ``<presence/>`` (or ``kind`` such as ``subscribed`` with no status)."""
    head = f"<presence from='{escape_attr(sender)}' to='{escape_attr(to)}'"
    if kind:
        return f"{head} type='{kind}'/>".encode("utf-8")
    if event.status is PresenceStatus.OFFLINE:
        head += " type='unavailable'"
        inner = ""
    else:
        show = _STATUS_TO_SHOW.get(event.status)
        inner = f"<show>{show}</show>" if show else ""
    if event.note:
        inner += f"<status>{escape_text(clean_text(event.note))}</status>"
    if not inner:
        return (head + "/>").encode("utf-8")
    return f"{head}>{inner}</presence>".encode("utf-8")


def render_receipt(sender: str, to: str, message_id: str) -> bytes:
    return (
        f"<message from='{escape_attr(sender)}' to='{escape_attr(to)}'>"
        f"<received xmlns='{NS_RECEIPTS}' id='{escape_attr(message_id)}'/></message>"
    ).encode("utf-8")


def stanza_error(element: domish.Element, condition: str, error_type: str, text: str = "",
                 namespace: str = "jabber:client", keep=("body",)) -> bytes:
    """
    The error reply to ``element``: addresses swapped, its children named in
    ``keep`` kept (RFC 6120 8.3; a room's presence error keeps its ``x``).
    """
    reply = domish.Element((None, element.name))
    for key in ("id",):
        if element.getAttribute(key) is not None:
            reply[key] = element[key]
    if element.getAttribute("from"):
        reply["to"] = element["from"]
    if element.getAttribute("to"):
        reply["from"] = element["to"]
    reply["type"] = "error"
    if element.name != "iq":
        for child in element.elements():
            if child.name in keep:
                reply.addChild(child)
    error = reply.addElement("error")
    error["type"] = error_type
    error.addElement((NS_STANZAS, condition))
    if text:
        error.addElement((NS_STANZAS, "text"), content=clean_text(text))
    return element_to_bytes(reply, namespace)


def outcome_error(element, outcome, namespace="jabber:client") -> bytes:
    condition, error_type = OUTCOME_ERRORS.get(outcome.code, ("undefined-condition", "cancel"))
    return stanza_error(element, condition, error_type, outcome.reason, namespace)


def offer_answer(element, outcome, namespace="jabber:client") -> bytes:
    """
    The answer to an iq that opened a file transfer, once the path decided
    its offer: refused, the outcome's error (``forbidden`` for a policy);
    else ``feature-not-implemented``, since the recipient was shown the offer
    but this server carries no file bytes (stream initiation, Jingle).
    """
    if outcome.rejected:
        return outcome_error(element, outcome, namespace)
    return stanza_error(element, "feature-not-implemented", "cancel",
                        "the recipient was shown the offer; this server does not carry the file itself", namespace)
