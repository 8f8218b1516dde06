"""Sametime (Meanwhile "VP") wire codec: pure functions between bytes and message values."""

from __future__ import annotations

import struct
from typing import Optional

import attrs

__all__ = [
    "CodecError",
    "UnknownMessage",
    "Reader",
    "split_frames",
    "decode",
    "encode",
    "frame",
]

# -- message types (header ``type``) ------------------------------------------

HANDSHAKE = 0x0000
HANDSHAKE_ACK = 0x8000
LOGIN = 0x0001
LOGIN_ACK = 0x8001
LOGIN_REDIRECT = 0x0018
LOGIN_CONTINUE = 0x0016
CHANNEL_CREATE = 0x0002
CHANNEL_DESTROY = 0x0003
CHANNEL_SEND = 0x0004
CHANNEL_ACCEPT = 0x0006
SET_USER_STATUS = 0x0009
SET_PRIVACY_LIST = 0x000B
SENSE_SERVICE = 0x0011
ADMIN = 0x0019
ANNOUNCE = 0x0022

# Header option bits.
OPT_ENCRYPTED = 0x4000
OPT_ATTRIBS = 0x8000

# Login auth types.
AUTH_PLAIN = 0x0000
AUTH_TOKEN = 0x0001
AUTH_RC2_40 = 0x0002
AUTH_RC2_128 = 0x0004

# Services (and the proto type / version libpurple uses for each).
SERVICE_AWARE = 0x00000011
SERVICE_RESOLVE = 0x00000015
SERVICE_STORAGE = 0x00000018
SERVICE_IM = 0x00001000
SERVICE_CONFERENCE = 0x80000010
SERVICE_PLACE = 0x80000022
SERVICE_FILE = 0x00000038
SERVICE_DIRECTORY = 0x0000001A

# User status codes.
STATUS_OFFLINE = 0x0000
STATUS_ACTIVE = 0x0020
STATUS_IDLE = 0x0040
STATUS_AWAY = 0x0060
STATUS_BUSY = 0x0080
STATUS_MOBILE = 0x0200

# Encryption policies (offer/accept ``mode``) and cipher ids.
ENCRYPT_NONE = 0x0000
ENCRYPT_WHATEVER = 0x0001
ENCRYPT_ALL = 0x0002
ENCRYPT_RC2_40 = 0x1000
ENCRYPT_RC2_128 = 0x2000
CIPHER_RC2_40 = 0x0000
CIPHER_RC2_128 = 0x0001

# Error / reason codes (CHANNEL_DESTROY ``reason``).
ERR_SUCCESS = 0x00000000
ERR_FAILURE = 0x80000000
ERR_REQUEST_INVALID = 0x80000001
ERR_NOT_LOGGED_IN = 0x80000002
ERR_NOT_AUTHORIZED = 0x80000003
ERR_NO_ELEMENT = 0x80000005
ERR_NO_USER = 0x80000006
ERR_BAD_DATA = 0x80000007
ERR_STARVING = 0x8000000A
ERR_CHANNEL_EXISTS = 0x8000000C
ERR_SERVICE_NO_SUPPORT = 0x8000000D
ERR_PROTOCOL_NO_SUPPORT = 0x8000000E
ERR_ENCRYPT_NO_SUPPORT = 0x8000001D
ERR_ENCRYPT_INVALID = 0x80000020
ERR_NO_COMMON_ENCRYPT = 0x80000021
ERR_VERSION_MISMATCH = 0x80000200
ERR_FAT_MESSAGE = 0x80000209
ERR_SERVER_BROKEN = 0x8000022B
ERR_SERVER_BUSY = 0x8000020B  # "server full": try again later
ERR_VERIFICATION_DOWN = 0x80000214
ERR_PROTOCOL_ERROR = 0x8000020F
ERR_USER_RESTRICTED = 0x80000210
ERR_INCORRECT_LOGIN = 0x80000211
ERR_USER_TOO_IDLE = 0x80000216
ERR_CONNECTION_CLOSED = 0x80000226

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


class CodecError(ValueError):
    """Bytes that are not a valid Sametime message; the text says what was wrong."""


class UnknownMessage(CodecError):
    """A well-framed message of a type this codec does not know."""

    def __init__(self, msg_type):
        super().__init__(f"unknown message type 0x{msg_type:04x}")
        self.type = msg_type


# -- primitives ---------------------------------------------------------------


