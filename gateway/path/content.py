"""One content, many renderings: rich text sanitized once, its plain text derived from it."""

from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser
from typing import Optional
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr


__all__ = ["sanitize", "text_of", "html_of", "xhtml_of", "normalize", "ALLOWED_TAGS"]

# What a recipient may be shown of rich text, on any network: formatting and
# links. Everything else (scripts, images that call home, forms, frames,
# event handlers, styles that are not formatting) is removed before policy
# sees the message, so nothing reaches a recipient that policy did not see.
ALLOWED_TAGS = frozenset({
    "a", "b", "strong", "i", "em", "u", "s", "strike", "del", "ins", "br", "p", "div", "span",
    "font", "blockquote", "q", "cite", "code", "pre", "tt", "ul", "ol", "li", "sub", "sup",
    "big", "small", "h1", "h2", "h3", "h4", "h5", "h6",
})
_ATTRIBUTES = {
    "a": {"href", "title"},
    "font": {"color", "face", "size", "back"},
    "span": {"style"},
    "p": {"style"},
    "div": {"style"},
}
_STYLES = {"color", "background-color", "font-family", "font-size", "font-style", "font-weight",
           "text-decoration"}
_SCHEMES = {"http", "https", "mailto", "xmpp", "sip", "aim", "tel"}

_TAGS = set(ALLOWED_TAGS)

# Tags that end a line of the plain text.
_BREAKS = frozenset({"br", "p", "div", "li", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6"})
_SPACES = re.compile(r"[ \t\r\f\v]+")
# What XML 1.0 does not allow in a document (control characters, lone surrogates, U+FFFE/F).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(markup: str) -> str:
    import nh3  # at the first rich text: 1.6 MB a gateway that never sees HTML does without

    return nh3.clean(
        markup,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        filter_style_properties=_STYLES,
        link_rel=None,
        strip_comments=True,
    )


def sanitize(markup: str) -> str:
    """
    ``markup`` with only the allowed tags, attributes, styles and link
    schemes left. Sanitized markup sanitizes to itself: the parser may
    nest what it reads again differently (a heading inside a heading), so
    a result that would change is cleaned once more (found by fuzzing).
    """
    clean = _clean(markup)
    if clean == markup:
        return clean
    again = _clean(clean)
    return clean if again == clean else _clean(again)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self._links = []  # (href, where its label starts in parts)

    def handle_starttag(self, tag, attrs):
        if tag in _BREAKS and tag != "br" and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")
        if tag == "br":
            self.parts.append("\n")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            shown = href[7:] if href.startswith("mailto:") else href
            if href and shown not in label:
                # The link's target is part of what the recipient can be shown.
                self.parts.append(f" ({href})" if label else href)
        elif tag in _BREAKS and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(_SPACES.sub(" ", data.replace("\n", " ")))


def text_of(markup: str) -> str:
    """The plain text of sanitized ``markup``: what a plain-text client shows, link targets included."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


_VOID = frozenset({"br"})


class _Xhtml(HTMLParser):
    """Sanitized HTML written again as well-formed XML: void tags closed, entities as characters."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self.open = []

    def handle_starttag(self, tag, attrs):
        if tag not in _TAGS:
            return
        attributes = "".join(
            f" {name}={quoteattr(_XML_INVALID.sub('', value or ''))}" for name, value in attrs
            if name in _ATTRIBUTES.get(tag, ())
        )
        if tag in _VOID:
            self.parts.append(f"<{tag}{attributes}/>")
        else:
            self.parts.append(f"<{tag}{attributes}>")
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.open and self.open[-1] == tag:
            self.parts.append(f"</{self.open.pop()}>")

    def handle_endtag(self, tag):
        if tag not in self.open:
            return
        while self.open:
            name = self.open.pop()
            self.parts.append(f"</{name}>")
            if name == tag:
                break

    def handle_data(self, data):
        self.parts.append(xml_escape(_XML_INVALID.sub("", data)))

    def result(self):
        self.close()
        return "".join(self.parts) + "".join(f"</{name}>" for name in reversed(self.open))


def xhtml_of(markup: str) -> str:
    """
    Sanitized ``markup`` (`sanitize`) as well-formed XHTML, for protocols
    that carry rich text as XML (XMPP's XHTML-IM): ``<br>`` becomes
    ``<br/>``, named entities become their characters, every tag is
    closed. The same content, the same allowed tags and attributes.
    """
    parser = _Xhtml()
    parser.feed(markup)
    return parser.result()


def html_of(text: str) -> str:
    """Plain ``text`` as markup (escaped, line breaks kept)."""
    return html_lib.escape(text, quote=False).replace("\n", "<br>")


def normalize(text: str, markup: Optional[str]) -> tuple:
    """
    ``(text, html)`` of a message: with rich ``markup``, the markup
    sanitized and the text derived from it (a plain body sent beside it
    counts for nothing: recipients and the archive get what policy saw);
    markup that sanitizes to nothing visible is dropped, and the plain
    text is then the whole content.
    """
    if markup is None:
        return text, None
    clean = sanitize(markup)
    derived = text_of(clean)
    if not derived:
        return text, None
    return derived, clean
