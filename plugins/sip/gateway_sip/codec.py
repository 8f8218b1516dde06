"""SIP message codec (RFC 3261 section 7, 18.3, 20, 25): pure functions over bytes, no I/O."""

from __future__ import annotations

import functools
from typing import Optional, Union

# The header-value grammar (URIs, name-addr, Via, CSeq, auth, quoting) and SipError are in
# gateway_sip.grammar; this module gives their names too, so callers use ``codec.X`` for all of them.
from gateway_sip.grammar import (
    _TOKEN,
    NameAddr,
    SipError,
    SipUri,
    Via,
    digits,
    escape_user,
    parse_auth,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
    quote,
    render_auth,
    split_commas,
    unescape,
)

__all__ = [
    "SipError",
    "FramingError",
    "Headers",
    "Request",
    "Response",
    "SipUri",
    "NameAddr",
    "Via",
    "parse_message",
    "validate_request",
    "split_stream",
    "parse_uri",
    "parse_name_addr",
    "parse_via",
    "parse_cseq",
    "parse_auth",
    "render_auth",
    "split_commas",
    "quote",
    "REASONS",
    # Also from gateway_sip.grammar.
    "escape_user",
    "unescape",
]

MAX_HEADER_BYTES = 16384
MAGIC_COOKIE = "z9hG4bK"


class FramingError(SipError):
    """A stream (TCP/TLS) that cannot be split into messages any more: close it."""


# Compact forms (RFC 3261 7.3.3 and later RFCs) and the canonical spelling of names.
COMPACT = {
    "i": "call-id", "m": "contact", "f": "from", "t": "to", "v": "via",
    "l": "content-length", "c": "content-type", "e": "content-encoding",
    "s": "subject", "k": "supported", "o": "event", "u": "allow-events",
}
_SPELLING = {
    name.lower(): name
    for name in (
        "Call-ID", "CSeq", "WWW-Authenticate", "SIP-ETag", "SIP-If-Match",
        "MIME-Version", "Max-Forwards", "Content-Length", "Content-Type",
        "Proxy-Authenticate", "Proxy-Authorization", "Record-Route",
        "Subscription-State", "Allow-Events", "User-Agent", "Min-Expires",
        "Retry-After", "Accept-Encoding", "Accept-Language",
    )
}
_METHODS = frozenset({"REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "ACK", "CANCEL", "BYE",
                      "INVITE", "INFO", "PRACK", "UPDATE", "REFER"})

# Header names as they are usually written -> lookup key (a shortcut past the token check).
_KNOWN_NAMES = {}
for _name in ("Via", "From", "To", "Call-ID", "Call-Id", "CSeq", "Contact", "Max-Forwards", "Content-Length",
              "Content-Type", "Expires", "User-Agent", "Server", "Event", "Accept", "Allow", "Supported",
              "Subscription-State", "Authorization", "Proxy-Authorization", "WWW-Authenticate",
              "Proxy-Authenticate", "Route", "Record-Route", "Allow-Events", "SIP-ETag", "SIP-If-Match",
              "Date", "Warning", "Reason", "Retry-After", "Min-Expires", "Require", "Subject"):
    for _spelling in (_name, _name.lower()):
        _KNOWN_NAMES[_spelling] = _name.lower()
for _short, _long in COMPACT.items():
    _KNOWN_NAMES[_short] = _KNOWN_NAMES[_short.upper()] = _long
del _name, _spelling, _short, _long

# Headers whose values may be joined with commas (RFC 3261 7.3.1); only these are split.
MULTI = frozenset({"via", "contact", "route", "record-route", "allow", "supported", "require",
                   "accept", "allow-events", "proxy-require", "unsupported"})

REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 407: "Proxy Authentication Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 489: "Bad Event", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 603: "Decline",
}


