"""Tests for the archive spool and writer, including real database outages."""

import glob
import os
import pwd
import queue
import shutil
import subprocess
import tempfile
import time

import sqlalchemy
from sqlalchemy.pool import NullPool
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from gateway import model
from gateway.storage import db
from gateway.storage.archive import ArchiveUnavailable
from gateway.storage.archive.spool import Spool, SpoolFull
from gateway.storage.archive.store import ARCHIVE_UNAVAILABLE, ArchiveStore
from gateway.storage.archive.writer import DEGRADED, HEALTHY, ArchiveWriter, InlineArchiveWriter, OfflineStore
from gateway.storage.dbthread import DatabaseThread
from gateway.interfaces import IArchive, IOfflineStore
from gateway.model import Message, Verdict
from gateway.storage.schema import deliveries, events
from tests.support import free_port, postgres_engine, sqlite_engine

ALLOW = Verdict.allow("default", "allowed")
def _postgres_bin():
    """The newest PostgreSQL server binaries Debian installed."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return versions[-1] if versions else "/usr/lib/postgresql/15/bin"


POSTGRES_BIN = os.environ.get("GATEWAY_TEST_POSTGRES_BIN") or _postgres_bin()


def message(n, created=None):
    return Message(
        "aim:alice", "sip:bob@example.com", f"message {n}", created=float(created or n)
    )


class ThreadedClock(task.Clock):
    """A `task.Clock` whose ``callFromThread`` calls run when the test pumps them."""

    def __init__(self):
        super().__init__()
        self._calls = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self._calls.put((f, args, kwargs))

    def pump_calls(self):
        while True:
            try:
                f, args, kwargs = self._calls.get_nowait()
            except queue.Empty:
                return
            f(*args, **kwargs)

    def run_until(self, predicate, timeout=10.0):
        """Run thread calls until ``predicate()`` holds; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump_calls()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting for {predicate} after {timeout}s")
            time.sleep(0.002)


class Metrics:
    def __init__(self):
        self.calls = []

    def archive_written(self, n, seconds):
        self.calls.append(("written", n))

    def archive_spooled(self, n):
        self.calls.append(("spooled", n))

    def archive_failed(self):
        self.calls.append(("failed",))

    def total(self, name):
        return sum(call[1] for call in self.calls if call[0] == name)


class FlakyStore:
    """A real store that records its batches and raises while ``down``."""

    def __init__(self, store):
        self.store = store
        self.batches = []
        self.down = False

    def __getattr__(self, name):
        return getattr(self.store, name)

    def probe(self):
        if self.down:
            raise OSError("database down")
        self.store.probe()

    def insert_rows(self, rows, delivery_rows=(), capture_rows=()):
        if self.down:
            raise OSError("database down")
        self.batches.append(len(rows) + len(delivery_rows) + len(capture_rows))
        self.store.insert_rows(rows, delivery_rows, capture_rows)


def rows_by_id(engine):
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(events)).all()
    return {row.id: row for row in rows}, len(rows)


def delivered_ids(engine):
    with engine.connect() as conn:
        return [row.event_id for row in conn.execute(sqlalchemy.select(deliveries))]


class SpoolTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()
        self.spool = Spool(self.directory)

    def test_append_fsyncs_before_returning(self):
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            synced.append(fd)
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        self.spool.append([{"a": 1}, {"a": 2}])
        self.assertTrue(synced)
        [segment] = self.spool.segments()
        with open(segment, "rb") as f:
            self.assertEqual(f.read(), b'{"a":1}\n{"a":2}\n')

    def test_pending_and_replay(self):
        self.assertEqual(self.spool.pending(), 0)
        self.assertEqual(self.spool.segments(), [])
        self.spool.append([{"n": 1}, {"n": 2}])
        self.spool.append([])
        self.assertEqual(self.spool.pending(), 2)
        [first] = self.spool.segments()
        # Taking the segments seals them: new rows go to a new segment.
        self.spool.append([{"n": 3}])
        self.assertEqual(self.spool.read(first), [{"n": 1}, {"n": 2}])
        self.spool.discard(first)
        self.assertEqual(self.spool.pending(), 1)
        [second] = self.spool.segments()
        self.assertNotEqual(first, second)
        self.assertEqual(self.spool.read(second), [{"n": 3}])
        self.spool.discard(second)
        self.assertEqual((self.spool.pending(), self.spool.segments()), (0, []))

    def test_survives_a_restart(self):
        self.spool.append([{"n": 1}])
        self.spool.close()
        again = Spool(self.directory)
        self.assertEqual(again.pending(), 1)
        again.append([{"n": 2}])
        segments = again.segments()
        self.assertEqual(len(segments), 2)
        self.assertEqual([again.read(s) for s in segments], [[{"n": 1}], [{"n": 2}]])

    def test_rolls_segments(self):
        spool = Spool(self.mktemp(), segment_rows=2)
        for n in range(5):
            spool.append([{"n": n}])
        segments = spool.segments()
        self.assertEqual(len(segments), 3)
        self.assertEqual(
            [row["n"] for s in segments for row in spool.read(s)], [0, 1, 2, 3, 4]
        )

    def test_torn_last_line(self):
        """A crash mid-write leaves part of a line: it is skipped, the rest kept."""
        self.spool.append([{"n": 1}, {"n": 2}])
        [segment] = self.spool.segments()
        with open(segment, "ab") as f:
            f.write(b'{"n": 3, "te')
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        again = Spool(self.directory)
        self.assertEqual(again.pending(), 2)
        self.assertEqual(again.read(segment), [{"n": 1}, {"n": 2}])
        [warning] = [e for e in logged if e.get("what") == "torn last"]
        self.assertEqual(warning["segment"], segment)


    def test_bounded(self):
        spool = Spool(self.mktemp(), segment_rows=2, max_bytes=40)
        spool.append([{"n": 1}, {"n": 2}])  # 16 bytes
        spool.append([{"n": 3}, {"n": 4}])  # 32
        self.assertEqual(spool.size(), 32)
        e = self.assertRaises(SpoolFull, spool.append, [{"n": 5}, {"n": 6}])
        self.assertIn("full (40 bytes): 2 rows not written", str(e))
        self.assertEqual(spool.pending(), 4)
        # Replaying a segment frees its room; the bound holds across a restart.
        first = spool.segments()[0]
        spool.discard(first)
        spool.append([{"n": 5}, {"n": 6}])
        again = Spool(spool.directory, max_bytes=40)
        self.assertEqual((again.size(), again.pending()), (32, 4))
        self.assertRaises(SpoolFull, again.append, [{"n": 7}, {"n": 8}])


