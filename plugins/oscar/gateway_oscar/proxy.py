"""
The transparent logging proxy: AIM/ICQ clients connect here and are relayed to an upstream OSCAR service.

Every frame passes through as it came, except these:

- the sign-on hello: the proxy greets each client itself (a channel-1
  ``00000001``), and connects upstream only when the client's first frame
  says where to (a login, or a cookie this proxy handed out); the upstream's
  own hello is not repeated to the client;
- addresses the upstream sends a client to: the BOS address of the login
  reply (TLV 5 of the channel-4 frame or of SNAC 17/03) and the service
  address of a redirect (TLV 5 of SNAC 01/05, the answer to a 01/04 service
  request) are rewritten to this proxy's, and the real one is remembered
  under the cookie (TLV 6), so the client's next connection comes back
  through here and is relayed to the real address;
- IMs (04/06 from the client, 04/07 to it), rendezvous on ICBM channel 2
  (file and direct-IM offers, chat invitations) and messages on a chat-room
  connection (0E/05, 0E/06): each is an event (``im``, ``file``, ``chat``)
  submitted down the path for policy, hooks and the archive, and forwarded
  only when delivered, rendered from the decided event (never as its
  sender wrote it). A client whose frame is refused gets the family's error
  (04/01, 0E/01) instead; a frame to the client that is refused is withheld
  (and archived as rejected). What follows an offer that was let through
  (accepts, cancels) is relayed by cookie between its two parties;
- FLAP sequence numbers: each direction is renumbered, so a frame the proxy
  withholds or adds leaves no gap and no repeat for the side that reads it;
- with ``fail_closed`` (the default), what the proxy cannot attribute (a
  connection whose login it did not see), read (a malformed IM, an unknown
  rendezvous, a stream that stops being FLAP) or decide (the path failed)
  is withheld and archived as rejected with the cause (``unattributed``,
  ``unparsable``, ``rendezvous-unsupported``, ``raw-stream``,
  ``undecided``); a stream that stops being FLAP closes the connection.
  Without it, such traffic passes as it came (what can be is archived, and
  what policy refuses is still stopped);
- back-pressure: what the proxy holds for one side (frames behind an IM
  the path has not decided, or sent before the upstream connected) is at
  most ``max_buffer`` bytes (1 MiB); past it that side is not read until
  half of it went out;
- nothing else: other frames pass as they came.

No assumption is made that the upstream is this gateway: it is any OSCAR
service reachable at ``upstream`` (host:port), whose BOS and other services
may be on other hosts and ports.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.application import service
from twisted.internet import endpoints, protocol
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from gateway.plugin import (
    LISTENER_OPTIONS,
    ConfigError,
    IConnector,
    Option,
    read_options,
)

from gateway_oscar.bounded import BoundedMap
from gateway_oscar.intercept import UNKNOWN
from gateway_oscar.pipe import OrderedPipe
from gateway_oscar.relay import NAME, ProxyConnection, UpstreamProtocol, _target

__all__ = [
    "NAME",
    "OPTIONS",
    "UNKNOWN",
    "OrderedPipe",
    "OscarProxyConnector",
    "ProxyConnection",
    "Route",
    "UpstreamProtocol",
    "_target",
]


def _host_port(text):
    """``(host, port)`` of a ``host:port`` string, or None when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def host_port(text):
    """An `Option` check: ``host:port``."""
    return None if _host_port(text) else "host:port"


def _big_enough(value):
    """An `Option` check for ``max_buffer``: room for the largest FLAP frame."""
    return None if value >= 65536 else "at least 65536 bytes"


# The keys of [connectors.oscar-proxy]; the README's option reference is generated from them.
OPTIONS = (
    Option("listen", list, ["tcp:5190:interface=127.0.0.1"], "endpoint strings"),
    Option("upstream", str, "", "host:port of the OSCAR login service to relay to", check=host_port, required=True),
    Option("bos_address", str, "127.0.0.1:5190", "host:port of this proxy as clients reach it", check=host_port),
    Option("connect_timeout", float, 10.0, "seconds to connect upstream"),
    Option("idle_timeout", float, 900.0, "seconds without a frame from the client before its connection is closed"),
    Option("max_buffer", int, 1 << 20, "bytes held for one side before it is no longer read", check=_big_enough),
    Option("fail_closed", bool, True, "withhold (and archive as rejected) what the proxy cannot attribute, read"
           " or decide; false lets it pass"),
) + LISTENER_OPTIONS


