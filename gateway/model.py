"""The values that cross the bus: addresses, events, verdicts and outcomes."""

from __future__ import annotations

import enum
import os
import random
import sys
import time
from typing import Optional, Union

import attrs

__all__ = [
    "Address",
    "AddressError",
    "Message",
    "Presence",
    "PresenceStatus",
    "Typing",
    "ChatEvent",
    "FileOffer",
    "Profile",
    "Access",
    "AdminAction",
    "Event",
    "Verdict",
    "Outcome",
    "OutcomeStatus",
    "Identity",
    "Contact",
    "new_event_id",
    "event_from_dict",
]


class AddressError(ValueError):
    """Text that is not an address, with what was wrong with it."""


def _lower(value: str) -> str:
    # Keep the caller's string when it is already normal: each address then
    # shares it instead of holding a copy (str.lower always makes one).
    value = value.strip()
    lowered = value.lower()
    return value if lowered == value else lowered


def _network(value: str) -> str:
    # A handful of network names, shared by every address.
    return sys.intern(_lower(value))


@attrs.frozen(slots=True, order=True, cache_hash=True)
class Address:
    """
    Where someone is reachable: ``(network, user, domain)``.

    The text form is ``NETWORK:USER`` or ``NETWORK:USER@DOMAIN``, e.g.
    ``aim:alice``, ``sip:alice@example.com``, ``xmpp:bob@localhost``.
    Network, user and domain are compared case-insensitively, so they are
    stored lower-cased; a connector keeps any display form it needs itself.
    """

    network: str = attrs.field(converter=_network)
    user: str = attrs.field(converter=_lower)
    domain: str = attrs.field(default="", converter=_lower)
    # The text form, made once: addresses are printed on every archive row.
    _text: str = attrs.field(init=False, eq=False, order=False, repr=False)

    def __attrs_post_init__(self):
        text = f"{self.network}:{self.user}@{self.domain}" if self.domain else f"{self.network}:{self.user}"
        object.__setattr__(self, "_text", text)

    @network.validator
    def _check_network(self, attribute, value):
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            raise AddressError(f"network must be a word, not {value!r}")

    @user.validator
    def _check_user(self, attribute, value):
        if not value:
            raise AddressError("user must not be empty")
        if any(ch in value for ch in "\r\n\x00"):
            raise AddressError(f"user contains a control character: {value!r}")

    @classmethod
    def parse(cls, text: str) -> "Address":
        """Parse ``NETWORK:USER[@DOMAIN]``; raise `AddressError` naming the problem."""
        if not isinstance(text, str):
            raise AddressError(f"an address is text, not {type(text).__name__}")
        network, sep, rest = text.partition(":")
        if not sep:
            raise AddressError(
                f"{text!r} is not an address: expected NETWORK:USER, e.g. aim:alice"
            )
        user, _, domain = rest.rpartition("@") if "@" in rest else (rest, "", "")
        return cls(network, user, domain)

    def __str__(self) -> str:
        return self._text

    @property
    def handle(self) -> str:
        """The part after the network: ``user`` or ``user@domain``."""
        return f"{self.user}@{self.domain}" if self.domain else self.user


def _address(value) -> Address:
    if isinstance(value, Address):
        return value
    return Address.parse(value)


def _optional_address(value) -> Optional[Address]:
    return None if value is None else _address(value)


class _EventIds:
    """
    Time-ordered event ids: 12 hex digits of milliseconds since the epoch,
    then 80 random bits (20 hex digits). Ids made later sort later, so the
    archive's key index grows at its end instead of taking every insert on
    a random page of a B-tree that outgrows memory; the random part keeps
    them unique across processes and nodes (and within a millisecond). The
    bits come from a generator seeded from the OS, once per process and
    again in a forked child, so making an id costs no system call
    (``os.urandom`` releases the GIL, handing it to the archive writer
    thread for up to a switch interval on every event). The clock only
    orders ids: nothing reads a time back out of one.
    """

    def __init__(self):
        self._seed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._seed)

    def _seed(self):
        self._bits = random.Random(os.urandom(32)).getrandbits

    def __call__(self) -> str:
        return "%012x%020x" % (time.time_ns() // 1_000_000, self._bits(80))


new_event_id = _EventIds()
new_event_id.__doc__ = "A fresh, globally unique event id (32 hex digits)."


class PresenceStatus(str, enum.Enum):
    AVAILABLE = "available"
    AWAY = "away"
    BUSY = "busy"
    IDLE = "idle"
    OFFLINE = "offline"


# Every event: ``id`` (unique, the archive key), ``sender``, ``recipient``
# (None only for a presence broadcast, which the bus fans out to watchers),
# ``created`` (seconds since the epoch, when it entered the gateway) and the
# class attribute ``kind`` that policy rules match on.


@attrs.frozen(slots=True)
class Message:
    """An instant message from one person to another."""

    kind = "im"

    sender: Address = attrs.field(converter=_address)
    recipient: Address = attrs.field(converter=_address)
    text: str
    html: Optional[str] = None
    thread: Optional[str] = None
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)


