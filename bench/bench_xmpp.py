"""
XMPP c2s relay bench: pairs of clients through the gateway (SQLite archive on) and through Prosody 0.12.

    python bench/bench_xmpp.py [--pairs 10] [--window 1] [--duration 8] [--rate 2000] [--mam] [--no-prosody]

Starts ``twistd -n gateway`` on a temporary SQLite database with PAIRS*2
people and the xmpp connector, and a Prosody on free loopback ports with
the same number of users; logs every client in with PLAIN over plain TCP
(a lean client in this file: byte scanning, no XML library), then runs the
same load against each server:

* closed loop: each pair keeps WINDOW messages in flight (the next is sent
  when one arrives); prints messages a second and latency p50/p99;
* open loop: RATE messages a second offered, spread over the pairs;
  prints achieved rate and latency p50/p99.

``--mam`` turns on Prosody's mod_mam (archiving every message to its
internal file storage), the fair comparison with the gateway's archive.
Prints JSON with both servers' figures and the ratio gateway/Prosody.
Nothing here is a test: numbers vary with the machine.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common import free_port  # noqa: E402  (bench/, the script's own folder)
from twisted.internet import defer, protocol, reactor, task  # noqa: E402  (a standalone program)

GATEWAY_CONFIG = """
[gateway]
node = "bench"
data_dir = "var"

[admin]
listen = ""

# Every bench client logs in at once from 127.0.0.1: more password checks from one address than the
# throttle lets wait by default (4), and than it counts as failures while they run.
[directory]
login_queue_per_source = 100000
login_queue = 100000
login_failures_per_source = 100000

[archive]
presence = false
batch_size = {batch}

