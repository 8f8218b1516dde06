"""
The transparent logging proxy: AIM/ICQ clients connect here and are relayed to an upstream OSCAR service.

Every frame passes through byte for byte, except three kinds:

- the login reply (channel-4 TLVs, or SNAC 17/03): its BOS address (TLV 5)
  is rewritten to this proxy's, and the real one remembered under the
  cookie (TLV 6), so the client's BOS connection comes back through here;
- IMs (04/06 from the client, 04/07 to it): each is submitted to the bus
  for policy and archive, and forwarded only when allowed (a transform
  hook's new text is written into it); a client whose IM is denied gets an
  ICBM error (04/01) instead;
- nothing else: a frame the proxy cannot parse is passed on untouched, and
  a stream that stops being FLAP is relayed raw from then on.

No assumption is made that the upstream is this gateway: it is any OSCAR
service reachable at ``upstream`` (host:port).
"""

from __future__ import annotations

import collections

import attrs
from twisted.application import service
from twisted.internet import endpoints, protocol
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from gateway.config import ConfigError, connector_option
from gateway.interfaces import IConnector
from gateway.model import Address, AddressError

from gateway_oscar import adapter, codec
from gateway_oscar.connector import _BoundedMap
from gateway_oscar.codec import CH_DATA, CH_SIGNOFF, CH_SIGNON, OscarCodecError, encode_tlvs, first_tlv, u16

NAME = "oscar-proxy"

# Outcome codes that stop an IM at the proxy; anything else (delivered, queued, or
# "we do not know that user": the upstream does) lets it through.
BLOCKING = frozenset({"policy", "transform", "archive-unavailable", "internal", "invalid"})

_PENDING = object()


def _host_port(text, key):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected host:port, got {text!r}", key=f"connectors.{NAME}.{key}")
    return host, int(port)


class OrderedPipe:
    """Writes chunks in order; a held slot blocks the chunks behind it until it is released."""

    def __init__(self, write):
        self.write = write
        self.queue = collections.deque()

    def push(self, data):
        if self.queue:
            self.queue.append([data])
        else:
            self.write(data)

    def hold(self):
        slot = [_PENDING]
        self.queue.append(slot)
        return slot

    def release(self, slot, data):
        slot[0] = data
        while self.queue and self.queue[0][0] is not _PENDING:
            chunk = self.queue.popleft()[0]
            if chunk:
                self.write(chunk)


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


@attrs.define
class PendingIm:
    """An IM waiting for the bus: where it goes once allowed."""

    leg: object  # the ProxyConnection
    to_client: bool
    slot: list
    frame: codec.Flap
    snac: codec.Snac
    text: str
    forwarded: bool = False

    def forward(self, event=None):
        if self.forwarded:
            return
        self.forwarded = True
        data = self.leg.rebuild(self.frame, self.snac, event, self.text)
        pipe = self.leg.to_client if self.to_client else self.leg.to_upstream
        pipe.release(self.slot, data)

    def drop(self):
        if not self.forwarded:
            self.forwarded = True
            pipe = self.leg.to_client if self.to_client else self.leg.to_upstream
            pipe.release(self.slot, None)


class UpstreamProtocol(protocol.Protocol):
    """The proxy's connection to the upstream service: hands everything to its `ProxyConnection`."""

    def __init__(self, leg, swallow_hello):
        self.leg = leg
        self.swallow_hello = swallow_hello

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self.leg is None:
            self.transport.loseConnection()
        else:
            self.leg.upstream_connected(self)

    def dataReceived(self, data):
        if self.leg is not None:  # None once the client side dropped this upstream
            self.leg.from_upstream(self, data)

    def connectionLost(self, reason=None):
        if self.leg is not None:
            self.leg.upstream_lost(self)


