"""Sametime messages: the structures inside them, the message values, and the header around them."""

from __future__ import annotations

from typing import Optional

import attrs

from gateway_sametime.wire import (
    ADMIN,
    ANNOUNCE,
    CHANNEL_ACCEPT,
    CHANNEL_CREATE,
    CHANNEL_DESTROY,
    CHANNEL_SEND,
    ENCRYPT_NONE,
    ERR_SUCCESS,
    HANDSHAKE,
    HANDSHAKE_ACK,
    LOGIN,
    LOGIN_ACK,
    LOGIN_CONTINUE,
    LOGIN_REDIRECT,
    OPT_ATTRIBS,
    OPT_ENCRYPTED,
    SENSE_SERVICE,
    SET_PRIVACY_LIST,
    SET_USER_STATUS,
    STATUS_ACTIVE,
    CodecError,
    Reader,
    UnknownMessage,
    _check_count,
    boolean,
    opaque,
    string,
    u16,
    u32,
)


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


def frame(message) -> bytes:
    """A message as it goes on the wire: its length, then its bytes."""
    return opaque(encode(message))
