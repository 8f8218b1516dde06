"""
OSCAR against real clients nobody here wrote: Twisted 15.4's oscar (Python 2.7,
AIM with BUCP/MD5 and ICQ mode) and aimpyfly 0.1.1 (Python 3.12, roasted
login), through a real ``twistd gateway`` on 127.0.0.1; then the same through
the transparent logging proxy. tests/interop/setup-oscar.sh installs the
clients (CI runs it); the tests skip only when a client is not installed.
"""

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests import gateway_process
from tests.gateway_process import LineClient
from tests.support import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.join(HERE, "oscar_clients")
PEERS = os.environ.get("GATEWAY_PEERS", "/opt/gateway-peers")
TW15_DIR = os.path.join(PEERS, "tw15")
AIMPYFLY_DIR = os.path.join(PEERS, "aimpyfly")


def _pyenv_python(version):
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip() or root
        except (OSError, subprocess.SubprocessError):
            pass
    path = os.path.join(root, "versions", version, "bin", "python")
    return path if os.access(path, os.X_OK) else None


PY27 = _pyenv_python("2.7.18")
PY312 = _pyenv_python("3.12.1")


@functools.lru_cache(maxsize=None)
def _missing(python, version, check, what, where):
    """Why a client cannot run (a SkipTest reason), or None; asked once per run, not per test."""
    if python is None:
        return f"pyenv's Python {version} is not installed"
    if subprocess.run([python, "-c", check], capture_output=True, timeout=30).returncode:
        return f"{what} is not installed in {where}: run tests/interop/setup-oscar.sh"
    return None


def _require(*args):
    reason = _missing(*args)
    if reason is not None:
        raise unittest.SkipTest(reason)


def require_tw15():
    _require(PY27, "2.7.18", f"import site; site.addsitedir({TW15_DIR!r}); import twisted.words.protocols.oscar",
             "Twisted 15.4", TW15_DIR)


def require_aimpyfly():
    _require(PY312, "3.12.1", f"import sys; sys.path.insert(0, {AIMPYFLY_DIR!r}); import aimpyfly.aim_client",
             "aimpyfly", AIMPYFLY_DIR)


GATEWAY_CONFIG = """
[gateway]
node = "{node}"
data_dir = "var"

[directory]
demo_users = {demo}

[admin]
listen = ""

[offline]
enabled = {offline}

{rules}

{connectors}
"""

SERVER = """
[connectors.oscar]
listen = ["tcp:{port}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{port}"
"""

PROXY = """
[connectors.oscar-proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{port}"
upstream = "127.0.0.1:{upstream}"
"""

LINE = """
[connectors.line]
listen = ["tcp:{port}:interface=127.0.0.1"]
"""


def Gateway(test, name, connectors, demo=True, offline=True, rules="", wait_port=None):
    """A ``twistd -n gateway`` process with this file's config around ``connectors``."""
    text = GATEWAY_CONFIG.format(node=name, demo=str(demo).lower(), offline=str(offline).lower(), rules=rules,
                                 connectors=connectors)
    return gateway_process.Gateway(test, text, (wait_port,), name=f"gw-oscar-{name}")


class Client:
    """A client script as a subprocess: JSON events on stdout, killed when it overstays."""

    def __init__(self, test, kind, port, user, peer, *args, timeout=40):
        env = dict(os.environ, TW15_DIR=TW15_DIR, AIMPYFLY_DIR=AIMPYFLY_DIR, PYTHONIOENCODING="utf-8")
        env.pop("PYTHONPATH", None)
        python, script = (PY27, "tw15_client.py") if kind == "tw15" else (PY312, "aimpyfly_client.py")
        self.name = f"{kind}:{user}"
        self.timeout = timeout
        self.err = tempfile.TemporaryFile()
        test.addCleanup(self.err.close)
        self.process = subprocess.Popen(
            [python, os.path.join(CLIENTS, script), "--port", str(port), "--user", user, "--peer", peer,
             "--timeout", str(timeout - 5), *args],
            stdout=subprocess.PIPE, stderr=self.err, env=env,
        )
        test.addCleanup(self.kill)

    def kill(self):
        # aimpyfly busy-loops on a dead socket: a client that overstays is killed (only ours).
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def events(self):
        """Wait for the client to finish (or kill it at its timeout) and return its events."""
        try:
            out, _ = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.process.communicate()
        events = [json.loads(line) for line in out.decode("utf-8").splitlines() if line.startswith("{")]
        self.err.seek(0)
        self.stderr = self.err.read().decode("utf-8", "replace")[-3000:]
        return events

    def assert_done(self, events):
        done = [e for e in events if e["event"] == "done"]
        if not done or done[-1]["code"] != 0:
            raise AssertionError(f"{self.name} did not finish its script: {events}\nstderr: {self.stderr}")


