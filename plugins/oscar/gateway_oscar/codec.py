"""OSCAR wire format: FLAP frames, SNACs, TLVs and the structures inside them; pure functions over bytes."""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable, Optional

import attrs

__all__ = [
    "OscarCodecError",
    "Flap",
    "Snac",
    "Reader",
    "FLAP_START",
    "CH_SIGNON",
    "CH_DATA",
    "CH_ERROR",
    "CH_SIGNOFF",
    "CH_KEEPALIVE",
    "parse_flaps",
    "split_flaps",
    "encode_flap",
    "encode_snac_flap",
    "parse_snac",
    "encode_snac",
    "parse_tlvs",
    "encode_tlv",
    "encode_tlvs",
    "first_tlv",
    "roast",
    "unroast",
    "bucp_hash",
    "normalize_screen_name",
]

FLAP_START = 0x2A
CH_SIGNON, CH_DATA, CH_ERROR, CH_SIGNOFF, CH_KEEPALIVE = 1, 2, 3, 4, 5
CHANNELS = frozenset((CH_SIGNON, CH_DATA, CH_ERROR, CH_SIGNOFF, CH_KEEPALIVE))
FLAP_HEADER = struct.Struct("!BBHH")
SNAC_HEADER = struct.Struct("!HHHI")
FLAP_SNAC_HEADER = struct.Struct("!BBHHHHHI")  # a channel-2 FLAP header and its SNAC header in one
FLAP_VERSION = b"\x00\x00\x00\x01"

# The standard roasting table (AIM 3.x-5.x, ICQ 2000+, aimpyfly, Twisted's ICQ mode).
ROAST_TABLE = bytes.fromhex("F32681C43986DB9271A3B9E6537A957C")
AIM_MD5_STRING = b"AOL Instant Messenger (SM)"


class OscarCodecError(ValueError):
    """Bytes that are not valid OSCAR; the text says what was wrong."""


@attrs.frozen(slots=True)
class Flap:
    """One FLAP frame: channel, sequence number and payload."""

    channel: int
    seq: int
    payload: bytes

    def to_bytes(self) -> bytes:
        return encode_flap(self.channel, self.seq, self.payload)


@attrs.frozen(slots=True)
class Snac:
    """One SNAC: family, subtype, flags, request id and body."""

    family: int
    subtype: int
    flags: int = 0
    request_id: int = 0
    body: bytes = b""

    @property
    def name(self) -> str:
        return f"{self.family:02X}/{self.subtype:02X}"

    def to_bytes(self) -> bytes:
        return encode_snac(self.family, self.subtype, self.body, self.flags, self.request_id)