@functools.lru_cache(maxsize=1024)
def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact forms expanded."""
    key = name.strip().lower()
    return COMPACT.get(key, key)


@functools.lru_cache(maxsize=1024)
def spelled(key: str) -> str:
    """How a header name is written on the wire."""
    return _SPELLING.get(key) or "-".join(part.capitalize() for part in key.split("-"))


class Headers:
    """Header fields in order; names compared case-insensitively, compact forms expanded."""

    __slots__ = ("_fields",)

    def __init__(self, fields=()):
        self._fields = [(header_key(n), v) for n, v in fields]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        key = header_key(name)
        for k, v in self._fields:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list:
        """Every value of ``name``; comma-joined values of list headers are split."""
        key = header_key(name)
        values = [v for k, v in self._fields if k == key]
        if key in MULTI:
            return [part for v in values for part in split_commas(v)]
        return values

    def add(self, name: str, value: str) -> None:
        self._fields.append((header_key(name), str(value)))

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` with one value, where the first one was (or at the end)."""
        key = header_key(name)
        out, placed = [], False
        for k, v in self._fields:
            if k == key:
                if not placed:
                    out.append((k, str(value)))
                    placed = True
            else:
                out.append((k, v))
        if not placed:
            out.append((key, str(value)))
        self._fields = out

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [(k, v) for k, v in self._fields if k != key]

    def prepend(self, name: str, value: str) -> None:
        self._fields.insert(0, (header_key(name), str(value)))

    def replace_first(self, name: str, value: str) -> None:
        key = header_key(name)
        for i, (k, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = (k, value)
                return
        self._fields.append((key, value))

    def items(self) -> list:
        return list(self._fields)

    def copy(self) -> "Headers":
        h = Headers()
        h._fields = list(self._fields)
        return h

    def __contains__(self, name: str) -> bool:
        key = header_key(name)
        return any(k == key for k, _ in self._fields)

    def __eq__(self, other):
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self):
        return f"Headers({self._fields!r})"


class _Message:
    __slots__ = ("headers", "body", "_via", "_from", "_to", "_cseq")

    def to_bytes(self) -> bytes:
        """Serialise with a correct Content-Length (where the message had one, else last)."""
        length = str(len(self.body))
        lines = [self.start_line()]
        placed = False
        for key, value in self.headers._fields:
            if key == "content-length":
                if placed:
                    continue
                value, placed = length, True
            lines.append(f"{spelled(key)}: {value}")
        if not placed:
            lines.append(f"Content-Length: {length}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8") + self.body

    @property
    def call_id(self) -> Optional[str]:
        return self.headers.get("call-id")

    def cseq(self) -> tuple:
        cached = getattr(self, "_cseq", None)
        if cached is not None and cached[0] == self.headers.get("cseq", ""):
            return cached[1]
        raw = self.headers.get("cseq", "")
        value = parse_cseq(raw)
        self._cseq = (raw, value)
        return value

    def from_(self) -> "NameAddr":
        """The From header parsed (once): `SipError` when it is missing or malformed."""
        return self._name_addr("from", "_from")

    def to_(self) -> "NameAddr":
        """The To header parsed (once)."""
        return self._name_addr("to", "_to")

    def _name_addr(self, name, slot):
        raw = self.headers.get(name)
        cached = getattr(self, slot, None)
        if cached is not None and cached[0] == raw:
            return cached[1]
        value = parse_name_addr(raw, self)
        setattr(self, slot, (raw, value))
        return value

    def top_via(self) -> "Via":
        raw = self.headers.get("via")
        if not raw:
            raise SipError("no Via header")
        cached = getattr(self, "_via", None)
        if cached is not None and cached[0] == raw:
            return cached[1]
        parts = split_commas(raw) if "," in raw else [raw]
        if not parts:
            raise SipError("an empty Via header")
        via = parse_via(parts[0])
        self._via = (raw, via)
        return via


class Request(_Message):
    """A SIP request: method, Request-URI (text), headers, body bytes."""

    __slots__ = ("method", "uri", "branch")

    def __init__(self, method: str, uri: str, headers=None, body: bytes = b""):
        self.method = method
        self.uri = uri
        self.branch = None  # of a request we send: the branch of its Via
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = body

    def start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self):
        return f"<Request {self.method} {self.uri}>"


