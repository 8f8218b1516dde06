"""
Sametime against a real client: libpurple's prpl-meanwhile (libmeanwhile 1.1.1) inside BitlBee,
driven over IRC, logging in to a real ``twistd gateway`` process.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin
from tests.irc import IrcLines
from tests.support import free_port

BITLBEE_CONF = """[settings]
RunMode = ForkDaemon
DaemonInterface = 127.0.0.1
AuthMode = Open
"""

CONFIG = """
[gateway]
node = "st-interop"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.sametime]
listen = ["tcp:{port}:interface=127.0.0.1"]
trace = true
{options}

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
reason = "bob may not write to carol"
"""


class IrcUser(IrcLines):
    """One IRC connection to BitlBee, with a blocking reader that waits for lines matching a pattern."""

    def __init__(self, port, nick, transcript):
        self.nick = nick
        self.transcript = transcript
        self.irc_open(port, nick, 15)

    def wait(self, pattern, timeout=20):
        """The first unread line matching ``pattern`` (lines before it are taken too)."""
        return self.expect(re.compile(pattern).search, timeout, repr(pattern))

    def sametime_login(self, port, user=None, force_login=True):
        self.root(f"account add meanwhile {user or self.nick}:127.0.0.1 secret")
        self.root(f"account meanwhile set port {port}")
        if force_login:
            self.root("account meanwhile set force_login true")
        self.root("account meanwhile on")
        self.wait(r"meanwhile - Logging in: Logged in", 20)

    def close(self):
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        self.sock.close()


class SametimeInteropTests(unittest.TestCase):
    """A gateway process and a BitlBee per test, on free loopback ports, in a temporary folder."""

    options = ""

    def setUp(self):
        if shutil.which("bitlbee") is None:
            raise unittest.SkipTest("bitlbee is not installed (Debian package bitlbee-libpurple)")
        if not have_example_plugin():
            self.fail("the example plugin must be installed: pip install ./examples/gateway-example-plugin")
        self.dir = tempfile.mkdtemp(prefix="gw-sametime-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.transcript = open(os.path.join(self.dir, "irc.log"), "w", buffering=1)
        self.addCleanup(self.transcript.close)
        self.processes = []
        self.users = []
        self.addCleanup(self._stop_all)
        self.addCleanup(self._dump_logs_on_failure)
        self.port, self.line, self.irc = free_port(), free_port(), free_port()
        self.start_gateway(self.options)
        users = os.path.join(self.dir, "bitlbee-users")
        os.mkdir(users)
        with open(os.path.join(self.dir, "bitlbee.conf"), "w") as f:
            f.write(BITLBEE_CONF)
        self.start("bitlbee", ["bitlbee", "-F", "-n", "-v", "-c", "bitlbee.conf", "-d", users,
                               "-i", "127.0.0.1", "-p", str(self.irc)], self.irc)

    def gateway_config(self, options):
        return CONFIG.format(port=self.port, line=self.line, options=options)

    def start_gateway(self, options):
        self.gateway = Gateway(self, self.gateway_config(options), (self.port,), name="gw-sametime")

    def start(self, name, argv, port):
        log = open(os.path.join(self.dir, f"{name}.log"), "w+")
        self.addCleanup(log.close)
        process = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                self.fail(f"{name} exited with {process.returncode}:\n{log.read()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.1)
        self.fail(f"{name} did not listen on {port} within 30s")

    def _stop_all(self):
        for user in self.users:
            user.close()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _dump_logs_on_failure(self):
        if os.environ.get("SAMETIME_INTEROP_KEEP"):
            kept = shutil.copytree(self.dir, self.dir + "-kept", dirs_exist_ok=True)
            shutil.copytree(self.gateway.dir, os.path.join(kept, "gateway"), dirs_exist_ok=True)
            print("interop files kept in", kept)

    def gateway_log(self):
        return self.gateway.text()

    def wait_log(self, pattern, timeout=15):
        """Wait until the gateway's log (with ``trace = true``) has a line matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not rx.search(self.gateway_log()):
            if time.monotonic() > deadline:
                self.fail(f"the gateway never logged {pattern!r}")
            time.sleep(0.1)

    def login(self, user):
        """Log ``user`` in through BitlBee and wait until its client has its buddy list from STORAGE."""
        user.sametime_login(self.port)
        self.wait_log(rf"sametime: {user.nick} <- ChannelSend\(type=5,")

    def user(self, nick):
        user = IrcUser(self.irc, nick, self.transcript)
        self.users.append(user)
        return user

    def gatewayctl(self, *args):
        return self.gateway.gatewayctl(*args)

    def archived(self, user, text):
        return json.loads(self.gatewayctl("archive", "search", "--user", user, "--kind", "im", "--text", text, "--json"))

    def wait_archived(self, user, text, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            rows = self.archived(user, text)
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)


