"""Rooms on the one path: joins, messages, subjects, leaves and kicks decided, recorded once, then shown to members."""

import json
import os
import tempfile
import time

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gateway.model import Address, ChatEvent
from gateway.rooms import Room, RoomError, RoomStore, check_name, room_address
from gateway.testing import MemoryDirectory, make_core

try:
    from gateway_example.line import LineConnector, LineProtocol
except ImportError:  # pragma: no cover - the README's test command installs it
    raise unittest.SkipTest("the example plugin distribution is not installed: pip install ./examples/gateway-example-plugin")


WALL = """
[[compliance.wall]]
name = "research-sales"
between = ["group:research", "group:sales"]
notice = "Research and sales may not talk."
"""


class RoomTestCase(unittest.TestCase):
    config = ""

    def setUp(self):
        self.clock = task.Clock()
        self.directory = MemoryDirectory()
        for name, groups in (("alice", ("research",)), ("bob", ()), ("carol", ("sales",)), ("dan", ())):
            self.directory.add(name, f"line:{name}", groups=groups)
        self.core = make_core(self.config, directory=self.directory, clock=self.clock)
        self.breaches = []
        self.core.walls.breached = lambda event, wall, sender, recipient: self.breaches.append(wall.name)
        self.line = LineConnector(self.core.api, {"listen": [], "idle_timeout": 600, "rate": 1000})
        self.core.connectors["line"] = self.line
        self.archive = self.core.archive
        self.clients = {}

    def client(self, name):
        protocol = LineProtocol(self.line)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(f"LOGIN {name} secret\n".encode())
        self.assertIsNotNone(protocol.session, protocol.transport.value())
        protocol.transport.clear()
        self.clients[name] = protocol
        return protocol

    def say(self, who, line):
        """Send ``line`` as ``who``; the lines it was shown, its answer last."""
        protocol = self.clients[who]
        protocol.transport.clear()
        protocol.dataReceived(line.encode() + b"\n")
        return self.seen(who)

    def seen(self, who):
        protocol = self.clients[who]
        lines = protocol.transport.value().decode().splitlines()
        protocol.transport.clear()
        return lines

    def slow_archive(self):
        """Room events wait for their durable row until `recorded` (as with a busy archive writer)."""
        from twisted.internet.defer import Deferred

        waiting, record = [], self.archive.record

        def slow(event, verdict, outcome=None, **kwargs):
            if kwargs.get("wait") and event.kind == "chat":
                d = Deferred()
                waiting.append((d, lambda: record(event, verdict, outcome, **kwargs)))
                return d
            return record(event, verdict, outcome, **kwargs)

        self.archive.record = slow
        return waiting

    @staticmethod
    def recorded(waiting):
        """Let the rows waiting (and those that come meanwhile) be recorded, in order."""
        while waiting:
            d, record = waiting.pop(0)
            record()
            d.callback(None)

    def chat_rows(self, action=None):
        return [(event, verdict, status) for event, verdict, status in self.archive.rows.values()
                if event.kind == "chat" and (action is None or event.action == action)]


