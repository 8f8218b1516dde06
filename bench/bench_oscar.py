"""
OSCAR bench: AIM clients exchanging IMs through the gateway's whole path (policy and the SQLite archive on).

    python bench/bench_oscar.py [--pairs 50] [--duration 8] [--rates 1000,5000] [--window 16]

Creates a temporary SQLite database with PAIRS*2 people (aim:u0, aim:u1, ...),
starts ``twistd -n gateway`` with the oscar connector (rate limits off: the
load is the point), a policy rule that every message is checked against and
the example DLP policy plugin when it is installed (other plugins disabled),
then logs every client in with a lean client in this file (the plugin's own
codec, roasted login, BOS sign-on) and runs:

* open loop, once per rate in RATES: that many IMs a second offered, spread
  over the pairs, each carrying its send time; prints the achieved rate and
  delivery latency p50/p99 (the backlog drains before the next phase);
* closed loop: each pair keeps WINDOW IMs in flight (the next is sent when
  one arrives): the rate at saturation, with p50/p99.

Each phase also reports CPU, in cores and in microseconds per IM received:
the gateway process (all its threads, from /proc), this load client (its
own rusage) and everything else on the machine (/proc/stat minus both), so
a figure taken while the client or other work starved the gateway shows it.

``--baseline`` runs the same load against a bare OSCAR relay in this file
(login, BOS, IMs routed by a dict; no directory, policy or archive): the
machine's ceiling for this client, measured the same way.

Prints the figures and one JSON line. Nothing here is a test: the numbers
depend on the machine. Loopback only; every process it starts is stopped.
"""

import argparse
import json
import os
import resource
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

from gateway_oscar import codec  # noqa: E402
from gateway_oscar.codec import encode_tlvs, first_tlv, u16  # noqa: E402

CONFIG = """
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

[[policy.rule]]
name = "no-ims-to-nobody"
action = "deny"
kinds = ["im"]
to = ["aim:nobody"]

[plugins]
disabled = {disabled}

[connectors.oscar]
listen = ["tcp:{port}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{port}"
rate_limits = false
# 100 clients of the default 50 pairs connect from 127.0.0.1 (more than the default 50 a source may hold).
max_connections_per_source = 100000
"""