@attrs.frozen(slots=True)
class Presence:
    """Someone's availability; ``recipient`` None means "everyone who watches"."""

    kind = "presence"

    sender: Address = attrs.field(converter=_address)
    status: PresenceStatus = attrs.field(converter=PresenceStatus)
    note: str = ""
    recipient: Optional[Address] = attrs.field(
        default=None, converter=_optional_address
    )
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)


@attrs.frozen(slots=True)
class Typing:
    """Someone started (True) or stopped (False) typing to someone."""

    kind = "typing"

    sender: Address = attrs.field(converter=_address)
    recipient: Address = attrs.field(converter=_address)
    active: bool = True
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)


@attrs.frozen(slots=True)
class ChatEvent:
    """
    Something in a room (multi-user chat). ``action`` is ``join``,
    ``leave``, ``message``, ``subject`` (``text`` is the new subject),
    ``kick`` (``text``: the nickname put out, then the reason after a
    line break, as nicknames may hold spaces but no line break), ``invite`` (to the person invited, not to the room), or in
    deliveries to members ``history`` (a message said before they came).
    To a room, ``recipient`` is its address (`gateway.rooms.ROOM_NETWORK`,
    ``room:NAME``); ``nick`` is the sender's nickname in the room, and
    ``members`` the addresses (text) of who was in it when the event came,
    which is what the archive records as its audience.
    """

    kind = "chat"

    sender: Address = attrs.field(converter=_address)
    recipient: Address = attrs.field(converter=_address)
    room: str
    action: str
    text: str = ""
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)
    nick: str = ""
    members: tuple = attrs.field(default=(), converter=tuple)


@attrs.frozen(slots=True)
class FileOffer:
    """
    Someone offers someone a file: its ``name``, ``size`` in bytes (0 when
    not told), a description ``text`` and, for a file offered as a link
    (XMPP out-of-band data), its ``url``. Policy, hooks and the archive see
    all of it; a connector renders the offer natively where the protocol can
    carry it, else as a notice, and refuses a rejected offer in the
    protocol's own way. ``transfer`` is the origin connector's opaque key
    for the transfer (a rendezvous cookie), so that it can relay what
    follows an allowed offer; it is never shown to anyone.
    """

    kind = "file"

    sender: Address = attrs.field(converter=_address)
    recipient: Address = attrs.field(converter=_address)
    name: str
    size: int = 0
    text: str = ""
    url: str = ""
    transfer: str = ""
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)

    def summary(self) -> str:
        """One line of everything the recipient can be shown: name, size, description, link."""
        parts = [self.name]
        if self.size:
            parts.append(f"({self.size} bytes)")
        if self.text:
            parts.append(self.text)
        if self.url:
            parts.append(self.url)
        return " ".join(parts)


@attrs.frozen(slots=True)
class Profile:
    """
    What someone's profile discloses to someone who asked: a user-info or
    profile query (OSCAR locate, a vCard) answered with ``sender``'s status,
    away ``note``, profile ``text`` and its rich form ``html``. The asker is
    the ``recipient``; policy decides it as kind ``info``.
    """

    kind = "info"

    sender: Address = attrs.field(converter=_address)
    recipient: Address = attrs.field(converter=_address)
    status: PresenceStatus = attrs.field(default=PresenceStatus.AVAILABLE, converter=PresenceStatus)
    note: str = ""
    text: str = ""
    html: Optional[str] = None
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)


@attrs.frozen(slots=True)
class Access:
    """
    A login, a failed login or a logout: ``sender`` is the address used,
    ``action`` one of ``login``, ``login-failed``, ``logout``; ``source`` the
    client's address, ``connector`` which connector, ``text`` the reason of
    a failure. Recorded for the audit trail; nobody receives it.
    """

    kind = "access"
    recipient = None

    sender: Address = attrs.field(converter=_address)
    action: str
    source: str = ""
    connector: str = ""
    text: str = ""
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)


