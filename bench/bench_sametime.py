"""
Sametime IM relay bench: pairs of Sametime sessions through the whole gateway (archive on).

    python bench/bench_sametime.py [--pairs 20] [--rate 400] [--duration 10] [--window 16] [--cipher none|rc2-40|rc2-128]

Starts ``twistd -n gateway`` on a temporary SQLite database with PAIRS*2
people, logs every one in over TCP with this plugin's own codec (a lean
client: RC2/40 login, one IM channel per pair), then the first of each pair
sends to the second at a fixed offered load (messages a second, spread over
the pairs); then, at saturation, each sender keeps ``--window`` messages in
flight (a message received makes its sender send the next; ``--window 0``
skips this). Prints for each phase the achieved messages a second and latency
percentiles (send to receipt, both in this process), for the saturation the
CPU the gateway's processes used per message, and how many messages the
archive holds at the end. Nothing here is a test: numbers vary with the machine.
"""

import argparse
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
from twisted.internet import protocol, reactor, task  # noqa: E402  (a standalone program: the global reactor is fine)

from gateway_sametime import codec, crypto  # noqa: E402

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

[connectors.sametime]
listen = ["tcp:{port}:interface=127.0.0.1"]
# The bench's lean client logs in with RC2/40 only (the login is not what is measured here).
login_cipher = "rc2-40"
allow_weak_login = true
channel_ciphers = {ciphers}
rate = 100000
max_channels = 16
"""

CIPHERS = {"none": [], "rc2-40": ["rc2-40"], "rc2-128": ["rc2-128"]}


class Stats:
    def __init__(self):
        self.sent = 0
        self.received = 0
        self.latencies = []
        self.measuring = False
        self.errors = []


class Session(protocol.Protocol):
    """One lean Sametime client: login, one IM channel, accept the server's channels."""

    def __init__(self, bench, user, peer):
        self.bench, self.user, self.peer = bench, user, peer
        self.buffer = b""
        self.channel = None  # the IM channel we opened
        self.login_id = None
        self.keys = crypto.DHKeypair()
        self.streams = {}  # channel id -> (out stream, in stream)

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.send(codec.Handshake())

    def send(self, message):
        self.transport.write(codec.frame(message))

    def offer(self):
        kind = self.bench.cipher
        if kind == "rc2-128":
            return codec.EncryptOffer(codec.ENCRYPT_RC2_128, (codec.EncryptItem(codec.CIPHER_RC2_128, self.keys.public_bytes),))
        if kind == "rc2-40":
            return codec.EncryptOffer(codec.ENCRYPT_RC2_40, (codec.EncryptItem(codec.CIPHER_RC2_40),))
        return codec.EncryptOffer()

    def key(self, cid, item, peer_login):
        if item is None:
            return
        if item.cipher == codec.CIPHER_RC2_128:
            key = self.keys.rc2_key(item.info)
            self.streams[cid] = (crypto.Rc2Stream(key), crypto.Rc2Stream(key))
        else:
            self.streams[cid] = (
                crypto.Rc2Stream(crypto.rc2_40_key(self.login_id)),
                crypto.Rc2Stream(crypto.rc2_40_key(peer_login.login_id)),
            )

    def dataReceived(self, data):
        payloads, self.buffer, _ = codec.split_frames(self.buffer + data, 1 << 20)
        for payload in payloads:
            self.handle(codec.decode(payload))

    def handle(self, m):
        if isinstance(m, codec.HandshakeAck):
            auth = crypto.compose_auth_rc2_40("secret", os.urandom(5))
            self.send(codec.Login(0x1700, self.user, auth, codec.AUTH_RC2_40))
        elif isinstance(m, codec.LoginAck):
            self.login_id = m.login.login_id
            if self.peer is not None:
                self.send(codec.ChannelCreate(
                    1, codec.IdBlock(self.peer), codec.SERVICE_IM, 0x1000, 3,
                    codec.ImAddtl().encode(), None, self.offer(),
                ))
            else:
                self.bench.ready(self)
        elif isinstance(m, codec.ChannelAccept) and m.channel == 1:
            self.key(1, m.encrypt.item, m.acceptor)
            self.channel = 1
            self.bench.ready(self)
        elif isinstance(m, codec.ChannelCreate):
            reply = codec.EncryptAccept()
            if m.encrypt.items:
                item = m.encrypt.items[0]
                info = self.keys.public_bytes if item.cipher == codec.CIPHER_RC2_128 else b""
                reply = codec.EncryptAccept(m.encrypt.mode, codec.EncryptItem(item.cipher, info))
                self.key(m.id, item, m.creator)
            self.send(codec.ChannelAccept(codec.SERVICE_IM, 0x1000, 3, codec.ImAddtl(1, 1, codec.UserStatus()).encode(),
                                          None, reply, channel=m.id))
        elif isinstance(m, codec.ChannelSend) and m.type == codec.IM_MESSAGE:
            data = self.streams[m.channel][1].decrypt(m.data) if m.encrypted else m.data
            im = codec.decode_im(data)
            if isinstance(im, codec.ImText):
                self.bench.arrived(im.text)
        elif isinstance(m, codec.ChannelDestroy):
            self.bench.stats.errors.append((self.user, m.channel, hex(m.reason)))

    def say(self, text):
        data = codec.encode_im(codec.ImText(text))
        if self.channel in self.streams:
            self.send(codec.ChannelSend(codec.IM_MESSAGE, self.streams[self.channel][0].encrypt(data), True, channel=self.channel))
        else:
            self.send(codec.ChannelSend(codec.IM_MESSAGE, data, channel=self.channel))


