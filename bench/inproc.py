"""
The full path in one process, no sockets: two MemoryConnector sessions and the bus.

    python bench/inproc.py [--messages 100000] [--batch 1000] [--profile FILE]

A real `GatewayService` (SQLite archive on, the bench policy rules, the
bench's installed-plugin rule) with a `gateway.testing.MemoryConnector`
registered as connector ``memory``; alice and bob log in through it, then
``--messages`` messages, alternately alice -> bob and bob -> alice, are
built with ``api.message`` and submitted with ``api.submit`` in batches of
``--batch``; the reactor runs between batches (its thread-to-reactor calls,
the archive writer's metrics), and the writer thread runs beside it. When
more than ``--max-queue`` rows wait for the writer, the loop waits for it
(1 ms at a time), so the rate is one the archive can sustain, not how
fast the queue fills. Then the archive is drained and its rows counted.
Prints one JSON object.

``--profile FILE`` runs the submit loop (only that, only the reactor
thread) under cProfile, writes the stats to FILE and prints the top
functions on stderr; ``--profile-clock wall`` counts wall time instead of
the thread's CPU time, which shows where it waits for the GIL.
"""

import argparse
import cProfile
import io
import pstats
import sys
import time

# common also puts the repository on sys.path (for ``import gateway``).
from common import filler, raise_fd_limit, rss_kb, run_child

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from gateway.config import load as load_config
from gateway.directory.sql import DirectoryStore
from gateway.hookspecs import hookimpl
from gateway.model import Address
from gateway.service import GatewayService
from gateway.testing import MemoryConnector

from gatewayside import drain_archive, write_config


class MemoryPlugin:
    """Offers the ``memory`` connector (a MemoryConnector on network ``mem``)."""

    @hookimpl
    def gateway_register_connectors(self, api):
        api.register_connector(
            "memory", lambda api, config: MemoryConnector(api, config, name="memory", networks=("mem",))
        )


@inlineCallbacks
def run(reactor, args, result, data_dir):
    path = write_config(data_dir, "[connectors.memory]\n", entry_points=args.entry_points)
    gateway = GatewayService(load_config(path), reactor, extra_plugins=[("bench-memory", MemoryPlugin())])
    store = DirectoryStore(gateway.engine)
    store.add_person("alice", password=None, handles=["mem:alice"])
    store.add_person("bob", password=None, handles=["mem:bob"])
    gateway.startService()
    try:
        yield measure(reactor, args, gateway, result)
    finally:
        yield gateway.stopService()


@inlineCallbacks
def measure(reactor, args, gateway, result):
    api = gateway.api
    connector = gateway.core.connectors["memory"]
    sessions = []
    for name in ("alice", "bob"):
        address = Address("mem", name)
        identity = yield api.identity_for(address)
        session = yield connector.login(identity, address)
        sessions.append(session)
    alice, bob = sessions
    directions = ((alice.address, bob.address), (bob.address, alice.address))
    text = filler(args.size).decode("ascii")
    # Warm the path (and leave the login's presence rows out of the counts below).
    for i in range(200):
        sender, recipient = directions[i % 2]
        yield api.submit(api.message(sender, recipient, text))
    yield drain_archive(reactor, gateway)
    before = (yield drain_archive(reactor, gateway))["rows"].get("im", 0)
    for session in sessions:
        connector.delivered.pop(session, None)

    outcomes = {}

    def count(outcome):
        status = outcome.status.value
        outcomes[status] = outcomes.get(status, 0) + 1

    profiler = None
    if args.profile:
        # "cpu": this thread's CPU time only; "wall" also shows where it waited (for the GIL).
        profiler = cProfile.Profile(time.thread_time if args.profile_clock == "cpu" else time.perf_counter)
    received = 0
    max_queue = waited = 0
    submit, message = api.submit, api.message
    started = time.perf_counter()
    cpu_started, process_started = time.thread_time(), time.process_time()
    sent = 0
    while sent < args.messages:
        n = min(args.batch, args.messages - sent)
        if profiler is not None:
            profiler.enable()
        for i in range(n):
            sender, recipient = directions[i & 1]
            submit(message(sender, recipient, text)).addCallback(count)
        if profiler is not None:
            profiler.disable()
        sent += n
        for session in sessions:
            received += len(connector.delivered.pop(session, ()))
        depth = gateway.archive.queue_depth()
        max_queue = max(max_queue, depth)
        yield deferLater(reactor, 0, lambda: None)
        # Back-pressure, as a connector would apply: no more than --max-queue
        # rows waiting for the writer (its thread needs the GIL to catch up).
        while args.max_queue and gateway.archive.queue_depth() > args.max_queue:
            waited += 1
            yield deferLater(reactor, 0.001, lambda: None)
    # With durable delivery the last messages are delivered once the writer
    # acknowledged their rows: wait for every outcome (bounded), then count.
    deadline = time.monotonic() + 60
    while sum(outcomes.values()) < sent and time.monotonic() < deadline:
        yield deferLater(reactor, 0.001, lambda: None)
    for session in sessions:
        received += len(connector.delivered.pop(session, ()))
    path_seconds = time.perf_counter() - started
    reactor_cpu = time.thread_time() - cpu_started
    process_cpu = time.process_time() - process_started
    drained = yield drain_archive(reactor, gateway)
    total_seconds = time.perf_counter() - started
    archived = drained["rows"].get("im", 0) - before
    result.update(
        messages=sent,
        received=received,
        outcomes=outcomes,
        batch=args.batch,
        path_seconds=round(path_seconds, 4),
        rate=round(sent / path_seconds, 1),
        # Where the time went while submitting: the reactor thread's own CPU,
        # the other threads' (mostly the archive writer), the rest waiting.
        us_per_message=round(path_seconds / sent * 1e6, 2),
        reactor_cpu_us_per_message=round(reactor_cpu / sent * 1e6, 2),
        other_threads_cpu_us_per_message=round((process_cpu - reactor_cpu) / sent * 1e6, 2),
        archived=archived,
        drain_seconds=drained["drain_seconds"],
        archived_rate=round(archived / total_seconds, 1),
        archive_max_queue=max_queue,
        max_queue=args.max_queue,
        backpressure_waits=waited,
        archive_spooled=drained["archive_spooled"],
        archive_state=drained["archive_state"],
        archive_timed_out=drained["timed_out"],
        rss_kb=rss_kb(),
        plugins=sorted(gateway.core.plugins.loaded),
    )
    if profiler is not None:
        profiler.dump_stats(args.profile)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        stats.sort_stats("cumulative").print_stats(args.profile_top)
        sys.stderr.write(out.getvalue())
        result["profile"] = args.profile


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="messages submitted between reactor turns")
    parser.add_argument("--size", type=int, default=100, help="text characters per message")
    parser.add_argument(
        "--max-queue", type=int, default=5000,
        help="wait (1 ms at a time) while more archive rows than this are queued; 0: never wait",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the submit loop into FILE")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument(
        "--profile-clock", choices=("cpu", "wall"), default="cpu",
        help="cpu: the reactor thread's CPU time; wall: also the time it waited (GIL)",
    )
    parser.add_argument("--entry-points", action="store_true", help="keep installed entry-point plugins")
    parser.add_argument("--log-level", default="warn", choices=("debug", "info", "warn", "error", "critical"))
    args = parser.parse_args(argv)
    raise_fd_limit()

    from twisted.internet import reactor

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(args.log_level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    return run_child(reactor, lambda reactor, out, data_dir: run(reactor, args, out, data_dir), "gateway-bench-inproc-")


if __name__ == "__main__":
    sys.exit(main())
