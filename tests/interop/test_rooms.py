"""
Rooms shared across networks, with real clients: slixmpp's multi-user chat
(XEP-0045), libpurple's XMPP client in BitlBee joining the room as an IRC
channel, and a line client, all in one gateway room; every message appears
once for every member and once in the archive with its room.
"""

import asyncio
import json
import shutil
import socket

try:
    import slixmpp
    import slixmpp.exceptions
except ImportError:  # pragma: no cover - CI installs it; GatewayCase skips without it
    slixmpp = None

from twisted.trial import unittest

from tests.interop.test_xmpp import CONFIG, GatewayCase, have_line, jabber_in_bitlbee
from tests.xmpp import peers

ROOM = "lobby@conference.localhost"
# The XMPP tests' config without its rule keeping bob from writing to carol: here they share a room
# (a rule between two people keeps them out of one room; tests/test_rooms.py tests that).
ROOM_CONFIG = CONFIG.replace('''[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
''', "")
assert ROOM_CONFIG != CONFIG


def muc_client(who, port, tls=True):
    client = peers.slixmpp_client(f"{who}@localhost/muc", "secret", port, tls=tls)
    client.register_plugin("xep_0045")
    client.groupchat = []
    client.add_event_handler("groupchat_message", lambda m: client.groupchat.append(
        (m["from"].resource, m["body"], bool(m["delay"]["stamp"])) if m["body"] else None))
    client.occupants = []
    client.add_event_handler(f"muc::{ROOM}::got_online", lambda p: client.occupants.append(p["from"].resource))
    client.gone = []
    client.add_event_handler(f"muc::{ROOM}::got_offline", lambda p: client.gone.append(p["from"].resource))
    return client


class SlixmppRoomTests(GatewayCase):
    line = True
    config_text = ROOM_CONFIG

    def setUp(self):
        if not have_line():
            raise unittest.SkipTest("the example plugin (line connector) is not installed: "
                                    "pip install ./examples/gateway-example-plugin")
        super().setUp()

    def test_slixmpp_and_line_users_share_a_room(self):
        from tests.gateway_process import LineClient

        line = LineClient(self.line_port, "carol")
        self.addCleanup(line.close)
        line.send("JOIN #lobby")
        line.expect("OK delivered")
        line.send("SAY #lobby before anyone came")
        line.expect("OK delivered")

        async def scenario():
            loop = asyncio.get_running_loop()
            alice, bob = muc_client("alice", self.tls), muc_client("bob", self.tls)
            try:
                await peers.start(alice)
                await peers.start(bob)
                # The service is discoverable.
                items = await alice["xep_0030"].get_items(jid="localhost")
                self.assertIn("conference.localhost", [str(i[0]) for i in items["disco_items"]["items"]])
                await alice["xep_0045"].join_muc_wait(ROOM, "alice", timeout=15)
                await peers.until(lambda: "carol" in alice.occupants, what="alice sees carol (line) in the room")
                # History: what carol said before alice came, with its delay.
                await peers.until(lambda: ("carol", "before anyone came", True) in alice.groupchat,
                                  what="the room's history")
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby JOIN alice"),
                                 "ROOM #lobby JOIN alice xmpp:alice@localhost")
                # A nickname in use is refused with the MUC conflict error (and archived as refused).
                with self.assertRaises(slixmpp.exceptions.PresenceError) as refused:
                    await bob["xep_0045"].join_muc_wait(ROOM, "carol", timeout=10)
                self.assertEqual(refused.exception.condition, "conflict")
                await bob["xep_0045"].join_muc_wait(ROOM, "bobby", timeout=15)
                await peers.until(lambda: "bobby" in alice.occupants, what="alice sees bob join")
                alice.send_message(mto=ROOM, mbody="hello from xmpp \u00e9", mtype="groupchat")
                await peers.until(lambda: ("alice", "hello from xmpp \u00e9", False) in bob.groupchat,
                                  what="bob gets alice's room message")
                # Reflected to the sender, as MUC clients expect.
                await peers.until(lambda: ("alice", "hello from xmpp \u00e9", False) in alice.groupchat,
                                  what="alice's own message reflected")
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby MSG alice"),
                                 "ROOM #lobby MSG alice hello from xmpp \u00e9")
                line.send("SAY #lobby and hello from the line")
                for client in (alice, bob):
                    await peers.until(lambda c=client: ("carol", "and hello from the line", False) in c.groupchat,
                                      what="the line message in both XMPP clients")
                alice["xep_0045"].set_subject(ROOM, "today: the launch")
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby SUBJECT today"),
                                 "ROOM #lobby SUBJECT today: the launch")
                bob["xep_0045"].leave_muc(ROOM, "bobby")
                await peers.until(lambda: "bobby" in alice.gone, what="alice sees bob leave")
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby LEAVE bobby"),
                                 "ROOM #lobby LEAVE bobby xmpp:bob@localhost")
                # Each message appeared once for each member.
                self.assertEqual([m for m in bob.groupchat if m and m[1] == "hello from xmpp \u00e9"],
                                 [("alice", "hello from xmpp \u00e9", False)])
            finally:
                await peers.stop(alice, bob)

        peers.run(scenario(), timeout=90)
        found = json.loads(self.gateway.gatewayctl("archive", "search", "--room", "lobby", "--json"))
        said = [(e["sender"], e["text"], e["chat"]["members"]) for e in found if e["chat"]["action"] == "message"]
        self.assertEqual(said, [
            ("line:carol", "before anyone came", ["line:carol"]),
            ("xmpp:alice@localhost", "hello from xmpp \u00e9",
             ["line:carol", "xmpp:alice@localhost", "xmpp:bob@localhost"]),
            ("line:carol", "and hello from the line", ["line:carol", "xmpp:alice@localhost", "xmpp:bob@localhost"]),
        ])
        refused = [e for e in found if e["chat"]["action"] == "join" and e["status"] == "rejected"]
        self.assertEqual([e["rule"] for e in refused], ["rooms:nick"])


