"""Page-mode rooms for SIP users: MESSAGEs to sip:ROOM@conference.DOMAIN join, say and leave; the room answers."""

from twisted.trial import unittest

from gateway.model import Address, ChatEvent
from gateway_sip.rooms import room_text

from tests.sip.clients import Setup, TcpClient

ROOM = "sip:lobby@conference.localhost"


class Base(unittest.TestCase):
    def setUp(self):
        # Without the SIP tests' no-bob-to-carol rule: carol and bob share the room here (rules between
        # members are tested in tests/test_rooms.py).
        self.s = Setup(policy="")
        self.addCleanup(self.s.stop)

    def registered(self, user):
        client = TcpClient(self.s, user)
        self.assertEqual(client.register().status, 200)
        client.auto_answer = True  # it answers what the room sends it with 200
        return client

    def say(self, client, text, uri=ROOM):
        client.auto_answer = False
        client.send(client.request("MESSAGE", uri, headers=[("Content-Type", "text/plain")], body=text.encode()))
        taken = client.take()
        responses = [m for m in taken if not hasattr(m, "method")]
        for request in [m for m in taken if hasattr(m, "method")]:
            client.answered.append(request)
            client.send(client.response(request, 200))
        client.auto_answer = True
        [response] = responses
        return response

    def shown(self, client):
        taken, client.answered[:] = list(client.answered), []
        return [(m.headers.get("from").split(";tag=")[0], m.body.decode()) for m in taken]


class PageModeTests(Base):
    def test_a_message_joins_and_says_and_others_see_who_spoke(self):
        alice, bob = self.registered("alice"), self.registered("bob")
        carol = self.s.memory_login("carol")
        self.successResultOf(self.s.core.api.join_room(carol, "lobby", "carol"))
        self.assertEqual(self.say(alice, "hello room").status, 200)
        self.assertEqual(self.shown(alice), [(f"\"alice\" <{ROOM}>", "* you are in #lobby as alice; /leave to leave")])
        said = [e for e in self.s.memory.received(carol, "chat") if e.action == "message"]
        self.assertEqual([(str(e.sender), e.text) for e in said], [("sip:alice@localhost", "hello room")])
        self.assertEqual(self.say(bob, "/join bobby").status, 200)
        self.shown(bob)
        self.successResultOf(self.s.core.api.room_message(carol, "lobby", "hi both"))
        for client in (alice, bob):
            self.assertEqual(self.shown(client), [(f"\"carol\" <{ROOM}>", "carol: hi both")])
        self.say(bob, "from bobby")
        self.assertEqual(self.shown(alice), [(f"\"bobby\" <{ROOM}>", "bobby: from bobby")])
        self.assertEqual(self.shown(bob), [])  # one's own words are not sent back
        self.assertEqual(self.say(bob, "/leave").status, 200)
        self.assertEqual([m["nick"] for m in self.s.core.api.room("lobby")["members"]], ["carol", "alice"])
        [message] = [e for e, _, _ in self.s.archived().values() if e.kind == "chat" and e.text == "hello room"]
        self.assertEqual(message.members, ("mem:carol", "sip:alice@localhost"))

    def test_refusals_are_sip_errors(self):
        alice = self.registered("alice")
        bad = self.say(alice, "hi", uri="sip:-nope@conference.localhost")
        self.assertEqual(bad.status, 400)
        self.s.core.rooms.rooms.clear()
        self.s.core.rooms.config = self.s.core.config.rooms.__class__(ad_hoc=False)
        refused = self.say(alice, "hi")
        self.assertEqual(refused.status, 403)
        self.assertIn("no room lobby", refused.headers.get("warning"))

    def test_unregistered_senders_are_told_to_register(self):
        alice = TcpClient(self.s, "alice")
        alice.send(alice.request("MESSAGE", ROOM, headers=[("Content-Type", "text/plain")], body=b"hi"))
        [challenge] = alice.take()
        self.assertEqual(challenge.status, 407)


class RenderTests(unittest.TestCase):
    def test_what_a_member_is_sent(self):
        me, other = Address.parse("sip:a@x"), Address.parse("line:b")

        def text(action, sender=other, **kw):
            return room_text(ChatEvent(sender, me, room="r", action=action, nick="b", **kw), me)

        self.assertEqual(text("message", text="hi"), "b: hi")
        self.assertIsNone(text("message", sender=me, text="hi"))
        self.assertEqual(text("history", text="old"), "[earlier] b: old")
        self.assertIsNone(text("join"))
        self.assertIsNone(text("leave"))
        self.assertEqual(text("kick", text="a\nrude"), "* a was put out of #r: rude")
        self.assertEqual(text("subject", text="plans"), "* subject of #r: plans")
        self.assertIsNone(text("subject", text=""))
