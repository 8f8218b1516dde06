"""Login throttling that protects users: per account and address, per address, and a fair queue of password checks."""

from __future__ import annotations

import collections

from twisted.internet.defer import Deferred, fail, maybeDeferred

from gateway.cache import TTLCache
from gateway.interfaces import LoginThrottled


class LoginThrottle:
    """
    Counts failed logins, each failure keeping its counts for another
    ``window`` seconds; a key at its limit is refused until ``window``
    seconds pass without a failure. The keys, all checked before any
    password is looked at:

    - the account *from that address* (``limit``, 5): guessing one
      person's password from one place stops there, while that person logs
      in from anywhere else as usual. An attacker cannot lock a user out.
    - the address (``per_source``, 100): one place guessing many accounts
      (or sending garbage) stops, while the many honest users a NAT puts
      behind one address still have room.
    - the account from everywhere (``per_account``; 0, the default, for no
      such limit): a ceiling against guessing one account from many
      addresses, at the price that reaching it locks that account out
      everywhere for the window. Off unless configured.

    Bounded: at most ``maxsize`` keys are remembered.
    """

    def __init__(self, clock, limit=5, window=300.0, per_source=100, per_account=0, maxsize=100_000):
        self.limit = limit
        self.per_source = per_source
        self.per_account = per_account
        self._failures = TTLCache(clock, maxsize, window)

    def _keys(self, address, source):
        account = str(address)
        keys = [(("pair", account, source or ""), self.limit)]
        if source:
            keys.append((("source", source), self.per_source))
        if self.per_account:
            keys.append((("account", account), self.per_account))
        return keys

    def allowed(self, address, source=None) -> bool:
        for key, limit in self._keys(address, source):
            if limit and self._failures.get(key, 0) >= limit:
                return False
        return True

    def failed(self, address, source=None) -> None:
        for key, _ in self._keys(address, source):
            self._failures.put(key, self._failures.get(key, 0) + 1)

    def succeeded(self, address, source=None) -> None:
        self._failures.invalidate(("pair", str(address), source or ""))


class FairQueue:
    """
    Password checks, at most ``concurrency`` at a time, served fairly by
    source address: the next check is for the waiting address that has had
    the fewest served (oldest first among equals), so a flood from one
    address waits behind itself and someone logging in from another address
    is served next. At most
    ``per_source`` checks wait per address and ``total`` in all; more are
    refused at once with `LoginThrottled`, so a flood costs no memory and
    no hashing.
    """

    def __init__(self, concurrency=1, per_source=4, total=256):
        self.concurrency = concurrency
        self.per_source = per_source
        self.total = total
        self._waiting = collections.OrderedDict()  # source -> deque of (job, Deferred)
        self._served = {}  # source -> checks started for it since it last had none waiting or running
        self._active = collections.Counter()  # source -> checks running
        self._count = 0
        self._running = 0

    def depth(self) -> int:
        """How many checks wait (not counting those running)."""
        return self._count

    def run(self, source, job) -> Deferred:
        """A Deferred of ``job()`` (which may return a Deferred), when its turn comes."""
        source = source or ""
        queue = self._waiting.get(source)
        if self._count >= self.total or (queue is not None and len(queue) >= self.per_source):
            return fail(LoginThrottled("too many logins waiting to be checked; try again later"))
        if queue is None:
            queue = self._waiting[source] = collections.deque()
        done = Deferred()
        queue.append((job, done))
        self._count += 1
        self._next()
        return done

    def _next(self):
        while self._running < self.concurrency and self._waiting:
            served = self._served
            source = min(self._waiting, key=lambda s: served.get(s, 0))
            queue = self._waiting[source]
            job, done = queue.popleft()
            self._count -= 1
            if not queue:
                del self._waiting[source]
            served[source] = served.get(source, 0) + 1
            self._active[source] += 1
            self._running += 1
            maybeDeferred(job).addBoth(self._finished, source).chainDeferred(done)

    def _finished(self, result, source):
        self._running -= 1
        self._active[source] -= 1
        if not self._active[source]:
            del self._active[source]
            if source not in self._waiting:
                self._served.pop(source, None)
        self._next()
        return result
