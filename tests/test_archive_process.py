"""The archive writer as a child process: acknowledgements, a killed writer, stopping, an unreachable database."""

import os
import signal

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from gateway.storage import db
from gateway.storage.archive import ArchiveUnavailable
from gateway.storage.archive.process import ArchiveProcess, Frames, decode_event, encode_event, frame
from gateway.model import Access, FileOffer, Message, Presence, PresenceStatus, Profile, Verdict
from tests.test_archive_writer import delivered_ids, message, outcome_of, rows_by_id, sleep, wait_for
from tests.support import free_port

ALLOW = Verdict.allow()


class WireTests(TestCase):
    def test_every_kind_of_event_crosses_unchanged(self):
        for event in [
            message(1),
            Presence("xmpp:bob@example.com", PresenceStatus.AWAY, "lunch", recipient="aim:alice"),
            FileOffer("aim:alice", "aim:bob", "a.pdf", 12, url="http://x"),
            Profile("aim:bob", "aim:alice", "away", "brb", "me", "<b>me</b>"),
            Access("aim:bob", "login-failed", source="192.0.2.1", text="wrong password"),
        ]:
            self.assertEqual(decode_event(encode_event(event)), event)

    def test_frames_split_anywhere(self):
        data = frame(("rows", [1, 2])) + frame(("ack", [1], [], None))
        for cut in range(len(data) + 1):
            frames = Frames()
            self.assertEqual(frames.feed(data[:cut]) + frames.feed(data[cut:]),
                             [("rows", [1, 2]), ("ack", [1], [], None)])

    def test_oversized_frame_is_refused(self):
        self.assertRaises(ValueError, Frames().feed, b"\xff\xff\xff\xff")


class WriterProcess:
    """Makes a writer process on a new SQLite file (or ``url``), stopped when the test ends."""

    timeout = 60

    def make(self, url=None, **options):
        from twisted.internet import reactor

        folder = self.mktemp()
        os.makedirs(folder)
        if url is None:
            url = f"sqlite:///{folder}/archive.sqlite"
            self.engine = db.create_engine(url)
            self.addCleanup(self.engine.dispose)
            db.migrate(self.engine)
        self.spool_dir = os.path.join(folder, "spool")
        settings = dict(url=url, node="n1", spool_dir=self.spool_dir, batch_size=50,
                        batch_wait=0.0, queue_max=10_000, retry_interval=0.2)
        settings.update(options)
        writer = ArchiveProcess(reactor, settings, restart_delay=0.1)
        writer.startService()
        self.addCleanup(lambda: writer.running and writer.stopService())
        return writer


class ProcessTests(WriterProcess, TestCase):
    @defer.inlineCallbacks
    def test_waited_rows_are_in_the_database_when_acknowledged(self):
        writer = self.make()
        events = [message(n) for n in range(200)]
        results = yield defer.gatherResults([writer.record(e, ALLOW, wait=True) for e in events])
        self.assertEqual(results, [None] * 200)
        rows, count = rows_by_id(self.engine)
        self.assertEqual(count, 200)
        self.assertEqual(rows[events[7].id].text, "message 7")
        self.assertEqual(writer.queue_depth(), 0)
        self.assertEqual(writer.state, "healthy")

    @defer.inlineCallbacks
    def test_a_killed_writer_is_started_again_and_nothing_is_lost_or_doubled(self):
        writer = self.make()
        first = message(0)
        yield writer.record(first, ALLOW, wait=True)
        events = [message(n) for n in range(1, 3001)]
        waiters = []
        for index, event in enumerate(events):
            waiters.append(writer.record(event, ALLOW, wait=index % 2 == 0, strict=False))
            if index % 10 == 0:
                writer.record_delivery(event.id, "delivered", "n1")
            if index == 1500:
                os.kill(writer._link.transport.pid, signal.SIGKILL)
            if index % 100 == 0:
                yield sleep(0.001)
        yield defer.gatherResults([w for w in waiters if w is not None])
        yield wait_for(lambda: writer.queue_depth() == 0)
        self.assertGreaterEqual(writer.restarts, 1)
        yield writer.stopService()
        rows, count = rows_by_id(self.engine)
        self.assertEqual(count, 3001)
        self.assertEqual(set(rows), {e.id for e in events} | {first.id})
        delivered = delivered_ids(self.engine)
        self.assertEqual(sorted(delivered), sorted(e.id for e in events[::10]))

    @defer.inlineCallbacks
    def test_stop_writes_everything_queued(self):
        writer = self.make(batch_wait=0.01)
        events = [message(n) for n in range(500)]
        for event in events:
            writer.record(event, ALLOW)
        yield writer.stopService()
        self.assertEqual(rows_by_id(self.engine)[1], 500)

    @defer.inlineCallbacks
    def test_unreachable_database_spool_counts_unless_strict(self):
        url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
        writer = self.make(url=url)
        relaxed = yield outcome_of(writer.record(message(1), ALLOW, wait=True, strict=False))
        strict = yield outcome_of(writer.record(message(2), ALLOW, wait=True, strict=True))
        self.assertEqual((relaxed, strict), ("ok", "unavailable"))
        yield wait_for(lambda: writer.spooled() >= 2)
        self.assertEqual(writer.state, "degraded")
        # What the gauges show: the spool lives in the writer process, which says its size with every answer.
        import glob

        on_disk = sum(os.path.getsize(path) for path in glob.glob(os.path.join(self.spool_dir, "*")) if os.path.isfile(path)
                      and not path.endswith(".lock"))
        self.assertGreater(writer.spool_bytes(), 0)
        self.assertLessEqual(writer.spool_bytes(), on_disk)

    @defer.inlineCallbacks
    def test_writer_log_lines_reach_the_gateway_log(self):
        url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
        seen = []
        from twisted.logger import globalLogPublisher

        def observe(event):
            if "archive writer" in str(event.get("log_format", "")):
                seen.append(event.get("text", ""))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        writer = self.make(url=url)
        yield outcome_of(writer.record(message(1), ALLOW, wait=True, strict=False))
        yield wait_for(lambda: any("spooling" in text for text in seen))


