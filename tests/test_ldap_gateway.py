"""The demo gateway pointed at a real slapd: LDAP passwords on a connector, group policy, gatewayctl."""

import json

from twisted.trial import unittest

from tests.slapd import Slapd
from tests.gateway_process import LineClient
from tests.test_twistd import GatewayProcess

CONFIG = """
[gateway]
node = "ldaptest"

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

{directory}
[[policy.rule]]
name = "sales-no-im-from-engineering-only"
action = "deny"
from = ["group:engineering"]
to = ["group:sales"]
kinds = ["im"]
reason = "engineering may not IM sales"

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class SlapdGateway(GatewayProcess):
    """Mixin: a slapd, then a `twistd gateway` whose directory it is, from the class's ``config_template``."""

    config_template = CONFIG

    def setUp(self):
        self.slapd = Slapd()
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        super().setUp()

    def config_text(self):
        return self.config_template.format(
            admin=self.admin, line=self.line, directory=self.slapd.directory_config('line = "uid", xmpp = "mail"'),
        )


class LDAPGatewayTests(SlapdGateway, unittest.TestCase):

    def test_ldap_people_log_in_and_group_rules_apply(self):
        erin = LineClient(self.line)
        erin.send("LOGIN erin wrong")
        self.assertEqual(erin.expect("ERR"), "ERR auth-failed wrong user or password")
        erin.send("LOGIN erin secret")
        self.assertEqual(erin.expect("OK LOGIN"), "OK LOGIN line:erin")
        dana = LineClient(self.line)
        dana.send("LOGIN dana secret")
        dana.expect("OK LOGIN")
        erin.send("MSG xmpp:dana@example.com hello")
        self.assertEqual(erin.expect("ERR"), "ERR policy engineering may not IM sales")
        dana.send("MSG line:erin hello erin")
        self.assertTrue(dana.expect("OK ").startswith("OK delivered"))
        self.assertEqual(erin.expect("FROM"), "FROM line:dana hello erin")
        status = json.loads(self.http("/status"))
        self.assertEqual(status["directory"]["backend"], "ldap")

        listed = self.gatewayctl("users", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        people = {p["id"]: p for p in json.loads(listed.stdout)}
        self.assertEqual(sorted(people), ["dana", "erin"])
        self.assertEqual(people["dana"]["groups"], ["engineering", "sales"])
        decided = self.gatewayctl("policy", "test", "--from", "line:erin", "--to", "line:dana", "--json")
        self.assertEqual(decided.returncode, 0, decided.stderr)
        self.assertEqual(json.loads(decided.stdout.splitlines()[0])["rule"], "sales-no-im-from-engineering-only")
        refreshed = self.gatewayctl("directory", "refresh")
        self.assertEqual(refreshed.returncode, 0, refreshed.stderr)
        self.assertIn("flushed", refreshed.stdout)
        metrics = self.http("/metrics")
        self.assertIn("gateway_directory_cache_hits", metrics)

        # LDAP down and the cache flushed: a login gets a clear "try later", not "wrong password".
        self.slapd.stop()
        self.gatewayctl("directory", "refresh")
        late = LineClient(self.line)
        late.send("LOGIN erin secret")
        self.assertEqual(late.expect("ERR"), "ERR try-later the directory is unavailable; try again later")
        self.slapd.start()
        late.send("LOGIN erin secret")
        self.assertEqual(late.expect("OK LOGIN"), "OK LOGIN line:erin")
        for client in (erin, dana, late):
            client.close()
        self.stop()


WALL_CONFIG = """
[gateway]
node = "ldapwall"

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

{directory}
[[compliance.wall]]
name = "research-sales"
between = ["group:research", "group:sales"]
notice = "research and sales may not talk"

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class LDAPWallTests(SlapdGateway, unittest.TestCase):
    """An ethical wall between two LDAP groups, on every network the people have handles on."""

    config_template = WALL_CONFIG

    def test_a_wall_between_two_ldap_groups(self):
        groups = json.loads(self.gatewayctl("users", "list", "--json").stdout)
        self.assertEqual({p["id"]: p["groups"] for p in groups}["dana"], ["engineering", "sales"])
        erin, dana = LineClient(self.line), LineClient(self.line)
        for client, name in ((erin, "erin"), (dana, "dana")):
            client.send(f"LOGIN {name} secret")
            client.expect("OK LOGIN")
        # erin is in no walled group: she reaches dana on both of dana's networks.
        erin.send("MSG line:dana hello dana")
        self.assertTrue(erin.expect("OK ").startswith("OK delivered"))
        erin.send("MSG xmpp:dana@example.com hello again")
        self.assertTrue(erin.expect("OK ").startswith(("OK delivered", "OK queued")))
        # A new LDAP group, research, with erin in it (as an administrator adds one), and the cache flushed.
        self.slapd.add("dn: cn=research,ou=groups,{suffix}\nobjectClass: groupOfNames\ncn: research\n"
                       "member: uid=erin,ou=people,{suffix}\n")
        self.assertEqual(self.gatewayctl("directory", "refresh").returncode, 0)
        # Now erin is in research and dana in sales: nothing passes, on either network, either way.
        for client, target in ((erin, "line:dana"), (erin, "xmpp:dana@example.com"), (dana, "line:erin")):
            client.send(f"MSG {target} across the wall")
            self.assertEqual(client.expect("ERR"), "ERR policy research and sales may not talk")
        self.assertIn('gateway_wall_breaches_total{wall="research-sales"} 3.0', self.http("/metrics"))
        for client in (erin, dana):
            client.close()
        self.stop()


XMPP_CONFIG = """
[gateway]
node = "ldapxmpp"
data_dir = "var"

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

{directory}
[[policy.rule]]
name = "engineering-not-to-sales"
action = "deny"
from = ["group:engineering"]
to = ["group:sales"]
kinds = ["im"]
reason = "engineering may not IM sales"

[connectors.xmpp]
domain = "example.com"
listen = ["tcp:{c2s}:interface=127.0.0.1"]
require_tls = false
mechanisms = ["PLAIN"]
"""


class LDAPOverXMPPTests(unittest.TestCase):
    """LDAP people log in with a real XMPP client (slixmpp, SASL PLAIN) and group rules apply."""

    timeout = 120

    def setUp(self):
        try:
            import gateway_xmpp  # noqa: F401
            import slixmpp  # noqa: F401
        except ImportError as e:
            raise unittest.SkipTest(f"needs the xmpp plugin and slixmpp installed: {e}")
        from tests.xmpp import peers

        self.peers = peers
        self.slapd = Slapd()
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        self.c2s = peers.free_port()
        config = XMPP_CONFIG.format(
            admin=peers.free_port(), c2s=self.c2s, directory=self.slapd.directory_config('xmpp = "mail"'),
        )
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.c2s,))

    def test_login_with_ldap_password_and_group_rule(self):
        import asyncio

        peers = self.peers

        async def scenario():
            dana = peers.slixmpp_client("dana@example.com/d", "secret", self.c2s, tls=False, mech="PLAIN")
            erin = peers.slixmpp_client("erin@example.com/e", "secret", self.c2s, tls=False, mech="PLAIN")
            wrong = peers.slixmpp_client("erin@example.com/w", "nope", self.c2s, tls=False, mech="PLAIN")
            try:
                await peers.start(dana)
                await peers.start(erin)
                dana.send_message("erin@example.com", "hello from sales", mtype="chat")
                await peers.until(lambda: erin.messages, what="erin gets dana's message")
                self.assertEqual(erin.messages[0]["body"], "hello from sales")
                erin.send_message("dana@example.com", "hello from engineering", mtype="chat")
                await peers.until(lambda: erin.errors, what="erin's message refused by the group rule")
                self.assertEqual(erin.errors[0]["error"]["condition"], "forbidden")
                self.assertIn("engineering may not IM sales", erin.errors[0]["error"]["text"])
                self.assertEqual(dana.messages, [])
                wrong.connect(*wrong.address)
                await peers.until(lambda: wrong.failed, what="a wrong LDAP password is refused")
                await asyncio.sleep(0.2)
            finally:
                await peers.stop(dana, erin, wrong)

        peers.run(scenario())
