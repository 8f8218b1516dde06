"""Who is online where: sessions by person and by address, and their presence."""

from __future__ import annotations

from typing import Optional

import attrs
from zope.interface import implementer

from gateway.interfaces import ISessionRegistry
from gateway.model import Address, Identity, PresenceStatus, new_event_id

# Which status shows when a person is online in several places at once.
_RANK = {
    PresenceStatus.AVAILABLE: 4,
    PresenceStatus.BUSY: 3,
    PresenceStatus.AWAY: 2,
    PresenceStatus.IDLE: 1,
    PresenceStatus.OFFLINE: 0,
}


def more_available(a, b) -> bool:
    """Whether status ``a`` shows before ``b`` (a person online in several places shows the most available)."""
    return _RANK[a] > _RANK[b]


@attrs.frozen(slots=True)
class RemoteSession:
    """A session of a person on another node of the cluster, as its registry tells it."""

    node: str
    id: str
    address: Address
    status: PresenceStatus = PresenceStatus.AVAILABLE
    note: str = ""


@attrs.define(eq=False, slots=True)
class Session:
    """One logged-in client of one person on one connector (and node)."""

    identity: Identity
    address: Address
    connector: str
    node: str = ""
    started: float = 0.0
    status: PresenceStatus = PresenceStatus.AVAILABLE
    note: str = ""
    # Anything the connector wants to find again from a session (its protocol object).
    handler: object = None
    id: str = attrs.field(factory=new_event_id)

    def __repr__(self):
        return f"<Session {self.address} ({self.identity.id}) on {self.connector}>"


@implementer(ISessionRegistry)
class SessionRegistry:
    """In-memory registry of this node's sessions."""

    def __init__(self):
        # Tuples, not lists: most people have one session, and a 1-tuple is the
        # smallest container; readers get them as they are, with no copy.
        self._by_identity: dict[str, tuple] = {}
        self._by_address: dict[Address, tuple] = {}

    def add(self, session: Session) -> None:
        key = session.identity.id
        self._by_identity[key] = (session,) + self._by_identity.get(key, ())
        self._by_address[session.address] = (session,) + self._by_address.get(session.address, ())

    def remove(self, session: Session) -> None:
        for table, key in (
            (self._by_identity, session.identity.id),
            (self._by_address, session.address),
        ):
            entries = table.get(key)
            if entries and session in entries:
                rest = tuple(s for s in entries if s is not session)
                if rest:
                    table[key] = rest
                else:
                    del table[key]

    def live(self, identity_id: str) -> tuple:
        """This person's sessions, newest first, as the registry holds them (for the path)."""
        return self._by_identity.get(identity_id, ())

    def sessions_of(self, identity_id: str) -> list:
        return list(self._by_identity.get(identity_id, ()))

    def by_address(self, address: Address) -> list:
        return list(self._by_address.get(address, ()))

    def online(self, identity_id: str) -> bool:
        return identity_id in self._by_identity

    def presence_of(self, identity_id: str) -> tuple:
        """(status, note) of a person: the most available of their sessions."""
        best: Optional[Session] = None
        for session in self._by_identity.get(identity_id, ()):
            if best is None or _RANK[session.status] > _RANK[best.status]:
                best = session
        if best is None:
            return PresenceStatus.OFFLINE, ""
        return best.status, best.note

    def all(self) -> list:
        return [s for entries in self._by_identity.values() for s in entries]

    def count_by_connector(self) -> dict:
        counts: dict[str, int] = {}
        for entries in self._by_identity.values():
            for session in entries:
                counts[session.connector] = counts.get(session.connector, 0) + 1
        return counts

    def __len__(self):
        return sum(len(v) for v in self._by_identity.values())
