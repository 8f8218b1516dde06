"""XMPP stream codec: a restricted, bounded incremental XML parser and stanza serialisation."""

from __future__ import annotations

import re

import attrs
from defusedxml.common import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from pyexpat import ParserCreate, errors as expat_errors, ExpatError
import pyexpat
from twisted.words.xish import domish

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
NS_COMPONENT = "jabber:component:accept"
NS_XML = "http://www.w3.org/XML/1998/namespace"

__all__ = [
    "Limits",
    "StreamViolation",
    "StreamParser",
    "escape_node",
    "unescape_node",
    "escape_text",
    "escape_attr",
    "stream_header",
    "element_to_bytes",
]


@attrs.frozen
class Limits:
    """What one stream may send: bytes per stanza, element depth, attributes per element."""

    stanza_size: int = 262144
    depth: int = 24
    attributes: int = 32
    header_size: int = 4096


class StreamViolation(Exception):
    """
    Input that ends the stream: ``condition`` is the RFC 6120 stream error
    condition (``not-well-formed``, ``restricted-xml``, ``policy-violation``,
    ``invalid-namespace``...) and the text says what was wrong.
    """

    def __init__(self, condition: str, text: str = ""):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


class _Stopped(Exception):
    """The parser was closed from inside one of its own callbacks."""


def _split(name: str):
    """Expat's ``"URI local"`` (namespace_separator ' ') into ``(uri, local)``."""
    uri, sep, local = name.rpartition(" ")
    return (uri, local) if sep else ("", name)


class StreamParser:
    """
    Incremental parser of one XML stream (RFC 6120 section 11 restrictions).

    ``feed(data)`` calls ``on_start(name, attributes)`` for the stream
    header (``name`` and attribute keys are ``(uri, local)`` tuples),
    ``on_stanza(element)`` with a `domish.Element` for each complete
    first-level child, and ``on_end()`` for ``</stream:stream>``. Bad input
    raises `StreamViolation`. No DTD, entity declaration, external entity,
    comment or processing instruction is accepted; limits bound each
    stanza's size in bytes, its depth and each element's attributes.
    A parser that was ``close()``d stops at once and ignores later data.
    """

    def __init__(self, on_start, on_stanza, on_end, limits: Limits = Limits()):
        self.on_start = on_start
        self.on_stanza = on_stanza
        self.on_end = on_end
        self.limits = limits
        self.closed = False
        self._depth = 0
        self._current = None
        self._stanza_start = 0
        self._after_stanza = 0
        self._fed = 0
        self._started = False
        self._expat = parser = ParserCreate("UTF-8", " ")
        parser.buffer_text = True
        parser.ordered_attributes = False
        parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.UnparsedEntityDeclHandler = self._unparsed_entity
        parser.ExternalEntityRefHandler = self._external
        parser.CommentHandler = self._comment
        parser.ProcessingInstructionHandler = self._pi
        parser.SkippedEntityHandler = self._skipped

    def close(self):
        """Stop: no callback runs after this, also not for the rest of the current chunk."""
        self.closed = True

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        self._fed += len(data)
        try:
            self._expat.Parse(data, False)
        except _Stopped:
            return
        except ExpatError as e:
            raise StreamViolation("not-well-formed", expat_errors.messages.get(e.code, str(e))) from None
        except DTDForbidden:
            raise StreamViolation("restricted-xml", "a DTD is not allowed in XMPP") from None
        except EntitiesForbidden:
            raise StreamViolation("restricted-xml", "entity declarations and references are not allowed") from None
        except ExternalReferenceForbidden:
            raise StreamViolation("restricted-xml", "external entities are not allowed") from None
        if self.closed:
            return
        if self._depth == 0 and not self._started and self._fed > self.limits.header_size:
            raise StreamViolation("policy-violation", f"no stream header within {self.limits.header_size} bytes")
        if self._current is not None:
            self._check_size(self._fed)
        elif self._depth == 1 and self._fed - self._after_stanza > self.limits.stanza_size:
            # Whitespace or an unfinished tag between stanzas, without end.
            raise StreamViolation("policy-violation", f"over {self.limits.stanza_size} bytes without a stanza")

    def _check_size(self, position):
        if position - self._stanza_start > self.limits.stanza_size:
            raise StreamViolation("policy-violation", f"stanza over the limit of {self.limits.stanza_size} bytes")

    # -- expat handlers ------------------------------------------------------

    def _guard(self):
        if self.closed:
            raise _Stopped()

    def _start(self, name, attributes):
        self._guard()
        if len(attributes) > self.limits.attributes:
            raise StreamViolation("policy-violation", f"more than {self.limits.attributes} attributes on an element")
        qname = _split(name)
        attribs = {}
        for key, value in attributes.items():
            uri, local = _split(key)
            attribs[(uri, local) if uri else local] = value
        self._depth += 1
        if self._depth == 1:
            self._started = True
            self._after_stanza = self._expat.CurrentByteIndex
            self.on_start(qname, attribs)
            return
        if self._depth > self.limits.depth + 1:
            raise StreamViolation("policy-violation", f"elements nested deeper than {self.limits.depth}")
        if self._depth == 2:
            self._stanza_start = self._expat.CurrentByteIndex
            self._current = domish.Element(qname, defaultUri=qname[0], attribs=attribs)
        else:
            self._check_size(self._expat.CurrentByteIndex)
            self._current = self._current.addChild(
                domish.Element(qname, defaultUri=qname[0], attribs=attribs)
            )

    def _end(self, name):
        self._guard()
        self._depth -= 1
        if self._depth == 0:
            self.on_end()
            return
        element = self._current
        if self._depth == 1:
            self._current = None
            self._check_size(self._expat.CurrentByteIndex)
            self._after_stanza = self._expat.CurrentByteIndex
            self.on_stanza(element)
        else:
            self._current = element.parent

    def _text(self, data):
        self._guard()
        if self._current is not None:
            self._check_size(self._expat.CurrentByteIndex)
            self._current.addContent(data)
        elif data.strip():
            raise StreamViolation("not-well-formed", "text directly inside the stream element")

    def _doctype(self, *args):
        raise DTDForbidden(args[0] if args else None, None, None)

    def _entity(self, name, *args):
        raise EntitiesForbidden(name, None, None, None, None, None)

    def _unparsed_entity(self, name, *args):
        raise EntitiesForbidden(name, None, None, None, None, None)

    def _external(self, context, base, sysid, pubid):
        raise ExternalReferenceForbidden(context, base, sysid, pubid)

    def _comment(self, data):
        raise StreamViolation("restricted-xml", "comments are not allowed in XMPP")

    def _pi(self, target, data):
        raise StreamViolation("restricted-xml", "processing instructions are not allowed in XMPP")

    def _skipped(self, name, is_parameter):
        raise EntitiesForbidden(name, None, None, None, None, None)


