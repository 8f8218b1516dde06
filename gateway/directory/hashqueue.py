"""A bounded queue of password checks, served round-robin by source address."""

from __future__ import annotations

import collections

from twisted.internet.defer import Deferred, fail, maybeDeferred

from gateway.interfaces import LoginThrottled


class HashQueue:
    """
    Password checks (scrypt: tens of milliseconds of CPU each), at most
    ``concurrency`` at a time, taken from the waiting source addresses in
    turn: the next check is for the waiting address whose last check
    started longest ago (one with none running or waiting since is new, and
    goes first; new ones in the order they came). Busy addresses are served
    round-robin, a flood from one address waits behind itself, and someone
    logging in from another address waits only for the checks running and
    one per other new address ahead of them. Within one address, first
    come, first served.

    Bounded: at most ``per_source`` checks wait per source and ``total`` in
    all; one more is refused at once with `LoginThrottled`, before anything
    is hashed or looked up, so a flood costs neither memory nor CPU.

    ``concurrency`` matches the thread the checks run in (one
    `gateway.storage.dbthread.DatabaseThread` runs one call at a time): starting
    more would only queue them again there, first come, first served.
    """

    def __init__(self, concurrency=1, per_source=4, total=256):
        self.concurrency = concurrency
        self.per_source = per_source
        self.total = total
        self._waiting = {}  # source -> deque of (job, Deferred), sources in the order they came
        self._last = {}  # source with checks running or waiting -> number of its last check started
        self._active = collections.Counter()  # source -> checks running
        self._started = 0
        self._count = 0
        self._running = 0
        self._starting = False  # in _next: a check that finishes at once does not recurse into it

    def depth(self) -> int:
        """How many checks wait (not counting those running)."""
        return self._count

    def running(self) -> int:
        """How many checks run now."""
        return self._running

    def waiting(self, source) -> int:
        """How many checks wait for ``source``."""
        queue = self._waiting.get(source or "")
        return 0 if queue is None else len(queue)

    def run(self, source, job) -> Deferred:
        """
        A Deferred of ``job()`` (which may return a Deferred) once its turn
        comes; fails at once with `LoginThrottled` (and ``job`` is never
        called) when ``source`` or the whole queue is full.
        """
        source = source or ""
        queue = self._waiting.get(source)
        if queue is not None and len(queue) >= self.per_source:
            return fail(LoginThrottled("too many logins from this address waiting to be checked; try again later"))
        if self._count >= self.total:
            return fail(LoginThrottled("too many logins waiting to be checked; try again later"))
        if queue is None:
            queue = self._waiting[source] = collections.deque()
        done = Deferred()
        queue.append((job, done))
        self._count += 1
        self._next()
        return done

    def _next(self):
        if self._starting:
            return
        self._starting = True
        try:
            while self._running < self.concurrency and self._waiting:
                last = self._last
                source = min(self._waiting, key=lambda s: last.get(s, -1))
                queue = self._waiting[source]
                job, done = queue.popleft()
                self._count -= 1
                if not queue:
                    del self._waiting[source]
                self._started += 1
                last[source] = self._started
                self._active[source] += 1
                self._running += 1
                maybeDeferred(job).addBoth(self._finished, source).chainDeferred(done)
        finally:
            self._starting = False

    def _finished(self, result, source):
        self._running -= 1
        self._active[source] -= 1
        if not self._active[source]:
            del self._active[source]
            if source not in self._waiting:
                del self._last[source]  # nothing left of it: it is new again
        self._next()
        return result
