"""The archive writer as a child process: rows go over a pipe, acknowledgements come back by sequence."""

from __future__ import annotations

import operator
import os
import pickle
import struct
import sys

import attrs
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import model
from gateway.storage.archive import ArchiveUnavailable
from gateway.storage.archive.store import capture_row, delivery_row, record_to_row
from gateway.interfaces import IArchive

__all__ = ["ArchiveProcess", "Frames", "frame", "encode_event", "decode_event"]

DEGRADED = "degraded"
HEALTHY = "healthy"
STARTING = "starting"

_LENGTH = struct.Struct("!I")
MAX_FRAME = 1 << 30


def frame(message) -> bytes:
    """One message as it crosses the pipe: its length, then its pickle."""
    data = pickle.dumps(message, protocol=5)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Splits a byte stream into the messages `frame` made."""

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data, raw=False):
        """
        The messages complete with ``data``, in order; with ``raw``, each
        as ``(message, its frame's bytes)``.
        """
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        while len(buffer) - offset >= 4:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            if len(buffer) - offset - 4 < size:
                break
            whole = bytes(buffer[offset:offset + 4 + size])
            message = pickle.loads(memoryview(whole)[4:])
            messages.append((message, whole) if raw else message)
            offset += 4 + size
        del buffer[:offset]
        return messages


# Events cross as (kind, field values) with addresses and enums as text:
# pickling the attrs values themselves costs 15 us each, this 2 us.
_FIELDS = {cls.kind: (cls, [f.name for f in attrs.fields(cls)]) for cls in model.EVENT_TYPES}


def _encoder(cls):
    """The wire form of one event class: its fields in order, addresses and enums as text."""
    names = [f.name for f in attrs.fields(cls)]
    get = operator.attrgetter(*names)
    kind = cls.kind
    # Which fields need converting: addresses (str) and enums (their value).
    special = [(i, name == "status") for i, name in enumerate(names) if name in ("sender", "recipient", "status")]

    def encode(event):
        values = list(get(event))
        for i, is_enum in special:
            value = values[i]
            if value is not None:
                values[i] = value.value if is_enum else str(value)
        return kind, tuple(values)

    return encode


_ENCODERS = {cls: _encoder(cls) for cls in model.EVENT_TYPES}


def encode_event(event) -> tuple:
    return _ENCODERS[event.__class__](event)


def wire_fields(wire) -> dict:
    """The event's `gateway.model.event_to_dict`, straight from its wire form."""
    kind, values = wire
    data = {"kind": kind}
    data.update(zip(_FIELDS[kind][1], values))
    return data


def decode_event(wire):
    kind, values = wire
    cls, names = _FIELDS[kind]
    return cls(**dict(zip(names, values)))


def _encode_outcome(outcome):
    if outcome is None:
        return None
    return (outcome.status.value, outcome.event_id, outcome.reason, outcome.rule, outcome.code)


def decode_outcome(wire):
    if wire is None:
        return None
    status, event_id, reason, rule, code = wire
    return model.Outcome(model.OutcomeStatus(status), event_id, reason, rule, code)


def decode_verdict(wire):
    return model.Verdict(*wire)


@implementer(IArchive)
class ArchiveProcess(service.Service):
    """
    `IArchive` with the SQL work in a child process (``python -m
    gateway.storage.archive.child``), so that the archive and the reactor run on
    two cores instead of sharing one interpreter lock.

    Every record gets a sequence number and waits, compact, in
    ``inflight`` until the child acknowledges it: fsync'd to the child's
    journal (`gateway.storage.archive.journal`), committed to the database, or
    spooled (fsync'd) by the child when the database cannot take it. A
    ``wait=True`` record's Deferred fires on that acknowledgement (``strict``: only the database counts). Rows of one
    reactor turn cross the pipe as one message. When the child dies it is
    started again and every unacknowledged row is sent again (the archive
    key is the event id, so nothing is doubled); rows still unacknowledged
    when the gateway stops are spooled here, for the next start to replay.
    Nothing acknowledged is ever only in memory.
    """

    name = "archive"
    log = Logger()

    def __init__(self, reactor, options, *, metrics=None, queue_max=100_000, restart_delay=0.5,
                 executable=None):
        self._reactor = reactor
        self._options = dict(options)  # url, node, spool_dir, batch_size, batch_wait, queue_max, retry_interval
        self._metrics = metrics
        self._queue_max = queue_max
        self._restart_delay = restart_delay
        self._executable = executable or sys.executable
        self._seq = 0
        self._outgoing = []
        self._flush_call = None
        self._inflight = {}  # seq -> (seq, table, payload, strict)
        self._waiters = {}  # seq -> Deferred
        self._link = None
        self._stopping = None
        self._restart_call = None
        self._child_stats = {"state": STARTING, "queue": 0, "spooled": 0, "spool_bytes": 0}
        self.restarts = 0

    # -- IArchive ------------------------------------------------------------------

    @property
    def state(self):
        if self._link is None or not self._link.ready:
            return DEGRADED if self.running else STARTING
        return self._child_stats["state"]

    @property
    def pid(self):
        """The writer process's id while it runs, else None."""
        link = self._link
        return None if link is None or link.transport is None else link.transport.pid

    def record(self, event, verdict, outcome=None, wait=False, strict=True, *,
               sender_identity=None, recipient_identity=None, original=None, transforms=()):
        payload = (
            encode_event(event), (verdict.allowed, verdict.reason, verdict.rule), _encode_outcome(outcome),
            sender_identity, recipient_identity, self._reactor.seconds(),
        )
        if transforms:
            payload += (encode_event(original), tuple(transforms))
        return self._add("events", payload, wait, strict)

    def record_delivery(self, event_id, status, where):
        self._add("deliveries", (event_id, getattr(status, "value", status), where, self._reactor.seconds()),
                  False, False)

    def record_capture(self, event_id, direction, network, data, notes=()):
        self._add("captures", (event_id, direction, network, bytes(data), tuple(notes), self._reactor.seconds()),
                  False, False)

    def behind(self):
        """True while ``queue_max`` rows or more wait for the writer: the path then holds back senders."""
        return len(self._inflight) >= self._queue_max

    def queue_depth(self):
        """Rows not yet acknowledged by the writer."""
        return len(self._inflight)

    def spooled(self):
        """Rows waiting in the spool for the database (as the writer last said)."""
        return self._child_stats["spooled"]

    def spool_bytes(self):
        """Bytes the spool's files take (as the writer last said)."""
        return self._child_stats["spool_bytes"]

    def _add(self, table, payload, wait, strict):
        self._seq += 1
        seq = self._seq
        item = (seq, table, payload, strict)
        waiter = None
        if wait:
            if strict and len(self._inflight) >= self._queue_max:
                # The writer is that far behind: a strict sender is refused now.
                waiter = defer.fail(ArchiveUnavailable("archive writer is behind"))
                strict = False
                item = (seq, table, payload, False)
            else:
                waiter = self._waiters[seq] = defer.Deferred()
        self._inflight[seq] = item
        self._outgoing.append(item)
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return waiter

    def _flush(self):
        self._flush_call = None
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self._link is not None and self._link.ready:
            self._link.send(("rows", outgoing))

    # -- acknowledgements ----------------------------------------------------------

    def _acknowledged(self, done, failed, stats):
        inflight, waiters = self._inflight, self._waiters
        for seq in done:
            inflight.pop(seq, None)
            waiter = waiters.pop(seq, None)
            if waiter is not None:
                waiter.callback(None)
        for seq, error in failed:
            inflight.pop(seq, None)
            waiter = waiters.pop(seq, None)
            if waiter is not None:
                waiter.errback(Failure(ArchiveUnavailable(error)))
        if stats:
            self._take_stats(stats)

    def _take_stats(self, stats):
        self._child_stats.update(state=stats["state"], queue=stats["queue"], spooled=stats["spooled"],
                                 spool_bytes=stats.get("spool_bytes", 0))
        metrics = self._metrics
        if metrics is None:
            return
        for rows, seconds in stats.get("written", ()):
            metrics.archive_written(rows, seconds)
        if stats.get("spooled_rows"):
            metrics.archive_spooled(stats["spooled_rows"])
        for _ in range(stats.get("failures", 0)):
            metrics.archive_failed()

    # -- the child -----------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self._spawn()

    def _spawn(self):
        self._restart_call = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
        link = _ChildLink(self)
        self._link = link
        # GATEWAY_WRITER_PROFILE=FILE: the writer runs under cProfile and leaves its stats in FILE (bench/).
        profile = os.environ.get("GATEWAY_WRITER_PROFILE")
        profiled = ["-m", "cProfile", "-o", profile] if profile else []
        self._reactor.spawnProcess(
            link, self._executable, [self._executable, *profiled, "-m", "gateway.storage.archive.child"], env=env,
        )

    def _child_started(self, link):
        link.send(("config", self._options))
        link.ready = True
        self._outgoing = []
        pending = sorted(self._inflight.values())
        for start in range(0, len(pending), 5000):
            link.send(("rows", pending[start:start + 5000]))
        if pending and self.restarts:
            self.log.info("archive writer: sent {rows} unacknowledged rows again", rows=len(pending))

    def _child_log(self, level, text):
        emit = getattr(self.log, level, self.log.info)
        emit("archive writer: {text}", text=text)

    def _child_ended(self, link, reason):
        if link is not self._link:
            return
        self._link = None
        if self._stopping is not None:
            stopping, self._stopping = self._stopping, None
            self._spool_leftovers()
            stopping.callback(None)
            return
        self.restarts += 1
        self.log.error(
            "archive writer process ended ({why}); {rows} rows unacknowledged; starting it again in {delay}s",
            why=reason.getErrorMessage(), rows=len(self._inflight), delay=self._restart_delay,
        )
        if self._metrics is not None:
            self._metrics.archive_failed()
        self._restart_call = self._reactor.callLater(self._restart_delay, self._spawn)

    def stopService(self):
        """Send what is queued, let the child write it and exit; a Deferred."""
        service.Service.stopService(self)
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush()
        if self._restart_call is not None:
            self._restart_call.cancel()
            self._restart_call = None
        if self._link is None:
            self._spool_leftovers()
            return defer.succeed(None)
        self._stopping = defer.Deferred()
        link = self._link
        link.transport.closeStdin()
        killer = self._reactor.callLater(120, lambda: link.transport.signalProcess("KILL"))
        self._stopping.addBoth(lambda r: (killer.active() and killer.cancel(), r)[1])
        return self._stopping

    def _spool_leftovers(self):
        """Rows the child never acknowledged go to the spool, for the next start to replay."""
        if not self._inflight:
            return
        from gateway.storage.archive.spool import Spool

        lines = []
        node = self._options.get("node", "")
        for _, table, payload, _strict in sorted(self._inflight.values()):
            if table == "events":
                event, verdict, outcome, sid, rid, recorded = payload[:6]
                original, transforms = payload[6:] or (None, ())
                row = record_to_row(decode_event(event), decode_verdict(verdict), decode_outcome(outcome),
                                    sid, rid, recorded, node=node,
                                    original=None if original is None else decode_event(original),
                                    transforms=transforms)
            elif table == "captures":
                row = capture_row(*payload)
            else:
                row = delivery_row(*payload)
            lines.append({"table": table, "row": row})
        try:
            spool = Spool(self._options["spool_dir"])
            spool.append(lines)
            spool.close()
        except OSError as e:
            self.log.critical("archive rows lost: cannot write the spool: {error}; event ids {ids}", error=str(e),
                              ids=[line["row"].get("id") or line["row"].get("event_id") for line in lines])
            return
        self.log.warn("archive writer stopped with {rows} rows unacknowledged: spooled for the next start",
                      rows=len(lines))
        for waiter in self._waiters.values():
            waiter.callback(None)
        self._waiters.clear()
        self._inflight.clear()


class _ChildLink(protocol.ProcessProtocol):
    """The pipe to one archive writer process."""

    def __init__(self, owner):
        self.owner = owner
        self.frames = Frames()
        self.ready = False
        self._err = b""

    def connectionMade(self):
        self.owner._child_started(self)

    def send(self, message):
        self.transport.write(frame(message))
        # Out now, not at the reactor's next poll: a durable sender waits for
        # this round trip, and the turn in between may be a long one. What
        # the pipe cannot take stays buffered, in order, for the reactor.
        pipe = getattr(self.transport, "pipes", {}).get(0)
        if pipe is not None:
            pipe.doWrite()

    def outReceived(self, data):
        try:
            messages = self.frames.feed(data)
        except Exception:
            self.owner.log.failure("archive writer sent garbage; stopping it")
            self.transport.signalProcess("KILL")
            return
        for message in messages:
            if message[0] == "ack":
                self.owner._acknowledged(*message[1:])
            elif message[0] == "log":
                self.owner._child_log(message[1], message[2])

    def errReceived(self, data):
        # Anything the child prints itself (a traceback before its log was set up).
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                self.owner._child_log("warn", line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.owner._child_ended(self, reason)