def of(events, kind):
    return [e for e in events if e["event"] == kind]


# The example DLP plugin's configuration, and an IM whose forbidden word is only in its HTML (a link target).
DLP = '[plugin.example-dlp]\nwords = ["project-x"]\ndisclaimer = ""\n'
HIDDEN = 'see <A HREF="http://x.example/project-x">this</A>'
HIDDEN_TEXT = "see this (http://x.example/project-x)"

# As the demo's no-files-from-outside rule (kinds = ["file"]), for people who are all inside here.
NO_FILES_FROM_ALICE = ('[[policy.rule]]\nname = "no-files-from-alice"\naction = "deny"\nkinds = ["file"]\n'
                       'from = ["aim:alice"]\nreason = "file transfer is not allowed"\n')


def require_dlp():
    if not gateway_process.have_example_plugin():
        raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")


def search(gw, *args):
    return json.loads(gw.gatewayctl("archive", "search", *args, "--json"))


TEXT_TW = "h\u00e9llo bob \u2713 \u4e16\u754c"
TEXT_APF = "hi alice from aimpyfly"


class OscarServerInterop(unittest.TestCase):
    """The gateway as the AIM/ICQ service."""

    def setUp(self):
        if shutil.which("twistd") is None:
            raise unittest.SkipTest("twistd is not on PATH")
        self.port = free_port()

    def gateway(self, extra="", **kwargs):
        return Gateway(self, "oscar", SERVER.format(port=self.port) + extra, wait_port=self.port, **kwargs)

    def test_twisted_bucp_and_aimpyfly(self):
        """alice on Twisted 15.4 (BUCP/MD5), bob on aimpyfly (roasted): presence and IMs both ways, archived."""
        require_tw15()
        require_aimpyfly()
        gw = self.gateway()
        alice = Client(self, "tw15", self.port, "alice", "bob", "--send", TEXT_TW, "--role", "stay")
        time.sleep(1.0)
        bob = Client(self, "aimpyfly", self.port, "bob", "alice", "--send", TEXT_APF, "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual(of(a, "ssi")[0]["buddies"], ["bob"])
        self.assertIn("bob", [e["who"] for e in of(a, "online")])
        self.assertIn("alice", [e["who"] for e in of(b, "online")])
        self.assertEqual([(e["sender"], e["text"]) for e in of(b, "im")], [("alice", TEXT_TW)])
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("bob", TEXT_APF)])
        self.assertEqual([e["text"] for e in of(a, "ack")], [TEXT_TW])
        self.assertEqual([e["who"] for e in of(a, "offline")], ["bob"])
        gw.stop()
        found = json.loads(gw.gatewayctl("archive", "search", "--user", "alice", "--kind", "im", "--json"))
        self.assertEqual(sorted((r["sender"], r["recipient"], r["text"]) for r in found),
                         sorted([("aim:alice", "aim:bob", TEXT_TW), ("aim:bob", "aim:alice", TEXT_APF)]))

    def test_icq_mode_and_twisted_aim(self):
        """alice in Twisted's ICQ mode (UIN 100001), bob on Twisted AIM: UINs, non-ASCII, Latin-1."""
        require_tw15()
        self.gateway()
        alice = Client(self, "tw15", self.port, "100001", "100002", "--icq", "--send", TEXT_TW,
                       "--send-latin1", "caf\u00e9 cr\u00e8me", "--role", "stay")
        time.sleep(1.0)
        bob = Client(self, "tw15", self.port, "bob", "alice", "--send", "Gr\u00fc\u00dfe \u2603", "--expect", "2",
                     "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual(of(a, "self")[0]["name"], "100001")
        self.assertEqual(of(a, "ssi")[0]["buddies"], ["100002"])  # bob, as the UIN he has
        self.assertIn("100002", [e["who"] for e in of(a, "online")])
        self.assertEqual(sorted(e["text"] for e in of(b, "im")), sorted([TEXT_TW, "caf\u00e9 cr\u00e8me"]))
        self.assertEqual({e["sender"] for e in of(b, "im")}, {"alice"})  # her AIM handle on his network
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("100002", "Gr\u00fc\u00dfe \u2603")])
        self.assertEqual([e["who"] for e in of(a, "offline")], ["100002"])

    def test_cross_network_with_ssi_add(self):
        """alice (Twisted AIM) adds carol, who is on the line connector, and they talk through the bus."""
        require_tw15()
        if not gateway_process.have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        line_port = free_port()
        self.gateway(LINE.format(port=line_port))
        carol = LineClient(line_port, timeout=20)
        self.addCleanup(carol.close)
        carol.send("LOGIN carol secret")
        carol.expect("OK LOGIN")
        alice = Client(self, "tw15", self.port, "alice", "carol", "--add-buddy", "carol", "--send", TEXT_TW)
        line = carol.expect("FROM ")
        self.assertEqual(line, f"FROM line:alice {TEXT_TW}")
        carol.send("MSG line:alice back at you \u00e0 bient\u00f4t")
        carol.expect("OK delivered")
        time.sleep(0.5)
        carol.send("QUIT")
        a = alice.events()
        alice.assert_done(a)
        self.assertEqual(of(a, "added")[0]["status"], "0000")
        self.assertIn("carol", [e["who"] for e in of(a, "online")])
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("carol", "back at you \u00e0 bient\u00f4t")])
        self.assertEqual([e["who"] for e in of(a, "offline")], ["carol"])

    def test_policy_denial_is_an_icbm_error(self):
        require_tw15()
        rules = ('[[policy.rule]]\nname = "no-ims-alice-to-bob"\naction = "deny"\nkinds = ["im"]\n'
                 'from = ["user:alice"]\nto = ["user:bob"]\n')
        self.gateway(rules=rules)
        bob = Client(self, "tw15", self.port, "bob", "alice", "--send", "hello alice", "--role", "stay", "--expect", "0")
        time.sleep(1.0)
        alice = Client(self, "tw15", self.port, "alice", "bob", "--send", "let me in", "--role", "leave",
                       "--expect", "1")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual(of(b, "im"), [])
        self.assertEqual([e["what"] for e in of(a, "error")], ["send"])
        self.assertEqual([e["text"] for e in of(a, "im")], ["hello alice"])


    def test_forbidden_word_only_in_the_html_is_refused_and_archived(self):
        """aimpyfly sends HTML whose forbidden word is only in a link target: refused, archived, never shown."""
        require_tw15()
        require_aimpyfly()
        require_dlp()
        gw = self.gateway(rules=DLP)
        alice = Client(self, "tw15", self.port, "alice", "bob", "--send", "hello bob", "--role", "stay")
        time.sleep(1.0)
        bob = Client(self, "aimpyfly", self.port, "bob", "alice", "--send", HIDDEN, "--send", "nothing to see",
                     "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("bob", "nothing to see")])
        gw.stop()
        found = search(gw, "--user", "aim:bob", "--kind", "im")
        self.assertEqual(sorted((r["sender"], r["text"], r["status"], r["rule"]) for r in found), sorted([
            ("aim:alice", "hello bob", "delivered", "default"), ("aim:bob", "nothing to see", "delivered", "default"),
            ("aim:bob", HIDDEN_TEXT, "rejected", "example-dlp")]))

    def test_info_query_answer_hidden_by_a_rule(self):
        """A rule hiding bob from alice: her profile and away queries get what a query for someone offline gets."""
        require_tw15()
        rules = ('[[policy.rule]]\nname = "hide-bob-from-alice"\naction = "deny"\nkinds = ["presence", "info"]\n'
                 'from = ["user:bob"]\nto = ["user:alice"]\n')
        gw = self.gateway(rules=rules)
        bob = Client(self, "tw15", self.port, "bob", "alice", "--role", "stay", "--expect", "0")
        time.sleep(1.0)
        alice = Client(self, "tw15", self.port, "alice", "bob", "--info", "bob", "--linger", "5", "--expect", "0")
        carol = Client(self, "tw15", self.port, "carol", "nobody", "--info", "bob", "--linger", "5", "--expect", "0")
        a, b, c = alice.events(), bob.events(), carol.events()
        for client, events in ((alice, a), (bob, b), (carol, c)):
            client.assert_done(events)
        self.assertEqual(sorted(e["what"] for e in of(a, "error")), ["away", "info"])
        self.assertEqual(of(a, "info") + of(a, "away"), [])
        self.assertNotIn("bob", [e["who"] for e in of(a, "online")])
        self.assertEqual([(e["who"], e["profile"]) for e in of(c, "info")], [("bob", "<HTML><BODY>profile of bob</BODY></HTML>")])
        self.assertEqual([e["away"] for e in of(c, "away")], [""])
        gw.stop()
        info = search(gw, "--user", "aim:bob", "--kind", "info")
        self.assertEqual(sorted((r["recipient"], r["status"]) for r in info), [("aim:carol", "delivered")] * 2)
        hidden = [r for r in search(gw, "--user", "aim:bob", "--peer", "aim:alice", "--kind", "presence")
                  if r["sender"] == "aim:bob"]
        self.assertTrue(hidden)
        self.assertEqual({r["status"] for r in hidden}, {"rejected"})

    def test_file_offer_relayed_then_refused_by_a_rule(self):
        """A file offer (rendezvous) from alice reaches bob's Twisted client; with a no-files rule it is refused."""
        require_tw15()
        for rules, allowed in (("", True), (NO_FILES_FROM_ALICE, False)):
            port = free_port()
            gw = Gateway(self, "files", SERVER.format(port=port), rules=rules, wait_port=port)
            bob = Client(self, "tw15", port, "bob", "alice", "--role", "stay", "--expect", "0")
            time.sleep(1.0)
            alice = Client(self, "tw15", port, "alice", "bob", "--send-file", "plans.txt:1200:the plans",
                           "--linger", "4", "--expect", "0")
            a, b = alice.events(), bob.events()
            alice.assert_done(a)
            bob.assert_done(b)
            gw.stop()
            (row,) = search(gw, "--user", "aim:alice", "--kind", "file")
            self.assertEqual((row["sender"], row["recipient"], row["text"]), ("aim:alice", "aim:bob",
                                                                               "plans.txt (1200 bytes) the plans"))
            if allowed:
                self.assertEqual([e["name"] for e in of(a, "file-ack")], ["plans.txt"])
                self.assertEqual([(e["sender"], e["description"]) for e in of(b, "file")], [("alice", "the plans")])
                self.assertEqual(row["status"], "delivered")
            else:
                self.assertEqual([e["what"] for e in of(a, "error")], ["file"])
                self.assertEqual(of(b, "file"), [])
                self.assertEqual((row["status"], row["rule"]), ("rejected", "no-files-from-alice"))


class OscarProxyInterop(unittest.TestCase):
    """
    The logging proxy in front of an upstream OSCAR service. The upstream here
    is a second gateway process in server mode; the proxy gateway has no
    users of its own and knows the upstream only by its address.
    """

    def setUp(self):
        if shutil.which("twistd") is None:
            raise unittest.SkipTest("twistd is not on PATH")
        require_tw15()
        self.upstream_port, self.proxy_port = free_port(), free_port()
        self.upstream = Gateway(self, "upstream", SERVER.format(port=self.upstream_port), wait_port=self.upstream_port)

    def proxy(self, rules=""):
        return Gateway(self, "proxy", PROXY.format(port=self.proxy_port, upstream=self.upstream_port), demo=False,
                       offline=False, rules=rules, wait_port=self.proxy_port)

    def test_twisted_and_aimpyfly_through_the_proxy(self):
        require_aimpyfly()
        proxy = self.proxy()
        alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--send", TEXT_TW, "--role", "stay")
        time.sleep(1.0)
        bob = Client(self, "aimpyfly", self.proxy_port, "bob", "alice", "--send", TEXT_APF, "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertIn("bob", [e["who"] for e in of(a, "online")])
        self.assertIn("alice", [e["who"] for e in of(b, "online")])
        self.assertEqual([(e["sender"], e["text"]) for e in of(b, "im")], [("alice", TEXT_TW)])
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("bob", TEXT_APF)])
        self.assertEqual([e["who"] for e in of(a, "offline")], ["bob"])
        proxy.stop()
        self.upstream.stop()
        expected = sorted([("aim:alice", "aim:bob", TEXT_TW), ("aim:bob", "aim:alice", TEXT_APF)])
        for gw in (proxy, self.upstream):
            found = json.loads(gw.gatewayctl("archive", "search", "--user", "aim:alice", "--kind", "im", "--json"))
            # one row per IM at the proxy, though both ends of it passed through
            self.assertEqual(sorted((r["sender"], r["recipient"], r["text"]) for r in found), expected, gw.dir)

    def test_denied_at_the_proxy(self):
        rules = ('[[policy.rule]]\nname = "no-ims-to-bob"\naction = "deny"\nkinds = ["im"]\n'
                 'to = ["aim:bob"]\nreason = "bob is on a legal hold"\n')
        proxy = self.proxy(rules)
        bob = Client(self, "tw15", self.proxy_port, "bob", "alice", "--send", "hello alice", "--role", "stay",
                     "--expect", "0")
        time.sleep(1.0)
        alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--send", "let me in", "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual(of(b, "im"), [])
        self.assertEqual([e["what"] for e in of(a, "error")], ["send"])
        self.assertEqual([e["text"] for e in of(a, "im")], ["hello alice"])
        proxy.stop()
        found = json.loads(proxy.gatewayctl("archive", "search", "--user", "aim:alice", "--kind", "im", "--json"))
        self.assertEqual(sorted((r["text"], r["status"]) for r in found),
                         [("hello alice", "delivered"), ("let me in", "rejected")])

    def test_denied_on_the_way_to_a_proxied_client(self):
        """bob is on the upstream directly; his IM to alice (behind the proxy) is withheld and archived as rejected."""
        rules = ('[[policy.rule]]\nname = "no-ims-bob-to-alice"\naction = "deny"\nkinds = ["im"]\n'
                 'from = ["aim:bob"]\nto = ["aim:alice"]\nreason = "alice is on a legal hold"\n')
        proxy = self.proxy(rules)
        alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--send", "hello bob", "--role", "stay",
                       "--expect", "0")
        time.sleep(1.0)
        bob = Client(self, "tw15", self.upstream_port, "bob", "alice", "--send", "you will not see this",
                     "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)  # her connection went on working: she saw bob leave
        bob.assert_done(b)
        self.assertEqual(of(a, "im"), [])
        self.assertEqual([e["text"] for e in of(a, "ack")], ["hello bob"])
        self.assertEqual([e["who"] for e in of(a, "offline")], ["bob"])
        self.assertEqual([(e["sender"], e["text"]) for e in of(b, "im")], [("alice", "hello bob")])
        proxy.stop()
        found = json.loads(proxy.gatewayctl("archive", "search", "--user", "aim:alice", "--kind", "im", "--json"))
        self.assertEqual(sorted((r["sender"], r["text"], r["status"]) for r in found),
                         [("aim:alice", "hello bob", "delivered"), ("aim:bob", "you will not see this", "rejected")])
        self.assertIn("withheld from the client", proxy.text())

    def test_forbidden_word_only_in_the_html_at_the_proxy(self):
        require_aimpyfly()
        require_dlp()
        proxy = self.proxy(DLP)
        alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--send", "hello bob", "--role", "stay")
        time.sleep(1.0)
        bob = Client(self, "aimpyfly", self.proxy_port, "bob", "alice", "--send", HIDDEN, "--send", "nothing to see",
                     "--role", "leave")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertEqual([(e["sender"], e["text"]) for e in of(a, "im")], [("bob", "nothing to see")])
        proxy.stop()
        self.upstream.stop()
        found = search(proxy, "--user", "aim:bob", "--kind", "im")
        self.assertIn(("aim:bob", HIDDEN_TEXT, "rejected", "example-dlp"),
                      [(r["sender"], r["text"], r["status"], r["rule"]) for r in found])
        # the upstream never saw it
        self.assertNotIn(HIDDEN_TEXT, [r["text"] for r in search(self.upstream, "--user", "aim:bob", "--kind", "im")])

    def test_file_offer_through_the_proxy(self):
        """alice's offer to bob, both behind the proxy: allowed at first, then refused by the proxy's rule."""
        for rules, allowed in (("", True), (NO_FILES_FROM_ALICE, False)):
            self.proxy_port = free_port()
            proxy = self.proxy(rules)
            bob = Client(self, "tw15", self.proxy_port, "bob", "alice", "--role", "stay", "--expect", "0")
            time.sleep(1.0)
            alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--send-file", "plans.txt:1200:the plans",
                           "--linger", "4", "--expect", "0")
            a, b = alice.events(), bob.events()
            alice.assert_done(a)
            bob.assert_done(b)
            proxy.stop()
            (row,) = search(proxy, "--user", "aim:alice", "--kind", "file")  # once, though both ends are proxied
            if allowed:
                self.assertEqual([(e["sender"], e["description"]) for e in of(b, "file")], [("alice", "the plans")])
                self.assertEqual(row["status"], "delivered")
            else:
                self.assertEqual([e["what"] for e in of(a, "error")], ["file"])
                self.assertEqual(of(b, "file"), [])
                self.assertEqual((row["status"], row["rule"]), ("rejected", "no-files-from-alice"))

    def test_arrival_and_info_hidden_at_the_proxy(self):
        """A rule at the proxy hides bob from alice: his arrival and her queries for his profile and away message."""
        rules = ('[[policy.rule]]\nname = "hide-bob-from-alice"\naction = "deny"\nkinds = ["presence", "info"]\n'
                 'from = ["aim:bob"]\nto = ["aim:alice"]\n')
        proxy = self.proxy(rules)
        bob = Client(self, "tw15", self.upstream_port, "bob", "alice", "--role", "stay", "--expect", "0")
        time.sleep(1.0)
        alice = Client(self, "tw15", self.proxy_port, "alice", "bob", "--info", "bob", "--linger", "5",
                       "--expect", "0")
        a, b = alice.events(), bob.events()
        alice.assert_done(a)
        bob.assert_done(b)
        self.assertNotIn("bob", [e["who"] for e in of(a, "online")])
        self.assertEqual(sorted(e["what"] for e in of(a, "error")), ["away", "info"])
        self.assertIn("alice", [e["who"] for e in of(b, "online")])  # the other way is not hidden
        proxy.stop()
        hidden = search(proxy, "--user", "aim:bob", "--kind", "presence")
        self.assertTrue(hidden)
        self.assertEqual({(r["sender"], r["recipient"], r["status"]) for r in hidden},
                         {("aim:bob", "aim:alice", "rejected")})