class WriterTests(TestCase):
    """The writer on SQLite and a fake reactor whose thread calls the test pumps."""

    def setUp(self):
        self.engine = sqlite_engine(self)
        self.store = FlakyStore(ArchiveStore(self.engine, node="n1"))
        self.clock = ThreadedClock()
        self.spool = Spool(self.mktemp())
        self.metrics = Metrics()

    def writer(self, **kwargs):
        kwargs.setdefault("retry_interval", 0.05)
        writer = ArchiveWriter(
            self.store, self.clock, self.spool, metrics=self.metrics, **kwargs
        )
        self.addCleanup(self.stop, writer)
        return writer

    def start(self, **kwargs):
        writer = self.writer(**kwargs)
        writer.startService()
        return writer

    def stop(self, writer):
        if writer.running:
            d = writer.stopService()
            self.clock.run_until(lambda: d.called)

    def wait(self, d):
        self.clock.run_until(lambda: d.called)
        return self.successResultOf(d)

    def failed(self, d):
        self.clock.run_until(lambda: d.called)
        return self.failureResultOf(d, ArchiveUnavailable)

    def test_interfaces(self):
        writer = self.writer()
        verifyObject(IArchive, writer)
        verifyObject(
            IOfflineStore, OfflineStore(self.store, DatabaseThread(self.clock))
        )

    def test_batches(self):
        writer = self.writer(batch_size=500)
        for n in range(1200):
            writer.record(message(n), ALLOW)
        last = writer.record(message(1200), ALLOW, wait=True)
        self.assertEqual(writer.queue_depth(), 1201)
        writer.startService()
        self.wait(last)
        self.assertEqual(self.store.batches, [500, 500, 201])
        self.assertEqual(writer.queue_depth(), 0)
        self.assertEqual(self.store.count(), 1201)
        self.assertEqual(self.metrics.total("written"), 1201)

    def test_batch_wait_gathers_rows_into_one_transaction(self):
        # The writer waits (up to a long time here) after the first row; a full batch goes at once.
        writer = self.start(batch_size=5, batch_wait=30.0)
        writer.record(message(0), ALLOW)
        time.sleep(0.2)  # the writer has taken the first row and waits for more (without the wait: [1, 4])
        for n in range(1, 4):
            writer.record(message(n), ALLOW)
        last = writer.record(message(4), ALLOW, wait=True)
        self.wait(last)
        self.assertEqual(self.store.batches, [5])

    def test_batch_wait_ends(self):
        writer = self.start(batch_size=500, batch_wait=0.05)
        self.wait(writer.record(message(0), ALLOW, wait=True))
        self.assertEqual(self.store.batches, [1])

    def test_wait_fires_after_commit(self):
        writer = self.start()
        event = message(1)
        d = writer.record(event, ALLOW, sender_identity="alice", wait=True)
        self.assertNoResult(d)
        self.assertIsNone(self.wait(d))
        [found] = self.store.search()
        self.assertEqual(
            (found.id, found.status, found.sender_identity),
            (event.id, "accepted", "alice"),
        )
        self.assertIsNone(writer.record(message(2), ALLOW))

    def test_record_delivery(self):
        writer = self.start()
        event = message(1)
        writer.record(event, ALLOW)
        writer.record_delivery(event.id, model.OutcomeStatus.DELIVERED, "oscar")
        writer.record_delivery(event.id, model.OutcomeStatus.DELIVERED, "oscar")
        self.wait(writer.record(message(2), ALLOW, wait=True))
        [found] = self.store.search(text="message 1")
        self.assertEqual((found.status, found.delivered_at), ("delivered", 0.0))

    def test_queue_full(self):
        writer = self.writer(queue_max=2)
        queued = [message(1), message(2)]
        for event in queued:
            self.assertIsNone(writer.record(event, ALLOW))
        spilled = message(3)
        self.assertIsNone(writer.record(spilled, ALLOW))
        refused = message(4)
        d = writer.record(refused, ALLOW, wait=True)
        failure = self.failureResultOf(d, ArchiveUnavailable)
        self.assertEqual(str(failure.value), "archive queue full")
        # Spooled together at the end of the reactor turn, one fsync for both.
        self.assertEqual((writer.queue_depth(), writer.spooled()), (2, 0))
        self.clock.advance(0)
        self.assertEqual((writer.queue_depth(), writer.spooled()), (2, 2))
        # Starting replays the spool, then drains the queue.
        writer.startService()
        self.clock.run_until(lambda: self.store.count() == 4 and writer.spooled() == 0)
        found = {event.id: event for event in self.store.search()}
        self.assertEqual(found[spilled.id].status, "accepted")
        self.assertEqual(
            (
                found[refused.id].status,
                found[refused.id].code,
                found[refused.id].reason,
            ),
            (
                "rejected",
                ARCHIVE_UNAVAILABLE,
                "archive unavailable: archive queue full",
            ),
        )
        self.assertEqual(writer.state, HEALTHY)

    def test_outage_spools_and_recovers(self):
        writer = self.start(batch_size=10)
        self.wait(writer.record(message(0), ALLOW, wait=True))
        self.store.down = True
        waiting = message(1)
        failure = self.failed(writer.record(waiting, ALLOW, wait=True))
        self.assertEqual(str(failure.value), "database down")
        self.assertEqual(writer.state, DEGRADED)
        later = [message(n) for n in range(2, 30)]
        for event in later:
            writer.record(event, ALLOW)
        self.failed(writer.record(message(30), ALLOW, wait=True))
        self.clock.run_until(lambda: writer.queue_depth() == 0)
        self.assertEqual(writer.spooled(), 30)
        self.store.down = False
        self.clock.run_until(lambda: writer.state == HEALTHY)
        self.assertEqual(writer.spooled(), 0)
        found = {event.id: event for event in self.store.search(limit=None)}
        self.assertEqual(len(found), 31)
        self.assertEqual(
            (
                found[waiting.id].status,
                found[waiting.id].code,
                found[waiting.id].reason,
            ),
            ("rejected", ARCHIVE_UNAVAILABLE, "archive unavailable: database down"),
        )
        self.assertEqual({found[event.id].status for event in later}, {"accepted"})
        self.wait(writer.record(message(31), ALLOW, wait=True))
        self.clock.run_until(lambda: self.metrics.total("written") == 32)
        self.assertEqual(self.metrics.total("spooled"), 30)
        self.assertIn(("failed",), self.metrics.calls)

    def test_spool_failure_is_logged(self):
        """With the database and the disk both failing, the loss is loud."""

        class FullDisk(Spool):
            def append(self, rows):
                raise OSError(28, "No space left on device")

        self.spool = FullDisk(self.mktemp())
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        writer = self.writer()
        self.store.down = True
        event = message(1)
        writer.record(event, ALLOW)
        d = writer.record(message(2), ALLOW, wait=True)
        writer.startService()
        self.failed(d)
        self.clock.run_until(lambda: any(e.get("ids") for e in logged))
        [lost] = [e for e in logged if e.get("ids")]
        self.assertEqual(lost["log_level"].name, "critical")
        self.assertIn(event.id, lost["ids"])
        self.assertEqual(self.metrics.total("spooled"), 0)

    def test_full_spool_refuses_what_it_cannot_keep(self):
        """Database down and spool at its bound: a durable event is not acknowledged (so not delivered)."""
        self.spool = Spool(self.mktemp(), max_bytes=1)
        writer = self.start()
        self.store.down = True
        failure = self.failed(writer.record(message(1), ALLOW, wait=True, strict=False))
        self.assertIn("is full", str(failure.value))
        self.assertEqual(writer.spooled(), 0)
        self.store.down = False
        self.clock.run_until(lambda: writer.state == HEALTHY)
        self.wait(writer.record(message(2), ALLOW, wait=True, strict=False))
        self.assertEqual(self.store.count(), 1)

    def test_stop_flushes(self):
        writer = self.start()
        for n in range(50):
            writer.record(message(n), ALLOW)
        d = writer.stopService()
        self.clock.run_until(lambda: d.called)
        self.assertEqual(self.store.count(), 50)
        self.assertFalse(writer.running)

    def test_record_after_stop_is_spooled_and_replayed(self):
        writer = self.start()
        self.stop(writer)
        event = message(1)
        writer.record(event, ALLOW)
        self.failed(writer.record(message(2), ALLOW, wait=True))
        self.assertEqual(writer.spooled(), 2)
        writer.startService()
        self.clock.run_until(lambda: writer.spooled() == 0)
        self.assertEqual(self.store.count(), 2)

    def test_offline_store(self):
        dbthread = DatabaseThread(self.clock)
        dbthread.start()
        self.addCleanup(lambda: self.wait(dbthread.stop()))
        offline = OfflineStore(self.store, dbthread)
        first, second = message(1), message(2)
        self.wait(offline.store("alice", first))
        self.wait(offline.store("alice", second))
        self.wait(offline.store("alice", first))
        self.assertEqual(self.wait(offline.pending("alice")), [first, second])
        self.wait(offline.remove("alice", [first.id]))
        self.assertEqual(self.wait(offline.pending("alice")), [second])
        self.wait(offline.remove("bob", [second.id]))
        self.assertEqual(self.wait(offline.pending("alice")), [second])


