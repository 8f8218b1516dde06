"""SIP transactions (RFC 3261 section 17): non-INVITE client and server, INVITE server for refusals; timers on an injected clock."""

from __future__ import annotations

import collections
import os

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway_sip.codec import MAGIC_COOKIE, Request, Response, SipError

T1 = 0.5
T2 = 4.0
T4 = 5.0


class TransactionTimeout(Exception):
    """Timer F fired: no final response (the caller treats it as 408)."""


class TransportGone(Exception):
    """The flow a transaction used is closed."""


class RandomHex:
    """
    Unpredictable hex strings (branches, tags, Call-IDs) from a pool of
    ``os.urandom`` bytes, so that one system call serves hundreds of them.
    """

    __slots__ = ("_pool", "_used", "size")

    def __init__(self, size=4096):
        self.size = size
        self._pool = b""
        self._used = 0

    def take(self, nbytes: int) -> str:
        used = self._used
        if used + nbytes > len(self._pool):
            self._pool, used = os.urandom(max(self.size, nbytes)), 0
        self._used = used + nbytes
        return self._pool[used:used + nbytes].hex()


def new_branch(random=None) -> str:
    return MAGIC_COOKIE + (random.take(10) if random is not None else os.urandom(10).hex())


def server_key(request: Request, source=()) -> tuple:
    """
    RFC 3261 17.2.3: branch + sent-by + method (ACK matches INVITE), RFC
    2543 fallback otherwise; plus the source flow, so that a copy from
    elsewhere never takes over (or is answered from) someone's transaction.
    """
    via = request.top_via()
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, via.sent_by, method, source)
    from_tag = request.headers.get("from", "")
    number, _ = request.cseq()
    return ("2543", request.call_id, number, from_tag, str(via), method, source)


_FIRING = object()  # Deadlines._timer while its callbacks run


class Deadlines:
    """
    Keys due a fixed ``delay`` after they were added, handed to one
    ``callback`` then, on one timer. With one delay for all, the order they
    were added in is the order they fall due, so adding and discarding cost
    O(1) and the clock holds one call, not one per transaction (timers J,
    K, F and the first E of every transaction would otherwise each be a
    DelayedCall); an entry is a key and a float, nothing else to collect.
    """

    __slots__ = ("clock", "delay", "callback", "_due", "_timer")

    def __init__(self, clock, delay, callback):
        self.clock = clock
        self.delay = delay
        self.callback = callback
        self._due = collections.OrderedDict()  # key -> when, earliest first
        self._timer = None

    def add(self, key) -> None:
        """``callback(key)`` ``delay`` seconds from now, unless ``key`` is discarded first (keys are unique)."""
        self._due[key] = self.clock.seconds() + self.delay
        if self._timer is None:
            self._timer = self.clock.callLater(self.delay, self._fire)

    def discard(self, key) -> None:
        if self._due.pop(key, None) is not None and not self._due and self._timer not in (None, _FIRING):
            self._timer.cancel()  # nothing left to wait for: leave the clock empty
            self._timer = None

    def __len__(self):
        return len(self._due)

    def _fire(self):
        # While callbacks run (they may add keys), no second clock call is made: the loop sees them.
        self._timer = _FIRING
        due, callback = self._due, self.callback
        try:
            while due:
                key = next(iter(due))
                now = self.clock.seconds()
                when = due[key]
                if when > now + 1e-9:
                    self._timer = self.clock.callLater(when - now, self._fire)
                    return
                del due[key]
                callback(key)
        finally:
            if self._timer is _FIRING:
                self._timer = None
                if due:  # a callback raised: the rest still falls due
                    self._timer = self.clock.callLater(max(0.0, due[next(iter(due))] - self.clock.seconds()),
                                                       self._fire)

    def clear(self):
        self._due.clear()
        if self._timer not in (None, _FIRING) and self._timer.active():
            self._timer.cancel()
        self._timer = None


# What stands for a client transaction that got its final response over UDP: Timer K only has to
# absorb copies of that response, which needs nothing of the transaction but its key.
_ANSWERED = object()


