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
- IMs (04/06 from the client, 04/07 to it): each is submitted to the bus
  for policy and archive, and forwarded only when allowed (a transform
  hook's new text is written into it). A client whose IM is denied gets an
  ICBM error (04/01) instead; an IM to the client that is denied is withheld
  (and archived as rejected);
- FLAP sequence numbers: each direction is renumbered, so a frame the proxy
  withholds or adds leaves no gap and no repeat for the side that reads it;
- nothing else: a frame the proxy cannot parse is passed on untouched, and
  a stream that stops being FLAP is relayed raw from then on.

No assumption is made that the upstream is this gateway: it is any OSCAR
service reachable at ``upstream`` (host:port), whose BOS and other services
may be on other hosts and ports.
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

# The kinds of chunk an `OrderedPipe` writes.
_FRAME, _OWN, _RAW, _DROP, _PENDING = range(5)

# Services (SNAC families) a client may be redirected to (01/05 TLV 0x0D), for the log.
SERVICE_NAMES = {0x05: "adverts", 0x07: "admin", 0x0D: "chat navigation", 0x0E: "chat", 0x0F: "directory search",
                 0x10: "buddy icons", 0x18: "alerts"}


def _host_port(text, key):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected host:port, got {text!r}", key=f"connectors.{NAME}.{key}")
    return host, int(port)


def _target(text, default_port):
    """Where a client is sent: ``host:port``, or a bare ``host`` on ``default_port`` (as AIM clients read it)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):  # [IPv6]:port
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


class OrderedPipe:
    """
    Writes one direction of a relayed connection in order: a held slot (an
    IM waiting for the bus) blocks the chunks behind it until it is
    released. FLAP frames are renumbered as they are written: the source's
    sequence numbers are shifted so that a frame dropped from the stream or
    added by the proxy leaves the reader a gap-free sequence (the source's
    first frame continues from the proxy's own frames before it).
    """

    def __init__(self, write):
        self.write = write
        self.queue = collections.deque()
        self.last = None  # the last sequence number written
        self.delta = None  # added to the source's numbers; None until its first frame

    def push(self, data):
        """A whole FLAP frame from the source, as it came."""
        self._add([_FRAME, data])

    def push_raw(self, data):
        """Bytes that are not FLAP, passed on as they are."""
        self._add([_RAW, data])

    def push_own(self, channel, payload):
        """A frame the proxy adds: it gets the next number."""
        self._add([_OWN, (channel, payload)])

    def skip(self, data):
        """A frame from the source that is withheld."""
        self._add([_DROP, data])

    def _add(self, chunk):
        if self.queue:
            self.queue.append(chunk)
        else:
            self._emit(chunk)

    def hold(self):
        slot = [_PENDING, None]
        self.queue.append(slot)
        return slot

    def release(self, slot, data):
        """Fill a held slot with a whole frame (numbered as the source numbered it)."""
        slot[0], slot[1] = _FRAME, data
        self._flush()

    def withhold(self, slot, data):
        """Drop the frame ``data`` a held slot stood for."""
        slot[0], slot[1] = _DROP, data
        self._flush()

    def _flush(self):
        while self.queue and self.queue[0][0] != _PENDING:
            self._emit(self.queue.popleft())

    def _emit(self, chunk):
        kind, data = chunk
        if kind == _FRAME:
            seq = int.from_bytes(data[2:4], "big")
            if self.delta is None:
                self.delta = 0 if self.last is None else (self.last + 1 - seq) & 0xFFFF
            self.last = out = (seq + self.delta) & 0xFFFF
            if out != seq:
                data = data[:2] + out.to_bytes(2, "big") + data[4:]
            self.write(data)
        elif kind == _OWN:
            channel, payload = data
            self.last = out = 1 if self.last is None else (self.last + 1) & 0xFFFF
            if self.delta is not None:
                self.delta = (self.delta + 1) & 0xFFFF
            self.write(codec.encode_flap(channel, out, payload))
        elif kind == _DROP:
            if self.delta is None:
                # The source's first frame is withheld: its successor takes the next number.
                seq = int.from_bytes(data[2:4], "big")
                self.delta = 0 if self.last is None else (self.last - seq) & 0xFFFF
            elif self.delta is not None:
                self.delta = (self.delta - 1) & 0xFFFF
        elif data:
            self.write(data)


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
    chunk: bytes
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
            pipe.withhold(self.slot, self.chunk)


class UpstreamProtocol(protocol.Protocol):
    """The proxy's connection to the upstream service: hands everything to its `ProxyConnection`."""

    def __init__(self, leg):
        self.leg = leg
        self.swallow_hello = True  # the client had the proxy's own hello already

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
        self.service = None  # the SNAC family of a redirected service connection, when known
        self.closed = False

    # -- connections -----------------------------------------------------------------------

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.setTimeout(self.connector.idle_timeout)
        self.connector.connections.add(self)
        # Greet the client at once (some clients wait for it); the upstream is chosen by its first frame.
        self.to_client.push_own(CH_SIGNON, codec.FLAP_VERSION)

    def connect_upstream(self, target):
        self.upstream_target = target
        d = self.connector.connect(target, lambda: UpstreamProtocol(self))
        d.addErrback(self._upstream_failed, target)

    def _upstream_failed(self, failure, target):
        self.log.warn("oscar proxy: cannot reach upstream {host}:{port}: {why}", host=target[0], port=target[1],
                      why=failure.getErrorMessage())
        if not self.closed:
            payload = encode_tlvs([(0x0008, u16(adapter.LOGIN_UNAVAILABLE)),
                                   (0x0004, b"https://gateway.invalid/oscar/upstream-unavailable")])
            self.to_client.push_own(CH_SIGNOFF, payload)
            self.transport.loseConnection()

    def upstream_connected(self, upstream):
        if self.closed or self.upstream is not None:
            upstream.leg = None
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
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
            if self.upstream_target is None:
                self.choose_upstream(frame)
            try:
                self.client_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect a client frame; passed through")
                self.to_upstream.push(chunk)

    def choose_upstream(self, frame):
        """The client's first frame says where it goes: a cookie this proxy handed out names the real address."""
        target = self.connector.upstream
        if frame is not None and frame.channel == CH_SIGNON:
            try:
                tlvs = codec.parse_signon(frame.payload)
            except OscarCodecError:
                tlvs = []
            cookie = first_tlv(tlvs, 0x0006)
            if cookie is not None:
                route = self.connector.routes.pop(cookie, None)
                if route is None:
                    self.log.info("oscar proxy: a client brought a cookie this proxy did not hand out; "
                                  "relaying it to the login service")
                else:
                    target, name, self.service = route
                    self.learn_name(name)
            else:
                self.learn_name(first_tlv(tlvs, 0x0001))
        self.connect_upstream(target)

    def client_frame(self, frame, chunk):
        if frame is None:
            self.to_upstream.push_raw(chunk)
            return
        if frame.channel == CH_DATA and len(frame.payload) >= 10:
            snac = codec.parse_snac(frame.payload)
            if snac.family == 0x17 and snac.subtype in (0x02, 0x06):
                self.learn_name(first_tlv(codec.parse_tlvs(snac.body), 0x0001))
            elif (snac.family, snac.subtype) == (0x04, 0x06):
                self.intercept(frame, snac, chunk, to_client=False)
                return
        self.to_upstream.push(chunk)

    def learn_name(self, name):
        if name:
            self.screen_name = codec.normalize_screen_name(name.decode("utf-8", "replace"))

    # -- upstream -> client -------------------------------------------------------------------

    def from_upstream(self, upstream, data):
        if upstream is not self.upstream:
            return
        for frame, chunk in self.upstream_frames.feed(data):
            if upstream.swallow_hello:
                upstream.swallow_hello = False
                if frame is not None and frame.channel == CH_SIGNON:
                    self.to_client.skip(chunk)  # the client had the proxy's hello
                    continue
            try:
                self.upstream_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect an upstream frame; passed through")
                self.to_client.push(chunk)

    def upstream_frame(self, frame, chunk):
        if frame is None:
            self.to_client.push_raw(chunk)
            return
        if frame.channel == CH_SIGNOFF and frame.payload:
            try:
                tlvs = codec.parse_tlvs(frame.payload)
            except OscarCodecError:
                tlvs = None
            if tlvs and first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                payload = encode_tlvs(self.rewrite_address(tlvs, "BOS"))
                self.to_client.push(codec.encode_flap(CH_SIGNOFF, frame.seq, payload))
                return
        elif frame.channel == CH_DATA and len(frame.payload) >= 10:
            snac = codec.parse_snac(frame.payload)
            key = (snac.family, snac.subtype)
            if key in ((0x17, 0x03), (0x01, 0x05)):
                tlvs = codec.parse_tlvs(snac.body)
                if first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                    body = encode_tlvs(self.rewrite_address(tlvs, "BOS" if key == (0x17, 0x03) else "service"))
                    prefix = frame.payload[:len(frame.payload) - len(snac.body)]  # header (+ extra data)
                    self.to_client.push(codec.encode_flap(CH_DATA, frame.seq, prefix + body))
                    return
            elif key == (0x04, 0x07):
                self.intercept(frame, snac, chunk, to_client=True)
                return
        self.to_client.push(chunk)

    def rewrite_address(self, tlvs, what):
        """
        A login reply or a service redirect with this proxy's address in TLV 5;
        the real one is kept under the cookie (TLV 6) for the client's next connection.
        """
        real = first_tlv(tlvs, 0x0005).decode("ascii", "replace")
        cookie = first_tlv(tlvs, 0x0006)
        target = _target(real, self.connector.upstream[1])
        if target is None:
            self.log.warn("oscar proxy: the upstream sent {who} to an unusable {what} address {real!r}; "
                          "relaying that connection to the login service", who=self.screen_name or "-", what=what,
                          real=real)
            target = self.connector.upstream
        service = None
        group = first_tlv(tlvs, 0x000D)
        if what == "service" and group is not None and len(group) == 2:
            service = int.from_bytes(group, "big")
        name = first_tlv(tlvs, 0x0001) or (self.screen_name or "").encode()
        self.learn_name(name)
        self.connector.add_route(cookie, target, name, service)
        if what == "service":
            self.log.info("oscar proxy: {who} redirected to the {service} service at {host}:{port}; "
                          "relaying it through this proxy", who=self.screen_name or "-",
                          service=SERVICE_NAMES.get(service, f"0x{service or 0:04x}"), host=target[0], port=target[1])
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
        pending = PendingIm(self, to_client, pipe.hold(), frame, snac, incoming.text, chunk)
        self.connector.pending[event.id] = pending
        d = self.api.submit(event, origin=self.connector)
        d.addCallback(self._outcome, event, pending, snac)
        d.addErrback(self._outcome_failed, event, pending)

    def _outcome(self, outcome, event, pending, snac):
        self.connector.pending.pop(event.id, None)
        if outcome.rejected and outcome.code in BLOCKING:
            pending.drop()
            if pending.to_client:
                self.log.warn(
                    "oscar proxy: IM from {sender} (upstream) to {recipient} withheld from the client: {code} {reason}"
                    " (rule {rule}); archived as rejected",
                    sender=str(event.sender), recipient=str(event.recipient), code=outcome.code,
                    reason=outcome.reason, rule=outcome.rule or "-", event_id=event.id)
                return
            self.log.info("oscar proxy: IM from {sender} to {recipient} (upstream) stopped: {code} {reason}"
                          " (rule {rule})", sender=str(event.sender), recipient=str(event.recipient),
                          code=outcome.code, reason=outcome.reason, rule=outcome.rule or "-", event_id=event.id)
            error = codec.encode_snac(0x04, 0x01, u16(adapter.icbm_error_for(outcome.code)), 0, snac.request_id)
            self.to_client.push_own(CH_DATA, error)
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
    KNOWN = {"listen", "upstream", "bos_address", "connect_timeout", "idle_timeout", "max_connections",
             "max_connections_per_source"}

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        for key in config:
            if key not in self.KNOWN:
                raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(sorted(self.KNOWN))}",
                                  key=f"connectors.{NAME}.{key}")
        opt = lambda key, kind, default: connector_option(NAME, config, key, kind, default)  # noqa: E731
        self.listen = opt("listen", list, ["tcp:5190:interface=127.0.0.1"])
        self.listen_options = api.listener_options(NAME, config)
        if "upstream" not in config:
            raise ConfigError("the proxy needs the upstream OSCAR service as host:port", key=f"connectors.{NAME}.upstream")
        self.upstream = _host_port(opt("upstream", str, ""), "upstream")
        self.bos_address = opt("bos_address", str, "127.0.0.1:5190")
        _host_port(self.bos_address, "bos_address")
        self.connect_timeout = opt("connect_timeout", float, 10.0)
        self.idle_timeout = opt("idle_timeout", float, 900.0)
        self.connections = set()
        self.routes = _BoundedMap(10000)  # cookie -> ((host, port) of the real BOS or service, screen name, family)
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

    def add_route(self, cookie, target, name, service=None):
        self.routes[cookie] = (target, name, service)

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
