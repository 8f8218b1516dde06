"""
LDAP people log in on every connector, with real clients and a real slapd.

Protocols that send the password (XMPP PLAIN, OSCAR roasted, Sametime, the
line connector) bind to LDAP with it. Protocols that never send it (OSCAR's
MD5 login, SIP digest) need secrets derived from it, which the gateway
learns at a login that sent a password LDAP accepted; a password changed in
LDAP takes them away at the next login that tries the old one.
"""

import shutil
import tempfile

from twisted.trial import unittest

from tests.interop import test_oscar, test_sametime, test_sip
from tests.slapd import Slapd

CONFIG = """
[gateway]
node = "ldaplogins"
data_dir = "var"

[admin]
listen = ""

{directory}

[connectors.oscar]
listen = ["tcp:{oscar}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{oscar}"

[connectors.sip]
domains = ["example.com"]
udp = ["127.0.0.1:{sip}"]
listen = ["tcp:{sip}:interface=127.0.0.1"]

[connectors.xmpp]
domain = "example.com"
listen = ["tcp:{c2s}:interface=127.0.0.1"]
tls_certificate = "{cert}"
tls_key = "{key}"
"""


class LDAPLoginsOnEveryConnector(unittest.TestCase):
    timeout = 240

    def setUp(self):
        test_oscar.require_tw15()
        test_sip.need("sipp")
        try:
            import gateway_oscar, gateway_sip, gateway_xmpp, slixmpp  # noqa: F401, E401
        except ImportError as e:
            raise unittest.SkipTest(f"needs the bundled connectors and slixmpp installed: {e}")
        from tests.xmpp import peers

        self.peers = peers
        self.slapd = Slapd()
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        certs = tempfile.mkdtemp(prefix="gw-ldaplogins-")
        self.addCleanup(shutil.rmtree, certs, True)
        cert, key = peers.make_certificate(certs, "example.com")
        self.oscar, self.sip, self.c2s = (test_sip.free_port() for _ in range(3))
        # Many failed logins on purpose: the lock-out must not end the test.
        directory = self.slapd.directory_config('aim = "uid", sip = "mail", xmpp = "mail"', extra="login_failures = 50")
        config = CONFIG.format(directory=directory, oscar=self.oscar, sip=self.sip, c2s=self.c2s, cert=cert, key=key)
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.oscar, self.sip, self.c2s))

    def xmpp_login(self, password):
        """True when slixmpp logs in as dana (STARTTLS, then the SASL mechanism it picks from those offered)."""
        peers = self.peers

        async def attempt():
            client = peers.slixmpp_client("dana@example.com/ldap", password, self.c2s, tls=True)
            try:
                client.connect(*client.address)
                await peers.until(lambda: client.started.is_set() or client.failed, 20, "the XMPP login to end")
                return client.started.is_set()
            finally:
                await peers.stop(client)

        return peers.run(attempt())

    def bucp_login(self, password):
        """The events of Twisted 15.4's AIM client (BUCP, strong MD5) logging in as dana."""
        client = test_oscar.Client(self, "tw15", self.oscar, "dana", "nobody", "--password", password,
                                   "--role", "login", timeout=30)
        events = [e["event"] for e in client.events()]
        if "ready" not in events and "login-error" not in events:
            raise AssertionError(f"the AIM client neither logged in nor was refused: {events}\n"
                                 f"{client.stderr}\n{self.gateway.text(3000)}")
        return events

    def register(self, password):
        status, messages = test_sip.sipp(
            self, f"127.0.0.1:{self.sip}", "register.xml", user="dana", port=test_sip.free_port(),
            password=password, domain="example.com", keys=[("expires", "60")],
        )
        return status, test_sip.final_status(messages), messages

    def test_password_logins_teach_the_secrets_md5_and_digest_logins_need(self):
        # Nobody sent dana's password yet: the MD5 login and SIP digest have nothing to check against.
        self.assertIn("login-error", self.bucp_login("secret"))
        status, final, messages = self.register("secret")
        self.assertNotEqual(status, 0)
        self.assertEqual(final, 403, messages)

        # dana logs in over XMPP: the gateway offers PLAIN only (LDAP holds no SCRAM keys), LDAP accepts.
        ok = self.xmpp_login("secret")
        self.assertTrue(ok, self.gateway.text(4000))
        self.assertIn("SASL PLAIN only", self.gateway.text())

        # Now the clients that never send the password log in too.
        self.assertIn("ready", self.bucp_login("secret"))
        status, final, messages = self.register("secret")
        self.assertEqual((status, final), (0, 200), messages)

        # The password changes in LDAP. The old one is refused by LDAP at the next password
        # login, which drops the secrets learned from it: MD5 and digest refuse it as well.
        self.slapd.set_password("dana", "changed")
        ok = self.xmpp_login("secret")
        self.assertFalse(ok)
        self.assertIn("login-error", self.bucp_login("secret"))
        status, final, messages = self.register("secret")
        self.assertEqual(final, 403, messages)
        # The new one works everywhere once it has been sent once.
        ok = self.xmpp_login("changed")
        self.assertTrue(ok, self.gateway.text(4000))
        self.assertIn("ready", self.bucp_login("changed"))
        status, final, messages = self.register("changed")
        self.assertEqual((status, final), (0, 200), messages)
        self.assertEqual(self.gateway.tracebacks(), [])


SAMETIME_CONFIG = """
[gateway]
node = "ldapsametime"
data_dir = "var"

[admin]
listen = ""

{directory}

[connectors.sametime]
listen = ["tcp:{port}:interface=127.0.0.1"]
trace = true

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class LDAPLoginOverSametime(test_sametime.SametimeInteropTests):
    """libpurple's Sametime client (in BitlBee) logs an LDAP person in with the LDAP password."""

    def setUp(self):
        self.slapd = Slapd()
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        super().setUp()

    def gateway_config(self, options):
        return SAMETIME_CONFIG.format(
            directory=self.slapd.directory_config('sametime = "uid", line = "uid"'), port=self.port, line=self.line,
        )

    def test_ldap_password(self):
        dana = self.user("dana")
        self.login(dana)
        # Seen online by a person on another network: the login is a session on the bus.
        erin = test_sametime.LineClient(self.line)
        erin.send("LOGIN erin secret")
        self.assertEqual(erin.expect("OK LOGIN"), "OK LOGIN line:erin")
        erin.send("MSG sametime:dana hello over sametime")
        self.assertTrue(erin.expect("OK ").startswith("OK delivered"))
        dana.wait(r"hello over sametime")
        erin.close()
        dana.root("account meanwhile off")
        # Changed in LDAP: the old password is refused, the new one works.
        self.slapd.set_password("dana", "changed")
        old = self.user("dana2")
        old.root("account add meanwhile dana:127.0.0.1 secret")
        old.root(f"account meanwhile set port {self.port}")
        old.root("account meanwhile on")
        old.wait(r"meanwhile - (Login error|Error|Couldn't log in|Signing off)", 20)
        self.wait_log(r"sametime: login of dana from .* refused: wrong user id or password")
        new = self.user("dana3")
        new.root("account add meanwhile dana:127.0.0.1 changed")
        new.root(f"account meanwhile set port {self.port}")
        new.root("account meanwhile on")
        new.wait(r"meanwhile - Logging in: Logged in", 20)
