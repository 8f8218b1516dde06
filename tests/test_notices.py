"""Notices: both parties of a conversation crossing a boundary are shown a text, once a period, as a message."""

from gateway.compliance.notices import SENDER
from gateway.config import ConfigError, loads
from tests.test_bus import CONFIG, BusTestCase

NOTICES = CONFIG + """
[[compliance.notice]]
name = "external-recorded"
text = "This conversation with the company is recorded."
direction = "external"
period = 24
"""


class NoticeTests(BusTestCase):
    config = NOTICES

    def notices(self, session):
        # From gateway:compliance, shown under its alias on the recipient's network.
        return [e.text for e in self.left.received(session, "im") if e.sender.user == "gateway.compliance"]

    def test_once_per_conversation_and_period_to_both_parties(self):
        a = self.login(self.left, self.alice, "aim:alice")
        self.login(self.left, self.bob, "aim:bob")
        self.assertTrue(self.submit("aim:alice", "xmpp:dave@remote.example", "hello dave").delivered)
        self.assertEqual(self.notices(a), ["This conversation with the company is recorded."])
        told_dave = [e for e in self.right.remote if e.sender.user == "gateway.compliance"]
        self.assertEqual([(str(e.recipient), e.text) for e in told_dave],
                         [("xmpp:dave@remote.example", "This conversation with the company is recorded.")])
        self.submit("aim:alice", "xmpp:dave@remote.example", "and again")
        self.assertEqual(len(self.notices(a)), 1)  # within the period: not again
        self.submit("aim:alice", "aim:bob", "internal")  # not external: no notice
        self.assertEqual(len(self.notices(a)), 1)
        self.clock.advance(25 * 3600)
        self.submit("aim:alice", "xmpp:dave@remote.example", "next day")
        self.assertEqual(len(self.notices(a)), 2)
        recorded = [event for event, _, status in self.archive.rows.values() if event.sender == SENDER]
        self.assertEqual(len(recorded), 4)  # two notices, each to both parties, archived like any message

    def test_config_errors(self):
        for text, wanted in (('text = ""', "text must be some text"),
                             ('text = "x"\ndirection = "sideways"', "direction must be one of"),
                             ('text = "x"\nperiod = 0', "period must be hours greater than 0")):
            e = self.assertRaises(ConfigError, loads, f"[[compliance.notice]]\n{text}\n", "<t>")
            self.assertIn(wanted, str(e))