class DiffieHellmanLoginTests(SametimeInteropTests):
    """The default: HANDSHAKE_ACK carries a DH key, libpurple logs in with DH + RC2/128."""

    def test_two_users_presence_chat_archive_and_the_buddy_list_survives(self):
        alice, bob = self.user("alice"), self.user("bob")
        self.login(alice)
        self.login(bob)
        log = self.gateway_log()
        self.assertRegex(log, r"alice logged in from .*\(DH \+ RC2/128\)")
        self.assertRegex(log, r"bob logged in from .*\(DH \+ RC2/128\)")

        # the demo people have each other in their contact lists: STORAGE hands them over, AWARE shows them online
        alice.wait(r":bob!bob@meanwhile JOIN :&bitlbee")
        bob.wait(r":alice!alice@meanwhile JOIN :&bitlbee")

        # IMs both ways, non-ASCII included, archived
        alice.send("PRIVMSG bob :hello bob, caf\u00e9 at 3?")
        bob.wait(r":alice!alice@meanwhile PRIVMSG bob :hello bob, caf\u00e9 at 3\?")
        bob.send("PRIVMSG alice :yes \u2615")
        alice.wait(r":bob!bob@meanwhile PRIVMSG alice :yes \u2615")
        rows = self.wait_archived("alice", "caf\u00e9")
        self.assertEqual([(r["sender"], r["recipient"], r["status"]) for r in rows],
                         [("sametime:alice", "sametime:bob", "delivered")])
        log = self.gateway_log()
        self.assertRegex(log, r"IM channel 0x[0-9a-f]+ alice <-> sametime:bob open \(client-created, cipher RC2/128\)")
        # the server names RC2/128 as its choice in its offer, so libmeanwhile takes it
        self.assertRegex(log, r"IM channel 0x8[0-9a-f]+ bob <-> sametime:alice open \(server-created, cipher RC2/128\)")

        # typing notices both ways (BitlBee shows them as CTCP TYPING when typing_notice is on)
        for user in (alice, bob):
            user.root("set typing_notice true")
            user.wait(r"typing_notice = `true'")
        alice.send("PRIVMSG bob :\x01TYPING 1\x01")
        bob.wait(r":alice!alice@meanwhile PRIVMSG bob :\x01TYPING 1\x01")
        bob.send("PRIVMSG alice :\x01TYPING 1\x01")
        alice.wait(r":bob!bob@meanwhile PRIVMSG alice :\x01TYPING 1\x01")

        # status: away shows as a devoiced buddy, back as voiced again
        bob.send("AWAY :at lunch")
        alice.wait(r"MODE &bitlbee -v bob")
        bob.send("AWAY")
        alice.wait(r"MODE &bitlbee \+v bob")

        # bob adds carol (RESOLVE, AWARE add, STORAGE save) while she is offline; she logs in on another network
        bob.root("add meanwhile carol")
        bob.wait(r"Adding `carol' to contact list")
        self.wait_log(r"sametime: bob -> ChannelSend\(type=6,.*carol")
        carol = LineClient(self.line)
        self.addCleanup(carol.close)
        carol.send("LOGIN carol secret")
        carol.expect("OK LOGIN line:carol")
        bob.wait(r":carol!carol@meanwhile JOIN :&bitlbee")

        # bob leaves BitlBee altogether (his libpurple buddy list is gone with him) ...
        bob.close()
        self.users.remove(bob)
        alice.wait(r":bob!bob@meanwhile QUIT")
        # ... and comes back on a fresh connection: the list, carol included, comes from the gateway
        bob = self.user("bob")
        self.login(bob)
        bob.wait(r":carol!carol@meanwhile JOIN :&bitlbee")
        alice.wait(r":bob!bob@meanwhile JOIN :&bitlbee")
        bob.send("PRIVMSG alice :back again")
        alice.wait(r"PRIVMSG alice :back again")

    def test_wrong_password_is_refused(self):
        mallory = self.user("alice")
        mallory.root("account add meanwhile alice:127.0.0.1 not-the-password")
        mallory.root(f"account meanwhile set port {self.port}")
        mallory.root("account meanwhile set force_login true")
        mallory.root("account meanwhile on")
        mallory.wait(r"meanwhile - (Login error|Error|Couldn't log in|Signing off)", 20)
        self.assertIn("login of alice from", self.gateway_log())


