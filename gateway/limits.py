"""Connection limits on every listener: per source address and in total, refused before the protocol runs."""

from __future__ import annotations

import attrs
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from gateway.config import ConfigError

__all__ = ["ListenerLimits", "LimitedFactory", "listener_limits", "LIMIT_KEYS"]

log = Logger(namespace="gateway.limits")

# The keys every connector's table accepts for its listeners (with its own keys).
LIMIT_KEYS = ("max_connections", "max_connections_per_source")


@attrs.frozen
class ListenerLimits:
    """
    ``max_connections`` (10000) open at once on a listener, and
    ``max_connections_per_source`` (50) from one address: enough for a
    NAT's many users, too few for one address to hold a listener.
    """

    max_connections: int = 10_000
    max_connections_per_source: int = 50


def listener_limits(connector: str, table: dict) -> ListenerLimits:
    """The limits in a ``[connectors.NAME]`` table (`LIMIT_KEYS`), defaults for the rest."""
    values = {}
    for key in LIMIT_KEYS:
        if key in table:
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"expected a whole number greater than 0, got {value!r}",
                                  key=f"connectors.{connector}.{key}")
            values[key] = value
    return ListenerLimits(**values)


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

        def connection_lost(reason, _lost=lost, _source=source):
            self._release(_source)
            return _lost(reason)

        protocol.connectionLost = connection_lost
        return protocol

    def _release(self, source):
        self.open -= 1
        left = self._by_source.get(source, 1) - 1
        if left > 0:
            self._by_source[source] = left
        else:
            self._by_source.pop(source, None)

    def _refuse(self, source, reason, text):
        if self._metrics is not None:
            self._metrics.connection_refused(self.listener, reason)
        now = self._clock.seconds()
        if now - self._logged.get(source, -1e9) >= 60:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[source] = now
            log.warn("{listener}: refused a connection from {source}: {why} (logged once a minute per source)",
                     listener=self.listener, source=source, why=text)
        refusal = getattr(self.factory, "refusal", None)
        return _Refuse(refusal(reason) if refusal is not None else b"")
