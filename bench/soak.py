"""
The soak: many sessions on a real gateway for a long time, with bad input now and then.

    python bench/soak.py --quick                     # 5 minutes
    python bench/soak.py --minutes 60 [--sessions 10000] [--rate 500] [--json FILE]

Starts ``twistd gateway`` (SQLite, the default durable archive with its
writer process, the line, XMPP and OSCAR connectors on free loopback ports)
with ``--sessions`` people in its directory, then, in this process (one
Twisted reactor), logs each of them in on one of the three networks (a
third each), from many loopback source addresses (127.0.0.2 ... ; 40
connections from each, under the default per-address limit of 50) and runs
a steady load: ``--rate`` messages a second in all, each to the sender's
partner (the next person, logged in on another network: every message
crosses networks), stamped so the receiver measures its latency, and
presence changes at a tenth of that rate (the partner has the sender as a
contact, so each change is decided, archived and shown).

Every minute one line: the gateway's resident memory (and its archive
writer's), sessions and archive backlog (``/status``), messages sent and
received in that minute, latency p50/p99, and errors (connections lost,
tracebacks in the gateway's log). From minute 2 on, every other minute, a
burst of bad input: mutated logins and frames (from the fuzz seeds) on 200
connections per listener and 20 slowloris connections (one byte, then
nothing) per listener.

At the end: the memory drift from the first minute after warm-up to the
last (goal: within 5 %), backlog growth, messages lost (sent and not
received) and archive rows against messages accepted. Figures only: goals
missed are WARNING lines, the exit status is 0 unless the run broke.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import common
from common import free_port, machine_info, raise_fd_limit, rss_kb

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

STAMP = re.compile(rb"soak(\d+)z")
NETWORKS = ("line", "xmpp", "aim")
PER_SOURCE = 40
TOKEN = "soak-admin-token"

CONFIG = """\
# Written by bench/soak.py for one run.
[gateway]
node = "soak"
data_dir = "{dir}/var"

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"
token = "{token}"

[archive]
presence = true

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
# The load sends at most a few lines a second per connection; the default (20) is kept.

[connectors.xmpp]
domain = "localhost"
listen = ["tcp:{xmpp}:interface=127.0.0.1"]
require_tls = false

