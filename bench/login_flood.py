"""
A login flood against a real gateway: how long does a real user wait?

    python bench/login_flood.py [--flood 300]

Starts ``twistd gateway`` (demo users, the example line connector on a free
loopback port), sends ``--flood`` wrong-password logins for alice from
127.0.0.2 (each on its own connection, closed at once), and while they are
in flight logs alice in with her password from 127.0.0.1; prints how long
that took and what the flood was answered. Needs the example plugin
(``pip install ./examples/gateway-example-plugin``).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import common

CONFIG = """
[gateway]
node = "flood"
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.line]
listen = ["tcp:{port}:interface=127.0.0.1"]
rate = 100000
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


def login(port, user, password, source, keep=True):
    """One login on a new connection from ``source``: (answer line, seconds)."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    try:
        buffer = b""
        sock.sendall(f"LOGIN {user} {password}\n".encode())
        if not keep:
            return "", time.monotonic() - started
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return "closed", time.monotonic() - started
            buffer += chunk
            for line in buffer.split(b"\r\n"):
                if line.startswith((b"OK LOGIN", b"ERR")):
                    return line.decode(), time.monotonic() - started
    finally:
        sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds into the flood before alice logs in")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="gateway-flood-")
    port = common.free_port()
    config = os.path.join(folder, "gateway.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(dir=folder, port=port))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [common.ROOT, os.environ.get("PYTHONPATH")])))
    log = open(os.path.join(folder, "twistd.log"), "w")
    process = subprocess.Popen(["twistd", "-n", "--pidfile=", "gateway", "--config", config],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, process)
        login(port, "bob", "secret", "127.0.0.1")  # warm up: one real check first
        answers = []

        def flood():
            for n in range(args.flood):
                try:
                    answers.append(login(port, "alice", f"guess{n}", "127.0.0.2", keep=n % 10 == 0)[0])
                except OSError as e:
                    answers.append(f"error {e}")

        thread = threading.Thread(target=flood)
        thread.start()
        time.sleep(args.delay)  # the flood is under way
        answer, seconds = login(port, "alice", "secret", "127.0.0.1")
        thread.join()
        print(f"flood: {args.flood} wrong-password logins for alice from 127.0.0.2")
        kinds = {}
        for a in answers:
            kinds[a.split(" ")[1] if a.startswith("ERR") else (a or "not read")] = kinds.get(
                a.split(" ")[1] if a.startswith("ERR") else (a or "not read"), 0) + 1
        print(f"  answers read (every tenth): {kinds}")
        print(f"alice from 127.0.0.1 during the flood: {answer!r} after {seconds * 1000:.1f} ms")
        print(f"machine: {common.machine_info()}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
