"""Sametime service payloads in CHANNEL_SEND data: IM, awareness, storage and buddy lists, resolve."""

from __future__ import annotations

from typing import Optional

import attrs

from gateway_sametime.messages import UserStatus
from gateway_sametime.wire import CodecError, Reader, _check_count, boolean, opaque, string, u16, u32


# Sub-service message types (CHANNEL_SEND ``type``).
IM_MESSAGE = 0x0064
IM_TEXT = 0x00000001
IM_DATA = 0x00000002
IM_DATA_TYPING = 0x00000001
IM_DATA_SUBJECT = 0x00000003
IM_DATA_HTML = 0x00000004
IM_DATA_MIME = 0x00000005
IM_DATA_TIMESTAMP = 0x00000006
IM_DATA_MULTI_START = 0x00001388
IM_DATA_MULTI_STOP = 0x00001389
IM_CLIENT_PLAIN = 0x00000001
IM_CLIENT_NOTESBUDDY = 0x00033453

AWARE_ADD = 0x0068
AWARE_REMOVE = 0x0069
AWARE_ATTRIB_SET = 0x00C9
AWARE_ATTRIB_UNSET = 0x00CA
AWARE_ATTRIB_WATCH = 0x00CB
AWARE_SNAPSHOT = 0x01F4
AWARE_UPDATE = 0x01F5
AWARE_GROUP = 0x01F6
AWARE_USER = 0x0002
AWARE_GROUP_ID = 0x0003
AWARE_SERVER = 0x0008

STORAGE_LOAD = 0x0004
STORAGE_LOADED = 0x0005
STORAGE_SAVE = 0x0006
STORAGE_SAVED = 0x0007
STORAGE_AWARE_LIST = 0x00000000

RESOLVE_LOOKUP = 0x0002
RESOLVE_SUCCESS = 0x00000000
RESOLVE_PARTIAL = 0x00010000
RESOLVE_MULTIPLE = 0x80020000
RESOLVE_BAD_FORMAT = 0x80030000
RESOLVE_MATCH_USER = 0x00000001


# -- service payloads: IM -----------------------------------------------------


@attrs.frozen(slots=True)
class ImText:
    text: str


@attrs.frozen(slots=True)
class ImData:
    type: int
    subtype: int = 0
    data: bytes = b""


def decode_im(data: bytes):
    r = Reader(data)
    kind = r.u32()
    if kind == IM_TEXT:
        message = ImText(r.string())
    elif kind == IM_DATA:
        message = ImData(r.u32(), r.u32(), r.opaque())
    else:
        raise CodecError(f"unknown IM message kind 0x{kind:08x}")
    r.done("IM message")
    return message


def encode_im(message) -> bytes:
    if isinstance(message, ImText):
        return u32(IM_TEXT) + string(message.text)
    return u32(IM_DATA) + u32(message.type) + u32(message.subtype) + opaque(message.data)


@attrs.frozen(slots=True)
class ImAddtl:
    """The IM channel's addtl block: ``u32 1, u32 features`` [+ ``u32 2, userStatus``]."""

    features: int = IM_CLIENT_PLAIN
    kind: int = 1
    status: Optional[UserStatus] = None

    def encode(self) -> bytes:
        out = u32(self.kind) + u32(self.features)
        if self.status is not None:
            out += u32(2) + self.status.encode()
        return out

    @classmethod
    def decode(cls, data: bytes) -> "ImAddtl":
        r = Reader(data)
        kind, features = r.u32(), r.u32()
        status = None
        if r.remaining() >= 4 and r.u32() == 2 and r.remaining() >= 8:
            status = UserStatus.read(r)
        return cls(features, kind, status)


@attrs.frozen(slots=True)
class FileAddtl:
    """
    The file-transfer channel's addtl block, as a client offers a file:
    ``u32 0, string name, string message, u32 size, u32 0`` (+ ``u16 0``).
    """

    name: str
    message: str = ""
    size: int = 0

    def encode(self) -> bytes:
        return u32(0) + string(self.name) + string(self.message) + u32(self.size) + u32(0) + u16(0)

    @classmethod
    def decode(cls, data: bytes) -> "FileAddtl":
        r = Reader(data)
        r.u32()
        name, message, size = r.string(), r.string(), r.u32()
        return cls(name, message, size)


