"""Multi-user chat (XEP-0045) on c2s streams, wire-exact where it matters: joins, talk, errors, disco, kicks."""

from twisted.trial import unittest

from tests.xmpp.test_protocol import Harness, stanzas

try:
    from gateway_xmpp.muc import NS_MUC, NS_MUC_USER
except ImportError:  # pragma: no cover
    raise unittest.SkipTest("the xmpp plugin is not installed: pip install ./plugins/xmpp")

ROOM = "lobby@conference.localhost"


def join(nick, room=ROOM):
    return f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>".encode()


def say(text, room=ROOM):
    return f"<message type='groupchat' to='{room}' id='g1'><body>{text}</body></message>".encode()


def condition(stanza):
    return stanza.error.firstChildElement().name


class MucTestCase(unittest.TestCase):
    core_config = ""

    def setUp(self):
        self.h = Harness(config={"rate": 1000, "burst": 1000}, core_config=self.core_config)

    def send(self, stream, data):
        return stanzas(self.h.send(stream, data))

    def logins(self, *names):
        """Streams logged in as ``names``, their output so far (each other's presence) cleared."""
        streams = [self.h.login(name) for name in names]
        for stream in streams:
            stream.transport.clear()
        return streams if len(streams) > 1 else streams[0]

    def seen(self, stream):
        out = stanzas(stream.transport.value())
        stream.transport.clear()
        return out


class JoinAndTalkTests(MucTestCase):
    def test_two_clients_join_talk_and_leave(self):
        alice, bob = self.logins("alice", "bob")
        own, subject = self.send(alice, join("al"))
        self.assertEqual((own.name, own["from"], own["to"]), ("presence", f"{ROOM}/al", "alice@localhost/home"))
        codes = [s["code"] for s in own.x.elements(NS_MUC_USER, "status")]
        self.assertEqual(codes, ["110"])
        self.assertEqual((subject.name, subject["type"], str(subject.subject)), ("message", "groupchat", ""))
        other, own, subject = self.send(bob, join("bobby"))
        self.assertEqual((other["from"], own["from"]), (f"{ROOM}/al", f"{ROOM}/bobby"))
        self.assertEqual(list(other.x.elements(NS_MUC_USER, "status")), [])
        [seen] = self.seen(alice)
        self.assertEqual((seen.name, seen["from"]), ("presence", f"{ROOM}/bobby"))

        reflected, = self.send(alice, say("hello &amp; welcome"))
        self.assertEqual((reflected["from"], str(reflected.body)), (f"{ROOM}/al", "hello & welcome"))
        [got] = self.seen(bob)
        self.assertEqual((got["type"], got["from"], got["to"], str(got.body)),
                         ("groupchat", f"{ROOM}/al", "bob@localhost/home", "hello & welcome"))
        [message] = [e for e in self.h.core.archive.events("chat") if e.action == "message"]
        self.assertEqual((str(message.sender), message.nick, message.members),
                         ("xmpp:alice@localhost", "al", ("xmpp:alice@localhost", "xmpp:bob@localhost")))
        self.assertEqual(got["id"], message.id)

        # Subject, then leave: everyone sees both.
        self.send(alice, f"<message type='groupchat' to='{ROOM}'><subject>plans</subject></message>".encode())
        [topic] = self.seen(bob)
        self.assertEqual((topic["from"], str(topic.subject)), (f"{ROOM}/al", "plans"))
        left, = self.send(bob, f"<presence type='unavailable' to='{ROOM}/bobby'/>".encode())
        self.assertEqual((left["type"], [s["code"] for s in left.x.elements(NS_MUC_USER, "status")]),
                         ("unavailable", ["110"]))
        [gone] = self.seen(alice)
        self.assertEqual((gone["from"], gone["type"]), (f"{ROOM}/bobby", "unavailable"))

        # A late joiner gets the history with its delay, then the subject.
        carol = self.logins("carol")
        *_, history, topic = self.send(carol, join("carol"))
        self.assertEqual((str(history.body), history.delay["from"]), ("hello & welcome", ROOM))
        self.assertEqual(str(topic.subject), "plans")

    def test_a_closed_stream_leaves_its_rooms(self):
        alice, bob = self.logins("alice", "bob")
        self.send(alice, join("al")), self.send(bob, join("bob"))
        self.seen(alice)
        bob.connectionLost(None)
        [gone] = [s for s in self.seen(alice) if s["from"].startswith(ROOM)]
        self.assertEqual((gone["from"], gone["type"]), (f"{ROOM}/bob", "unavailable"))
        self.assertEqual(list(self.h.connector.muc.nicks.values()), ["al"])  # bob's stream is forgotten

    def test_a_join_split_at_every_byte_is_one_join(self):
        alice = self.logins("alice")
        data = join("al")
        for i in range(len(data)):
            alice.dataReceived(data[i:i + 1])
        own, subject = self.seen(alice)
        self.assertEqual(own["from"], f"{ROOM}/al")
        self.assertEqual(len([e for e in self.h.core.archive.events("chat") if e.action == "join"]), 1)

    def test_an_invitation_and_a_kick(self):
        alice, bob, carol = self.logins("alice", "bob", "carol")
        self.send(alice, join("al")), self.send(bob, join("bob"))
        self.seen(alice)
        self.send(alice, (f"<message to='{ROOM}'><x xmlns='{NS_MUC_USER}'><invite to='carol@localhost'>"
                          f"<reason>come in</reason></invite></x></message>").encode())
        [invite] = self.seen(carol)
        self.assertEqual((invite["from"], invite.x.invite["from"], str(invite.x.invite.reason)),
                         (ROOM, "alice@localhost", "come in"))
        kick = (f"<iq type='set' id='k1' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>"
                f"<item nick='{{}}' role='none'><reason>enough</reason></item></query></iq>")
        # bob does not own the room; alice made it.
        [refused] = self.send(bob, kick.format("al").encode())
        self.assertEqual((refused["type"], condition(refused)), ("error", "forbidden"))
        answers = self.send(alice, kick.format("bob").encode())
        self.assertEqual([(a.name, a.getAttribute("type")) for a in answers], [("presence", "unavailable"),
                                                                               ("iq", "result")])
        [out] = self.seen(bob)
        self.assertEqual([s["code"] for s in out.x.elements(NS_MUC_USER, "status")], ["110", "307"])
        self.assertEqual(str(out.x.item.reason), "enough")