[connectors.oscar]
listen = ["tcp:{oscar}:interface=127.0.0.1"]
bos_address = "127.0.0.1:{oscar}"
"""


def make_users(folder, count):
    """``count`` people u0..uN with a handle on each network; each has the next as a contact."""
    from gateway.storage.db import create_engine, migrate
    from gateway.directory.sql import DirectoryStore
    from gateway.model import Address, Contact  # noqa: F401

    os.makedirs(os.path.join(folder, "var"), exist_ok=True)
    engine = create_engine("sqlite:///" + os.path.join(folder, "var", "gateway.sqlite"))
    migrate(engine)
    # A cheap password hash for the bench's 10,000 people (the default costs ~50 ms a login).
    store = DirectoryStore(engine, password_n=2**4)
    for i in range(count):
        store.add_person(f"u{i}", password="pw",
                         handles=[Address("line", f"u{i}"), Address("xmpp", f"u{i}", "localhost"),
                                  Address("aim", f"u{i}")])
    for i in range(count):
        store.set_contacts(f"u{i}", [Contact(f"line:u{(i - 1) % count}")])
    engine.dispose()


# -- clients: each logs in, then sends to its partner and finds stamps in what it receives ----------


class Client(protocol.Protocol):
    def __init__(self, soak, index):
        self.soak, self.index = soak, index
        self.name = f"u{index}"
        self.ready = defer.Deferred()
        self.logged_in = False
        self.buffer = b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def received_stamps(self, data):
        for match in STAMP.finditer(data):
            self.soak.received(int(match.group(1)))

    def connectionLost(self, reason):
        if self.logged_in:
            self.soak.lost += 1
        if not self.ready.called:
            self.ready.errback(reason)


class LineClient(Client):
    network = "line"

    def dataReceived(self, data):
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if line.startswith(b"HELLO"):
                self.transport.write(f"LOGIN {self.name} pw\n".encode())
            elif line.startswith(b"OK LOGIN"):
                self.logged_in = True
                self.ready.callback(self)
            elif line.startswith(b"FROM"):
                self.received_stamps(line)
            elif line.startswith(b"ERR") and not self.logged_in:
                self.ready.errback(RuntimeError(line.decode()))

    def send_to(self, partner, text):
        self.transport.write(f"MSG line:{partner} {text}\n".encode())

    def presence(self, away):
        self.transport.write(b"AWAY soaking\n" if away else b"BACK\n")


XMPP_HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
               b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class XmppClient(Client):
    network = "xmpp"
    step = "features1"

    def connectionMade(self):
        super().connectionMade()
        self.transport.write(XMPP_HEADER)

    def dataReceived(self, data):
        if self.logged_in:
            self.received_stamps(data)
            return
        self.buffer += data
        b = self.buffer
        if self.step == "features1" and b"</stream:features>" in b:
            creds = base64.b64encode(f"\0{self.name}\0pw".encode())
            self.transport.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + creds
                                 + b"</auth>")
            self.step, self.buffer = "success", b""
        elif self.step == "success" and (b"<success" in b or b"<failure" in b):
            if b"<failure" in b:
                self.ready.errback(RuntimeError(f"{self.name}: {b!r}"))
                return
            self.transport.write(XMPP_HEADER)
            self.step, self.buffer = "features2", b""
        elif self.step == "features2" and b"</stream:features>" in b:
            self.transport.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                 b"<resource>soak</resource></bind></iq>")
            self.step, self.buffer = "bind", b""
        elif self.step == "bind" and b"</iq>" in b:
            self.transport.write(b"<presence/>")
            self.step, self.buffer, self.logged_in = "ready", b"", True
            self.ready.callback(self)

    def send_to(self, partner, text):
        self.transport.write(f"<message type='chat' to='{partner}@localhost'><body>{text}</body></message>".encode())

    def presence(self, away):
        self.transport.write(b"<presence><show>away</show></presence>" if away else b"<presence/>")


class AimClient(Client):
    """Roasted login on one connection, then BOS with the cookie on a second (the first is closed)."""

    network = "aim"

    def __init__(self, soak, index, cookie=None):
        super().__init__(soak, index)
        self.cookie = cookie
        self.seq = 0

    def flap(self, channel, payload):
        from gateway_oscar import codec

        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.write(codec.encode_flap(channel, self.seq, payload))

    def dataReceived(self, data):
        from gateway_oscar import codec

        frames, self.buffer = codec.parse_flaps(self.buffer + data)
        for frame in frames:
            if frame.channel == 1 and self.cookie is None:
                self.flap(1, codec.FLAP_VERSION + codec.encode_tlvs(
                    [(1, self.name.encode()), (2, codec.roast(b"pw")), (3, b"gateway soak")]))
            elif frame.channel == 1:
                self.flap(1, codec.FLAP_VERSION + codec.encode_tlvs([(6, self.cookie)]))
            elif frame.channel == 4 and self.cookie is None:
                cookie = codec.first_tlv(codec.parse_tlvs(frame.payload), 6)
                if cookie is None:
                    self.ready.errback(RuntimeError(f"{self.name}: login refused"))
                else:
                    self.ready.callback(cookie)
            elif frame.channel == 2:
                self.snac(frame.payload)

    def snac(self, payload):
        from gateway_oscar import codec

        family, subtype = payload[0:2], payload[2:4]
        if family == b"\x00\x01" and subtype == b"\x00\x03":
            self.flap(2, codec.encode_snac(1, 0x17, bytes.fromhex("0001000300040001"), 0, 1))
        elif family == b"\x00\x01" and subtype == b"\x00\x18":
            self.flap(2, codec.encode_snac(1, 6, b"", 0, 2))
        elif family == b"\x00\x01" and subtype == b"\x00\x07":
            self.flap(2, codec.encode_snac(1, 8, b"\x00\x01\x00\x02", 0, 3))
            self.flap(2, codec.encode_snac(1, 2, bytes.fromhex("0001000301100001"), 0, 4))
            self.logged_in = True
            self.ready.callback(self)
        elif family == b"\x00\x04" and subtype == b"\x00\x07":
            self.received_stamps(payload)

    def send_to(self, partner, text):
        from gateway_oscar import codec

        to, data = partner.encode(), text.encode()
        body = b"cookie!!\x00\x01" + bytes((len(to),)) + to + codec.encode_text_tlv(0, data)
        self.flap(2, codec.encode_snac(4, 6, body, 0, 9))

    def presence(self, away):
        from gateway_oscar import codec

        status = b"\x00\x00\x00\x01" if away else b"\x00\x00\x00\x00"
        self.flap(2, codec.encode_snac(1, 0x1E, codec.encode_tlvs([(6, status)]), 0, 5))


# -- the run -------------------------------------------------------------------------------------


def mutate(rng, seed):
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        if data and rng.random() < 0.7:
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(data)


class Junk(protocol.Protocol):
    """A connection that sends ``data`` (or one byte, for slowloris) and waits to be closed."""

    def __init__(self, soak, data):
        self.soak, self.data = soak, data

    def connectionMade(self):
        self.transport.write(self.data)
        self.soak.junk_open += 1

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        self.soak.junk_open -= 1


class Soak:
    def __init__(self, args, ports, gateway):
        self.args, self.ports, self.gateway = args, ports, gateway
        self.clients = []
        self.sent = self.received_count = self.lost = 0
        self.minute_sent = self.minute_received = 0
        self.latencies = []
        self.rng = random.Random(7)
        self.junk_open = 0
        self.bursts = 0
        self.rows = []
        self.log_offset = 0
        self.tracebacks = 0

    def received(self, stamp):
        self.received_count += 1
        self.minute_received += 1
        self.latencies.append(time.perf_counter_ns() - stamp)

    @defer.inlineCallbacks
    def log_in_all(self):
        count = self.args.sessions
        started = time.monotonic()
        addresses = -(-count // PER_SOURCE)
        batch = min(200, addresses * 2)  # at most 2 logins at once from one address
        for first in range(0, count, batch):
            yield defer.gatherResults([self.log_in(i) for i in range(first, min(count, first + batch))])
        print(f"soak: {count} sessions logged in in {time.monotonic() - started:.1f} s", flush=True)
        # This process holds 10,000 clients too: as the gateway does (gateway/service.py), keep its own
        # full collections rare, so that their pauses do not count as the gateway's latency.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 10, 10)

    @defer.inlineCallbacks
    def log_in(self, index):
        network = NETWORKS[index % 3]
        # Consecutive people log in from different addresses: a batch of logins never queues more than
        # [directory] login_queue_per_source (4) password checks from one address.
        n = index % -(-self.args.sessions // PER_SOURCE)
        source = f"127.0.{n // 250}.{2 + n % 250}"
        cls = {"line": LineClient, "xmpp": XmppClient, "aim": AimClient}[network]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[network], timeout=30,
                                      bindAddress=(source, 0))
        client = yield connectProtocol(endpoint, cls(self, index))
        result = yield client.ready
        if network == "aim":
            client.logged_in = False
            client.transport.loseConnection()
            bos = AimClient(self, index, cookie=result)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["aim"], timeout=30,
                                          bindAddress=(source, 0))
            client = yield connectProtocol(endpoint, bos)
            yield client.ready
        self.clients.append(client)

    def tick(self):
        """One 10 ms step of the load: rate/100 messages, rate/1000 presence changes (carried over)."""
        self._credit = getattr(self, "_credit", 0.0) + self.args.rate / 100.0
        while self._credit >= 1:
            self._credit -= 1
            client = self.rng.choice(self.clients)
            partner = f"u{(client.index + 1) % self.args.sessions}"
            client.send_to(partner, f"soak{time.perf_counter_ns()}z")
            self.sent += 1
            self.minute_sent += 1
        self._presence = getattr(self, "_presence", 0.0) + self.args.rate / 1000.0
        while self._presence >= 1:
            self._presence -= 1
            self.rng.choice(self.clients).presence(self.rng.random() < 0.5)

    def burst(self):
        """Bad input: mutated logins and frames, and slowloris connections, on every listener."""
        sys.path.insert(0, common.ROOT)
        from fuzz import targets

        seeds = {"line": "line", "xmpp": "xmpp-c2s", "aim": "oscar"}
        self.bursts += 1
        for network, target in seeds.items():
            samples = [s[1:] for s in targets.SEEDS[target]]
            for n in range(220):
                data = mutate(self.rng, self.rng.choice(samples)) if n < 200 else b"<"
                source = f"127.0.250.{2 + n % 200}"
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[network], timeout=10,
                                              bindAddress=(source, 0))
                connectProtocol(endpoint, Junk(self, data)).addErrback(lambda f: None)

    @defer.inlineCallbacks
    def status(self):
        from twisted.web.client import Agent, readBody
        from twisted.web.http_headers import Headers

        agent = Agent(reactor)
        response = yield agent.request(b"GET", f"http://127.0.0.1:{self.ports['admin']}/status".encode(),
                                       Headers({b"Authorization": [f"Bearer {TOKEN}".encode()]}))
        body = yield readBody(response)
        return json.loads(body)

    def new_tracebacks(self):
        with open(self.gateway.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(self.log_offset)
            text = f.read()
            self.log_offset = f.tell()
        return text.count("Traceback")

    @defer.inlineCallbacks
    def report(self, minute):
        status = yield self.status()
        latencies = sorted(self.latencies)
        pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6, 2) \
            if latencies else None  # noqa: E731
        self.tracebacks += self.new_tracebacks()
        row = {
            "minute": minute,
            "rss_mb": round(rss_kb(self.gateway.process.pid) / 1024, 1),
            "writer_rss_mb": round(sum(rss_kb(pid) for pid in children(self.gateway.process.pid)) / 1024, 1),
            "sessions": sum(status["sessions"].values()),
            "backlog": status["archive"]["queue_depth"],
            "spooled": status["archive"]["spooled"],
            "sent": self.minute_sent,
            "received": self.minute_received,
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "lost_connections": self.lost,
            "tracebacks": self.tracebacks,
            "bursts": self.bursts,
        }
        self.rows.append(row)
        self.minute_sent = self.minute_received = 0
        self.latencies = []
        print("soak: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def children(pid):
    """The process ids whose parent is ``pid`` (the archive writer)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