@attrs.frozen(slots=True)
class Route:
    """Where a cookie this proxy handed out leads, and what it knew of the client that got it."""

    target: tuple  # (host, port) of the real BOS or service
    name: bytes  # the screen name
    service: Optional[int] = None  # the SNAC family of a redirected service
    profile: object = None  # the client's `adapter.ClientProfile`
    room: str = ""  # the chat room of a chat service connection


@implementer(IConnector)
class OscarProxyConnector(service.MultiService):
    """``[connectors.oscar-proxy]``: the logging proxy. Its keys are declared in `OPTIONS`."""

    name = NAME
    networks = ("aim", "icq")
    log = Logger(namespace="gateway.oscar.proxy")

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        if not config.get("upstream"):  # the one key without a default
            raise ConfigError("the proxy needs the upstream OSCAR service as host:port",
                              key=f"connectors.{NAME}.upstream")
        config = read_options(NAME, config, OPTIONS)  # as the gateway did already; for a connector built directly
        self.listen = config["listen"]
        self.listen_options = api.listener_options(NAME, config)
        self.upstream = _host_port(config["upstream"])
        self.bos_address = config["bos_address"]
        self.connect_timeout = config["connect_timeout"]
        self.idle_timeout = config["idle_timeout"]
        self.max_buffer = config["max_buffer"]
        self.paused = 0  # times a side was paused for back-pressure (metrics)
        self.fail_closed = config["fail_closed"]
        if not self.fail_closed:
            self.log.warn("[connectors.oscar-proxy] fail_closed = false: IMs the proxy cannot attribute, read or"
                          " decide pass unchecked")
        self.connections = set()
        self.routes = BoundedMap(10000)  # cookie -> Route
        self.pending = {}  # event id -> Pending
        self.seen = BoundedMap(20000)  # IMs let out by one client of this proxy, for the other end -> (time, event)
        self.offers = BoundedMap(10000)  # rendezvous cookie -> (FileOffer let through, codec.FileInfo or None)
        self.ports = []

    # -- IConnector ------------------------------------------------------------------------------

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        """Any screen name or UIN: the upstream service knows its users, the proxy does not need to."""
        return address.network in self.networks and not address.domain

    def deliver(self, event, session):
        pending = self.pending.pop(event.id, None)
        if pending is None:
            raise ConnectionError(f"the proxy has no connection that carries {event.kind} {event.id}")
        pending.forward(event)

    # -- plumbing -----------------------------------------------------------------------------------

    def connect(self, target, build):
        host, port = target
        endpoint = endpoints.HostnameEndpoint(self.api.reactor, host, port, timeout=self.connect_timeout)
        return endpoints.connectProtocol(endpoint, build())

    def add_route(self, cookie, target, name, service=None, profile=None, room=""):
        self.routes[cookie] = Route(target, name, service, profile, room)

    def note_seen(self, cookie, sender, recipient, texts, event):
        """An IM let out by a client of this proxy, by cookie and by text, for when it comes back to another."""
        now = self.api.clock.seconds()
        self.seen[("cookie", cookie, sender, recipient)] = (now, event)
        for text in texts:
            self.seen[("text", sender, recipient, text)] = (now, event)

    def seen_before(self, cookie, sender, recipient, text):
        """The decided event of an IM `note_seen` kept (within a minute), or None."""
        now = self.api.clock.seconds()
        for key in (("cookie", cookie, sender, recipient), ("text", sender, recipient, text)):
            seen = self.seen.pop(key, None)
            if seen is not None and now - seen[0] < 60:
                return seen[1]
        return None

    def startService(self):
        super().startService()
        factory = protocol.Factory.forProtocol(lambda: ProxyConnection(self))
        for description in self.listen:
            self.api.listen(description, factory, connector=NAME, options=self.listen_options).addCallbacks(
                self.ports.append, self._listen_failed, errbackArgs=(description,))

    def _listen_failed(self, failure, description):
        self.log.error("oscar proxy cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        for leg in list(self.connections):
            leg.transport.loseConnection()
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
