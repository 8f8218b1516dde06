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
from twisted.trial.unittest import SkipTest
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
        self.full = False  # ... and with refuse, the spool is full too: non-strict records fail as well

    def record(
        self, event, verdict, outcome=None, *, sender_identity=None, recipient_identity=None, wait=False, strict=True,
        original=None, transforms=(),
    ):
        if transforms:
            self.changes[event.id] = (original, tuple(transforms))
        if wait and self.refuse and not strict and not self.full:
            # The database is down but the spool took the row: durable all the same.
            self.rows.setdefault(event.id, (event, verdict, "accepted"))
            return succeed(None)
        if wait and self.refuse:
            from gateway.storage.archive import ArchiveUnavailable

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
            from gateway.storage.archive import OfflineFull

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


def make_core(config_text: str = "", clock=None, directory=None, plugins=None, archive=None, offline=None,
              reactor=None):
    """
    A gateway `Core` on a ``task.Clock`` with in-memory parts, no threads and
    no entry points loaded (register plugins on ``core.plugins`` yourself,
    then call ``core.start_plugins()``). ``config_text`` may be a loaded
    config instead. ``reactor`` (for a connector that really listens, e.g.
    the global reactor in a trial test) is what ``api.reactor`` hands out,
    while time still comes from ``clock``.
    """
    from gateway.plugins import Plugins
    from gateway.core import Core

    config = loads(config_text, "<test>", base_dir="/nonexistent") if isinstance(config_text, str) else config_text
    clock = clock if clock is not None else task.Clock()
    core = Core(
        config,
        clock,
        plugins=plugins if plugins is not None else Plugins(),
        directory=directory if directory is not None else MemoryDirectory(),
        archive=archive if archive is not None else MemoryArchive(),
        offline=offline if offline is not None else MemoryOfflineStore(),
    )
    if reactor is not None:
        core.reactor = core.api.reactor = reactor
    return core


