"""The archive writer process: ``python -m gateway.storage.archive.child``, started by `ArchiveProcess`."""

from __future__ import annotations

import fcntl
import os
import select
import signal

from twisted.internet import stdio
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from twisted.python.failure import Failure

from gateway.storage.archive.journal import Journal
from gateway.storage.archive.process import Frames, frame, wire_fields
from gateway.storage.archive.store import row_from_fields
from gateway.storage.archive.writer import HEALTHY


# Seconds a journaled row may wait for others to join its transaction.
JOURNAL_WAIT = 0.05


class _Stats:
    """The writer's metrics, gathered here and sent with the next acknowledgement."""

    def __init__(self, link):
        self.link = link
        self.reset()

    def reset(self):
        self.written, self.spooled_rows, self.failures = [], 0, 0

    def archive_written(self, rows, seconds):
        self.written.append((rows, seconds))
        self.link.later()

    def archive_spooled(self, rows):
        self.spooled_rows += rows
        self.link.later()

    def archive_failed(self):
        self.failures += 1
        self.link.later()


class _Log:
    """The writer's log lines, sent to the gateway process to log as its own."""

    def __init__(self, link):
        self.link = link

    def _emit(self, level, fmt, fields):
        try:
            text = fmt.format(**fields)
        except (KeyError, IndexError, ValueError):
            text = fmt
        self.link.send(("log", level, text))

    def debug(self, fmt, **fields):
        pass

    def info(self, fmt, **fields):
        self._emit("info", fmt, fields)

    def warn(self, fmt, **fields):
        self._emit("warn", fmt, fields)

    def error(self, fmt, **fields):
        self._emit("error", fmt, fields)

    def critical(self, fmt, **fields):
        self._emit("critical", fmt, fields)

    def failure(self, fmt, failure=None, **fields):
        detail = failure.getTraceback() if failure is not None else ""
        self._emit("error", fmt + ("\n" + detail if detail else ""), fields)


class _Row:
    """
    What becomes of one row handed to the writer, answered by the writer
    like a Deferred (a Deferred and its callbacks cost more than the row's
    SQL here): its journal ``segment`` is settled (kept when the row could
    not be written), and its sender answered when ``answer``. A ``held``
    answer waits for the journal's flush: then the row is acknowledged as
    on disk (`synced`), or, if the disk refused, by what the database says
    (`unsynced`).
    """

    __slots__ = ("link", "seq", "segment", "answer", "held", "result")

    def __init__(self, link, seq, segment, answer, held):
        self.link, self.seq, self.segment, self.answer, self.held = link, seq, segment, answer, held
        self.result = None

    def callback(self, _):
        if self.segment is not None:
            self.link.journal.settle(self.segment)
        self._answer(True)

    def errback(self, failure):
        if not isinstance(failure, Failure):
            failure = Failure(failure)
        link, segment = self.link, self.segment
        if segment is not None:
            link.log.error(
                "archive row {seq} is kept in the journal ({path}) for the next start: {error}",
                seq=self.seq, path=segment.path, error=failure.getErrorMessage(),
            )
            link.journal.settle(segment, kept=True)
        self._answer(failure)

    def _answer(self, result):
        if self.held:
            self.result = result
        elif self.answer:
            self.answer = False
            if result is True:
                self.link._ok(None, self.seq)
            else:
                self.link._error(result, self.seq)

    def synced(self):
        """The journal holding the row is on disk: that was its acknowledgement."""
        self.held = self.answer = False

    def unsynced(self):
        """The journal could not be flushed: the database's answer (now or when it comes) is the row's."""
        self.held, self.answer = False, True
        if self.result is not None:
            self._answer(self.result)


