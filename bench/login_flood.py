"""
A login flood against a real gateway: how long does a real user wait?

    python bench/login_flood.py [--flood 300] [--rounds 3] [--sequential]

Starts ``twistd gateway`` (demo users, the example line connector on a free
loopback port, its accept backlog and per-address connection limit raised
so that the logins themselves are what is measured), sends ``--flood``
wrong-password logins for alice from 127.0.0.2, each on its own
connection closed as soon as the line is sent (all at once, or one after
another with ``--sequential``), and right after them logs alice in with her
password from 127.0.0.1; prints how long that took (from the login line
sent to the answer; the TCP connect apart), what the flood's
connections that stayed to read were answered, and the gateway's
throttle counters. Each round uses a fresh gateway. Needs the example
plugin (``pip install ./examples/gateway-example-plugin``).
"""

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import common

CONFIG = """
[gateway]
node = "flood"
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[connectors.line]
listen = ["tcp:{port}:interface=127.0.0.1:backlog=1024"]
{line_extra}
"""


def wait_port(port, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def answer(sock, started):
    """Read up to the login's answer line: (line, seconds)."""
    buffer = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return "closed", time.monotonic() - started
        buffer += chunk
        for line in buffer.split(b"\r\n"):
            if line.startswith((b"OK LOGIN", b"ERR")):
                return line.decode(), time.monotonic() - started


def login(port, user, password, source):
    """One login on a new connection from ``source``: (answer line, seconds to answer, seconds to connect)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0)) as sock:
        connected = time.monotonic()
        sock.sendall(f"LOGIN {user} {password}\n".encode())
        line, seconds = answer(sock, connected)
        return line, seconds, connected - started


def flood(port, count, sequential, keep_every=10):
    """
    ``count`` wrong-password logins for alice from 127.0.0.2. Every
    ``keep_every``-th connection stays open to read its answer; the others
    close once the line is sent. Returns the sockets left to read.
    """
    kept = []
    if sequential:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=("127.0.0.2", 0))
            sock.sendall(f"LOGIN alice guess{n}\n".encode())
            (kept.append(sock) if n % keep_every == 0 else sock.close())
        return kept
    selector = selectors.DefaultSelector()
    for n in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, n)
    deadline = time.monotonic() + 60
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            sock, n = key.fileobj, key.data
            selector.unregister(sock)
            try:
                sock.send(f"LOGIN alice guess{n}\n".encode())
            except OSError:
                sock.close()
                continue
            if n % keep_every == 0:
                sock.setblocking(True)
                sock.settimeout(60)
                kept.append(sock)
            else:
                sock.close()
    return kept


def counters(admin):
    """The gateway's login-throttle metrics, as {name{labels}: value}."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    wanted = re.compile(r"^(gateway_logins_throttled_total|gateway_password_checks_\w+)(\{[^}]*\})? (\S+)$")
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in map(wanted.match, text.splitlines()) if m}


def one_round(args):
    folder = tempfile.mkdtemp(prefix="gateway-flood-")
    port, admin = common.free_port(), common.free_port()
    config = os.path.join(folder, "gateway.toml")
    line_extra = "" if args.no_limits_key else "max_connections_per_source = 100000"
    with open(config, "w") as f:
        f.write(CONFIG.format(dir=folder, port=port, admin=admin, line_extra=line_extra))
    paths = [common.ROOT, os.path.join(common.ROOT, "examples", "gateway-example-plugin"),
             os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    log = open(os.path.join(folder, "twistd.log"), "w")
    process = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, process)
        login(port, "bob", "secret", "127.0.0.1")  # warm up: one real check first
        sent = time.monotonic()
        kept = flood(port, args.flood, args.sequential)
        sent = time.monotonic() - sent
        real, seconds, connect = login(port, "alice", "secret", "127.0.0.1")
        kinds = {}
        for sock in kept:
            try:
                line = answer(sock, 0)[0]
            except OSError as e:
                line = f"error {e.__class__.__name__}"
            finally:
                sock.close()
            kind = line.split(" ")[1] if line.startswith("ERR") else line
            kinds[kind] = kinds.get(kind, 0) + 1
        return real, seconds, connect, sent, kinds, counters(admin)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", action="store_true", help="one flood connection after another")
    parser.add_argument("--no-limits-key", action="store_true",
                        help="leave out max_connections_per_source (for a gateway older than the key)")
    args = parser.parse_args()
    common.raise_fd_limit(4 * args.flood + 1024)
    how = "one after another" if args.sequential else "all at once"
    print(f"flood: {args.flood} wrong-password logins for alice from 127.0.0.2, {how}, each connection closed at "
          f"once (every tenth kept to read its answer); then alice from 127.0.0.1 with her password")
    times = []
    for n in range(args.rounds):
        real, seconds, connect, sent, kinds, metrics = one_round(args)
        times.append(seconds)
        print(f"  round {n + 1}: flood sent in {sent * 1000:.0f} ms; alice: {real!r} after {seconds * 1000:.1f} ms"
              f" (connect {connect * 1000:.1f} ms); flood answers {kinds}")
        if metrics:
            print(f"    {metrics}")
    times.sort()
    print(f"alice's login: median {times[len(times) // 2] * 1000:.1f} ms, worst {times[-1] * 1000:.1f} ms")
    print(f"machine: {common.machine_info()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
