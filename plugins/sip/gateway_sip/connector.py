"""The SIP/SIMPLE connector: registrar with digest, MESSAGE, presence (SUBSCRIBE/NOTIFY/PUBLISH) and peer domains."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re

import attrs
from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.plugin import (
    Address,
    ConfigError,
    Contact,
    DirectoryUnavailable,
    IConnector,
    LoginThrottled,
    Message,
    Presence,
    PresenceStatus,
    Typing,
    connector_option,
    hookimpl,
)

from gateway_sip import adapter, digest
from gateway_sip.codec import (
    REASONS,
    Request,
    Response,
    SipError,
    parse_auth,
    parse_name_addr,
    parse_uri,
    digits,
    validate_request,
)
from gateway_sip.pidf import PidfError, parse_pidf
from gateway_sip.protocol import (
    RateLimiter,
    SipDatagramProtocol,
    SipStreamFactory,
    StreamFlow,
    deliver_error,
)
from gateway_sip.transaction import Deadlines, TransactionLayer, TransactionTimeout, TransportGone, new_branch

NAME = "sip"
ALLOW = "REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, OPTIONS, ACK, CANCEL, BYE"
KNOWN_METHODS = {"REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "ACK",
                 "CANCEL", "BYE", "INVITE", "INFO", "PRACK", "UPDATE", "REFER"}
USER_AGENT = "gateway-sip/0.1"
# A valueless rport parameter in a Via (RFC 3581), to be given the source port.
_RPORT = re.compile(r";[ \t]*rport(?=[ \t]*(?:;|$))")

log = Logger(namespace="gateway_sip")


class DeliveryError(Exception):
    """A request we sent got a failure response (or none)."""


@attrs.define(eq=False)
class Peer:
    """A federated SIP domain: where to send its traffic, and where its traffic may come from."""

    domain: str
    host: str
    port: int
    transport: str = "udp"
    sources: tuple = ()
    ca: str = ""  # PEM file of the certificate authority (or self-signed certificate) to trust, for tls
    secret: str = ""  # the digest secret its requests are signed with (user name and realm: its domain)
    trust: str = "digest"  # or "source": its address alone is believed (opt-out, logged at start)


@attrs.define(eq=False)
class Binding:
    """One registered contact of an address-of-record; its session is the client on the bus."""

    aor: Address
    contact: str
    flow: object
    identity: object
    expires_at: float
    timer: object = None
    session: object = None
    removed: bool = False

    @property
    def key(self):
        return (self.contact, self.flow.key)


@attrs.define(eq=False)
class Subscription:
    """A presence subscription (RFC 6665 dialog) of ``watcher`` to ``target``."""

    watcher: Address
    target: Address
    call_id: str
    remote_tag: str
    local_tag: str
    remote_contact: str
    flow: object
    expires_at: float
    timer: object = None
    cseq: int = 0
    last_state: tuple = None
    foreign: bool = False

    @property
    def key(self):
        return (self.call_id, self.remote_tag, self.local_tag)


@attrs.define(eq=False)
class Upstream:
    """Our own subscription at a peer domain, for local watchers of one of its users."""

    watcher: Address
    target: Address
    call_id: str
    local_tag: str
    remote_tag: str = None
    cseq: int = 0


class _Waiting:
    """A delivery waiting for the recipient's answer, bounded by ``delivery_timeout``."""

    __slots__ = ("result", "who")

    def __init__(self, result, who):
        self.result = result
        self.who = who


@attrs.define(eq=False)
class Publication:
    aor: Address
    etag: str
    status: PresenceStatus
    note: str
    timer: object = None


def _listener_transport(description: str) -> bool:
    """True when an endpoint string is TLS."""
    return description.split(":", 1)[0].lower() in ("ssl", "tls")


