"""Two gateway nodes on one Redis with slixmpp clients: a drained node sends XMPP clients to the other (see-other-host)."""

import json

from twisted.trial import unittest

from tests.test_cluster import NODE_BASE, on_redis
from tests.xmpp import peers

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - CI installs it
    slixmpp = None

try:
    import gateway_xmpp  # noqa: F401  (the plugin under test must be installed)
except ImportError:  # pragma: no cover
    raise unittest.SkipTest("the xmpp plugin is not installed: pip install ./plugins/xmpp")

REDIS = "redis://127.0.0.1:6379/0"

NODE = NODE_BASE + """
[connectors.xmpp]
listen = [{{endpoint = "tcp:{port}:interface=127.0.0.1", require_tls = false}}]
"""


class DrainRedirectTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        self.prefix, self.secret_file = on_redis(self, REDIS, "gwxmpp")

    def node(self, name):
        port = peers.free_port()
        text = NODE.format(node=name, redis=REDIS, prefix=self.prefix, port=port, secret=self.secret_file, admin="")
        gateway = peers.GatewayProcess(self, text, wait_ports=(port,))
        self.addCleanup(lambda: self.assertEqual(gateway.tracebacks(), [], gateway.text()))
        return gateway, port

    def test_a_client_of_a_drained_node_is_sent_to_the_other_and_chats_there(self):
        a, a_port = self.node("node-a")
        b, b_port = self.node("node-b")
        out = a.gatewayctl("node", "drain", "node-a", "--wait", "--timeout", "20")
        self.assertIn("node node-a is empty", out)
        nodes = {n["name"]: n for n in map(json.loads, a.gatewayctl("node", "list", "--json").splitlines())}
        self.assertEqual(nodes["node-b"]["state"], "up")

        async def scenario():
            # Both point their clients at node A; A sends them to B with see-other-host.
            alice = peers.slixmpp_client("alice@localhost/laptop", "secret", a_port, tls=False, mech="PLAIN")
            bob = peers.slixmpp_client("bob@localhost/phone", "secret", a_port, tls=False, mech="PLAIN")
            for client in (alice, bob):
                # slixmpp follows see-other-host when it found the server by its domain; given an address
                # to connect to (as here, on loopback ports), it reconnects there instead: let it follow.
                client.add_event_handler("stream_error", lambda error, c=client: setattr(
                    c, "custom_address", c.address) if error["condition"] == "see-other-host" else None)
            try:
                await peers.start(alice)
                await peers.start(bob)
                self.assertEqual(alice.address, ("127.0.0.1", b_port))  # where slixmpp was sent
                alice.send_message("bob@localhost", "found you on node b", mtype="chat")
                await peers.until(lambda: bob.messages, what="bob gets the message")
                self.assertEqual(bob.messages[0]["body"], "found you on node b")
            finally:
                await peers.stop(alice, bob)

        peers.run(scenario())
        self.assertIn("refused a connection from 127.0.0.1: this node is being drained", a.text())
        listing = {n["name"]: n for n in map(json.loads, a.gatewayctl("node", "list", "--json").splitlines())}
        self.assertEqual(listing["node-a"]["sessions"], 0)