class Reader:
    """Reads big-endian fields from bytes; a short read raises `OscarCodecError`."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str = "data"):
        self.data = data
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise OscarCodecError(
                f"{self.what} ends after {len(self.data)} bytes; needed {n} more at offset {self.pos}"
            )
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self._take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self._take(4))[0]

    def take(self, n: int) -> bytes:
        return self._take(n)

    def bytes8(self) -> bytes:
        """A string with a one-byte length (screen names)."""
        return self._take(self.u8())

    def bytes16(self) -> bytes:
        """A string with a two-byte length."""
        return self._take(self.u16())

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def tlvs(self, count: Optional[int] = None) -> list:
        """``count`` TLVs (all that remain when None)."""
        out = []
        while (count is None and self.remaining) or (count is not None and len(out) < count):
            tlv_type = self.u16()
            out.append((tlv_type, self._take(self.u16())))
        return out

    def tlv_block(self) -> list:
        """A u16 count followed by that many TLVs."""
        return self.tlvs(self.u16())

    def tlvl_block(self) -> list:
        """A u16 byte length followed by TLVs filling exactly that many bytes."""
        return parse_tlvs(self._take(self.u16()))


# -- FLAP ------------------------------------------------------------------


def parse_flaps(buffer: bytes, max_payload: int = 0xFFFF) -> tuple:
    """
    Split ``buffer`` into complete FLAP frames: ``([Flap, ...], rest)``,
    where ``rest`` is an incomplete frame to keep for the next read.
    Raises `OscarCodecError` for a wrong start byte, an unknown channel or
    a payload longer than ``max_payload``.
    """
    frames, rest = split_flaps(buffer, max_payload)
    return [Flap(channel, seq, payload) for channel, seq, payload in frames], rest


def split_flaps(buffer: bytes, max_payload: int = 0xFFFF) -> tuple:
    """`parse_flaps` with each frame a ``(channel, seq, payload)`` tuple (no object per frame)."""
    frames = []
    pos = 0
    size = len(buffer)
    unpack = FLAP_HEADER.unpack_from
    while size - pos >= 6:
        start, channel, seq, length = unpack(buffer, pos)
        if start != FLAP_START:
            raise OscarCodecError(f"FLAP frame starts with 0x{start:02x}, not 0x2a")
        if channel not in CHANNELS:
            raise OscarCodecError(f"FLAP channel {channel} is not 1-5")
        if length > max_payload:
            raise OscarCodecError(f"FLAP payload of {length} bytes is over the limit of {max_payload}")
        end = pos + 6 + length
        if end > size:
            break
        frames.append((channel, seq, buffer[pos + 6:end]))
        pos = end
    if pos == size:
        return frames, b""
    if buffer[pos] != FLAP_START:
        raise OscarCodecError(f"FLAP frame starts with 0x{buffer[pos]:02x}, not 0x2a")
    return frames, bytes(buffer[pos:])


def encode_flap(channel: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > 0xFFFF:
        raise OscarCodecError(f"FLAP payload of {len(payload)} bytes does not fit 16 bits")
    return FLAP_HEADER.pack(FLAP_START, channel, seq & 0xFFFF, len(payload)) + payload


# -- SNAC ------------------------------------------------------------------


def parse_snac(payload: bytes) -> Snac:
    """The SNAC in a channel-2 payload; raises `OscarCodecError` when under 10 bytes."""
    if len(payload) < 10:
        raise OscarCodecError(f"SNAC header needs 10 bytes, got {len(payload)}")
    family, subtype, flags, request_id = SNAC_HEADER.unpack_from(payload)
    body = payload[10:]
    if flags & 0x8000:
        # Optional leading "SNAC TLV block": u16 length + that many bytes.
        if len(body) < 2:
            raise OscarCodecError("SNAC flag 0x8000 set but no extra-data length")
        skip = struct.unpack("!H", body[:2])[0]
        if 2 + skip > len(body):
            raise OscarCodecError("SNAC extra data runs past the end of the frame")
        body = body[2 + skip:]
    return Snac(family, subtype, flags, request_id, bytes(body))


def encode_snac(family: int, subtype: int, body: bytes = b"", flags: int = 0, request_id: int = 0) -> bytes:
    return SNAC_HEADER.pack(family, subtype, flags, request_id & 0xFFFFFFFF) + body


def encode_snac_flap(seq: int, family: int, subtype: int, body: bytes = b"", flags: int = 0,
                     request_id: int = 0) -> bytes:
    """A whole channel-2 FLAP frame carrying one SNAC: ``encode_flap(2, seq, encode_snac(...))`` in one step."""
    length = len(body) + 10
    if length > 0xFFFF:
        raise OscarCodecError(f"FLAP payload of {length} bytes does not fit 16 bits")
    return FLAP_SNAC_HEADER.pack(FLAP_START, CH_DATA, seq & 0xFFFF, length, family, subtype, flags,
                                 request_id & 0xFFFFFFFF) + body


# -- TLV -------------------------------------------------------------------


def parse_tlvs(data: bytes) -> list:
    """Every TLV in ``data`` as ``[(type, value), ...]``; a truncated one raises `OscarCodecError`."""
    return Reader(data, "TLV list").tlvs()


def encode_tlv(tlv_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise OscarCodecError(f"TLV 0x{tlv_type:04x} value of {len(value)} bytes does not fit 16 bits")
    return struct.pack("!HH", tlv_type, len(value)) + value


def encode_tlvs(tlvs: Iterable) -> bytes:
    return b"".join(encode_tlv(t, v) for t, v in tlvs)


def encode_tlv_block(tlvs) -> bytes:
    tlvs = list(tlvs)
    return struct.pack("!H", len(tlvs)) + encode_tlvs(tlvs)


def first_tlv(tlvs, tlv_type: int, default=None):
    """The value of the first TLV of that type, or ``default``."""
    for t, v in tlvs:
        if t == tlv_type:
            return v
    return default


def u16(value: int) -> bytes:
    return struct.pack("!H", value)


def u32(value: int) -> bytes:
    return struct.pack("!I", value & 0xFFFFFFFF)


# -- passwords -------------------------------------------------------------


def roast(password: bytes, table: bytes = ROAST_TABLE) -> bytes:
    """XOR ``password`` with the repeating roasting table (its own inverse)."""
    return bytes(b ^ table[i % len(table)] for i, b in enumerate(password))


unroast = roast


def bucp_hash(key: bytes, password_md5: bytes) -> bytes:
    """The "strong" BUCP hash: MD5(key + MD5(password) + "AOL Instant Messenger (SM)")."""
    return hashlib.md5(key + password_md5 + AIM_MD5_STRING).digest()


def bucp_weak_hash(key: bytes, password: bytes) -> bytes:
    """The "weak" BUCP hash of AIM 3.5-4.7: MD5(key + password + "AOL Instant Messenger (SM)")."""
    return hashlib.md5(key + password + AIM_MD5_STRING).digest()


# -- screen names and user info --------------------------------------------


def normalize_screen_name(name: str) -> str:
    """AIM compares screen names without case and spaces: ``"Alice Smith"`` -> ``"alicesmith"``."""
    return name.replace(" ", "").lower()


def encode_user_info(screen_name: bytes, tlvs, warning: int = 0) -> bytes:
    """The user info block: u8 name length, name, u16 warning level, TLV block."""
    if len(screen_name) > 0xFF:
        raise OscarCodecError("screen name longer than 255 bytes")
    return bytes((len(screen_name),)) + screen_name + u16(warning) + encode_tlv_block(tlvs)


def parse_user_info(reader: Reader) -> tuple:
    """``(screen_name_bytes, warning, tlvs)`` of a user info block."""
    name = reader.bytes8()
    warning = reader.u16()
    return name, warning, reader.tlv_block()


# -- ICBM ------------------------------------------------------------------


@attrs.frozen(slots=True)
class IcbmSend:
    """A client's 04/06: cookie, channel, recipient and the TLVs after it."""

    cookie: bytes
    channel: int
    screen_name: bytes
    tlvs: list

    def tlv(self, tlv_type, default=None):
        return first_tlv(self.tlvs, tlv_type, default)


