"""`twistd gateway` as a user runs it: a real process, real sockets, signals, gatewayctl."""

import json
import signal
import time
import urllib.request

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin
from tests.support import free_port

CONFIG = """
[gateway]
node = "itest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]

[plugin.example-dlp]
words = ["project-x"]
"""


class GatewayProcess:
    """Mixin: one `twistd gateway` process per test, from ``self.config_text()``."""

    def config_text(self):
        return CONFIG.format(admin=self.admin, line=self.line)

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        self.admin, self.line = free_port(), free_port()
        self.gateway = Gateway(self, self.config_text(), wait_ports=(self.line,), name="gw-twistd")
        self.dir, self.config, self.process = self.gateway.dir, self.gateway.config, self.gateway.process

    def output(self):
        return self.gateway.text()

    def http(self, path):
        code, body = self.gateway.admin(self.admin, path)
        self.assertEqual(code, 200, body)
        return body

    def gatewayctl(self, *args):
        return self.gateway.ctl(*args)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        # twistd re-raises SIGTERM on itself once shut down, so -15 is its clean exit.
        self.assertIn(self.process.wait(timeout=30), (0, -signal.SIGTERM), self.output())
        self.assertIn("Server Shut Down.", self.output())


class TwistdTests(GatewayProcess, unittest.TestCase):
    """Start, use, reload, stop."""

    def test_chat_archive_metrics_and_clean_stop(self):
        alice, bob = LineClient(self.line), LineClient(self.line)
        alice.send("LOGIN alice secret")
        self.assertEqual(alice.expect("OK LOGIN"), "OK LOGIN line:alice")
        bob.send("LOGIN bob secret")
        bob.expect("OK LOGIN")
        alice.expect("PRESENCE line:bob available")

        alice.send("MSG aim:bob hello bob, ça va?")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello bob, ça va?")

        bob.send("MSG sip:carol@localhost hi carol")
        self.assertEqual(bob.expect("ERR"), "ERR policy denied by rule no-bob-to-carol")
        bob.send("MSG line:alice about project-x")
        self.assertEqual(bob.expect("ERR"), "ERR policy message mentions 'project-x'")
        alice.send("MSG line:carol are you there?")
        self.assertTrue(alice.expect("OK ").startswith("OK queued "))

        metrics = self.http("/metrics")
        self.assertIn('gateway_events_total{kind="im",outcome="delivered"} 1.0', metrics)
        self.assertIn('gateway_rejections_total{code="policy",rule="no-bob-to-carol"} 1.0', metrics)
        self.assertIn('gateway_sessions{connector="line"} 2.0', metrics)
        status = json.loads(self.http("/status"))
        self.assertEqual((status["node"], status["archive"]["state"]), ("itest", "healthy"))
        alice.close()
        bob.close()
        self.stop()
        self.assertIn("gateway node itest stopped", self.output())

        # The archive has everything, found the way an administrator looks.
        found = self.gatewayctl("archive", "search", "--user", "alice", "--kind", "im", "--json")
        self.assertEqual(found.returncode, 0, found.stderr)
        rows = json.loads(found.stdout)
        texts = {(r["text"], r["status"]) for r in rows}
        self.assertEqual(
            texts,
            {("hello bob, ça va?", "delivered"), ("about project-x", "rejected"), ("are you there?", "queued")},
        )

    def test_sighup_reloads_rules_without_dropping_sessions(self):
        bob = LineClient(self.line)
        bob.send("LOGIN bob secret")
        bob.expect("OK LOGIN")
        bob.send("MSG line:carol one")
        self.assertEqual(bob.expect("ERR"), "ERR policy denied by rule no-bob-to-carol")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(admin=self.admin, line=self.line).replace('action = "deny"', 'action = "allow"'))
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded 1 policy rules" not in self.output():
            self.assertLess(time.monotonic(), deadline, self.output())
            time.sleep(0.1)
        bob.send("MSG line:carol two")
        self.assertTrue(bob.expect("OK ").startswith("OK queued"))
        bob.close()
        self.stop()
