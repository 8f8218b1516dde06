"""SIP over UDP, TCP and TLS: Twisted protocols, flows (where a response goes back) and per-source limits."""

from __future__ import annotations

import collections
import itertools

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway_sip.codec import (
    REASONS,
    FramingError,
    Request,
    Response,
    SipError,
    parse_message,
    split_stream,
)
from gateway_sip.transaction import TransportGone

log = Logger(namespace="gateway_sip.protocol")
_stream_ids = itertools.count(1)


class Flow:
    """
    Where a message came from and where its answers go (RFC 3261 18.2.2,
    RFC 3581): the same TCP/TLS connection, or the UDP source address.
    """

    reliable = False
    transport_name = "UDP"
    key = ()
    peer = ("", 0)

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        return True

    def local(self) -> tuple:
        raise NotImplementedError

    def __str__(self):
        host, port = self.peer
        return f"{self.transport_name.lower()}:{host}:{port}"


class DatagramFlow(Flow):
    def __init__(self, endpoint, addr):
        self.endpoint = endpoint  # the SipDatagramProtocol of our listening socket
        self.peer = (addr[0], addr[1])
        self.key = ("udp", addr[0], addr[1])

    def send(self, data):
        transport = self.endpoint.transport
        if transport is None:
            raise TransportGone("UDP listener is closed")
        if getattr(self.endpoint.handler, "trace", False):
            self.endpoint.handler.traced(data, self)
        transport.write(data, self.peer)

    def local(self):
        return self.endpoint.advertised()


class StreamFlow(Flow):
    reliable = True

    def __init__(self, stream):
        self.stream = stream
        peer = stream.transport.getPeer()
        self.peer = (getattr(peer, "host", "?"), getattr(peer, "port", 0))
        self.transport_name = "TLS" if stream.tls else "TCP"
        self.key = ("stream", next(_stream_ids))

    def send(self, data):
        if not self.alive:
            raise TransportGone(f"{self} is closed")
        if getattr(self.stream.handler, "trace", False):
            self.stream.handler.traced(data, self)
        self.stream.transport.write(data)

    @property
    def alive(self):
        return self.stream.connected and not self.stream.transport.disconnecting

    def local(self):
        host = self.stream.transport.getHost()
        return getattr(host, "host", "127.0.0.1"), getattr(host, "port", 0)


class RateLimiter:
    """A token bucket per source (bounded: the least recently seen sources are forgotten)."""

    def __init__(self, clock, rate: float, burst: float = None, sources: int = 10000):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1))
        self.sources = sources
        self._buckets = collections.OrderedDict()
        self.refused = 0
        self.exempt = set()  # hosts never limited (federation peers)

    def allow(self, source, host=None) -> bool:
        if self.rate <= 0 or host in self.exempt:
            return True
        now = self.clock.seconds()
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.sources:
            self._buckets.popitem(last=False)
        return allowed


def error_response(error: SipError):
    """The response a malformed request gets, or None when too little was parsed to answer."""
    request = error.message
    if not isinstance(request, Request) or request.method == "ACK":
        return None
    h = request.headers
    if not h.get_all("via"):
        return None
    response = Response(error.status, _reason_phrase(error))
    for name in ("via", "from", "to", "call-id", "cseq"):
        for value in h.get_all(name) if name == "via" else ([h.get(name)] if h.get(name) else []):
            response.headers.add(name, value)
    response.headers.add("warning", f'399 gateway "{_clean(error.reason)}"')
    return response


def _reason_phrase(error):
    return f"{REASONS.get(error.status, 'Bad Request')} ({_clean(error.reason)})"


def _clean(text):
    return "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in text)[:200]


