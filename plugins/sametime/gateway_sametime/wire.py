"""Sametime (Meanwhile "VP") wire basics: protocol numbers, errors, big-endian primitives and framing."""

from __future__ import annotations

import struct
from typing import Optional


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


def _check_count(count, r: Reader, min_item_size: int) -> None:
    if count * min_item_size > r.remaining():
        raise CodecError(f"count {count} is more than the {r.remaining()} remaining bytes can hold")


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


KEEPALIVE = b"\x80"