def parse_icbm_send(body: bytes) -> IcbmSend:
    size = len(body)
    if size < 11 or size < 11 + body[10]:
        raise OscarCodecError(f"ICBM 04/06 of {size} bytes is too short for its header")
    end = 11 + body[10]
    return IcbmSend(body[:8], (body[8] << 8) | body[9], body[11:end], _fast_tlvs(body, end, "ICBM 04/06"))


_TL = struct.Struct("!HH")


def parse_im_send(data: bytes, pos: int = 0) -> tuple:
    """
    The parts of a 04/06 body starting at ``pos`` (the hot path, with no
    copy of the body): ``(cookie, channel, screen_name, tlv2, ack)`` where
    ``tlv2`` is the first TLV 2 (None if absent) and ``ack`` says whether
    TLV 3 (host ack wanted) is present. Raises `OscarCodecError`.
    """
    size = len(data)
    if size - pos < 11 or size - pos < 11 + data[pos + 10]:
        raise OscarCodecError(f"ICBM 04/06 of {size - pos} bytes is too short for its header")
    end = pos + 11 + data[pos + 10]
    tlv2 = None
    ack = False
    unpack = _TL.unpack_from
    at = end
    while at < size:
        if size - at < 4:
            raise OscarCodecError(f"ICBM 04/06: a TLV header is cut off at offset {at - pos}")
        tlv_type, length = unpack(data, at)
        at += 4
        if at + length > size:
            raise OscarCodecError(f"ICBM 04/06: TLV 0x{tlv_type:04x} needs {length} bytes, {size - at} left")
        if tlv_type == 2:
            if tlv2 is None:
                tlv2 = data[at:at + length]
        elif tlv_type == 3:
            ack = True
        at += length
    return data[pos:pos + 8], (data[pos + 8] << 8) | data[pos + 9], data[pos + 11:end], tlv2, ack


def _fast_tlvs(data: bytes, pos: int, what: str) -> list:
    """The TLVs from ``pos`` to the end (the hot path of `Reader.tlvs`)."""
    out = []
    size = len(data)
    unpack = _TL.unpack_from
    while pos < size:
        if size - pos < 4:
            raise OscarCodecError(f"{what}: a TLV header is cut off at offset {pos}")
        tlv_type, length = unpack(data, pos)
        pos += 4
        if pos + length > size:
            raise OscarCodecError(f"{what}: TLV 0x{tlv_type:04x} needs {length} bytes, {size - pos} left")
        out.append((tlv_type, data[pos:pos + length]))
        pos += length
    return out


