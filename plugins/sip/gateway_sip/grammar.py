"""SIP header-value grammar (RFC 3261 19.1, 20, 25): URIs, name-addr, Via, CSeq, auth, quoting, and SipError."""

from __future__ import annotations

import functools
import re
from typing import Optional

import attrs

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_HOST = re.compile(r"[a-z0-9\-._:]+")
_VIA = re.compile(r"SIP/2\.0/([A-Za-z]+) ([a-z0-9\-._]+)(?::([0-9]{1,5}))?(;.*)?", re.DOTALL)
_QUOTE_PARAM = re.compile(r'[\s;,"<>]')
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_UNQUOTE = re.compile(r"\\(.)")


def digits(text) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts characters such as '¹' that int() refuses)."""
    return bool(text) and text.isascii() and text.isdigit()


class SipError(ValueError):
    """
    Bytes that are not an acceptable SIP message. ``reason`` says why,
    ``status`` is the response a request gets for it (400, 413, 505, ...),
    ``message`` is what could be parsed (to build that response), if anything.
    """

    def __init__(self, reason: str, status: int = 400, message=None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message


# -- header values ------------------------------------------------------------------


def split_commas(value: str) -> list:
    """Split a header value at commas outside quotes and angle brackets."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    if '"' not in value and "<" not in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    parts, current, quoted, angle, escape = [], [], False, False, False
    for ch in value:
        if escape:
            current.append(ch)
            escape = False
            continue
        if ch == "\\" and quoted:
            escape = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        elif ch == "," and not quoted and not angle:
            part = "".join(current).strip()
            if part:
                parts.append(part)
            current = []
            continue
        current.append(ch)
    part = "".join(current).strip()
    if part:
        parts.append(part)
    return parts