@implementer(IConnector)
class SipConnector(service.MultiService):
    """
    ``[connectors.sip]``: ``domains`` (["localhost"]), ``udp`` (["127.0.0.1:5060"]),
    ``listen`` (TCP/TLS endpoint strings), ``max_message_size``, ``max_datagram``,
    ``rate``/``burst`` (requests per second per source), ``idle_timeout``,
    ``min_expires``/``max_expires``/``default_expires``, ``nonce_lifetime``,
    ``algorithms`` (["MD5", "SHA-256"]), ``subscribe_adds_contact``,
    ``advertise`` ("host:port" in Via/Contact), ``peers`` (domain -> {host, port,
    transport, sources, ca, secret or secret_file, trust}).
    """

    name = NAME
    networks = (adapter.NETWORK,)
    KNOWN = {
        "domains", "udp", "listen", "max_message_size", "max_datagram", "rate", "burst",
        "idle_timeout", "min_expires", "max_expires", "default_expires", "nonce_lifetime",
        "algorithms", "subscribe_adds_contact", "advertise", "peers", "t1", "trace",
        "delivery_timeout", "max_bindings", "max_subscriptions", "max_connections", "max_connections_per_source",
        "max_output_buffer", "output_timeout",
    }

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        self.clock = api.clock
        for key in config:
            if key not in self.KNOWN:
                raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(sorted(self.KNOWN))}",
                                  key=f"connectors.{NAME}.{key}")
        opt = lambda key, kind, default: connector_option(NAME, config, key, kind, default)  # noqa: E731
        self.domains = [d.lower() for d in opt("domains", list, ["localhost"])]
        if not self.domains or not all(isinstance(d, str) and d for d in self.domains):
            raise ConfigError("expected a non-empty list of domain names", key=f"connectors.{NAME}.domains")
        self.udp = opt("udp", list, ["127.0.0.1:5060"])
        self.udp_addresses = [self._host_port(text, "udp") for text in self.udp]
        self.listen = opt("listen", list, ["tcp:5060:interface=127.0.0.1"])
        self.listen_options = api.listener_options(NAME, config)
        self.max_message_size = opt("max_message_size", int, 8192)
        self.max_datagram = opt("max_datagram", int, 65507)
        self.rate = opt("rate", float, 50.0)
        self.burst = opt("burst", float, 100.0)
        self.idle_timeout = opt("idle_timeout", float, 300.0)
        self.min_expires = opt("min_expires", int, 60)
        self.max_expires = opt("max_expires", int, 3600)
        self.default_expires = opt("default_expires", int, 3600)
        self.nonce_lifetime = opt("nonce_lifetime", float, 300.0)
        # MD5 first: SIPp 3.6 answers only the topmost challenge and knows only MD5 (RFC 8760 wants
        # clients to pick the first they support); list "SHA-256" first where every client can.
        self.algorithms = opt("algorithms", list, ["MD5", "SHA-256"])
        for algorithm in self.algorithms:
            if algorithm not in digest.HASHES:
                raise ConfigError(f"unknown digest algorithm {algorithm!r}; choose from {', '.join(digest.HASHES)}",
                                  key=f"connectors.{NAME}.algorithms")
        self.subscribe_adds_contact = opt("subscribe_adds_contact", bool, True)
        advertise = opt("advertise", str, "")
        self.advertise = self._host_port(advertise, "advertise") if advertise else None
        t1 = opt("t1", float, 0.5)
        self.trace = opt("trace", bool, False)
        # How long the sender waits for a client's answer before the bus hears "failed" (the
        # transaction goes on; a client that never answers loses its registration at Timer F).
        self.delivery_timeout = opt("delivery_timeout", float, 8.0)
        # Bounds on what one person can make the gateway remember.
        self.max_bindings = opt("max_bindings", int, 10)
        self.max_subscriptions = opt("max_subscriptions", int, 500)
        self.peers = self._peers(opt("peers", dict, {}), _config_dir(api))
        for domain in self.peers:
            if domain in self.domains:
                raise ConfigError(f"peer domain {domain!r} is one of our own domains", key=f"connectors.{NAME}.peers")
        if any(p.transport == "udp" for p in self.peers.values()) and not self.udp:
            raise ConfigError("a peer uses udp but there is no udp listener", key=f"connectors.{NAME}.udp")

        self.transactions = TransactionLayer(self.clock, t1=t1)
        self._delivery_deadlines = Deadlines(self.clock, self.delivery_timeout, self._delivery_late)
        self.nonces = digest.Nonces(self.clock, self.nonce_lifetime)
        self.limiter = RateLimiter(self.clock, self.rate, self.burst)
        for peer in self.peers.values():
            self.limiter.exempt.update(peer.sources)  # a peer server carries many users' traffic
            if peer.trust == "source":
                log.warn("[connectors.sip.peers.{domain}] trust = \"source\": requests from {sources} are believed"
                         " to come from {domain} without credentials; anyone who can send from those addresses"
                         " can speak for its users", domain=peer.domain, sources=", ".join(peer.sources))
        self.bindings = {}  # aor -> {binding key: Binding}
        self.subscriptions = {}  # dialog key -> Subscription
        self._by_pair = {}  # (watcher, target) -> {dialog key: Subscription}
        self._by_target = {}  # target -> {dialog key: Subscription}
        self._watching = {}  # watcher -> how many subscriptions
        self.upstreams = {}  # (watcher, target at a peer) -> Upstream
        self.publications = {}  # etag -> Publication
        self.udp_endpoints = []  # SipDatagramProtocol
        self.ports = []
        self.streams = set()
        self.peer_flows = {}  # domain -> StreamFlow (or a Deferred while connecting)
        self.local_hosts = set(self.domains)
        for host, _ in self.udp_addresses:
            self.local_hosts.add(host)
        self._handlers = {
            method: getattr(self, f"_on_{method.lower()}") for method in KNOWN_METHODS
            if hasattr(self, f"_on_{method.lower()}")
        }
        self._addresses = {}  # URI text -> Address: a bounded memo of `_address` (From and Request-URIs repeat)

    # -- configuration helpers --------------------------------------------------

    @staticmethod
    def _host_port(text, key):
        host, sep, port = str(text).rpartition(":")
        if not sep or not digits(port) or not host:
            raise ConfigError(f"expected \"HOST:PORT\", got {text!r}", key=f"connectors.{NAME}.{key}")
        return host.strip("[]"), int(port)

    @staticmethod
    def _peers(table, base_dir=""):
        peers = {}
        for domain, spec in table.items():
            key = f"connectors.{NAME}.peers.{domain}"
            if not isinstance(spec, dict):
                raise ConfigError("expected a table with host, port, transport", key=key)
            known = {"host", "port", "transport", "sources", "ca", "secret", "secret_file", "trust"}
            unknown = set(spec) - known
            if unknown:
                raise ConfigError(f"unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}", key=key)
            host = spec.get("host")
            if not isinstance(host, str) or not host:
                raise ConfigError("expected host = \"IP address\"", key=f"{key}.host")
            transport = spec.get("transport", "udp")
            if transport not in ("udp", "tcp", "tls"):
                raise ConfigError(f"transport must be udp, tcp or tls, not {transport!r}", key=f"{key}.transport")
            port = spec.get("port", 5061 if transport == "tls" else 5060)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ConfigError(f"expected a port number, got {port!r}", key=f"{key}.port")
            sources = spec.get("sources", [host])
            for source in sources:
                try:
                    ipaddress.ip_address(source)
                except ValueError:
                    raise ConfigError(f"sources are IP addresses, not {source!r}", key=f"{key}.sources") from None
            ca = spec.get("ca", "")
            if not isinstance(ca, str):
                raise ConfigError("expected the path of a PEM file", key=f"{key}.ca")
            if ca and base_dir and not os.path.isabs(ca):
                ca = os.path.join(base_dir, ca)
            secret = spec.get("secret", "")
            secret_file = spec.get("secret_file", "")
            if not isinstance(secret, str) or not isinstance(secret_file, str):
                raise ConfigError("expected a string", key=f"{key}.secret")
            if secret_file:
                path = secret_file if os.path.isabs(secret_file) or not base_dir else os.path.join(base_dir, secret_file)
                try:
                    with open(path, encoding="utf-8") as f:
                        secret = f.read().strip()
                except OSError as e:
                    raise ConfigError(f"cannot read it: {e.strerror}", key=f"{key}.secret_file") from None
            trust = spec.get("trust", "digest")
            if trust not in ("digest", "source"):
                raise ConfigError(f'trust is "digest" or "source", not {trust!r}', key=f"{key}.trust")
            if trust == "digest" and not secret:
                raise ConfigError(
                    "a peer signs its requests with a shared digest secret (secret or secret_file); "
                    'trust = "source" believes its address instead, which anyone who can send from it can forge',
                    key=key,
                )
            peers[domain.lower()] = Peer(domain.lower(), host, port, transport, tuple(sources), ca, secret, trust)
        return peers

    # -- IConnector -------------------------------------------------------------

    def domain_for(self, network):
        return self.domains[0]

    def can_reach(self, address):
        return address.network == adapter.NETWORK and address.domain in self.peers

    def foreign_watchers(self, identity):
        """
        The bus asks this whenever ``identity``'s presence changes. A
        subscription is its own dialog (RFC 6665): every active one hears
        of the change, registered or not. Watchers of a peer domain are
        named here (the bus sends each a `Presence` through the path).
        Our own users' subscriptions that the bus does not reach through a
        SIP session of theirs with ``identity`` in their contacts get it
        from `_show`, through the path as well.
        """
        foreign, local = [], {}
        for handle in identity.handles:
            for sub in self._by_target.get(handle, {}).values():
                if sub.foreign:
                    if sub.watcher not in foreign:
                        foreign.append(sub.watcher)
                else:
                    local[(sub.watcher, sub.target)] = sub
        if local:
            state = self.api.presence_of(identity.id)
            state = (PresenceStatus(state[0]), state[1])
            for watcher, target in local:
                self._changed_for(watcher, target, identity, state)
        return foreign

    def _changed_for(self, watcher, target, identity, state):
        """``target`` (a handle of ``identity``) changed to ``state``: show it to ``watcher`` unless the bus does."""
        subs = self._by_pair.get((watcher, target), {})
        if all(sub.last_state == state for sub in subs.values()):
            return None  # nothing new for this watcher (another session of the target came or went)
        session = self._session_of(watcher)
        if session is None:
            return self._show(watcher, target, state)
        handles = set(identity.handles)

        def check(contacts):
            if any(contact.address in handles for contact in contacts):
                return None  # the bus delivers it to the watcher's session (one NOTIFY, one archive row)
            return self._show(watcher, target, state)

        d = self.api.contacts(session.identity.id).addCallback(check)
        d.addErrback(lambda f: log.failure("SIP: presence of {target} for {watcher} failed", f,
                                           target=str(target), watcher=str(watcher)))
        return d

    def _session_of(self, address):
        """A live session of one of ``address``'s registrations on this connector, or None."""
        for binding in self.bindings.get(address, {}).values():
            if binding.session is not None and not binding.removed:
                return binding.session
        return None

    def _show(self, watcher, target, state, initial=False):
        """
        Show ``target``'s presence (``state``: status, note) to ``watcher``'s
        subscriptions to it, through the path (policy kind ``presence``,
        archive). Delivery goes to the watcher's SIP session if it has one,
        never to its sessions on other networks: those did not subscribe.
        Without a SIP session the path delivers nowhere and the outcome
        says whether the policy allowed it; the NOTIFYs are sent from here.
        ``initial``: the first NOTIFY of new subscriptions; one that heard
        something fresher meanwhile (a peer's NOTIFY) is left as it is.
        """
        session = self._session_of(watcher)
        event = Presence(sender=target, status=state[0], note=state[1], recipient=watcher,
                         created=self.clock.seconds())
        if session is not None:
            d = self.api.submit(event, origin=self, only_session=session)
        else:
            # No session: the path checks and archives it, then hands it back here (`deliver`).
            d = self.api.submit(event, origin=self, through=self)
        return d.addCallback(self._shown, watcher, target, state, initial)

    def _shown(self, outcome, watcher, target, state, initial):
        if outcome.rejected and outcome.code == "policy":
            log.info("SIP: presence of {target} withheld from {watcher}: {reason}",
                     target=str(target), watcher=str(watcher), reason=outcome.reason)
            state = (PresenceStatus.OFFLINE, "")
        elif not outcome.delivered:
            state = (PresenceStatus.OFFLINE, "")
        # A delivery to the watcher's session NOTIFYed already: _notify sends nothing twice.
        for sub in list(self._by_pair.get((watcher, target), {}).values()):
            if not (initial and sub.last_state is not None):
                self._notify(sub, state)
        return outcome

    def deliver(self, event, session):
        if isinstance(event, Presence):
            if session is None and event.recipient is not None and event.recipient.domain in self.domains:
                # Handed back by the path for a watcher of ours with no session (`_show`),
                # which NOTIFYs once the outcome is known.
                return None
            recipient = event.recipient if session is None else session.address
            self._notify_watcher(recipient, event)
            return None
        if session is None:
            return self._deliver_to_peer(event)
        binding = session.handler
        if binding is None or binding.removed or not binding.flow.alive:
            return fail(DeliveryError(f"{session.address} has no live registration"))
        d = self._send_message(event, binding.contact, binding.flow)
        d.addErrback(self._binding_silent, binding)
        return self._bounded(d, session.address)

    def _binding_silent(self, failure, binding):
        if (failure.check(DeliveryError) and isinstance(failure.value.__cause__, TransactionTimeout)
                and not binding.removed):
            log.info("SIP: {aor} at {contact} does not answer; registration removed",
                     aor=str(binding.aor), contact=binding.contact)
            self._remove_binding(binding, "contact does not answer")
        return failure

    def _bounded(self, d, who):
        """``d``, or a failure after ``delivery_timeout`` seconds (``who`` did not answer), whichever comes first."""
        if not self.delivery_timeout:
            return d
        waiting = _Waiting(Deferred(), who)
        self._delivery_deadlines.add(waiting)
        d.addBoth(self._delivery_done, waiting)
        return waiting.result

    def _delivery_done(self, value, waiting):
        self._delivery_deadlines.discard(waiting)
        result = waiting.result
        if result.called:
            return None  # too late: the timeout was reported already
        if isinstance(value, Failure):
            result.errback(value)
        else:
            result.callback(None)
        return None

    def _delivery_late(self, waiting):
        if not waiting.result.called:
            waiting.result.errback(DeliveryError(f"{waiting.who} did not answer within {self.delivery_timeout:g}s"))

    # -- service ----------------------------------------------------------------

    def startService(self):
        super().startService()
        reactor = self.api.reactor
        for host, port in self.udp_addresses:
            endpoint = SipDatagramProtocol(self, self.limiter, self.max_datagram, advertise=self.advertise)
            try:
                listening = reactor.listenUDP(port, endpoint, interface=host)
                self.ports.append(listening)
                _grow_receive_buffer(listening)
            except Exception as e:
                log.error("SIP cannot listen on udp {host}:{port}: {why}", host=host, port=port, why=str(e))
                continue
            self.udp_endpoints.append(endpoint)
            log.info("SIP listening on udp {host}:{port}", host=host, port=port)
        for description in self.listen:
            tls = _listener_transport(description)
            factory = SipStreamFactory(self, self.limiter, self.max_datagram, self.idle_timeout, self.clock, tls=tls)
            try:
                listening = self.api.listen(description, factory, connector=NAME, options=self.listen_options)
            except Exception as e:
                raise ConfigError(f"bad endpoint {description!r}: {e}", key=f"connectors.{NAME}.listen") from None
            listening.addCallbacks(self._listening, self._listen_failed,
                                   callbackArgs=(description,), errbackArgs=(description,))

    def _listening(self, port, description):
        self.ports.append(port)
        host = port.getHost()
        self.local_hosts.add(getattr(host, "host", ""))
        self._addresses.clear()  # a new address of ours: URIs naming it map to our domain now
        log.info("SIP listening on {where}", where=description)

    def _listen_failed(self, failure, description):
        log.error("SIP cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        stops = [maybeDeferred(port.stopListening) for port in ports]
        for stream in list(self.streams):
            stream.transport.loseConnection()
        for flow in list(self.peer_flows.values()):
            if isinstance(flow, StreamFlow):
                flow.stream.transport.loseConnection()
        self.peer_flows.clear()
        logouts = []
        for bindings in list(self.bindings.values()):
            for binding in list(bindings.values()):
                logouts.append(self._remove_binding(binding, "gateway stopping"))
        for sub in list(self.subscriptions.values()):
            self._drop_subscription(sub)
        for publication in list(self.publications.values()):
            if publication.timer is not None and publication.timer.active():
                publication.timer.cancel()
        self.publications.clear()
        self.transactions.stop()
        self._delivery_deadlines.clear()
        self.udp_endpoints = []
        return DeferredList(stops + [d for d in logouts if d is not None], consumeErrors=True)

    # -- the protocols' side ------------------------------------------------------

    def connection_made(self, flow):
        self.streams.add(flow.stream)

    def connection_lost(self, flow):
        self.streams.discard(flow.stream)
        self.transactions.flow_lost(flow)
        for domain, peer_flow in list(self.peer_flows.items()):
            if peer_flow is flow:
                del self.peer_flows[domain]
        for bindings in list(self.bindings.values()):
            for binding in list(bindings.values()):
                if binding.flow is flow:
                    self._remove_binding(binding, "connection closed")
        for sub in list(self.subscriptions.values()):
            if sub.flow is flow:
                self._drop_subscription(sub)

    def traced(self, data, flow):
        log.info("SIP trace to {peer}:\n{text}", peer=str(flow), text=data.decode("utf-8", "replace"))

    def received(self, message, flow):
        """One parsed message from a flow; nothing raised here reaches the reactor."""
        if self.trace:
            log.info("SIP trace from {peer}:\n{text}", peer=str(flow), text=message.to_bytes().decode("utf-8", "replace"))
        if isinstance(message, Response):
            if not self.transactions.receive_response(message):
                log.debug("SIP: stray response {status} from {peer}", status=message.status, peer=str(flow))
            return
        try:
            validate_request(message)
        except SipError as e:
            log.warn("SIP: bad {method} from {peer}: {reason}", method=message.method, peer=str(flow), reason=e.reason)
            deliver_error(e, flow)
            return
        transaction = self.transactions.receive_request(message, flow)
        if transaction is None:
            return
        method = message.method
        handler = self._handlers.get(method)
        try:
            if handler is None:
                if method in KNOWN_METHODS:
                    result = self._respond(transaction, 405, headers=[("Allow", ALLOW)],
                                           reason="Method Not Allowed")
                else:
                    result = self._respond(transaction, 501, headers=[("Allow", ALLOW)])
            else:
                result = handler(message, transaction, flow)
        except SipError as e:
            self._respond_error(transaction, e)
            return
        except Exception:
            log.failure("SIP: error handling {method} from {peer}", method=method, peer=str(flow))
            self._respond(transaction, 500)
            return
        if isinstance(result, Deferred):
            result.addErrback(self._handler_failed, transaction, flow)

    def _handler_failed(self, failure, transaction, flow):
        if failure.check(SipError):
            self._respond_error(transaction, failure.value)
            return None
        log.failure("SIP: error handling {method} from {peer}", failure,
                    method=getattr(transaction.request, "method", "a request"), peer=str(flow))
        self._respond(transaction, 500)
        return None

    # -- responses ------------------------------------------------------------

    def _response(self, request, status, reason=None, headers=(), body=b"", to_tag=None, flow=None):
        response = Response(status, reason or "")
        h = request.headers
        fields = response.headers._fields  # (keys as Headers keeps them: lower case)
        vias = h.get_all("via")
        if vias:
            fields.append(("via", self._top_via_back(request, vias[0], flow)))
            for via in vias[1:]:
                fields.append(("via", via))
        fields.append(("from", h.get("from", "")))
        to = h.get("to", "")
        if status > 100 and to:
            try:
                parsed = request.to_()
            except SipError:
                parsed = None
            if parsed is not None and parsed.tag is None:
                to = f"{to};tag={to_tag or self._tag_for(request)}"
        fields.append(("to", to))
        fields.append(("call-id", h.get("call-id", "")))
        fields.append(("cseq", h.get("cseq", "")))
        for name, value in headers:
            response.headers.add(name, value)
        fields.append(("server", USER_AGENT))
        response.body = body
        return response

    @staticmethod
    def _top_via_back(request, raw, flow):
        """
        The top Via of a response: as the request had it, with ``received``
        when the source address differs from its host and ``rport`` filled
        in when asked for (RFC 3261 18.2.1, RFC 3581).
        """
        top = request.top_via()
        if flow is None:
            return str(top)
        host, port = flow.peer
        rport = received = False
        bare_rport = False
        for name, value in top.params:
            if name == "rport":
                rport, bare_rport = True, value is None
            elif name == "received":
                received = True
        if bare_rport and not received and raw.count("rport") == 1 and _RPORT.search(raw) is not None:
            # The usual case (";rport" with no value): fill it in where it is.
            raw = _RPORT.sub(f";rport={port}", raw)
            return raw if top.host == host else f"{raw};received={host}"
        extra = {}
        if top.host != host:
            extra["received"] = host
        if rport:
            extra["rport"] = str(port)
        return str(top.with_params(**extra)) if extra else str(top)

    @staticmethod
    def _tag_for(request):
        # The same request (a retransmission, or its answer after a challenge) gets the same tag.
        seed = f"{request.headers.get('call-id')}|{request.headers.get('from')}".encode("utf-8", "replace")
        return hashlib.sha1(seed).hexdigest()[:12]

    def _respond(self, transaction, status, reason=None, headers=(), body=b"", to_tag=None):
        if transaction.request is None:
            return None  # answered already (a final response lets go of the request)
        response = self._response(transaction.request, status, reason, headers, body, to_tag, transaction.flow)
        transaction.respond(response)
        return None

    def _respond_error(self, transaction, error: SipError):
        headers = [("Warning", f'399 gateway "{_clean(error.reason)}"')]
        if error.status == 415:
            headers.append(("Accept", "text/plain, text/html, application/im-iscomposing+xml, application/pidf+xml"))
        if error.status == 489:
            headers.append(("Allow-Events", "presence"))
        if error.status == 503:
            headers.append(("Retry-After", "5"))
        reason = f"{REASONS.get(error.status, 'Error')} ({_clean(error.reason)})"
        log.info("SIP: {method} answered {status}: {reason}", method=getattr(transaction.request, "method", "?"),
                 status=error.status, reason=error.reason)
        self._respond(transaction, error.status, reason, headers)

    # -- who is asking --------------------------------------------------------------

    def _local_domain(self, host):
        """Our canonical domain for a host we serve (a domain or one of our addresses), else None."""
        host = host.lower()
        if host in self.domains:
            return host
        if host in self.local_hosts:
            return self.domains[0]
        return None

    def _address(self, uri_text) -> Address:
        """A URI as an address on the bus; our listening addresses map to our first domain."""
        address = self._addresses.get(uri_text)
        if address is not None:
            return address
        uri = parse_uri(uri_text)
        address = adapter.address_of_uri(uri)
        local = self._local_domain(uri.host)
        if local is not None and local != address.domain:
            address = Address(adapter.NETWORK, address.user, local)
        if len(self._addresses) >= 4096:
            self._addresses.clear()
        self._addresses[uri_text] = address
        return address

    def _sender(self, request, transaction, flow, challenge_status=407):
        """
        Fire with the sending `Address` when the request may be trusted:
        our users by digest (or an authenticated registration on this very
        flow), a peer domain's users only from that peer's addresses.
        Fires None after having answered (challenge or refusal).
        """
        sender, trusted = self._trusted_sender(request, flow)
        if trusted:
            return succeed(sender)
        return self._credentials(request, transaction, sender, challenge_status)

    def _credentials(self, request, transaction, sender, status):
        """A peer domain's request by its shared secret, one of our users' by their password (digest both)."""
        peer = self.peers.get(sender.domain)
        if peer is not None:
            return self._authenticate_peer(request, transaction, peer, sender)
        return self._authenticate(request, transaction, sender, status)

    def _trusted_sender(self, request, flow):
        """
        (sender, True) when the request needs no credentials: from a peer
        domain's own addresses, or over a flow one of the sender's
        registrations came over; (sender, False) when it needs digest.
        """
        sender = self._address(request.from_().uri)
        peer = self.peers.get(sender.domain)
        if peer is not None:
            if flow.peer[0] not in peer.sources:
                raise SipError(f"requests from domain {sender.domain} must come from its peer, not {flow.peer[0]}", 403)
            return sender, peer.trust == "source"
        if sender.domain not in self.domains:
            raise SipError(f"domain {sender.domain} is neither ours nor a federation peer", 403)
        if not flow.reliable:
            # A UDP source address proves nothing (anyone can send from it):
            # over UDP our users always answer a digest challenge.
            return sender, False
        key = flow.key
        for binding in self.bindings.get(sender, {}).values():
            if binding.flow.key == key and not binding.removed:
                return sender, True
        return sender, False

    def _authenticate(self, request, transaction, aor, status):
        """Digest (RFC 2617/8760): fire with ``aor`` once credentials for it check out, else answer and fire None."""
        realm = aor.domain
        header = "authorization" if status == 401 else "proxy-authorization"
        credentials = None
        for value in request.headers.get_all(header):
            try:
                scheme, params = parse_auth(value)
            except SipError:
                continue
            if scheme == "digest" and params.get("realm", "").lower() == realm:
                credentials = params
                break
        if credentials is None:
            self._challenge(transaction, status, realm)
            return succeed(None)
        try:
            base, _ = digest.split_algorithm(credentials.get("algorithm", "MD5"))
        except digest.DigestError as e:
            raise SipError(str(e), 400) from None
        if base not in self.algorithms:
            self._challenge(transaction, status, realm)
            return succeed(None)
        user = credentials.get("username", "")
        nonce_state = self.nonces.state(credentials.get("nonce", ""))
        if nonce_state == "invalid":
            self._challenge(transaction, status, realm)
            return succeed(None)
        try:
            handle = Address(adapter.NETWORK, user, realm)
        except Exception:
            raise SipError("bad username in credentials", 400) from None
        scheme = f"{digest.SCHEMES[base]}:{realm}:{handle.user}"
        source = transaction.flow.peer[0]
        allowed = getattr(self.api, "login_allowed", None)
        if allowed is not None and not allowed(handle, source):
            log.warn("SIP: login of {user}@{realm} from {source} throttled", user=user, realm=realm, source=source)
            self.api.audit(handle, "login-failed", source, connector=NAME, reason="throttled")
            self._respond(transaction, 403, "Forbidden (too many failed logins; try again later)",
                          headers=[("Retry-After", "300"), ("Warning", '399 gateway "too many failed logins"')])
            return succeed(None)

        def checked(result):
            identity, ha1 = result
            try:
                ok = ha1 is not None and digest.check(credentials, ha1, request.method, request.body)
            except digest.DigestError as e:
                raise SipError(str(e), 400) from None
            if ok and nonce_state == "stale":
                self._challenge(transaction, status, realm, stale=True)
                return None
            if not ok or not self.nonces.count_ok(credentials["nonce"], credentials.get("nc") if credentials.get("qop") else None):
                log.info("SIP: wrong credentials for {user}@{realm} from {peer}", user=user, realm=realm,
                         peer=str(transaction.flow))
                self.api.login_failed(handle, source, reason="wrong digest credentials")
                self._respond(transaction, 403, "Forbidden (wrong user name or password)",
                              headers=[("Warning", '399 gateway "wrong user name or password"')])
                return None
            owned = [h for h in identity.handles if h == aor]
            if not owned:
                self._respond(transaction, 403, "Forbidden (credentials are not for this address)")
                return None
            return aor

        def unavailable(failure):
            failure.trap(DirectoryUnavailable, LoginThrottled)
            if failure.check(LoginThrottled):
                raise SipError("too many failed logins; try again later", 403)
            raise SipError("the directory is unavailable; try again later", 503)

        return self.api.secret(handle, scheme).addCallbacks(checked, unavailable)

    def _authenticate_peer(self, request, transaction, peer, sender):
        """
        A peer domain's request, signed with the shared secret (digest,
        user name and realm: the peer's domain, in Proxy-Authorization):
        fire with ``sender`` once it checks out; else answer 407 or 403 and
        fire None. A nonce-count must grow, so a replayed request fails.
        """
        realm = peer.domain
        credentials = None
        for value in request.headers.get_all("proxy-authorization"):
            try:
                scheme, params = parse_auth(value)
            except SipError:
                continue
            if scheme == "digest" and params.get("realm", "").lower() == realm:
                credentials = params
                break
        if credentials is None or self.nonces.state(credentials.get("nonce", "")) == "invalid":
            self._challenge(transaction, 407, realm)
            return succeed(None)
        try:
            base, _ = digest.split_algorithm(credentials.get("algorithm", "MD5"))
            ok = (base in self.algorithms and credentials.get("username", "").lower() == realm
                  and digest.check(credentials, digest.ha1(base, credentials["username"], realm, peer.secret),
                                   request.method, request.body))
        except (digest.DigestError, KeyError) as e:
            raise SipError(f"bad credentials: {e}", 400) from None
        if ok and self.nonces.state(credentials["nonce"]) == "stale":
            self._challenge(transaction, 407, realm, stale=True)
            return succeed(None)
        if not ok or not self.nonces.count_ok(credentials["nonce"], credentials.get("nc") if credentials.get("qop")
                                              else None):
            log.warn("SIP: a {method} from peer {domain} ({flow}) was signed wrongly or replayed: refused",
                     method=request.method, domain=realm, flow=str(transaction.flow))
            self._respond(transaction, 403, "Forbidden (wrong peer credentials)",
                          headers=[("Warning", '399 gateway "wrong peer credentials"')])
            return succeed(None)
        return succeed(sender)

    def _challenge(self, transaction, status, realm, stale=False):
        nonce = self.nonces.make()
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        headers = [(name, digest.challenge(realm, nonce, algorithm, stale)) for algorithm in self.algorithms]
        self._respond(transaction, status, headers=headers)

    # -- REGISTER -------------------------------------------------------------------

    def _on_register(self, request, transaction, flow):
        to = request.to_()
        aor = self._address(to.uri)
        if aor.domain not in self.domains:
            raise SipError(f"this registrar serves {', '.join(self.domains)}, not {aor.domain}", 404)
        contacts = request.headers.get_all("contact")
        # Validate before asking for credentials.
        expires_header = request.headers.get("expires")
        if expires_header is not None and not digits(expires_header.strip()):
            raise SipError("Expires is not a number", 400)
        d = self._authenticate(request, transaction, aor, 401)
        return d.addCallback(self._registered, request, transaction, flow, aor, contacts, expires_header)

    def _registered(self, aor, request, transaction, flow, _aor, contacts, expires_header):
        if aor is None:
            return None
        identity_d = self.api.identity_for(aor)
        return identity_d.addCallback(self._apply_register, request, transaction, flow, aor, contacts, expires_header)

    def _apply_register(self, identity, request, transaction, flow, aor, contacts, expires_header):
        if identity is None:
            raise SipError(f"{aor} is not a user here", 404)
        now = self.clock.seconds()
        default = int(expires_header) if expires_header is not None else self.default_expires
        current = self.bindings.setdefault(aor, {})
        if contacts == ["*"]:
            if default != 0:
                raise SipError("Contact: * needs Expires: 0", 400)
            for binding in list(current.values()):
                self._remove_binding(binding, "unregistered")
            self._respond(transaction, 200)
            return None
        changes = []
        for value in contacts:
            contact = parse_name_addr(value)
            if contact.uri == "*":
                raise SipError("Contact: * with other contacts", 400)
            parse_uri(contact.uri)
            expires = contact.param("expires")
            if expires is not None and not digits(expires):
                raise SipError("contact expires is not a number", 400)
            expires = int(expires) if expires is not None else default
            if 0 < expires < self.min_expires:
                self._respond(transaction, 423, headers=[("Min-Expires", str(self.min_expires))])
                return None
            changes.append((contact.uri, min(expires, self.max_expires)))
        adding = {(uri, flow.key) for uri, expires in changes if expires and (uri, flow.key) not in current}
        if len(current) + len(adding) > self.max_bindings:
            raise SipError(f"at most {self.max_bindings} registered contacts per address", 403)
        new = []
        for uri, expires in changes:
            key = (uri, flow.key)
            binding = current.get(key)
            if expires == 0:
                matches = [binding] if binding is not None else [b for b in current.values() if b.contact == uri]
                for b in matches:
                    self._remove_binding(b, "unregistered")
                continue
            if binding is None:
                binding = Binding(aor, uri, flow, identity, now + expires)
                current[key] = binding
                new.append(binding)
            else:
                binding.flow = flow
                binding.expires_at = now + expires
            if binding.timer is not None and binding.timer.active():
                binding.timer.cancel()
            binding.timer = self.clock.callLater(expires, self._expire_binding, binding)
            if isinstance(flow, StreamFlow):
                flow.stream.setTimeout(None)  # a registered connection stays until its binding ends
        if not current:
            self.bindings.pop(aor, None)
        listed = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(round(b.expires_at - now)))}")
            for b in self.bindings.get(aor, {}).values()
        ]
        self._respond(transaction, 200, headers=listed)
        log.info("SIP: {aor} registered {count} contact(s) from {peer}", aor=str(aor), count=len(listed), peer=str(flow))
        for binding in new:
            self._login(binding)
        return None

    def _login(self, binding):
        d = self.api.login(binding.identity, binding.aor, NAME, handler=binding, source=binding.flow.peer[0])

        def logged_in(session):
            binding.session = session
            if binding.removed:
                return self.api.logout(session)
            return session

        d.addCallback(logged_in)
        d.addErrback(lambda f: log.failure("SIP: login of {aor} failed", f, aor=str(binding.aor)))
        return d

    def _expire_binding(self, binding):
        binding.timer = None
        log.info("SIP: registration of {aor} at {contact} expired", aor=str(binding.aor), contact=binding.contact)
        self._remove_binding(binding, "expired")

    def _remove_binding(self, binding, why):
        if binding.removed:
            return None
        binding.removed = True
        if binding.timer is not None and binding.timer.active():
            binding.timer.cancel()
        binding.timer = None
        bindings = self.bindings.get(binding.aor, {})
        if bindings.get(binding.key) is binding:
            del bindings[binding.key]
        if not bindings:
            self.bindings.pop(binding.aor, None)
        if binding.session is not None:
            session, binding.session = binding.session, None
            log.info("SIP: {aor} logged out ({why})", aor=str(binding.aor), why=why)
            return self.api.logout(session)
        return None

    # -- MESSAGE --------------------------------------------------------------------

    def _on_message(self, request, transaction, flow):
        if len(request.body) > self.max_message_size:
            raise SipError(f"message body over {self.max_message_size} bytes", 413)
        recipient = self._recipient(request)
        content = adapter.message_content(request.headers, request.body)
        sender, trusted = self._trusted_sender(request, flow)
        if trusted:  # the common case (a registered client), without a Deferred more
            return self._message_from(sender, content, recipient, transaction)
        d = self._credentials(request, transaction, sender, 407)
        return d.addCallback(self._message_from, content, recipient, transaction)

    def _recipient(self, request):
        recipient = self._address(request.uri)
        if recipient.domain not in self.domains and recipient.domain not in self.peers:
            raise SipError(f"no route to domain {recipient.domain}", 404)
        return recipient

    def _message_from(self, sender, content, recipient, transaction):
        if sender is None:
            return None
        if sender.domain in self.peers and recipient.domain in self.peers:
            raise SipError(f"the gateway is no transit proxy: {sender.domain} to {recipient.domain} is not relayed", 403)
        if content[0] == "typing":
            event = self.api.typing(sender, recipient, content[1])
        else:
            _, text, markup = content
            event = self.api.message(sender, recipient, text, html=markup)
        return self.api.submit(event, origin=self).addCallback(self._answer, transaction, event)

    def _answer(self, outcome, transaction, event):
        status, reason, headers = adapter.outcome_response(outcome)
        if isinstance(event, Typing) and outcome.code in ("offline", "delivery-failed"):
            status, reason, headers = 200, "OK", []  # typing is best effort (RFC 3994)
        self._respond(transaction, status, reason, headers)

    def _request(self, method, ruri, from_addr, to_addr, flow, *, from_tag=None, to_tag=None,
                 call_id=None, cseq=1, headers=(), body=b"", content_type=None):
        """A request to send; its branch is in ``request.branch`` for the transaction."""
        host, port = flow.local() if self.advertise is None else self.advertise
        random = self.transactions.random
        request = Request(method, ruri)
        branch = request.branch = new_branch(random)
        if ":" in host:
            host = f"[{host}]"
        fields = request.headers._fields
        fields.append(("via", f"SIP/2.0/{flow.transport_name} {host}:{port};branch={branch};rport"))
        fields.append(("max-forwards", "70"))
        fields.append(("from", f"<{from_addr}>;tag={from_tag or random.take(6)}"))
        fields.append(("to", f"<{to_addr}>;tag={to_tag}" if to_tag else f"<{to_addr}>"))
        fields.append(("call-id", call_id or f"{random.take(12)}@{host}"))
        fields.append(("cseq", f"{cseq} {method}"))
        fields.append(("user-agent", USER_AGENT))
        for name, value in headers:
            request.headers.add(name, value)
        if content_type:
            fields.append(("content-type", content_type))
        request.body = body
        return request

    def _contact_header(self, flow):
        host, port = flow.local() if self.advertise is None else self.advertise
        transport = flow.transport_name.lower()
        return f"<sip:{host}:{port};transport={transport}>"

    def _send_message(self, event, ruri, flow):
        """A MESSAGE for ``event`` over ``flow``; fires when a 2xx came back, fails otherwise."""
        content_type, body = adapter.event_body(event)
        request = self._request(
            "MESSAGE", ruri, adapter.uri_of(event.sender), adapter.uri_of(event.recipient), flow,
            body=body, content_type=content_type,
        )
        d = self.transactions.request(request, flow, request.branch)
        return d.addCallbacks(self._sent, self._not_sent, callbackArgs=(event,), errbackArgs=(event,))

    @staticmethod
    def _sent(response, event):
        if 200 <= response.status < 300:
            return None
        raise DeliveryError(f"{event.recipient} answered {response.status} {response.reason}")

    @staticmethod
    def _not_sent(failure, event):
        if failure.check(TransactionTimeout):
            raise DeliveryError(f"{event.recipient} did not answer") from failure.value
        if failure.check(TransportGone):
            raise DeliveryError(f"connection to {event.recipient} closed")
        return failure

    # -- federation -------------------------------------------------------------

    def _deliver_to_peer(self, event):
        peer = self.peers.get(event.recipient.domain)
        if peer is None:
            return fail(DeliveryError(f"{event.recipient.domain} is not a peer domain"))
        if not isinstance(event, (Message, Typing)):
            return None
        if event.sender.network == adapter.NETWORK and event.sender.domain in self.peers:
            # Reached through an alias of ours: still one peer domain to another.
            return fail(DeliveryError(f"the gateway is no transit proxy: {event.sender.domain} to "
                                      f"{event.recipient.domain} is not relayed"))
        d = self._peer_flow(peer)
        return d.addCallback(lambda flow: self._send_message(event, adapter.uri_of(event.recipient), flow))

    def _peer_flow(self, peer) -> Deferred:
        if peer.transport == "udp":
            if not self.udp_endpoints:
                return fail(DeliveryError("no UDP listener to reach peers from"))
            return succeed(self.udp_endpoints[0].flow_for((peer.host, peer.port)))
        existing = self.peer_flows.get(peer.domain)
        if isinstance(existing, StreamFlow) and existing.alive:
            return succeed(existing)
        if isinstance(existing, list):
            waiting = Deferred()
            existing.append(waiting)
            return waiting
        waiters = []
        self.peer_flows[peer.domain] = waiters
        endpoint = endpoints.HostnameEndpoint(self.api.reactor, peer.host, peer.port)
        if peer.transport == "tls":
            endpoint = endpoints.wrapClientTLS(_tls_options(peer), endpoint)
        factory = SipStreamFactory(self, self.limiter, self.max_datagram, 0, self.clock, tls=peer.transport == "tls")
        d = endpoint.connect(factory)

        def connected(stream):
            flow = stream.flow
            self.peer_flows[peer.domain] = flow
            for waiter in waiters:
                waiter.callback(flow)
            return flow

        def failed(failure):
            self.peer_flows.pop(peer.domain, None)
            for waiter in waiters:
                waiter.errback(DeliveryError(f"cannot connect to peer {peer.domain}: {failure.getErrorMessage()}"))
            raise DeliveryError(f"cannot connect to peer {peer.domain}: {failure.getErrorMessage()}")

        return d.addCallbacks(connected, failed)

    # -- presence: SUBSCRIBE / NOTIFY / PUBLISH ----------------------------------

    def _on_subscribe(self, request, transaction, flow):
        event = (request.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "presence":
            raise SipError(f"event package {event or '(none)'!r} is not supported", 489)
        expires_header = request.headers.get("expires")
        if expires_header is not None and not digits(expires_header.strip()):
            raise SipError("Expires is not a number", 400)
        to = request.to_()
        if to.tag is not None:
            return self._resubscribe(request, transaction, flow, to.tag, expires_header)
        target = self._address(request.uri)
        if target.domain not in self.domains and target.domain not in self.peers:
            raise SipError(f"presence of {target.domain} users is not served here", 404)
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._subscribed, request, transaction, flow, target, expires_header)

    def _subscribed(self, watcher, request, transaction, flow, target, expires_header):
        if watcher is None:
            return None
        if target.domain in self.peers and watcher.domain in self.peers:
            raise SipError(f"the gateway is no transit proxy: presence of {target.domain} users is not relayed "
                           f"to {watcher.domain}", 403)
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        frm = request.from_()
        contact = request.headers.get_all("contact")
        remote = parse_name_addr(contact[0]).uri if contact else frm.uri
        local_tag = self._tag_for(request)
        sub = Subscription(
            watcher=watcher, target=target, call_id=request.call_id, remote_tag=frm.tag or "",
            local_tag=local_tag, remote_contact=remote, flow=flow,
            expires_at=self.clock.seconds() + expires, foreign=watcher.domain in self.peers,
        )
        self._respond(transaction, 200, headers=[("Expires", str(expires)), ("Contact", self._contact_header(flow))],
                      to_tag=local_tag)
        if expires == 0:
            self._notify(sub, None, terminated="timeout")
            return None
        old = self.subscriptions.get(sub.key)
        if old is not None:
            self._drop_subscription(old)
        elif self._watching.get(watcher, 0) >= self.max_subscriptions:
            self._notify(sub, None, terminated="rejected")
            log.warn("SIP: {watcher} has {n} subscriptions already; refused one more", watcher=str(watcher),
                     n=self.max_subscriptions)
            return None
        self._add_subscription(sub)
        if target.domain in self.peers:
            self._upstream(watcher, target, expires)
        sub.timer = self.clock.callLater(expires, self._expire_subscription, sub)
        log.info("SIP: {watcher} subscribed to {target} for {expires}s", watcher=str(watcher), target=str(target),
                 expires=expires)
        return self._initial_state(sub)

    def _resubscribe(self, request, transaction, flow, to_tag, expires_header):
        frm = request.from_()
        sub = self.subscriptions.get((request.call_id, frm.tag or "", to_tag))
        if sub is None:
            raise SipError("no such subscription", 481)
        if flow.key == sub.flow.key:
            return self._refresh(sub, transaction, flow, expires_header)
        # From elsewhere (a new connection, another address): only the subscriber may refresh
        # or end it, so it proves who it is as for a new subscription.
        d = self._sender(request, transaction, flow)

        def checked(sender):
            if sender is None:
                return None  # challenged or refused already
            if sender != sub.watcher:
                raise SipError("only the subscriber may refresh or end this subscription", 403)
            if self.subscriptions.get(sub.key) is not sub:
                raise SipError("no such subscription", 481)
            return self._refresh(sub, transaction, flow, expires_header)

        return d.addCallback(checked)

    def _refresh(self, sub, transaction, flow, expires_header):
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        self._respond(transaction, 200, headers=[("Expires", str(expires)), ("Contact", self._contact_header(flow))])
        sub.flow = flow
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        if expires == 0:
            self._drop_subscription(sub)
            self._notify(sub, sub.last_state, terminated="timeout")
            return None
        sub.expires_at = self.clock.seconds() + expires
        sub.timer = self.clock.callLater(expires, self._expire_subscription, sub)
        self._notify(sub, sub.last_state or (PresenceStatus.OFFLINE, ""), force=True)
        if sub.target.domain in self.peers:
            self._upstream(sub.watcher, sub.target, expires)
        return None

    def _initial_state(self, sub):
        """The first NOTIFY: the target's presence as the policy (kind presence) lets the watcher see it."""
        if self.subscribe_adds_contact and not sub.foreign:
            self._add_contact(sub.watcher, sub.target)

        def with_identity(identity):
            if identity is None:
                state = (PresenceStatus.OFFLINE, "")
            else:
                status, note = self.api.presence_of(identity.id)
                state = (PresenceStatus(status), note)
            return self._show(sub.watcher, sub.target, state, initial=True)

        return self.api.identity_for(sub.target).addCallback(with_identity)

    def _add_contact(self, watcher, target):
        def got(identity):
            if identity is None:
                return None
            return self.api.contacts(identity.id).addCallback(add, identity)

        def add(contacts, identity):
            if any(c.address == target for c in contacts):
                return None
            return self.api.set_contacts(identity.id, list(contacts) + [Contact(target, name=target.user)])

        self.api.identity_for(watcher).addCallback(got).addErrback(
            lambda f: log.failure("SIP: could not add {target} to {watcher}'s contacts", f,
                                  target=str(target), watcher=str(watcher)))

    def _notify_watcher(self, watcher, presence):
        """A presence event for ``watcher``: NOTIFY its subscriptions to the sender."""
        if watcher is None:
            return
        state = (PresenceStatus(presence.status), presence.note)
        for sub in list(self._by_pair.get((watcher, presence.sender), {}).values()):
            self._notify(sub, state)

    def _notify(self, sub, state, terminated=None, force=False):
        if state is not None and state == sub.last_state and not force and terminated is None:
            return None
        if state is not None:
            sub.last_state = state
        flow = sub.flow
        if not flow.alive:
            self._drop_subscription(sub)
            return None
        sub.cseq += 1
        remaining = max(0, int(round(sub.expires_at - self.clock.seconds())))
        if terminated:
            sub_state = f"terminated;reason={terminated}"
        else:
            sub_state = f"active;expires={remaining}"
        status, note = state or (PresenceStatus.OFFLINE, "")
        body = adapter.presence_body(adapter.uri_of(sub.target), status, note)
        request = self._request(
            "NOTIFY", sub.remote_contact, adapter.uri_of(sub.target), adapter.uri_of(sub.watcher), flow,
            from_tag=sub.local_tag, to_tag=sub.remote_tag or None, call_id=sub.call_id, cseq=sub.cseq,
            headers=[("Event", "presence"), ("Subscription-State", sub_state), ("Contact", self._contact_header(flow))],
            body=body, content_type="application/pidf+xml",
        )
        d = self.transactions.request(request, flow, request.branch)

        def answered(response):
            if response.status in (481, 404, 403, 489) and self.subscriptions.get(sub.key) is sub:
                log.info("SIP: subscription of {watcher} to {target} ended by a {status} to NOTIFY",
                         watcher=str(sub.watcher), target=str(sub.target), status=response.status)
                self._drop_subscription(sub)

        def lost(failure):
            if self.subscriptions.get(sub.key) is sub:
                log.info("SIP: NOTIFY to {watcher} failed ({why}); subscription dropped",
                         watcher=str(sub.watcher), why=failure.getErrorMessage())
                self._drop_subscription(sub)

        d.addCallbacks(answered, lost)
        return None

    def _expire_subscription(self, sub):
        sub.timer = None
        if self.subscriptions.get(sub.key) is sub:
            self._drop_subscription(sub)
            self._notify(sub, sub.last_state, terminated="timeout")

    def _drop_subscription(self, sub):
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None
        if self.subscriptions.get(sub.key) is sub:
            del self.subscriptions[sub.key]
            for index, key in ((self._by_pair, (sub.watcher, sub.target)), (self._by_target, sub.target)):
                entries = index.get(key)
                if entries is not None:
                    entries.pop(sub.key, None)
                    if not entries:
                        del index[key]
            left = self._watching.get(sub.watcher, 1) - 1
            if left:
                self._watching[sub.watcher] = left
            else:
                self._watching.pop(sub.watcher, None)
            pair = (sub.watcher, sub.target)
            if pair in self.upstreams and pair not in self._by_pair and self.running:
                self._upstream(sub.watcher, sub.target, 0)  # the last local watcher left

    def _upstream(self, watcher, target, expires):
        """Subscribe (or refresh, or end with 0) at the peer serving ``target``, for ``watcher``."""
        pair = (watcher, target)
        upstream = self.upstreams.get(pair)
        if upstream is None:
            if expires == 0:
                return
            random = self.transactions.random
            upstream = Upstream(watcher, target, f"{random.take(12)}@gateway", random.take(6))
            self.upstreams[pair] = upstream
        if expires == 0:
            del self.upstreams[pair]
        upstream.cseq += 1
        cseq = upstream.cseq

        def send(flow):
            request = self._request(
                "SUBSCRIBE", adapter.uri_of(target), adapter.uri_of(watcher), adapter.uri_of(target), flow,
                from_tag=upstream.local_tag, to_tag=upstream.remote_tag, call_id=upstream.call_id, cseq=cseq,
                headers=[("Event", "presence"), ("Accept", "application/pidf+xml"), ("Expires", str(expires)),
                         ("Contact", self._contact_header(flow))],
            )
            return self.transactions.request(request, flow, request.branch)

        def answered(response):
            if 200 <= response.status < 300:
                if upstream.remote_tag is None:
                    upstream.remote_tag = parse_name_addr(response.headers.get("to", "")).tag
                return
            log.info("SIP: {peer} refused our subscription to {target} for {watcher}: {status}",
                     peer=target.domain, target=str(target), watcher=str(watcher), status=response.status)
            if self.upstreams.get(pair) is upstream:
                del self.upstreams[pair]

        def failed(failure):
            log.info("SIP: subscription to {target} at its peer failed: {why}", target=str(target),
                     why=failure.getErrorMessage())
            if self.upstreams.get(pair) is upstream:
                del self.upstreams[pair]

        self._peer_flow(self.peers[target.domain]).addCallback(send).addCallbacks(answered, failed)

    def _add_subscription(self, sub):
        self.subscriptions[sub.key] = sub
        self._by_pair.setdefault((sub.watcher, sub.target), {})[sub.key] = sub
        self._by_target.setdefault(sub.target, {})[sub.key] = sub
        self._watching[sub.watcher] = self._watching.get(sub.watcher, 0) + 1

    def _on_notify(self, request, transaction, flow):
        """NOTIFY from a peer domain about one of its users, for one of ours."""
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._notified, request, transaction)

    def _notified(self, sender, request, transaction):
        if sender is None:
            return None
        if sender.domain not in self.peers:
            raise SipError("NOTIFY is only accepted from peer domains", 403)
        watcher = self._address(request.to_().uri)
        upstream = self.upstreams.get((watcher, sender))
        if upstream is None or upstream.call_id != request.call_id:
            raise SipError("no such subscription", 481)
        if (request.headers.get("subscription-state") or "").strip().lower().startswith("terminated"):
            del self.upstreams[(watcher, sender)]
        doc = self._pidf(request)
        status = adapter.status_of(doc) if doc is not None else PresenceStatus.OFFLINE
        self._respond(transaction, 200)
        return self._show(watcher, sender, (status, doc.note if doc else ""))

    @staticmethod
    def _pidf(request):
        if not request.body:
            return None
        media, _ = adapter.content_type(request.headers.get("content-type", ""))
        if media != "application/pidf+xml":
            raise SipError(f"presence body must be application/pidf+xml, not {media!r}", 415)
        try:
            return parse_pidf(request.body)
        except PidfError as e:
            raise SipError(f"bad PIDF: {e}", 400) from None

    def _on_publish(self, request, transaction, flow):
        event = (request.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "presence":
            raise SipError(f"event package {event or '(none)'!r} is not supported", 489)
        if len(request.body) > self.max_message_size:
            raise SipError(f"presence document over {self.max_message_size} bytes", 413)
        expires_header = request.headers.get("expires")
        if expires_header is not None and not digits(expires_header.strip()):
            raise SipError("Expires is not a number", 400)
        doc = self._pidf(request)
        target = self._address(request.uri)
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._published, request, transaction, target, doc, expires_header)

    def _published(self, sender, request, transaction, target, doc, expires_header):
        if sender is None:
            return None
        if sender != target:
            raise SipError("you may only publish your own presence", 403)
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        etag = request.headers.get("sip-if-match")
        publication = None
        if etag is not None:
            publication = self.publications.get(etag)
            if publication is None or publication.aor != sender:
                raise SipError("no such publication", 412)
        elif doc is None:
            raise SipError("initial PUBLISH without a body", 400)
        if publication is not None and publication.timer is not None and publication.timer.active():
            publication.timer.cancel()
        if expires == 0:
            if publication is not None:
                self.publications.pop(publication.etag, None)
            self._respond(transaction, 200, headers=[("Expires", "0")])
            self._apply_presence(sender, PresenceStatus.AVAILABLE, "")
            return None
        if publication is None:
            mine = [p for p in self.publications.values() if p.aor == sender]
            for stale in mine[: max(0, len(mine) - 4)]:  # keep a few per person: the newest win
                self.publications.pop(stale.etag, None)
                if stale.timer is not None and stale.timer.active():
                    stale.timer.cancel()
            publication = Publication(sender, os.urandom(8).hex(), PresenceStatus.AVAILABLE, "")
            self.publications[publication.etag] = publication
        if doc is not None:
            publication.status, publication.note = adapter.status_of(doc), doc.note
        publication.timer = self.clock.callLater(expires, self._expire_publication, publication)
        self._respond(transaction, 200, headers=[("SIP-ETag", publication.etag), ("Expires", str(expires))])
        self._apply_presence(sender, publication.status, publication.note)
        return None

    def _expire_publication(self, publication):
        publication.timer = None
        if self.publications.pop(publication.etag, None) is not None:
            self._apply_presence(publication.aor, PresenceStatus.AVAILABLE, "")

    def _apply_presence(self, aor, status, note):
        for binding in list(self.bindings.get(aor, {}).values()):
            session = binding.session
            if session is not None and (session.status != status or session.note != note):
                self.api.set_presence(session, status, note)

    # -- the rest -------------------------------------------------------------------

    def _on_options(self, request, transaction, flow):
        self._respond(transaction, 200, headers=[
            ("Allow", ALLOW), ("Accept", "text/plain, text/html, application/im-iscomposing+xml, application/pidf+xml"),
            ("Allow-Events", "presence"),
        ])

    def _on_invite(self, request, transaction, flow):
        # No media here: say clearly which methods there are (RFC 3261 21.4.6).
        self._respond(transaction, 405, "Method Not Allowed (no calls: instant messages and presence only)",
                      headers=[("Allow", ALLOW)])

    def _on_cancel(self, request, transaction, flow):
        self._respond(transaction, 481)

    def _on_bye(self, request, transaction, flow):
        self._respond(transaction, 481)


def _grow_receive_buffer(port, size=4 * 1024 * 1024):
    """A bigger kernel buffer for bursts of datagrams (as SIP servers do); best effort."""
    import socket

    sock = getattr(port, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:  # pragma: no cover - limited by the system
            pass


def _config_dir(api):
    try:
        path = api.config_path()
    except Exception:  # a core built without a config file (tests)
        return ""
    return os.path.dirname(os.path.abspath(path)) if path else ""


def _tls_options(peer):
    """Client TLS toward a peer: its certificate must be valid for its host, from ``ca`` or the system's roots."""
    from twisted.internet import ssl

    if peer.ca:
        with open(peer.ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(peer.host, trustRoot=trust)
    return ssl.optionsForClientTLS(peer.host)


def _clean(text):
    return "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in str(text))[:200]


@hookimpl
def gateway_register_connectors(api):
    api.register_connector(NAME, SipConnector)
