"""fail_closed per route: for the parties of [archive] fail_closed_parties, and for what a rule with fail_closed allows."""

from tests.test_bus import CONFIG, BusTestCase

ROUTES = CONFIG + """
[archive]
fail_closed_parties = ["domain:remote.example"]

[[policy.rule]]
name = "sales-is-regulated"
action = "allow"
to = ["group:sales"]
fail_closed = true
"""


class RouteTests(BusTestCase):
    config = ROUTES

    def test_only_the_strict_routes_wait_for_the_database(self):
        self.login(self.left, self.alice, "aim:alice")
        self.login(self.left, self.bob, "aim:bob")
        self.login(self.right, self.carol, "xmpp:carol@gw.example")
        self.archive.refuse = True  # the database is down; the spool still takes rows
        internal = self.submit("aim:alice", "aim:bob", "lunch?")
        self.assertTrue(internal.delivered)
        external = self.submit("aim:alice", "xmpp:dave@remote.example", "to the partner")
        self.assertEqual((external.rejected, external.code), (True, "archive-unavailable"))
        regulated = self.submit("aim:bob", "xmpp:carol@gw.example", "a quote")
        self.assertEqual((regulated.rejected, regulated.code), (True, "archive-unavailable"))
        self.archive.refuse = False
        self.assertTrue(self.submit("aim:alice", "xmpp:dave@remote.example", "again").delivered)

    def test_the_parties_make_an_event_durable_even_when_durable_is_off(self):
        from gateway.config import loads

        self.core.bus.durable = False
        self.archive.refuse = True
        outcome = self.submit("aim:alice", "xmpp:dave@remote.example", "to the partner")
        self.assertEqual(outcome.code, "archive-unavailable")
        from gateway.config import ConfigError

        e = self.assertRaises(ConfigError, loads, '[archive]\nfail_closed_parties = ["user:"]\n', "<t>")
        self.assertIn("archive.fail_closed_parties", str(e))


class UnrecordedTests(BusTestCase):
    """What happens when the archive can neither commit nor spool: [archive] unrecorded."""

    config = CONFIG

    def test_rejected_by_default_delivered_unrecorded_when_chosen(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.archive.refuse = self.archive.full = True
        outcome = self.submit("aim:alice", "aim:bob", "first")
        self.assertEqual((outcome.rejected, outcome.code), (True, "archive-unavailable"))
        self.assertEqual(self.left.received(b, "im"), [])
        self.core.bus.unrecorded = "deliver"
        outcome = self.submit("aim:alice", "aim:bob", "second")
        self.assertTrue(outcome.delivered)
        self.assertEqual([e.text for e in self.left.received(b, "im")], ["second"])
        self.assertEqual(self.core.metrics.unrecorded_events.labels("im")._value.get(), 1)
        # A fail-closed event is refused all the same.
        self.core.bus.fail_closed = True
        self.assertTrue(self.submit("aim:alice", "aim:bob", "third").rejected)