@attrs.frozen(slots=True)
class AdminAction:
    """
    What an operator did through the admin API: ``sender`` is
    ``operator:NAME``, ``role`` theirs, ``action`` what they did (e.g.
    ``sessions.kick``), ``target`` to what or whom, ``text`` the details
    (a broadcast's words, a search's query), ``source`` their client's
    address. Archived before the action takes effect (or, for a reading,
    before the answer goes out); nobody receives it.
    """

    kind = "admin"
    recipient = None

    sender: Address = attrs.field(converter=_address)
    action: str
    role: str = ""
    target: str = ""
    text: str = ""
    source: str = ""
    created: float = 0.0
    id: str = attrs.field(factory=new_event_id)

    def summary(self) -> str:
        """What the archive's ``text`` column shows: ``ACTION [TARGET][: TEXT]``."""
        return self.action + (f" {self.target}" if self.target else "") + (f": {self.text}" if self.text else "")


Event = Union[Message, Presence, Typing, ChatEvent, FileOffer, Profile, Access, AdminAction]
EVENT_TYPES = (Message, Presence, Typing, ChatEvent, FileOffer, Profile, Access, AdminAction)
_BY_KIND = {cls.kind: cls for cls in EVENT_TYPES}


_FIELD_NAMES = {cls: tuple(f.name for f in attrs.fields(cls)) for cls in EVENT_TYPES}


def event_to_dict(event: Event) -> dict:
    """A JSON-able dict of an event (addresses as text); see `event_from_dict`."""
    out = {"kind": event.kind}
    for name in _FIELD_NAMES[event.__class__]:
        value = getattr(event, name)
        if value.__class__ is Address:
            value = str(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[name] = value
    return out


def event_from_dict(data: dict) -> Event:
    """The event `event_to_dict` described."""
    data = dict(data)
    cls = _BY_KIND[data.pop("kind")]
    return cls(**data)


@attrs.frozen(slots=True)
class Verdict:
    """A policy decision: allowed or not, why, and which rule (or plugin) said so."""

    allowed: bool
    reason: str = ""
    rule: str = ""

    @classmethod
    def allow(cls, rule: str = "", reason: str = "allowed") -> "Verdict":
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str = "") -> "Verdict":
        return cls(False, reason, rule)


class OutcomeStatus(str, enum.Enum):
    DELIVERED = "delivered"
    QUEUED = "queued"
    REJECTED = "rejected"


@attrs.frozen(slots=True)
class Outcome:
    """What became of an event: delivered, queued for an offline recipient, or rejected."""

    status: OutcomeStatus
    event_id: str
    reason: str = ""
    rule: str = ""
    # A short machine-readable cause for connectors to map onto native errors:
    # "policy", "unknown-recipient", "offline", "archive-unavailable",
    # "delivery-failed", "invalid".
    code: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is OutcomeStatus.DELIVERED

    @property
    def queued(self) -> bool:
        return self.status is OutcomeStatus.QUEUED

    @property
    def rejected(self) -> bool:
        return self.status is OutcomeStatus.REJECTED

    @classmethod
    def delivered_(cls, event_id: str) -> "Outcome":
        return cls(OutcomeStatus.DELIVERED, event_id)

    @classmethod
    def queued_(cls, event_id: str) -> "Outcome":
        return cls(OutcomeStatus.QUEUED, event_id, "recipient offline", code="offline")

    @classmethod
    def rejected_(
        cls, event_id: str, reason: str, code: str, rule: str = ""
    ) -> "Outcome":
        return cls(OutcomeStatus.REJECTED, event_id, reason, rule, code)


_NO_GROUPS = frozenset()


def _groups(value) -> frozenset:
    # One shared empty set: most people are in no group, and each empty frozenset costs 216 bytes.
    return frozenset(value) if value else _NO_GROUPS


@attrs.frozen(slots=True, cache_hash=True)
class Identity:
    """A person in the directory: an id, a display name, a handle per network, groups."""

    id: str
    display_name: str = ""
    handles: tuple = ()  # of Address
    groups: frozenset = attrs.field(default=frozenset(), converter=_groups)

    def handle_on(self, network: str) -> Optional[Address]:
        """This person's address on ``network``, or None."""
        for handle in self.handles:
            if handle.network == network:
                return handle
        return None


@attrs.frozen(slots=True)
class Contact:
    """One entry in a person's contact list (buddy list, roster)."""

    address: Address = attrs.field(converter=_address)
    group: str = "Buddies"
    name: str = ""
