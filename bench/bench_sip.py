"""
SIP MESSAGE relay between two SIP users through the gateway (policy and SQLite archive on), and the
same load through Kamailio alone, both driven by SIPp over UDP in the same run.

    python bench/bench_sip.py [--rate 1000] [--seconds 10] [--saturate 20000] [--window 200]
    python bench/bench_sip.py --cpu [--messages 20000] [--profile FILE]

Prints, for each server: the offered and achieved rate at a fixed rate with response-time p50/p99
(SIPp's response time 1: MESSAGE sent -> 200 received), the rate at saturation (SIPp sends as fast
as it may with ``--window`` messages in flight), the CPU time each server used per MESSAGE during
the saturation run (user + system, all its processes), and the ratio gateway / Kamailio.
Needs twistd with gateway-sip and the example plugin installed, sipp and kamailio.

``--cpu`` measures the gateway alone, in this process and without sockets: the same config, a
`GatewayService` with its SQLite archive, and two simulated user agents that register with digest
and then relay ``--messages`` MESSAGEs (alice -> bob, bob answers 200) through the SIP connector's
UDP protocol. It prints the reactor thread's CPU time per MESSAGE (the connector and the core; the
archive writer thread is counted apart) and, with ``--profile FILE``, a cProfile of that thread's
CPU time with the share of the SIP connector, the core, Twisted and the rest.
"""

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPP_DIR = os.path.join(ROOT, "tests", "interop", "sipp")
sys.path.insert(0, ROOT)

from tests.interop.test_sip_kamailio import KAMAILIO_CFG, PEER_SECRET  # noqa: E402  the same Kamailio as the interop test