class BitlBeeRoomTests(GatewayCase):
    line = True
    config_text = ROOM_CONFIG

    def setUp(self):
        if shutil.which("bitlbee") is None:
            raise unittest.SkipTest("bitlbee is not installed (Debian bitlbee-libpurple)")
        if not have_line():
            raise unittest.SkipTest("the example plugin (line connector) is not installed")
        super().setUp()

    def test_libpurple_joins_the_room_as_an_irc_channel(self):
        from tests.gateway_process import LineClient

        line = LineClient(self.line_port, "carol")
        self.addCleanup(line.close)
        line.send("JOIN #lobby")
        line.expect("OK delivered")
        bee = jabber_in_bitlbee(self, self.plain)
        bee.root(f"chat add jabber {ROOM} #lobby")
        bee.expect(lambda l: "Chatroom successfully added" in l, 10, "the chat added")
        bee.send("JOIN #lobby")
        bee.expect(lambda l: " JOIN " in l and "#lobby" in l and l.startswith(":alice"), 20, "alice in #lobby")
        self.assertEqual(line.expect("ROOM #lobby JOIN alice"), "ROOM #lobby JOIN alice xmpp:alice@localhost")
        line.send("SAY #lobby hello libpurple")
        got = bee.expect(lambda l: "PRIVMSG #lobby" in l and "hello libpurple" in l, 15, "the line message in IRC")
        self.assertTrue(got.startswith(":carol"), got)
        bee.send("PRIVMSG #lobby :hello line")
        self.assertEqual(line.expect("ROOM #lobby MSG alice"), "ROOM #lobby MSG alice hello line")
        bee.send("PART #lobby")
        self.assertEqual(line.expect("ROOM #lobby LEAVE alice"), "ROOM #lobby LEAVE alice xmpp:alice@localhost")
        found = json.loads(self.gateway.gatewayctl("archive", "search", "--room", "lobby", "--json"))
        said = [(e["sender"], e["text"]) for e in found if e["chat"]["action"] == "message"]
        self.assertEqual(said, [("line:carol", "hello libpurple"), ("xmpp:alice@localhost", "hello line")])