class ServerTransaction:
    """
    One request we answer. `respond` sends a response over the request's
    flow and keeps its bytes to answer retransmissions; Timer J (or, for a
    refused INVITE, Timers G/H/I) decides when the transaction is forgotten.
    Once answered it lets go of the request, and over UDP the layer keeps
    just the bytes of the final response for Timer J: thousands of them wait
    it out at once, and each should cost little memory and collector time.
    """

    __slots__ = ("layer", "key", "request", "flow", "state", "last", "invite", "_timers", "_g_interval")

    def __init__(self, layer, key, request, flow):
        self.layer = layer
        self.key = key
        self.request = request
        self.flow = flow
        self.state = "trying"
        self.last = None  # bytes of the last response
        self.invite = request.method == "INVITE"
        self._timers = None
        self._g_interval = layer.t1

    def respond(self, response: Response) -> None:
        if self.state in ("completed", "confirmed", "terminated"):
            return
        self.last = response.to_bytes()
        self._send(self.last)
        if response.status < 200:
            self.state = "proceeding"
            return
        if self.state == "terminated":
            return  # the flow is gone
        self.state = "completed"
        self.request = None
        if self.invite:
            clock = self.layer.clock
            if response.status < 300:
                self._terminate()  # a 2xx to INVITE is the TU's business; we never send one
                return
            self._timers = []
            if not self.flow.reliable:
                self._timers.append(clock.callLater(self._g_interval, self._timer_g))
            self._timers.append(clock.callLater(64 * self.layer.t1, self._terminate))  # Timer H
        elif self.flow.reliable:
            self._terminate()  # Timer J = 0
        elif self.key is not None and self.layer.server.get(self.key) is self:
            # Timer J = 64*T1. Until then a copy of the request (which comes over this same flow:
            # the flow is part of the key) needs nothing but these bytes again.
            self.layer.server[self.key] = self.last
            self.layer.timer_j.add(self.key)

    def _send(self, data):
        try:
            self.flow.send(data)
        except TransportGone:
            self.layer.log.info("response not sent: {flow} is closed", flow=str(self.flow))
            self._terminate()

    def retransmission(self, request: Request) -> None:
        """The same request again: answer with the last response (if any)."""
        if request.method == "ACK":
            if self.invite and self.state == "completed":
                self.state = "confirmed"
                self._cancel()
                delay = 0 if self.flow.reliable else self.layer.t4  # Timer I
                self._timers = [self.layer.clock.callLater(delay, self._terminate)]
            return
        if self.last is not None and self.state in ("proceeding", "completed"):
            self._send(self.last)

    def _timer_g(self):
        if self.state != "completed":
            return
        self._send(self.last)
        self._g_interval = min(2 * self._g_interval, self.layer.t2)
        self._timers.append(self.layer.clock.callLater(self._g_interval, self._timer_g))

    def _cancel(self):
        if self._timers:
            for timer in self._timers:
                if timer.active():
                    timer.cancel()
        self._timers = None

    def _terminate(self):
        self._cancel()
        self.state = "terminated"
        layer = self.layer
        if layer.server.get(self.key) is self:
            del layer.server[self.key]
            layer.timer_j.discard(self.key)


class ClientTransaction:
    """
    One non-INVITE request we send. ``deferred`` fires with the final
    response, or fails with `TransactionTimeout` (Timer F) or `TransportGone`.
    Timer E retransmits over unreliable flows; Timer K absorbs late copies.
    """

    __slots__ = ("layer", "method", "flow", "key", "state", "deferred", "_data", "_interval", "_timer_e")

    def __init__(self, layer, request: Request, flow, branch=None):
        self.layer = layer
        self.method = request.method
        self.flow = flow
        self.key = (branch or request.top_via().branch, request.method)
        self.state = "trying"
        self.deferred = Deferred()
        self._data = request.to_bytes()
        self._interval = layer.t1
        self._timer_e = None  # a DelayedCall once Timer E went off once (the first one is in layer.timer_e)

    def start(self):
        if not self._send() or self.state != "trying":
            return  # failed, or answered already (a synchronous transport in tests)
        layer = self.layer
        if not self.flow.reliable:
            layer.timer_e.add(self)
        layer.timer_f.add(self)

    def _send(self) -> bool:
        try:
            self.flow.send(self._data)
        except TransportGone as e:
            self._finish()
            self.deferred.errback(e)
            return False
        return True

    def _retransmit(self):
        self._timer_e = None
        if self.state not in ("trying", "proceeding"):
            return
        if not self._send():
            return
        if self.state == "trying":
            self._interval = min(2 * self._interval, self.layer.t2)
        else:
            self._interval = self.layer.t2
        self._timer_e = self.layer.clock.callLater(self._interval, self._retransmit)

    def _timeout(self):
        if self.state in ("trying", "proceeding"):
            self._finish()
            self.deferred.errback(TransactionTimeout(f"no final response to {self.method} within {64 * self.layer.t1:g}s"))

    def received(self, response: Response) -> None:
        if self.state not in ("trying", "proceeding"):
            return  # a retransmitted final response, absorbed in Completed
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        self._finish()
        if not self.flow.reliable:
            layer = self.layer
            layer.client[self.key] = _ANSWERED  # Timer K absorbs copies of the response
            layer.timer_k.add(self.key)
        deferred, self.deferred = self.deferred, None
        deferred.callback(response)

    def _stop_retransmitting(self):
        self.layer.timer_e.discard(self)
        if self._timer_e is not None:
            if self._timer_e.active():
                self._timer_e.cancel()
            self._timer_e = None

    def _finish(self):
        self._stop_retransmitting()
        layer = self.layer
        layer.timer_f.discard(self)
        if self.state != "completed":
            self.state = "terminated"
        if layer.client.get(self.key) is self:
            del layer.client[self.key]

    def flow_lost(self):
        if self.state in ("trying", "proceeding"):
            self._finish()
            self.deferred.errback(TransportGone(f"{self.flow} closed"))


