"""The SIP connector against real peers: libpurple SIMPLE inside BitlBee (TCP and UDP) and SIPp scenarios."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests import gateway_process, irc

HERE = os.path.dirname(os.path.abspath(__file__))
SIPP = os.path.join(HERE, "sipp")


def need(program):
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None
    )
    if path is None:
        raise unittest.SkipTest(f"{program} is not installed")
    return path


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1 (SIP listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if port == 5060:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def stop_process(process, timeout=15):
    """Stop a process this test started (by its own handle), SIGTERM first."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


GATEWAY_CONFIG = """
[gateway]
node = "sipinterop"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = ""

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
reason = "bob may not write to carol"

[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:{sip}"]
listen = [{listen}]
max_message_size = 1024
trace = true
{extra}

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class Gateway(gateway_process.Gateway):
    """``twistd -n gateway`` with the SIP and line connectors, in a temporary folder."""

    def __init__(self, testcase, extra="", listeners=()):
        need("twistd")
        if not gateway_process.have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        self.sip, self.line = free_port(), free_port()
        listen = ", ".join(f'"{d}"' for d in (f"tcp:{self.sip}:interface=127.0.0.1", *listeners))
        text = GATEWAY_CONFIG.format(sip=self.sip, line=self.line, extra=extra, listen=listen)
        super().__init__(testcase, text, (self.line, self.sip), name="gw-sip")

    def output(self):
        return self.text()

    def archived(self, user):
        """{(text, status)} of the instant messages of ``user`` in the archive."""
        return {(r["text"], r["status"]) for r in super().archived(user)}


class LineClient(gateway_process.LineClient):
    """A line-connector user (the other network), logged in with the demo password."""

    def __init__(self, port, user):
        super().__init__(port, user, timeout=15)


class BitlBee(irc.BitlBee):
    """BitlBee (libpurple inside) on a free loopback port, and one IRC user driving it."""

    def __init__(self, testcase):
        super().__init__(testcase)
        self.connect("tester")

    wait = irc.BitlBee.expect

    def output(self):
        return self.text()

    def simple_account(self, user, port, udp):
        for command in (
            f"account add simple {user}@localhost secret",
            "account simple set useproxy true",
            "account simple set proxy 127.0.0.1",
            f"account simple set port {port}",
            f"account simple set udp {'true' if udp else 'false'}",
            "account simple on",
        ):
            self.root(command)
        self.wait(lambda line: "simple - Logging in: Logged in" in line, 30, "login of the SIMPLE account")


def sipp(testcase, server, scenario, *, user, port, keys=(), password="secret", transport="u1",
         timeout=15, background=False, domain="localhost", local_ip="127.0.0.1", extra=()):
    """
    Run a SIPp scenario from tests/interop/sipp against ``server`` (a
    `Gateway`, or "host:port"); return (exit status, messages SIPp logged),
    or the Popen and message file when ``background``.
    """
    remote = f"127.0.0.1:{server.sip}" if isinstance(server, Gateway) else server
    program = need("sipp")
    workdir = tempfile.mkdtemp(prefix="sipp-")
    testcase.addCleanup(shutil.rmtree, workdir, True)
    messages = os.path.join(workdir, "messages.log")
    command = [program, "-sf", os.path.join(SIPP, scenario), "-s", user, "-au", user, "-ap", password,
               "-key", "domain", domain]
    for name, value in keys:
        command += ["-key", name, value]
    for argument in extra:  # an out-of-call scenario (-oocsf) named by its file in tests/interop/sipp
        command.append(os.path.join(SIPP, argument) if argument.endswith(".xml") else argument)
    command += [remote, "-i", local_ip, "-p", str(port), "-m", "1", "-t", transport,
                "-timeout", f"{timeout}s", "-timeout_error", "-trace_msg", "-message_file", messages,
                "-trace_err", "-error_file", os.path.join(workdir, "errors.log"), "-nostdin"]
    log = open(os.path.join(workdir, "sipp.out"), "w+")
    testcase.addCleanup(log.close)
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    testcase.addCleanup(stop_process, process)
    if background:
        return process, messages
    try:
        status = process.wait(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = "killed"
    return status, read(messages) + read(os.path.join(workdir, "errors.log"))


def wait_for_open(test, watcher, messages, timeout=15):
    """Wait until the SIPp ``watcher`` (still running) logged a NOTIFY saying open."""
    deadline = time.monotonic() + timeout
    while "<basic>open</basic>" not in read(messages):
        test.assertLess(time.monotonic(), deadline, "no NOTIFY saying open:\n" + read(messages))
        test.assertIsNone(watcher.poll(), read(messages))
        time.sleep(0.1)


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def final_status(messages):
    """The status code of the last response SIPp received."""
    codes = [line.split()[1] for line in messages.splitlines() if line.startswith("SIP/2.0 ")]
    return int(codes[-1]) if codes else None


class LibpurpleTests(unittest.TestCase):
    """libpurple prpl-simple (in BitlBee) as alice; bob on the line connector (another network)."""

    def setUp(self):
        need("bitlbee")
        self.gateway = Gateway(self)
        self.bitlbee = BitlBee(self)

    def chat(self, udp):
        gateway, irc = self.gateway, self.bitlbee
        bob = LineClient(gateway.line, "bob")
        self.addCleanup(bob.close)
        irc.simple_account("alice", gateway.sip, udp)
        bob.expect("PRESENCE line:alice available")  # alice's PUBLISH/registration reached bob
        irc.root("add simple sip:bob@localhost")
        irc.wait(lambda line: line.startswith(":sipbob!") and "JOIN" in line, 20, "bob shown online (NOTIFY)")

        irc.send("PRIVMSG sipbob :hello bob, ça va? (from libpurple)")
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello bob, ça va? (from libpurple)")
        bob.send("MSG sip:alice@localhost très bien, alice")
        self.assertTrue(bob.expect("OK ").startswith("OK delivered"))
        irc.wait(lambda line: line.startswith(":sipbob!") and "PRIVMSG" in line and "très bien, alice" in line,
                 15, "bob's message at libpurple")

        bob.send("QUIT")
        irc.wait(lambda line: line.startswith(":sipbob!") and ("QUIT" in line or "PART" in line), 20,
                 "bob shown offline (NOTIFY closed)")
        self.assertEqual(
            gateway.archived("alice"),
            {("hello bob, ça va? (from libpurple)", "delivered"), ("très bien, alice", "delivered")},
        )
        transport = "UDP" if udp else "TCP"
        self.assertIn(f"REGISTER sip:localhost SIP/2.0\n\tVia: SIP/2.0/{transport}", gateway.output())

    def test_libpurple_over_tcp(self):
        self.chat(udp=False)

    def test_libpurple_over_udp(self):
        # libpurple sends from its own UDP listener (5060): our answers go to that source address.
        self.chat(udp=True)

    def test_libpurple_and_sipp_uas(self):
        """The newcomer's demo: libpurple as alice, a SIPp UAS as bob, both messages archived."""
        gateway, irc = self.gateway, self.bitlbee
        port = free_port()
        status, messages = sipp(self, gateway, "register.xml", user="bob", port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        uas, uas_messages = sipp(self, gateway, "message_uas.xml", user="bob", port=port,
                                 keys=[("text", "hello alice, bob (SIPp) here")], timeout=30, background=True)
        irc.simple_account("alice", gateway.sip, udp=False)
        irc.root("add simple sip:bob@localhost")
        irc.wait(lambda line: line.startswith(":sipbob!") and "JOIN" in line, 20, "bob shown online")
        irc.send("PRIVMSG sipbob :hi bob, alice on libpurple")
        irc.wait(lambda line: line.startswith(":sipbob!") and "hello alice, bob (SIPp) here" in line, 20,
                 "the SIPp UAS's reply at libpurple")
        self.assertEqual(uas.wait(timeout=20), 0, read(uas_messages))
        self.assertIn("hi bob, alice on libpurple", read(uas_messages))
        self.assertEqual(
            gateway.archived("alice"),
            {("hi bob, alice on libpurple", "delivered"), ("hello alice, bob (SIPp) here", "delivered")},
        )


class SippTests(unittest.TestCase):
    """SIPp scenarios of our own: registrar with digest, MESSAGE as UAC and UAS, SUBSCRIBE/NOTIFY."""

    def setUp(self):
        need("sipp")
        self.gateway = Gateway(self)

    def test_register_digest_refresh_and_unregister(self):
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        self.addCleanup(alice.close)
        port = free_port()
        status, messages = sipp(self, gateway, "register.xml", user="bob", port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        self.assertIn("SIP/2.0 401 Unauthorized", messages)
        self.assertIn('WWW-Authenticate: Digest realm="localhost"', messages)
        self.assertIn(f"Contact: <sip:bob@127.0.0.1:{port};transport=UDP>;expires=300", messages)
        # bob's registration is a session: his watcher alice (on the line network) sees him come online.
        self.assertEqual(alice.expect("PRESENCE line:bob"), "PRESENCE line:bob available")
        status, messages = sipp(self, gateway, "register.xml", user="bob", port=port, keys=[("expires", "0")])
        self.assertEqual(status, 0, messages)
        self.assertEqual(alice.expect("PRESENCE line:bob"), "PRESENCE line:bob offline")

    def test_register_wrong_password(self):
        status, messages = sipp(self, self.gateway, "register.xml", user="bob", port=free_port(),
                                password="not-the-password", keys=[("expires", "300")])
        self.assertNotEqual(status, 0)
        self.assertEqual(final_status(messages), 403, messages)

    def test_register_over_tcp(self):
        status, messages = sipp(self, self.gateway, "register.xml", user="carol", port=free_port(),
                                transport="t1", keys=[("expires", "60")])
        self.assertEqual(status, 0, messages)
        self.assertIn("SIP/2.0 200 OK", messages)

    def test_message_uac_outcomes(self):
        gateway = self.gateway
        bob = LineClient(gateway.line, "bob")
        self.addCleanup(bob.close)

        def send(user, to, text, challenged=True):
            status, messages = sipp(self, gateway, "message_uac.xml", user=user, port=free_port(),
                                    keys=[("to", f"{to}@localhost"), ("text", text)])
            self.assertEqual(status, 0, messages)
            # Not registered from this port: digest first (except for what is refused before any look-up).
            self.assertEqual("SIP/2.0 407 Proxy Authentication Required" in messages, challenged, messages)
            return final_status(messages), messages

        code, _ = send("alice", "bob", "hello bob from sipp")
        self.assertEqual(code, 200)
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello bob from sipp")
        code, _ = send("alice", "carol", "carol is offline")
        self.assertEqual(code, 202)
        code, messages = send("bob", "carol", "policy says no")
        self.assertEqual(code, 403)
        self.assertIn('Reason: SIP;cause=403;text="bob may not write to carol (rule no-bob-to-carol)"', messages)
        code, messages = send("alice", "nobody", "anyone there?")
        self.assertEqual(code, 404)
        code, messages = send("alice", "bob", "x" * 2000, challenged=False)
        self.assertEqual(code, 413, messages)
        self.assertEqual(
            gateway.archived("alice"),
            {("hello bob from sipp", "delivered"), ("carol is offline", "queued"), ("anyone there?", "rejected")},
        )
        self.assertIn(("policy says no", "rejected"), gateway.archived("bob"))

    def test_file_offers_are_decided(self):
        """SIPp's INVITE with an RFC 5547 file-selector: refused by policy (403) or shown and answered 488, archived."""
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        self.addCleanup(alice.close)

        def offer(user, to, name):
            status, messages = sipp(self, gateway, "file_offer_uac.xml", user=user, port=free_port(),
                                    keys=[("to", f"{to}@localhost"), ("offered", name)])
            self.assertEqual(status, 0, messages)
            self.assertIn("SIP/2.0 407 Proxy Authentication Required", messages)
            return final_status(messages), messages

        code, messages = offer("bob", "carol", "to-carol.pdf")
        self.assertEqual(code, 403, messages)
        code, messages = offer("bob", "alice", "to-alice.pdf")
        self.assertEqual(code, 488, messages)
        self.assertIn("carries no files", messages)
        self.assertEqual(alice.expect("FILE"), "FILE line:bob to-alice.pdf 32349")
        rows = {(r["text"].split(" ")[0], r["status"]) for r in super(Gateway, gateway).archived("bob", kind="file")}
        self.assertEqual(rows, {("to-carol.pdf", "rejected"), ("to-alice.pdf", "delivered")})

    def test_message_uas_and_reply(self):
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        self.addCleanup(alice.close)
        port = free_port()
        status, messages = sipp(self, gateway, "register.xml", user="bob", port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        uas, uas_messages = sipp(self, gateway, "message_uas.xml", user="bob", port=port,
                                 keys=[("text", "bob's answer from SIPp")], timeout=20, background=True)
        time.sleep(0.5)  # SIPp binds its port
        alice.send("MSG sip:bob@localhost a question for SIPp")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered"))
        self.assertEqual(alice.expect("FROM"), "FROM line:bob bob's answer from SIPp")
        self.assertEqual(uas.wait(timeout=25), 0, read(uas_messages))
        received = read(uas_messages)
        self.assertIn(f"MESSAGE sip:bob@127.0.0.1:{port};transport=UDP SIP/2.0", received)
        self.assertIn("a question for SIPp", received)

    def test_subscribe_notify(self):
        gateway = self.gateway
        bob = LineClient(gateway.line, "bob")
        port = free_port()
        status, messages = sipp(self, gateway, "register.xml", user="alice", port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        watcher, watcher_messages = sipp(self, gateway, "subscribe.xml", user="alice", port=port,
                                         keys=[("to", "bob@localhost")], timeout=30, background=True)
        wait_for_open(self, watcher, watcher_messages)
        bob.send("QUIT")  # bob goes offline: the next NOTIFY must say closed
        bob.close()
        self.assertEqual(watcher.wait(timeout=30), 0, read(watcher_messages))
        notified = read(watcher_messages)
        self.assertIn("Subscription-State: terminated", notified)
        self.assertIn("<basic>closed</basic>", notified)

    def test_subscribe_without_registration_hears_changes(self):
        """RFC 6665: a SUBSCRIBE-only watcher (digest, never registers) is NOTIFYed of later changes too."""
        gateway = self.gateway
        bob = LineClient(gateway.line, "bob")
        watcher, watcher_messages = sipp(self, gateway, "subscribe_digest.xml", user="alice", port=free_port(),
                                         keys=[("to", "bob@localhost")], timeout=30, background=True)
        wait_for_open(self, watcher, watcher_messages)
        bob.send("QUIT")  # bob goes offline: the watcher, with no registration, must hear of it
        bob.close()
        self.assertEqual(watcher.wait(timeout=30), 0, read(watcher_messages) + gateway.output()[-3000:])
        notified = read(watcher_messages)
        self.assertIn("SIP/2.0 407 Proxy Authentication Required", notified)
        self.assertIn("<basic>closed</basic>", notified)
        self.assertIn("Subscription-State: terminated", notified)
        self.assertNotIn("REGISTER", notified)
