"""
The bench server: a bare Twisted relay, or the whole gateway behind a small bench connector.

    python bench/relay.py --port P --mode bare
    python bench/relay.py --port P --mode gateway --users 2000

Both speak the frames of ``bench/common.py`` on 127.0.0.1 with TCP_NODELAY.
``--port 0`` takes any free port. Control runs over stdin/stdout, one JSON
object per line out: first ``{"event": "ready", "port": ...}``, then one
answer per command line in:

``stats``        counters, RSS (kB), sessions, archive queue depth
``gc``           ``gc.collect()``, then ``stats``
``reset``        zero the frame and outcome counters
``drain``        (gateway) wait until the archive writer has written what was
                 queued, then count the ``events`` rows by kind
``trace-start``  start tracemalloc (then ``stats`` reports traced bytes)
``trace-top``    the source lines that allocated most since ``trace-start``
``quit``         stop cleanly (the gateway logs sessions out and flushes its
                 archive); end of stdin does the same
"""

import argparse
import gc
import json
import os
import sys
import tracemalloc

# common also puts the repository on sys.path (for ``import gateway``).
import common
from common import ACK, HEADER, MAX_BODY, StdinWatch, cpu_seconds, frame, raise_fd_limit, rss_kb

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

_unpack = HEADER.unpack_from

# -- the bare relay ----------------------------------------------------------