class BareRelay(protocol.Protocol):
    """The baseline: the least an OSCAR server can do (no directory, policy, archive): login, BOS, relay IMs."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.buffer = b""
        self.name = None
        self.seq = 0

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.flap(1, codec.FLAP_VERSION)

    def flap(self, channel, payload):
        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.write(codec.encode_flap(channel, self.seq, payload))

    def dataReceived(self, data):
        frames, self.buffer = codec.parse_flaps(self.buffer + data)
        for frame in frames:
            if frame.channel == 1:
                tlvs = codec.parse_signon(frame.payload)
                if first_tlv(tlvs, 6) is not None:
                    self.name = first_tlv(tlvs, 6)
                    self.sessions[self.name] = self
                    self.flap(2, codec.encode_snac(1, 3, b"\x00\x01\x00\x04"))
                else:
                    name = first_tlv(tlvs, 1)
                    self.flap(4, encode_tlvs([(1, name), (5, b"127.0.0.1:0"), (6, name)]))
                    self.transport.loseConnection()
            elif frame.channel == 2:
                snac = codec.parse_snac(frame.payload)
                if (snac.family, snac.subtype) == (1, 0x17):
                    self.flap(2, codec.encode_snac(1, 0x18, snac.body, 0, snac.request_id))
                elif (snac.family, snac.subtype) == (1, 6):
                    self.flap(2, codec.encode_snac(1, 7, b"\x00\x00", 0, snac.request_id))
                elif (snac.family, snac.subtype) == (4, 6):
                    icbm = codec.parse_icbm_send(snac.body)
                    peer = self.sessions.get(icbm.screen_name)
                    if peer is not None:
                        info = codec.encode_user_info(self.name, [(1, b"\x00\x10")])
                        text = codec.text_parts(icbm.tlv(2))[0].data
                        html = b"<HTML><BODY>" + text + b"</BODY></HTML>"
                        tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, html)])
                        peer.flap(2, codec.encode_snac(4, 7, codec.encode_icbm_receive(icbm.cookie, 1, info,
                                                                                       [(2, tlv2)])))

    def connectionLost(self, reason=None):
        if self.name is not None and self.sessions.get(self.name) is self:
            del self.sessions[self.name]


def serve_relay(port):
    sessions = {}
    factory = protocol.Factory.forProtocol(lambda: BareRelay(sessions))
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


def make_users(folder, count):
    from gateway.storage.db import create_engine, migrate
    from gateway.directory.sql import DirectoryStore
    from gateway.model import Address

    os.makedirs(os.path.join(folder, "var"), exist_ok=True)
    engine = create_engine("sqlite:///" + os.path.join(folder, "var", "gateway.sqlite"))
    migrate(engine)
    store = DirectoryStore(engine, password_n=2**4)
    for i in range(count):
        store.add_person(f"u{i}", password="pw", handles=[Address("aim", f"u{i}")])
    engine.dispose()


class LoadClient(protocol.Protocol):
    """One AIM user: roasted login, then BOS; counts and times the IMs it gets."""

    def __init__(self, bench, name, cookie=None):
        self.bench, self.name, self.cookie = bench, name, cookie
        self.buffer = b""
        self.seq = 0
        self.ready = defer.Deferred()
        self.peer = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def connectionLost(self, reason=None):
        if not self.ready.called and self.peer is None:
            # A login the server closed before its cookie or sign-on (a limit refused it): say so, not hang.
            self.ready.errback(RuntimeError(f"{self.name}: the server closed the connection before "
                                            f"{'BOS sign-on' if self.cookie else 'the login reply'}; see twistd.log"))

    def flap(self, channel, payload):
        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.write(codec.encode_flap(channel, self.seq, payload))

    def dataReceived(self, data):
        frames, self.buffer = codec.parse_flaps(self.buffer + data)
        for frame in frames:
            if frame.channel == 1 and self.cookie is None:
                self.flap(1, codec.FLAP_VERSION + encode_tlvs(
                    [(1, self.name.encode()), (2, codec.roast(b"pw")), (3, b"gateway bench")]))
            elif frame.channel == 1:
                self.flap(1, codec.FLAP_VERSION + encode_tlvs([(6, self.cookie)]))
            elif frame.channel == 4 and self.cookie is None:
                self.ready.callback(first_tlv(codec.parse_tlvs(frame.payload), 6))
            elif frame.channel == 2:
                self.snac(frame.payload)

    def snac(self, payload):
        family, subtype = payload[0:2], payload[2:4]
        if family == b"\x00\x01" and subtype == b"\x00\x03":
            self.flap(2, codec.encode_snac(1, 0x17, bytes.fromhex("0001000300040001"), 0, 1))
        elif family == b"\x00\x01" and subtype == b"\x00\x18":
            self.flap(2, codec.encode_snac(1, 6, b"", 0, 2))
        elif family == b"\x00\x01" and subtype == b"\x00\x07":
            self.flap(2, codec.encode_snac(1, 8, b"\x00\x01\x00\x02", 0, 3))
            self.flap(2, codec.encode_snac(1, 2, bytes.fromhex("0001000301100001"), 0, 4))
            self.ready.callback(self)
        elif family == b"\x00\x04" and subtype == b"\x00\x07":
            at = payload.find(b"<BODY>x")
            if at >= 0:
                end = payload.find(b"<", at + 7)
                self.bench.received(self, int(payload[at + 7:end]))

    def send_im(self, sent_ns):
        to = self.peer.name.encode()
        text = b"x%d" % sent_ns
        tlv2 = b"\x05\x01\x00\x03\x01\x01\x02\x01\x01" + u16(len(text) + 4) + b"\x00\x00\x00\x00" + text
        body = b"cookie!!\x00\x01" + bytes((len(to),)) + to + b"\x00\x02" + u16(len(tlv2)) + tlv2
        self.flap(2, codec.encode_snac(4, 6, body, 0, 9))
        self.bench.sent += 1


class Bench:
    def __init__(self, port, pairs):
        self.port, self.pairs = port, pairs
        self.clients = []
        self.latencies = []
        self.count = 0
        self.sent = 0  # every IM of the run, warm-ups included
        self.closed_loop = False

    @defer.inlineCallbacks
    def connect_all(self):
        for i in range(self.pairs * 2):
            name = f"u{i}"
            login = yield protocol.ClientCreator(reactor, LoadClient, self, name).connectTCP("127.0.0.1", self.port)
            cookie = yield login.ready
            login.transport.loseConnection()
            bos = yield protocol.ClientCreator(reactor, LoadClient, self, name, cookie).connectTCP("127.0.0.1", self.port)
            yield bos.ready
            self.clients.append(bos)
        for i in range(0, len(self.clients), 2):
            a, b = self.clients[i], self.clients[i + 1]
            a.peer, b.peer = b, a

    def received(self, client, sent_ns):
        now = time.perf_counter_ns()
        self.count += 1
        self.latencies.append(now - sent_ns)
        if self.closed_loop:
            client.send_im(time.perf_counter_ns())

    def reset(self):
        self.count = 0
        self.latencies = []

    def figures(self, seconds):
        lat = sorted(self.latencies)
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6 if lat else float("nan")  # noqa: E731
        return {"msgs_per_s": round(self.count / seconds), "p50_ms": round(pick(0.50), 3),
                "p99_ms": round(pick(0.99), 3), "received": self.count}


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / TICK  # user nice system irq softirq


def _process_cpu(pid):
    """``(user, system, reactor thread)`` CPU seconds of a process: all its threads, and its main thread alone."""
    def times(path):
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime

    user, system = times(f"/proc/{pid}/stat")
    return user, system, sum(times(f"/proc/{pid}/task/{pid}/stat"))


def _own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU of the gateway process, of this client and of the rest of the machine over one phase."""

    def __init__(self, gateway_pid):
        self.pid = gateway_pid
        self.start = self._now()

    def _now(self):
        return (time.perf_counter(), *_process_cpu(self.pid), _own_cpu(), _machine_busy())

    def result(self, received):
        wall, user, system, reactor_thread, client, machine = (b - a for a, b in zip(self.start, self._now()))
        gateway = user + system
        per_im = lambda cpu: round(cpu / received * 1e6, 1) if received else None  # noqa: E731
        return {"gateway_cores": round(gateway / wall, 2), "client_cores": round(client / wall, 2),
                "other_cores": round(max(0.0, machine - gateway - client) / wall, 2),
                "gateway_us_per_im": per_im(gateway), "gateway_system_us_per_im": per_im(system),
                "reactor_thread_us_per_im": per_im(reactor_thread), "client_us_per_im": per_im(client)}


