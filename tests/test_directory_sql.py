"""Tests for the SQL directory on SQLite and PostgreSQL and its cached Deferred API."""

import threading

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from gateway.storage.dbthread import DatabaseThread
from gateway.directory import (
    DirectoryError,
    DirectoryStore,
    SQLDirectory,
    ensure_demo_users,
)
from gateway.interfaces import IDirectory
from gateway.model import Address, Contact
from gateway.storage.schema import metadata
from tests.support import shared_postgres_engine, sqlite_engine

N = 16  # scrypt cost for tests
DOMAINS = {
    "aim": "",
    "icq": "",
    "sametime": "",
    "sip": "example.com",
    "xmpp": "localhost",
}


def A(text):
    return Address.parse(text)


def clear(engine):
    """Delete every row, children first."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


class StoreTestsMixin:
    """Every `DirectoryStore` test; subclasses say which database."""

    def make_engine(self):
        raise NotImplementedError

    def setUp(self):
        self.engine = self.make_engine()
        self.store = DirectoryStore(self.engine, lambda: 1000.0, password_n=N)

    def add_alice(self, **kwargs):
        kwargs.setdefault("password", "secret")
        kwargs.setdefault("handles", [A("aim:Alice"), "sip:alice@Example.com"])
        kwargs.setdefault("display_name", "Alice A.")
        return self.store.add_person("alice", **kwargs)

    # -- people -------------------------------------------------------------

    def test_empty(self):
        self.assertTrue(self.store.is_empty())
        self.assertEqual(self.store.list_people(), [])
        self.add_alice()
        self.assertFalse(self.store.is_empty())

    def test_add_person(self):
        self.store.add_group("staff")
        identity = self.add_alice(groups=["staff"])
        self.assertEqual(identity.id, "alice")
        self.assertEqual(identity.display_name, "Alice A.")
        self.assertEqual(identity.handles, (A("aim:alice"), A("sip:alice@example.com")))
        self.assertEqual(identity.groups, frozenset({"staff"}))
        self.assertEqual(self.store.get_identity("alice"), identity)
        self.assertEqual(self.store.get_identity("ALICE "), identity)
        self.assertIsNone(self.store.get_identity("nobody"))
        self.assertIsNone(self.store.get_identity(""))

    def test_person_ids_are_case_insensitive(self):
        self.store.add_person("Bob")
        self.assertEqual([p.id for p in self.store.list_people()], ["bob"])
        error = self.assertRaises(DirectoryError, self.store.add_person, "BOB")
        self.assertIn("'bob' already exists", str(error))

    def test_empty_id(self):
        self.assertRaises(DirectoryError, self.store.add_person, " ")
        self.assertRaises(DirectoryError, self.store.add_person, None)

    def test_handle_of_someone_else(self):
        self.add_alice()
        error = self.assertRaises(
            DirectoryError,
            self.store.add_person,
            "bob",
            handles=["aim:bob", "aim:ALICE"],
        )
        self.assertIn("aim:alice already belongs to 'alice'", str(error))
        self.assertIsNone(self.store.get_identity("bob"))
        self.assertIsNone(self.store.identity_for(A("aim:bob")))

    def test_unknown_group(self):
        error = self.assertRaises(DirectoryError, self.add_alice, groups=["nope"])
        self.assertIn("no group 'nope'", str(error))
        self.assertTrue(self.store.is_empty())

    def test_gateway_network_holds_no_handles(self):
        self.assertRaises(DirectoryError, self.add_alice, handles=["gw:bob"])

    def test_list_people(self):
        self.store.add_group("demo")
        self.store.add_person("carol", handles=["xmpp:carol@localhost"])
        self.add_alice(groups=["demo"])
        people = self.store.list_people()
        self.assertEqual([p.id for p in people], ["alice", "carol"])
        self.assertEqual(people[0].groups, {"demo"})
        self.assertEqual(people[1].handles, (A("xmpp:carol@localhost"),))
        self.assertEqual(people[1].groups, frozenset())

    def test_remove_person(self):
        self.store.add_group("demo")
        self.add_alice(groups=["demo"])
        self.store.add_person("bob", handles=["aim:bob"])
        self.store.set_contacts("alice", [Contact("aim:bob")])
        self.store.set_contacts("bob", [Contact("aim:alice")])
        self.store.remove_person("Alice")
        self.assertIsNone(self.store.get_identity("alice"))
        self.assertIsNone(self.store.identity_for(A("aim:alice")))
        self.assertEqual(self.store.list_groups(), [("demo", "", ())])
        self.assertEqual(self.store.watchers_of("bob"), [])
        # Her handle is free again.
        self.store.add_handle("bob", "aim:alice")
        error = self.assertRaises(DirectoryError, self.store.remove_person, "alice")
        self.assertIn("no person 'alice'", str(error))

    # -- handles ------------------------------------------------------------

    def test_identity_for(self):
        alice = self.add_alice()
        self.assertEqual(self.store.identity_for(A("AIM:ALICE")), alice)
        self.assertEqual(self.store.identity_for("sip:alice@example.com"), alice)
        self.assertEqual(self.store.identity_for(A("gw:alice")), alice)
        self.assertIsNone(self.store.identity_for(A("aim:bob")))
        self.assertIsNone(self.store.identity_for(A("sip:alice@other.org")))
        self.assertIsNone(self.store.identity_for(A("gw:bob")))

    def test_set_handles(self):
        self.add_alice()
        self.store.add_person("bob", handles=["aim:bob"])
        self.store.set_handles("alice", ["aim:alice", "xmpp:alice@localhost"])
        self.assertEqual(
            self.store.get_identity("alice").handles,
            (A("aim:alice"), A("xmpp:alice@localhost")),
        )
        self.assertIsNone(self.store.identity_for(A("sip:alice@example.com")))
        self.assertRaises(DirectoryError, self.store.set_handles, "alice", ["aim:bob"])
        self.assertEqual(len(self.store.get_identity("alice").handles), 2)
        self.assertRaises(DirectoryError, self.store.set_handles, "nobody", [])
        self.store.set_handles("alice", [])
        self.assertEqual(self.store.get_identity("alice").handles, ())

    def test_add_and_remove_handle(self):
        self.add_alice()
        self.store.add_person("bob")
        self.store.add_handle("bob", A("icq:100002"))
        self.store.add_handle("bob", "icq:100002")  # again: nothing happens
        self.assertEqual(self.store.get_identity("bob").handles, (A("icq:100002"),))
        error = self.assertRaises(
            DirectoryError, self.store.add_handle, "bob", "aim:alice"
        )
        self.assertIn("already belongs to 'alice'", str(error))
        self.assertRaises(DirectoryError, self.store.add_handle, "nobody", "aim:x")
        self.store.remove_handle("bob", "icq:100002")
        self.assertEqual(self.store.get_identity("bob").handles, ())
        error = self.assertRaises(
            DirectoryError, self.store.remove_handle, "bob", "aim:alice"
        )
        self.assertIn("aim:alice is not a handle of 'bob'", str(error))

    # -- passwords ----------------------------------------------------------

    def test_authenticate(self):
        alice = self.add_alice()
        self.assertEqual(self.store.authenticate(A("aim:alice"), "secret"), alice)
        self.assertEqual(self.store.authenticate(A("gw:alice"), "secret"), alice)
        self.assertIsNone(self.store.authenticate(A("aim:alice"), "wrong"))
        self.assertIsNone(self.store.authenticate(A("aim:alice"), ""))
        self.assertIsNone(self.store.authenticate(A("aim:alice"), None))
        self.assertIsNone(self.store.authenticate(A("aim:bob"), "secret"))
        self.assertIsNone(self.store.authenticate(A("gw:bob"), "secret"))

    def test_stored_hash_is_scrypt(self):
        self.add_alice()
        identity, stored = self.store.credentials(A("aim:alice"))
        self.assertEqual(identity.id, "alice")
        self.assertTrue(stored.startswith("scrypt$16$8$1$"))

    def test_set_password(self):
        self.add_alice()
        self.store.set_password("alice", "new")
        self.assertIsNone(self.store.authenticate(A("aim:alice"), "secret"))
        self.assertIsNotNone(self.store.authenticate(A("aim:alice"), "new"))
        self.store.set_password("alice", None)
        self.assertIsNone(self.store.authenticate(A("aim:alice"), "new"))
        self.assertIsNone(self.store.authenticate(A("aim:alice"), ""))
        self.assertRaises(DirectoryError, self.store.set_password, "nobody", "x")

    def test_no_password(self):
        self.store.add_person("bob", handles=["aim:bob"])
        self.assertIsNone(self.store.authenticate(A("aim:bob"), ""))
        self.assertIsNone(self.store.authenticate(A("aim:bob"), "anything"))

    # -- groups -------------------------------------------------------------

    def test_groups(self):
        self.add_alice()
        self.store.add_person("bob")
        self.store.add_group("sales", "Sales team")
        self.store.add_group("admins")
        self.store.add_member("sales", "bob")
        self.store.add_member("sales", "Alice")
        self.store.add_member("sales", "alice")  # again: nothing happens
        self.assertEqual(
            self.store.list_groups(),
            [("admins", "", ()), ("sales", "Sales team", ("alice", "bob"))],
        )
        self.assertEqual(self.store.get_identity("bob").groups, {"sales"})
        self.store.remove_member("sales", "bob")
        self.assertEqual(self.store.get_identity("bob").groups, frozenset())
        error = self.assertRaises(
            DirectoryError, self.store.remove_member, "sales", "bob"
        )
        self.assertIn("'bob' is not in group 'sales'", str(error))
        self.store.remove_group("sales")
        self.assertEqual(self.store.list_groups(), [("admins", "", ())])
        self.assertEqual(self.store.get_identity("alice").groups, frozenset())

    def test_group_errors(self):
        self.store.add_group("sales")
        self.assertRaises(DirectoryError, self.store.add_group, "sales")
        self.assertRaises(DirectoryError, self.store.add_group, "")
        self.assertRaises(DirectoryError, self.store.remove_group, "nope")
        self.assertRaises(DirectoryError, self.store.add_member, "nope", "alice")
        error = self.assertRaises(
            DirectoryError, self.store.add_member, "sales", "nobody"
        )
        self.assertIn("no person 'nobody'", str(error))

    # -- contacts -----------------------------------------------------------

    def test_contacts_keep_their_order(self):
        self.add_alice()
        entries = [
            Contact("xmpp:zed@localhost", "Friends", "Zed"),
            Contact(A("aim:bob")),
            Contact("sip:amy@example.com", "Work", "Amy"),
            Contact("aim:BOB", "Dup"),  # same address again: the first wins
        ]
        self.store.set_contacts("alice", entries)
        self.assertEqual(self.store.contacts("alice"), entries[:3])
        self.store.set_contacts("alice", [entries[2]])
        self.assertEqual(self.store.contacts("alice"), [entries[2]])
        self.store.set_contacts("alice", [])
        self.assertEqual(self.store.contacts("alice"), [])

    def test_add_and_remove_contact(self):
        self.add_alice()
        self.store.add_contact("alice", Contact("aim:bob"))
        self.store.add_contact("alice", "aim:carol")
        self.store.add_contact("alice", Contact("aim:bob", "Work", "Bobby"))
        self.assertEqual(
            self.store.contacts("alice"),
            [Contact("aim:bob", "Work", "Bobby"), Contact("aim:carol")],
        )
        self.store.remove_contact("alice", A("aim:bob"))
        self.store.add_contact("alice", "aim:bob")
        self.assertEqual(
            self.store.contacts("alice"), [Contact("aim:carol"), Contact("aim:bob")]
        )
        error = self.assertRaises(
            DirectoryError, self.store.remove_contact, "alice", "aim:dave"
        )
        self.assertIn("aim:dave is not a contact of 'alice'", str(error))

    def test_contacts_of_nobody(self):
        self.assertEqual(self.store.contacts("nobody"), [])
        self.assertRaises(DirectoryError, self.store.set_contacts, "nobody", [])
        self.assertRaises(DirectoryError, self.store.add_contact, "nobody", "aim:x")

    def test_watchers_of(self):
        self.add_alice()
        self.store.add_person("bob", handles=["aim:bob", "icq:100002"])
        self.store.add_person("carol", handles=["aim:carol"])
        self.store.add_person("dave")
        self.store.set_contacts("alice", ["aim:bob", "aim:carol"])
        self.store.set_contacts("carol", [Contact("icq:100002"), Contact("aim:zed")])
        self.store.set_contacts("dave", [Contact("gw:bob")])
        self.assertEqual(self.store.watchers_of("bob"), ["alice", "carol", "dave"])
        self.assertEqual(self.store.watchers_of("carol"), ["alice"])
        self.assertEqual(self.store.watchers_of("alice"), [])
        self.assertEqual(self.store.watchers_of("nobody"), [])

    # -- aliases ------------------------------------------------------------

    def test_alias_for(self):
        alias = self.store.alias_for(A("xmpp:Dave@Jabber.org"), "aim", "")
        self.assertEqual(alias, A("aim:xmpp.dave%jabber.org"))
        self.assertEqual(
            self.store.alias_for(A("aim:dave"), "sip", "Example.com"),
            A("sip:aim.dave@example.com"),
        )
        self.assertEqual(
            self.store.alias_for(A("aim:dave"), "xmpp", "localhost"),
            A("xmpp:aim.dave@localhost"),
        )

    def test_alias_is_stable(self):
        first = self.store.alias_for(A("sip:eve@example.com"), "aim", "")
        again = self.store.alias_for(A("SIP:Eve@Example.COM"), "aim", "")
        other_store = DirectoryStore(self.engine, password_n=N)
        self.assertEqual(first, again)
        self.assertEqual(other_store.alias_for(A("sip:eve@example.com"), "aim"), first)

    def test_alias_characters(self):
        alias = self.store.alias_for(A("sametime:Eve Smith/ACME"), "xmpp", "localhost")
        self.assertEqual(alias, A("xmpp:sametime.eve_smith_acme@localhost"))
        alias = self.store.alias_for(A("xmpp:o'neil+x@host.org"), "aim")
        self.assertEqual(alias.user, "xmpp.o_neil+x%host.org")

    def test_alias_collision(self):
        first = self.store.alias_for(A("sametime:eve smith"), "aim")
        second = self.store.alias_for(A("sametime:eve_smith"), "aim")
        third = self.store.alias_for(A("sametime:eve/smith"), "aim")
        self.assertEqual(first.user, "sametime.eve_smith")
        self.assertEqual(second.user, "sametime.eve_smith~2")
        self.assertEqual(third.user, "sametime.eve_smith~3")
        self.assertEqual(self.store.alias_for(A("sametime:eve_smith"), "aim"), second)
        self.assertEqual(self.store.resolve_alias(second), A("sametime:eve_smith"))

    def test_alias_avoids_real_handles(self):
        self.store.add_person("odd", handles=["aim:xmpp.dave%jabber.org"])
        alias = self.store.alias_for(A("xmpp:dave@jabber.org"), "aim")
        self.assertEqual(alias.user, "xmpp.dave%jabber.org~2")

    def test_long_alias(self):
        alias = self.store.alias_for(A("xmpp:" + "x" * 300 + "@host"), "aim")
        self.assertEqual(len(alias.user), 240)
        alias2 = self.store.alias_for(A("xmpp:" + "x" * 301 + "@host"), "aim")
        self.assertEqual(alias2.user, alias.user + "~2")

    def test_resolve_alias(self):
        alias = self.store.alias_for(A("xmpp:dave@jabber.org"), "sip", "example.com")
        self.assertEqual(self.store.resolve_alias(alias), A("xmpp:dave@jabber.org"))
        self.assertEqual(
            self.store.resolve_alias("SIP:xmpp.dave%jabber.org@example.com"),
            A("xmpp:dave@jabber.org"),
        )
        self.assertIsNone(self.store.resolve_alias(A("aim:xmpp.dave%jabber.org")))
        self.assertIsNone(self.store.resolve_alias(A("aim:nobody")))

    def test_alias_concurrently(self):
        """Threads racing to alias the same address all get the one alias."""
        results = []
        barrier = threading.Barrier(6)

        def race(target):
            store = DirectoryStore(self.engine, password_n=N)
            barrier.wait()
            results.append((target, store.alias_for(A(target), "aim")))

        threads = [
            threading.Thread(target=race, args=(target,))
            # Both want the name xmpp.eve%x.org; one of them gets ~2.
            for target in ["xmpp:eve@x.org"] * 4 + ["xmpp:eve%x.org"] * 2
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        by_target = {}
        for target, alias in results:
            by_target.setdefault(target, set()).add(alias)
        self.assertEqual(len(results), 6)
        self.assertEqual({len(s) for s in by_target.values()}, {1})
        self.assertEqual(
            {alias.user for s in by_target.values() for alias in s},
            {"xmpp.eve%x.org", "xmpp.eve%x.org~2"},
        )

    # -- demo users ---------------------------------------------------------

    def test_demo_users(self):
        self.store.add_group("demo", "already there")
        created = ensure_demo_users(self.store, DOMAINS)
        self.assertEqual(created, ["alice", "bob", "carol"])
        alice = self.store.identity_for(A("icq:100001"))
        self.assertEqual(alice.id, "alice")
        self.assertEqual(alice.display_name, "Alice Demo")
        self.assertEqual(len(alice.handles), 5)
        self.assertEqual(alice.handle_on("sip"), A("sip:alice@example.com"))
        self.assertEqual(alice.handle_on("xmpp"), A("xmpp:alice@localhost"))
        self.assertEqual(self.store.identity_for(A("icq:100003")).id, "carol")
        self.assertEqual(
            self.store.authenticate(A("sametime:bob"), "secret").display_name,
            "Bob Demo",
        )
        self.assertEqual(
            self.store.list_groups(), [("demo", "already there", tuple(created))]
        )
        self.assertEqual(
            self.store.contacts("alice"), [Contact("aim:bob", name="Bob Demo")]
        )
        self.assertEqual(
            self.store.contacts("bob"), [Contact("aim:alice", name="Alice Demo")]
        )
        self.assertEqual(self.store.contacts("carol"), [])
        self.assertEqual(ensure_demo_users(self.store, DOMAINS), [])

    def test_demo_users_only_in_an_empty_directory(self):
        self.store.add_person("admin")
        self.assertEqual(ensure_demo_users(self.store, DOMAINS), [])
        self.assertEqual([p.id for p in self.store.list_people()], ["admin"])

    def test_demo_users_without_aim(self):
        ensure_demo_users(self.store, {"xmpp": "localhost"})
        self.assertEqual(
            self.store.contacts("bob"),
            [Contact("xmpp:alice@localhost", name="Alice Demo")],
        )

    # -- secrets learned from another directory's logins (LDAP) ------------------

    def ldap_person(self, handles=("sip:dana@example.com", "xmpp:dana@example.com")):
        from gateway.model import Identity

        return Identity("dana", "Dana S.", tuple(A(h) for h in handles), frozenset())

    def test_learned_secrets_are_derived_kept_and_age(self):
        from gateway.directory.secrets import digest_ha1

        now = [1000.0]
        store = DirectoryStore(self.engine, lambda: now[0], password_n=N)
        dana = self.ldap_person()
        self.assertIsNone(store.secret_of("dana", "md5", 0.0))
        self.assertEqual(store.learn_secrets(dana, "pw1"), "learned")
        ha1 = digest_ha1("md5", "dana", "example.com", "pw1")
        self.assertEqual(store.secret_of("dana", "digest-md5:example.com:dana", 1000.0), ha1)
        # A person row exists now (for contact lists), with no password of its own.
        self.assertEqual(store.get_identity("dana").display_name, "Dana S.")
        self.assertIsNone(store.authenticate(A("gw:dana"), "pw1"))
        # Too old: learned before the oldest time the caller accepts.
        self.assertIsNone(store.secret_of("dana", "digest-md5:example.com:dana", 1000.5))
        # The same password later only moves the time; the SCRAM salt stays.
        scram = store.secret_of("dana", "scram-sha-1", 0.0)
        now[0] = 2000.0
        self.assertEqual(store.learn_secrets(dana, "pw1"), "refreshed")
        self.assertEqual(store.secret_of("dana", "scram-sha-1", 1500.0), scram)
        # Another password, or a new handle, derives anew.
        self.assertEqual(store.learn_secrets(dana, "pw2"), "learned")
        self.assertEqual(
            store.secret_of("dana", "digest-md5:example.com:dana", 2000.0),
            digest_ha1("md5", "dana", "example.com", "pw2"),
        )
        self.assertNotEqual(store.secret_of("dana", "scram-sha-1", 0.0), scram)
        more = self.ldap_person(("sip:dana@example.com", "sip:scully@example.org"))
        self.assertEqual(store.learn_secrets(more, "pw2"), "learned")
        self.assertIsNotNone(store.secret_of("dana", "digest-sha-256:example.org:scully", 0.0))
        self.assertIsNone(store.secret_of("dana", "digest-md5:localhost:dana", 0.0))

    def test_own_secret_is_the_secret_set_here_never_a_learned_one(self):
        from gateway.directory.secrets import digest_ha1

        self.add_alice()
        self.assertEqual(self.store.own_secret("alice", "digest-md5:example.com:alice"),
                         digest_ha1("md5", "alice", "example.com", "secret"))
        self.assertIsNone(self.store.own_secret("alice", "digest-md5:nowhere.example:alice"))
        self.assertIsNone(self.store.own_secret("nobody", "md5"))
        self.store.learn_secrets(self.ldap_person(), "pw1")
        self.assertIsNone(self.store.own_secret("dana", "digest-md5:example.com:dana"))

    def test_learned_secrets_are_dropped_when_their_password_is_refused(self):
        dana = self.ldap_person()
        self.store.learn_secrets(dana, "old")
        # A typo refused by LDAP says nothing about the learned secrets.
        self.assertFalse(self.store.forget_learned_secrets("dana", "typo"))
        self.assertIsNotNone(self.store.secret_of("dana", "md5", 0.0))
        # The password they came from refused: it was changed in LDAP.
        self.assertTrue(self.store.forget_learned_secrets("dana", "old"))
        self.assertIsNone(self.store.secret_of("dana", "md5", 0.0))
        self.assertFalse(self.store.forget_learned_secrets("dana", "old"))

    def test_a_local_password_keeps_its_own_secrets(self):
        self.add_alice()
        alice = self.store.get_identity("alice")
        own = self.store.secret_of("alice", "md5", float("inf"))
        self.assertIsNotNone(own)
        self.assertEqual(self.store.learn_secrets(alice, "another"), "own")
        self.assertEqual(self.store.secret_of("alice", "md5", float("inf")), own)
        self.assertFalse(self.store.forget_learned_secrets("alice", "secret"))
        self.assertEqual(self.store.secret(A("aim:alice"), "md5")[1], own)

    def test_learned_secrets_do_not_count_for_the_sql_directory(self):
        self.store.add_person("dana", handles=["sip:dana@example.com"])
        self.store.learn_secrets(self.store.get_identity("dana"), "pw")
        identity, value = self.store.secret(A("sip:dana@example.com"), "digest-md5:example.com:dana")
        self.assertEqual((identity.id, value), ("dana", None))
        # Setting a password here replaces them with secrets of its own.
        self.store.set_password("dana", "local")
        self.assertIsNotNone(self.store.secret(A("sip:dana@example.com"), "digest-md5:example.com:dana")[1])


class SQLiteStoreTests(StoreTestsMixin, unittest.TestCase):
    def make_engine(self):
        return sqlite_engine(self)


class PostgreSQLStoreTests(StoreTestsMixin, unittest.TestCase):
    """The same tests on one database for the class, emptied before each test."""

    database = None  # the class's engine, or the SkipTest that stopped it

    def make_engine(self):
        cls = type(self)
        if cls.database is None:
            try:
                cls.database = shared_postgres_engine()
            except unittest.SkipTest as skip:
                cls.database = skip
        if isinstance(cls.database, unittest.SkipTest):
            raise cls.database
        clear(cls.database)
        return cls.database


class CountingStore(DirectoryStore):
    """A store that counts its identity look-ups."""

    lookups = 0

    def identity_for(self, address):
        self.lookups += 1
        return super().identity_for(address)


class SQLDirectoryTests(unittest.TestCase):
    """The Deferred API on a real reactor and thread; cache expiry on a `Clock`."""

    def setUp(self):
        from twisted.internet import reactor

        self.engine = sqlite_engine(self)
        self.store = CountingStore(self.engine, password_n=N)
        ensure_demo_users(self.store, DOMAINS)
        self.clock = Clock()
        self.directory = SQLDirectory(
            self.store,
            DatabaseThread(reactor, name="test-directory"),
            self.clock,
            cache_ttl=60.0,
            password_thread=DatabaseThread(reactor, name="test-passwords"),
        )
        self.directory.start()
        self.addCleanup(self.directory.stop)

    def test_interface(self):
        self.assertTrue(verifyObject(IDirectory, self.directory))

    @inlineCallbacks
    def test_secret_takes_the_owner_from_the_cache_and_the_value_fresh(self):
        from gateway.directory.secrets import scheme_names

        [scheme] = [name for name in scheme_names([A("sip:alice@example.com")]) if name.startswith("digest-md5")]
        identity, value = yield self.directory.secret(A("sip:alice@example.com"), scheme)
        self.assertEqual((identity.id, value), ("alice", self.store.own_secret("alice", scheme)))
        yield self.directory.secret(A("sip:alice@example.com"), scheme)
        self.assertEqual(self.store.lookups, 1)  # the owner once; the value is read every time
        self.store.set_password("alice", "changed")
        _, changed = yield self.directory.secret(A("sip:alice@example.com"), scheme)
        self.assertNotEqual(changed, value)
        nobody = yield self.directory.secret(A("sip:nobody@example.com"), scheme)
        self.assertEqual(nobody, (None, None))

    @inlineCallbacks
    def test_identity_for_is_cached(self):
        self.assertEqual(
            self.directory.cached_identity_for(A("aim:alice")), (False, None)
        )
        alice = yield self.directory.identity_for(A("aim:alice"))
        self.assertEqual(alice.id, "alice")
        self.assertEqual(
            self.directory.cached_identity_for(A("aim:alice")), (True, alice)
        )
        d = self.directory.identity_for(A("aim:alice"))
        self.assertEqual(self.successResultOf(d), alice)  # fired at once
        self.assertEqual(self.store.lookups, 1)
        self.assertEqual((self.directory.hits, self.directory.misses), (2, 2))
        # get_identity was warmed by the same answer.
        self.assertEqual(
            self.successResultOf(self.directory.get_identity("alice")), alice
        )

        self.clock.advance(60)
        self.assertEqual(
            self.directory.cached_identity_for(A("aim:alice")), (False, None)
        )
        again = yield self.directory.identity_for(A("aim:alice"))
        self.assertEqual(again, alice)
        self.assertEqual(self.store.lookups, 2)

    @inlineCallbacks
    def test_not_found_is_cached_briefly(self):
        unknown = A("aim:dave")
        self.assertIsNone((yield self.directory.identity_for(unknown)))
        self.assertEqual(self.directory.cached_identity_for(unknown), (True, None))
        self.store.add_person("dave", handles=[unknown])
        self.assertIsNone((yield self.directory.identity_for(unknown)))
        self.clock.advance(5)
        dave = yield self.directory.identity_for(unknown)
        self.assertEqual(dave.id, "dave")

    @inlineCallbacks
    def test_concurrent_misses_share_one_call(self):
        first = self.directory.identity_for(A("aim:bob"))
        second = self.directory.identity_for(A("aim:bob"))
        bob1 = yield first
        bob2 = yield second
        self.assertEqual(bob1.id, "bob")
        self.assertIs(bob1, bob2)
        self.assertEqual(self.store.lookups, 1)

    @inlineCallbacks
    def test_invalidate(self):
        yield self.directory.identity_for(A("aim:carol"))
        self.store.set_handles("carol", [A("aim:caroline")])
        self.assertEqual(
            self.directory.cached_identity_for(A("aim:carol"))[1].id, "carol"
        )
        self.directory.invalidate()
        self.assertEqual(
            self.directory.cached_identity_for(A("aim:carol")), (False, None)
        )
        self.assertIsNone((yield self.directory.identity_for(A("aim:carol"))))

    @inlineCallbacks
    def test_get_identity(self):
        bob = yield self.directory.get_identity("bob")
        self.assertEqual(bob.display_name, "Bob Demo")
        self.assertIsNone((yield self.directory.get_identity("nobody")))

    @inlineCallbacks
    def test_authenticate(self):
        alice = yield self.directory.authenticate(A("xmpp:alice@localhost"), "secret")
        self.assertEqual(alice.id, "alice")
        self.assertEqual(
            (yield self.directory.authenticate(A("gw:bob"), "secret")).id, "bob"
        )
        self.assertIsNone((yield self.directory.authenticate(A("aim:alice"), "nope")))
        self.assertIsNone((yield self.directory.authenticate(A("aim:zed"), "secret")))

    @inlineCallbacks
    def test_contacts_and_watchers(self):
        self.assertEqual((yield self.directory.watchers_of("carol")), [])
        self.assertEqual(
            (yield self.directory.contacts("alice")),
            [Contact("aim:bob", name="Bob Demo")],
        )
        yield self.directory.set_contacts(
            "alice", [Contact("aim:bob"), Contact("icq:100003", "Work")]
        )
        # The cached contact list and watchers were dropped.
        self.assertEqual(
            (yield self.directory.contacts("alice")),
            [Contact("aim:bob"), Contact("icq:100003", "Work")],
        )
        self.assertEqual((yield self.directory.watchers_of("carol")), ["alice"])
        # Callers get their own list.
        contacts = yield self.directory.contacts("alice")
        contacts.clear()
        self.assertEqual(len((yield self.directory.contacts("alice"))), 2)

    @inlineCallbacks
    def test_set_contacts_of_nobody_fails(self):
        yield self.assertFailure(
            self.directory.set_contacts("nobody", [Contact("aim:bob")]), DirectoryError
        )

    @inlineCallbacks
    def test_aliases(self):
        foreign = A("xmpp:dave@jabber.org")
        self.assertIsNone(
            (yield self.directory.resolve_alias(A("aim:xmpp.dave%jabber.org")))
        )
        alias = yield self.directory.alias_for(foreign, "aim", "")
        self.assertEqual(alias, A("aim:xmpp.dave%jabber.org"))
        # Known at once, overriding the cached "not found".
        self.assertEqual(
            self.successResultOf(self.directory.resolve_alias(alias)), foreign
        )
        self.assertEqual(
            self.successResultOf(self.directory.alias_for(foreign, "aim", "")), alias
        )
        self.directory.invalidate()
        self.assertEqual((yield self.directory.resolve_alias(alias)), foreign)
        self.assertEqual((yield self.directory.alias_for(foreign, "aim", "")), alias)

    @inlineCallbacks
    def test_stopped(self):
        yield self.directory.stop()
        yield self.assertFailure(
            self.directory.identity_for(A("aim:bob")), RuntimeError
        )
        # A failed look-up is not cached as "not found".
        self.directory.start()
        bob = yield self.directory.identity_for(A("aim:bob"))
        self.assertEqual(bob.id, "bob")