class Rc2FortyLoginTests(SametimeInteropTests):
    """No DH key in the HANDSHAKE_ACK: libpurple falls back to the RC2/40 login; channels forced to RC2/40."""

    options = 'login_cipher = "rc2-40"\nallow_weak_login = true\nchannel_ciphers = ["rc2-40"]'

    def test_login_and_a_user_on_another_network(self):
        alice = self.user("alice")
        self.login(alice)
        self.assertRegex(self.gateway_log(), r"alice logged in from .*\(RC2/40\)")

        carol = LineClient(self.line)
        self.addCleanup(carol.close)
        carol.send("LOGIN carol secret")
        carol.expect("OK LOGIN line:carol")
        alice.root("add meanwhile carol")
        alice.wait(r":carol!carol@meanwhile JOIN :&bitlbee")

        carol.send("MSG sametime:alice hello from the line network")
        carol.expect("OK delivered")
        alice.wait(r":carol!carol@meanwhile PRIVMSG alice :hello from the line network")
        alice.send("PRIVMSG carol :hi carol, alice on sametime")
        self.assertEqual(carol.expect("FROM "), "FROM line:alice hi carol, alice on sametime")
        self.assertRegex(self.gateway_log(), r"IM channel .* alice <-> sametime:carol open \(.*cipher RC2/40\)")

        # policy: bob may not write to carol; bob's client gets the channel closed, the archive says why
        bob = self.user("bob")
        self.login(bob)
        bob.root("add meanwhile carol")
        bob.wait(r":carol!carol@meanwhile JOIN :&bitlbee")
        bob.send("PRIVMSG carol :are you there?")
        rows = self.wait_archived("bob", "are you there")
        self.assertEqual([(r["status"], r["reason"]) for r in rows], [("rejected", "bob may not write to carol")])
        self.assertIn("rejected (policy): bob may not write to carol", self.gateway_log())
        carol.send("MSG sametime:alice still there?")
        alice.wait(r"PRIVMSG alice :still there\?")


class RedirectTests(SametimeInteropTests):
    """LOGIN_REDIRECT: a client with force_login answers LOGIN_CONTINUE and stays."""

    options = 'redirect_host = "127.0.0.2"\nredirect_server_id = "elsewhere"'

    def test_client_follows_the_redirect(self):
        # node B: the same port on 127.0.0.2, no redirect of its own
        node_b = Gateway(self, CONFIG.format(port=self.port, line=free_port(), options="").replace(
            f"tcp:{self.port}:interface=127.0.0.1", f"tcp:{self.port}:interface=127.0.0.2"), name="gw-sametime-b")
        deadline = time.monotonic() + 30
        while "sametime: listening" not in node_b.text():
            self.assertLess(time.monotonic(), deadline, "node B did not start")
            time.sleep(0.1)
        alice = self.user("alice")
        alice.sametime_login(self.port, force_login=False)
        self.assertIn("redirecting alice to 127.0.0.2", self.gateway_log())
        self.assertRegex(node_b.text(), r"sametime: alice logged in from IPv4Address\(type='TCP', host='127.0.0.1'")
        self.assertNotIn("sametime: alice logged in", self.gateway_log())

    def test_force_login_continues_here(self):
        alice = self.user("alice")
        self.login(alice)
        self.assertIn("redirecting alice to 127.0.0.2", self.gateway_log())
        bob = self.user("bob")
        self.login(bob)
        alice.root("add meanwhile bob")
        alice.wait(r":bob!bob@meanwhile JOIN :&bitlbee")
        alice.send("PRIVMSG bob :redirected but here")
        bob.wait(r"PRIVMSG bob :redirected but here")