@implementer(IHalfCloseableProtocol)
class ParentLink(Protocol):
    """Rows in on stdin, acknowledgements and log lines out on stdout."""

    def __init__(self, reactor, out=1):
        self.reactor = reactor
        self._out = out
        self.frames = Frames()
        self.writer = None
        self.journal = None
        self._journal_max = 0
        self._unsynced = []  # _Row journaled, not yet flushed to disk
        self.stats = _Stats(self)
        self.log = _Log(self)
        self._done, self._failed = [], []
        self._later = None
        self._ended = False

    def send(self, message):
        """
        Write ``message`` to the gateway now, not at the reactor's next
        turn: an acknowledgement must not wait behind the SQL that the turn
        in between may run. The pipe blocks only while the gateway does not
        read, and then there is nothing better to do.
        """
        view = memoryview(frame(message))
        while view:
            try:
                view = view[os.write(self._out, view):]
            except BlockingIOError:
                select.select([], [self._out], [])
            except OSError:
                self._end()  # the gateway is gone
                return

    def dataReceived(self, data):
        items, chunks = [], []
        for message, raw in self.frames.feed(data, raw=True):
            if message[0] == "rows":
                items.extend(message[1])
                chunks.append(raw)
            elif message[0] == "config":
                self.configure(message[1])
        if not items:
            return
        segment = None
        if self.journal is not None and self._journal_open():
            # Journaled before anything else: these rows are acknowledged
            # once on disk, and committed to the database in the writer's
            # own time.
            segment = self.journal.write(chunks, len(items))
        for item in items:
            self.row(*item, segment=segment)
        if segment is not None:
            # At once: what arrives during the flush is read together and
            # shares the next one. A minimum of 1 ms between flushes (to save
            # their CPU, 0.1-0.2 ms each here) measured worse: +1.4 ms p50 at
            # 1,000 msg/s, +1.1 ms at 5,000.
            self._sync()
        if self._done or self._failed:
            self.acknowledge()
        # Rows someone waits for and that are not journaled (fail_closed
        # counts only the database) are written in this very turn: a turn
        # more on each side is a good part of what their senders wait for.
        # What arrives while this commits makes the next batch.
        self.writer.flush()
        if self._done or self._failed:
            self.acknowledge()

    def _sync(self):
        """Flush the journal: its rows acknowledged once on disk (or, if the disk refused, once committed)."""
        unsynced, self._unsynced = self._unsynced, []
        on_disk = self.journal.sync()
        for waiter in unsynced:
            if on_disk:
                self._done.append(waiter.seq)
                waiter.synced()
            else:
                waiter.unsynced()

    def _journal_open(self):
        """Whether new rows are journaled: not while the writer is behind or the database is down."""
        writer = self.writer
        return writer.state == HEALTHY and writer.queue_depth() < self._journal_max

    def configure(self, options):
        from gateway.storage import db
        from gateway.storage.archive.spool import Spool
        from gateway.storage.archive.store import ArchiveStore
        from gateway.storage.archive.writer import InlineArchiveWriter

        # One writer per spool at a time: a writer still finishing for a
        # gateway that was killed holds the lock, and this one waits for it.
        os.makedirs(options["spool_dir"], exist_ok=True)
        self._lock = open(os.path.join(options["spool_dir"], "writer.lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.node = options.get("node", "")
        engine = db.create_engine(options["url"])
        journaled = options.get("journal", True)
        from gateway.compliance.writer import chained

        self.writer = InlineArchiveWriter(
            chained(ArchiveStore(engine, node=options.get("node", "")), options.get("chain") or {}, self.log),
            self.reactor,
            Spool(options["spool_dir"], max_bytes=options.get("spool_max_bytes", 0)),
            batch_size=options.get("batch_size", 500),
            # Journaled rows wait longer for company: nobody waits for their
            # commit, and fewer, larger transactions leave more of the two
            # cores to the path (at 5,000 msg/s here, about 1 ms off a
            # sender's wait against a 2 ms wait).
            batch_wait=max(options.get("batch_wait", 0.0), JOURNAL_WAIT if journaled else 0.0),
            queue_max=options.get("queue_max", 100_000),
            retry_interval=options.get("retry_interval", 2.0),
            log=self.log,
            metrics=self.stats,
        )
        self.writer.startService()
        if journaled:
            self._journal_max = max(1, options.get("queue_max", 100_000) // 2)
            self.journal = Journal(os.path.join(options["spool_dir"], "journal"), log=self.log)
            self._replay(self.journal.leftovers())
        self.acknowledge()  # tells the gateway the writer runs, and its state

    def _replay(self, segments):
        """Rows an earlier writer journaled: into the database (those already there are not doubled)."""
        rows = 0
        for segment in segments:
            items = self.journal.read(segment)
            segment.unsettled += len(items) + 1
            for seq, table, payload, strict in items:
                # Not acknowledged: their sequence numbers were an earlier gateway's.
                self.row(seq, table, payload, False, segment=segment, answer=False)
            rows += len(items)
            self.journal.settle(segment)  # the one added above: removed once its rows are
        if rows:
            self.log.info("replaying {rows} journaled archive rows", rows=rows)

    def row(self, seq, table, payload, strict, segment=None, answer=True):
        """
        Hand one row to the writer. Journaled (``segment``) and not
        ``strict``: acknowledged now; else once committed (or spooled,
        unless ``strict``). ``answer``: False for rows replayed from the
        journal, which no one waits for.
        """
        hurry = segment is None or strict or not answer
        # Journaled, not strict, and someone waits: answered when the
        # journal is flushed (`_sync`), the database's answer held till then.
        held = segment is not None and answer and not strict
        waiter = _Row(self, seq, segment, answer and not held, held)
        try:
            if table == "events":
                # The row straight from the plain values: no event objects made again.
                event, verdict, outcome, sid, rid, recorded = payload[:6]
                original, transforms = payload[6:] or (None, ())
                if outcome is not None:
                    outcome = (outcome[0],) + tuple(outcome[2:])
                row = row_from_fields(
                    wire_fields(event), verdict, outcome, sid, rid, recorded, self.node,
                    None if original is None else wire_fields(original), transforms,
                )
                self.writer.record_row(row, wait=waiter, strict=strict, hurry=hurry)
            elif table == "captures":
                self.writer.record_capture(*payload, wait=waiter, hurry=hurry)
            else:
                self.writer.record_delivery(*payload, wait=waiter, hurry=hurry)
        except Exception as e:
            if segment is not None:
                self.journal.settle(segment)  # it would fail the same way again
            if answer:
                self._failed.append((seq, f"archive writer could not read the row: {e}"))
                self.later()
            return
        if held:
            self._unsynced.append(waiter)

    def _ok(self, _, seq):
        self._done.append(seq)
        self.later()

    def _error(self, failure, seq):
        self._failed.append((seq, failure.getErrorMessage()))
        self.later()

    def later(self):
        """Acknowledge at the end of this turn: one message for all that finished in it."""
        if self._later is None:
            self._later = self.reactor.callLater(0, self.acknowledge)

    def acknowledge(self):
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        writer = self.writer
        stats = {
            "state": writer.state, "queue": writer.queue_depth(), "spooled": writer.spooled(),
            "spool_bytes": writer.spool_bytes(),
            "written": self.stats.written, "spooled_rows": self.stats.spooled_rows,
            "failures": self.stats.failures,
        } if writer is not None else None
        self.stats.reset()
        done, self._done = self._done, []
        failed, self._failed = self._failed, []
        self.send(("ack", done, failed, stats))

    def readConnectionLost(self):
        # The gateway closed our stdin: it is stopping (or gone). Write
        # everything, acknowledge it, and end.
        if self.writer is None:
            self.transport.loseConnection()
            return
        d = self.writer.stopService()
        if self.journal is not None:
            d.addBoth(lambda r: (self.journal.close(), r)[1])
        d.addBoth(lambda _: self.acknowledge())
        d.addBoth(lambda _: self.transport.loseConnection())

    def writeConnectionLost(self):
        self._end()

    def connectionLost(self, reason):
        self._end()

    def _end(self):
        if not self._ended:
            self._ended = True
            self.reactor.stop()


def main():
    # The gateway decides when this process ends (by closing its stdin); a
    # Ctrl-C at the terminal reaches the whole process group and must not
    # cut the writer short before it has written what it was given.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from twisted.internet import reactor

    stdio.StandardIO(ParentLink(reactor))
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
