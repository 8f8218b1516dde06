"""SIP transactions (RFC 3261 section 17): non-INVITE client and server, INVITE server for refusals; timers on an injected clock."""

from __future__ import annotations

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


def new_branch() -> str:
    return MAGIC_COOKIE + os.urandom(10).hex()


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


class ServerTransaction:
    """
    One request we answer. `respond` sends a response over the request's
    flow and keeps it to answer retransmissions; Timer J (or, for a refused
    INVITE, Timers G/H/I) decides when the transaction is forgotten.
    """

    def __init__(self, layer, key, request, flow):
        self.layer = layer
        self.key = key
        self.request = request
        self.flow = flow
        self.state = "trying"
        self.last = None  # bytes of the last response
        self._timers = []
        self._g_interval = layer.t1

    @property
    def invite(self) -> bool:
        return self.request.method == "INVITE"

    def respond(self, response: Response) -> None:
        if self.state in ("completed", "confirmed", "terminated"):
            return
        self.last = response.to_bytes()
        self._send(self.last)
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        clock = self.layer.clock
        if self.invite:
            if response.status < 300:
                self._terminate()  # a 2xx to INVITE is the TU's business; we never send one
                return
            if not self.flow.reliable:
                self._timers.append(clock.callLater(self._g_interval, self._timer_g))
            self._timers.append(clock.callLater(64 * self.layer.t1, self._terminate))  # Timer H
        elif self.flow.reliable:
            self._terminate()  # Timer J = 0
        else:
            self._timers.append(clock.callLater(64 * self.layer.t1, self._terminate))  # Timer J

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
                self._timers.append(self.layer.clock.callLater(delay, self._terminate))
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
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def _terminate(self):
        self._cancel()
        self.state = "terminated"
        if self.layer.server.get(self.key) is self:
            del self.layer.server[self.key]


class ClientTransaction:
    """
    One non-INVITE request we send. ``deferred`` fires with the final
    response, or fails with `TransactionTimeout` (Timer F) or `TransportGone`.
    Timer E retransmits over unreliable flows; Timer K absorbs late copies.
    """

    def __init__(self, layer, request: Request, flow):
        self.layer = layer
        self.request = request
        self.flow = flow
        self.key = (request.top_via().branch, request.method)
        self.state = "trying"
        self.deferred = Deferred()
        self._data = request.to_bytes()
        self._interval = layer.t1
        self._timer_e = None
        self._timer_f = None
        self._timer_k = None

    def start(self):
        clock = self.layer.clock
        if not self._send() or self.state != "trying":
            return  # failed, or answered already (a synchronous transport in tests)
        if not self.flow.reliable:
            self._timer_e = clock.callLater(self._interval, self._retransmit)
        self._timer_f = clock.callLater(64 * self.layer.t1, self._timeout)

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
        self._timer_f = None
        if self.state in ("trying", "proceeding"):
            self._finish()
            self.deferred.errback(TransactionTimeout(f"no final response to {self.request.method} within {64 * self.layer.t1:g}s"))

    def received(self, response: Response) -> None:
        if self.state not in ("trying", "proceeding"):
            return  # a retransmitted final response, absorbed in Completed
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        self._cancel(e=True, f=True)
        if self.flow.reliable:
            self._finish()
        else:
            self._timer_k = self.layer.clock.callLater(self.layer.t4, self._finish)
        self.deferred.callback(response)

    def _cancel(self, e=False, f=False, k=False):
        for name, wanted in (("_timer_e", e), ("_timer_f", f), ("_timer_k", k)):
            timer = getattr(self, name)
            if wanted and timer is not None and timer.active():
                timer.cancel()
            if wanted:
                setattr(self, name, None)

    def _finish(self):
        self._cancel(e=True, f=True, k=True)
        self.state = "terminated"
        if self.layer.client.get(self.key) is self:
            del self.layer.client[self.key]

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
        transaction.received(response)
        return True

    def request(self, request: Request, flow) -> Deferred:
        """Send ``request`` (its top Via carries a fresh branch) in a new client transaction."""
        transaction = ClientTransaction(self, request, flow)
        self.client[transaction.key] = transaction
        transaction.start()
        return transaction.deferred

    def flow_lost(self, flow):
        for transaction in list(self.client.values()):
            if transaction.flow is flow:
                transaction.flow_lost()
        for transaction in list(self.server.values()):
            if transaction.flow is flow:
                transaction._terminate()

    def stop(self):
        """Cancel every timer (service stop); pending client requests fail."""
        for transaction in list(self.client.values()):
            transaction._finish()
            if not transaction.deferred.called:
                transaction.deferred.errback(TransportGone("stopping"))
        for transaction in list(self.server.values()):
            transaction._terminate()