class Bench:
    def __init__(self, args, port):
        self.args, self.port = args, port
        self.cipher = args.cipher
        self.stats = Stats()
        self.senders = []
        self.waiting = args.pairs * 2
        self.started = None
        self.closed_loop = False
        self.result = {}

    def connect_all(self):
        for i in range(self.args.pairs):
            a, b = f"u{2 * i:04d}", f"u{2 * i + 1:04d}"
            protocol.ClientCreator(reactor, Session, self, b, None).connectTCP("127.0.0.1", self.port)
            protocol.ClientCreator(reactor, Session, self, a, b).connectTCP("127.0.0.1", self.port)

    def ready(self, session):
        if session.peer is not None:
            self.senders.append(session)
        self.waiting -= 1
        if self.waiting == 0:
            print(f"all {self.args.pairs * 2} sessions logged in in {time.monotonic() - self.t0:.1f}s", flush=True)
            reactor.callLater(1.0, self.start_load)

    def start_load(self):
        self.started = time.monotonic()
        self.tick = 0.005
        self.per_tick = self.args.rate * self.tick
        self.credit = 0.0
        self.next_sender = 0
        self.loop = task.LoopingCall(self.send_some)
        self.loop.start(self.tick)
        reactor.callLater(self.args.warmup, self.begin_measure)
        reactor.callLater(self.args.warmup + self.args.duration, self.end_measure)

    def send_some(self):
        self.credit += self.per_tick
        while self.credit >= 1:
            self.credit -= 1
            self.send_from(self.next_sender % len(self.senders))
            self.next_sender += 1

    def send_from(self, index):
        self.stats.sent += 1
        self.senders[index].say(f"{time.perf_counter_ns()} {index} bench message {self.stats.sent}")

    def arrived(self, text):
        sent_ns, index, _ = text.split(" ", 2)
        if self.closed_loop:
            self.send_from(int(index))
        if not self.stats.measuring:
            return
        self.stats.received += 1
        self.stats.latencies.append((time.perf_counter_ns() - int(sent_ns)) / 1e6)

    def begin_measure(self):
        self.stats.measuring = True
        self.measure_start = time.monotonic()

    def end_measure(self):
        figures = self.figures()
        self.loop.stop()
        self.result.update({
            "pairs": self.args.pairs,
            "cipher": self.cipher,
            "offered_msgs_per_s": self.args.rate,
            "delivered_msgs_per_s": figures["msgs_per_s"],
            "latency_ms": figures["latency_ms"],
            "channel_errors": self.stats.errors[:5],
        })
        if self.args.window > 0:
            reactor.callLater(1.0, self.saturate)
        else:
            reactor.callLater(2.0, reactor.stop)  # let the last messages reach the archive queue

    def figures(self):
        self.stats.measuring = False
        elapsed = time.monotonic() - self.measure_start
        lat = sorted(self.stats.latencies)
        self.stats.latencies, received, self.stats.received = [], self.stats.received, 0

        def pct(p):
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

        return {"msgs_per_s": round(received / elapsed, 1), "received": received,
                "latency_ms": {"p50": round(pct(50), 2), "p90": round(pct(90), 2), "p99": round(pct(99), 2),
                               "max": round(lat[-1], 2) if lat else None}}

    def saturate(self):
        """Closed loop: ``window`` messages in flight from every sender, for ``duration`` after ``warmup``."""
        self.closed_loop = True
        for index in range(len(self.senders)):
            for _ in range(self.args.window):
                self.send_from(index)
        reactor.callLater(self.args.warmup, self.begin_saturation)

    def begin_saturation(self):
        self.begin_measure()
        self.cpu_start = (time.monotonic(), gateway_cpu(self.gateway_pid))
        reactor.callLater(self.args.duration, self.end_saturation)

    def end_saturation(self):
        figures = self.figures()
        wall, cpu = (b - a for a, b in zip(self.cpu_start, (time.monotonic(), gateway_cpu(self.gateway_pid))))
        self.closed_loop = False
        self.result["saturation"] = dict(
            figures, window=self.args.window, in_flight=self.args.window * len(self.senders),
            gateway_cores=round(cpu / wall, 2),
            gateway_us_per_msg=round(cpu / figures["received"] * 1e6, 1) if figures["received"] else None,
        )
        reactor.callLater(2.0, reactor.stop)  # let the last messages reach the archive queue


