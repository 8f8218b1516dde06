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

    A peer that does not read what is sent to it: looked at once a second,
    its connection is closed when ``max_output_buffer`` bytes (4 MiB) wait
    for it, or when more than 64 KiB have waited for it for
    ``output_timeout`` seconds (120).
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


# Bytes that may wait for a peer without counting against it (a Twisted transport's own buffer).
SLACK = 65536


def _waiting(transport) -> int:
    """Bytes a Twisted transport holds for its peer (0 when it cannot tell)."""
    total = 0
    for _ in range(4):  # the transport, and those below a TLS layer
        if transport is None:
            break
        buffer = getattr(transport, "dataBuffer", None)
        if isinstance(buffer, (bytes, bytearray)):
            total += len(buffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        pending = getattr(transport, "_appSendBuffer", None)  # TLS: written, not yet encrypted
        if isinstance(pending, list):
            total += sum(len(chunk) for chunk in pending)
        transport = getattr(transport, "transport", None)
    return total


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
    its own transport (nothing sits between them). A node of a cluster
    that takes no new logins refuses the same way, unless the factory says
    ``places_logins = True`` (its protocol sends a login to another node
    itself, after it authenticated: Sametime's LOGIN_REDIRECT, OSCAR's BOS
    address) and ``placement()`` names a node to send it to.
    """

    def __init__(self, factory, limits: ListenerLimits, listener: str, clock, metrics=None, admission=None,
                 placement=None):
        self.factory = factory
        # None, or a callable saying whether this node takes new connections now: None when it does,
        # else (reason, text): a node of a cluster that is full or being drained.
        self.admission = admission
        # None, or a callable naming where another node would take a login (None: nowhere).
        self.placement = placement
        # The connector that listens, and where (an endpoint string): set by `gateway.api.GatewayApi.listen`.
        self.owner = self.endpoint = None
        self.limits = limits
        self.listener = listener
        self._clock = clock
        self._metrics = metrics
        self._by_source = {}
        self.open = 0
        self._logged = {}
        self._live = {}  # protocol -> [transport, source, since when more than SLACK waits for it]
        self._sweeping = None

    def __getattr__(self, name):
        return getattr(self.factory, name)

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        source = getattr(addr, "host", None) or "?"
        if self.admission is not None:
            refused = self.admission()
            if refused is not None and not self._sends_on(refused[0]):
                return self._refuse(source, *refused)
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

        def make_connection(transport, _make=make, _source=source, _protocol=protocol):
            self._live[_protocol] = [transport, _source, None]
            if self._sweeping is None:
                self._sweeping = self._clock.callLater(1.0, self._sweep)
            return _make(transport)

        def connection_lost(reason, _lost=lost, _source=source, _protocol=protocol):
            self._live.pop(_protocol, None)
            self._release(_source)
            return _lost(reason)

        protocol.makeConnection = make_connection
        protocol.connectionLost = connection_lost
        return protocol

    def _sends_on(self, reason):
        """Whether a login this node does not take may come in all the same: its protocol sends it on."""
        return (reason in ("node-draining", "node-full") and getattr(self.factory, "places_logins", False)
                and self.placement is not None and self.placement() is not None)

    def _release(self, source):
        self.open -= 1
        left = self._by_source.get(source, 1) - 1
        if left > 0:
            self._by_source[source] = left
        else:
            self._by_source.pop(source, None)

    def _sweep(self):
        """Once a second: close the connections whose peers do not read what waits for them."""
        self._sweeping = None
        limits, now = self.limits, self._clock.seconds()
        for entry in list(self._live.values()):
            transport, source, since = entry
            waiting = _waiting(transport)
            if waiting <= SLACK:
                entry[2] = None
                continue
            if since is None:
                entry[2] = since = now
            if waiting > limits.max_output_buffer:
                why = f"{waiting} bytes wait for it"
            elif now - since >= limits.output_timeout:
                why = f"more than {SLACK} bytes have waited for it for {now - since:.0f} s"
            else:
                continue
            entry[2] = None
            self._slow(source, why)
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()
        if self._live:
            self._sweeping = self._clock.callLater(1.0, self._sweep)

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