class ConversationTests(RoomTestCase):
    def test_two_people_chat_in_a_room(self):
        self.client("alice"), self.client("bob")
        joined = self.say("alice", "JOIN #lobby")
        self.assertEqual(joined[0], "ROOM #lobby JOIN alice line:alice")
        self.assertTrue(joined[-1].startswith("OK delivered"), joined)
        shown = self.say("bob", "JOIN #lobby bobby")
        self.assertEqual(shown[:2], ["ROOM #lobby JOIN alice line:alice", "ROOM #lobby JOIN bobby line:bob"])
        # The subject always ends what a join shows (empty here).
        self.assertEqual(shown[2:], ["ROOM #lobby SUBJECT", f"OK delivered {self.chat_rows('join')[-1][0].id}"])
        self.assertEqual(self.seen("alice"), ["ROOM #lobby JOIN bobby line:bob"])

        said = self.say("alice", "SAY #lobby hello, room")
        self.assertEqual(said[0], "ROOM #lobby MSG alice hello, room")
        self.assertTrue(said[1].startswith("OK delivered"))
        self.assertEqual(self.seen("bob"), ["ROOM #lobby MSG alice hello, room"])

        # Recorded once, with the room and who was in it.
        messages = self.chat_rows("message")
        self.assertEqual(len(messages), 1)
        event, verdict, status = messages[0]
        self.assertEqual((event.room, event.text, event.nick, status), ("lobby", "hello, room", "alice", "delivered"))
        self.assertEqual(event.members, ("line:alice", "line:bob"))
        self.assertEqual(event.recipient, room_address("lobby"))
        self.assertTrue(verdict.allowed)
        self.assertEqual(len(self.chat_rows("join")), 2)

    def test_a_message_sent_right_after_a_join_waits_for_it(self):
        waiting = self.slow_archive()
        self.client("alice"), self.client("bob")
        self.assertEqual(self.say("bob", "JOIN #lobby\nSAY #lobby right away\nPART #lobby"), [])
        self.assertEqual(len(waiting), 1)  # only the join is on the path; the rest waits for it, in order
        self.recorded(waiting)
        shown = self.seen("bob")
        self.assertEqual([line.split(" ")[0] for line in shown if line.startswith(("OK", "ERR"))], ["OK"] * 3, shown)
        self.assertEqual([e.action for e, _, _ in self.chat_rows()], ["join", "message", "leave"])

    def test_late_joiner_sees_history_and_subject(self):
        self.client("alice"), self.client("bob")
        self.say("alice", "JOIN #lobby")
        self.say("alice", "SAY #lobby first")
        self.say("alice", "TOPIC #lobby quarterly numbers")
        shown = self.say("bob", "JOIN #lobby")
        self.assertEqual(shown[:4], ["ROOM #lobby JOIN alice line:alice", "ROOM #lobby JOIN bob line:bob",
                                     "ROOM #lobby HISTORY alice first", "ROOM #lobby SUBJECT quarterly numbers"])
        self.assertEqual(self.chat_rows("subject")[0][0].text, "quarterly numbers")

    def test_leave_and_disconnect_are_told_and_an_ad_hoc_room_ends_with_its_last_member(self):
        self.client("alice"), self.client("bob")
        self.say("alice", "JOIN #lobby"), self.say("bob", "JOIN #lobby")
        self.seen("alice")
        left = self.say("bob", "PART #lobby")
        self.assertEqual(left[0], "ROOM #lobby LEAVE bob line:bob")
        self.assertEqual(self.seen("alice"), ["ROOM #lobby LEAVE bob line:bob"])
        self.assertEqual(self.say("bob", "SAY #lobby still here?")[-1], "ERR policy not in room lobby")
        self.clients["alice"].connectionLost(None)
        self.assertNotIn("lobby", self.core.rooms.rooms)
        leaves = self.chat_rows("leave")
        self.assertEqual(sorted(str(e.sender) for e, _, _ in leaves), ["line:alice", "line:bob"])
        self.assertEqual([e.text for e, _, _ in leaves if str(e.sender) == "line:alice"], ["session ended"])

    def test_second_session_of_a_member_is_shown_the_room_and_nobody_is_told(self):
        self.client("alice"), self.client("bob")
        self.say("alice", "JOIN #lobby"), self.say("bob", "JOIN #lobby")
        self.seen("alice")
        second = LineProtocol(self.line)
        second.makeConnection(StringTransport())
        second.dataReceived(b"LOGIN bob secret\nJOIN #lobby\n")
        self.assertIn("ROOM #lobby JOIN alice line:alice", second.transport.value().decode())
        self.assertEqual(self.seen("alice"), [])
        self.say("alice", "SAY #lobby both of you")
        self.assertEqual(self.seen("bob"), ["ROOM #lobby MSG alice both of you"])
        self.assertIn("ROOM #lobby MSG alice both of you", second.transport.value().decode())
        second.dataReceived(b"PART #lobby\n")
        self.assertEqual(self.seen("alice"), [])  # bob is still in it from his first session
        self.assertEqual(self.core.api.room("lobby")["members"][1]["sessions"], 1)

    def test_invite_goes_to_the_person_as_a_decided_event(self):
        self.client("alice"), self.client("bob")
        self.assertTrue(self.say("alice", "INVITE #lobby line:bob come")[-1].startswith("ERR not-member"))
        self.say("alice", "JOIN #lobby")
        self.assertTrue(self.say("alice", "INVITE #lobby line:bob come in")[-1].startswith("OK delivered"))
        self.assertEqual(self.seen("bob"), ["INVITE #lobby line:alice come in"])
        self.assertEqual(len(self.chat_rows("invite")), 2)  # the refused one too

    def test_kick_by_the_owner_only(self):
        self.client("alice"), self.client("bob")
        self.say("alice", "JOIN #lobby"), self.say("bob", "JOIN #lobby")
        self.assertEqual(self.say("bob", "KICK #lobby alice go")[-1],
                         "ERR policy only the owner of room lobby puts people out of it")
        kicked = self.say("alice", "KICK #lobby bob enough")
        self.assertEqual(kicked[0], "ROOM #lobby KICK bob enough")
        self.assertEqual(self.seen("bob"), ["ROOM #lobby KICK bob enough"])
        self.assertEqual([m["nick"] for m in self.core.api.room("lobby")["members"]], ["alice"])

    def test_a_nickname_with_spaces_can_be_put_out(self):
        self.client("alice"), self.client("bob")
        self.say("alice", "JOIN #lobby"), self.say("bob", "JOIN #lobby big bob")
        outcome = self.successResultOf(self.core.api.room_kick(self.clients["alice"].session, "lobby", "big bob",
                                                               "too loud"))
        self.assertTrue(outcome.delivered, outcome)
        self.assertEqual(self.seen("bob")[-1], "ROOM #lobby KICK big bob too loud")
        [kick] = self.chat_rows("kick")
        self.assertEqual(kick[0].text, "big bob\ntoo loud")
        self.assertEqual([m["nick"] for m in self.core.api.room("lobby")["members"]], ["alice"])