class BareProtocol(protocol.Protocol):
    """Routes each frame by a dict lookup of its index to the recipient's transport."""

    def __init__(self, relay):
        self.relay = relay
        self.index = None
        self._buffer = b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.relay.connections += 1

    def dataReceived(self, data):
        if self._buffer:
            data = self._buffer + data
        end = len(data)
        offset = 0
        routes = self.relay.routes
        routed = dropped = 0
        while end - offset >= 8:
            (length,) = _unpack(data, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            if length > MAX_BODY or length < 4:
                self.transport.loseConnection()
                return
            (index,) = _unpack(data, offset + 4)
            if self.index is None:
                self.index = index
                routes[index] = self.transport
                self.transport.write(frame(ACK))
            else:
                peer = routes.get(index)
                if peer is None:
                    dropped += 1
                else:
                    peer.write(data[offset:stop])
                    routed += 1
            offset = stop
        self._buffer = data[offset:] if offset < end else b""
        self.relay.frames_in += routed + dropped
        self.relay.frames_out += routed
        self.relay.dropped += dropped

    def connectionLost(self, reason):
        self.relay.connections -= 1
        if self.index is not None and self.relay.routes.get(self.index) is self.transport:
            del self.relay.routes[self.index]


class BareRelay:
    mode = "bare"

    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.routes = {}
        self.connections = 0
        self.reset()

    def reset(self):
        self.frames_in = self.frames_out = self.dropped = 0

    def start(self):
        factory = protocol.Factory.forProtocol(lambda: BareProtocol(self))
        self.listening = self.reactor.listenTCP(
            self.args.port, factory, backlog=self.args.backlog, interface="127.0.0.1"
        )
        return succeed(self.listening.getHost().port)

    def stats(self):
        return {
            "connections": self.connections,
            "routes": len(self.routes),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
        }

    def drain(self):
        return succeed({})

    def stop(self):
        return self.listening.stopListening()


# -- control over stdin/stdout -------------------------------------------------


def _short(path):
    """A file name relative to the repository or site-packages, for reading."""
    for marker in ("/site-packages/", common.ROOT + "/", "/lib/python"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def say(**fields):
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # the runner is gone; end of stdin stops us next


class Control:
    def __init__(self, reactor, server):
        self.reactor = reactor
        self.server = server
        self.stopping = False
        self.snapshot = None

    def command(self, line):
        try:
            if line == "stats":
                self.stats()
            elif line == "gc":
                gc.collect()
                self.stats()
            elif line == "reset":
                self.server.reset()
                say(ok="reset")
            elif line == "trace-start":
                tracemalloc.start(1)
                gc.collect()
                self.snapshot = tracemalloc.take_snapshot()
                say(ok="trace-start", traced=tracemalloc.get_traced_memory()[0])
            elif line == "trace-top":
                self.trace_top()
            elif line == "modules":
                # The top-level packages this process has imported (what the idle RSS pays for).
                say(modules=sorted({name.partition(".")[0] for name in list(sys.modules)}))
            elif line == "drain":
                self.server.drain().addCallbacks(lambda r: say(**r), self._failed)
            elif line == "quit":
                self.quit()
            else:
                say(error=f"unknown command {line!r}")
        except Exception as e:  # report, do not die: the runner is waiting for a line
            say(error=f"{type(e).__name__}: {e}")

    def _failed(self, failure):
        say(error=failure.getErrorMessage())

    def trace_top(self, limit=15):
        """The source lines that allocated most since ``trace-start``."""
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        top = []
        for stat in snapshot.compare_to(self.snapshot, "lineno")[:limit]:
            frame = stat.traceback[0]
            top.append(
                {
                    "where": f"{_short(frame.filename)}:{frame.lineno}",
                    "bytes": stat.size_diff,
                    "blocks": stat.count_diff,
                }
            )
        say(top=top, traced=tracemalloc.get_traced_memory()[0])

    def stats(self):
        fields = self.server.stats()
        fields["rss_kb"] = rss_kb()
        fields["cpu_seconds"] = cpu_seconds()
        writer = getattr(self.server, "writer_pid", lambda: None)()
        if writer:
            fields["writer_rss_kb"] = rss_kb(writer)
            fields["writer_cpu_seconds"] = cpu_seconds(writer)
        if tracemalloc.is_tracing():
            fields["traced"] = tracemalloc.get_traced_memory()[0]
        say(**fields)

    def quit(self):
        if self.stopping:
            return
        self.stopping = True
        d = self.server.stop()
        d.addErrback(self._failed)
        d.addBoth(lambda _: say(ok="quit"))
        d.addBoth(lambda _: self.reactor.stop())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--mode", choices=("bare", "gateway"), default="bare")
    parser.add_argument("--users", type=int, default=100, help="gateway: bench users to create (bench0..)")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--entry-points", action="store_true",
        help="gateway: keep the installed entry-point plugins (default: disable them all)",
    )
    parser.add_argument(
        "--no-durable", action="store_true",
        help="gateway: deliver before the archive row is durable ([archive] durable = false)",
    )
    parser.add_argument(
        "--no-chain", action="store_true",
        help="gateway: archive without the hash chain ([archive] chain = false)",
    )
    parser.add_argument("--redis", default="", help="gateway: a node of the cluster on this Redis ([cluster] redis)")
    parser.add_argument("--node", default="bench", help="gateway: the node's name")
    parser.add_argument("--prefix", default="gw", help="gateway: the cluster's key prefix")
    parser.add_argument("--log-level", default="warn", choices=("debug", "info", "warn", "error", "critical"))
    args = parser.parse_args(argv)
    raise_fd_limit()

    from twisted.internet import reactor

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(args.log_level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    if args.mode == "gateway":
        from gatewayside import GatewayRelay  # imports the gateway only in this mode

        server = GatewayRelay(reactor, args)
    else:
        server = BareRelay(reactor, args)
    control = Control(reactor, server)

    def started(port):
        reactor.addReader(StdinWatch(on_line=control.command, on_end=control.quit))
        say(
            event="ready",
            mode=server.mode,
            port=port,
            pid=os.getpid(),
            rss_kb=rss_kb(),
            reactor=type(reactor).__name__,
        )

    def failed(failure):
        say(error=f"start failed: {failure.getErrorMessage()}")
        sys.stderr.write(failure.getTraceback())
        reactor.stop()

    def boot():
        d = Deferred()
        d.addCallback(lambda _: server.start())
        d.addCallbacks(started, failed)
        d.callback(None)

    reactor.callWhenRunning(boot)
    try:
        reactor.run()
    finally:
        cleanup = getattr(server, "cleanup", None)
        if cleanup is not None:
            cleanup()


if __name__ == "__main__":
    main()