@attrs.frozen(slots=True)
class IcbmReceive:
    """A server's 04/07: cookie, channel, sender info block and the TLVs after it."""

    cookie: bytes
    channel: int
    screen_name: bytes
    warning: int
    user_tlvs: list
    tlvs: list

    def tlv(self, tlv_type, default=None):
        return first_tlv(self.tlvs, tlv_type, default)


def parse_icbm_receive(body: bytes) -> IcbmReceive:
    r = Reader(body, "ICBM 04/07")
    cookie = r.take(8)
    channel = r.u16()
    name, warning, user_tlvs = parse_user_info(r)
    return IcbmReceive(cookie, channel, name, warning, user_tlvs, r.tlvs())


def encode_icbm_receive(cookie: bytes, channel: int, user_info: bytes, tlvs) -> bytes:
    return cookie + u16(channel) + user_info + encode_tlvs(tlvs)


@attrs.frozen(slots=True)
class TextPart:
    """One text fragment of a channel-1 IM: charset (0 ASCII, 2 UCS-2BE, 3 Latin-1), subset, bytes."""

    charset: int
    subset: int
    data: bytes


def parse_message_fragments(data: bytes) -> list:
    """The fragments of ICBM TLV 2: ``[(id, version, payload), ...]``."""
    r = Reader(data, "IM fragments")
    out = []
    while r.remaining:
        frag_id = r.u8()
        version = r.u8()
        out.append((frag_id, version, r.bytes16()))
    return out


def text_parts(data: bytes) -> list:
    """The `TextPart`s (fragment id 1) of ICBM TLV 2."""
    return [TextPart(charset, subset, text) for charset, subset, text in text_fragments(data)]


def text_fragments(data: bytes) -> list:
    """`text_parts` as ``(charset, subset, bytes)`` tuples (the hot path's form)."""
    parts = []
    pos, size = 0, len(data)
    while pos < size:
        if size - pos < 4:
            raise OscarCodecError(f"IM fragments: a fragment header is cut off at offset {pos}")
        frag_id = data[pos]
        length = (data[pos + 2] << 8) | data[pos + 3]
        start, pos = pos + 4, pos + 4 + length
        if pos > size:
            raise OscarCodecError(f"IM fragments: fragment {frag_id} needs {length} bytes, {size - start} left")
        if frag_id == 1:
            if length < 4:
                raise OscarCodecError(f"IM text fragment of {length} bytes has no charset")
            parts.append(((data[start] << 8) | data[start + 1], (data[start + 2] << 8) | data[start + 3],
                          data[start + 4:pos]))
    return parts


# Twisted 15.4 parses incoming IMs assuming a features fragment of exactly 3 bytes.
DEFAULT_FEATURES = b"\x01\x01\x02"


def encode_message_fragments(parts, features: bytes = DEFAULT_FEATURES) -> bytes:
    out = [b"\x05\x01" + u16(len(features)) + features]
    for part in parts:
        out.append(b"\x01\x01" + u16(len(part.data) + 4) + u16(part.charset) + u16(part.subset) + part.data)
    return b"".join(out)


_FEATURES_FRAGMENT = b"\x05\x01" + struct.pack("!H", len(DEFAULT_FEATURES)) + DEFAULT_FEATURES
_TEXT_FRAGMENT = struct.Struct("!HHHH")  # id 1 + version 1, length, charset, subset


def encode_text_tlv(charset: int, data: bytes, subset: int = 0) -> bytes:
    """
    A whole ICBM TLV 2 (header included) with the default features fragment
    and one text fragment: ``encode_tlv(2, encode_message_fragments([TextPart(...)]))``
    in one step (the hot path).
    """
    length = len(data)
    size = len(_FEATURES_FRAGMENT) + 8 + length
    if size > 0xFFFF:
        raise OscarCodecError(f"IM text of {length} bytes does not fit a TLV")
    return (_TL.pack(2, size) + _FEATURES_FRAGMENT
            + _TEXT_FRAGMENT.pack(0x0101, length + 4, charset, subset) + data)


