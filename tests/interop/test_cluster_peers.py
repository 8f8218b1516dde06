"""
Two gateway nodes on one Redis and one PostgreSQL database, with clients
nobody here wrote: alice on node A with slixmpp (XMPP), bob on node B with
Twisted 15.4's AIM client (OSCAR). Messages both ways and presence across
the nodes, each message decided and archived once.
"""

import json
import shutil
import time

from twisted.trial import unittest

from tests import gateway_process
from tests.interop.test_oscar import Client, of, require_tw15
from tests.support import free_port, postgres_engine
from tests.test_cluster import NODE_BASE, on_redis
from tests.xmpp import peers

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - CI installs it
    slixmpp = None

REDIS = "redis://127.0.0.1:6379/0"

XMPP = """
[connectors.xmpp]
listen = [{{endpoint = "tcp:{port}:interface=127.0.0.1", require_tls = false}}]
"""
OSCAR = """
[connectors.oscar]
listen = ["tcp:{port}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{port}"
"""

SIP = """
[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:{port}"]
listen = ["tcp:{port}:interface=127.0.0.1"]
"""
LINE = """
[connectors.line]
listen = ["tcp:{port}:interface=127.0.0.1"]
"""

TO_ALICE = "hello alice, from AIM on node b \u2713"
TO_BOB = "hi bob, from XMPP on node a"


