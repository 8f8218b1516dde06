"""Connection limits on every listener: per source address and in total, refused before the protocol runs."""

from __future__ import annotations

import attrs
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from gateway.config import ConfigError

__all__ = ["ListenerLimits", "LimitedFactory", "listener_limits", "LIMIT_KEYS"]

log = Logger(namespace="gateway.limits")

# The keys every connector's table accepts for its listeners (with its own keys); the api's LIMIT_KEYS.
LIMIT_KEYS = ("max_connections", "max_connections_per_source", "max_output_buffer", "output_timeout")


@attrs.frozen
class ListenerLimits:
    """
    ``max_connections`` (10000) open at once on a listener, and
    ``max_connections_per_source`` (50) from one address: enough for a
    NAT's many users, too few for one address to hold a listener.

    A peer that stops reading: once more than the transport's own buffer
    (64 KiB) waits to be sent to it, the connection is closed when
    ``max_output_buffer`` bytes (4 MiB) wait, or when it has not taken any
    for ``output_timeout`` seconds (120).
    """

    max_connections: int = 10_000
    max_connections_per_source: int = 50
    max_output_buffer: int = 4 << 20
    output_timeout: float = 120.0


def listener_limits(connector: str, table: dict) -> ListenerLimits:
    """The limits in a ``[connectors.NAME]`` table (`LIMIT_KEYS`), defaults for the rest."""
    values = {}
    for key in LIMIT_KEYS:
        if key in table:
            value = table[key]
            kinds = (int, float) if key == "output_timeout" else int
            if not isinstance(value, kinds) or isinstance(value, bool) or value <= 0:
                what = "a number" if key == "output_timeout" else "a whole number"
                raise ConfigError(f"expected {what} greater than 0, got {value!r}",
                                  key=f"connectors.{connector}.{key}")
            values[key] = value
    return ListenerLimits(**values)


def _waiting(transport) -> int:
    """Bytes a Twisted transport holds for its peer (0 when it cannot tell)."""
    total = 0
    while transport is not None:
        buffer = getattr(transport, "dataBuffer", None)
        if isinstance(buffer, (bytes, bytearray)):
            total += len(buffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        transport = getattr(transport, "transport", None)  # below a TLS layer
    return total


class _OutputWatch:
    """
    The transport's streaming producer (Twisted pauses it once more than
    its buffer waits to be sent): while paused, it looks every second how
    much waits and for how long, and closes a connection whose peer does
    not read.
    """

    def __init__(self, factory, transport, source):
        self.factory = factory
        self.transport = transport
        self.source = source
        self.since = None
        self._call = None

    def pauseProducing(self):
        if self.since is None:
            self.since = self.factory._clock.seconds()
            self._call = self.factory._clock.callLater(1.0, self._look)

    def resumeProducing(self):
        self.since = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    stopProducing = resumeProducing

    def _look(self):
        self._call = None
        limits = self.factory.limits
        waiting = _waiting(self.transport)
        stalled = self.factory._clock.seconds() - self.since
        if waiting > limits.max_output_buffer or stalled >= limits.output_timeout:
            why = (f"{waiting} bytes wait for it" if waiting > limits.max_output_buffer
                   else f"it has taken nothing for {stalled:.0f} s")
            self.factory._slow(self.source, why)
            self.since = None
            abort = getattr(self.transport, "abortConnection", None) or self.transport.loseConnection
            abort()
        else:
            self._call = self.factory._clock.callLater(1.0, self._look)


class _Refuse(Protocol):
    """Says the protocol's own "too many connections" (when it has one) and closes."""

    def __init__(self, message: bytes):
        self.message = message

    def connectionMade(self):
        if self.message:
            self.transport.write(self.message)
        self.transport.loseConnection()


class LimitedFactory:
    """
    Wraps a listener's protocol factory: counts live connections per
    source address and in all, and refuses one over a limit before the
    protocol is built, with the bytes ``factory.refusal(reason)`` returns
    when the factory has that method (the protocol's own error), counted in
    metrics and logged once a minute per source. The protocol built keeps
    its own transport (nothing sits between them).
    """

    def __init__(self, factory, limits: ListenerLimits, listener: str, clock, metrics=None):
        self.factory = factory
        self.limits = limits
        self.listener = listener
        self._clock = clock
        self._metrics = metrics
        self._by_source = {}
        self.open = 0
        self._logged = {}

    def __getattr__(self, name):
        return getattr(self.factory, name)

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        source = getattr(addr, "host", None) or "?"
        if self.open >= self.limits.max_connections:
            return self._refuse(source, "too-many-connections", "the listener has as many connections as it takes")
        if self._by_source.get(source, 0) >= self.limits.max_connections_per_source:
            return self._refuse(source, "too-many-from-source", "too many connections from this address")
        protocol = self.factory.buildProtocol(addr)
        if protocol is None:
            return None
        self.open += 1
        self._by_source[source] = self._by_source.get(source, 0) + 1
        lost = protocol.connectionLost
        make = protocol.makeConnection

        def make_connection(transport, _make=make, _source=source):
            if getattr(transport, "producer", None) is None and hasattr(transport, "registerProducer"):
                watch = _OutputWatch(self, transport, _source)
                transport.registerProducer(watch, True)
            return _make(transport)

        def connection_lost(reason, _lost=lost, _source=source):
            self._release(_source)
            return _lost(reason)

        protocol.makeConnection = make_connection
        protocol.connectionLost = connection_lost
        return protocol

    def _release(self, source):
        self.open -= 1
        left = self._by_source.get(source, 1) - 1
        if left > 0:
            self._by_source[source] = left
        else:
            self._by_source.pop(source, None)

    def _slow(self, source, why):
        if self._metrics is not None:
            self._metrics.connection_refused(self.listener, "peer-not-reading")
        self._log_once(source, "{listener}: closed a connection from {source}: it does not read what is sent"
                               " to it ({why}; logged once a minute per source)", why=why)

    def _log_once(self, source, text, **fields):
        now = self._clock.seconds()
        key = (source, text)
        if now - self._logged.get(key, -1e9) >= 60:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
            log.warn(text, listener=self.listener, source=source, **fields)

    def _refuse(self, source, reason, text):
        if self._metrics is not None:
            self._metrics.connection_refused(self.listener, reason)
        self._log_once(source, "{listener}: refused a connection from {source}: {why} (logged once a minute per"
                               " source)", why=text)
        refusal = getattr(self.factory, "refusal", None)
        return _Refuse(refusal(reason) if refusal is not None else b"")