def _shows(data: bytes, text: str) -> bool:
    """Whether ``data`` holds ``text`` in one of the encodings IM protocols use."""
    return any(text.encode(encoding) in data for encoding in ("utf-8", "utf-16-be", "latin-1"))


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
    ``self.clock`` may be set to the clock (a ``task.Clock``) the connector
    uses, and ``self.reactor`` to a reactor for a connector that listens.

    The deeper tests need a client of the connector that does what a user
    does; define as many of these as the protocol allows (each test that
    needs one the case does not define is skipped, saying which):

    - ``try_login(self, connector, address, password)``: a new client logs
      in; fire with ``(session or None, what the client was told)``.
    - ``client_send(self, connector, session, recipient, text)``: that
      client sends an instant message through the connector's own inbound
      path; fire with what the client was told back (text).
    - ``drop_client(self, connector, session)``: that client's connection
      is lost (no goodbye).
    - ``garbage_client(self, connector, data)``: a new client sends ``data``
      (bytes) and nothing else; fire when it was fed.
    - ``client_presence(self, connector, session)``: the addresses whose
      presence that client has been shown, with the status words.
    """

    network = "mem"
    handles = ("mem:alice", "mem:bob")

    def _core(self, config_text=""):
        self.directory = MemoryDirectory()
        self.alice = self.directory.add("alice", self.handles[0])
        self.bob = self.directory.add("bob", self.handles[1])
        self.core = make_core(config_text, directory=self.directory, clock=getattr(self, "clock", None),
                              reactor=getattr(self, "reactor", None))
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

    # -- what a user does, through the connector's own client side ----------

    @inlineCallbacks
    def test_native_capture_keeps_what_came_and_what_went(self):
        """
        With ``[archive] capture = "native"``, a message a client sends is
        kept as the bytes it came in, and as the bytes of its rendering for
        the recipient (``api.capture``).
        """
        self._needs("client_send")
        connector = self._started('[archive]\ncapture = "native"\n')
        a = yield self.connect_client(connector, self.alice, Address.parse(self.handles[0]))
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        yield self.client_send(connector, a, b.address, "captured as it came")
        texts = yield self.client_received(connector, b)
        self.assertIn("captured as it came", texts)
        archive = self.core.archive
        (event,) = [e for e in archive.events("im") if e.text == "captured as it came"]
        kept = {(direction, network): data for event_id, direction, network, data, _ in archive.captures
                if event_id == event.id}
        network = Address.parse(self.handles[0]).network
        self.assertIn(("received", network), kept, f"nothing kept as received; kept: {sorted(kept)}")
        self.assertIn(("sent", Address.parse(self.handles[1]).network), kept,
                      f"nothing kept as sent; kept: {sorted(kept)}")
        for data in kept.values():
            self.assertTrue(_shows(data, "captured as it came"), data)

    def _needs(self, *hooks):
        for hook in hooks:
            if not hasattr(self, hook):
                raise SkipTest(f"{type(self).__name__} defines no {hook}(): this conformance test needs it")

    def _started(self, config_text=""):
        connector = self._core(config_text)
        connector.startService()
        self.addCleanup(lambda: connector.running and connector.stopService())
        return connector

    @inlineCallbacks
    def test_wrong_password_and_unknown_user_are_refused(self):
        self._needs("try_login")
        connector = self._started()
        session, _ = yield self.try_login(connector, Address.parse(self.handles[0]), "not the password")
        self.assertIsNone(session)
        nobody = Address(self.network, "nobody", Address.parse(self.handles[0]).domain)
        session, _ = yield self.try_login(connector, nobody, "secret")
        self.assertIsNone(session)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        failed = [e for e in self.core.archive.events("access") if e.action == "login-failed"]
        self.assertEqual(len(failed), 2, "each refused login is archived")

    @inlineCallbacks
    def test_throttled_and_directory_unavailable_logins_are_refused(self):
        self._needs("try_login")
        connector = self._started()
        address = Address.parse(self.handles[0])
        for _ in range(self.core.config.directory.login_failures + 1):
            yield self.try_login(connector, address, "wrong")
        session, _ = yield self.try_login(connector, address, "secret")
        self.assertIsNone(session, "a throttled login must be refused even with the right password")
        self.core.clock.advance(self.core.config.directory.login_window + 1)  # the lock-out passes

        def unavailable(*args, **kwargs):
            from gateway.interfaces import DirectoryUnavailable

            return fail(DirectoryUnavailable("directory down for the test"))

        self.directory.authenticate = unavailable
        self.directory.secret = unavailable
        session, _ = yield self.try_login(connector, address, "secret")
        self.assertIsNone(session)

    @inlineCallbacks
    def test_message_from_a_client_reaches_another(self):
        self._needs("client_send")
        connector = self._started()
        a = yield self.connect_client(connector, self.alice, Address.parse(self.handles[0]))
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        yield self.client_send(connector, a, b.address, "conformance: from the client side")
        texts = yield self.client_received(connector, b)
        self.assertIn("conformance: from the client side", texts)
        [event] = [e for e in self.core.archive.events("im") if e.text == "conformance: from the client side"]
        self.assertEqual(self.core.archive.status(event.id), "delivered")

    @inlineCallbacks
    def test_offline_message_handed_over_at_login(self):
        self._needs("client_send")
        connector = self._started()
        a = yield self.connect_client(connector, self.alice, Address.parse(self.handles[0]))
        yield self.client_send(connector, a, Address.parse(self.handles[1]), "conformance: while you were out")
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        texts = yield self.client_received(connector, b)
        self.assertIn("conformance: while you were out", texts)

    @inlineCallbacks
    def test_lost_connection_logs_out_and_later_messages_are_held(self):
        self._needs("drop_client")
        connector = self._started()
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        yield self.drop_client(connector, b)
        self.assertEqual(self.core.sessions.sessions_of("bob"), [])
        outcome = yield self.core.bus.submit(
            Message(Address.parse(self.handles[0]), b.address, "conformance: after you left", created=1.0))
        self.assertTrue(outcome.queued, outcome)

    @inlineCallbacks
    def test_delivery_to_a_connection_already_gone_raises_nothing(self):
        self._needs("drop_client")
        connector = self._started()
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        yield self.drop_client(connector, b)
        # The session as the bus may still hold it for a moment: delivering to
        # it fails cleanly (or is a no-op), never with an unhandled error.
        try:
            result = connector.deliver(Message(Address.parse(self.handles[0]), b.address, "late", created=1.0), b)
        except Exception:
            result = None  # raising is how a connector says "not delivered"
        if hasattr(result, "addErrback"):
            result.addErrback(lambda failure: None)

    @inlineCallbacks
    def test_presence_reaches_a_watcher(self):
        self._needs("client_presence")
        connector = self._started()
        from gateway.model import Contact

        self.directory.set_contacts("bob", [Contact(self.handles[0])])
        alice = Address.parse(self.handles[0])
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        before = yield self.client_presence(connector, b)
        yield self.connect_client(connector, self.alice, alice)
        seen = yield self.client_presence(connector, b)
        # Alice's login itself is shown, not only what bob was told of her before.
        self.assertGreater([address for address, _ in seen].count(alice),
                           [address for address, _ in before].count(alice), seen)

    @inlineCallbacks
    def test_mutated_bytes_close_one_connection_and_nothing_else(self):
        self._needs("garbage_client")
        import random

        connector = self._started()
        b = yield self.connect_client(connector, self.bob, Address.parse(self.handles[1]))
        samples = getattr(self, "garbage_samples", [b"\x00" * 64, b"\xff" * 300, b"\r\n" * 50])
        rng = random.Random(1234)
        for sample in samples:
            for _ in range(30):
                data = bytearray(sample)
                for _ in range(rng.randint(1, 8)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                yield self.garbage_client(connector, bytes(data))
        self.assertEqual(len(self.flushLoggedErrors()), 0, "bad bytes must not raise into the reactor")
        outcome = yield self.core.bus.submit(
            Message(Address.parse(self.handles[0]), b.address, "conformance: still here", created=1.0))
        self.assertTrue(outcome.delivered, outcome)

