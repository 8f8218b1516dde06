"""
Test helpers for the gateway and for third-party plugins.

- `MemoryConnector`: a connector whose "clients" are Python objects; it
  records what was delivered to each session.
- `MemoryDirectory`, `MemoryArchive`, `MemoryOfflineStore`: in-memory parts
  with the same interfaces as the SQL ones, for deterministic tests.
- `make_core`: a whole gateway core on a ``task.Clock``, no threads.
- `ConnectorConformanceMixin`: the tests every connector must pass; mix it
  into a ``twisted.trial.unittest.TestCase`` and implement its three hooks.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import loads
from gateway.interfaces import IArchive, IConnector, IDirectory, IOfflineStore
from gateway.model import Address, Contact, Identity, Message

__all__ = [
    "MemoryConnector",
    "MemoryDirectory",
    "MemoryArchive",
    "MemoryOfflineStore",
    "make_core",
    "ConnectorConformanceMixin",
]


@implementer(IConnector)
class MemoryConnector(service.Service):
    """A connector with no wire: ``delivered[session]`` lists the events handed to each session."""

    def __init__(self, api=None, config=None, *, name="memory", networks=("mem",), domain="", reach=()):
        self.api = api
        self.name = name
        self.networks = tuple(networks)
        self._domain = domain
        self.reach = set(reach)  # foreign addresses this connector "federates" with
        self.delivered = {}
        self.remote = []  # events delivered to foreign addresses
        self.failing = set()  # sessions whose delivery raises
        self.sessions = []

    def domain_for(self, network):
        return self._domain

    def can_reach(self, address):
        return address in self.reach

    def deliver(self, event, session):
        if session is None:
            self.remote.append(event)
            return None
        if session in self.failing:
            raise ConnectionError(f"{session!r} is gone")
        self.delivered.setdefault(session, []).append(event)
        return None

    def received(self, session, kind=None):
        events = self.delivered.get(session, [])
        return [e for e in events if kind is None or e.kind == kind]

    def login(self, identity, address, **kwargs) -> Deferred:
        d = self.api.login(identity, address, self.name, **kwargs)
        return d.addCallback(self._logged_in)

    def _logged_in(self, session):
        self.sessions.append(session)
        return session

    def logout(self, session) -> Deferred:
        self.sessions.remove(session)
        return self.api.logout(session)

    def stopService(self):
        super().stopService()
        from twisted.internet.defer import gatherResults

        return gatherResults([self.logout(s) for s in list(self.sessions)])


@implementer(IDirectory)
class MemoryDirectory:
    """People and contact lists in dicts; answers with already-fired Deferreds."""

    secrets_complete = True  # secrets are derived from the passwords it holds

    def __init__(self):
        self.people = {}  # id -> Identity
        self.passwords = {}
        self._contacts = {}
        self._aliases = {}  # alias Address -> foreign Address
        self._alias_of = {}  # (foreign Address, network) -> alias Address
        self.hits = self.misses = 0

    def add(self, identity_id, *handles, password="secret", groups=(), display_name=""):
        identity = Identity(
            identity_id,
            display_name or identity_id.title(),
            tuple(Address.parse(h) if isinstance(h, str) else h for h in handles),
            frozenset(groups),
        )
        self.people[identity_id] = identity
        self.passwords[identity_id] = password
        return identity

    def _by_handle(self, address):
        if address.network == "gw":
            return self.people.get(address.user)
        for identity in self.people.values():
            if address in identity.handles:
                return identity
        return None

    def cached_identity_for(self, address):
        return True, self._by_handle(address)

    def authenticate(self, address, password):
        identity = self._by_handle(address)
        if identity is not None and self.passwords.get(identity.id) == password:
            return succeed(identity)
        return succeed(None)

    def identity_for(self, address):
        return succeed(self._by_handle(address))

    def secret(self, address, scheme):
        from gateway.directory.secrets import derive

        identity = self._by_handle(address)
        if identity is None:
            return succeed((None, None))
        password = self.passwords.get(identity.id)
        value = derive(password, identity.handles).get(scheme) if password else None
        return succeed((identity, value))

    def get_identity(self, identity_id):
        return succeed(self.people.get(identity_id))

    def contacts(self, identity_id):
        return succeed(list(self._contacts.get(identity_id, [])))

    def set_contacts(self, identity_id, contacts):
        self._contacts[identity_id] = [
            c if isinstance(c, Contact) else Contact(c) for c in contacts
        ]
        return succeed(None)

    def watchers_of(self, identity_id):
        identity = self.people.get(identity_id)
        if identity is None:
            return succeed([])
        handles = set(identity.handles)
        return succeed(
            [
                owner
                for owner, contacts in self._contacts.items()
                if any(c.address in handles for c in contacts)
            ]
        )

    def alias_for(self, address, network, domain=""):
        key = (address, network)
        alias = self._alias_of.get(key)
        if alias is None:
            user = f"{address.network}.{address.user}"
            if address.domain:
                user += f"%{address.domain}"
            alias = Address(network, user, domain)
            self._alias_of[key] = alias
            self._aliases[alias] = address
        return succeed(alias)

    def resolve_alias(self, address):
        return succeed(self._aliases.get(address))

    def invalidate(self):
        pass


@implementer(IArchive)
class MemoryArchive:
    """Rows in a dict keyed by event id (so a retry keeps one row), like the real archive."""

    def __init__(self):
        self.rows = {}
        self.deliveries = []
        self.captures = []
        self.changes = {}  # event id -> (the event as sent, names of the transforms that changed it)
        self.refuse = False  # wait=True records fail, as with a database that is down

    def record(
        self, event, verdict, outcome=None, *, sender_identity=None, recipient_identity=None, wait=False, strict=True,
        original=None, transforms=(),
    ):
        if transforms:
            self.changes[event.id] = (original, tuple(transforms))
        if wait and self.refuse and not strict:
            # The database is down but the spool took the row: durable all the same.
            self.rows.setdefault(event.id, (event, verdict, "accepted"))
            return succeed(None)
        if wait and self.refuse:
            from gateway.archive import ArchiveUnavailable

            self.rows.setdefault(event.id, (event, verdict, "rejected"))
            return fail(ArchiveUnavailable("database is down"))
        status = outcome.status.value if outcome else ("accepted" if verdict.allowed else "rejected")
        self.rows.setdefault(event.id, (event, verdict, status))
        return succeed(None) if wait else None

    def record_delivery(self, event_id, status, where):
        self.deliveries.append((event_id, status, where))
        if event_id in self.rows:
            # As the real archive reports it: the newest delivery note wins.
            event, verdict, _ = self.rows[event_id]
            self.rows[event_id] = (event, verdict, getattr(status, "value", status))

    def record_capture(self, event_id, direction, network, data, notes=()):
        self.captures.append((event_id, direction, network, bytes(data), list(notes)))

    def queue_depth(self):
        return 0

    def status(self, event_id):
        return self.rows[event_id][2]

    def events(self, kind=None):
        return [e for e, _, _ in self.rows.values() if kind is None or e.kind == kind]


@implementer(IOfflineStore)
class MemoryOfflineStore:
    def __init__(self, limit=None):
        self.held = {}
        self.limit = limit

    def store(self, identity_id, event):
        held = self.held.setdefault(identity_id, {})
        if self.limit is not None and event.id not in held and len(held) >= self.limit:
            from gateway.archive import OfflineFull

            return fail(OfflineFull(f"{identity_id} has {len(held)} messages waiting already"))
        held.setdefault(event.id, event)
        return succeed(None)

    def pending(self, identity_id):
        return succeed(sorted(self.held.get(identity_id, {}).values(), key=lambda e: e.created))

    def remove(self, identity_id, event_ids):
        held = self.held.get(identity_id, {})
        for event_id in event_ids:
            held.pop(event_id, None)
        return succeed(None)


def make_core(config_text: str = "", clock=None, directory=None, plugins=None, archive=None, offline=None):
    """
    A gateway `Core` on a ``task.Clock`` with in-memory parts, no threads and
    no entry points loaded (``config_text`` may be a loaded config instead) (register plugins on ``core.plugins`` yourself,
    then call ``core.start_plugins()``).
    """
    from gateway.plugins import Plugins
    from gateway.core import Core

    config = loads(config_text, "<test>", base_dir="/nonexistent") if isinstance(config_text, str) else config_text
    return Core(
        config,
        clock if clock is not None else task.Clock(),
        plugins=plugins if plugins is not None else Plugins(),
        directory=directory if directory is not None else MemoryDirectory(),
        archive=archive if archive is not None else MemoryArchive(),
        offline=offline if offline is not None else MemoryOfflineStore(),
    )


class ConnectorConformanceMixin:
    """
    Tests every connector passes. Mix into a trial ``TestCase`` and define:

    - ``make_connector(self, api)``: build the connector under test.
    - ``connect_client(self, connector, identity, address)``: log a client
      of that connector in as ``identity`` under ``address`` (a handle on
      the connector's network) and fire with the `Session` it got.
    - ``client_received(self, connector, session)``: the list of texts of the
      instant messages that client has been shown so far.

    ``self.network`` must name one of the connector's networks, and
    ``self.handles`` two handles on it, e.g. ``("aim:alice", "aim:bob")``.
    ``self.clock`` may be set to the clock (a ``task.Clock``) the connector uses.
    """

    network = "mem"
    handles = ("mem:alice", "mem:bob")

    def _core(self):
        self.directory = MemoryDirectory()
        self.alice = self.directory.add("alice", self.handles[0])
        self.bob = self.directory.add("bob", self.handles[1])
        self.core = make_core(directory=self.directory, clock=getattr(self, "clock", None))
        self.connector = self.make_connector(self.core.api)
        self.core.connectors[self.connector.name] = self.connector
        return self.connector

    def test_provides_interfaces(self):
        connector = self._core()
        self.assertTrue(verifyObject(IConnector, connector))
        self.assertTrue(verifyObject(service.IService, connector))
        self.assertIsInstance(connector.name, str)
        self.assertIn(self.network, connector.networks)
        self.assertIsInstance(connector.domain_for(self.network), str)

    def test_cannot_reach_unknown_foreign_address(self):
        connector = self._core()
        self.assertFalse(connector.can_reach(Address(self.network, "nobody-known-here", "invalid.invalid")))

    @inlineCallbacks
    def test_message_between_two_clients(self):
        connector = self._core()
        connector.startService()
        try:
            a = yield self.connect_client(connector, self.alice, Address.parse(self.handles[0]))
            b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
            outcome = yield self.core.bus.submit(
                Message(a.address, b.address, "conformance: hello \u00e9\u4e16", created=1.0)
            )
            self.assertTrue(outcome.delivered, outcome)
            texts = yield self.client_received(connector, b)
            self.assertIn("conformance: hello \u00e9\u4e16", texts)
            texts = yield self.client_received(connector, a)
            self.assertNotIn("conformance: hello \u00e9\u4e16", texts)
        finally:
            yield connector.stopService()

    @inlineCallbacks
    def test_stop_logs_sessions_out(self):
        connector = self._core()
        connector.startService()
        yield self.connect_client(connector, self.alice, Address.parse(self.handles[0]))
        self.assertEqual(len(self.core.sessions.sessions_of("alice")), 1)
        yield connector.stopService()
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