class TwoProtocolsTwoNodesTests(unittest.TestCase):
    timeout = 150

    def setUp(self):
        for module, name in (("gateway_xmpp", "xmpp"), ("gateway_oscar", "oscar")):
            try:
                __import__(module)
            except ImportError:
                raise unittest.SkipTest(f"the {name} plugin is not installed: pip install ./plugins/{name}")
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        if shutil.which("twistd") is None:
            raise unittest.SkipTest("twistd is not on PATH")
        require_tw15()
        self.prefix, self.secret_file = on_redis(self, REDIS, "gwpeers")
        self.database = postgres_engine(self).url.render_as_string(hide_password=False)

    def node(self, name, connector, port, **ports):
        text = NODE_BASE.format(node=name, redis=REDIS, prefix=self.prefix, secret=self.secret_file, admin="")
        text += connector.format(port=port, **ports) + f'\n[database]\nurl = "{self.database}"\n'
        gateway = gateway_process.Gateway(self, text, wait_ports=(port,), name=f"gw-{name}")
        self.addCleanup(lambda: self.assertEqual(gateway.tracebacks(), [], gateway.text()))
        return gateway

    def alice_and_bob(self, xmpp_port, oscar_port):
        """
        alice with slixmpp at ``xmpp_port``; then bob with Twisted's AIM
        client at ``oscar_port``, who sends her a message, waits for her
        answer and signs off. What alice got (sender, text), bob's client's
        events, and the presence types alice saw of bob in order.
        """
        states = {}

        async def scenario():
            alice = peers.slixmpp_client("alice@localhost/desk", "secret", xmpp_port, tls=False, mech="PLAIN")

            def bob_presences():
                return [p["type"] for p in alice.presences if str(p["from"].bare) == "bob@localhost"]

            try:
                await peers.start(alice)
                states["bob"] = Client(self, "tw15", oscar_port, "bob", "alice", "--send", TO_ALICE,
                                       "--expect", "1", "--role", "leave")
                await peers.until(lambda: alice.messages, timeout=20, what="bob's message")
                states["alice got"] = [(str(m["from"].bare), m["body"]) for m in alice.messages]
                alice.send_message("bob@localhost", TO_BOB, mtype="chat")
                await peers.until(lambda: bob_presences() and bob_presences()[-1] == "unavailable", timeout=30,
                                  what="bob gone")
            finally:
                states["presences"] = bob_presences()
                await peers.stop(alice)

        peers.run(scenario(), timeout=90)
        events = states["bob"].events()
        states["bob"].assert_done(events)
        return states["alice got"], events, states["presences"]

    def test_xmpp_on_one_node_and_aim_on_the_other_talk_and_see_each_other(self):
        xmpp_port, oscar_port = free_port(), free_port()
        # One after the other: each adds the demo people to the shared database when they are missing.
        a = self.node("node-a", XMPP, xmpp_port)
        b = self.node("node-b", OSCAR, oscar_port)
        got, events, presences = self.alice_and_bob(xmpp_port, oscar_port)
        # alice (node A) saw bob (node B) come and go.
        self.assertEqual((presences[0], presences[-1]), ("available", "unavailable"))
        self.assertEqual(got, [("bob@localhost", TO_ALICE)])
        # bob saw alice (on the other node) online, and got her answer under her AIM name.
        self.assertIn("alice", [e["who"] for e in of(events, "online")])
        self.assertEqual([(e["sender"], e["text"]) for e in of(events, "im")], [("alice", TO_BOB)])
        # Each decided and archived once, on the node where it entered; delivered by the other.
        deadline = time.monotonic() + 10
        while True:
            rows = json.loads(a.gatewayctl("archive", "search", "--user", "alice", "--kind", "im", "--json"))
            if len(rows) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(sorted((r["sender"], r["recipient"], r["text"], r["node"], r["status"]) for r in rows), sorted([
            ("aim:bob", "aim:alice", TO_ALICE, "node-b", "delivered"),
            ("xmpp:alice@localhost", "xmpp:bob@localhost", TO_BOB, "node-a", "delivered"),
        ]))
        verified = b.ctl("archive", "verify")
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)

    def test_an_aim_login_at_a_drained_node_is_served_by_the_other(self):
        """OSCAR placement: the login reply names the other node's BOS, which takes the login's ticket from Redis."""
        a_port, b_port, b_xmpp = free_port(), free_port(), free_port()
        a = self.node("node-a", OSCAR, a_port)
        b = self.node("node-b", OSCAR + XMPP.replace("{port}", "{xmpp}"), b_port, xmpp=b_xmpp)
        deadline = time.monotonic() + 15
        while True:
            nodes = {n["name"]: n for n in map(json.loads, a.gatewayctl("node", "list", "--json").splitlines())}
            if set(nodes) == {"node-a", "node-b"}:
                break
            self.assertLess(time.monotonic(), deadline, "the nodes did not both register")
            time.sleep(0.2)
        self.assertIn("node node-a is empty", a.gatewayctl("node", "drain", "node-a", "--wait", "--timeout", "20"))
        # bob's client is pointed at node A, which sends it to node B's BOS.
        got, events, _ = self.alice_and_bob(b_xmpp, a_port)
        self.assertEqual(got, [("bob@localhost", TO_ALICE)])
        self.assertEqual([(e["sender"], e["text"]) for e in of(events, "im")], [("alice", TO_BOB)])
        self.assertRegex(a.text(), rf"oscar: aim:bob authenticated from .*; BOS at 127.0.0.1:{b_port}\n")
        # bob's session was on node B: his login was recorded there.
        logins = json.loads(b.gatewayctl("archive", "search", "--user", "aim:bob", "--kind", "access", "--json"))
        self.assertIn(("aim:bob", "node-b"), [(r["sender"], r["node"]) for r in logins])
        self.assertNotIn("node-a", [r["node"] for r in logins])

    def test_sip_registered_on_one_node_reached_from_the_other(self):
        """SIP: bob registers (SIPp) on node A; alice on node B reaches him and gets his answer, across the nodes."""
        from tests.gateway_process import LineClient
        from tests.interop.test_sip import read, sipp

        sip_port, line_port = free_port(), free_port()
        # Node B first: the demo people it adds get line handles (and the default networks', SIP's too).
        self.node("node-b", LINE, line_port)
        a = self.node("node-a", SIP, sip_port)
        alice = LineClient(line_port, "alice", timeout=20)
        self.addCleanup(alice.close)
        port = free_port()
        status, messages = sipp(self, f"127.0.0.1:{sip_port}", "register.xml", user="bob", port=port,
                                keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        uas, uas_messages = sipp(self, f"127.0.0.1:{sip_port}", "message_uas.xml", user="bob", port=port,
                                 keys=[("text", "bob's answer from node a")], timeout=25, background=True)
        time.sleep(0.5)  # SIPp binds its port
        alice.send("MSG sip:bob@localhost a question from node b")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered"))
        self.assertEqual(alice.expect("FROM"), "FROM line:bob bob's answer from node a")
        self.assertEqual(uas.wait(timeout=30), 0, read(uas_messages))
        self.assertIn("a question from node b", read(uas_messages))
        rows = json.loads(a.gatewayctl("archive", "search", "--user", "bob", "--kind", "im", "--json"))
        self.assertEqual(sorted((r["text"], r["node"]) for r in rows),
                         [("a question from node b", "node-b"), ("bob's answer from node a", "node-a")])