class ProxyConnection(protocol.Protocol, TimeoutMixin):
    """One client relayed to the upstream; the logging happens here."""

    log = Logger(namespace="gateway.oscar.proxy")

    def __init__(self, connector):
        self.connector = connector
        self.api = connector.api
        self.callLater = connector.api.clock.callLater
        self.upstream = None
        self.upstream_target = None
        self.client_frames = FrameSplitter()
        self.upstream_frames = FrameSplitter()
        self.to_upstream = OrderedPipe(self._write_upstream)
        self.to_client = OrderedPipe(self._write_client)
        self.early = []  # client bytes before the upstream is connected
        self.screen_name = None
        self.first_client_frame = True
        self.swallowing = None
        self.last_upstream_seq = 0
        self.closed = False

    # -- connections -----------------------------------------------------------------------

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.setTimeout(self.connector.idle_timeout)
        self.connector.connections.add(self)
        self.connect_upstream(self.connector.upstream, swallow_hello=False)

    def connect_upstream(self, target, swallow_hello):
        self.upstream_target = target
        d = self.connector.connect(target, lambda: UpstreamProtocol(self, swallow_hello))
        d.addErrback(self._upstream_failed, target)

    def _upstream_failed(self, failure, target):
        self.log.warn("oscar proxy: cannot reach upstream {host}:{port}: {why}", host=target[0], port=target[1],
                      why=failure.getErrorMessage())
        if not self.closed:
            payload = encode_tlvs([(0x0008, u16(adapter.LOGIN_UNAVAILABLE)),
                                   (0x0004, b"https://gateway.invalid/oscar/upstream-unavailable")])
            self.transport.write(codec.encode_flap(CH_SIGNOFF, 1, payload))
            self.transport.loseConnection()

    def upstream_connected(self, upstream):
        if self.closed:
            upstream.transport.loseConnection()
            return
        old, self.upstream = self.upstream, upstream
        if old is not None:
            old.leg = None
            old.transport.loseConnection()
        early, self.early = self.early, []
        for chunk in early:
            upstream.transport.write(chunk)

    def upstream_lost(self, upstream):
        if upstream is self.upstream and not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.closed = True
        self.setTimeout(None)
        self.connector.connections.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def timeoutConnection(self):
        self.log.info("oscar proxy: {who} idle, closing", who=self.screen_name or "-")
        TimeoutMixin.timeoutConnection(self)

    def _write_upstream(self, data):
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def _write_client(self, data):
        if not self.closed:
            self.transport.write(data)

    # -- client -> upstream ------------------------------------------------------------------

    def dataReceived(self, data):
        self.resetTimeout()
        for frame, chunk in self.client_frames.feed(data):
            try:
                self.client_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect a client frame; passed through")
                self.to_upstream.push(chunk)

    def client_frame(self, frame, chunk):
        if frame is None:
            self.to_upstream.push(chunk)
            return
        first, self.first_client_frame = self.first_client_frame, False
        if frame.channel == CH_SIGNON and first:
            self.signon(frame, chunk)
            return
        if frame.channel == CH_DATA and len(frame.payload) >= 10:
            snac = codec.parse_snac(frame.payload)
            if snac.family == 0x17 and snac.subtype in (0x02, 0x06):
                self.learn_name(first_tlv(codec.parse_tlvs(snac.body), 0x0001))
            elif (snac.family, snac.subtype) == (0x04, 0x06):
                self.intercept(frame, snac, chunk, to_client=False)
                return
        self.to_upstream.push(chunk)

    def signon(self, frame, chunk):
        try:
            tlvs = codec.parse_signon(frame.payload)
        except OscarCodecError:
            tlvs = []
        cookie = first_tlv(tlvs, 0x0006)
        if cookie is not None:
            route = self.connector.routes.pop(cookie, None)
            if route is not None:
                target, name = route
                self.learn_name(name)
                if target != self.upstream_target:
                    # The real BOS is elsewhere: drop the login upstream, use the BOS one.
                    self.upstream = None if self.upstream is None else self._drop(self.upstream)
                    self.connect_upstream(target, swallow_hello=True)
        else:
            self.learn_name(first_tlv(tlvs, 0x0001))
        self.to_upstream.push(chunk)

    def _drop(self, upstream):
        upstream.leg = None
        upstream.transport.loseConnection()
        return None

    def learn_name(self, name):
        if name:
            self.screen_name = codec.normalize_screen_name(name.decode("utf-8", "replace"))

    # -- upstream -> client -------------------------------------------------------------------

    def from_upstream(self, upstream, data):
        if upstream is not self.upstream:
            return
        for frame, chunk in self.upstream_frames.feed(data):
            if frame is not None and upstream.swallow_hello and frame.channel == CH_SIGNON:
                upstream.swallow_hello = False  # the client had the first upstream's hello already
                continue
            try:
                self.upstream_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect an upstream frame; passed through")
                self.to_client.push(chunk)

    def upstream_frame(self, frame, chunk):
        if frame is None:
            self.to_client.push(chunk)
            return
        self.last_upstream_seq = frame.seq
        if frame.channel == CH_SIGNOFF and frame.payload:
            try:
                tlvs = codec.parse_tlvs(frame.payload)
            except OscarCodecError:
                tlvs = None
            if tlvs and first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                payload = encode_tlvs(self.rewrite_login(tlvs))
                self.to_client.push(codec.encode_flap(CH_SIGNOFF, frame.seq, payload))
                return
        elif frame.channel == CH_DATA and len(frame.payload) >= 10:
            snac = codec.parse_snac(frame.payload)
            if (snac.family, snac.subtype) == (0x17, 0x03):
                tlvs = codec.parse_tlvs(snac.body)
                if first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                    body = encode_tlvs(self.rewrite_login(tlvs))
                    prefix = frame.payload[:len(frame.payload) - len(snac.body)]  # header (+ extra data)
                    self.to_client.push(codec.encode_flap(CH_DATA, frame.seq, prefix + body))
                    return
            elif (snac.family, snac.subtype) == (0x04, 0x07):
                self.intercept(frame, snac, chunk, to_client=True)
                return
        self.to_client.push(chunk)

    def rewrite_login(self, tlvs):
        """The login reply with our BOS address; the real one is kept under the cookie."""
        real = first_tlv(tlvs, 0x0005).decode("ascii", "replace")
        cookie = first_tlv(tlvs, 0x0006)
        try:
            target = _host_port(real, "upstream")
        except ConfigError:
            target = self.upstream_target
        name = first_tlv(tlvs, 0x0001) or (self.screen_name or "").encode()
        self.learn_name(name)
        self.connector.add_route(cookie, target, name)
        ours = self.connector.bos_address.encode("ascii")
        return [(t, ours if t == 0x0005 else v) for t, v in tlvs]

    # -- IMs --------------------------------------------------------------------------------------

    def intercept(self, frame, snac, chunk, to_client):
        pipe = self.to_client if to_client else self.to_upstream
        try:
            if to_client:
                icbm = codec.parse_icbm_receive(snac.body)
            else:
                icbm = codec.parse_icbm_send(snac.body)
            tlv2 = icbm.tlv(0x0002)
        except OscarCodecError:
            pipe.push(chunk)  # not an IM we understand: untouched
            return
        if icbm.channel != 1 or tlv2 is None or not self.screen_name:
            if icbm.channel == 1 and not self.screen_name:
                self.log.warn("oscar proxy: IM on a connection whose user is unknown; passed through unlogged")
            pipe.push(chunk)
            return
        try:
            incoming = adapter.message_from_tlv2(tlv2)
            me = Address(adapter.network_of(self.screen_name), self.screen_name)
            other = adapter.address_for(icbm.screen_name, me.network)
        except (OscarCodecError, AddressError):
            pipe.push(chunk)
            return
        sender, recipient = (other, me) if to_client else (me, other)
        if to_client and self.connector.seen_before(icbm.cookie, sender, recipient, incoming.text):
            pipe.push(chunk)  # the proxy logged it already on the sender's side
            return
        if not to_client:
            self.connector.note_seen(icbm.cookie, sender, recipient, incoming.text)
        event = self.api.message(sender, recipient, incoming.text, html=incoming.html)
        pending = PendingIm(self, to_client, pipe.hold(), frame, snac, incoming.text)
        self.connector.pending[event.id] = pending
        d = self.api.submit(event, origin=self.connector)
        d.addCallback(self._outcome, event, pending, snac)
        d.addErrback(self._outcome_failed, event, pending)

    def _outcome(self, outcome, event, pending, snac):
        self.connector.pending.pop(event.id, None)
        if outcome.rejected and outcome.code in BLOCKING:
            pending.drop()
            self.log.info("oscar proxy: IM {sender} -> {recipient} stopped: {code} {reason}",
                          sender=str(event.sender), recipient=str(event.recipient), code=outcome.code,
                          reason=outcome.reason)
            if not pending.to_client:
                error = codec.encode_snac(0x04, 0x01, u16(adapter.icbm_error_for(outcome.code)), 0, snac.request_id)
                self.to_client.push(codec.encode_flap(CH_DATA, self.last_upstream_seq, error))
            return
        pending.forward()

    def _outcome_failed(self, failure, event, pending):
        self.connector.pending.pop(event.id, None)
        self.log.failure("oscar proxy: IM outcome failed; passing it through", failure)
        pending.forward()

    def rebuild(self, frame, snac, event, original_text):
        """The frame's bytes, with the IM text replaced when a transform hook changed it."""
        if event is None or event.text == original_text:
            return codec.encode_flap(frame.channel, frame.seq, frame.payload)
        tlv2 = adapter.im_tlv2(event.text, None, adapter.ClientProfile())
        if snac.subtype == 0x07:
            icbm = codec.parse_icbm_receive(snac.body)
            info = codec.encode_user_info(icbm.screen_name, icbm.user_tlvs, icbm.warning)
            head = icbm.cookie + u16(icbm.channel) + info
        else:
            icbm = codec.parse_icbm_send(snac.body)
            head = icbm.cookie + u16(icbm.channel) + bytes((len(icbm.screen_name),)) + icbm.screen_name
        tlvs = [(t, tlv2 if t == 0x0002 else v) for t, v in icbm.tlvs]
        body = head + encode_tlvs(tlvs)
        payload = codec.encode_snac(snac.family, snac.subtype, body, snac.flags & ~0x8000, snac.request_id)
        return codec.encode_flap(frame.channel, frame.seq, payload)