class ClusterRedirectTests(SametimeInteropTests):
    """
    Two nodes of a cluster, on the same port of 127.0.0.1 and 127.0.0.2:
    a drained node sends Sametime logins to the other with LOGIN_REDIRECT,
    and its users, ended by the drain, come back there.
    """

    REDIS = "redis://127.0.0.1:6379/0"

    def start_gateway(self, options):
        from tests.test_cluster import on_redis

        prefix, secret = on_redis(self, self.REDIS, "gwst")
        cluster = f'\n[cluster]\nredis = "{self.REDIS}"\nprefix = "{prefix}"\nheartbeat = 1.0\nsecret_file = "{secret}"\n'
        text = CONFIG.format(port=self.port, line=self.line, options=options) + cluster
        self.gateway = Gateway(self, text.replace('node = "st-interop"', 'node = "node-a"'), (self.port,),
                               name="gw-sametime-a")
        text_b = CONFIG.format(port=self.port, line=free_port(), options=options) + cluster
        self.node_b = Gateway(self, text_b.replace('node = "st-interop"', 'node = "node-b"').replace(
            f"tcp:{self.port}:interface=127.0.0.1", f"tcp:{self.port}:interface=127.0.0.2"), name="gw-sametime-b")
        self.node_b.wait_for_log("sametime: listening", timeout=30)

    def nodes(self):
        return {n["name"]: n for n in map(json.loads, self.gatewayctl("node", "list", "--json").splitlines())}

    def test_a_drained_node_sends_its_users_and_new_logins_to_the_other(self):
        deadline = time.monotonic() + 15
        while set(self.nodes()) != {"node-a", "node-b"}:
            self.assertLess(time.monotonic(), deadline, "the nodes did not both register")
            time.sleep(0.2)
        # bob is on node A (his client points there) before the drain.
        bob = self.user("bob")
        bob.sametime_login(self.port, force_login=False)
        self.assertIn("sametime: bob logged in", self.gateway_log())
        out = self.gatewayctl("node", "drain", "node-a", "--wait", "--timeout", "60")
        self.assertIn("node node-a is empty", out)
        # Ended by the drain, bob's client connects again, to node A: it is sent to node B.
        bob.wait(r"meanwhile - Logging in: Logged in", 60)
        self.assertIn("redirecting bob to 127.0.0.2", self.gateway_log())
        self.node_b.wait_for_log("sametime: bob logged in", timeout=10)
        # A new login at node A goes to node B the same way.
        alice = self.user("alice")
        alice.sametime_login(self.port, force_login=False)
        self.assertIn("redirecting alice to 127.0.0.2", self.gateway_log())
        self.node_b.wait_for_log("sametime: alice logged in", timeout=10)
        self.assertEqual({n: s["sessions"] for n, s in self.nodes().items()}, {"node-a": 0, "node-b": 2})
        # And on node B they talk.
        alice.root("add meanwhile bob")
        alice.wait(r":bob!bob@meanwhile JOIN :&bitlbee")
        alice.send("PRIVMSG bob :we both moved")
        bob.wait(r"PRIVMSG bob :we both moved")


class ConferenceTests(SametimeInteropTests):
    """libpurple's Meanwhile conference, in BitlBee, in a gateway room with a line user."""

    def test_a_conference_is_the_room_its_title_names(self):
        carol = LineClient(self.line, "carol")
        self.addCleanup(carol.close)
        carol.send("JOIN #desk")
        carol.expect("OK delivered")
        alice = self.user("alice")
        self.login(alice)
        # A Meanwhile client cannot name the conference it opens: its title (the channel's topic) names the room.
        alice.root("chat add meanwhile desk #desk")
        alice.wait(r"Chatroom successfully added")
        alice.root("channel #desk set purple_chat.topic desk")
        alice.wait(r"purple_chat.topic = `desk'")
        alice.send("JOIN #desk")
        alice.wait(r":carol!\S+ JOIN :#desk", 20)
        self.assertEqual(carol.expect("ROOM #desk JOIN alice"), "ROOM #desk JOIN alice sametime:alice")
        alice.send("PRIVMSG #desk :hello from sametime")
        self.assertEqual(carol.expect("ROOM #desk MSG alice"), "ROOM #desk MSG alice hello from sametime")
        carol.send("SAY #desk hello sametime")
        alice.wait(r":carol!\S+ PRIVMSG #desk :hello sametime")
        alice.send("PART #desk")
        self.assertEqual(carol.expect("ROOM #desk LEAVE alice"), "ROOM #desk LEAVE alice sametime:alice")
        rows = json.loads(self.gatewayctl("archive", "search", "--room", "desk", "--json"))
        self.assertEqual([(r["sender"], r["text"]) for r in rows if r["chat"]["action"] == "message"],
                         [("sametime:alice", "hello from sametime"), ("line:carol", "hello sametime")])
