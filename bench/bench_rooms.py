"""
Rooms bench: one room of MEMBERS people, half on XMPP (multi-user chat) and
half on the line connector, with the archive on, against the same people
exchanging one-to-one messages, in the same run.

    python bench/bench_rooms.py [--members 50] [--rate 100] [--duration 8]

Starts ``twistd -n gateway`` on a temporary SQLite database (durable
archive, the default) with the xmpp and line connectors, logs every client
in (lean clients that scan bytes: no XML library), then:

* **direct** (the baseline): RATE x MEMBERS one-to-one messages a second
  offered, spread over pairs of the same clients: as many deliveries as
  the room case asks for, each its own event on the path;
* **room**: everyone joins one room; RATE room messages a second offered,
  spread over the members; each is one event on the path and one archive
  row, shown to every member.

Prints, for each, the deliveries a second achieved, the events a second,
and p50/p99 latency from send to the last member that got it (direct: to
its one recipient). Nothing here is a test: numbers vary with the machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402  (bench/, the script's own folder)
from common import free_port  # noqa: E402
from bench_xmpp import Client as XmppClient, stop, wait_port  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402  (a standalone program)

ROOM = b"bench@conference.localhost"

GATEWAY_CONFIG = """
[gateway]
node = "bench"
data_dir = "var"

[admin]
listen = ""

[directory]
login_queue_per_source = 100000
login_queue = 100000
login_failures_per_source = 100000

[archive]
presence = false

[rooms]
history = 0
max_members = 100000
joins_per_minute = 100000