class ErrorTests(MucTestCase):
    core_config = """
[rooms]
max_subject = 8
joins_per_minute = 4
"""

    def test_bad_requests_get_xmpp_errors(self):
        alice, bob = self.logins("alice", "bob")
        [error] = self.send(alice, f"<presence to='{ROOM}'/>".encode())
        self.assertEqual(condition(error), "jid-malformed")
        [error] = self.send(alice, say("nobody made it"))
        self.assertEqual((error["type"], condition(error)), ("error", "item-not-found"))
        self.send(alice, join("al"))
        [error] = self.send(bob, say("not in it"))
        self.assertEqual((error["type"], condition(error)), ("error", "not-acceptable"))
        [error] = self.send(bob, join("al"))
        self.assertEqual((error["type"], condition(error), error.x.uri), ("error", "conflict", NS_MUC))
        [error] = self.send(alice, f"<message type='groupchat' to='{ROOM}'><subject>far too long</subject>"
                                   f"</message>".encode())
        self.assertEqual(condition(error), "not-acceptable")
        [error] = self.send(alice, f"<message type='chat' to='{ROOM}/bob'><body>psst</body></message>".encode())
        self.assertEqual(condition(error), "not-acceptable")
        private = [e for e in self.h.core.archive.events("chat") if e.text == "psst"]
        self.assertEqual(self.h.core.archive.status(private[0].id), "rejected")
        [error] = self.send(bob, join("al", room="-bad@conference.localhost"))
        self.assertEqual(condition(error), "jid-malformed")
        for n in range(3):  # with the refused join as "al": four, the most a minute here
            self.send(bob, join(f"b{n}", room=f"r{n}@conference.localhost"))
        [error] = self.send(bob, join("b", room="r9@conference.localhost"))
        self.assertEqual(condition(error), "resource-constraint")
        [error] = self.send(alice, f"<iq type='get' id='o1' to='{ROOM}'><query "
                                   f"xmlns='http://jabber.org/protocol/muc#owner'/></iq>".encode())
        self.assertEqual(condition(error), "feature-not-implemented")

    def test_before_initial_presence_no_room(self):
        alice = self.h.login("alice", available=False)
        [error] = self.send(alice, join("al"))
        self.assertEqual(condition(error), "not-authorized")


class DiscoTests(MucTestCase):
    def test_the_service_and_its_rooms_are_discoverable(self):
        alice = self.h.login("alice")
        [items] = self.send(alice, b"<iq type='get' id='d1' to='localhost'>"
                                   b"<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.assertEqual([i["jid"] for i in items.query.elements()], ["conference.localhost"])
        [info] = self.send(alice, b"<iq type='get' id='d2' to='conference.localhost'>"
                                  b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertEqual(info.query.identity["category"], "conference")
        self.assertIn(NS_MUC, [f["var"] for f in info.query.elements() if f.name == "feature"])
        [error] = self.send(alice, f"<iq type='get' id='d3' to='{ROOM}'>"
                                   f"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode())
        self.assertEqual(condition(error), "item-not-found")
        self.send(alice, join("al"))
        [items] = self.send(alice, b"<iq type='get' id='d4' to='conference.localhost'>"
                                   b"<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        self.assertEqual([i["jid"] for i in items.query.elements()], [ROOM])
        [info] = self.send(alice, f"<iq type='get' id='d5' to='{ROOM}'>"
                                  f"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode())
        features = [f["var"] for f in info.query.elements() if f.name == "feature"]
        self.assertIn("muc_temporary", features)
        [pong] = self.send(alice, f"<iq type='get' id='p1' to='{ROOM}/al'><ping xmlns='urn:xmpp:ping'/></iq>".encode())
        self.assertEqual(pong["type"], "result")

    def test_rooms_can_be_turned_off(self):
        self.h = Harness(config={"muc_domain": "-"})
        alice = self.h.login("alice")
        out = self.h.send(alice, say("hello"))
        self.assertIn(b"not-allowed", out)
        [chat] = self.h.core.archive.events("chat")
        self.assertEqual(self.h.core.archive.status(chat.id), "rejected")


class LoginRaceTests(MucTestCase):
    def test_a_join_sent_while_the_login_is_under_way_waits_for_it(self):
        alice = self.h.login("alice", available=False)
        alice.logging_in = True  # as between the initial presence and the session it makes
        self.assertEqual(self.send(alice, join("al")), [])
        alice.logging_in = False
        shown = self.send(alice, b"<presence/>")
        self.assertEqual([(s.name, s.getAttribute("from")) for s in shown][-2:],
                         [("presence", f"{ROOM}/al"), ("message", ROOM)])