class SipDatagramProtocol(protocol.DatagramProtocol):
    """One UDP listening socket: each datagram is one message; a bad one is answered or dropped, alone."""

    noisy = False

    def __init__(self, handler, limiter: RateLimiter, max_size: int, advertise=None):
        self.handler = handler
        self.limiter = limiter
        self.max_size = max_size
        self._advertise = advertise
        self.flows = collections.OrderedDict()  # bounded: a flow object per recent source

    def advertised(self):
        if self._advertise:
            return self._advertise
        host = self.transport.getHost()
        return (host.host if host.host not in ("0.0.0.0", "::", "") else "127.0.0.1"), host.port

    def flow_for(self, addr) -> DatagramFlow:
        key = (addr[0], addr[1])
        flow = self.flows.pop(key, None) or DatagramFlow(self, addr)
        self.flows[key] = flow
        if len(self.flows) > 10000:
            self.flows.popitem(last=False)
        return flow

    def datagramReceived(self, data, addr):
        try:
            self._received(data, addr)
        except Exception:
            log.failure("SIP/UDP: unexpected error on a datagram from {peer}", peer=f"{addr[0]}:{addr[1]}")

    def _received(self, data, addr):
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive
        flow = self.flow_for(addr)
        if len(data) > self.max_size:
            log.warn("SIP/UDP: {size}-byte datagram from {peer} over the limit", size=len(data), peer=str(flow))
            try:
                partial = parse_message(data)
            except SipError as e:
                partial = e.message
            if partial is not None:
                deliver_error(SipError(f"message over {self.max_size} bytes", 413, partial), flow)
            return
        try:
            message = parse_message(data)
        except SipError as e:
            log.warn("SIP/UDP: bad message from {peer}: {reason}", peer=str(flow), reason=e.reason)
            deliver_error(e, flow)
            return
        if isinstance(message, Request) and not self.limiter.allow(flow.key, flow.peer[0]):
            refuse_rate(message, flow)
            return
        self.handler.received(message, flow)


def deliver_error(error, flow):
    response = error_response(error)
    if response is not None:
        try:
            flow.send(response.to_bytes())
        except TransportGone:
            pass


def refuse_rate(request, flow):
    if request.method == "ACK":
        return
    log.warn("SIP: rate limit: refused {method} from {peer}", method=request.method, peer=str(flow))
    response = Response(503, "Service Unavailable (rate limit)")
    for name in ("via", "from", "to", "call-id", "cseq"):
        for value in request.headers.get_all(name) if name == "via" else [request.headers.get(name, "")]:
            response.headers.add(name, value)
    response.headers.add("retry-after", "1")
    try:
        flow.send(response.to_bytes())
    except TransportGone:
        pass


class SipStreamProtocol(protocol.Protocol, TimeoutMixin):
    """One TCP or TLS connection: framed by Content-Length; broken framing closes it."""

    def __init__(self, handler, limiter: RateLimiter, max_size: int, idle_timeout: float, clock, tls=False):
        self.handler = handler
        self.limiter = limiter
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.callLater = clock.callLater  # TimeoutMixin, on the injected clock
        self.tls = tls
        self.buffer = b""
        self.flow = None

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:  # pragma: no cover - a socket closed already
                pass
        self.flow = StreamFlow(self)
        self.setTimeout(self.idle_timeout or None)
        self.handler.connection_made(self.flow)

    def dataReceived(self, data):
        try:
            self._data(data)
        except Exception:
            log.failure("SIP/{kind}: unexpected error from {peer}", kind=self.flow.transport_name, peer=str(self.flow))
            self.transport.loseConnection()

    def _data(self, data):
        self.resetTimeout()
        self.buffer += data
        while self.buffer and self.connected and not self.transport.disconnecting:
            try:
                kind, frame, used = split_stream(self.buffer, self.max_size)
            except FramingError as e:
                log.warn("SIP/{kind}: closing {peer}: {reason}", kind=self.flow.transport_name, peer=str(self.flow), reason=e.reason)
                self.buffer = b""
                self.transport.loseConnection()
                return
            if kind is None:
                return
            self.buffer = self.buffer[used:]
            if kind == "ping":
                self.transport.write(b"\r\n")  # RFC 5626 pong
                continue
            if kind == "blank":
                continue
            self._frame(frame)

    def _frame(self, frame):
        try:
            message = parse_message(frame)
        except SipError as e:
            log.warn("SIP/{kind}: bad message from {peer}: {reason}", kind=self.flow.transport_name, peer=str(self.flow), reason=e.reason)
            deliver_error(e, self.flow)
            return
        if isinstance(message, Request) and not self.limiter.allow(self.flow.key, self.flow.peer[0]):
            refuse_rate(message, self.flow)
            return
        self.handler.received(message, self.flow)

    def timeoutConnection(self):
        log.info("SIP/{kind}: closing idle connection {peer}", kind=self.flow.transport_name, peer=str(self.flow))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.connected = False
        if self.flow is not None:
            self.handler.connection_lost(self.flow)


class SipStreamFactory(protocol.Factory):
    noisy = False
    def __init__(self, handler, limiter, max_size, idle_timeout, clock, tls=False):
        self.handler, self.limiter, self.max_size = handler, limiter, max_size
        self.idle_timeout, self.clock, self.tls = idle_timeout, clock, tls

    def buildProtocol(self, addr):
        p = SipStreamProtocol(self.handler, self.limiter, self.max_size, self.idle_timeout, self.clock, self.tls)
        p.factory = self
        return p
