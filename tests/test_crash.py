"""kill -9 under load, in the default mode: every message delivered is in the archive after a restart, and it verifies."""

import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin, source_tree_env, wait_for_port
from tests.support import free_port

CONFIG = """
[gateway]
node = "crash"
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.line]
listen = ["tcp:%(port)d:interface=127.0.0.1"]
rate = 100000
"""


class Reader(threading.Thread):
    """Collects every line a socket receives until it closes."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.lines = []

    def run(self):
        buffer = b""
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\r\n")
            self.lines.extend(line.decode() for line in complete)


class KillNineTests(unittest.TestCase):
    """
    The gateway is killed (SIGKILL) at a random moment while alice sends
    bob messages as fast as it takes them. Restarted, it replays its
    spool; then every message bob received, and every message alice was
    told was delivered, must have its archive row. Three runs, each a
    bounded load.
    """

    timeout = 240
    runs = 3

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")

    def test_delivered_means_archived(self):
        rng = random.Random()
        for run in range(self.runs):
            # Every other run, the archive writer process dies with the
            # gateway (as in a machine's crash or a kill of the process
            # group): rows acknowledged from its journal but not yet
            # committed are then committed by the next start's writer.
            self.one_run(run, rng.uniform(0.3, 1.5), with_writer=run % 2 == 1)

    def one_run(self, run, kill_after, with_writer=False):
        port = free_port()
        gateway = Gateway(self, CONFIG % {"port": port}, wait_ports=(port,), name="gw-crash")
        alice, bob = LineClient(port, "alice"), LineClient(port, "bob")
        received, answers = Reader(bob.sock), Reader(alice.sock)
        received.start()
        answers.start()
        stop = threading.Event()
        sent = [0]

        def send():
            # Bursts of 50 pipelined messages; each text unique to this run.
            while not stop.is_set() and sent[0] < 200_000:
                burst = "".join(f"MSG line:bob r{run}m{sent[0] + i}\n" for i in range(50))
                try:
                    alice.sock.sendall(burst.encode())
                except OSError:
                    return
                sent[0] += 50
                time.sleep(0.002)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(kill_after)
        writers = subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True).stdout.split()
        self.assertTrue(writers, "no archive writer process under the gateway")
        gateway.process.send_signal(signal.SIGKILL)
        if with_writer:
            for pid in writers:
                os.kill(int(pid), signal.SIGKILL)
        gateway.process.wait()
        stop.set()
        sender.join(10)
        received.join(10)
        answers.join(10)
        alice.close()
        bob.close()

        delivered_to_bob = {line.split()[-1] for line in received.lines if line.startswith("FROM ")}
        told_delivered = sum(1 for line in answers.lines if line.startswith("OK delivered"))
        self.assertGreater(len(delivered_to_bob), 0, "no message got through before the kill")

        # Start it again on the same data: the writer replays its journal and
        # the spool; a clean stop then flushes everything to the database.
        log_path = os.path.join(gateway.dir, "restarted.log")
        with open(log_path, "w") as log:
            restarted = subprocess.Popen(
                ["twistd", "-n", "--pidfile=", "gateway", "--config", gateway.config],
                cwd=gateway.dir, stdout=log, stderr=subprocess.STDOUT, env=source_tree_env(),
            )

        def log_text():
            with open(log_path, encoding="utf-8", errors="replace") as f:
                return f.read()

        try:
            wait_for_port(port, restarted, log_text)
            # Running, with its signal handlers: SIGTERM is then a clean stop.
            deadline = time.monotonic() + 30
            while "started:" not in log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(30)
        # Whichever writer process still writes holds this lock until it ends.
        with open(os.path.join(gateway.dir, "var", "spool", "writer.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(gateway.gatewayctl(
            "archive", "search", "--user", "alice", "--kind", "im", "--limit", "1000000", "--json"))
        archived = {row["text"] for row in rows if row["status"] != "rejected"}
        lost = delivered_to_bob - archived
        self.assertEqual(
            lost, set(),
            f"run {run} (killed after {kill_after:.2f}s{', with its writer' if with_writer else ''}, "
            f"{sent[0]} sent, {len(delivered_to_bob)} delivered): "
            f"{len(lost)} delivered but not archived",
        )
        self.assertGreaterEqual(len(archived), told_delivered)
        # Whatever the kill interrupted, the hash chain and its checkpoints still verify (exit status 0).
        report = json.loads(gateway.gatewayctl("archive", "verify"))
        self.assertTrue(report["ok"] and report["events"] >= len(archived), report)