# -- serialisation ---------------------------------------------------------------


def escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attr(text: str) -> str:
    return escape_text(text).replace("'", "&apos;").replace('"', "&quot;")


# Characters XML 1.0 cannot carry (most C0 controls, lone surrogates): dropped from outgoing text.

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """``text`` without the characters XML cannot carry (so a peer never gets bad XML from us)."""
    if _NOT_XML.search(text) is None:
        return text
    return _NOT_XML.sub("", text)


def stream_header(namespace: str, sender: str, stream_id: str = "", to: str = "", version: str = "1.0",
                  extra_ns: dict = None) -> bytes:
    """The opening ``<stream:stream ...>`` tag (with XML declaration) a server sends."""
    parts = ["<?xml version='1.0'?><stream:stream xmlns='", namespace,
             "' xmlns:stream='http://etherx.jabber.org/streams'"]
    for prefix, uri in (extra_ns or {}).items():
        parts.append(f" xmlns:{prefix}='{escape_attr(uri)}'")
    if sender:
        parts.append(f" from='{escape_attr(sender)}'")
    if to:
        parts.append(f" to='{escape_attr(to)}'")
    if stream_id:
        parts.append(f" id='{escape_attr(stream_id)}'")
    if version:
        parts.append(f" version='{version}'")
    parts.append(" xml:lang='en'>")
    return "".join(parts).encode("utf-8")


def element_to_bytes(element: domish.Element, namespace: str = NS_CLIENT) -> bytes:
    """A first-level stanza as UTF-8, in a stream whose default namespace is ``namespace``."""
    return element.toXml(
        prefixes={NS_STREAMS: "stream"}, defaultUri=namespace, prefixesInScope=["stream"]
    ).encode("utf-8")


def parse_one(data: bytes, namespace: str = NS_CLIENT, limits: Limits = Limits()) -> domish.Element:
    """Parse one stanza given as bytes (for tests and tools); raises `StreamViolation`."""
    found = []
    parser = StreamParser(lambda n, a: None, found.append, lambda: None, limits)
    parser.feed(
        b"<stream:stream xmlns='" + namespace.encode() + b"' xmlns:stream='" + NS_STREAMS.encode() + b"'>"
    )
    parser.feed(data)
    if len(found) != 1:
        raise StreamViolation("not-well-formed", f"expected one complete stanza, got {len(found)}")
    return found[0]


# -- XEP-0106: JID escaping --------------------------------------------------------

_ESCAPES = {
    " ": "\\20", '"': "\\22", "&": "\\26", "'": "\\27", "/": "\\2f",
    ":": "\\3a", "<": "\\3c", ">": "\\3e", "@": "\\40", "\\": "\\5c",
}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def escape_node(user: str) -> str:
    """A localpart for ``user`` per XEP-0106 (``"j.r@x"`` -> ``"j.r\\40x"``)."""
    if not any(c in _ESCAPES for c in user):
        return user
    out = []
    for i, c in enumerate(user):
        if c == "\\":
            # Only a backslash that would read as an escape sequence needs escaping.
            out.append("\\5c" if user[i:i + 3].lower() in _UNESCAPES else c)
        else:
            out.append(_ESCAPES.get(c, c))
    return "".join(out)


def unescape_node(node: str) -> str:
    """The user name a XEP-0106 localpart stands for."""
    if "\\" not in node:
        return node
    out, i = [], 0
    while i < len(node):
        seq = node[i:i + 3].lower()
        if node[i] == "\\" and seq in _UNESCAPES:
            out.append(_UNESCAPES[seq])
            i += 3
        else:
            out.append(node[i])
            i += 1
    return "".join(out)