class RefusalTests(RoomTestCase):
    config = WALL + """
[rooms]
joins_per_minute = 3
max_subject = 10
max_members = 3
"""

    def test_a_wall_keeps_a_walled_person_out_of_the_room(self):
        self.client("alice"), self.client("carol")
        self.say("alice", "JOIN #lobby")
        self.assertEqual(self.say("carol", "JOIN #lobby"), ["ERR policy Research and sales may not talk."])
        self.assertEqual(self.seen("alice"), [])
        self.assertEqual(self.breaches, ["research-sales"])
        refused = [row for row in self.chat_rows("join") if str(row[0].sender) == "line:carol"]
        self.assertEqual(refused[0][1].rule, "wall:research-sales")
        self.assertEqual(refused[0][2], "rejected")
        self.assertEqual(refused[0][0].members, ("line:alice",))

    def test_walled_people_joining_at_once_do_not_both_get_in(self):
        # Both joins are decided before either is recorded (the durable archive is slow): the door asks again.
        waiting = self.slow_archive()
        self.client("alice"), self.client("carol")
        self.assertEqual(self.say("alice", "JOIN #lobby"), [])
        self.assertEqual(self.say("carol", "JOIN #lobby"), [])
        self.recorded(waiting)
        self.assertTrue(self.seen("alice")[-1].startswith("OK delivered"))
        answer = self.seen("carol")
        self.assertEqual(answer[-1].split(" ", 2)[:2], ["ERR", "delivery-failed"])
        self.assertIn("Research and sales may not talk.", answer[-1])
        self.assertEqual([m["nick"] for m in self.core.api.room("lobby")["members"]], ["alice"])

    def test_bad_input_gets_a_clear_answer(self):
        self.client("alice"), self.client("bob")
        self.assertEqual(self.say("alice", "JOIN #no/slash")[-1].split(" ", 2)[:2], ["ERR", "bad-room"])
        self.assertEqual(self.say("alice", "SAY #nowhere hi"), ["ERR policy no room nowhere"])
        self.say("alice", "JOIN #lobby")
        self.assertEqual(self.say("alice", "TOPIC #lobby far too long a subject"),
                         ["ERR policy a subject is at most 10 characters"])
        self.assertEqual(self.say("bob", "JOIN #lobby alice"), ["ERR policy the nickname 'alice' is taken in room lobby"])
        self.assertEqual(self.say("bob", "SAY #lobby sneaking in"), ["ERR policy not in room lobby"])
        self.assertEqual(self.chat_rows("message")[0][2], "rejected")  # refused, and recorded as such

    def test_join_flood_and_full_room(self):
        self.client("alice")
        for _ in range(3):
            self.assertTrue(self.say("alice", "JOIN #one")[-1].startswith("OK"))
        self.assertEqual(self.say("alice", "JOIN #two"), ["ERR policy too many joins: at most 3 a minute"])
        self.clock.advance(60)
        self.assertTrue(self.say("alice", "JOIN #two")[-1].startswith("OK"))
        for name in ("bob", "dan"):
            self.client(name)
            self.say(name, "JOIN #two")
        self.client("carol")
        self.assertEqual(self.say("carol", "JOIN #two"), ["ERR policy room two is full (3 members)"])