def gateway_cpu(pid):
    """CPU seconds (user + system) of the gateway process and of its archive writer process."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(child) for child in f.read().split()]
    except OSError:
        pass
    for each in pids:
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rate", type=int, default=400, help="offered messages a second, all pairs together")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=16,
                        help="saturation: messages in flight per sender (0: no saturation phase)")
    parser.add_argument("--cipher", choices=sorted(CIPHERS), default="rc2-128", help="IM channel cipher")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    args = parser.parse_args()

    from gateway.storage.db import create_engine, migrate
    from gateway.directory.sql import DirectoryStore

    folder = tempfile.mkdtemp(prefix="bench-sametime-")
    try:
        os.makedirs(os.path.join(folder, "var"))
        engine = create_engine(f"sqlite:///{folder}/var/gateway.sqlite")
        migrate(engine)
        store = DirectoryStore(engine)
        t = time.monotonic()
        for i in range(args.pairs * 2):
            store.add_person(f"u{i:04d}", password="secret", handles=[f"sametime:u{i:04d}"])
        engine.dispose()
        print(f"created {args.pairs * 2} people in {time.monotonic() - t:.1f}s", flush=True)
        port = free_port()
        config = os.path.join(folder, "gateway.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=port, ciphers=json.dumps(CIPHERS[args.cipher])))
        log = open(os.path.join(folder, "gateway.log"), "w")
        argv = ["twistd", "-n", "--pidfile="]
        if args.profile:
            argv += [f"--profile={os.path.abspath(args.profile)}", "--profiler=cprofile", "--savestats"]
        gateway = subprocess.Popen(argv + ["gateway", "--config", config], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if gateway.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the gateway did not start; see {folder}/gateway.log")
                    time.sleep(0.1)
            bench = Bench(args, port)
            bench.gateway_pid = gateway.pid
            bench.t0 = time.monotonic()
            bench.connect_all()
            reactor.run()
        finally:
            gateway.terminate()
            gateway.wait(30)
            log.close()
        engine = create_engine(f"sqlite:///{folder}/var/gateway.sqlite")
        with engine.connect() as conn:
            import sqlalchemy as sa

            archived = conn.execute(sa.text("select count(*) from events where kind = 'im'")).scalar()
        bench.result["archived_im_rows"] = archived
        bench.result["sent_total"] = bench.stats.sent
        print(json.dumps(bench.result, indent=2))
    finally:
        if args.keep:
            print("kept", folder)
        else:
            shutil.rmtree(folder, True)


if __name__ == "__main__":
    main()
