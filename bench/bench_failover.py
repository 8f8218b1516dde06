"""
Failover of a cluster node: how long until its users are served again, and what is lost.

Two ``twistd gateway`` nodes on one Redis (``[cluster] heartbeat`` as
given), each with the line connector. ``--pairs`` people on node A each
send a numbered message every ``--interval`` seconds to a partner on node
B. After ``--before`` seconds node B is killed (SIGKILL); its users'
clients reconnect at once, to node A, again and again until they are
logged in. The senders go on until every partner is back, then for
``--after`` seconds more; then the figures: the time from the kill to the
last partner logged in again, the time until every message sent until
then had reached its partner (those in node B's stream wait for node
A to find B gone and take its stream over), and the messages the senders were told were
accepted (``OK delivered`` or ``OK queued``) that never reached their
partner (lost), or reached it twice. ``--runs`` times (10 for the issue's
figure), each on fresh nodes.

    python bench/bench_failover.py [--runs 10] [--pairs 10] [--heartbeat 3]
"""

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

from gateway.cluster.redis import command  # noqa: E402

REDIS = os.environ.get("GATEWAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")

NODE = """
[gateway]
node = "{node}"
data_dir = "var"
[admin]
listen = ""
[plugins]
disabled = ["example-dlp"]
[cluster]
redis = "{redis}"
prefix = "{prefix}"
heartbeat = {heartbeat}
secret_file = "{secret}"
[connectors.line]
listen = ["tcp:{port}:interface=127.0.0.1"]
rate = 1000
max_connections_per_source = 10000
"""


# The people of a run, in the node's database (once, in one process).
ADD_USERS = """
import sys
from gateway import config as c
from gateway.directory.sql import DirectoryStore
from gateway.model import Address
from gateway.storage import db
engine = db.create_engine(c.load(sys.argv[1]).database_url)
db.migrate(engine)
store = DirectoryStore(engine)
for user in sys.argv[2:]:
    if store.identity_for(Address("line", user)) is None:
        store.add_person(user, password="secret", handles=[f"line:{user}"])
"""


def free_port():
    return common.free_port()


