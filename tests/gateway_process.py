"""A real ``twistd -n gateway`` process for the tests that run the gateway as a user does."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def source_tree_env():
    """The environment for a child process that runs this source tree's gateway, not an installed copy."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def have_example_plugin():
    try:
        import gateway_example  # noqa: F401
    except ImportError:
        return False
    return True


def wait_for_port(port, process=None, output=lambda: "", timeout=30):
    """Wait until something accepts TCP connections on 127.0.0.1:``port``; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode}:\n{output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s:\n{output()}")


class Gateway:
    """
    ``twistd -n gateway --config FILE`` in a temporary folder (``dir``,
    where ``{dir}`` in the config text points), its output in a log; ready
    once every port in ``wait_ports`` accepts connections. Stopped (SIGTERM,
    then SIGKILL) and removed when the test ends.
    """

    def __init__(self, test, config_text, wait_ports=(), name="gw"):
        if shutil.which("twistd") is None:
            raise SkipTest("twistd is not on PATH (it comes with Twisted)")
        self.dir = tempfile.mkdtemp(prefix=f"{name}-")
        test.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(config_text.replace("{dir}", self.dir))
        self.log_path = os.path.join(self.dir, "twistd.log")
        self._log = open(self.log_path, "w")
        test.addCleanup(lambda: self._log.close())
        self._start(wait_ports)
        test.addCleanup(self.stop)

    def _start(self, wait_ports):
        self.process = subprocess.Popen(
            ["twistd", "-n", "--pidfile=", "gateway", "--config", self.config],
            cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT, env=source_tree_env(),
        )
        for port in wait_ports:
            wait_for_port(port, self.process, self.text)

    def restart(self, wait_ports=()):
        """Stop the gateway (SIGTERM) and start it again on the same folder; its log goes on in the same file."""
        self.stop()
        self._start(wait_ports)

    def text(self, tail=0):
        """What the gateway logged (the last ``tail`` characters, when given)."""
        self._log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        return text[-tail:] if tail else text

    def wait_for_log(self, text, timeout=20):
        """Wait until the log has ``text``; the whole log when it does not come."""
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"the gateway never logged {text!r}:\n{self.text()}")
            time.sleep(0.1)

    def tracebacks(self):
        """Tracebacks and unhandled errors the gateway logged (a clean run has none)."""
        return [line for line in self.text().splitlines() if "Traceback" in line or "Unhandled" in line]

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (twistd's clean one is -15)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def ctl(self, *args):
        """``gatewayctl --config FILE ARGS`` of this source tree: the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "--config", self.config, *args],
            capture_output=True, text=True, timeout=60, cwd=self.dir, env=source_tree_env(),
        )

    def gatewayctl(self, *args):
        """Like `ctl`, but its output, and an AssertionError when it fails."""
        result = self.ctl(*args)
        if result.returncode:
            raise AssertionError(f"gatewayctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def admin(self, port, path, method="GET", token=True):
        """A request to this gateway's admin API on ``port``, with its token unless told not to: (status, body)."""
        import urllib.error
        import urllib.request

        headers = {}
        if token:
            from gateway import config as config_module
            from gateway.ops.admin import admin_token

            headers["Authorization"] = f"Bearer {admin_token(config_module.load(self.config), create=False)}"
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def archived(self, user, kind="im", text=None, wait=10.0):
        """The archive rows (JSON) of ``user``, waiting up to ``wait`` seconds for at least one."""
        args = ["archive", "search", "--user", user, "--kind", kind, "--json"]
        if text is not None:
            args += ["--text", text]
        deadline = time.monotonic() + wait
        while True:
            rows = json.loads(self.gatewayctl(*args))
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)


class LineClient:
    """A blocking client of the example plugin's line protocol, with time-outs."""

    def __init__(self, port, user=None, password="secret", timeout=10):
        self.timeout = timeout  # for `expect`, unless it is given one
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.expect("HELLO")
        if user is not None:
            self.send(f"LOGIN {user} {password}")
            self.expect("OK LOGIN")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def expect(self, prefix, timeout=None):
        """Read lines until one starts with ``prefix``; return it."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                text = line.decode()
                if text.startswith(prefix):
                    return text
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line starting {prefix!r} within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError(f"connection closed while waiting for {prefix!r}")
            self.buffer += chunk

    def close(self):
        self.sock.close()
