"""Ethical walls: no traffic of any kind between two groups, on any network, in either direction."""

from gateway.config import ConfigError, loads
from gateway.hookspecs import hookimpl
from gateway.model import Address, Presence, PresenceStatus
from tests.test_bus import CONFIG, BusTestCase, result_of

WALL = CONFIG + """
[[compliance.wall]]
name = "research-sales"
between = ["group:staff", "group:sales"]
notice = "research and sales may not talk: ask compliance"
"""


class Officer:
    def __init__(self):
        self.told = []

    @hookimpl
    def gateway_wall_breach(self, event, wall, sender, recipient):
        self.told.append((event.kind, wall, sender, recipient))


class WallTests(BusTestCase):
    config = WALL

    def setUp(self):
        self.officer = Officer()
        self.hooks = (self.officer,)
        super().setUp()

    def breaches(self):
        return self.core.metrics.wall_breaches.labels("research-sales")._value.get()

    def test_every_kind_between_the_two_groups_is_refused_and_archived(self):
        self.login(self.left, self.alice, "aim:alice")
        carol = self.login(self.right, self.carol, "xmpp:carol@gw.example")
        api = self.core.api
        cases = [
            ("message, across networks", lambda: self.core.bus.submit(
                api.message("aim:alice", "xmpp:carol@gw.example", "hello"))),
            ("message, the other way", lambda: self.core.bus.submit(
                api.message("xmpp:carol@gw.example", "aim:alice", "hello back"))),
            ("message, same network", lambda: self.core.bus.submit(
                api.message("xmpp:alice@gw.example", "xmpp:carol@gw.example", "psst"))),
            ("file offer", lambda: self.core.bus.submit(
                api.file_offer("aim:alice", "xmpp:carol@gw.example", "plans.pdf", 10))),
            ("presence probe", lambda: api.disclose(
                Presence("aim:alice", PresenceStatus.AWAY, "lunch", recipient="xmpp:carol@gw.example"))),
            ("profile", lambda: api.disclose(api.profile("xmpp:carol@gw.example", "aim:alice", text="about me"))),
        ]
        for label, attempt in cases:
            result = result_of(attempt())
            outcome = result[0] if isinstance(result, tuple) else result
            self.assertTrue(outcome.rejected, label)
            self.assertEqual((outcome.rule, outcome.reason),
                             ("wall:research-sales", "research and sales may not talk: ask compliance"), label)
            self.assertEqual(self.archive.status(outcome.event_id), "rejected", label)
        self.assertEqual(self.breaches(), len(cases))
        self.assertEqual([(kind, sender, recipient) for kind, _, sender, recipient in self.officer.told], [
            ("im", "alice", "carol"), ("im", "carol", "alice"), ("im", "alice", "carol"), ("file", "alice", "carol"),
            ("presence", "alice", "carol"), ("info", "carol", "alice")])
        self.assertEqual(self.right.received(carol, "im") + self.right.received(carol, "file"), [])

    def test_others_are_not_walled_and_a_reload_lifts_the_wall(self):
        self.login(self.right, self.carol, "xmpp:carol@gw.example")
        self.assertTrue(result_of(self.core.bus.submit(
            self.core.api.message("aim:bob", "xmpp:carol@gw.example", "hi"))).delivered)
        self.core.walls.load(())
        self.assertTrue(result_of(self.core.bus.submit(
            self.core.api.message("aim:alice", "xmpp:carol@gw.example", "hi"))).delivered)
        self.assertEqual(self.breaches(), 0)

    def test_a_wall_for_some_kinds_only(self):
        self.core.walls.load(loads(CONFIG + """
[[compliance.wall]]
name = "research-sales"
between = ["group:staff", "group:sales"]
kinds = ["im", "file"]
""", "<t>").compliance.walls)
        outcome, _ = result_of(self.core.api.disclose(
            Presence("aim:alice", PresenceStatus.AWAY, recipient="xmpp:carol@gw.example")))
        self.assertTrue(outcome.delivered)
        self.assertTrue(self.submit("aim:alice", "xmpp:carol@gw.example").rejected)

    def test_config_errors(self):
        for text, wanted in (('between = ["group:a"]', "between must name its two sides"),
                             ('between = ["*", "group:b"]', "a side cannot be everyone"),
                             ('between = ["group:a", "group:b"]\nkinds = ["mail"]', "kinds must be a list")):
            e = self.assertRaises(ConfigError, loads, f"[[compliance.wall]]\n{text}\n", "<t>")
            self.assertIn(wanted, str(e))


class ForeignAliasWallTests(BusTestCase):
    """Carol's account on a federated server is Carol here: the wall holds through it and through its alias."""

    config = WALL
    right_reach = (Address.parse("xmpp:carol@remote.example"), Address.parse("xmpp:dave@remote.example"))

    def setUp(self):
        super().setUp()
        self.carol = self.directory.add("carol", "xmpp:carol@gw.example", "xmpp:carol@remote.example",
                                        groups=["sales"])

    def test_to_and_from_the_foreign_account_and_through_its_alias(self):
        alice = self.login(self.left, self.alice, "aim:alice")
        outcome = self.submit("aim:alice", "xmpp:carol@remote.example", "hello")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "wall:research-sales")
        outcome = self.submit("xmpp:carol@remote.example", "aim:alice", "hello")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "wall:research-sales")
        # The alias under which that account appears on AIM names Carol too.
        alias = result_of(self.core.directory.alias_for(Address.parse("xmpp:carol@remote.example"), "aim"))
        outcome = self.submit("aim:alice", alias, "through the alias")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "wall:research-sales")
        self.assertEqual(self.right.remote, [])
        self.assertEqual(self.left.received(alice, "im"), [])
        # Dave, not mapped to anyone, is not walled.
        self.assertTrue(self.submit("aim:alice", "xmpp:dave@remote.example", "hi dave").delivered)
