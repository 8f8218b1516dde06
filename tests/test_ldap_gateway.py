"""The demo gateway pointed at a real slapd: LDAP passwords on a connector, group policy, gatewayctl."""

import json

from twisted.trial import unittest

from tests.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd
from tests.test_twistd import GatewayProcess, LineClient

CONFIG = """
[gateway]
node = "ldaptest"

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[directory]
backend = "ldap"

[directory.ldap]
url = "{url}"
bind_dn = "{bind_dn}"
bind_password = "{bind_password}"
people_base = "ou=people,{suffix}"
groups_base = "ou=groups,{suffix}"
handles = {{ line = "uid", xmpp = "mail" }}

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


class LDAPGatewayTests(GatewayProcess, unittest.TestCase):
    def setUp(self):
        self.slapd = Slapd()
        self.addCleanup(self.slapd.destroy)
        self.slapd.start()
        super().setUp()

    def config_text(self):
        return CONFIG.format(
            admin=self.admin, line=self.line, url=self.slapd.url, bind_dn=ADMIN_DN,
            bind_password=ADMIN_PASSWORD, suffix=SUFFIX,
        )

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