class StrictKillTests(WriterProcess, TestCase):
    """fail_closed: a writer killed mid-stream loses nothing acknowledged and doubles nothing."""

    @defer.inlineCallbacks
    def test_strict_rows_survive_a_killed_writer(self):
        writer = self.make()
        events = [message(n) for n in range(2000)]
        waiters = []
        for index, event in enumerate(events):
            waiters.append(outcome_of(writer.record(event, ALLOW, wait=True, strict=True)))
            if index == 1000:
                os.kill(writer._link.transport.pid, signal.SIGKILL)
            if index % 100 == 0:
                yield sleep(0.001)
        outcomes = yield defer.gatherResults(waiters)
        yield writer.stopService()
        rows, count = rows_by_id(self.engine)
        acknowledged = {e.id for e, o in zip(events, outcomes) if o == "ok"}
        self.assertLessEqual(acknowledged, set(rows))
        self.assertEqual(count, len(set(rows)))
        self.assertEqual(len(acknowledged), 2000)  # the restarted writer took every one


def journal_files(writer):
    folder = os.path.join(writer._options["spool_dir"], "journal")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


class JournalTests(WriterProcess, TestCase):
    """
    The writer process acknowledges a row once it is fsync'd to its
    journal; the SQL follows in the writer's own time. ``batch_wait`` of
    many seconds holds that SQL back, so each test sees the row acknowledged
    and not yet in the database.
    """

    @defer.inlineCallbacks
    def test_journaled_rows_are_acknowledged_before_their_commit(self):
        writer = self.make(batch_wait=30.0)
        events = [message(n) for n in range(100)]
        yield defer.gatherResults([writer.record(e, ALLOW, wait=True, strict=False) for e in events])
        self.assertEqual(rows_by_id(self.engine)[1], 0)
        self.assertEqual(len(journal_files(writer)), 1)
        yield writer.stopService()
        # Stopping commits them and removes the journal, whose rows are all written.
        self.assertEqual(set(rows_by_id(self.engine)[0]), {e.id for e in events})
        self.assertEqual(journal_files(writer), [])

    @defer.inlineCallbacks
    def test_strict_rows_wait_for_the_database_even_when_journaled(self):
        writer = self.make(batch_wait=30.0)
        event = message(1)
        yield writer.record(event, ALLOW, wait=True, strict=True)
        self.assertEqual(set(rows_by_id(self.engine)[0]), {event.id})

    @defer.inlineCallbacks
    def test_a_writer_killed_before_the_commit_replays_its_journal(self):
        writer = self.make(batch_wait=30.0)
        events = [message(n) for n in range(300)]
        yield defer.gatherResults([writer.record(e, ALLOW, wait=True, strict=False) for e in events[:200]])
        for event in events[:200:10]:
            writer.record_delivery(event.id, "delivered", "n1")
        yield wait_for(lambda: writer.queue_depth() == 0)  # acknowledged: the parent holds none of them
        self.assertEqual(rows_by_id(self.engine)[1], 0)
        os.kill(writer._link.transport.pid, signal.SIGKILL)
        # More while the writer is down: these the parent sends again.
        later = [writer.record(e, ALLOW, wait=True, strict=False) for e in events[200:]]
        yield wait_for(lambda: rows_by_id(self.engine)[1] >= 200)
        yield defer.gatherResults(later)
        yield writer.stopService()
        rows, count = rows_by_id(self.engine)
        self.assertEqual((count, set(rows)), (300, {e.id for e in events}))
        self.assertEqual(sorted(delivered_ids(self.engine)), sorted(e.id for e in events[:200:10]))
        self.assertEqual(journal_files(writer), [])

    @defer.inlineCallbacks
    def test_without_the_journal_rows_are_acknowledged_once_committed(self):
        writer = self.make(batch_wait=30.0, journal=False)
        event = message(1)
        yield writer.record(event, ALLOW, wait=True, strict=False)
        self.assertEqual(set(rows_by_id(self.engine)[0]), {event.id})
        self.assertEqual(journal_files(writer), [])