# -- rate classes ----------------------------------------------------------


@attrs.frozen(slots=True)
class RateClassInfo:
    """One rate class as 01/07 describes it (levels are moving averages of milliseconds)."""

    id: int
    window: int
    clear: int
    alert: int
    limit: int
    disconnect: int
    current: int
    max: int
    pairs: tuple = ()  # (family, subtype)


def encode_rate_info(classes, with_state: bool = True, last_time: int = 0) -> bytes:
    """01/07: classes (35 bytes each with ``with_state``, else 30), then each class's SNAC pairs."""
    out = [u16(len(classes))]
    for c in classes:
        out.append(
            struct.pack("!HIIIIIII", c.id, c.window, c.clear, c.alert, c.limit, c.disconnect, c.current, c.max)
        )
        if with_state:
            out.append(struct.pack("!IB", last_time, 0))
    for c in classes:
        out.append(struct.pack("!HH", c.id, len(c.pairs)))
        out.extend(struct.pack("!HH", fam, sub) for fam, sub in c.pairs)
    return b"".join(out)


def parse_rate_info(body: bytes, with_state: bool = True) -> list:
    r = Reader(body, "rate info 01/07")
    count = r.u16()
    classes = []
    for _ in range(count):
        fields = [r.u16()] + [r.u32() for _ in range(7)]
        if with_state:
            r.u32()
            r.u8()
        classes.append(fields)
    out = []
    for fields in classes:
        class_id = r.u16()
        npairs = r.u16()
        pairs = tuple((r.u16(), r.u16()) for _ in range(npairs))
        out.append(RateClassInfo(*fields, pairs=pairs) if fields[0] == class_id else RateClassInfo(*fields))
    return out


# -- SSI (feedbag) ------------------------------------------------------------

SSI_BUDDY, SSI_GROUP, SSI_PERMIT, SSI_DENY, SSI_PDINFO, SSI_PRESENCE = 0, 1, 2, 3, 4, 5
TLV_SSI_ORDER = 0x00C8  # u16 ids of a group's members (root: of its groups)
TLV_SSI_ALIAS = 0x0131  # a buddy's display name


@attrs.frozen(slots=True)
class SsiItem:
    """One feedbag item: name, group id, item id, class, TLVs."""

    name: bytes
    gid: int
    bid: int
    kind: int
    tlvs: tuple = ()

    def tlv(self, tlv_type, default=None):
        return first_tlv(self.tlvs, tlv_type, default)


def encode_ssi_item(item: SsiItem) -> bytes:
    data = encode_tlvs(item.tlvs)
    return u16(len(item.name)) + item.name + struct.pack("!HHHH", item.gid, item.bid, item.kind, len(data)) + data


def parse_ssi_items(data: bytes, lenient: bool = True) -> list:
    """
    The items of a 13/08, 13/09 or 13/0A body. With ``lenient``, a last
    item whose TLV length does not fit but whose remaining bytes are whole
    TLVs is read as TLVs without the length field (Twisted 15.4 writes
    group items that way).
    """
    r = Reader(data, "SSI items")
    items = []
    while r.remaining:
        start = r.pos
        try:
            items.append(read_ssi_item(r))
        except OscarCodecError:
            if not lenient:
                raise
            r.pos = start
            name = r.bytes16()
            gid, bid, kind = r.u16(), r.u16(), r.u16()
            items.append(SsiItem(name, gid, bid, kind, tuple(r.tlvs())))
    return items


def read_ssi_item(r: Reader) -> SsiItem:
    name = r.bytes16()
    gid, bid, kind = r.u16(), r.u16(), r.u16()
    return SsiItem(name, gid, bid, kind, tuple(r.tlvl_block()))


def encode_ssi_list(items, last_modified: int, version: int = 0) -> bytes:
    """13/06: u8 version, u16 count, items, u32 last-modified time (non-zero: the list is complete)."""
    return bytes((version,)) + u16(len(items)) + b"".join(encode_ssi_item(i) for i in items) + u32(last_modified)


def parse_ssi_list(body: bytes) -> tuple:
    """``(version, [SsiItem], last_modified)`` of a 13/06 body."""
    r = Reader(body, "SSI list 13/06")
    version = r.u8()
    count = r.u16()
    items = [read_ssi_item(r) for _ in range(count)]
    return version, items, r.u32()