class RuleTests(RoomTestCase):
    config = """
[rooms]
ad_hoc = false

[[policy.rule]]
name = "no-secret-room"
action = "deny"
to = ["room:secret"]
reason = "that room is closed to chat"

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
reason = "bob may not write to carol"
"""

    def test_rooms_follow_the_rules_and_the_config(self):
        self.client("alice")
        self.assertEqual(self.say("alice", "JOIN #lobby"), ["ERR policy no room lobby"])
        for name in ("secret", "open"):
            self.core.rooms.rooms[name] = Room(name=name, persistent=True)
        self.assertEqual(self.say("alice", "JOIN #secret"), ["ERR policy that room is closed to chat"])
        self.assertTrue(self.say("alice", "JOIN #open")[-1].startswith("OK delivered"))
        self.core.rooms.rooms["open"].members.clear()
        self.core.rooms.rooms["open"].networks = ("xmpp",)
        self.assertEqual(self.say("alice", "JOIN #open"), ["ERR policy room open is for users of xmpp"])

    def test_two_people_a_rule_keeps_apart_do_not_share_a_room_either_way(self):
        for name in ("alice", "bob", "carol"):
            self.client(name)
        self.core.rooms.rooms["one"] = Room(name="one", persistent=True)
        self.core.rooms.rooms["two"] = Room(name="two", persistent=True)
        self.assertTrue(self.say("carol", "JOIN #one")[-1].startswith("OK delivered"))
        self.assertEqual(self.say("bob", "JOIN #one"), ["ERR policy bob may not write to carol"])
        self.assertTrue(self.say("bob", "JOIN #two")[-1].startswith("OK delivered"))
        self.assertEqual(self.say("carol", "JOIN #two"), ["ERR policy bob may not write to carol"])
        self.assertTrue(self.say("alice", "JOIN #two")[-1].startswith("OK delivered"))
        refused = [(str(e.sender), v.rule, status) for e, v, status in self.chat_rows("join") if status == "rejected"]
        self.assertEqual(refused, [("line:bob", "no-bob-to-carol", "rejected"), ("line:carol", "no-bob-to-carol",
                                                                                   "rejected")])

    def test_people_outside_the_directory_only_where_the_room_allows(self):
        from gateway.policy.rules import Side

        room = self.core.rooms.rooms["staff"] = Room(name="staff", external=False, persistent=True)
        event = self.core.rooms.event(Address("line", "stranger"), "staff", "join")
        self.assertEqual(self.core.rooms.check(event, Side(event.sender, None)).rule, "rooms:external")
        room.external = True
        self.assertIsNone(self.core.rooms.check(event, Side(event.sender, None)))


class NameTests(unittest.TestCase):
    def test_names(self):
        self.assertEqual(check_name("#Lobby".lstrip("#")), "lobby")
        for bad in ("", "-x", "a b", "x" * 65, "é", "a/b"):
            self.assertRaises(RoomError, check_name, bad)
        self.assertEqual(str(room_address("Desk-1")), "room:desk-1")

    def test_model_keeps_members_as_a_tuple(self):
        event = ChatEvent("line:a", "room:x", room="x", action="message", members=["line:a", "line:b"])
        self.assertEqual(event.members, ("line:a", "line:b"))


class StoreTests(unittest.TestCase):
    def test_persistent_rooms_survive_a_restart(self):
        from gateway.storage import db

        folder = tempfile.mkdtemp()
        engine = db.create_engine(f"sqlite:///{os.path.join(folder, 'g.sqlite')}")
        db.migrate(engine)
        store = RoomStore(engine)
        store.save(Room(name="desk", subject="hello", owner="alice", networks=("xmpp", "line"), external=False,
                        created=5.0))
        store.save(Room(name="desk", subject="changed", owner="alice", networks=("xmpp", "line"), external=False,
                        created=5.0))
        [room] = store.load()
        self.assertEqual((room.name, room.subject, room.networks, room.external, room.persistent),
                         ("desk", "changed", ("xmpp", "line"), False, True))
        self.assertTrue(store.delete("desk"))
        self.assertEqual(store.load(), [])
        engine.dispose()


