"""The LDAP directory against a real OpenLDAP slapd: look-ups, groups, passwords, outages, StartTLS."""

import os
import shutil
import tempfile

from twisted.internet import reactor, task, threads
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.trial import unittest

from gateway.config import loads
from gateway.storage.db import create_engine, migrate
from gateway.storage.dbthread import DatabaseThread
from gateway.directory.ldap import LDAPDirectory, LDAPServer, escape
from gateway.directory.sql import DirectoryStore
from gateway.interfaces import DirectoryUnavailable
from gateway.model import Address, Contact
from tests.slapd import SUFFIX, Slapd


def ldap_config(server, ttl=60.0, starttls=False):
    text = server.directory_config(
        'xmpp = "mail", line = "uid", aim = "uid"', ttl=ttl, starttls=starttls,
        ldap_extra="timeout = 3.0\nnegative_ttl = 1.0",
    )
    return text, loads(text)


class EscapeTests(unittest.TestCase):
    def test_rfc4515(self):
        self.assertEqual(escape("a*b(c)d\\e\x00"), "a\\2ab\\28c\\29d\\5ce\\00")


class LDAPDirectoryTests(unittest.TestCase):
    timeout = 60
    starttls = False
    memberof = False
    ttl = 60.0

    def setUp(self):
        self.slapd = Slapd(tls=self.starttls, memberof=self.memberof)
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        folder = tempfile.mkdtemp(prefix="gw-ldapdir-")
        self.addCleanup(shutil.rmtree, folder, True)
        engine = create_engine(f"sqlite:///{folder}/gw.sqlite")
        migrate(engine)
        self.addCleanup(engine.dispose)
        self.store = DirectoryStore(engine, password_n=2**4)
        _, config = ldap_config(self.slapd, ttl=self.ttl, starttls=self.starttls)
        self.config = config.directory.ldap
        thread = DatabaseThread(reactor)
        self.clock = reactor
        self.directory = LDAPDirectory(
            self.config, self.store, thread, reactor, LDAPServer(self.config, reactor), cache_ttl=config.directory.cache_ttl
        )
        self.directory.start()
        self.addCleanup(self.directory.stop)

    def directory_with(self, clock=reactor, store=None, **options):
        """Another started LDAPDirectory on this slapd, with ``options`` changed in [directory.ldap]."""
        import attrs

        config = attrs.evolve(self.config, **options)
        directory = LDAPDirectory(config, store or self.store, DatabaseThread(reactor), clock, LDAPServer(config, reactor))
        directory.start()
        self.addCleanup(directory.stop)
        return directory


class LookupTests(LDAPDirectoryTests):
    @inlineCallbacks
    def test_identity_by_handle_with_groups(self):
        dana = yield self.directory.identity_for(Address.parse("xmpp:dana@example.com"))
        self.assertEqual((dana.id, dana.display_name), ("dana", "Dana Scully"))
        self.assertEqual(
            set(dana.handles),
            {Address.parse("xmpp:dana@example.com"), Address.parse("line:dana"), Address.parse("aim:dana")},
        )
        self.assertEqual(dana.groups, frozenset({"sales", "engineering"}))
        erin = yield self.directory.get_identity("erin")
        self.assertEqual(erin.groups, frozenset({"engineering"}))
        self.assertIsNone((yield self.directory.identity_for(Address.parse("aim:nobody*"))))
        self.assertEqual(self.directory.cached_identity_for(Address.parse("aim:nobody*")), (True, None))

    @inlineCallbacks
    def test_passwords(self):
        dana = Address.parse("line:dana")
        self.assertEqual((yield self.directory.authenticate(dana, "secret")).id, "dana")
        self.assertIsNone((yield self.directory.authenticate(dana, "wrong")))
        self.assertIsNone((yield self.directory.authenticate(dana, "")))
        self.assertIsNone((yield self.directory.authenticate(Address.parse("line:nobody"), "secret")))

    @inlineCallbacks
    def test_local_people_and_contact_lists_stay_in_sql(self):
        self.store.add_person("local", password="pw", handles=["aim:localguy"])
        local = yield self.directory.authenticate(Address.parse("aim:localguy"), "pw")
        self.assertEqual(local.id, "local")
        yield self.directory.set_contacts("erin", [Contact("xmpp:dana@example.com")])
        self.assertEqual([c.address for c in (yield self.directory.contacts("erin"))], [Address.parse("xmpp:dana@example.com")])
        self.assertEqual((yield self.directory.watchers_of("dana")), ["erin"])

    @inlineCallbacks
    def test_list_people(self):
        people = yield self.directory.list_people()
        self.assertEqual([p.id for p in people], ["dana", "erin"])


