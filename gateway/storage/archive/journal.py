"""
The archive writer's journal: rows fsync'd as they arrived, before the SQL.

The writer process appends each batch of rows it receives, exactly as the
frames came over the pipe, to a segment file and flushes it to disk
(``fdatasync``); from then on the rows survive a crash of either process
or of the machine, and the writer acknowledges them (one disk flush, about
0.2 ms here, shared by what arrived meanwhile) instead of after their SQL
commit (a millisecond or more per batch, and the wait for the batch before
it). The rows are committed to the database in the writer's own time, a
few milliseconds later, in larger transactions. A segment is removed once every row in it is committed (or
spooled); whatever a crash leaves is replayed into the database at the
next start (the event id is the key, so a row already committed is not
doubled).

The files hold pickles, as the pipe does: they are written and read only
by the writer process, in a directory of the gateway's own (mode 0700).
"""

from __future__ import annotations

import os
import pickle
import re

from twisted.logger import Logger

from gateway.storage.archive.process import _LENGTH  # the length before each frame

__all__ = ["Journal", "Segment"]

_NAME = re.compile(r"^journal-(\d{12})\.frames$")


class Segment:
    """One journal file and the rows in it not yet written to the database."""

    __slots__ = ("path", "size", "unsettled", "sealed", "kept")

    def __init__(self, path, size=0):
        self.path = path
        self.size = size
        self.unsettled = 0
        self.sealed = False
        self.kept = False  # a row in it could not be written: the next start tries again


class Journal:
    """
    Segment files ``journal-NNNNNNNNNNNN.frames`` in ``directory``.

    `write` adds frames and `sync` puts what was written on disk (`append`
    does both); each row in them is later settled (`settle`), and a sealed
    segment whose rows are all settled is removed. A new segment starts
    once the current one holds ``segment_bytes``. `leftovers` lists, oldest first, the segments an
    earlier run left, for the writer to replay before it takes new rows.
    """

    def __init__(self, directory, segment_bytes=16 << 20, log=None):
        self.log = log if log is not None else Logger(source=self)
        self.directory = os.fspath(directory)
        self.segment_bytes = segment_bytes
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._fd = None
        self._current = None
        self._dirty = False
        numbers = [int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m]
        self._next = max(numbers, default=0) + 1
        self._left = [os.path.join(self.directory, f"journal-{n:012d}.frames") for n in sorted(numbers)]

    def leftovers(self):
        """Segments an earlier run left (oldest first): `Segment`, sealed, to replay and `settle`."""
        left, self._left = self._left, []
        segments = []
        for path in left:
            segment = Segment(path, os.path.getsize(path))
            segment.sealed = True
            segments.append(segment)
        return segments

    def write(self, chunks, rows):
        """
        Write ``chunks`` (bytes) holding ``rows`` rows, not yet flushed to
        disk (`sync` does that, for everything written since the last): the
        `Segment` they are in, or None when the disk refused them (nothing
        then counts as journaled; the caller falls back to the database).
        """
        if self._current is None or self._current.size >= self.segment_bytes:
            if self._dirty and not self.sync():
                return None
            if not self._open():
                return None
        segment = self._current
        data = b"".join(chunks)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as e:
            self._failed(segment, e)
            return None
        self._dirty = True
        segment.size += len(data)
        segment.unsettled += rows
        return segment

    def sync(self):
        """
        Flush what was written since the last call to disk (``fdatasync``):
        True once it is there, False when it is not (the disk refused it).
        """
        if not self._dirty:
            return True
        self._dirty = False
        if self._fd is None:
            return False  # a write failed since: the file was given up
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            self._failed(self._current, e)
            return False
        return True

    def append(self, chunks, rows):
        """`write`, then `sync`: the `Segment`, on disk, or None."""
        segment = self.write(chunks, rows)
        return segment if segment is not None and self.sync() else None

    def _failed(self, segment, error):
        self.log.error("archive journal: cannot write {path}: {error}; rows go straight to the database",
                       path=segment.path, error=str(error))
        # What reached the file may be torn: nothing more goes after it.
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._seal()

    def settle(self, segment, kept=False):
        """One row of ``segment`` is in the database or the spool (``kept``: neither; keep the file)."""
        segment.unsettled -= 1
        if kept:
            segment.kept = True
        if segment.unsettled == 0 and segment.sealed:
            self._remove(segment)

    def close(self):
        """Flush and seal the current segment (removed if every row in it is settled)."""
        self.sync()
        self._seal()

    def _open(self):
        self._seal()
        path = os.path.join(self.directory, f"journal-{self._next:012d}.frames")
        self._next += 1
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            # The new name must survive a crash too, or its rows would not be found.
            dirfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as e:
            self.log.error("archive journal: cannot start {path}: {error}", path=path, error=str(e))
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return False
        self._current = Segment(path)
        return True

    def _seal(self):
        segment, self._current = self._current, None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if segment is not None:
            segment.sealed = True
            if segment.unsettled == 0:
                self._remove(segment)

    def _remove(self, segment):
        if segment.kept:
            if not os.path.exists(segment.path):
                return  # set aside as damaged (see read)
            self.log.warn("archive journal: keeping {path}: rows in it could not be written; "
                          "the next start replays them", path=segment.path)
            return
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn("archive journal: cannot remove {path}: {error}", path=segment.path, error=str(e))

    def read(self, segment):
        """
        The ``rows`` messages' items in ``segment``, in order. A frame torn by a
        crash at the end is left out (its rows were never acknowledged); a
        segment that cannot be read is renamed ``*.bad`` for an operator, with
        a critical log line, and what came before the damage is returned.
        """
        items = []
        try:
            with open(segment.path, "rb") as f:
                data = f.read()
            offset = 0
            while len(data) - offset >= 4:
                (size,) = _LENGTH.unpack_from(data, offset)
                if len(data) - offset - 4 < size:
                    break  # torn by a crash: never acknowledged
                message = pickle.loads(memoryview(data)[offset + 4:offset + 4 + size])
                offset += 4 + size
                if message[0] == "rows":
                    items.extend(message[1])
        except Exception as e:
            bad = segment.path + ".bad"
            self.log.critical(
                "archive journal: {path} is damaged ({error}); {rows} rows before the damage are replayed, "
                "the file is kept as {bad}", path=segment.path, error=str(e), rows=len(items), bad=bad,
            )
            try:
                os.replace(segment.path, bad)
            except OSError:
                pass
            segment.kept = True
        return items