GATEWAY_CONFIG = """
[gateway]
node = "rooms-node"
data_dir = "var"

[archive]
chain = true

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class GatewayctlRoomTests(unittest.TestCase):
    """A running ``twistd gateway``: an operator makes a room, people chat in it, a reviewer finds it in the archive."""

    timeout = 180

    def test_a_room_from_gatewayctl_to_the_archive(self):
        from tests.gateway_process import Gateway, LineClient
        from tests.support import free_port

        admin, line = free_port(), free_port()
        config = GATEWAY_CONFIG.format(admin=admin, line=line)
        gateway = Gateway(self, config, wait_ports=(admin, line))
        made = gateway.gatewayctl("rooms", "create", "desk", "--subject", "the trading desk", "--owner", "alice")
        self.assertEqual(made, "room desk made (room:desk)\n")
        self.assertIn("exists", gateway.ctl("rooms", "create", "desk").stderr)
        alice, bob = LineClient(line, "alice"), LineClient(line, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        alice.send("JOIN #desk")
        self.assertEqual(alice.expect("ROOM #desk SUBJECT"), "ROOM #desk SUBJECT the trading desk")
        alice.expect("OK delivered")
        bob.send("JOIN #desk")
        self.assertEqual(alice.expect("ROOM #desk JOIN"), "ROOM #desk JOIN bob line:bob")
        bob.expect("OK delivered")
        bob.send("SAY #desk buying 100 at 42")
        self.assertEqual(alice.expect("ROOM #desk MSG"), "ROOM #desk MSG bob buying 100 at 42")
        bob.expect("OK delivered")
        members = gateway.gatewayctl("rooms", "members", "desk", "--json")
        self.assertEqual([json.loads(m)["address"] for m in members.splitlines()], ["line:alice", "line:bob"])
        listed = gateway.gatewayctl("rooms", "list")
        self.assertIn("desk", listed)
        self.assertIn("the trading desk", listed)

        # The reviewer's view: everything done in the room, in order, with who was there.
        deadline = time.time() + 10
        while True:
            found = json.loads(gateway.gatewayctl("archive", "search", "--room", "desk", "--json"))
            if len(found) >= 3 or time.time() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual([(e["sender"], e["recipient"], e["thread"], e["chat"]["action"]) for e in found],
                         [("line:alice", "room:desk", "desk", "join"), ("line:bob", "room:desk", "desk", "join"),
                          ("line:bob", "room:desk", "desk", "message")])
        self.assertEqual(found[2]["chat"]["members"], ["line:alice", "line:bob"])
        self.assertEqual(found[2]["text"], "buying 100 at 42")
        table = gateway.gatewayctl("archive", "search", "--room", "desk")
        self.assertIn("[join bob]", table)
        self.assertIn("3 event(s)", table)

        # Closing the room puts both out; the room is gone; the record verifies.
        closed = gateway.gatewayctl("rooms", "remove", "desk", "--reason", "desk closed")
        self.assertEqual(closed, "room desk closed; 2 member(s) put out\n")
        self.assertEqual(alice.expect("ROOM #desk KICK"), "ROOM #desk KICK alice desk closed")
        self.assertEqual(bob.expect("ROOM #desk KICK alice"), "ROOM #desk KICK alice desk closed")
        self.assertEqual(gateway.gatewayctl("rooms", "list"), "no rooms\n")
        verified = gateway.ctl("archive", "verify")
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        self.assertEqual(gateway.tracebacks(), [])

    def test_a_kept_room_is_there_after_a_restart(self):
        from tests.gateway_process import Gateway
        from tests.support import free_port

        admin, line = free_port(), free_port()
        gateway = Gateway(self, GATEWAY_CONFIG.format(admin=admin, line=line), wait_ports=(admin, line))
        gateway.gatewayctl("rooms", "create", "kept", "--subject", "still here", "--network", "line")
        gateway.restart(wait_ports=(admin, line))
        [room] = [json.loads(text) for text in gateway.gatewayctl("rooms", "list", "--json").splitlines()]
        self.assertEqual((room["room"], room["subject"], room["networks"], room["persistent"]),
                         ("kept", "still here", ["line"], True))