GATEWAY = """
[gateway]
node = "bench"
data_dir = "var"
# Every bench client logs in at once from 127.0.0.1: more password checks from one address than the
# throttle lets wait by default (4), and than it counts as failures while they run.
[directory]
demo_users = true
login_queue_per_source = 100000
login_queue = 100000
login_failures_per_source = 100000
[admin]
listen = ""
[archive]
presence = true
[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:{port}"]
listen = []
rate = 0.0
max_message_size = 4096
"""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_udp_answer(port, host="127.0.0.1", timeout=20):
    """Wait until something answers SIP on host:port."""
    deadline = time.monotonic() + timeout
    # A REGISTER for a domain neither serves: both answer it at once (404 / 403).
    probe = ("REGISTER sip:probe.invalid SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe;rport\r\n"
             "From: <sip:probe@probe.invalid>;tag=p\r\nTo: <sip:probe@probe.invalid>\r\nCall-ID: probe\r\n"
             "CSeq: 1 REGISTER\r\nContact: <sip:probe@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            s.sendto(probe, (host, port))
            try:
                s.recv(65536)
                return
            except OSError:
                time.sleep(0.2)
    raise SystemExit(f"nothing answers on {host}:{port}")


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sipp(workdir, server, scenario, user, port, domain, extra=(), keys=(), wait=True):
    command = ["sipp", "-sf", os.path.join(SIPP_DIR, scenario), "-s", user, "-au", user, "-ap", "secret",
               "-key", "domain", domain, "-key", "expires", "3600"]
    for name, value in keys:
        command += ["-key", name, value]
    command += [server, "-i", "127.0.0.1", "-p", str(port), "-t", "u1", "-nostdin", "-buff_size", "4194304", *extra]
    log = open(os.path.join(workdir, f"sipp-{scenario}-{port}.out"), "w")
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    if wait:
        status = process.wait(timeout=600)
        if status != 0:
            raise SystemExit(f"sipp {scenario} failed ({status}); see {log.name}")
    return process


def process_cpu(pids):
    """User + system CPU seconds used so far by ``pids`` and their child processes (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted, total = set(pids), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) in wanted or int(fields[1]) in wanted:  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])
    return total / tick


def load(workdir, server, domain, to, sender_port, rate, count, window):
    """Run bench_uac.xml; return (achieved msg/s, [response times ms], failed calls)."""
    for old in glob.glob(os.path.join(workdir, "bench_uac_*_rtt.csv")):
        os.remove(old)
    extra = ["-r", str(rate), "-rp", "1000", "-m", str(count), "-l", str(window), "-trace_rtt", "-rtt_freq", "1",
             "-timeout", "300s", "-recv_timeout", "10000"]
    started = time.perf_counter()
    process = sipp(workdir, server, "bench_uac.xml", "alice", sender_port, domain, extra,
                   keys=[("to", to)], wait=False)
    process.wait(timeout=900)
    elapsed = time.perf_counter() - started
    times = []
    for path in glob.glob(os.path.join(workdir, "bench_uac_*_rtt.csv")):
        with open(path) as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) >= 2 and parts[1].replace(".", "", 1).isdigit():
                    times.append(float(parts[1]))
    failed = count - len(times)
    return len(times) / elapsed, times, failed


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(name, workdir, server, domain, to, receiver_port, sender_port, args, register_sender, pid):
    sipp(workdir, server, "register.xml", to.split("@")[0], receiver_port, domain, ["-m", "1"])
    total = args.rate * args.seconds + args.saturate + 10
    sink = sipp(workdir, server, "bench_uas.xml", to.split("@")[0], receiver_port, domain,
                ["-m", str(total), "-timeout", "900s"], wait=False)
    time.sleep(0.5)
    if register_sender:
        sipp(workdir, server, "register.xml", "alice", sender_port, domain, ["-m", "1"])
    results = {}
    rate, times, failed = load(workdir, server, domain, to, sender_port, args.rate, args.rate * args.seconds, args.window)
    results["fixed"] = (rate, percentile(times, 50), percentile(times, 99), failed)
    cpu = process_cpu([pid])
    rate, times, failed = load(workdir, server, domain, to, sender_port, 1_000_000, args.saturate, args.window)
    cpu = process_cpu([pid]) - cpu
    results["saturated"] = (rate, percentile(times, 50), percentile(times, 99), failed)
    results["cpu_us"] = cpu / max(1, len(times)) * 1e6
    stop(sink)
    print(f"{name:10s} fixed {args.rate}/s offered: {results['fixed'][0]:8.0f} msg/s  "
          f"p50 {results['fixed'][1]:6.2f} ms  p99 {results['fixed'][2]:7.2f} ms  failed {results['fixed'][3]}")
    print(f"{name:10s} saturated ({args.window} in flight): {results['saturated'][0]:8.0f} msg/s  "
          f"p50 {results['saturated'][1]:6.2f} ms  p99 {results['saturated'][2]:7.2f} ms  failed {results['saturated'][3]}  "
          f"CPU {results['cpu_us']:.0f} us/msg", flush=True)
    return results

# -- --cpu: the gateway alone, in this process --------------------------------------------------

ALICE, BOB = ("127.0.0.1", 40002), ("127.0.0.1", 40001)
TEXT = b"benchmark message padded to about one hundred bytes of text xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"


class _Wire:
    """The UDP socket of the connector's listener: what it sends, per destination."""

    def __init__(self):
        self.sent = {}

    def write(self, data, addr):
        self.sent.setdefault(addr, []).append(data)

    def take(self, addr):
        return self.sent.pop(addr, [])

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", 5060)


def _request(method, uri, user, port, number, extra=(), body=b""):
    """A request as SIPp's scenarios send them (a fresh branch, Call-ID and From tag per number)."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}-{number};rport",
        f"From: <sip:{user}@localhost>;tag={port}b{number}",
        f"To: <{uri}>" if method != "REGISTER" else f"To: <sip:{user}@localhost>",
        f"Call-ID: {number}-{port}@127.0.0.1",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _answer(request, status=200):
    """A user agent's final response to ``request`` (bytes): the headers RFC 3261 8.2.6.2 copies."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    copied = [line for line in head[1:] if line.split(b":", 1)[0].lower() in (b"via", b"from", b"call-id", b"cseq")]
    to = next(line for line in head[1:] if line.lower().startswith(b"to:"))
    return b"\r\n".join([b"SIP/2.0 %d OK" % status, *copied, to + b";tag=uas", b"Content-Length: 0", b"", b""])


def _register(reactor, udp, wire, user, addr):
    from twisted.internet.task import deferLater

    from gateway_sip import digest
    from gateway_sip.codec import parse_auth, parse_message

    contact = (f"Contact: <sip:{user}@127.0.0.1:{addr[1]}>", "Expires: 3600")
    udp.datagramReceived(_request("REGISTER", "sip:localhost", user, addr[1], 1, contact), addr)
    while not wire.sent.get(addr):
        yield deferLater(reactor, 0.01, lambda: None)
    challenge = parse_message(wire.take(addr)[0])
    _, params = parse_auth(challenge.headers.get("www-authenticate"))
    ha1 = digest.ha1("MD5", user, "localhost", "secret")
    answer = digest.response("MD5", ha1, "REGISTER", "sip:localhost", params["nonce"], "00000001", "c0ffee", "auth")
    auth = (f'Authorization: Digest username="{user}", realm="localhost", nonce="{params["nonce"]}", '
            f'uri="sip:localhost", response="{answer}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')
    udp.datagramReceived(_request("REGISTER", "sip:localhost", user, addr[1], 2, contact + (auth,)), addr)
    while not wire.sent.get(addr):
        yield deferLater(reactor, 0.01, lambda: None)
    status = parse_message(wire.take(addr)[0]).status
    if status != 200:
        raise SystemExit(f"REGISTER of {user} answered {status}")


def _cpu_run(reactor, args, workdir):
    import cProfile

    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    from gateway.config import load as load_config
    from gateway.service import GatewayService
    from gateway_sip.protocol import SipDatagramProtocol

    @inlineCallbacks
    def run():
        config = os.path.join(workdir, "gateway.toml")
        with open(config, "w") as f:
            f.write(GATEWAY.replace('udp = ["127.0.0.1:{port}"]', "udp = []"))
        gateway = GatewayService(load_config(config), reactor)
        gateway.startService()
        try:
            sip = gateway.core.connectors["sip"]
            wire = _Wire()
            udp = SipDatagramProtocol(sip, sip.limiter, sip.max_datagram)
            udp.makeConnection(wire)
            sip.udp_endpoints.append(udp)
            yield from_generator(_register(reactor, udp, wire, "bob", BOB))
            yield from_generator(_register(reactor, udp, wire, "alice", ALICE))
            wire.sent.clear()
            if args.connector_only:
                _bypass_path(gateway, sip)
            profiler = cProfile.Profile(time.perf_counter if args.connector_only else time.thread_time) if args.profile else None
            answered = {}
            cpu = process = 0.0
            number = 1000

            def feed(datagrams, source):
                """Hand ``datagrams`` to the UDP protocol; (thread CPU, process CPU) it took."""
                if profiler is not None and phase == "measure":
                    profiler.enable()
                started, process_started = time.thread_time(), time.process_time()
                for data in datagrams:
                    udp.datagramReceived(data, source)
                spent = time.thread_time() - started, time.process_time() - process_started
                if profiler is not None:
                    profiler.disable()
                return spent

            for phase, count in (("warm-up", 500), ("measure", args.messages)):
                cpu = process = 0.0
                answered.clear()
                done = 0
                while done < count:
                    n = min(args.batch, count - done)
                    requests = [_request("MESSAGE", "sip:bob@localhost", "alice", ALICE[1], number + i,
                                         ("Content-Type: text/plain",), TEXT) for i in range(n)]
                    number += n
                    for_thread, for_process = feed(requests, ALICE)
                    answers = [_answer(data) for data in wire.take(BOB)]
                    more_thread, more_process = feed(answers, BOB)
                    cpu += for_thread + more_thread
                    process += for_process + more_process
                    for data in wire.take(ALICE):
                        status = data.split(b" ", 2)[1].decode()
                        answered[status] = answered.get(status, 0) + 1
                    done += n
                    yield deferLater(reactor, 0, lambda: None)
                    while gateway.archive.queue_depth() > 5000:  # let the archive writer keep up
                        yield deferLater(reactor, 0.001, lambda: None)
            print(f"gateway in-process: {count} MESSAGEs, answers {answered}")
            print(f"reactor thread CPU {cpu / count * 1e6:.1f} us/MESSAGE "
                  f"(process CPU while it ran, with the archive writer: {process / count * 1e6:.1f} us/MESSAGE); "
                  f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
            if profiler is not None:
                _report_profile(profiler, args)
        finally:
            yield gateway.stopService()

    return run()


def _bypass_path(gateway, sip):
    """
    --connector-only: the connector's ``api.submit`` hands each MESSAGE straight to the recipient's
    SIP session (no routing, policy, archive or observers), so what remains is the connector's cost.
    """
    from twisted.internet.defer import succeed

    from gateway.model import Outcome

    sessions = {session.address: session for session in gateway.core.sessions.all()}

    def submit(event, origin=None, only_session=None):
        session = sessions[event.recipient]
        result = sip.deliver(event, session)
        if result is None:
            return succeed(Outcome.delivered_(event.id))
        return result.addCallback(lambda _: Outcome.delivered_(event.id))

    sip.api.submit = submit


def from_generator(generator):
    from twisted.internet.defer import inlineCallbacks

    return inlineCallbacks(lambda: (yield from generator))()


def _report_profile(profiler, args):
    import io
    import pstats

    profiler.dump_stats(args.profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(args.profile_top)
    print(out.getvalue())
    shares, total = {}, 0.0
    for (filename, _, _), (_, _, own, _, _) in stats.stats.items():
        if "gateway_sip" in filename:
            part = "SIP connector (gateway_sip)"
        elif "/gateway/" in filename or "gateway.model" in filename:
            part = "core (gateway/, its attrs classes)"
        elif "/twisted/" in filename:
            part = "Twisted (Deferreds, timers)"
        elif "sqlalchemy" in filename:
            part = "SQLAlchemy"
        else:
            part = "Python built-ins and the rest"
        shares[part] = shares.get(part, 0.0) + own
        total += own
    for part, own in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"{part:40s} {own / args.messages * 1e6:7.1f} us/MESSAGE  {100 * own / total:5.1f} %")


def cpu_main(args):
    from twisted.internet import task

    workdir = tempfile.mkdtemp(prefix="bench-sip-cpu-")
    try:
        task.react(lambda reactor: _cpu_run(reactor, args, workdir))
    finally:
        shutil.rmtree(workdir, True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="offered MESSAGEs per second (fixed-rate run)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the fixed-rate run")
    parser.add_argument("--saturate", type=int, default=20000, help="MESSAGEs in the saturation run")
    parser.add_argument("--window", type=int, default=200, help="MESSAGEs in flight at most")
    parser.add_argument("--cpu", action="store_true", help="in-process CPU time per MESSAGE, no sockets")
    parser.add_argument("--messages", type=int, default=20000, help="--cpu: MESSAGEs to relay")
    parser.add_argument("--batch", type=int, default=200, help="--cpu: MESSAGEs in flight between reactor turns")
    parser.add_argument("--connector-only", action="store_true",
                        help="--cpu: hand MESSAGEs straight to the recipient's session, skipping the core's path")
    parser.add_argument("--profile", metavar="FILE", help="--cpu: cProfile (thread CPU time) into FILE")
    parser.add_argument("--profile-top", type=int, default=35)
    args = parser.parse_args()
    if args.cpu:
        return cpu_main(args)
    for program in ("sipp", "kamailio", "twistd"):
        if shutil.which(program) is None and not os.path.exists(f"/usr/sbin/{program}"):
            raise SystemExit(f"{program} is not installed")
    workdir = tempfile.mkdtemp(prefix="bench-sip-")
    processes = []
    try:
        gateway_port = free_port()
        config = os.path.join(workdir, "gateway.toml")
        with open(config, "w") as f:
            f.write(GATEWAY.format(port=gateway_port))
        gateway = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config], cwd=workdir,
                                   stdout=open(os.path.join(workdir, "twistd.log"), "w"), stderr=subprocess.STDOUT)
        processes.append(gateway)
        wait_udp_answer(gateway_port)
        results = {}
        results["gateway"] = run("gateway", workdir, f"127.0.0.1:{gateway_port}", "localhost", "bob@localhost",
                                 free_port(), free_port(), args, register_sender=True, pid=gateway.pid)
        stop(gateway)

        kamailio_port = free_port()
        kamailio_cfg = os.path.join(workdir, "kamailio.cfg")
        with open(kamailio_cfg, "w") as f:
            f.write(KAMAILIO_CFG.format(host="127.0.0.1", port=kamailio_port, gateway=9, secret=PEER_SECRET))
        kamailio = subprocess.Popen(
            ["kamailio", "-DD", "-E", "-m", "512", "-M", "32", "-f", kamailio_cfg, "-P", os.path.join(workdir, "kamailio.pid"),
             "-Y", workdir, "-w", workdir],
            stdout=open(os.path.join(workdir, "kamailio.log"), "w"), stderr=subprocess.STDOUT)
        processes.append(kamailio)
        wait_udp_answer(kamailio_port)
        results["kamailio"] = run("kamailio", workdir, f"127.0.0.1:{kamailio_port}", "kam.test", "bob@kam.test",
                                  free_port(), free_port(), args, register_sender=False, pid=kamailio.pid)
        stop(kamailio)
        for kind in ("fixed", "saturated"):
            ratio = results["gateway"][kind][0] / results["kamailio"][kind][0]
            print(f"ratio gateway/kamailio ({kind}): {ratio:.2f}")
        print(f"CPU per MESSAGE gateway/kamailio: {results['gateway']['cpu_us'] / results['kamailio']['cpu_us']:.1f}")
        print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
        print(f"(logs in {workdir})")
    finally:
        for process in processes:
            stop(process)


if __name__ == "__main__":
    main()