@defer.inlineCallbacks
def drain(bench):
    """Wait until no IM has arrived for half a second (an overloaded phase's backlog is gone)."""
    last = -1
    while bench.count != last:
        last = bench.count
        yield sleep(0.5)


@defer.inlineCallbacks
def open_loop(bench, rate, args, pid):
    """``rate`` IMs a second, round-robin over the clients; every tick sends what the elapsed time owes."""
    state = {"debt": 0.0, "next": 0, "last": time.perf_counter(), "sent": 0}
    clients = bench.clients

    def offer():
        now = time.perf_counter()
        state["debt"] += rate * (now - state["last"])
        state["last"] = now
        while state["debt"] >= 1:
            state["sent"] += 1
            state["debt"] -= 1
            client = clients[state["next"] % len(clients)]
            state["next"] += 1
            client.send_im(time.perf_counter_ns())

    loop = task.LoopingCall(offer)
    loop.start(0.001)
    yield sleep(args.warmup)
    bench.reset()
    state["sent"] = 0
    meter = Meter(pid)
    started = time.perf_counter()
    yield sleep(args.duration)
    elapsed = time.perf_counter() - started
    figures = dict(bench.figures(elapsed), offered=rate, sent_per_s=round(state["sent"] / elapsed),
                   cpu=meter.result(bench.count))
    loop.stop()
    yield drain(bench)
    return figures