# -- service payloads: AWARE --------------------------------------------------


@attrs.frozen(slots=True)
class AwareId:
    user: str
    community: str = ""
    type: int = AWARE_USER

    def encode(self) -> bytes:
        return u16(self.type) + string(self.user) + string(self.community)

    @classmethod
    def read(cls, r: Reader) -> "AwareId":
        type_ = r.u16()
        return cls(r.string(), r.string(), type_)


def decode_aware_list(data: bytes) -> tuple:
    """AWARE add/remove data -> the ids."""
    r = Reader(data)
    count = r.u32()
    _check_count(count, r, 6)
    ids = tuple(AwareId.read(r) for _ in range(count))
    r.done("aware list")
    return ids


def encode_aware_list(ids) -> bytes:
    return u32(len(ids)) + b"".join(i.encode() for i in ids)


@attrs.frozen(slots=True)
class AwareEntry:
    """One user in a snapshot or update; ``status`` None means offline."""

    id: AwareId
    status: Optional[UserStatus] = None
    name: str = ""
    group: str = ""
    alt_id: str = ""

    @property
    def online(self) -> bool:
        return self.status is not None

    def encode_block(self, start: int) -> bytes:
        """The block with its end offset, for a block starting at ``start`` in the message data."""
        inner = self.id.encode() + string(self.group) + boolean(self.online)
        if self.online:
            inner += string(self.alt_id) + self.status.encode() + string(self.name)
        return u32(start + 4 + len(inner)) + inner


def encode_aware_snapshot(entries) -> bytes:
    """Snapshot (0x01f4) or update (0x01f5) data; end offsets are absolute in this data."""
    out = u32(len(entries))
    for entry in entries:
        out += entry.encode_block(len(out))
    return out


def decode_aware_snapshot(data: bytes) -> tuple:
    r = Reader(data)
    count = r.u32()
    _check_count(count, r, 12)
    entries = []
    for _ in range(count):
        end = r.u32()
        aware_id = AwareId.read(r)
        group, online = r.string(), r.boolean()
        if online:
            alt_id, status, name = r.string(), UserStatus.read(r), r.string()
            entries.append(AwareEntry(aware_id, status, name, group, alt_id))
        else:
            entries.append(AwareEntry(aware_id, None, "", group))
        if end > r.pos:
            if end > r.end:
                raise CodecError(f"aware block claims to end at {end}, past the data ({r.end})")
            r.pos = end
    r.done("aware snapshot")
    return tuple(entries)


# -- service payloads: STORAGE ------------------------------------------------


def decode_storage_load(data: bytes) -> tuple:
    """``(request_id, keys)`` of a load request."""
    r = Reader(data)
    request_id, count = r.u32(), r.u32()
    _check_count(count, r, 4)
    keys = tuple(r.u32() for _ in range(count))
    r.done("storage load")
    return request_id, keys


def encode_storage_load(request_id: int, keys) -> bytes:
    return u32(request_id) + u32(len(keys)) + b"".join(u32(k) for k in keys)


def decode_storage_save(data: bytes) -> tuple:
    """``(request_id, ((key, data), ...))`` of a save request."""
    r = Reader(data)
    request_id, count = r.u32(), r.u32()
    _check_count(count, r, 12)
    units = []
    for _ in range(count):
        r.u32()  # Meanwhile's "20 + length": nothing to learn from it
        units.append((r.u32(), r.opaque()))
    r.done("storage save")
    return request_id, tuple(units)


def encode_storage_save(request_id: int, units) -> bytes:
    out = u32(request_id) + u32(len(units))
    for key, value in units:
        out += u32(20 + len(value)) + u32(key) + opaque(value)
    return out


def encode_storage_loaded(request_id: int, result: int, units=()) -> bytes:
    out = u32(request_id) + u32(result) + u32(len(units))
    for key, value in units:
        out += u32(20 + len(value)) + u32(key) + opaque(value)
    return out


def decode_storage_loaded(data: bytes) -> tuple:
    r = Reader(data)
    request_id, result, count = r.u32(), r.u32(), r.u32()
    _check_count(count, r, 12)
    units = []
    for _ in range(count):
        r.u32()
        units.append((r.u32(), r.opaque()))
    return request_id, result, tuple(units)


