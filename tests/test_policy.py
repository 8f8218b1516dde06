"""The built-in policy, table-driven: matchers, kinds, directions, time windows, first match."""

import datetime

from twisted.internet import task
from twisted.trial import unittest

from gateway.config import loads
from gateway.model import Address, Identity
from gateway.policy.rules import PolicyEngine, Side

ALICE = Identity("alice", handles=(Address.parse("aim:alice"), Address.parse("sip:alice@corp.example")), groups=frozenset({"staff"}))
BOB = Identity("bob", handles=(Address.parse("aim:bob"),), groups=frozenset({"sales", "staff"}))


def side(text, identity=None):
    return Side(Address.parse(text), identity)


RULES = """
[policy]
default = "allow"
timezone = "Europe/Berlin"

[[policy.rule]]
name = "office-hours-external"
action = "deny"
direction = "inbound"
days = ["sat", "sun"]
reason = "no outside contact on weekends"

[[policy.rule]]
name = "partner-ok"
action = "allow"
from = ["domain:partner.example"]

[[policy.rule]]
name = "outside-to-sales"
action = "deny"
direction = "inbound"
to = ["group:sales"]
kinds = ["im", "file"]

[[policy.rule]]
name = "no-icq"
action = "deny"
from = ["network:icq"]

[[policy.rule]]
name = "alice-no-typing"
action = "deny"
from = ["aim:alice"]
kinds = ["typing"]

[[policy.rule]]
name = "night"
action = "deny"
to = ["user:bob"]
hours = "22:00-06:00"
kinds = ["im"]
"""

# A Wednesday and a Saturday, noon and 23:00 in Berlin (UTC+1 in November).
WED_NOON = datetime.datetime(2026, 11, 18, 11, 0, tzinfo=datetime.timezone.utc).timestamp()
WED_NIGHT = datetime.datetime(2026, 11, 18, 22, 30, tzinfo=datetime.timezone.utc).timestamp()
SAT_NOON = datetime.datetime(2026, 11, 21, 11, 0, tzinfo=datetime.timezone.utc).timestamp()

CASES = [
    # (when, kind, sender, recipient, expected rule, allowed)
    (WED_NOON, "im", side("aim:alice", ALICE), side("aim:bob", BOB), "default", True),
    (WED_NOON, "im", side("xmpp:eve@outside.example"), side("aim:bob", BOB), "outside-to-sales", False),
    (WED_NOON, "presence", side("xmpp:eve@outside.example"), side("aim:bob", BOB), "default", True),
    (WED_NOON, "im", side("xmpp:eve@outside.example"), side("aim:alice", ALICE), "default", True),
    (WED_NOON, "im", side("xmpp:pat@partner.example"), side("aim:bob", BOB), "partner-ok", True),
    (WED_NOON, "im", side("xmpp:pat@eu.partner.example"), side("aim:bob", BOB), "partner-ok", True),
    (WED_NOON, "im", side("icq:123456"), side("aim:alice", ALICE), "no-icq", False),
    # an address matcher matches the person on every network
    (WED_NOON, "typing", side("sip:alice@corp.example", ALICE), side("aim:bob", BOB), "alice-no-typing", False),
    (WED_NOON, "typing", side("aim:bob", BOB), side("aim:alice", ALICE), "default", True),
    # time windows, in the policy's time zone
    (WED_NIGHT, "im", side("aim:alice", ALICE), side("aim:bob", BOB), "night", False),
    (WED_NIGHT, "im", side("aim:bob", BOB), side("aim:alice", ALICE), "default", True),
    (SAT_NOON, "im", side("xmpp:pat@partner.example"), side("aim:alice", ALICE), "office-hours-external", False),
    (SAT_NOON, "im", side("aim:bob", BOB), side("aim:alice", ALICE), "default", True),
]


class MatrixTests(unittest.TestCase):
    def test_matrix(self):
        clock = task.Clock()
        engine = PolicyEngine(loads(RULES).policy, clock)
        for when, kind, sender, recipient, rule, allowed in CASES:
            clock.advance(when - clock.seconds())
            verdict = engine.check(kind, sender, recipient)
            self.assertEqual(
                (verdict.rule, verdict.allowed), (rule, allowed),
                f"{kind} {sender.address} -> {recipient.address} at {when}",
            )

    def test_reason_from_rule_or_generated(self):
        clock = task.Clock()
        clock.advance(SAT_NOON)
        engine = PolicyEngine(loads(RULES).policy, clock)
        verdict = engine.check("im", side("xmpp:eve@x.example"), side("aim:alice", ALICE))
        self.assertEqual(verdict.reason, "no outside contact on weekends")
        clock.advance(WED_NOON - SAT_NOON)
        verdict = engine.check("im", side("icq:1"), side("aim:alice", ALICE))
        self.assertEqual(verdict.reason, "denied by rule no-icq")

    def test_default_deny_and_directions(self):
        text = """
[policy]
default = "deny"
[[policy.rule]]
name = "internal"
action = "allow"
direction = "internal"
[[policy.rule]]
name = "out"
action = "allow"
direction = "outbound"
kinds = ["im"]
"""
        engine = PolicyEngine(loads(text).policy, task.Clock())
        check = engine.check
        self.assertEqual(check("im", side("aim:alice", ALICE), side("aim:bob", BOB)).rule, "internal")
        self.assertEqual(check("im", side("aim:alice", ALICE), side("xmpp:x@y.example")).rule, "out")
        denied = check("presence", side("aim:alice", ALICE), side("xmpp:x@y.example"))
        self.assertEqual((denied.allowed, denied.rule), (False, "default"))
        self.assertFalse(check("im", side("xmpp:x@y.example"), side("aim:alice", ALICE)).allowed)

    def test_reload_replaces_rules(self):
        engine = PolicyEngine(loads(RULES).policy, task.Clock())
        self.assertEqual(len(engine.rules), 6)
        engine.load(loads("[policy]\ndefault='deny'\n").policy)
        self.assertEqual(engine.rules, ())
        self.assertFalse(engine.check("im", side("aim:alice", ALICE), side("aim:bob", BOB)).allowed)