# -- login -----------------------------------------------------------------


def parse_signon(payload: bytes) -> list:
    """TLVs of a channel-1 payload after its ``00000001`` version; raises on anything else."""
    if len(payload) < 4:
        raise OscarCodecError(f"sign-on frame of {len(payload)} bytes has no protocol version")
    if payload[:4] != FLAP_VERSION:
        raise OscarCodecError(f"sign-on protocol version {payload[:4].hex()} is not 00000001")
    return parse_tlvs(payload[4:])


# -- rendezvous (ICBM channel 2) -----------------------------------------------
#
# TLV 5 of a channel-2 ICBM: u16 kind (0 propose, 1 cancel, 2 accept), the
# 8-byte cookie (the ICBM's own), a 16-byte capability saying what is
# proposed, then TLVs: transfer parameters (2 proxy IP, 3 client IP, 4 the
# client's IP as the server saw it, added by the server, 5 port, 0x0A
# proposal number, 0x0B cancel reason, 0x0F, 0x10 use the proxy, 0x16/0x17
# IP and port complemented), the invitation text 0x0C (charset 0x0D,
# language 0x0E) and the service data 0x2711, whose layout depends on the
# capability.

RDV_PROPOSE, RDV_CANCEL, RDV_ACCEPT = 0, 1, 2

CAP_SEND_FILE = bytes.fromhex("094613434c7f11d18222444553540000")
CAP_DIRECT_IM = bytes.fromhex("094613454c7f11d18222444553540000")
CAP_CHAT = bytes.fromhex("748f242062871 1d18222444553540000".replace(" ", ""))


@attrs.frozen(slots=True)
class Rendezvous:
    kind: int
    cookie: bytes
    capability: bytes
    tlvs: list

    def tlv(self, tlv_type, default=None):
        return first_tlv(self.tlvs, tlv_type, default)


def parse_rendezvous(data: bytes) -> Rendezvous:
    """The rendezvous block (TLV 5 of a channel-2 ICBM). Raises `OscarCodecError`."""
    if data is None or len(data) < 26:
        raise OscarCodecError(f"rendezvous block of {len(data or b'')} bytes is shorter than its 26-byte header")
    kind = (data[0] << 8) | data[1]
    return Rendezvous(kind, data[2:10], data[10:26], _fast_tlvs(data, 26, "rendezvous block"))


def encode_rendezvous(kind: int, cookie: bytes, capability: bytes, tlvs) -> bytes:
    if len(cookie) != 8 or len(capability) != 16:
        raise OscarCodecError("a rendezvous needs an 8-byte cookie and a 16-byte capability")
    return u16(kind) + cookie + capability + encode_tlvs(tlvs)


@attrs.frozen(slots=True)
class FileInfo:
    """Service data (TLV 0x2711) of a send-file proposal: 1 one file / 2 several, how many, total size, name."""

    kind: int
    count: int
    size: int
    name: bytes


def parse_file_info(data: bytes) -> FileInfo:
    """A send-file service data block: u16 kind, u16 count, u32 total size, NUL-terminated name."""
    r = Reader(data or b"", "send-file service data")
    kind, count, size = r.u16(), r.u16(), r.u32()
    rest = r.rest()
    end = rest.find(b"\x00")
    if end < 0:
        raise OscarCodecError("send-file service data: the file name has no terminating NUL")
    return FileInfo(kind, count, size, rest[:end])


def encode_file_info(info: FileInfo) -> bytes:
    if b"\x00" in info.name:
        raise OscarCodecError("a file name must not contain NUL")
    return u16(info.kind) + u16(info.count) + u32(info.size) + info.name + b"\x00"


def parse_room_info(data: bytes) -> tuple:
    """``(exchange, room cookie, instance)`` of chat room info (a chat invitation's TLV 0x2711, 01/04 TLV 1)."""
    r = Reader(data or b"", "chat room info")
    exchange = r.u16()
    cookie = r.bytes8()
    return exchange, cookie, r.u16()


def encode_room_info(exchange: int, cookie: bytes, instance: int) -> bytes:
    return u16(exchange) + bytes((len(cookie),)) + cookie + u16(instance)


def room_name(cookie: bytes) -> str:
    """The room's name in a room cookie (``!aol://2719:10-4-NAME``: what follows the second dash)."""
    text = cookie.decode("utf-8", "replace")
    parts = text.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[2] else text
