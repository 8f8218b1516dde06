"""Notices: both parties of a conversation crossing a boundary are shown a text, once a period, as a message."""

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from gateway.compliance.notices import SENDER, Notices
from gateway.config import ConfigError, NoticeConfig, loads
from gateway.model import Message
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
        # Dave reads the notice before the message it came with.
        self.assertEqual([(e.sender.user, e.text) for e in self.right.remote if e.kind == "im"],
                         [("gateway.compliance", "This conversation with the company is recorded."),
                          ("alice", "hello dave")])
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


class _Api:
    """What `Notices` uses of the plugin API, with notices whose delivery never ends."""

    def __init__(self):
        self.clock = task.Clock()
        self.sent = []
        self.log = None

    def identity_for(self, address):
        return succeed(None)

    def message(self, sender, recipient, text):
        return Message(str(sender), str(recipient), text)

    def submit(self, event):
        self.sent.append(event)
        return Deferred()


class WaitTests(TestCase):
    def test_a_message_waits_for_its_notices_only_so_long(self):
        api = _Api()
        notices = Notices(api, [NoticeConfig("n", "recorded")], wait=2.5)
        held = notices.gateway_transform(Message("aim:alice", "xmpp:dave@remote.example", "hi"))
        self.assertEqual([e.text for e in api.sent], ["recorded", "recorded"])
        self.assertNoResult(held)
        api.clock.advance(2.4)
        self.assertNoResult(held)
        api.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(held))  # goes on unchanged; the notices follow
        # Nothing due (within the period): the message goes on at once, no Deferred.
        self.assertIsNone(notices.gateway_transform(Message("aim:alice", "xmpp:dave@remote.example", "again")))
        self.assertEqual(len(api.sent), 2)