class DecisionCacheTests(unittest.TestCase):
    """A decision is kept per (kind, sender, recipient) until a reload or, with time windows, the next minute."""

    def engine(self, text, clock):
        engine = PolicyEngine(loads(text).policy, clock)
        decided = []
        decide = engine._decide

        def counting(*args):
            decided.append(args)
            return decide(*args)

        engine._decide = counting
        return engine, decided

    def test_kept_without_time_windows(self):
        clock = task.Clock()
        engine, decided = self.engine("[policy]\ndefault='allow'\n[[policy.rule]]\nname='no-icq'\naction='deny'\n"
                                      "from=['network:icq']\n", clock)
        for _ in range(3):
            self.assertFalse(engine.check("im", side("icq:1"), side("aim:alice", ALICE)).allowed)
            clock.advance(86400.0)  # days later: nothing in the rules depends on the time
        self.assertTrue(engine.check("im", side("aim:bob", BOB), side("aim:alice", ALICE)).allowed)
        self.assertTrue(engine.check("typing", side("aim:bob", BOB), side("aim:alice", ALICE)).allowed)
        self.assertEqual(len(decided), 3)  # one per (kind, sender, recipient)
        # The same person known by another identity object (fresh from the directory) is the same key.
        self.assertTrue(engine.check("im", side("aim:bob", Identity("bob", handles=BOB.handles, groups=BOB.groups)),
                                     side("aim:alice", ALICE)).allowed)
        self.assertEqual(len(decided), 3)

    def test_reload_forgets_decisions(self):
        clock = task.Clock()
        rule = "[[policy.rule]]\nname='no-icq'\naction='deny'\nfrom=['network:icq']\n"
        engine, decided = self.engine("[policy]\ndefault='allow'\n" + rule, clock)
        self.assertTrue(engine.check("im", side("aim:bob", BOB), side("aim:alice", ALICE)).allowed)
        engine.load(loads("[policy]\ndefault='deny'\n" + rule).policy)  # what SIGHUP does
        self.assertFalse(engine.check("im", side("aim:bob", BOB), side("aim:alice", ALICE)).allowed)

    def test_no_rules_nothing_kept(self):
        engine, decided = self.engine("[policy]\ndefault='deny'\n", task.Clock())
        self.assertFalse(engine.check("im", side("aim:bob", BOB), side("aim:alice", ALICE)).allowed)
        self.assertEqual((decided, engine._decisions), ([], {}))

    def test_a_time_window_boundary_forgets_decisions(self):
        clock = task.Clock()
        clock.advance(WED_NIGHT - 30 * 60 - 30)  # 22:59:30 in Berlin: the night rule starts at 23:00 there
        engine, decided = self.engine(RULES.replace('hours = "22:00-06:00"', 'hours = "23:00-06:00"'), clock)
        check = lambda: engine.check("im", side("aim:alice", ALICE), side("aim:bob", BOB))  # noqa: E731
        self.assertEqual(check().rule, "default")
        clock.advance(29.0)  # 22:59:59: the same minute, the decision kept
        self.assertEqual((check().rule, len(decided)), ("default", 1))
        clock.advance(1.0)  # 23:00:00: decided again, now inside the window
        self.assertEqual((check().rule, check().allowed, len(decided)), ("night", False, 2))
        clock.advance(-3600.0)  # a clock set back: another minute, decided again
        self.assertEqual((check().rule, len(decided)), ("default", 3))

    def test_bounded(self):
        engine, decided = self.engine("[policy]\ndefault='allow'\n[[policy.rule]]\nname='no-icq'\naction='deny'\n"
                                      "from=['network:icq']\n", task.Clock())
        engine.CACHE_SIZE = 3
        for n in range(5):
            engine.check("im", side(f"aim:u{n}"), side("aim:alice", ALICE))
        self.assertLessEqual(len(engine._decisions), 3)
        self.assertEqual(len(decided), 5)
