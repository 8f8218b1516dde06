"""
What each stage of the full path costs per message, timed one at a time in one thread.

    python bench/stages.py [--messages 20000]

No archive writer thread runs while the reactor-thread stages are timed
(rows only go into its queue), so these are the costs of the code itself,
without GIL contention. The SQL directory's cache is warm (as on the hot
path); the rules are the bench's. The last stage times what the writer
thread does per row: `ArchiveStore.insert_rows` in batches of
``--batch-rows`` on SQLite, in CPU time, into a fresh archive and then
into one that holds ``--archive-rows`` rows already, with random and with
time-ordered keys. Each other figure is the best of three runs, in
microseconds per call. Prints one JSON object.
"""

import argparse
import gc
import queue
import sys
import time
import uuid

# common also puts the repository on sys.path (for ``import gateway``).
from common import filler, run_child

import attrs
from twisted.internet.defer import inlineCallbacks

from gateway.storage.archive.spool import Spool
from gateway.storage.archive.store import ArchiveStore
from gateway.storage.archive.writer import ArchiveWriter
from gateway.storage.db import create_engine, migrate
from gateway.storage.dbthread import DatabaseThread
from gateway.directory.sql import DirectoryStore, SQLDirectory
from gateway.model import Address, Outcome, Verdict
from gateway.policy.rules import Side
from gateway.testing import MemoryArchive, MemoryConnector, make_core

from gatewayside import CONFIG

# The [policy] part of the bench config: default allow and five rules that never match.
RULES = "[policy]" + CONFIG.split("[policy]", 1)[1].split("{connectors}", 1)[0]


def per_call(fn, n, repeat=3, reset=None):
    """Best of ``repeat`` runs of ``n`` calls, in microseconds per call."""
    best = None
    for _ in range(repeat):
        if reset is not None:
            reset()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best / n * 1e6


@inlineCallbacks
def run(reactor, args, out, data_dir):
    dbthread = DatabaseThread(reactor, name="bench-directory")
    try:
        engine = create_engine(f"sqlite:///{data_dir}/gateway.sqlite")
        migrate(engine)
        people = DirectoryStore(engine)
        for name in ("alice", "bob"):
            people.add_person(name, password=None, handles=[f"mem:{name}"])
        dbthread.start()
        directory = SQLDirectory(people, dbthread, reactor)
        alice, bob = Address("mem", "alice"), Address("mem", "bob")
        for address in (alice, bob):
            yield directory.identity_for(address)
        store = ArchiveStore(engine, node="bench")
        yield measure(reactor, args, out, data_dir, directory, store, alice, bob)
        engine.dispose()
    finally:
        yield dbthread.stop()


@inlineCallbacks
def core_with(reactor, directory, archive, rules, alice, bob):
    """A Core (no threads of its own) with a MemoryConnector and two logged-in sessions."""
    core = make_core(RULES if rules else "", clock=reactor, directory=directory, archive=archive)
    connector = MemoryConnector(core.api, name="memory", networks=("mem",))
    core.connectors[connector.name] = connector
    core.router.forget_connectors()
    for address in (alice, bob):
        identity = yield directory.identity_for(address)
        yield connector.login(identity, address)
    return core, connector