[connectors.xmpp]
listen = ["tcp:{port}:interface=127.0.0.1"]
require_tls = false
rate = 100000.0
burst = 100000.0
"""

PROSODY_CONFIG = """
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {{ levels = {{ min = "error" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ {s2s} }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_direct_tls_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "posix" {mam} }}
modules_disabled = {{ "tls", "s2s" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
archive_expires_after = "1d"
default_archive_policy = true
VirtualHost "localhost"
"""

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def wait_port(port, process, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.1)


class Client(protocol.Protocol):
    """Log in (PLAIN, bind, presence), then send and receive chat messages by scanning bytes."""

    def __init__(self, user, ready):
        self.user = user
        self.ready = ready
        self.buffer = b""
        self.step = "features1"
        self.on_message = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.transport.write(HEADER)

    def dataReceived(self, data):
        self.buffer += data
        if self.step != "ready":
            self._login()
            return
        buffer = self.buffer
        start = 0
        while True:
            end = buffer.find(b"</message>", start)
            if end < 0:
                break
            b0 = buffer.find(b"<body>", start, end)
            if b0 >= 0:
                b1 = buffer.find(b"</body>", b0, end)
                self.on_message(buffer[b0 + 6:b1])
            start = end + 10
        self.buffer = buffer[start:]

    def _login(self):
        b = self.buffer
        if self.step == "features1" and b"</stream:features>" in b:
            creds = base64.b64encode(f"\0{self.user}\0secret".encode()).decode()
            self.transport.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>".encode())
            self.step, self.buffer = "success", b""
        elif self.step == "success" and (b"<success" in b or b"<failure" in b):
            if b"<failure" in b:
                raise SystemExit(f"login of {self.user} failed: {b!r}")
            self.transport.write(HEADER)
            self.step, self.buffer = "features2", b""
        elif self.step == "features2" and b"</stream:features>" in b:
            self.transport.write(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                 b"<resource>bench</resource></bind></iq>")
            self.step, self.buffer = "bind", b""
        elif self.step == "bind" and b"</iq>" in b:
            self.transport.write(b"<presence/>")
            self.step, self.buffer = "ready", b""
            self.ready.callback(self)

    def send_message(self, to, body):
        self.transport.write(b"<message type='chat' to='" + to + b"'><body>" + body + b"</body></message>")


class Load:
    def __init__(self, port, pairs, prefix):
        self.port, self.pairs, self.prefix = port, pairs, prefix
        self.senders, self.receivers = [], []
        self.latencies = []
        self.received = 0

    @defer.inlineCallbacks
    def connect(self):
        clients = []
        for i in range(self.pairs * 2):
            ready = defer.Deferred()
            client = Client(f"{self.prefix}{i:04d}", ready)
            protocol.ClientCreator(reactor, lambda c=client: c).connectTCP("127.0.0.1", self.port)
            clients.append(ready)
        done = yield defer.gatherResults(clients)
        self.senders = done[0::2]
        self.receivers = done[1::2]
        yield task.deferLater(reactor, 0.5, lambda: None)  # presence traffic settles

    def _jid(self, client):
        return f"{client.user}@localhost".encode()

    @defer.inlineCallbacks
    def closed_loop(self, window, duration, warmup):
        """Each pair keeps ``window`` messages in flight; returns (msgs/s, p50 ms, p99 ms)."""
        state = {"measure": False, "stop": False}
        lat = []
        counted = [0]
        for sender, receiver in zip(self.senders, self.receivers):
            to = self._jid(receiver)

            def arrived(body, sender=sender, to=to):
                now = time.perf_counter_ns()
                if state["measure"]:
                    counted[0] += 1
                    lat.append(now - int(body))
                if not state["stop"]:
                    sender.send_message(to, str(time.perf_counter_ns()).encode())

            receiver.on_message = arrived
            for _ in range(window):
                sender.send_message(to, str(time.perf_counter_ns()).encode())
        yield task.deferLater(reactor, warmup, lambda: None)
        state["measure"] = True
        t0 = time.perf_counter()
        yield task.deferLater(reactor, duration, lambda: None)
        elapsed = time.perf_counter() - t0
        state["measure"], state["stop"] = False, True
        yield task.deferLater(reactor, 0.5, lambda: None)
        return self._figures(counted[0] / elapsed, lat)

    @defer.inlineCallbacks
    def open_loop(self, rate, duration, warmup):
        """``rate`` messages a second offered over all pairs; returns (achieved msgs/s, p50, p99)."""
        lat = []
        state = {"measure": False}
        counted = [0]

        def arrived(body):
            if state["measure"]:
                counted[0] += 1
                lat.append(time.perf_counter_ns() - int(body))

        for receiver in self.receivers:
            receiver.on_message = arrived
        pairs = list(zip(self.senders, [self._jid(r) for r in self.receivers]))
        tick = 0.002
        per_tick = rate * tick
        carry = [0.0, 0]

        def send():
            carry[0] += per_tick
            n = int(carry[0])
            carry[0] -= n
            for _ in range(n):
                sender, to = pairs[carry[1] % len(pairs)]
                carry[1] += 1
                sender.send_message(to, str(time.perf_counter_ns()).encode())

        loop = task.LoopingCall(send)
        loop.start(tick)
        yield task.deferLater(reactor, warmup, lambda: None)
        state["measure"] = True
        t0 = time.perf_counter()
        yield task.deferLater(reactor, duration, lambda: None)
        elapsed = time.perf_counter() - t0
        loop.stop()
        state["measure"] = False
        yield task.deferLater(reactor, 0.5, lambda: None)
        return self._figures(counted[0] / elapsed, lat)

    @staticmethod
    def _figures(rate, lat):
        lat.sort()

        def pct(p):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] / 1e6, 3) if lat else None

        return {"msgs_per_s": round(rate), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "samples": len(lat)}


def start_gateway(folder, pairs, batch=500, switch=None):
    from gateway.storage.db import create_engine, migrate
    from gateway.directory.sql import DirectoryStore

    os.makedirs(os.path.join(folder, "var"))
    engine = create_engine(f"sqlite:///{folder}/var/gateway.sqlite")
    migrate(engine)
    store = DirectoryStore(engine)
    for i in range(pairs * 2):
        store.add_person(f"g{i:04d}", password="secret", handles=[f"xmpp:g{i:04d}@localhost"])
    engine.dispose()
    port = free_port()
    config = os.path.join(folder, "gateway.toml")
    with open(config, "w") as f:
        f.write(GATEWAY_CONFIG.format(port=port, batch=batch))
    log = open(os.path.join(folder, "gateway.log"), "w")
    profile = os.environ.get("BENCH_PROFILE")
    argv = ["twistd", "-n", "--pidfile="] + ([f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else [])
    if switch:
        # twistd with a shorter GIL switch interval (the archive writer thread shares the GIL).
        argv = [sys.executable, "-c", f"import sys; sys.setswitchinterval({switch}); "
                "from twisted.scripts.twistd import run; sys.argv = sys.argv[1:]; run()"] + argv
    process = subprocess.Popen(argv + ["gateway", "--config", config],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, process, "the gateway")
    return process, port


def start_prosody(folder, pairs, mam):
    os.makedirs(os.path.join(folder, "data"))
    port = free_port()
    config = os.path.join(folder, "prosody.cfg.lua")
    with open(config, "w") as f:
        f.write(PROSODY_CONFIG.format(dir=folder, port=port, s2s=free_port(), mam=', "mam"' if mam else ""))
    for i in range(pairs * 2):
        subprocess.run(["prosodyctl", "--config", config, "register", f"p{i:04d}", "localhost", "secret"],
                       check=True, capture_output=True)
    out = open(os.path.join(folder, "stdout.log"), "w")
    process = subprocess.Popen(["prosody", "--config", config, "-F"], stdout=out, stderr=subprocess.STDOUT)
    wait_port(port, process, "prosody")
    return process, port


def stop(process):
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--window", type=int, default=1, help="messages in flight per pair (closed loop)")
    parser.add_argument("--rate", type=int, default=2000, help="offered messages a second (open loop)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--mam", action="store_true", help="Prosody with mod_mam (archive every message)")
    parser.add_argument("--no-prosody", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="run the gateway with sys.setswitchinterval(SECONDS) (default: Python's 0.005)")
    parser.add_argument("--batch", type=int, default=500, help="the gateway archive's batch_size")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="bench-xmpp-")
    result = {"pairs": args.pairs, "window": args.window, "offered_rate": args.rate}
    processes = []

    @defer.inlineCallbacks
    def run():
        try:
            targets = [("gateway", "g")]
            if not args.no_prosody and shutil.which("prosody"):
                targets.append(("prosody" + ("+mam" if args.mam else ""), "p"))
            for name, prefix in targets:
                sub = os.path.join(folder, name)
                os.makedirs(sub)
                if prefix == "g":
                    process, port = start_gateway(sub, args.pairs, args.batch, args.switch_interval)
                else:
                    process, port = start_prosody(sub, args.pairs, args.mam)
                processes.append(process)
                load = Load(port, args.pairs, prefix)
                yield load.connect()
                closed = yield load.closed_loop(args.window, args.duration, args.warmup)
                opened = yield load.open_loop(args.rate, args.duration, args.warmup)
                result[name] = {"closed_loop": closed, "open_loop": opened}
                for c in load.senders + load.receivers:
                    c.transport.loseConnection()
                yield task.deferLater(reactor, 0.5, lambda: None)
                stop(process)
                print(name, json.dumps(result[name]), flush=True)
            if len(targets) == 2:
                g, p = result["gateway"]["closed_loop"], result[targets[1][0]]["closed_loop"]
                result["ratio_gateway_over_prosody"] = round(g["msgs_per_s"] / max(1, p["msgs_per_s"]), 2)
            import sqlalchemy as sa
            from gateway.storage.db import create_engine

            engine = create_engine(f"sqlite:///{folder}/gateway/var/gateway.sqlite")
            with engine.connect() as conn:
                result["gateway_archived_im_rows"] = conn.execute(
                    sa.text("select count(*) from events where kind = 'im'")).scalar()
            engine.dispose()
        finally:
            for process in processes:
                if process.poll() is None:
                    stop(process)
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    if args.keep:
        print("kept", folder)
    else:
        shutil.rmtree(folder, True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