class CountingStore(FlakyStore):
    """`FlakyStore` that also counts transactions and can fail the ``fail_at``-th batch added to one."""

    def __init__(self, store):
        super().__init__(store)
        self.begun, self.committed, self.fail_at, self.added = 0, 0, None, 0

    def begin(self):
        owner, transaction = self, self.store.begin()
        self.begun += 1

        class Counted:
            def add(self, *batch):
                owner.added += 1
                if owner.added == owner.fail_at:
                    raise OSError("disk I/O error")
                transaction.add(*batch)

            def commit(self):
                transaction.commit()
                owner.committed += 1

            def rollback(self):
                transaction.rollback()

        return Counted()


class InlineWriterTests(TestCase):
    """The writer process's writer: one transaction filled a chunk a reactor turn, committed when due."""

    def setUp(self):
        self.engine = sqlite_engine(self)
        self.store = CountingStore(ArchiveStore(self.engine, node="n1"))
        self.clock = task.Clock()
        self.spool = Spool(self.mktemp())
        self.writer = InlineArchiveWriter(self.store, self.clock, self.spool, batch_size=500, batch_wait=0.05,
                                          chunk_rows=10, retry_interval=0.01)
        self.writer.startService()
        self.addCleanup(lambda: self.writer.running and self.writer.stopService())

    def turn(self, seconds=0.0):
        """One reactor turn ``seconds`` on: the calls due then run, not those they schedule for now."""
        self.clock.rightNow += seconds
        for call in [c for c in self.clock.calls if c.getTime() <= self.clock.seconds()]:
            if call.active():
                self.clock.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)

    def record(self, n, hurry=False):
        return self.writer.record_row(self.store.record_to_row(message(n), ALLOW), wait=True, strict=False,
                                      hurry=hurry)

    def test_chunks_of_one_transaction(self):
        waiting = [self.record(n) for n in range(35)]
        self.turn(0.05)  # the rows' company time is up: the first chunk goes in
        self.assertEqual((self.store.begun, self.store.added, self.store.count()), (1, 1, 0))
        self.assertEqual(self.writer.queue_depth(), 35)  # written, not committed: not done
        self.assertEqual([d.called for d in waiting], [False] * 35)
        self.turn()
        self.turn()
        self.assertEqual((self.store.added, self.store.committed), (3, 0))
        self.turn()  # the last chunk empties the queue: committed
        self.assertEqual((self.store.begun, self.store.added, self.store.committed), (1, 4, 1))
        self.assertEqual([d.called for d in waiting], [True] * 35)
        self.assertEqual((self.store.count(), self.writer.queue_depth()), (35, 0))

    def test_a_row_someone_waits_for_commits_with_its_chunk(self):
        for n in range(25):
            self.record(n)
        urgent = self.record(25, hurry=True)
        self.turn()  # at once, not after batch_wait
        self.turn()
        self.assertNoResult(urgent)
        self.turn()  # the chunk holding it: committed then, the transaction of 26 rows
        self.successResultOf(urgent)
        self.assertEqual((self.store.begun, self.store.committed, self.store.count()), (1, 1, 26))

    def test_a_failed_chunk_spools_the_whole_transaction(self):
        self.store.fail_at = 2
        waiting = [self.record(n) for n in range(15)]
        self.turn(0.05)
        self.turn()  # the second chunk fails: the first, already in the transaction, goes too
        self.assertEqual(self.writer.state, DEGRADED)
        self.assertEqual((self.store.committed, self.store.count(), self.writer.spooled()), (0, 0, 15))
        self.assertEqual([self.successResultOf(d) for d in waiting], [None] * 15)  # not strict: the spool counts
        time.sleep(0.02)  # the retry's time (the writer counts it on the monotonic clock): the spool replayed
        self.turn(0.02)
        self.assertEqual((self.writer.state, self.store.count(), self.writer.spooled()), (HEALTHY, 15, 0))

    def test_stop_commits_what_is_open_and_writes_the_rest(self):
        waiting = [self.record(n) for n in range(25)]
        self.turn(0.05)
        self.assertEqual(self.store.added, 1)
        self.successResultOf(self.writer.stopService())
        self.assertEqual([d.called for d in waiting], [True] * 25)
        self.assertEqual(self.store.count(), 25)