OSCAR_ROOM_CONFIG = """
[gateway]
node = "oscarrooms"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.oscar]
listen = ["tcp:5190:interface={host}"]
bos_address = "{host}:5190"

[connectors.xmpp]
listen = ["tcp:{xmpp}:interface=127.0.0.1"]
require_tls = false

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""
# OSCAR's own port on a loopback address of this test's own: Twisted 15.4's client opens chat services on 5190.
OSCAR_HOST = "127.0.0.57"


class OscarRoomTests(unittest.TestCase):
    """An AIM user (Twisted 15.4's chat), an XMPP user (slixmpp's MUC) and a line user in one room."""

    def setUp(self):
        from tests.interop import test_oscar

        test_oscar.require_tw15()
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        if not have_line():
            raise unittest.SkipTest("the example plugin (line connector) is not installed")
        self.xmpp, self.line = peers.free_port(), peers.free_port()
        config = OSCAR_ROOM_CONFIG.format(host=OSCAR_HOST, xmpp=self.xmpp, line=self.line)
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.xmpp, self.line))
        socket.create_connection((OSCAR_HOST, 5190), timeout=10).close()  # opened with the others

    def test_aim_xmpp_and_line_users_chat_in_one_room(self):
        from tests.gateway_process import LineClient
        from tests.interop.test_oscar import Client, of

        line = LineClient(self.line, "carol")
        self.addCleanup(line.close)
        line.send("JOIN #lobby")
        line.expect("OK delivered")

        async def scenario():
            loop = asyncio.get_running_loop()
            bob = muc_client("bob", self.xmpp, tls=False)
            try:
                await peers.start(bob)
                await bob["xep_0045"].join_muc_wait(ROOM, "bob", timeout=15)
                alice = Client(self, "tw15", 5190, "alice", "bob", "--host", OSCAR_HOST, "--chat", "lobby",
                               "--chat-say", "hello from aim", "--chat-expect", "2")
                await peers.until(lambda: ("alice", "hello from aim", False) in bob.groupchat, timeout=30,
                                  what="bob (XMPP) gets the AIM user's room message")
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby MSG alice"),
                                 "ROOM #lobby MSG alice hello from aim")
                line.send("SAY #lobby hi aim, from the line")
                events = await loop.run_in_executor(None, alice.events)
                alice.assert_done(events)
                self.assertEqual(await loop.run_in_executor(None, line.expect, "ROOM #lobby LEAVE alice"),
                                 "ROOM #lobby LEAVE alice aim:alice")
                await peers.until(lambda: "alice" in bob.gone, what="bob sees the AIM user leave")
                return events
            finally:
                await peers.stop(bob)

        events = peers.run(scenario(), timeout=90)
        [joined] = of(events, "chat-joined")
        self.assertEqual(sorted(joined["members"]), ["alice", "bob", "carol"])
        self.assertEqual([(e["sender"], e["text"]) for e in of(events, "chat-im")],
                         [("alice", "hello from aim"), ("carol", "hi aim, from the line")])
        found = json.loads(self.gateway.gatewayctl("archive", "search", "--room", "lobby", "--json"))
        said = [(e["sender"], e["text"]) for e in found if e["chat"]["action"] == "message"]
        self.assertEqual(said, [("aim:alice", "hello from aim"), ("line:carol", "hi aim, from the line")])
        self.assertEqual(self.gateway.tracebacks(), [])


class SipRoomTests(unittest.TestCase):
    """A SIPp user in page mode and a line user in one room (alice and carol: the SIP tests' rules keep bob from carol)."""

    def test_sipp_in_page_mode_and_a_line_user_share_a_room(self):
        import time

        from tests.interop import test_sip

        gateway = test_sip.Gateway(self)
        carol = test_sip.LineClient(gateway.line, "carol")
        self.addCleanup(carol.close)
        carol.send("JOIN #lobby")
        carol.expect("OK delivered")
        port = test_sip.free_port()
        status, messages = test_sip.sipp(self, gateway, "register.xml", user="alice", port=port,
                                         keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        alice, log = test_sip.sipp(self, gateway, "room_uac.xml", user="alice", port=port, background=True, timeout=20,
                                 keys=[("room", "lobby"), ("text", "hello room from sipp")],
                                 extra=["-oocsf", "room_ooc.xml"])
        self.assertEqual(carol.expect("ROOM #lobby JOIN alice"), "ROOM #lobby JOIN alice sip:alice@localhost")
        self.assertEqual(carol.expect("ROOM #lobby MSG alice"), "ROOM #lobby MSG alice hello room from sipp")
        carol.send("SAY #lobby hi sipp")
        self.assertEqual(alice.wait(timeout=30), 0, test_sip.read(log))
        received = test_sip.read(log)
        # alice is shown that she is in, and carol's message from the room with her nickname; not her own.
        self.assertIn("* you are in #lobby as alice; /leave to leave", received)
        self.assertIn('From: "carol" <sip:lobby@conference.localhost>', received)
        self.assertIn("carol: hi sipp", received)
        self.assertNotIn("alice: hello room from sipp", received)
        deadline = time.monotonic() + 10
        while True:
            found = json.loads(gateway.gatewayctl("archive", "search", "--room", "lobby", "--json"))
            said = [(e["sender"], e["text"]) for e in found if e["chat"]["action"] == "message"]
            if len(said) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(said, [("sip:alice@localhost", "hello room from sipp"), ("line:carol", "hi sipp")])
        self.assertEqual(gateway.tracebacks(), [])
