"""A durable local spool for archive rows the database could not take."""

import json
import os
import re
import threading

from twisted.logger import Logger

__all__ = ["Spool", "SpoolFull"]


class SpoolFull(OSError):
    """The spool holds ``max_bytes`` already: the rows were not written."""

_SEGMENT = re.compile(r"^segment-(\d{12})\.jsonl$")


class Spool:
    """
    Append-only segment files of JSON lines in ``directory``.

    `append` returns only when the rows are on disk (``fsync``). To replay,
    take `segments` (oldest first; taking them seals the segment being
    written, so later appends go to a new one), `read` each, write its rows
    elsewhere, then `discard` it. A line torn by a crash is skipped with a
    log line; every complete line is kept. Safe to use from several threads.

    Bounded: once the segments take ``max_bytes`` (0: no bound), `append`
    raises `SpoolFull` and writes nothing, so a database that stays down
    cannot fill the disk; the writer then refuses what it cannot keep (in
    the durable mode, events are not delivered).
    """

    log = Logger()

    def __init__(self, directory, segment_rows=10_000, max_bytes=0):
        self.directory = os.fspath(directory)
        self._segment_rows = segment_rows
        self.max_bytes = max_bytes
        self._sizes = {}
        self._lock = threading.Lock()
        self._file = None
        self._path = None
        os.makedirs(self.directory, exist_ok=True)
        self._counts = {}
        sequence = 0
        for name in sorted(os.listdir(self.directory)):
            match = _SEGMENT.match(name)
            if match:
                path = os.path.join(self.directory, name)
                self._counts[path] = len(self._load(path, quiet=True))
                self._sizes[path] = os.path.getsize(path)
                sequence = int(match.group(1))
        self._next = sequence + 1

    def append(self, rows):
        """Write ``rows`` (JSON-able values) and fsync before returning."""
        data = b"".join(
            json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for row in rows
        )
        if not data:
            return
        with self._lock:
            if self.max_bytes and sum(self._sizes.values()) + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool in {self.directory} is full ({self.max_bytes} bytes): "
                                f"{len(rows)} rows not written")
            if self._file is None or self._counts[self._path] >= self._segment_rows:
                self._open_segment()
            try:
                self._file.write(data)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                # Whatever reached the file must not be followed by more lines.
                path = self._path
                self._seal()
                self._counts[path] = len(self._load(path, quiet=True))
                self._sizes[path] = os.path.getsize(path)
                raise
            self._counts[self._path] += data.count(b"\n")
            self._sizes[self._path] += len(data)

    def segments(self):
        """The segment paths, oldest first; the one being written is sealed first."""
        with self._lock:
            self._seal()
            return sorted(self._counts)

    def read(self, segment):
        """The rows of ``segment``, skipping (and logging) a torn or corrupt line."""
        return self._load(segment)

    def discard(self, segment):
        """Delete ``segment``, once its rows are safe elsewhere."""
        with self._lock:
            if segment == self._path:
                self._seal()
            os.remove(segment)
            self._counts.pop(segment, None)
            self._sizes.pop(segment, None)
            self._sync_directory()

    def pending(self):
        """How many rows the spool holds."""
        with self._lock:
            return sum(self._counts.values())

    def size(self):
        """Bytes the spool's segments take."""
        with self._lock:
            return sum(self._sizes.values())

    def close(self):
        """Close the segment being written (the next `append` starts a new one)."""
        with self._lock:
            self._seal()

    def _open_segment(self):
        self._seal()
        path = os.path.join(self.directory, f"segment-{self._next:012d}.jsonl")
        self._next += 1
        self._file = open(path, "xb")
        self._path = path
        self._counts[path] = 0
        self._sizes[path] = 0
        self._sync_directory()

    def _seal(self):
        if self._file is not None:
            self._file.close()
            self._file = None
            self._path = None

    def _sync_directory(self):
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load(self, path, quiet=False):
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        rows = []
        last = len(lines) - 1
        for number, line in enumerate(lines):
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if not quiet:
                    self.log.warn(
                        "spool {segment}: skipped a {what} line {number} "
                        "({size} bytes)",
                        segment=path,
                        what="torn last" if number == last else "corrupt",
                        number=number + 1,
                        size=len(line),
                    )
        return rows