@inlineCallbacks
def measure(reactor, args, out, data_dir, directory, store, alice, bob):
    n = args.messages
    text = filler(args.size).decode("ascii")
    stages = []

    def stage(name, us, note=""):
        stages.append({"stage": name, "us": round(us, 2), "note": note})

    bare, bare_connector = yield core_with(reactor, directory, MemoryArchive(), False, alice, bob)
    ruled, ruled_connector = yield core_with(reactor, directory, MemoryArchive(), True, alice, bob)
    writer = ArchiveWriter(store, reactor, Spool(f"{data_dir}/spool"), queue_max=4 * n + 100)
    full, full_connector = yield core_with(reactor, directory, writer, True, alice, bob)

    api = ruled.api
    event = api.message(alice, bob, text)
    route = ruled.router.route(event)
    verdict = Verdict.allow(rule="default", reason="allowed by default")
    outcome = Outcome.delivered_(event.id)

    # -- pieces
    stage("uuid.uuid4().hex", per_call(lambda: uuid.uuid4().hex, n), "the event id")
    stage("api.message(...)", per_call(lambda: api.message(alice, bob, text), n), "Message with converters, uuid4")
    stage("router.route(event)", per_call(lambda: ruled.router.route(event), n), "two directory cache hits, a Route")
    stage(
        "policy.check, the 5 bench rules",
        per_call(lambda: ruled.policy.check(event.kind, Side(event.sender, route.sender), Side(event.recipient, route.recipient)), n),
        "with the two Side objects the bus builds",
    )
    stage(
        "policy.check, no rules",
        per_call(lambda: bare.policy.check(event.kind, Side(event.sender, route.sender), Side(event.recipient, route.recipient)), n),
    )
    stage(
        "archive row: record_to_row",
        per_call(lambda: store.record_to_row(event, verdict, outcome, sender_identity="alice", recipient_identity="bob", recorded=1.0), n),
        "built in the reactor thread by ArchiveWriter.record",
    )
    q = queue.Queue(10 * n)
    stage("queue.Queue.put_nowait", per_call(lambda: q.put_nowait(event), n, reset=lambda: q.queue.clear()),
          "the writer's bounded queue")
    stage("metrics.event", per_call(lambda: ruled.metrics.event(event.kind, outcome), n))

    # -- the whole path, three ways
    def path(core, connector):
        submit, message = core.api.submit, core.api.message

        def one():
            submit(message(alice, bob, text))

        def reset():
            connector.delivered.clear()
            gc.collect()

        return per_call(one, n, reset=reset)

    stage("whole path, no rules, memory archive", path(bare, bare_connector), "api.message + api.submit")
    stage("whole path, bench rules, memory archive", path(ruled, ruled_connector))

    # The writer's thread is not started: rows stay in its queue (sized for all of them).
    stage("whole path, bench rules, real ArchiveWriter.record", path(full, full_connector),
          "row built and queued; the writer thread not running")

    # -- what the writer thread spends per row (CPU time: the machine may be shared)
    def rows_for(count, make_id=None):
        made = []
        for _ in range(count):
            event = api.message(alice, bob, text)
            if make_id is not None:
                event = attrs.evolve(event, id=make_id())
            made.append(store.record_to_row(event, verdict, outcome, sender_identity="alice",
                                            recipient_identity="bob", recorded=1.0))
        return made

    def insert_cpu(rows):
        batch = args.batch_rows
        started = time.process_time()
        for i in range(0, len(rows), batch):
            store.insert_rows(rows[i : i + batch])
        return (time.process_time() - started) / len(rows) * 1e6

    us = insert_cpu(rows_for(n))
    stage(f"ArchiveStore.insert_rows, batches of {args.batch_rows}", us,
          f"CPU per row, SQLite WAL, fresh archive; {1e6 / us:,.0f} rows per CPU second")
    # The key's order matters once the archive outgrows the page cache:
    # random ids (uuid4) against the gateway's time-ordered ones.
    if args.archive_rows:
        fill = rows_for(args.archive_rows, make_id=lambda: uuid.uuid4().hex)
        for i in range(0, len(fill), 5000):
            store.insert_rows(fill[i : i + 5000])
        del fill
        stage(f"insert_rows, {args.archive_rows:,} rows stored, random ids", insert_cpu(rows_for(n, lambda: uuid.uuid4().hex)),
              "CPU per row, uuid4().hex keys")
        stage(f"insert_rows, {args.archive_rows + n:,} rows stored, time-ordered ids", insert_cpu(rows_for(n)),
              "CPU per row, gateway.model.new_event_id keys")
    out["stages"] = stages
    out["messages"] = n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=20_000, help="calls per timing")
    parser.add_argument("--size", type=int, default=100, help="text characters per message")
    parser.add_argument("--batch-rows", type=int, default=500, help="rows per insert (the writer's batch_size)")
    parser.add_argument("--archive-rows", type=int, default=300_000,
                        help="rows stored (random keys) before timing inserts into a big archive; 0 skips")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    return run_child(reactor, lambda reactor, out, data_dir: run(reactor, args, out, data_dir), "gateway-bench-stages-")


if __name__ == "__main__":
    sys.exit(main())