class Node:
    def __init__(self, name, prefix, heartbeat, users, database):
        self.dir = tempfile.mkdtemp(prefix=f"bench-failover-{name}-")
        self.port = free_port()
        config = os.path.join(self.dir, "gateway.toml")
        with open(config, "w") as f:
            f.write(NODE.format(node=name, redis=REDIS, prefix=prefix, heartbeat=heartbeat, port=self.port,
                                secret=common.cluster_secret(prefix)))
            f.write(f'[database]\nurl = "{database}"\n' if database else "")
        env = dict(os.environ, PYTHONPATH=common.ROOT)
        subprocess.run([sys.executable, "-c", ADD_USERS, config, *users], check=True, cwd=self.dir, env=env)
        self.log = open(os.path.join(self.dir, "twistd.log"), "w")
        self.proc = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config], cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"node on {self.port} did not start; see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """One person on the line protocol: logs in, sends, reads what it is given (by text)."""

    def __init__(self, user):
        self.user = user
        self.received = []
        self.times = []  # when each of ``received`` arrived
        self.sent = []
        self.answers = []  # OK / ERR lines for what it sent
        self.logged_in = asyncio.Event()
        self.reader = self.writer = None

    async def login(self, port):
        self.logged_in.clear()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"LOGIN {self.user} secret\n".encode())
        await self.writer.drain()
        self.task = asyncio.ensure_future(self.read())
        await asyncio.wait_for(self._wait_login(), 10)

    async def _wait_login(self):
        waiting = asyncio.ensure_future(self.logged_in.wait())
        await asyncio.wait([waiting, self.task], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()  # (when the connection ended first)
        if not self.logged_in.is_set():
            raise OSError("login refused")

    async def read(self):
        while True:
            line = await self.reader.readline()
            if not line:
                return
            text = line.decode().rstrip("\r\n")
            if text.startswith("OK LOGIN"):
                self.logged_in.set()
            elif not self.logged_in.is_set() and text.startswith("ERR "):
                self.writer.close()  # refused (a login queue full): try again
                return
            elif text.startswith("FROM "):
                self.received.append(text.split(" ", 2)[2])
                self.times.append(time.monotonic())
            elif text.startswith(("OK ", "ERR ")):
                self.answers.append(text)

    def send(self, to, text):
        self.writer.write(f"MSG line:{to} {text}\n".encode())


async def one_run(args, number):
    prefix = f"failover{uuid.uuid4().hex[:8]}"
    senders = [f"s{i}" for i in range(args.pairs)]
    partners = [f"p{i}" for i in range(args.pairs)]
    a = Node("a", prefix, args.heartbeat, senders + partners, args.database)
    b = Node("b", prefix, args.heartbeat, senders + partners, args.database)
    try:
        await a.ready()
        await b.ready()
        send_clients = [Client(u) for u in senders]
        recv_clients = [Client(u) for u in partners]
        for c in send_clients:
            await c.login(a.port)
        for c in recv_clients:
            await c.login(b.port)
        counter = 0
        killed = back = None
        stop_at = None

        async def reconnect(client):
            while True:
                try:
                    await client.login(a.port)
                    return time.monotonic()
                except (OSError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)

        started = time.monotonic()
        reconnecting = None
        while stop_at is None or time.monotonic() < stop_at:
            for s, p in zip(send_clients, recv_clients):
                counter += 1
                text = f"m{counter}"
                s.sent.append(text)
                s.send(p.user, text)
            await asyncio.sleep(args.interval)
            if killed is None and time.monotonic() - started >= args.before:
                b.proc.kill()
                killed = time.monotonic()
                kill_count = counter
                reconnecting = [asyncio.ensure_future(reconnect(c)) for c in recv_clients]
            if reconnecting is not None and back is None and all(t.done() for t in reconnecting):
                back = max(t.result() for t in reconnecting) - killed
                back_count = counter
                stop_at = time.monotonic() + args.after
        # Let the answers and the taken-over entries arrive.
        await asyncio.sleep(args.settle)
        # Answers do not name the message: a sender refused n messages accounts for n unreceived ones.
        accepted, refused, lost, doubled = 0, 0, 0, 0
        caught_up = 0.0
        for s, p in zip(send_clients, recv_clients):
            ok = sum(1 for answer in s.answers if answer.startswith(("OK delivered", "OK queued")))
            no = len(s.answers) - ok
            accepted += ok
            refused += no
            got = set(p.received)
            lost += max(0, sum(1 for t in s.sent if t not in got) - no)
            # The messages sent until the partners were back (to node B's stream, some of them): when the last
            # of them arrived.
            for text, at in zip(p.received, p.times):
                if int(text[1:]) <= back_count:
                    caught_up = max(caught_up, at - killed)
            doubled += len(p.received) - len(got)
            if args.verbose and len(p.received) != len(got):
                seen, twice = set(), []
                for i, t in enumerate(p.received):
                    if t in seen:
                        twice.append((i, t))
                    seen.add(t)
                print(p.user, "twice:", twice[:5], "of", len(p.received), "sent at kill:", kill_count, flush=True)
        for c in send_clients + recv_clients:
            if c.writer is not None:
                c.writer.close()
                c.task.cancel()
        print(f"run {number}: users logged in again {back:.2f} s after the kill, the messages sent until then "
              f"delivered {caught_up:.2f} s after it; {counter} sent, {accepted} accepted, {refused} refused, "
              f"{lost} lost, {doubled} twice", flush=True)
        return back, lost, doubled, caught_up
    finally:
        a.stop()
        b.stop()
        [keys] = command(REDIS, ("KEYS", f"{prefix}:*"))
        if keys:
            command(REDIS, ("DEL", *keys))


async def main(args):
    print(common.machine_info(), flush=True)
    results = [await one_run(args, n + 1) for n in range(args.runs)]
    times = sorted(r[0] for r in results)
    caught = sorted(r[3] for r in results)
    print(f"failover over {args.runs} runs (heartbeat {args.heartbeat:g} s, {args.pairs} pairs): logged in again "
          f"after median {times[len(times) // 2]:.2f} s (max {times[-1]:.2f}); every message sent until then "
          f"delivered after median {caught[len(caught) // 2]:.2f} s (max {caught[-1]:.2f}); messages lost "
          f"{sum(r[1] for r in results)}, delivered twice {sum(r[2] for r in results)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--heartbeat", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between a sender's messages")
    parser.add_argument("--before", type=float, default=2.0, help="seconds of traffic before the kill")
    parser.add_argument("--after", type=float, default=1.0, help="seconds of traffic after everyone is back")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds to wait for the last deliveries")
    parser.add_argument("--verbose", action="store_true", help="name the messages delivered twice")
    parser.add_argument("--database", default="", help="one database URL for both nodes (default: SQLite each)")
    asyncio.run(main(parser.parse_args()))