class TransactionLayer:
    """Matches requests and responses to transactions; owns their timers."""

    log = Logger()

    def __init__(self, clock, t1=T1, t2=T2, t4=T4):
        self.clock = clock
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.server = {}
        self.client = {}
        self.random = RandomHex()
        # One clock call per kind of timer whose delay is always the same.
        self.timer_j = Deadlines(clock, 64 * t1, self._timer_j)
        self.timer_e = Deadlines(clock, t1, ClientTransaction._retransmit)  # the first; the later ones vary
        self.timer_f = Deadlines(clock, 64 * t1, ClientTransaction._timeout)
        self.timer_k = Deadlines(clock, t4, self._timer_k)

    def _timer_j(self, key):
        if self.server.get(key).__class__ is bytes:
            del self.server[key]

    def _timer_k(self, key):
        if self.client.get(key) is _ANSWERED:
            del self.client[key]

    def receive_request(self, request: Request, flow):
        """
        A new `ServerTransaction` for the transaction user, or None when the
        request was a retransmission (answered here) or an ACK (absorbed).
        """
        try:
            key = server_key(request, flow.key)
        except SipError:
            return ServerTransaction(self, None, request, flow)
        existing = self.server.get(key)
        if existing is not None:
            if existing.__class__ is bytes:  # answered, waiting out Timer J: answer again
                if request.method != "ACK":
                    try:
                        flow.send(existing)
                    except TransportGone:
                        pass
                return None
            existing.retransmission(request)
            return None
        if request.method == "ACK":
            return None  # an ACK for a transaction we no longer hold, or for a 2xx: nothing to do
        transaction = ServerTransaction(self, key, request, flow)
        self.server[key] = transaction
        return transaction

    def receive_response(self, response: Response) -> bool:
        """Hand a response to its client transaction; False when none matches."""
        try:
            via = response.top_via()
            _, method = response.cseq()
        except SipError:
            return False
        transaction = self.client.get((via.branch, method))
        if transaction is None:
            return False
        if transaction is not _ANSWERED:
            transaction.received(response)
        return True

    def new_branch(self) -> str:
        return new_branch(self.random)

    def request(self, request: Request, flow, branch=None) -> Deferred:
        """
        Send ``request`` (its top Via carries a fresh branch: pass it as
        ``branch`` when known, which spares parsing it back) in a new client
        transaction.
        """
        transaction = ClientTransaction(self, request, flow, branch)
        self.client[transaction.key] = transaction
        deferred = transaction.deferred  # (it may fire within start, with a synchronous transport)
        transaction.start()
        return deferred

    def flow_lost(self, flow):
        for transaction in [t for t in self.client.values() if t is not _ANSWERED and t.flow is flow]:
            transaction.flow_lost()
        for transaction in [t for t in self.server.values() if t.__class__ is not bytes and t.flow is flow]:
            transaction._terminate()

    def stop(self):
        """Cancel every timer (service stop); pending client requests fail."""
        for transaction in [t for t in self.client.values() if t is not _ANSWERED]:
            deferred = transaction.deferred
            transaction._finish()
            if deferred is not None and not deferred.called:
                deferred.errback(TransportGone("stopping"))
        self.client.clear()
        for transaction in [t for t in self.server.values() if t.__class__ is not bytes]:
            transaction._terminate()
        self.server.clear()
        for deadlines in (self.timer_j, self.timer_e, self.timer_f, self.timer_k):
            deadlines.clear()
