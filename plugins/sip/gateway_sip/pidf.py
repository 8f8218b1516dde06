"""PIDF presence documents (RFC 3863, RPID RFC 4480) and isComposing (RFC 3994), parsed with defusedxml."""

from __future__ import annotations

from typing import Optional
from xml.sax.saxutils import escape

import attrs
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
DM_NS = "urn:ietf:params:xml:ns:pidf:data-model"
COMPOSING_NS = "urn:ietf:params:xml:ns:im-iscomposing"
MAX_DOCUMENT = 65536


class PidfError(ValueError):
    """A body that is not an acceptable presence or isComposing document."""


@attrs.frozen
class PresenceDoc:
    """What a PIDF says: open or closed, an RPID activity (away, busy, ...) and a note."""

    entity: str = ""
    open: bool = False
    activity: str = ""
    note: str = ""


def _parse(data: bytes):
    if len(data) > MAX_DOCUMENT:
        raise PidfError(f"document over {MAX_DOCUMENT} bytes")
    try:
        return ElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise PidfError(f"refused XML: {type(e).__name__}") from None
    except ElementTree.ParseError as e:
        raise PidfError(f"not XML: {e}") from None
    except (ValueError, TypeError) as e:  # pragma: no cover - odd encodings
        raise PidfError(f"not XML: {e}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_pidf(data: bytes) -> PresenceDoc:
    """Parse ``application/pidf+xml``; the first tuple with a basic status decides open/closed."""
    root = _parse(data)
    if root.tag != f"{{{PIDF_NS}}}presence":
        raise PidfError(f"root element is {_local(root.tag)!r}, not pidf presence")
    basic = None
    note = ""
    activity = ""
    for element in root.iter():
        name = _local(element.tag)
        if name == "basic" and basic is None:
            basic = (element.text or "").strip().lower()
        elif name == "note" and not note:
            note = (element.text or "").strip()
        elif name == "activities" and not activity:
            for child in element:
                if _local(child.tag) not in ("note", "other"):
                    activity = _local(child.tag)
                    break
                if _local(child.tag) == "other" and (child.text or "").strip():
                    activity = (child.text or "").strip().lower()
                    break
    return PresenceDoc(root.get("entity", ""), basic == "open", activity, note[:1024])


def render_pidf(entity: str, is_open: bool, activity: str = "", note: str = "") -> bytes:
    """A PIDF document for ``entity`` (a sip: URI), with an RPID activity when given."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<presence xmlns="{PIDF_NS}" xmlns:rpid="{RPID_NS}" xmlns:dm="{DM_NS}" entity="{escape(entity, {chr(34): "&quot;"})}">\n',
        '<tuple id="gw">\n',
        f'<status><basic>{"open" if is_open else "closed"}</basic></status>\n',
    ]
    if note:
        parts.append(f"<note>{escape(note)}</note>\n")
    parts.append("</tuple>\n")
    if activity:
        parts.append(f'<dm:person id="p1"><rpid:activities><rpid:{activity}/></rpid:activities></dm:person>\n')
    parts.append("</presence>\n")
    return "".join(parts).encode("utf-8")


@attrs.frozen
class Composing:
    active: bool
    refresh: Optional[int] = None


def parse_composing(data: bytes) -> Composing:
    root = _parse(data)
    if root.tag != f"{{{COMPOSING_NS}}}isComposing":
        raise PidfError(f"root element is {_local(root.tag)!r}, not isComposing")
    state = root.find(f"{{{COMPOSING_NS}}}state")
    if state is None:
        raise PidfError("isComposing without state")
    refresh = root.find(f"{{{COMPOSING_NS}}}refresh")
    seconds = None
    if refresh is not None and (refresh.text or "").strip().isascii() and (refresh.text or "").strip().isdigit():
        seconds = int(refresh.text.strip())
    return Composing((state.text or "").strip().lower() == "active", seconds)


def render_composing(active: bool, refresh: int = 60) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<isComposing xmlns="{COMPOSING_NS}">'
        f'<state>{"active" if active else "idle"}</state>'
        "<contenttype>text/plain</contenttype>"
    )
    if active:
        body += f"<refresh>{refresh}</refresh>"
    return (body + "</isComposing>\n").encode("utf-8")
