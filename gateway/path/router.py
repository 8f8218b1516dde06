"""Where an event goes: address -> person -> sessions, an alias, or a federated peer."""

from __future__ import annotations

from typing import Optional

import attrs

from gateway.model import Address, Identity
from gateway.path.sessions import RemoteSession


def is_deferred(value) -> bool:
    """``isinstance(value, Deferred)`` without ABCMeta's cost (Deferred is an Awaitable)."""
    return hasattr(value.__class__, "addCallbacks")


def then(value, fn, *args):
    """Apply ``fn(value, *args)`` now, or when ``value`` (a Deferred) fires."""
    if hasattr(value.__class__, "addCallbacks"):
        return value.addCallback(fn, *args)
    return fn(value, *args)


@attrs.frozen(slots=True)
class Route:
    """
    The answer of the router for one event.

    ``sessions``: the recipient's live sessions (deliver there);
    ``connector`` with ``target``: a foreign address that connector can reach;
    ``direct``: hand the event as it is to ``connector`` (a recipient it
    reaches by other means than a session, e.g. a SIP subscription);
    ``remote``: to that one session on another node of the cluster
    (`gateway.path.sessions.RemoteSession`);
    a ``recipient`` identity with neither: that person is offline;
    nothing at all: nobody is known by that address.
    """

    sender: Optional[Identity]
    recipient: Optional[Identity]
    sessions: tuple = ()
    connector: object = None
    target: Optional[Address] = None
    direct: bool = False
    remote: object = None

    @property
    def unknown(self) -> bool:
        return self.recipient is None and self.connector is None

    @property
    def offline(self) -> bool:
        return self.recipient is not None and not self.sessions


class Router:
    """
    Maps an event's addresses onto people and places.

    Look-ups go to the directory's cache first (no Deferred on a hit), so the
    common case routes synchronously.
    """

    def __init__(self, directory, sessions, connectors):
        self.directory = directory
        self.sessions = sessions
        self.connectors = connectors  # name -> connector (shared, filled later)
        self._by_network = {}
        # `gateway.rooms.Rooms`: every event to a ``room:`` address goes there, as it is.
        self.rooms = None

    def connector_for(self, network: str):
        """The connector serving ``network``, or None."""
        connector = self._by_network.get(network)
        if connector is None:
            for candidate in self.connectors.values():
                if network in candidate.networks:
                    self._by_network[network] = connector = candidate
                    break
        return connector

    def forget_connectors(self):
        self._by_network.clear()

    def identity(self, address: Address):
        """The `Identity` owning ``address`` (or None), as a value or a Deferred."""
        cached = getattr(self.directory, "cached_identity_for", None)
        if cached is not None:
            hit, identity = cached(address)
            if hit:
                return identity
        return self.directory.identity_for(address)

    def route(self, event, only_session=None, through=None):
        return then(self.identity(event.sender), self._with_sender, event, only_session, through)

    def _with_sender(self, sender, event, only_session, through):
        rooms = self.rooms
        if rooms is not None and event.recipient.network in rooms.networks:
            return Route(sender, None, connector=through or rooms, target=event.recipient, direct=True)
        return then(
            self.identity(event.recipient), self._with_recipient, sender, event, only_session, through
        )

    def _with_recipient(self, recipient, sender, event, only_session, through):
        if through is not None:
            return Route(sender, recipient, connector=through, target=event.recipient, direct=True)
        if recipient is not None:
            if only_session is not None:
                if only_session.__class__ is RemoteSession:
                    return Route(sender, recipient, remote=only_session)
                live = (only_session,) if only_session in self.sessions.live(recipient.id) else ()
            else:
                live = self.sessions.live(recipient.id)
            return Route(sender, recipient, live)
        return then(
            self.directory.resolve_alias(event.recipient), self._foreign, sender, event
        )

    def _foreign(self, original, sender, event):
        target = original if original is not None else event.recipient
        if original is not None:
            # An alias may stand for a person of ours too (a handle added later).
            return then(self.identity(original), self._aliased, sender, target)
        return self._remote(sender, target)

    def _aliased(self, recipient, sender, target):
        if recipient is not None:
            return Route(sender, recipient, self.sessions.live(recipient.id))
        return self._remote(sender, target)

    def _remote(self, sender, target):
        connector = self.connector_for(target.network)
        if connector is not None and connector.can_reach(target):
            return Route(sender, None, connector=connector, target=target)
        return Route(sender, None)