[connectors.xmpp]
listen = ["tcp:{xmpp}:interface=127.0.0.1"]
require_tls = false
rate = 100000.0
burst = 100000.0

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
rate = 100000
"""


class LineClient(protocol.Protocol):
    """The line protocol: LOGIN, then ``SAY``/``MSG`` out and ``ROOM ... MSG``/``FROM`` lines in."""

    def __init__(self, user, ready):
        self.user, self.ready = user, ready
        self.buffer = b""
        self.on_message = None
        self.joined = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.transport.write(f"LOGIN {self.user} secret\n".encode())

    def dataReceived(self, data):
        lines = (self.buffer + data).split(b"\r\n")
        self.buffer = lines.pop()
        for line in lines:
            if line.startswith(b"ROOM #bench MSG "):
                self.on_message(line.rsplit(b" ", 1)[1])
            elif line.startswith(b"FROM "):
                self.on_message(line.rsplit(b" ", 1)[1])
            elif line.startswith(b"OK LOGIN"):
                self.ready.callback(self)
            elif self.joined is not None and line.startswith(b"ROOM #bench JOIN " + self.user.encode() + b" "):
                joined, self.joined = self.joined, None
                joined.callback(self)
            elif line.startswith(b"ERR"):
                raise SystemExit(f"{self.user}: {line!r}")

    def join(self):
        self.joined = defer.Deferred()
        self.transport.write(b"JOIN #bench\n")
        return self.joined

    def say(self, body):
        self.transport.write(b"SAY #bench " + body + b"\n")

    def send_message(self, to, body):
        self.transport.write(b"MSG " + to + b" " + body + b"\n")

    @staticmethod
    def handle_of(user):
        """How a line client addresses person ``user`` (reached wherever they are online)."""
        return f"line:{user}".encode()


class XmppMember(XmppClient):
    joined = None

    def dataReceived(self, data):
        if self.joined is not None and b"code='110'" in self.buffer + data:  # its own presence in the room
            joined, self.joined = self.joined, None
            joined.callback(self)
        XmppClient.dataReceived(self, data)

    def join(self):
        self.joined = defer.Deferred()
        self.transport.write(b"<presence to='" + ROOM + b"/" + self.user.encode() + b"'>"
                             b"<x xmlns='http://jabber.org/protocol/muc'/></presence>")
        return self.joined

    def say(self, body):
        self.transport.write(b"<message type='groupchat' to='" + ROOM + b"'><body>" + body + b"</body></message>")

    @staticmethod
    def handle_of(user):
        return f"{user}@localhost".encode()


class Load:
    def __init__(self, xmpp_port, line_port, members):
        self.xmpp_port, self.line_port, self.members = xmpp_port, line_port, members
        self.clients = []

    @defer.inlineCallbacks
    def connect(self):
        waiting = []
        for i in range(self.members):
            ready = defer.Deferred()
            if i % 2 == 0:
                client = XmppMember(f"g{i:04d}", ready)
                port = self.xmpp_port
            else:
                client = LineClient(f"g{i:04d}", ready)
                port = self.line_port
            protocol.ClientCreator(reactor, lambda c=client: c).connectTCP("127.0.0.1", port)
            waiting.append(ready)
        self.clients = yield defer.gatherResults(waiting)
        for client in self.clients:
            client.on_message = lambda body: None
        yield task.deferLater(reactor, 0.5, lambda: None)

    @defer.inlineCallbacks
    def run(self, rate, duration, warmup, send, expected):
        """``rate`` sends a second by ``send(i, body)``; each body counts done after ``expected`` arrivals."""
        arrivals, lat = {}, []
        state = {"measure": False, "deliveries": 0, "last": time.monotonic()}

        def arrived(body):
            state["last"] = time.monotonic()
            count = arrivals.get(body, 0) + 1
            if count == expected:
                arrivals.pop(body, None)
                if state["measure"]:
                    lat.append(time.perf_counter_ns() - int(body))
            else:
                arrivals[body] = count
            if state["measure"]:
                state["deliveries"] += 1

        for client in self.clients:
            client.on_message = arrived
        tick = 0.002
        carry = [0.0, 0]

        def tick_send():
            carry[0] += rate * tick
            n = int(carry[0])
            carry[0] -= n
            for _ in range(n):
                send(carry[1], str(time.perf_counter_ns()).encode())
                carry[1] += 1

        loop = task.LoopingCall(tick_send)
        loop.start(tick)
        yield task.deferLater(reactor, warmup, lambda: None)
        state["measure"] = True
        sent_before = carry[1]
        t0 = time.perf_counter()
        yield task.deferLater(reactor, duration, lambda: None)
        elapsed = time.perf_counter() - t0
        sent = carry[1] - sent_before
        state["measure"] = False
        loop.stop()
        # What the gateway still owes (a saturated case) arrives before the next case starts.
        deadline = time.monotonic() + 120
        while time.monotonic() - state["last"] < 1.0 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.2, lambda: None)
        lat.sort()

        def pct(p):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] / 1e6, 3) if lat else None

        return {"events_offered_per_s": round(sent / elapsed), "deliveries_per_s": round(state["deliveries"] / elapsed),
                "complete_events": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99)}

    def direct(self, rate, duration, warmup):
        clients = self.clients
        n = len(clients)

        def send(i, body):
            sender = clients[i % n]
            recipient = clients[(i + 1 + (i // n) % (n - 1)) % n]
            sender.send_message(sender.handle_of(recipient.user), body)

        return self.run(rate, duration, warmup, send, 1)

    @defer.inlineCallbacks
    def room(self, rate, duration, warmup):
        for client in self.clients:
            yield client.join()
        yield task.deferLater(reactor, 1.0, lambda: None)
        clients = self.clients
        result = yield self.run(rate, duration, warmup, lambda i, body: clients[i % len(clients)].say(body),
                                len(clients))
        return result


def start_gateway(folder, members):
    from gateway.storage.db import create_engine, migrate
    from gateway.directory.sql import DirectoryStore

    os.makedirs(os.path.join(folder, "var"))
    engine = create_engine(f"sqlite:///{folder}/var/gateway.sqlite")
    migrate(engine)
    store = DirectoryStore(engine)
    for i in range(members):
        store.add_person(f"g{i:04d}", password="secret", handles=[f"xmpp:g{i:04d}@localhost", f"line:g{i:04d}"])
    engine.dispose()
    xmpp, line = free_port(), free_port()
    config = os.path.join(folder, "gateway.toml")
    with open(config, "w") as f:
        f.write(GATEWAY_CONFIG.format(xmpp=xmpp, line=line))
    log = open(os.path.join(folder, "gateway.log"), "w")
    env = dict(os.environ, PYTHONPATH=common.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_port(xmpp, process, "the gateway")
    wait_port(line, process, "the gateway")
    return process, xmpp, line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--rate", type=int, default=100, help="room messages a second offered")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-rooms-")
    process, xmpp, line = start_gateway(folder, args.members)
    results = {"members": args.members, "room_rate": args.rate}

    @defer.inlineCallbacks
    def scenario():
        try:
            load = Load(xmpp, line, args.members)
            yield load.connect()
            results["direct"] = yield load.direct(args.rate * args.members, args.duration, args.warmup)
            print(json.dumps({"direct": results["direct"]}), flush=True)
            results["room"] = yield load.room(args.rate, args.duration, args.warmup)
            print(json.dumps({"room": results["room"]}), flush=True)
            direct, room = results["direct"]["deliveries_per_s"], results["room"]["deliveries_per_s"]
            results["room_over_direct_deliveries"] = round(room / direct, 2) if direct else None
        finally:
            reactor.stop()

    reactor.callWhenRunning(scenario)
    reactor.run()
    stop(process)
    with open(os.path.join(folder, "gateway.log")) as f:
        errors = [line for line in f if "Traceback" in line or "Unhandled" in line]
    if errors:
        results["gateway_errors"] = len(errors)
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