class LearnedSecretsTests(LDAPDirectoryTests):
    """Secrets for protocols that never send the password, learned from logins that do."""

    dana_line = Address.parse("line:dana")
    dana_xmpp = Address.parse("xmpp:dana@example.com")
    ha1_scheme = "digest-md5:example.com:dana"

    def make(self, clock=reactor, **options):
        return self.directory_with(clock, DirectoryStore(self.store.engine, clock.seconds, password_n=2**4), **options)

    @inlineCallbacks
    def test_a_password_login_teaches_them_and_a_changed_password_drops_them(self):
        from gateway.directory.secrets import digest_ha1, md5_hex

        directory = self.directory
        self.assertFalse(directory.secrets_complete)
        identity, value = yield directory.secret(self.dana_xmpp, self.ha1_scheme)
        self.assertEqual((identity.id, value), ("dana", None))
        self.assertEqual((yield directory.authenticate(self.dana_line, "secret")).id, "dana")
        _, value = yield directory.secret(self.dana_xmpp, self.ha1_scheme)
        self.assertEqual(value, digest_ha1("md5", "dana", "example.com", "secret"))
        _, value = yield directory.secret(Address.parse("aim:dana"), "md5")
        self.assertEqual(value, md5_hex("secret"))
        # A typo changes nothing.
        self.assertIsNone((yield directory.authenticate(self.dana_line, "typo")))
        self.assertIsNotNone((yield directory.secret(self.dana_xmpp, "md5"))[1])
        # Changed in LDAP: the old password, refused there, takes its secrets with it.
        yield threads.deferToThread(self.slapd.set_password, "dana", "changed")
        self.assertIsNone((yield directory.authenticate(self.dana_line, "secret")))
        self.assertEqual((yield directory.secret(self.dana_xmpp, "md5")), ((yield directory.get_identity("dana")), None))
        self.assertEqual((yield directory.authenticate(self.dana_line, "changed")).id, "dana")
        self.assertEqual((yield directory.secret(self.dana_xmpp, "md5"))[1], md5_hex("changed"))

    @inlineCallbacks
    def test_they_age(self):
        clock = task.Clock()
        clock.advance(1_000_000)
        directory = self.make(clock, learned_secrets_max_age=3600.0)
        yield directory.authenticate(self.dana_line, "secret")
        self.assertIsNotNone((yield directory.secret(self.dana_xmpp, self.ha1_scheme))[1])
        clock.advance(3601)
        directory.invalidate()
        identity, value = yield directory.secret(self.dana_xmpp, self.ha1_scheme)
        self.assertEqual((identity.id, value), ("dana", None))
        # The next login that sends the password makes them young again.
        yield directory.authenticate(self.dana_line, "secret")
        self.assertIsNotNone((yield directory.secret(self.dana_xmpp, self.ha1_scheme))[1])

    @inlineCallbacks
    def test_off(self):
        directory = self.make(learn_secrets=False)
        yield directory.authenticate(self.dana_line, "secret")
        identity, value = yield directory.secret(self.dana_xmpp, self.ha1_scheme)
        self.assertEqual((identity.id, value), ("dana", None))
        # People only SQL knows keep the secrets of their own password.
        self.store.add_person("local", password="pw", handles=["sip:local@example.com"])
        identity, value = yield directory.secret(Address.parse("sip:local@example.com"), "digest-md5:example.com:local")
        self.assertEqual(identity.id, "local")
        self.assertIsNotNone(value)


class CompareTests(LDAPDirectoryTests):
    """Passwords compared with the hashed userPassword instead of a bind as the person."""

    def make(self, **options):
        return self.directory_with(password_attribute="userPassword", **options)

    @inlineCallbacks
    def test_compare_with_the_ssha_slapd_stores(self):
        directory = self.make()
        dana = Address.parse("line:dana")
        self.assertEqual((yield directory.authenticate(dana, "secret")).id, "dana")
        self.assertIsNone((yield directory.authenticate(dana, "Secret")))
        self.assertIsNone((yield directory.authenticate(dana, "")))
        # A changed password is seen at once: the hash is read again at every login.
        yield threads.deferToThread(self.slapd.set_password, "dana", "changed")
        self.assertIsNone((yield directory.authenticate(dana, "secret")))
        self.assertEqual((yield directory.authenticate(dana, "changed")).id, "dana")

    @inlineCallbacks
    def test_a_service_account_that_may_not_read_the_hash_refuses_everyone(self):
        # Anonymous may only bind with userPassword (the fixture's ACL), never read it.
        from twisted.logger import formatEvent, globalLogPublisher

        directory = self.make(bind_dn="", bind_password="")
        said = []
        observer = lambda event: said.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.assertIsNone((yield directory.authenticate(Address.parse("line:dana"), "secret")))
        self.assertIn(
            f"LDAP: cannot compare the password of uid=dana,ou=people,{SUFFIX}: "
            "no userPassword the service account may read",
            said,
        )


