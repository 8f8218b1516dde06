"""What the bench processes share: the wire format, frame parsing, process facts."""

import math
import os
import platform
import resource
import select
import socket
import stat
import struct
import sys

# The repository root, so that ``import gateway`` works from a checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

# Every frame is a big-endian u32 length, then that many bytes of body.
# Body of a message frame: u32 peer index + payload (PAYLOAD_SIZE bytes).
# On the way in, the peer is the recipient; the gateway relay hands frames
# out with the sender's index there; the bare relay forwards them unchanged.
# The first frame of a connection registers it: body u32 own index.
# The server answers a registration with an ACK frame (body u32 ACK), or
# with an ERROR frame (body u32 ERROR + UTF-8 reason) and closes.
HEADER = struct.Struct("!I")
HEADER2 = struct.Struct("!II")
PAYLOAD_SIZE = 100
ACK = 0xFFFFFFFF
ERROR = 0xFFFFFFFE
# A frame longer than this closes the connection (nothing in the bench is).
MAX_BODY = 1 << 16

# Latency mode puts the send time (perf_counter_ns, 20 ASCII digits) at the
# start of the payload; CLOCK_MONOTONIC is the same in every process here.
STAMP_DIGITS = 20


def frame(index, payload=b""):
    """One frame: length, index, payload."""
    return HEADER2.pack(4 + len(payload), index) + payload


def filler(size=PAYLOAD_SIZE):
    """A printable payload of ``size`` bytes (ASCII, so it is valid text too)."""
    text = (b"bench payload 0123456789 abcdefghijklmnopqrstuvwxyz " * 4)[:size]
    return text


def stamped_payload(now_ns, size=PAYLOAD_SIZE):
    head = b"%020d" % now_ns
    return head + filler(size - len(head))


def split_frames(buffer, data, on_frame):
    """
    Append ``data`` to ``buffer`` (bytes), call ``on_frame(data, start,
    stop)`` for each whole frame body in it, and return what is left over.
    Raises ValueError on a frame longer than MAX_BODY.
    """
    if buffer:
        data = buffer + data
    end = len(data)
    offset = 0
    unpack = HEADER.unpack_from
    while end - offset >= 4:
        (length,) = unpack(data, offset)
        if length > MAX_BODY:
            raise ValueError(f"frame of {length} bytes")
        stop = offset + 4 + length
        if stop > end:
            break
        on_frame(data, offset + 4, stop)
        offset = stop
    return data[offset:] if offset < end else b""


def cluster_secret(prefix):
    """
    The file of the shared secret of the bench's cluster ``prefix`` (made
    by the first node that asks, in the temporary folder; every node of
    one run names the same prefix).
    """
    import tempfile

    from gateway.cluster import secret

    path = os.path.join(tempfile.gettempdir(), f"gateway-bench-{prefix}.secret")
    try:
        secret.create(path)
    except FileExistsError:
        pass
    return path


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid="self"):
    """A process's resident set size (VmRSS) in kB, from /proc/PID/status (this one's by default)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid="self"):
    """A process's CPU time so far (user + system, all its threads), from /proc/PID/stat; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted=65536):
    """Lift the soft limit on open files as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = math.ceil(fraction * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]


def machine_info():
    """CPU model, cores, kernel, Python and library versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    for name in ("twisted", "sqlalchemy", "attrs", "pluggy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    try:
        with open("/proc/meminfo") as f:
            info["memory_mb"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


class StdinWatch:
    """
    Read stdin in the reactor (``reactor.addReader(StdinWatch(...))``): call
    ``on_line(text)`` for each non-empty line and ``on_end()`` once, when
    stdin ends. The runner holds the other end of that pipe, so the end of
    stdin means the runner is gone, even if it was killed.
    """

    def __init__(self, on_line=None, on_end=None):
        self.on_line = on_line
        self.on_end = on_end
        self._buffer = b""
        self._ended = False

    @staticmethod
    def is_pipe():
        """True when stdin is a pipe (as from the runner), not a terminal or /dev/null."""
        try:
            return stat.S_ISFIFO(os.fstat(0).st_mode)
        except OSError:
            return False

    def fileno(self):
        return 0

    def doRead(self):
        data = os.read(0, 65536)
        if not data:
            self._ended = True
            if self.on_end is not None:
                self.on_end()
            from twisted.internet.main import CONNECTION_DONE

            return CONNECTION_DONE
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip() and self.on_line is not None:
                self.on_line(line.decode("utf-8", "replace").strip())
        return None

    def connectionLost(self, reason):
        # The end of stdin (epoll may report it as a hang-up without any
        # read), or the reactor shutting down: only the first counts.
        if self._ended or not self._at_end():
            return
        self._ended = True
        if self.on_end is not None:
            self.on_end()

    def _at_end(self):
        """True when stdin has ended (readable now, and nothing to read)."""
        try:
            readable, _, _ = select.select([0], [], [], 0)
            return bool(readable) and os.read(0, 65536) == b""
        except (OSError, ValueError):
            return True

    def logPrefix(self):
        return "stdin"


def run_child(reactor, run, prefix):
    """
    The main loop of a bench child process: ``run(reactor, out, data_dir)``
    (a Deferred) on the reactor, in a fresh temporary data folder; stop when
    it ends or when the runner (our stdin) goes away; print ``out`` as one
    JSON line. Returns the exit status.
    """
    import json
    import shutil
    import tempfile

    out = {}
    errors = []
    data_dir = tempfile.mkdtemp(prefix=prefix)

    def go():
        d = run(reactor, out, data_dir)
        d.addErrback(lambda f: errors.append(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)

    def runner_gone():
        errors.append("stdin ended: the runner is gone\n")
        reactor.stop()

    if StdinWatch.is_pipe():
        reactor.addReader(StdinWatch(on_end=runner_gone))
    reactor.callWhenRunning(go)
    try:
        reactor.run()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if errors:
        sys.stderr.write(errors[0])
        out["errors"] = [errors[0].strip().splitlines()[-1]]
    sys.stdout.write(json.dumps(out) + "\n")
    return 1 if errors else 0