def encode_storage_saved(request_id: int, result: int) -> bytes:
    return u32(request_id) + u32(result)


@attrs.frozen(slots=True)
class ListUser:
    id: str
    name: str = ""
    alias: str = ""


@attrs.frozen(slots=True)
class ListGroup:
    name: str
    users: tuple = ()
    alias: str = ""
    open: bool = True


def _list_word(text: str) -> str:
    return "".join(ch for ch in text if ch >= " ").replace(" ", ";")


def render_buddy_list(groups) -> str:
    """The Sametime buddy list text (storage key 0) for ``groups`` of `ListGroup`."""
    lines = ["Version=3.1.3"]
    for group in groups:
        name = _list_word(group.name) or "Buddies"
        lines.append(f"G {name}2 {_list_word(group.alias) or name} {'O' if group.open else 'C'}")
        for user in group.users:
            lines.append(f"U {_list_word(user.id)}1:: {_list_word(user.name)},{_list_word(user.alias)}")
    return "\r\n".join(lines) + "\r\n"


def parse_buddy_list(text: str) -> tuple:
    """Sametime buddy list text -> `ListGroup` values; lines it cannot read are skipped."""
    groups = []
    current = None
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("G "):
            parts = line.split()
            name = parts[1][:-1] if len(parts) > 1 and len(parts[1]) > 1 else (parts[1] if len(parts) > 1 else "")
            alias = parts[2] if len(parts) > 2 else name
            open_ = parts[3] != "C" if len(parts) > 3 else True
            current = ListGroup(name.replace(";", " "), (), alias.replace(";", " "), open_)
            groups.append(current)
        elif line.startswith("U "):
            parts = line.split(None, 2)
            if len(parts) < 2:
                continue
            ident = parts[1]
            marker = ident.find("::")
            if marker > 0:
                ident = ident[:marker - 1]
            elif marker == 0:
                continue
            name, _, alias = (parts[2] if len(parts) > 2 else "").rpartition(",")
            if not _:
                name, alias = alias, ""
            user = ListUser(ident.replace(";", " "), name.replace(";", " "), alias.replace(";", " "))
            if not user.id:
                continue
            if current is None:
                current = ListGroup("Buddies")
                groups.append(current)
            index = groups.index(current)
            current = attrs.evolve(current, users=current.users + (user,))
            groups[index] = current
    return tuple(groups)


# -- service payloads: RESOLVE ------------------------------------------------


def decode_resolve_request(data: bytes) -> tuple:
    """``(search_id, names, flags)``."""
    r = Reader(data)
    r.u32()
    search_id, count = r.u32(), r.u32()
    _check_count(count, r, 2)
    names = tuple(r.string() for _ in range(count))
    flags = r.u32()
    r.done("resolve request")
    return search_id, names, flags


def encode_resolve_request(search_id: int, names, flags: int = 0x0A) -> bytes:
    return u32(0) + u32(search_id) + u32(len(names)) + b"".join(string(n) for n in names) + u32(flags)


@attrs.frozen(slots=True)
class ResolveMatch:
    id: str
    name: str = ""
    desc: str = ""
    type: int = RESOLVE_MATCH_USER


@attrs.frozen(slots=True)
class ResolveResult:
    name: str
    code: int = RESOLVE_SUCCESS
    matches: tuple = ()


def encode_resolve_reply(search_id: int, code: int, results) -> bytes:
    out = u32(0) + u32(search_id) + u32(code) + u32(len(results))
    for result in results:
        out += u32(0) + u32(result.code) + string(result.name) + u32(len(result.matches))
        for m in result.matches:
            out += string(m.id) + string(m.name) + string(m.desc) + u32(m.type)
    return out


def decode_resolve_reply(data: bytes) -> tuple:
    """``(search_id, code, results)``."""
    r = Reader(data)
    r.u32()
    search_id, code, count = r.u32(), r.u32(), r.u32()
    _check_count(count, r, 14)
    results = []
    for _ in range(count):
        r.u32()
        rcode, name, n = r.u32(), r.string(), r.u32()
        _check_count(n, r, 10)
        matches = tuple(ResolveMatch(r.string(), r.string(), r.string(), r.u32()) for _ in range(n))
        results.append(ResolveResult(name, rcode, matches))
    r.done("resolve reply")
    return search_id, code, tuple(results)
