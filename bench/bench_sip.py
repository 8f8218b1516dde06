"""
SIP MESSAGE relay between two SIP users through the gateway (policy and SQLite archive on), and the
same load through Kamailio alone, both driven by SIPp over UDP in the same run.

    python bench/bench_sip.py [--rate 1000] [--seconds 10] [--saturate 20000] [--window 200]

Prints, for each server: the offered and achieved rate at a fixed rate with response-time p50/p99
(SIPp's response time 1: MESSAGE sent -> 200 received), the rate at saturation (SIPp sends as fast
as it may with ``--window`` messages in flight), and the ratio gateway / Kamailio.
Needs twistd with gateway-sip and the example plugin installed, sipp and kamailio.
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

from tests.interop.test_sip_kamailio import KAMAILIO_CFG  # noqa: E402  the same Kamailio as the interop test

GATEWAY = """
[gateway]
node = "bench"
data_dir = "var"
[directory]
demo_users = true
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


def run(name, workdir, server, domain, to, receiver_port, sender_port, args, register_sender):
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
    rate, times, failed = load(workdir, server, domain, to, sender_port, 1_000_000, args.saturate, args.window)
    results["saturated"] = (rate, percentile(times, 50), percentile(times, 99), failed)
    stop(sink)
    print(f"{name:10s} fixed {args.rate}/s offered: {results['fixed'][0]:8.0f} msg/s  "
          f"p50 {results['fixed'][1]:6.2f} ms  p99 {results['fixed'][2]:7.2f} ms  failed {results['fixed'][3]}")
    print(f"{name:10s} saturated ({args.window} in flight): {results['saturated'][0]:8.0f} msg/s  "
          f"p50 {results['saturated'][1]:6.2f} ms  p99 {results['saturated'][2]:7.2f} ms  failed {results['saturated'][3]}",
          flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="offered MESSAGEs per second (fixed-rate run)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the fixed-rate run")
    parser.add_argument("--saturate", type=int, default=20000, help="MESSAGEs in the saturation run")
    parser.add_argument("--window", type=int, default=200, help="MESSAGEs in flight at most")
    args = parser.parse_args()
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
                                 free_port(), free_port(), args, register_sender=True)
        stop(gateway)

        kamailio_port = free_port()
        kamailio_cfg = os.path.join(workdir, "kamailio.cfg")
        with open(kamailio_cfg, "w") as f:
            f.write(KAMAILIO_CFG.format(host="127.0.0.1", port=kamailio_port, gateway=9))
        kamailio = subprocess.Popen(
            ["kamailio", "-DD", "-E", "-m", "512", "-M", "32", "-f", kamailio_cfg, "-P", os.path.join(workdir, "kamailio.pid"),
             "-Y", workdir, "-w", workdir],
            stdout=open(os.path.join(workdir, "kamailio.log"), "w"), stderr=subprocess.STDOUT)
        processes.append(kamailio)
        wait_udp_answer(kamailio_port)
        results["kamailio"] = run("kamailio", workdir, f"127.0.0.1:{kamailio_port}", "kam.test", "bob@kam.test",
                                  free_port(), free_port(), args, register_sender=False)
        stop(kamailio)
        for kind in ("fixed", "saturated"):
            ratio = results["gateway"][kind][0] / results["kamailio"][kind][0]
            print(f"ratio gateway/kamailio ({kind}): {ratio:.2f}")
        print(f"(logs in {workdir})")
    finally:
        for process in processes:
            stop(process)


if __name__ == "__main__":
    main()
