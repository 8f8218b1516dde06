"""`twistd gateway` as a user runs it: a real process, real sockets, signals, gatewayctl."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from tests.support import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def source_tree_env():
    """The environment for a child process that runs this source tree's gateway, not an installed copy."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def have_example_plugin():
    try:
        import gateway_example  # noqa: F401
    except ImportError:
        return False
    return True


CONFIG = """
[gateway]
node = "itest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]

[plugin.example-dlp]
words = ["project-x"]
"""


class LineClient:
    """A blocking client of the example line protocol, with timeouts."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.expect("HELLO")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def expect(self, prefix, timeout=10):
        """Read lines until one starts with ``prefix``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                text = line.decode()
                if text.startswith(prefix):
                    return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no line starting {prefix!r} within {timeout}s")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed while waiting for {prefix!r}")
            self.buffer += chunk

    def close(self):
        self.sock.close()


class GatewayProcess:
    """Mixin: one `twistd gateway` process per test, from ``self.config_text()``."""

    def config_text(self):
        return CONFIG.format(admin=self.admin, line=self.line)

    def setUp(self):
        if shutil.which("twistd") is None:
            raise unittest.SkipTest("twistd is not on PATH")
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        self.dir = tempfile.mkdtemp(prefix="gw-twistd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.admin, self.line = free_port(), free_port()
        self.config = os.path.join(self.dir, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(self.config_text())
        self.log = open(os.path.join(self.dir, "twistd.log"), "w+")
        self.addCleanup(self.log.close)
        self.process = subprocess.Popen(
            ["twistd", "-n", "--pidfile=", "gateway", "--config", self.config],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT, env=source_tree_env(),
        )
        self.addCleanup(self._kill)
        self._wait_for_port(self.line)

    def _kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _wait_for_port(self, port, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"twistd exited with {self.process.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.fail(f"nothing listens on {port} after {timeout}s:\n{self.output()}")

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def http(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=10) as response:
            return response.read().decode()

    def gatewayctl(self, *args):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "--config", self.config, *args],
            capture_output=True, text=True, timeout=60, cwd=self.dir, env=source_tree_env(),
        )
        return result

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        # twistd re-raises SIGTERM on itself once shut down, so -15 is its clean exit.
        self.assertIn(self.process.wait(timeout=30), (0, -signal.SIGTERM), self.output())
        self.assertIn("Server Shut Down.", self.output())


class TwistdTests(GatewayProcess, unittest.TestCase):
    """Start, use, reload, stop."""

    def test_chat_archive_metrics_and_clean_stop(self):
        alice, bob = LineClient(self.line), LineClient(self.line)
        alice.send("LOGIN alice secret")
        self.assertEqual(alice.expect("OK LOGIN"), "OK LOGIN line:alice")
        bob.send("LOGIN bob secret")
        bob.expect("OK LOGIN")
        alice.expect("PRESENCE line:bob available")

        alice.send("MSG aim:bob hello bob, ça va?")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello bob, ça va?")

        bob.send("MSG sip:carol@localhost hi carol")
        self.assertEqual(bob.expect("ERR"), "ERR policy denied by rule no-bob-to-carol")
        bob.send("MSG line:alice about project-x")
        self.assertEqual(bob.expect("ERR"), "ERR policy message mentions 'project-x'")
        alice.send("MSG line:carol are you there?")
        self.assertTrue(alice.expect("OK ").startswith("OK queued "))

        metrics = self.http("/metrics")
        self.assertIn('gateway_events_total{kind="im",outcome="delivered"} 1.0', metrics)
        self.assertIn('gateway_rejections_total{code="policy",rule="no-bob-to-carol"} 1.0', metrics)
        self.assertIn('gateway_sessions{connector="line"} 2.0', metrics)
        status = json.loads(self.http("/status"))
        self.assertEqual((status["node"], status["archive"]["state"]), ("itest", "healthy"))
        alice.close()
        bob.close()
        self.stop()
        self.assertIn("gateway node itest stopped", self.output())

        # The archive has everything, found the way an administrator looks.
        found = self.gatewayctl("archive", "search", "--user", "alice", "--kind", "im", "--json")
        self.assertEqual(found.returncode, 0, found.stderr)
        rows = json.loads(found.stdout)
        texts = {(r["text"], r["status"]) for r in rows}
        self.assertEqual(
            texts,
            {("hello bob, ça va?", "delivered"), ("about project-x", "rejected"), ("are you there?", "queued")},
        )

    def test_sighup_reloads_rules_without_dropping_sessions(self):
        bob = LineClient(self.line)
        bob.send("LOGIN bob secret")
        bob.expect("OK LOGIN")
        bob.send("MSG line:carol one")
        self.assertEqual(bob.expect("ERR"), "ERR policy denied by rule no-bob-to-carol")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(admin=self.admin, line=self.line).replace('action = "deny"', 'action = "allow"'))
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded 1 policy rules" not in self.output():
            self.assertLess(time.monotonic(), deadline, self.output())
            time.sleep(0.1)
        bob.send("MSG line:carol two")
        self.assertTrue(bob.expect("OK ").startswith("OK queued"))
        bob.close()
        self.stop()