class Reader:
    """Reads big-endian Sametime primitives from bytes; raises `CodecError` when short."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CodecError(
                f"message ends early: needed {n} bytes at offset {self.pos}, have {self.end - self.pos}"
            )
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def boolean(self) -> bool:
        return self.take(1)[0] != 0

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def opaque(self) -> bytes:
        return self.take(self.u32())

    def string(self) -> str:
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def remaining(self) -> int:
        return self.end - self.pos

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)

    def done(self, what: str) -> None:
        """Nothing may follow: trailing bytes are an error."""
        if self.pos != self.end:
            raise CodecError(f"{self.end - self.pos} unexpected bytes after {what}")


def u8(value: int) -> bytes:
    return _pack(">B", value)


def boolean(value) -> bytes:
    return b"\x01" if value else b"\x00"


def u16(value: int) -> bytes:
    return _pack(">H", value)


def u32(value: int) -> bytes:
    return _pack(">I", value)


def _pack(fmt, value):
    try:
        return struct.pack(fmt, value)
    except struct.error as e:
        raise CodecError(f"value {value!r} does not fit: {e}") from None


def string(value) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) > 0xFFFF:
        raise CodecError(f"string of {len(raw)} bytes is longer than 65535")
    return u16(len(raw)) + raw


def opaque(value: bytes) -> bytes:
    return u32(len(value)) + bytes(value)


# -- framing ------------------------------------------------------------------


def split_frames(buffer: bytes, max_size: int) -> tuple:
    """
    ``(payloads, rest, keepalives)``: the complete messages at the start of
    ``buffer`` (without their length), the bytes of an incomplete one, and
    how many keepalive bytes (high bit set, between messages) were skipped.
    A length over ``max_size`` raises `CodecError`.
    """
    payloads = []
    keepalives = 0
    pos, end = 0, len(buffer)
    while pos < end:
        if buffer[pos] & 0x80:
            keepalives += 1
            pos += 1
            continue
        if end - pos < 4:
            break
        (length,) = struct.unpack_from(">I", buffer, pos)
        if length > max_size:
            raise CodecError(f"message of {length} bytes is over the limit of {max_size}")
        if end - pos - 4 < length:
            break
        payloads.append(bytes(buffer[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return payloads, bytes(buffer[pos:]), keepalives


def frame(message) -> bytes:
    """A message as it goes on the wire: its length, then its bytes."""
    return opaque(encode(message))


KEEPALIVE = b"\x80"

# -- structures inside messages -----------------------------------------------


@attrs.frozen(slots=True)
class IdBlock:
    user: str
    community: str = ""

    def encode(self) -> bytes:
        return string(self.user) + string(self.community)

    @classmethod
    def read(cls, r: Reader) -> "IdBlock":
        return cls(r.string(), r.string())


@attrs.frozen(slots=True)
class LoginInfo:
    login_id: str
    type: int = 0x1700
    user_id: str = ""
    user_name: str = ""
    community: str = ""
    full: bool = False
    desc: str = ""
    ip: int = 0
    server_id: str = ""

    def encode(self) -> bytes:
        out = (
            string(self.login_id) + u16(self.type) + string(self.user_id)
            + string(self.user_name) + string(self.community) + boolean(self.full)
        )
        if self.full:
            out += string(self.desc) + u32(self.ip) + string(self.server_id)
        return out

    @classmethod
    def read(cls, r: Reader) -> "LoginInfo":
        login_id, type_, user_id, user_name, community, full = (
            r.string(), r.u16(), r.string(), r.string(), r.string(), r.boolean()
        )
        if full:
            return cls(login_id, type_, user_id, user_name, community, True, r.string(), r.u32(), r.string())
        return cls(login_id, type_, user_id, user_name, community)


@attrs.frozen(slots=True)
class UserStatus:
    status: int = STATUS_ACTIVE
    time: int = 0
    desc: str = ""

    def encode(self) -> bytes:
        return u16(self.status) + u32(self.time) + string(self.desc)

    @classmethod
    def read(cls, r: Reader) -> "UserStatus":
        return cls(r.u16(), r.u32(), r.string())


@attrs.frozen(slots=True)
class PrivacyUser:
    id: str
    community: str = ""
    full: bool = False
    name: str = ""

    def encode(self) -> bytes:
        out = boolean(self.full) + string(self.id) + string(self.community)
        return out + string(self.name) if self.full else out

    @classmethod
    def read(cls, r: Reader) -> "PrivacyUser":
        full, id_, community = r.boolean(), r.string(), r.string()
        return cls(id_, community, full, r.string() if full else "")


@attrs.frozen(slots=True)
class PrivacyInfo:
    """``deny`` True: nobody in ``users`` may see or reach the owner; False: only they may."""

    deny: bool = True
    users: tuple = ()

    def encode(self) -> bytes:
        # Meanwhile writes the items last to first; order carries no meaning.
        return boolean(self.deny) + u32(len(self.users)) + b"".join(u.encode() for u in reversed(self.users))

    @classmethod
    def read(cls, r: Reader) -> "PrivacyInfo":
        deny, count = r.boolean(), r.u32()
        _check_count(count, r, 5)
        users = [PrivacyUser.read(r) for _ in range(count)]
        return cls(deny, tuple(reversed(users)))


@attrs.frozen(slots=True)
class EncryptItem:
    cipher: int
    info: bytes = b""

    def encode(self) -> bytes:
        return u16(self.cipher) + opaque(self.info)

    @classmethod
    def read(cls, r: Reader) -> "EncryptItem":
        return cls(r.u16(), r.opaque())


@attrs.frozen(slots=True)
class EncryptOffer:
    mode: int = ENCRYPT_NONE
    items: tuple = ()
    extra: int = 0
    flag: bool = False

    def encode(self) -> bytes:
        out = u16(self.mode)
        if self.items:
            inner = u32(len(self.items)) + b"".join(i.encode() for i in self.items)
            out += opaque(inner + u16(self.extra) + boolean(self.flag))
        return out

    @classmethod
    def read(cls, r: Reader) -> "EncryptOffer":
        mode = r.u16()
        if r.remaining() < 4:
            return cls(mode)
        size = r.u32()
        if size < 7:
            return cls(mode)
        inner = Reader(r.data, r.pos, r.pos + size) if r.pos + size <= r.end else r
        count = inner.u32()
        _check_count(count, inner, 6)
        items = tuple(EncryptItem.read(inner) for _ in range(count))
        extra, flag = inner.u16(), inner.boolean()
        if inner is not r:
            r.pos += size
        return cls(mode, items, extra, flag)


@attrs.frozen(slots=True)
class EncryptAccept:
    mode: int = ENCRYPT_NONE
    item: Optional[EncryptItem] = None
    extra: int = 0
    flag: bool = False

    def encode(self) -> bytes:
        out = u16(self.mode)
        if self.item is not None:
            out += opaque(self.item.encode() + u16(self.extra) + boolean(self.flag))
        return out

    @classmethod
    def read(cls, r: Reader) -> "EncryptAccept":
        mode = r.u16()
        if r.remaining() < 4:
            return cls(mode)
        size = r.u32()
        if size < 6:
            return cls(mode)
        item = EncryptItem.read(r)
        if size >= 9:
            return cls(mode, item, r.u16(), r.boolean())
        return cls(mode, item)


# Meanwhile writes these ten bytes after every create and accept.
CHANNEL_TAIL = u32(0) + u32(0) + u16(7)


def _check_count(count, r: Reader, min_item_size: int) -> None:
    if count * min_item_size > r.remaining():
        raise CodecError(f"count {count} is more than the {r.remaining()} remaining bytes can hold")


# -- messages -----------------------------------------------------------------
#
# Every message has ``channel`` (the header's) and ``attribs`` (the opaque
# present when options has 0x8000); ``body()`` renders what follows the header.


@attrs.frozen(slots=True)
class Handshake:
    TYPE = HANDSHAKE
    major: int = 0x001E
    minor: int = 0x001D
    hs_channel: int = 0
    srvrcalc_addr: int = 0
    login_type: int = 0x1700
    loclcalc_addr: int = 0
    unknown_a: int = 0x0100
    unknown_b: int = 0
    local_host: str = ""
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def _extended(self):
        return self.major >= 0x1E and self.minor >= 0x1D

    def body(self) -> bytes:
        out = (
            u16(self.major) + u16(self.minor) + u32(self.hs_channel) + u32(self.srvrcalc_addr)
            + u16(self.login_type) + u32(self.loclcalc_addr)
        )
        if self._extended():
            out += u16(self.unknown_a) + u32(self.unknown_b) + string(self.local_host)
        return out

    @classmethod
    def read(cls, r, **header):
        major, minor, hs_channel, srvrcalc, login_type, loclcalc = (
            r.u16(), r.u16(), r.u32(), r.u32(), r.u16(), r.u32()
        )
        if major >= 0x1E and minor >= 0x1D:
            extension = r.u16(), r.u32(), r.string()
            return cls(major, minor, hs_channel, srvrcalc, login_type, loclcalc, *extension, **header)
        return cls(major, minor, hs_channel, srvrcalc, login_type, loclcalc, **header)


@attrs.frozen(slots=True)
class HandshakeAck:
    TYPE = HANDSHAKE_ACK
    major: int = 0x001E
    minor: int = 0x001D
    srvrcalc_addr: int = 0
    magic: int = 0
    key: bytes = b""
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        out = u16(self.major) + u16(self.minor) + u32(self.srvrcalc_addr)
        if self.major >= 0x1E and self.minor > 0x18:
            out += u32(self.magic) + opaque(self.key)
        return out

    @classmethod
    def read(cls, r, **header):
        major, minor, srvrcalc = r.u16(), r.u16(), r.u32()
        if major >= 0x1E and minor > 0x18:
            return cls(major, minor, srvrcalc, r.u32(), r.opaque(), **header)
        return cls(major, minor, srvrcalc, **header)


@attrs.frozen(slots=True)
class Login:
    TYPE = LOGIN
    login_type: int
    user_id: str
    auth_data: bytes
    auth_type: int
    trailer: int = 0
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return (
            u16(self.login_type) + string(self.user_id) + opaque(self.auth_data)
            + u16(self.auth_type) + u16(self.trailer)
        )

    @classmethod
    def read(cls, r, **header):
        login_type, user_id, auth_data, auth_type = r.u16(), r.string(), r.opaque(), r.u16()
        trailer = r.u16() if r.remaining() >= 2 else 0
        return cls(login_type, user_id, auth_data, auth_type, trailer, **header)


@attrs.frozen(slots=True)
class LoginAck:
    TYPE = LOGIN_ACK
    login: LoginInfo
    privacy: PrivacyInfo = PrivacyInfo()
    status: UserStatus = UserStatus()
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return self.login.encode() + u16(0) + self.privacy.encode() + self.status.encode()

    @classmethod
    def read(cls, r, **header):
        login = LoginInfo.read(r)
        r.u16()
        return cls(login, PrivacyInfo.read(r), UserStatus.read(r), **header)


@attrs.frozen(slots=True)
class LoginRedirect:
    TYPE = LOGIN_REDIRECT
    host: str
    server_id: str = ""
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return string(self.host) + string(self.server_id)

    @classmethod
    def read(cls, r, **header):
        return cls(r.string(), r.string(), **header)


@attrs.frozen(slots=True)
class LoginContinue:
    TYPE = LOGIN_CONTINUE
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return b""

    @classmethod
    def read(cls, r, **header):
        return cls(**header)


@attrs.frozen(slots=True)
class ChannelCreate:
    TYPE = CHANNEL_CREATE
    id: int
    target: IdBlock
    service: int
    proto_type: int
    proto_ver: int
    addtl: bytes = b""
    creator: Optional[LoginInfo] = None
    encrypt: EncryptOffer = EncryptOffer()
    reserved: int = 0
    create_options: int = 0
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        out = (
            u32(self.reserved) + u32(self.id) + self.target.encode() + u32(self.service)
            + u32(self.proto_type) + u32(self.proto_ver) + u32(self.create_options)
            + opaque(self.addtl) + boolean(self.creator is not None)
        )
        if self.creator is not None:
            out += self.creator.encode()
        return out + self.encrypt.encode() + CHANNEL_TAIL

    @classmethod
    def read(cls, r, **header):
        reserved, id_, target = r.u32(), r.u32(), IdBlock.read(r)
        service, proto_type, proto_ver, options, addtl = r.u32(), r.u32(), r.u32(), r.u32(), r.opaque()
        creator = LoginInfo.read(r) if r.boolean() else None
        encrypt = EncryptOffer.read(r)
        r.pos = r.end  # Meanwhile's trailing words carry nothing
        return cls(
            id_, target, service, proto_type, proto_ver, addtl, creator, encrypt, reserved, options, **header
        )


@attrs.frozen(slots=True)
class ChannelAccept:
    TYPE = CHANNEL_ACCEPT
    service: int
    proto_type: int
    proto_ver: int
    addtl: bytes = b""
    acceptor: Optional[LoginInfo] = None
    encrypt: EncryptAccept = EncryptAccept()
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        out = u32(self.service) + u32(self.proto_type) + u32(self.proto_ver) + opaque(self.addtl)
        out += boolean(self.acceptor is not None)
        if self.acceptor is not None:
            out += self.acceptor.encode()
        return out + self.encrypt.encode() + CHANNEL_TAIL

    @classmethod
    def read(cls, r, **header):
        service, proto_type, proto_ver, addtl = r.u32(), r.u32(), r.u32(), r.opaque()
        acceptor = LoginInfo.read(r) if r.boolean() else None
        encrypt = EncryptAccept.read(r)
        r.pos = r.end
        return cls(service, proto_type, proto_ver, addtl, acceptor, encrypt, **header)


@attrs.frozen(slots=True)
class ChannelSend:
    TYPE = CHANNEL_SEND
    type: int
    data: bytes = b""
    encrypted: bool = False
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return u16(self.type) + opaque(self.data)

    @classmethod
    def read(cls, r, options=0, **header):
        return cls(r.u16(), r.opaque(), bool(options & OPT_ENCRYPTED), **header)


@attrs.frozen(slots=True)
class ChannelDestroy:
    TYPE = CHANNEL_DESTROY
    reason: int = ERR_SUCCESS
    data: bytes = b""
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return u32(self.reason) + opaque(self.data)

    @classmethod
    def read(cls, r, **header):
        reason = r.u32()
        data = r.opaque() if r.remaining() else b""
        return cls(reason, data, **header)


@attrs.frozen(slots=True)
class SetUserStatus:
    TYPE = SET_USER_STATUS
    status: UserStatus
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return self.status.encode()

    @classmethod
    def read(cls, r, **header):
        return cls(UserStatus.read(r), **header)


@attrs.frozen(slots=True)
class SetPrivacyList:
    TYPE = SET_PRIVACY_LIST
    privacy: PrivacyInfo
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return self.privacy.encode()

    @classmethod
    def read(cls, r, **header):
        return cls(PrivacyInfo.read(r), **header)


@attrs.frozen(slots=True)
class SenseService:
    TYPE = SENSE_SERVICE
    service: int
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return u32(self.service)

    @classmethod
    def read(cls, r, **header):
        return cls(r.u32(), **header)


@attrs.frozen(slots=True)
class Admin:
    TYPE = ADMIN
    text: str
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        return string(self.text)

    @classmethod
    def read(cls, r, **header):
        return cls(r.string(), **header)


@attrs.frozen(slots=True)
class Announce:
    """
    An announcement: from the server with ``sender``; from a client to
    ``recipients`` written ``"@U user"`` (users) or ``"@G group"`` (address book groups).
    """

    TYPE = ANNOUNCE
    text: str
    may_reply: bool = False
    recipients: tuple = ()
    sender: Optional[LoginInfo] = None
    unknown: int = 0
    channel: int = attrs.field(default=0, kw_only=True)
    attribs: bytes = attrs.field(default=b"", kw_only=True)

    def body(self) -> bytes:
        out = boolean(self.sender is not None)
        if self.sender is not None:
            out += self.sender.encode()
        out += u16(self.unknown) + opaque(boolean(self.may_reply) + string(self.text))
        return out + u32(len(self.recipients)) + b"".join(string(x) for x in self.recipients)

    @classmethod
    def read(cls, r, **header):
        sender = LoginInfo.read(r) if r.boolean() else None
        unknown = r.u16()
        inner = Reader(r.opaque())
        may_reply, text = inner.boolean(), inner.string()
        count = r.u32()
        _check_count(count, r, 2)
        recipients = tuple(r.string() for _ in range(count))
        return cls(text, may_reply, recipients, sender, unknown, **header)


MESSAGE_TYPES = {
    cls.TYPE: cls
    for cls in (
        Handshake, HandshakeAck, Login, LoginAck, LoginRedirect, LoginContinue,
        ChannelCreate, ChannelAccept, ChannelSend, ChannelDestroy,
        SetUserStatus, SetPrivacyList, SenseService, Admin, Announce,
    )
}


def decode(payload: bytes):
    """One message (the bytes after its length) -> a message value; raises `CodecError`."""
    r = Reader(payload)
    msg_type, options, channel = r.u16(), r.u16(), r.u32()
    attribs = r.opaque() if options & OPT_ATTRIBS else b""
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise UnknownMessage(msg_type)
    header = {"channel": channel, "attribs": attribs}
    if cls is ChannelSend:
        header["options"] = options
    elif options & OPT_ENCRYPTED:
        raise CodecError(f"message type 0x{msg_type:04x} cannot be encrypted")
    message = cls.read(r, **header)
    if cls not in (ChannelCreate, ChannelAccept, ChannelDestroy):
        r.done(cls.__name__)
    return message


def encode(message) -> bytes:
    """A message value -> its bytes (without the length); raises `CodecError` if a value does not fit."""
    options = OPT_ATTRIBS if message.attribs else 0
    if getattr(message, "encrypted", False):
        options |= OPT_ENCRYPTED
    out = u16(message.TYPE) + u16(options) + u32(message.channel)
    if message.attribs:
        out += opaque(message.attribs)
    return out + message.body()


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
