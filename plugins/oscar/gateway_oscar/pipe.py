"""The logging proxy's byte streams: FLAP frames split off what a side sends, and each direction written in order."""

from __future__ import annotations

import collections

from gateway_oscar import codec

# The kinds of chunk an `OrderedPipe` writes.
_FRAME, _OWN, _RAW, _DROP, _PENDING = range(5)


class OrderedPipe:
    """
    Writes one direction of a relayed connection in order: a held slot (an
    IM waiting for the bus) blocks the chunks behind it until it is
    released. FLAP frames are renumbered as they are written: the source's
    sequence numbers are shifted so that a frame dropped from the stream or
    added by the proxy leaves the reader a gap-free sequence (the source's
    first frame continues from the proxy's own frames before it).
    """

    #: what a held slot counts for in ``held``: its frame is kept by the `Pending`
    SLOT_BYTES = 512

    def __init__(self, write, limit=1 << 20, pause=None, resume=None):
        self.write = write
        self.queue = collections.deque()
        self.last = None  # the last sequence number written
        self.delta = None  # added to the source's numbers; None until its first frame
        # Bytes waiting behind a held slot. Past ``limit`` the source is paused
        # (``pause()``), and resumed once half of it went out: a client that
        # sends faster than the path decides cannot make the proxy hold more.
        self.held = 0
        self.limit = limit
        self._pause, self._resume = pause, resume
        self.paused = False

    def push(self, data):
        """A whole FLAP frame from the source, as it came."""
        self._add([_FRAME, data])

    def push_raw(self, data):
        """Bytes that are not FLAP, passed on as they are."""
        self._add([_RAW, data])

    def push_own(self, channel, payload):
        """A frame the proxy adds: it gets the next number."""
        self._add([_OWN, (channel, payload)])

    def skip(self, data):
        """A frame from the source that is withheld."""
        self._add([_DROP, data])

    def _add(self, chunk):
        if self.queue:
            self._queue(chunk, len(chunk[1]) if chunk[0] != _OWN else len(chunk[1][1]) + 6)
        else:
            self._emit(chunk)

    def _queue(self, chunk, size):
        chunk.append(size)
        self.queue.append(chunk)
        self.held += size
        if self.held > self.limit and not self.paused and self._pause is not None:
            self.paused = True
            self._pause()

    def hold(self):
        slot = [_PENDING, None]
        self._queue(slot, self.SLOT_BYTES)
        return slot

    def release(self, slot, data):
        """Fill a held slot with a whole frame (numbered as the source numbered it)."""
        slot[0], slot[1] = _FRAME, data
        self._flush()

    def withhold(self, slot, data):
        """Drop the frame ``data`` a held slot stood for."""
        slot[0], slot[1] = _DROP, data
        self._flush()

    def replace(self, slot, data, channel, payload):
        """Drop the frame ``data`` a held slot stood for and put a frame of the proxy's in its place."""
        slot[0], slot[1] = _DROP, data
        self.queue.insert(self.queue.index(slot) + 1, [_OWN, (channel, payload), 0])
        self._flush()

    def _flush(self):
        while self.queue and self.queue[0][0] != _PENDING:
            chunk = self.queue.popleft()
            self.held -= chunk[2]
            self._emit(chunk)
        if self.paused and self.held <= self.limit // 2:
            self.paused = False
            self._resume()

    def _emit(self, chunk):
        kind, data = chunk[0], chunk[1]
        if kind == _FRAME:
            seq = int.from_bytes(data[2:4], "big")
            if self.delta is None:
                self.delta = 0 if self.last is None else (self.last + 1 - seq) & 0xFFFF
            self.last = out = (seq + self.delta) & 0xFFFF
            if out != seq:
                data = data[:2] + out.to_bytes(2, "big") + data[4:]
            self.write(data)
        elif kind == _OWN:
            channel, payload = data
            self.last = out = 1 if self.last is None else (self.last + 1) & 0xFFFF
            if self.delta is not None:
                self.delta = (self.delta + 1) & 0xFFFF
            self.write(codec.encode_flap(channel, out, payload))
        elif kind == _DROP:
            if self.delta is None:
                # The source's first frame is withheld: its successor takes the next number.
                seq = int.from_bytes(data[2:4], "big")
                self.delta = 0 if self.last is None else (self.last - seq) & 0xFFFF
            elif self.delta is not None:
                self.delta = (self.delta - 1) & 0xFFFF
        elif data:
            self.write(data)


class FrameSplitter:
    """FLAP frames with their exact bytes; after the first byte that is not FLAP, raw chunks."""

    def __init__(self):
        self.buffer = b""
        self.raw = False

    def feed(self, data):
        """``[(Flap or None, bytes), ...]``: None for raw bytes relayed as they are."""
        if self.raw:
            return [(None, data)]
        self.buffer += data
        out = []
        while len(self.buffer) >= 6:
            if self.buffer[0] != codec.FLAP_START:
                self.raw = True
                chunk, self.buffer = self.buffer, b""
                out.append((None, chunk))
                return out
            length = int.from_bytes(self.buffer[4:6], "big")
            if len(self.buffer) < 6 + length:
                break
            chunk, self.buffer = self.buffer[:6 + length], self.buffer[6 + length:]
            out.append((codec.Flap(chunk[1], int.from_bytes(chunk[2:4], "big"), chunk[6:]), chunk))
        if self.buffer and self.buffer[0] != codec.FLAP_START:
            self.raw = True
            chunk, self.buffer = self.buffer, b""
            out.append((None, chunk))
        return out