@implementer(IConnector)
class OscarProxyConnector(service.MultiService):
    """
    ``[connectors.oscar-proxy]``: ``listen`` (endpoint strings), ``upstream``
    (host:port of the OSCAR login service), ``bos_address`` (host:port of
    this proxy as clients reach it), ``connect_timeout``, ``idle_timeout``.
    """

    name = NAME
    networks = ("aim", "icq")
    log = Logger(namespace="gateway.oscar.proxy")
    KNOWN = {"listen", "upstream", "bos_address", "connect_timeout", "idle_timeout"}

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        for key in config:
            if key not in self.KNOWN:
                raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(sorted(self.KNOWN))}",
                                  key=f"connectors.{NAME}.{key}")
        opt = lambda key, kind, default: connector_option(NAME, config, key, kind, default)  # noqa: E731
        self.listen = opt("listen", list, ["tcp:5190:interface=127.0.0.1"])
        if "upstream" not in config:
            raise ConfigError("the proxy needs the upstream OSCAR service as host:port", key=f"connectors.{NAME}.upstream")
        self.upstream = _host_port(opt("upstream", str, ""), "upstream")
        self.bos_address = opt("bos_address", str, "127.0.0.1:5190")
        _host_port(self.bos_address, "bos_address")
        self.connect_timeout = opt("connect_timeout", float, 10.0)
        self.idle_timeout = opt("idle_timeout", float, 900.0)
        self.connections = set()
        self.routes = _BoundedMap(10000)  # login cookie -> ((host, port) of the real BOS, screen name)
        self.pending = {}  # event id -> PendingIm
        self.seen = _BoundedMap(20000)
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
            raise ConnectionError(f"the proxy has no connection that carries an IM to {event.recipient}")
        pending.forward(event)

    # -- plumbing -----------------------------------------------------------------------------------

    def connect(self, target, build):
        host, port = target
        endpoint = endpoints.HostnameEndpoint(self.api.reactor, host, port, timeout=self.connect_timeout)
        return endpoints.connectProtocol(endpoint, build())

    def add_route(self, cookie, target, name):
        self.routes[cookie] = (target, name)

    def note_seen(self, cookie, sender, recipient, text):
        now = self.api.clock.seconds()
        self.seen[("cookie", cookie, sender, recipient)] = now
        self.seen[("text", sender, recipient, text)] = now

    def seen_before(self, cookie, sender, recipient, text):
        now = self.api.clock.seconds()
        for key in (("cookie", cookie, sender, recipient), ("text", sender, recipient, text)):
            when = self.seen.pop(key, None)
            if when is not None and now - when < 60:
                return True
        return False

    def startService(self):
        super().startService()
        factory = protocol.Factory.forProtocol(lambda: ProxyConnection(self))
        for description in self.listen:
            endpoint = endpoints.serverFromString(self.api.reactor, description)
            endpoint.listen(factory).addCallbacks(self.ports.append, self._listen_failed, errbackArgs=(description,))

    def _listen_failed(self, failure, description):
        self.log.error("oscar proxy cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        for leg in list(self.connections):
            leg.transport.loseConnection()
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