class Gateway:
    def __init__(self, folder, ports):
        self.log_path = os.path.join(folder, "gateway.log")
        config = os.path.join(folder, "gateway.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(dir=folder, token=TOKEN, **ports))
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=common.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config],
                                        cwd=folder, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait(self, ports, timeout=60):
        import socket

        deadline = time.monotonic() + timeout
        for port in ports:
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(f"the gateway exited:\n{open(self.log_path).read()[-3000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"nothing on port {port}")
                    time.sleep(0.2)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def count_rows(folder):
    import sqlite3

    db = sqlite3.connect(os.path.join(folder, "var", "gateway.sqlite"))
    try:
        return dict(db.execute("select kind, count(*) from events group by kind").fetchall())
    finally:
        db.close()


def verdict(soak, args, rows_by_kind):
    rows = soak.rows
    warm = rows[1] if len(rows) > 2 else rows[0]
    last = rows[-1]
    drift = (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"] * 100 if warm["rss_mb"] else 0.0
    summary = {
        "minutes": len(rows),
        "sessions": args.sessions,
        "rate": args.rate,
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_last_mb": last["rss_mb"],
        "rss_drift_percent": round(drift, 2),
        "backlog_first": warm["backlog"],
        "backlog_last": last["backlog"],
        "sent": soak.sent,
        "received": soak.received_count,
        "lost_messages": soak.sent - soak.received_count,
        "archived_im_rows": rows_by_kind.get("im", 0),
        "archived_presence_rows": rows_by_kind.get("presence", 0),
        "lost_connections": soak.lost_in_run,
        "tracebacks": soak.tracebacks,
        "bursts": soak.bursts,
    }
    print("soak: " + json.dumps(summary), flush=True)
    if abs(drift) > 5:
        print(f"WARNING: memory drifted {drift:.1f} % after warm-up (goal: within 5 %)")
    if last["backlog"] > max(1000, 2 * warm["backlog"]):
        print(f"WARNING: the archive backlog grew from {warm['backlog']} to {last['backlog']}")
    if summary["lost_messages"]:
        print(f"WARNING: {summary['lost_messages']} messages sent were not received")
    if summary["archived_im_rows"] < soak.received_count:
        print(f"WARNING: {summary['archived_im_rows']} im rows archived for {soak.received_count} received")
    if soak.lost_in_run or soak.tracebacks:
        print(f"WARNING: {soak.lost_in_run} sessions lost their connection; {soak.tracebacks} tracebacks logged")
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--quick", action="store_true", help="5 minutes")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=500, help="messages a second in all")
    parser.add_argument("--json", default="")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (gateway log, database)")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 5
    raise_fd_limit()
    folder = tempfile.mkdtemp(prefix="gateway-soak-")
    ports = {name: free_port() for name in ("line", "xmpp", "oscar", "admin")}
    ports["aim"] = ports["oscar"]
    started = time.monotonic()
    make_users(folder, args.sessions)
    print(f"soak: {args.sessions} people in the directory in {time.monotonic() - started:.1f} s; "
          f"{args.minutes:g} minutes at {args.rate} msg/s", flush=True)
    gateway = Gateway(folder, ports)
    gateway.wait([ports["line"], ports["xmpp"], ports["oscar"], ports["admin"]])
    soak = Soak(args, ports, gateway)
    outcome = {}

    @defer.inlineCallbacks
    def run():
        try:
            yield soak.log_in_all()
            loop = task.LoopingCall(soak.tick)
            loop.start(0.01)
            minutes = int(round(args.minutes))
            for minute in range(1, minutes + 1):
                if minute >= 2 and minute % 2 == 0 and minute < minutes:
                    reactor.callLater(20, soak.burst)
                yield task.deferLater(reactor, 60, lambda: None)
                yield soak.report(minute)
            loop.stop()
            yield task.deferLater(reactor, 5, lambda: None)  # what is in flight arrives
            soak.lost_in_run = soak.lost  # before the gateway stops and closes every session
            outcome["ok"] = True
        except Exception as e:  # the run broke: say so, exit 1
            outcome["error"] = repr(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    gateway.stop()
    if "error" in outcome:
        print(f"soak: the run broke: {outcome['error']}\n{open(gateway.log_path).read()[-3000:]}")
        return 1
    summary = verdict(soak, args, count_rows(folder))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "minutes": soak.rows, "summary": summary}, f, indent=2)
    if args.keep:
        print(f"soak: kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
