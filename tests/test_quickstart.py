"""The README's quick start: the demo config, as shipped, with the demo users, as a newcomer runs it."""

import json
import os
import signal
import socket
import urllib.request

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "examples", "gateway.toml")
# Every listener of the demo config: admin, OSCAR, SIP, XMPP, Sametime, line.
PORTS = (8080, 5190, 5070, 5222, 1533, 7777)


class QuickStartTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        for port in PORTS:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    self.fail(f"127.0.0.1:{port}, which the demo config uses, is taken by another program")

    def test_demo_config_as_shipped(self):
        with open(DEMO) as f:
            text = f.read()
        gateway = Gateway(self, text, wait_ports=PORTS, name="gw-demo")
        gateway.wait_for_log("gateway node demo started: connectors oscar, sip, xmpp, sametime, line")
        # The data folder is relative to the config file: here, the copy's.
        self.assertTrue(os.path.exists(os.path.join(gateway.dir, "var", "gateway.sqlite")))
        alice, bob = LineClient(7777, "alice"), LineClient(7777, "bob")
        alice.send("MSG aim:bob hello from the quick start")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered"))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello from the quick start")
        with urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=10) as response:
            self.assertIn('gateway_events_total{kind="im",outcome="delivered"} 1.0', response.read().decode())
        # /status needs the admin token, which the gateway made in its data folder.
        self.assertEqual(gateway.admin(8080, "/status", token=False)[0], 401)
        code, body = gateway.admin(8080, "/status")
        self.assertEqual(json.loads(body)["archive"]["state"], "healthy")
        alice.close()
        bob.close()
        self.assertEqual(gateway.stop(), -signal.SIGTERM, gateway.text(3000))
        self.assertIn("Server Shut Down.", gateway.text())
        rows = gateway.archived("alice", text="quick start")
        self.assertEqual([(r["sender"], r["status"]) for r in rows], [("line:alice", "delivered")])
        self.assertEqual(gateway.tracebacks(), [])