def sleep(seconds):
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {predicate} after {timeout}s")
        yield sleep(0.02)


def outcome_of(d):
    """``ok``, ``unavailable`` or the unexpected failure, when ``d`` settles."""
    return d.addCallbacks(
        lambda _: "ok", lambda f: f.trap(ArchiveUnavailable) and "unavailable"
    )


class RealReactorMixin:
    """The writer on the real reactor; subclasses give the database."""

    timeout = 60

    def make_engine(self):
        raise NotImplementedError

    def setUp(self):
        from twisted.internet import reactor

        self.engine = self.make_engine()
        self.writer = ArchiveWriter(
            ArchiveStore(self.engine),
            reactor,
            Spool(self.mktemp()),
            batch_size=20,
            retry_interval=0.1,
        )
        self.writer.startService()
        self.addCleanup(lambda: self.writer.running and self.writer.stopService())

    @defer.inlineCallbacks
    def test_stream(self):
        waits = []
        recorded = []
        for n in range(300):
            event = message(n)
            recorded.append(event.id)
            if n % 7 == 0:
                waits.append(self.writer.record(event, ALLOW, wait=True))
            else:
                self.writer.record(event, ALLOW)
            if n % 10 == 0:
                self.writer.record_delivery(event.id, "delivered", "oscar")
            if n % 50 == 0:
                yield sleep(0.001)
        results = yield defer.gatherResults(waits)
        self.assertEqual(results, [None] * len(waits))
        yield self.writer.stopService()
        rows, count = rows_by_id(self.engine)
        self.assertEqual((count, set(rows)), (300, set(recorded)))
        self.assertEqual(len(delivered_ids(self.engine)), 30)