class MembershipTests(LDAPDirectoryTests):
    """Every way of listing members: groupOfNames (the fixture's default), posixGroup, groupOfUniqueNames, memberOf."""

    memberof = True  # slapd keeps memberOf for groups added through the protocol (not for slapadd's)

    @inlineCallbacks
    def groups_with(self, membership, ldif=None):
        """{person: groups} of dana and erin with ``membership``, after adding ``ldif`` (a group) to slapd."""
        if ldif is not None:
            yield threads.deferToThread(self.slapd.add, ldif)
        directory = self.directory_with(membership=membership)
        found = {}
        for who in ("dana", "erin"):
            found[who] = (yield directory.get_identity(who)).groups
        returnValue(found)

    @inlineCallbacks
    def test_member_uid(self):
        self.assertEqual((yield self.groups_with("memberUid")), {"dana": frozenset(), "erin": frozenset({"ops"})})

    @inlineCallbacks
    def test_member_of(self):
        found = yield self.groups_with("memberOf", SUPPORT)
        self.assertEqual(found, {"dana": frozenset({"support"}), "erin": frozenset()})

    @inlineCallbacks
    def test_group_of_unique_names(self):
        found = yield self.groups_with("uniqueMember", LEGAL)
        self.assertEqual(found, {"dana": frozenset(), "erin": frozenset({"legal"})})


SUPPORT = """
dn: cn=support,ou=groups,{suffix}
objectClass: groupOfNames
cn: support
member: uid=dana,ou=people,{suffix}
"""

LEGAL = """
dn: cn=legal,ou=groups,{suffix}
objectClass: groupOfUniqueNames
cn: legal
uniqueMember: uid=erin,ou=people,{suffix}
"""


class OutageTests(LDAPDirectoryTests):
    ttl = 2.0

    @inlineCallbacks
    def test_cache_serves_then_expires_into_clear_failures_then_recovers(self):
        dana = Address.parse("line:dana")
        self.assertEqual((yield self.directory.authenticate(dana, "secret")).id, "dana")
        yield threads.deferToThread(self.slapd.stop)
        # Cached: routing and the password LDAP accepted a moment ago keep working.
        self.assertEqual(self.directory.cached_identity_for(dana)[1].id, "dana")
        self.assertEqual((yield self.directory.authenticate(dana, "secret")).id, "dana")
        self.assertIsNone((yield self.directory.authenticate(dana, "wrong")))
        # Expired: a clear temporary failure, not "wrong password".
        yield task.deferLater(reactor, self.ttl + 0.2, lambda: None)
        with self.assertRaises(DirectoryUnavailable) as caught:
            yield self.directory.authenticate(dana, "secret")
        self.assertIn(self.slapd.url, str(caught.exception))
        with self.assertRaises(DirectoryUnavailable):
            yield self.directory.identity_for(Address.parse("xmpp:erin@example.com"))
        # Back by itself when slapd is.
        yield threads.deferToThread(self.slapd.start)
        self.assertEqual((yield self.directory.authenticate(dana, "secret")).id, "dana")
        erin = yield self.directory.identity_for(Address.parse("xmpp:erin@example.com"))
        self.assertEqual(erin.id, "erin")


class StartTLSTests(LDAPDirectoryTests):
    starttls = True

    @inlineCallbacks
    def test_lookups_and_binds_over_starttls(self):
        dana = yield self.directory.authenticate(Address.parse("xmpp:dana@example.com"), "secret")
        self.assertEqual(dana.groups, frozenset({"sales", "engineering"}))

    @inlineCallbacks
    def test_untrusted_certificate_is_refused(self):
        other = os.path.join(self.slapd.dir, "other-ca")
        os.makedirs(other)
        from tests.slapd import make_certificate

        wrong_ca, _, _ = make_certificate(other)
        directory = self.directory_with(ca_file=wrong_ca)
        with self.assertRaises(DirectoryUnavailable):
            yield directory.identity_for(Address.parse("line:dana"))