@defer.inlineCallbacks
def run(args, port, out, pid, sent):
    bench = Bench(port, args.pairs)
    sent.append(0)
    yield bench.connect_all()
    yield sleep(1.0)
    out["open_loop"] = []
    for rate in args.rates:
        figures = yield open_loop(bench, rate, args, pid)
        out["open_loop"].append(figures)
    # closed loop: WINDOW in flight per pair
    bench.closed_loop = True
    for i in range(0, len(bench.clients), 2):
        for _ in range(args.window):
            bench.clients[i].send_im(time.perf_counter_ns())
    yield sleep(args.warmup)
    bench.reset()
    meter = Meter(pid)
    started = time.perf_counter()
    yield sleep(args.duration)
    elapsed = time.perf_counter() - started
    out["closed_loop"] = dict(bench.figures(elapsed), window=args.window, in_flight=args.window * args.pairs,
                              cpu=meter.result(bench.count))
    bench.closed_loop = False
    yield drain(bench)
    sent[0] = bench.sent
    for client in bench.clients:
        client.transport.loseConnection()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rates", default="1000,5000", help="offered rates of the open-loop phases, comma-separated")
    parser.add_argument("--rate", type=int, help="one open-loop rate (instead of --rates)")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--profile", help="write the gateway's cProfile stats to this file")
    parser.add_argument("--baseline", action="store_true",
                        help="run the same load against a bare OSCAR relay (no gateway) instead")
    parser.add_argument("--serve-relay", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rates = [args.rate] if args.rate else [int(r) for r in args.rates.split(",") if r.strip()]
    if args.serve_relay:
        serve_relay(args.serve_relay)
        return

    folder = tempfile.mkdtemp(prefix="bench-oscar-")
    port = free_port()
    # Other connector plugins installed here are not under test: only oscar and the example DLP policy plugin load.
    import importlib.metadata

    installed = {ep.name for ep in importlib.metadata.entry_points(group="gateway")}
    disabled = sorted(installed - {"oscar", "example-dlp"})
    with open(os.path.join(folder, "gateway.toml"), "w") as f:
        f.write(CONFIG.format(port=port, disabled=json.dumps(disabled)))
    log = open(os.path.join(folder, "twistd.log"), "w")
    if args.baseline:
        gateway = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-relay", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
        out = {"case": "oscar-bare-relay", "pairs": args.pairs}
    else:
        make_users(folder, args.pairs * 2)
        profile = ["--profile", os.path.abspath(args.profile), "--profiler=cprofile", "--savestats"] if args.profile else []
        gateway = subprocess.Popen(["twistd", "-n", "--pidfile=", *profile, "gateway", "--config", "gateway.toml"],
                                   cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        out = {"case": "oscar", "pairs": args.pairs, "archive": "sqlite", "policy_rules": 1,
               "policy_plugins": sorted(installed & {"example-dlp"})}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise SystemExit("the gateway did not start; see " + log.name)
                time.sleep(0.1)
        failure = []
        sent = []
        d = run(args, port, out, gateway.pid, sent)
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.callLater(0.5, reactor.stop))
        reactor.run()
        if failure:
            failure[0].raiseException()
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
        log.close()
    count = "select count(*) from events where kind = 'im'"
    rows = subprocess.run(["sqlite3", os.path.join(folder, "var", "gateway.sqlite"), count],
                          capture_output=True, text=True).stdout.strip() if shutil.which("sqlite3") else "?"
    if not args.baseline:
        out["archived_rows"] = rows
        out["ims_sent"] = sent[0]
    label = out["case"]

    def cpu(figures):
        c = figures.get("cpu", {})
        return (f"; CPU: gateway {c.get('gateway_cores')} cores = {c.get('gateway_us_per_im')} us/IM "
                f"(reactor thread {c.get('reactor_thread_us_per_im')}, kernel {c.get('gateway_system_us_per_im')}), "
                f"client {c.get('client_cores')} cores = {c.get('client_us_per_im')} us/IM, "
                f"others {c.get('other_cores')} cores")

    for o in out.get("open_loop", []):
        print(f"{label} open loop  : offered {o['offered']}/s -> {o['msgs_per_s']} msg/s, "
              f"p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms" + cpu(o))
    c = out.get("closed_loop", {})
    print(f"{label} closed loop: window {args.window} x {args.pairs} pairs -> {c.get('msgs_per_s')} msg/s, "
          f"p50 {c.get('p50_ms')} ms, p99 {c.get('p99_ms')} ms" + cpu(c))
    print(json.dumps(out))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