class JournalFileTests(TestCase):
    """The journal's files: torn tails, damage, a disk that refuses."""

    def journal(self):
        from gateway.storage.archive.journal import Journal

        folder = self.mktemp()
        self.logged = []

        class Log:
            def __getattr__(log, level):
                return lambda fmt, **fields: self.logged.append((level, fmt.format(**fields)))

        return Journal(folder, log=Log()), folder

    def test_rows_settled_remove_a_sealed_segment(self):
        journal, folder = self.journal()
        segment = journal.append([frame(("rows", [(1, "events", None, False)]))], 1)
        journal.close()
        self.assertEqual(len(os.listdir(folder)), 1)  # one row not yet written
        journal.settle(segment)
        self.assertEqual(os.listdir(folder), [])

    def test_a_torn_frame_at_the_end_is_left_out(self):
        from gateway.storage.archive.journal import Journal

        journal, folder = self.journal()
        items = [(n, "deliveries", ("e%d" % n, "delivered", "n1", 1.0), False) for n in range(3)]
        whole = frame(("rows", items[:2]))
        journal.append([whole, frame(("rows", items[2:]))[:-3]], 3)
        journal._seal()  # as a crash leaves it: the file stays
        again = Journal(folder)
        (segment,) = again.leftovers()
        self.assertEqual(again.read(segment), items[:2])

    def test_a_damaged_segment_is_set_aside_with_what_came_before(self):
        from gateway.storage.archive.journal import Journal

        journal, folder = self.journal()
        items = [(1, "deliveries", ("e1", "delivered", "n1", 1.0), False)]
        damaged = bytearray(frame(("rows", items)))
        damaged[4:] = b"\x00" * (len(damaged) - 4)
        journal.append([frame(("rows", items)), bytes(damaged)], 2)
        journal._seal()
        again = Journal(folder, log=journal.log)
        (segment,) = again.leftovers()
        self.assertEqual(again.read(segment), items)
        self.assertEqual([name for name in os.listdir(folder)], [os.path.basename(segment.path) + ".bad"])
        self.assertIn("critical", [level for level, _ in self.logged])

    def test_a_disk_that_refuses_means_not_journaled(self):
        journal, folder = self.journal()
        journal.append([b"x"], 0)
        os.close(journal._fd)  # any write now fails
        self.assertIsNone(journal.append([frame(("rows", []))], 1))
        self.assertIn("error", [level for level, _ in self.logged])
        journal._fd = None


class GroupCommitTests(TestCase):
    """Rows are acknowledged once their journal is flushed: one flush for all that one read brought."""

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock

        from gateway.storage.archive import child

        folder = self.mktemp()
        os.makedirs(folder)
        url = f"sqlite:///{folder}/archive.sqlite"
        engine = db.create_engine(url)
        self.addCleanup(engine.dispose)
        db.migrate(engine)
        self.reactor = MemoryReactorClock()
        self.read_end, write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.addCleanup(os.close, self.read_end)
        self.addCleanup(os.close, write_end)
        self.link = child.ParentLink(self.reactor, out=write_end)
        self.flushes = []
        real = os.fdatasync
        self.patch(os, "fdatasync", lambda fd: (self.flushes.append(fd), real(fd))[1])
        self.link.dataReceived(frame(("config", dict(url=url, node="n1", spool_dir=os.path.join(folder, "spool"),
                                                     batch_size=50, batch_wait=0.002, queue_max=1000))))
        self.addCleanup(lambda: self.link.writer.stopService())
        self.frames = Frames()
        self.acknowledged()  # the start-up acknowledgement

    def acknowledged(self):
        done = []
        try:
            data = os.read(self.read_end, 1 << 16)
        except BlockingIOError:
            return done
        for answer in self.frames.feed(data):
            if answer[0] == "ack":
                done.extend(answer[1])
        return done

    def rows(self, first, count):
        return frame(("rows", [(seq, "deliveries", (f"e{seq}", "delivered", "n1", 1.0), False)
                               for seq in range(first, first + count)]))

    def test_each_read_is_flushed_and_acknowledged_at_once(self):
        self.reactor.advance(10)
        self.link.dataReceived(self.rows(1, 2) + self.rows(3, 1))
        self.link.dataReceived(self.rows(4, 1))
        self.assertEqual((len(self.flushes), self.acknowledged()), (2, [1, 2, 3, 4]))

    def test_a_refused_flush_acknowledges_only_what_is_committed(self):
        self.reactor.advance(10)
        self.link.dataReceived(self.rows(1, 1))
        self.acknowledged()

        def refuse(fd):
            raise OSError(28, "No space left on device")

        self.patch(os, "fdatasync", refuse)
        self.link.dataReceived(self.rows(2, 2))
        self.assertEqual(self.acknowledged(), [])
        self.reactor.advance(1)  # the writer's own time: committed, then acknowledged
        self.reactor.advance(0)
        self.assertEqual(self.acknowledged(), [2, 3])
