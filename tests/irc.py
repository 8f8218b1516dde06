"""Reading and writing BitlBee's IRC side, for the interop tests that drive libpurple through it."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

from tests.gateway_process import wait_for_port
from tests.support import free_port


class IrcLines:
    """
    Mixin for a driver that holds an IRC connection to BitlBee in
    ``self.sock``: lines are kept (``self.lines``) until an `expect` takes
    them, PINGs are answered, and ``self.transcript`` (a file, optional)
    gets everything both ways.
    """

    transcript = None
    irc_name = "irc"

    def irc_open(self, port, nick, timeout=20):
        """Connect as ``nick`` and wait until BitlBee has put us in &bitlbee."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.lines = []  # read, not yet taken
        self.seen = []  # everything read, for error messages
        self.irc_name = nick
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick}")
        self.expect(lambda line: " JOIN " in line and "&bitlbee" in line, timeout, "the &bitlbee channel")

    def send(self, line):
        if self.transcript is not None:
            self.transcript.write(f"{self.irc_name} > {line}\n")
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def root(self, command):
        """A command for BitlBee's root user (account add, ...)."""
        self.send(f"PRIVMSG &bitlbee :{command}")

    def expect(self, predicate, timeout=20, what=None):
        """The first unread line satisfying ``predicate``; it and the lines before it are taken."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.lines):
                if predicate(line):
                    del self.lines[: i + 1]
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"BitlBee: no {what or 'matching line'} within {timeout}s; last lines:\n" + "\n".join(self.seen[-15:])
                )
            self.sock.settimeout(min(remaining, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError(f"BitlBee closed the IRC connection of {self.irc_name}")
            self.buffer += chunk
            while b"\r\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\r\n", 1)
                line = raw.decode("utf-8", "replace")
                if self.transcript is not None:
                    self.transcript.write(f"{self.irc_name} < {line}\n")
                if line.startswith("PING"):
                    self.send("PONG" + line[4:])
                    continue
                self.lines.append(line)
                self.seen.append(line)


class BitlBee(IrcLines):
    """
    BitlBee (libpurple inside) in the foreground on a free loopback port, in
    ForkDaemon mode: a child per IRC connection, all in the process group it
    leads, which `stop` ends. `connect` opens the IRC side.
    """

    def __init__(self, testcase):
        program = shutil.which("bitlbee") or ("/usr/sbin/bitlbee" if os.path.exists("/usr/sbin/bitlbee") else None)
        if program is None:
            raise SkipTest("bitlbee is not installed (Debian package bitlbee-libpurple)")
        self.dir = tempfile.mkdtemp(prefix="gw-bitlbee-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        users = os.path.join(self.dir, "users")
        os.mkdir(users)
        conf = os.path.join(self.dir, "bitlbee.conf")
        with open(conf, "w") as f:
            f.write("[settings]\nRunMode = ForkDaemon\nDaemonInterface = 127.0.0.1\nAuthMode = Open\n")
        self.port = free_port()
        self.log = os.path.join(self.dir, "bitlbee.log")
        self._log = open(self.log, "w")
        testcase.addCleanup(self._log.close)
        self.sock = None
        self.process = subprocess.Popen(
            [program, "-F", "-n", "-v", "-c", conf, "-d", users, "-i", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        testcase.addCleanup(self.stop)
        wait_for_port(self.port, self.process, self.text)

    def connect(self, nick):
        self.irc_open(self.port, nick)

    def text(self):
        """What BitlBee logged."""
        self._log.flush()
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