class Response(_Message):
    """A SIP response: status code, reason phrase, headers, body bytes."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str = "", headers=None, body: bytes = b""):
        self.status = status
        self.reason = reason or REASONS.get(status, "Unknown")
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = body

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self):
        return f"<Response {self.status} {self.reason}>"


Message = Union[Request, Response]


# -- whole messages ---------------------------------------------------------------


def _head_and_body(data: bytes):
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4:]
    end = data.find(b"\n\n")  # tolerated: bare LF line ends
    if end >= 0:
        return data[:end], data[end + 2:]
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES) -> Message:
    """
    Parse one complete message (a UDP datagram, or a frame `split_stream`
    found). Raise `SipError`; its ``message`` holds what could be parsed
    when the start line was good.
    """
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray):
            raise SipError("a SIP message is bytes")
        data = bytes(data)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if not data:
        raise SipError("empty message")
    head, body = _head_and_body(data)
    if len(head) > max_header_bytes:
        raise SipError(f"header section longer than {max_header_bytes} bytes", 513)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("header section is not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    message = _start_line(lines[0])
    problem = None
    fields = []
    length = None
    for number, line in enumerate(lines[1:], 2):
        if line[:1] in (" ", "\t"):  # folded continuation (LWS)
            if not fields:
                problem = problem or f"line {number}: continuation before any header"
                continue
            key, value = fields[-1]
            fields[-1] = (key, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        key = _KNOWN_NAMES.get(name)
        if key is None:
            name = name.strip()
            if not sep or not _TOKEN.match(name):
                problem = problem or f"line {number}: not a header field: {line[:40]!r}"
                continue
            key = name.lower()
            key = COMPACT.get(key, key)
        value = value.strip()
        if key == "content-length" and length is None:
            length = value
        fields.append((key, value))
    message.headers._fields = fields
    if length is not None:
        if not digits(length):
            problem = problem or f"Content-Length is not a number: {length[:20]!r}"
        elif int(length) > len(body):
            problem = problem or f"body has {len(body)} bytes, Content-Length says {length}"
        else:
            body = body[: int(length)]
    message.body = body
    if problem:
        raise SipError(problem, 400, message)
    return message


def _start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0":
            raise SipError(f"not SIP/2.0: {version[:20]!r}")
        if len(code) != 3 or not digits(code) or not 100 <= int(code) <= 699:
            raise SipError(f"bad status code {code[:10]!r}")
        return Response(int(code), reason.strip() or REASONS.get(int(code), "Unknown"))
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise SipError(f"bad request line {line[:60]!r}")
    method, uri, version = parts
    if method not in _METHODS and not _TOKEN.match(method):
        raise SipError(f"bad method {method[:20]!r}")
    request = Request(method, uri)
    if version != "SIP/2.0":
        raise SipError(f"SIP version {version[:20]!r} is not supported", 505, request)
    return request


def validate_request(request: Request) -> None:
    """
    The checks of RFC 3261 8.2 a server makes before looking further; raise
    `SipError`. What it parses stays with the request (`Request.from_`,
    `Request.to_`, `Request.cseq`, `Request.top_via`).
    """
    h = request.headers
    for name in ("via", "from", "to", "call-id", "cseq"):
        if not h.get(name):
            raise SipError(f"missing {spelled(name)} header", 400, request)
    try:
        number, method = request.cseq()
    except SipError as e:
        raise SipError(e.reason, 400, request) from None
    if method != request.method:
        raise SipError(f"CSeq method {method} does not match {request.method}", 400, request)
    try:
        request.top_via()
    except SipError as e:
        raise SipError(e.reason, 400, request) from None
    request.from_()
    request.to_()
    forwards = h.get("max-forwards")
    if forwards is not None and not digits(forwards):
        raise SipError("Max-Forwards is not a number", 400, request)
    if not request.uri.lower().startswith(("sip:", "sips:")):
        raise SipError(f"unsupported URI scheme in {request.uri[:40]!r}", 416, request)
    parse_uri(request.uri, request)


def split_stream(buffer: bytes, max_size: int = 65536) -> tuple:
    """
    The next thing in a TCP/TLS byte stream (RFC 3261 18.3, RFC 5626 4.4.1):
    ``("message", frame, used)``, ``("ping", b"", 4)`` for a CRLFCRLF
    keep-alive, ``("blank", b"", 2)`` for a stray CRLF, or ``(None, b"", 0)``
    when more bytes are needed. Raise `FramingError` when the stream cannot
    be framed (no Content-Length, too large): the connection must close.
    """
    if buffer[:4] == b"\r\n\r\n":
        return "ping", b"", 4
    if buffer[:2] == b"\r\n":
        if len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
            return None, b"", 0
        return "blank", b"", 2
    if buffer[:1] == b"\r" and len(buffer) == 1:
        return None, b"", 0
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > min(MAX_HEADER_BYTES, max_size):
            raise FramingError(f"no end of headers within {min(MAX_HEADER_BYTES, max_size)} bytes", 513)
        return None, b"", 0
    if end > min(MAX_HEADER_BYTES, max_size):
        raise FramingError(f"header section longer than {min(MAX_HEADER_BYTES, max_size)} bytes", 513)
    length = None
    for line in buffer[:end].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit() or len(value) > 9:
                raise FramingError(f"bad Content-Length {value[:20]!r}")
            if length is not None and length != int(value):
                raise FramingError("two different Content-Length headers")
            length = int(value)
    if length is None:
        raise FramingError("no Content-Length on a stream transport")
    total = end + 4 + length
    if total > max_size:
        raise FramingError(f"message of {total} bytes is over the limit of {max_size}", 513)
    if len(buffer) < total:
        return None, b"", 0
    return "message", buffer[:total], total