class SQLiteRealReactorTests(RealReactorMixin, TestCase):
    def make_engine(self):
        return sqlite_engine(self)


class PostgresRealReactorTests(RealReactorMixin, TestCase):
    def make_engine(self):
        return postgres_engine(self)


class OutageScenario:
    """
    Fail-closed under a real outage: a stream of records (some waited for)
    runs while the database goes away and comes back. Subclasses provide
    ``make_engine``, ``take_down`` and ``bring_up`` (Deferreds).
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_outage_mid_stream(self):
        from twisted.internet import reactor

        engine = self.make_engine()
        writer = ArchiveWriter(
            ArchiveStore(engine),
            reactor,
            Spool(self.mktemp()),
            batch_size=10,
            retry_interval=0.1,
        )
        writer.startService()
        self.addCleanup(lambda: writer.running and writer.stopService())
        records = []  # (event, outcome Deferred or None)
        delivered = []

        def emit(count):
            for _ in range(count):
                n = len(records)
                event = message(n)
                d = writer.record(event, ALLOW, wait=n % 3 == 0)
                records.append((event, None if d is None else outcome_of(d)))
                if n % 10 == 1:
                    writer.record_delivery(event.id, "delivered", "oscar")
                    delivered.append(event.id)

        def outcomes(start, end=None):
            return defer.gatherResults(
                [d for _, d in records[start:end] if d is not None]
            )

        @defer.inlineCallbacks
        def emit_until(d):
            while not d.called:
                emit(3)
                yield sleep(0.005)
            yield d

        # Up: everything waited for is durable.
        emit(60)
        self.assertEqual(set((yield outcomes(0))), {"ok"})
        # Going down while the stream goes on.
        yield emit_until(self.take_down())
        # Down for sure: everything waited for fails, and is recorded as rejected.
        start = len(records)
        for _ in range(10):
            emit(5)
            yield sleep(0.005)
        self.assertEqual(set((yield outcomes(start))), {"unavailable"})
        self.assertEqual(writer.state, DEGRADED)
        # Coming back while the stream goes on.
        yield emit_until(self.bring_up())
        for _ in range(10):
            emit(5)
            yield sleep(0.005)
        yield wait_for(
            lambda: writer.state == HEALTHY
            and writer.spooled() == 0
            and writer.queue_depth() == 0
        )
        last = message(len(records))
        self.assertIsNone((yield writer.record(last, ALLOW, wait=True)))
        results = yield outcomes(0)
        yield writer.stopService()

        rows, count = rows_by_id(self.verify_engine())
        expected = {event.id for event, _ in records} | {last.id}
        self.assertEqual((count, set(rows)), (len(expected), expected))
        waited = iter(results)
        for event, d in records:
            row = rows[event.id]
            if d is not None and next(waited) == "unavailable":
                self.assertEqual(
                    (row.status, row.code), ("rejected", ARCHIVE_UNAVAILABLE)
                )
                self.assertTrue(row.reason.startswith("archive unavailable: "))
            else:
                self.assertEqual((row.status, row.code), ("accepted", ""))
        self.assertIn("ok", results)
        self.assertIn("unavailable", results)
        delivered_rows = delivered_ids(self.verify_engine())
        self.assertEqual(sorted(delivered_rows), sorted(delivered))
        self.assertEqual(writer.spooled(), 0)

    def verify_engine(self):
        return self.engine


class SQLiteOutageTests(OutageScenario, TestCase):
    """The SQLite file's folder disappears: opening a connection really fails."""

    def make_engine(self):
        self.folder = os.path.abspath(self.mktemp())
        path = os.path.join(self.folder, "gateway.db")
        # A new connection per use, so the outage reaches the driver at once.
        self.engine = db.create_engine(f"sqlite:///{path}", poolclass=NullPool)
        self.addCleanup(self.engine.dispose)
        db.migrate(self.engine)
        return self.engine

    def take_down(self):
        os.rename(self.folder, self.folder + ".away")
        self.addCleanup(
            lambda: os.path.exists(self.folder + ".away")
            and os.rename(self.folder + ".away", self.folder)
        )
        return defer.succeed(None)

    def bring_up(self):
        os.rename(self.folder + ".away", self.folder)
        return defer.succeed(None)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free loopback port (initdb, pg_ctl)."""

    def __init__(self):
        if not os.path.exists(os.path.join(POSTGRES_BIN, "initdb")):
            raise SkipTest(f"no PostgreSQL binaries in {POSTGRES_BIN}")
        self.as_user = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise SkipTest(
                    "running as root and there is no postgres user for initdb"
                )
            if shutil.which("runuser") is None:
                raise SkipTest("running as root and runuser is missing")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.base = tempfile.mkdtemp(prefix="gateway-pg-")
        if owner is not None:
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self.data = os.path.join(self.base, "data")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def _run(self, program, *args):
        command = [*self.as_user, os.path.join(POSTGRES_BIN, program), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self):
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-l",
            os.path.join(self.base, "log"),
            "-w",
            "-o",
            f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def destroy(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.base, ignore_errors=True)


class PostgresOutageTests(OutageScenario, TestCase):
    """A private PostgreSQL server is stopped (pg_ctl stop -m fast) and restarted."""

    def make_engine(self):
        self.server = PrivatePostgres()
        self.addCleanup(self.server.destroy)
        self.server.start()
        self.engine = db.create_engine(self.server.url)
        self.addCleanup(self.engine.dispose)
        db.migrate(self.engine)
        return self.engine

    def take_down(self):
        return threads.deferToThread(self.server.stop)

    def bring_up(self):
        return threads.deferToThread(self.server.start)