def quote(text: str) -> str:
    """A quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ") + '"'


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return _UNQUOTE.sub(r"\1", text[1:-1])
    return text


def _params(text: str) -> tuple:
    """``;a=1;b;c="x"`` -> (("a", "1"), ("b", None), ("c", "x")); names lower-cased."""
    out = []
    for part in _split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        out.append((name.strip().lower(), _unquote(value) if sep else None))
    return tuple(out)


def _split_outside_quotes(text: str, sep: str) -> list:
    if '"' not in text:
        return text.split(sep)
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _render_params(params) -> str:
    out = []
    for name, value in params:
        if value is None:
            out.append(f";{name}")
        elif value == "" or _QUOTE_PARAM.search(value):
            out.append(f";{name}={quote(value)}")
        else:
            out.append(f";{name}={value}")
    return "".join(out)


def _param(params, name, default=None):
    for k, v in params:
        if k == name:
            return v
    return default


# User part: unreserved and user-unreserved characters stay, the rest is escaped (RFC 3261 25.1).
_USER_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/")


_USER_PLAIN = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]*")


def escape_user(user: str) -> str:
    if _USER_PLAIN.fullmatch(user):
        return user
    return "".join(ch if ch in _USER_SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in user)


def unescape(text: str) -> str:
    if "%" not in text:
        return text
    raw = bytearray()
    i = 0
    data = text.encode("utf-8")
    while i < len(data):
        if data[i:i + 1] == b"%" and _HEX2.fullmatch(data[i + 1:i + 3] or b""):
            raw.append(int(data[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return raw.decode("utf-8", "replace")


@attrs.frozen
class SipUri:
    """``sip:user@host:port;params?headers`` (RFC 3261 19.1)."""

    scheme: str
    user: str
    host: str
    port: Optional[int] = None
    params: tuple = ()
    headers: str = ""

    def param(self, name, default=None):
        return _param(self.params, name, default)

    def __str__(self):
        out = f"{self.scheme}:"
        if self.user:
            out += escape_user(self.user) + "@"
        out += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _render_params(self.params)
        if self.headers:
            out += "?" + self.headers
        return out

    @property
    def aor(self) -> str:
        """``sip:user@host``: the address-of-record form, no port or parameters."""
        return f"{self.scheme}:{escape_user(self.user)}@{self.host}" if self.user else f"{self.scheme}:{self.host}"


def parse_uri(text: str, message=None) -> SipUri:
    """Parse a sip: or sips: URI; raise `SipError` (416 for other schemes)."""
    try:
        return _parse_uri(text)
    except SipError as e:
        if message is None:
            raise
        raise SipError(e.reason, e.status, message) from None


@functools.lru_cache(maxsize=4096)
def _parse_uri(text: str) -> SipUri:
    # Request-URIs and From/To URIs repeat from message to message; a `SipUri` is immutable.
    message = None
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        raise SipError(f"not a sip: URI: {text[:60]!r}", 416, message)
    rest, _, headers = rest.partition("?")
    if "@" in rest:
        userinfo, _, hostport = rest.rpartition("@")
        user = unescape(userinfo.split(":", 1)[0])
        if not user:
            raise SipError(f"empty user in {text[:60]!r}", 400, message)
    else:
        user, hostport = "", rest
    hostport, _, params = hostport.partition(";")
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
        if after and not after.startswith(":"):
            raise SipError(f"bad host in {text[:60]!r}", 400, message)
    else:
        host, _, port_text = hostport.partition(":")
    host = host.lower()
    if not host or not _HOST.fullmatch(host):
        raise SipError(f"bad host in URI {text[:60]!r}", 400, message)
    port = None
    if port_text:
        if not digits(port_text) or not 0 < int(port_text) < 65536:
            raise SipError(f"bad port in URI {text[:60]!r}", 400, message)
        port = int(port_text)
    return SipUri(scheme, user, host, port, _params(params), headers)


@attrs.frozen
class NameAddr:
    """A From/To/Contact value: display name, URI (text) and header parameters."""

    uri: str
    display: str = ""
    params: tuple = ()

    def param(self, name, default=None):
        return _param(self.params, name, default)

    @property
    def tag(self) -> Optional[str]:
        return self.param("tag")

    def with_param(self, name, value) -> "NameAddr":
        kept = tuple((k, v) for k, v in self.params if k != name)
        return attrs.evolve(self, params=kept + ((name, value),))

    def __str__(self):
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{self.uri}>{_render_params(self.params)}"


def parse_name_addr(text: str, message=None) -> NameAddr:
    """Parse ``"Name" <uri>;tag=x`` or ``uri;tag=x`` (RFC 3261 20.10); also ``*``."""
    text = (text or "").strip()
    if not text:
        raise SipError("empty address", 400, message)
    display = ""
    if text.startswith('"'):
        end = 1
        while end < len(text):
            if text[end] == "\\":
                end += 2
                continue
            if text[end] == '"':
                break
            end += 1
        else:
            raise SipError(f"unterminated display name in {text[:60]!r}", 400, message)
        display = _unquote(text[: end + 1])
        text = text[end + 1:].strip()
        if not text.startswith("<"):
            raise SipError("display name without <URI>", 400, message)
    if "<" in text:
        before, _, rest = text.partition("<")
        if not display:
            display = before.strip()
        uri, sep, after = rest.partition(">")
        if not sep:
            raise SipError(f"unterminated <URI> in {text[:60]!r}", 400, message)
        return NameAddr(uri.strip(), display, _params(after))
    uri, _, params = text.partition(";")
    return NameAddr(uri.strip(), "", _params(params))


@attrs.frozen
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: Optional[int] = None
    params: tuple = ()

    def param(self, name, default=None):
        return _param(self.params, name, default)

    def has(self, name) -> bool:
        return any(k == name for k, _ in self.params)

    @property
    def branch(self) -> Optional[str]:
        return self.param("branch")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port or 5060}"

    def with_params(self, **values) -> "Via":
        params = list(self.params)
        for name, value in values.items():
            for i, (k, _) in enumerate(params):
                if k == name:
                    params[i] = (name, value)
                    break
            else:
                params.append((name, value))
        return attrs.evolve(self, params=tuple(params))

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{_render_params(self.params)}"


def parse_via(text: str, message=None) -> Via:
    """Parse one Via value (split a joined header with `split_commas` first)."""
    text = text.strip()
    fast = _VIA.fullmatch(text)
    if fast is not None:  # the usual spelling; anything else takes the long way below
        transport, host, port_text, params = fast.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise SipError(f"bad Via port in {text[:60]!r}", 400, message)
        return Via(transport.upper(), host, port, _params(params) if params else ())
    proto, _, rest = text.partition(" ")
    parts = [p.strip() for p in proto.split("/")]
    if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0" or not parts[2]:
        raise SipError(f"bad Via {text[:60]!r}", 400, message)
    rest = rest.strip()
    hostport, _, params = rest.partition(";")
    hostport = hostport.strip()
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    host = host.strip().lower()
    port_text = port_text.strip()
    if not host or not _HOST.fullmatch(host):
        raise SipError(f"bad Via host in {text[:60]!r}", 400, message)
    port = None
    if port_text:
        if not digits(port_text) or not 0 < int(port_text) < 65536:
            raise SipError(f"bad Via port in {text[:60]!r}", 400, message)
        port = int(port_text)
    return Via(parts[2].upper(), host, port, _params(params))


def parse_cseq(text: str, message=None) -> tuple:
    """``"1 REGISTER"`` -> (1, "REGISTER")."""
    number, _, method = (text or "").strip().partition(" ")
    method = method.strip()
    if not digits(number) or len(number) > 10 or int(number) >= 2**31 or not _TOKEN.match(method or "-:"):
        raise SipError(f"bad CSeq {text[:40]!r}", 400, message)
    return int(number), method


def parse_auth(text: str) -> tuple:
    """``Digest a="b", c=d`` -> ("digest", {"a": "b", "c": "d"}); raise `SipError`."""
    scheme, _, rest = (text or "").strip().partition(" ")
    if not scheme:
        raise SipError("empty credentials")
    values = {}
    for part in split_commas(rest):
        name, sep, value = part.partition("=")
        if not sep:
            raise SipError(f"bad auth parameter {part[:40]!r}")
        values[name.strip().lower()] = _unquote(value)
    return scheme.lower(), values


def render_auth(scheme: str, values: list) -> str:
    """``Digest realm="x", ...``: ``values`` are (name, value, quoted) triples."""
    parts = [f"{name}={quote(value) if quoted else value}" for name, value, quoted in values]
    return f"{scheme} " + ", ".join(parts)
