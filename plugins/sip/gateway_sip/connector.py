"""The SIP/SIMPLE connector: registrar with digest, MESSAGE, presence (SUBSCRIBE/NOTIFY/PUBLISH) and peer domains."""

from __future__ import annotations

import hashlib
import ipaddress
import os

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.plugin import (
    ChatEvent,
    ConfigError,
    IConnector,
    Presence,
    PresenceStatus,
    LISTENER_OPTIONS,
    Option,
    Typing,
    hookimpl,
    read_options,
)

from gateway_sip import adapter, digest
from gateway_sip.auth import Authentication
from gateway_sip.codec import REASONS, Request, Response, SipError, digits, validate_request
from gateway_sip.common import ALLOW, KNOWN_METHODS, NAME, RPORT as _RPORT, USER_AGENT, log
from gateway_sip.presence import PresenceServer
from gateway_sip.protocol import RateLimiter, SipDatagramProtocol, SipStreamFactory, StreamFlow, deliver_error
from gateway_sip.records import DeliveryError, Peer, _Waiting
from gateway_sip.federation import Federation
from gateway_sip.registrar import Registrar
from gateway_sip.rooms import PageModeRooms
from gateway_sip.transaction import Deadlines, TransactionLayer, TransactionTimeout, TransportGone, new_branch


def _host_port(text):
    """``(host, port)`` of ``"HOST:PORT"`` text (IPv6 hosts in brackets), or None."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not digits(port) or not host:
        return None
    return host.strip("[]"), int(port)


def _domain_names(value):
    """An `Option` check: a non-empty list of domain names."""
    return None if value and all(isinstance(d, str) and d for d in value) else "a non-empty list of domain names"


def _addresses(value):
    """An `Option` check: a list of ``"HOST:PORT"``."""
    return None if all(_host_port(text) for text in value) else 'a list of "HOST:PORT"'


def _address(value):
    """An `Option` check: ``"HOST:PORT"``, or empty."""
    return None if not value or _host_port(value) else '"HOST:PORT" (or "")'


def _algorithms(value):
    """An `Option` check: digest algorithms this connector knows."""
    return None if all(a in digest.HASHES for a in value) else f"a list of {', '.join(digest.HASHES)}"


# The keys of ``[connectors.sip]``. MD5 comes first in ``algorithms``: SIPp 3.6 answers only the
# topmost challenge and knows only MD5 (RFC 8760 wants clients to pick the first they support);
# list "SHA-256" first where every client can.
OPTIONS = (
    Option("domains", list, ["localhost"], "our SIP domains; the realm of digest authentication",
           check=_domain_names),
    Option("udp", list, ["127.0.0.1:5060"], '"HOST:PORT" UDP listeners', check=_addresses),
    Option("listen", list, ["tcp:5060:interface=127.0.0.1"],
           "TCP and TLS listeners: endpoint strings (tcp:..., ssl:... for TLS)"),
    Option("advertise", str, "",
           '"HOST:PORT" put in our Via and Contact when the listening address is not reachable ("": that one)',
           check=_address),
    Option("max_message_size", int, 8192, "bytes of a MESSAGE or PUBLISH body; a larger one gets 413"),
    Option("max_datagram", int, 65507,
           "bytes of the largest message on any transport; a TCP stream with a larger one is closed"),
    Option("rate", float, 50.0, "requests per second per source address and port (a token bucket; over it: "
           "503 with Retry-After; peers are exempt; 0 disables)"),
    Option("burst", float, 100.0, "requests a source may send at once (the size of its token bucket)"),
    Option("idle_timeout", float, 300.0,
           "seconds a TCP/TLS connection that carries no registration may stay idle (0: no limit)"),
    Option("min_expires", int, 60, "shortest registration in seconds; a shorter one gets 423"),
    Option("max_expires", int, 3600, "longest registration or subscription in seconds (longer is cut down)"),
    Option("default_expires", int, 3600, "seconds a registration or subscription lasts when it does not say"),
    Option("nonce_lifetime", float, 300.0,
           "seconds a digest nonce is good for; an older one with right credentials is challenged with stale=true"),
    Option("algorithms", list, ["MD5", "SHA-256"], "the digest challenges offered, in this order",
           check=_algorithms),
    Option("subscribe_adds_contact", bool, True,
           "a SUBSCRIBE puts the target in the person's contact list, so the gateway tells them about changes"),
    Option("delivery_timeout", float, 8.0,
           "seconds a sender waits for a client's answer before the message is held for later "
           "(0: until its transaction times out)"),
    Option("max_bindings", int, 10, "registered contacts per address"),
    Option("max_subscriptions", int, 500, "subscriptions per watcher"),
    Option("t1", float, 0.5, "SIP timer T1 in seconds (RFC 3261): the first retransmission interval over UDP"),
    Option("trace", bool, False, "log every message sent and received"),
    Option("room_domain", str, "", "rooms in page mode, sip:ROOM@ROOM_DOMAIN; empty: conference. and the first "
           "of domains; \"-\": no rooms"),
    Option("peers", dict, {}, "other SIP domains, a table each: host, port, transport, sources, ca, secret or "
           "secret_file, trust (see below)"),
) + LISTENER_OPTIONS


def _listener_transport(description: str) -> bool:
    """True when an endpoint string is TLS."""
    return description.split(":", 1)[0].lower() in ("ssl", "tls")


@implementer(IConnector)
class SipConnector(Authentication, Registrar, PresenceServer, Federation, PageModeRooms, service.MultiService):
    """
    ``[connectors.sip]``: its keys are declared in `OPTIONS` (the README's
    reference is generated from them); ``peers`` is checked here.
    """

    name = NAME
    networks = (adapter.NETWORK,)

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        self.clock = api.clock
        config = read_options(NAME, config, OPTIONS)  # as the core hands it over: checked, defaults filled in
        self.domains = [d.lower() for d in config["domains"]]
        room_domain = config["room_domain"].strip().lower()
        self.room_domain = None if room_domain == "-" else (room_domain or f"conference.{self.domains[0]}")
        self.udp = config["udp"]
        self.udp_addresses = [_host_port(text) for text in self.udp]
        self.listen = config["listen"]
        self.listen_options = api.listener_options(NAME, config)
        self.max_message_size = config["max_message_size"]
        self.max_datagram = config["max_datagram"]
        self.rate = config["rate"]
        self.burst = config["burst"]
        self.idle_timeout = config["idle_timeout"]
        self.min_expires = config["min_expires"]
        self.max_expires = config["max_expires"]
        self.default_expires = config["default_expires"]
        self.nonce_lifetime = config["nonce_lifetime"]
        self.algorithms = config["algorithms"]
        self.subscribe_adds_contact = config["subscribe_adds_contact"]
        self.advertise = _host_port(config["advertise"]) if config["advertise"] else None
        t1 = config["t1"]
        self.trace = config["trace"]
        # How long the sender waits for a client's answer before the bus hears "failed" (the
        # transaction goes on; a client that never answers loses its registration at Timer F).
        self.delivery_timeout = config["delivery_timeout"]
        # Bounds on what one person can make the gateway remember.
        self.max_bindings = config["max_bindings"]
        self.max_subscriptions = config["max_subscriptions"]
        self.peers = self._peers(config["peers"], _config_dir(api))
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
        if isinstance(event, ChatEvent) and event.action != "invite":
            return self.deliver_room(event, session)  # gateway_sip.rooms
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

    def disconnect(self, session, reason):
        """
        End ``session`` (its node is drained): its registration is removed.
        SIP cannot tell a client so; it finds out at its next refresh,
        which a drained node answers 503 (try another server, or later).
        """
        binding = session.handler
        if binding is not None:
            self._remove_binding(binding, reason)

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

    # -- MESSAGE --------------------------------------------------------------------

    def _on_message(self, request, transaction, flow):
        if len(request.body) > self.max_message_size:
            raise SipError(f"message body over {self.max_message_size} bytes", 413)
        room = self.room_of(self._address(request.uri)) if self.room_domain else None
        if room is not None:
            return self._on_room_message(request, transaction, flow, room)  # gateway_sip.rooms
        recipient = self._recipient(request)
        content = adapter.message_content(request.headers, request.body)
        sender, trusted = self._trusted_sender(request, flow)
        if trusted:  # the common case (a registered client), without a Deferred more
            return self._message_from(sender, content, recipient, transaction)
        d = self._credentials(request, transaction, sender, 407)
        return d.addCallback(self._message_from, content, recipient, transaction)

    # -- INVITE: file offers (RFC 5547) are decided; no session is ever set up ----------------

    def _on_invite(self, request, transaction, flow):
        files = adapter.sdp_files(request.headers, request.body)
        if not files:
            # No media here: say clearly which methods there are (RFC 3261 21.4.6).
            return self._respond(transaction, 405, "Method Not Allowed (no calls: instant messages and presence only)",
                                 headers=[("Allow", ALLOW)])
        recipient = self._recipient(request)
        sender, trusted = self._trusted_sender(request, flow)
        if trusted:
            return self._offer_from(sender, files, recipient, transaction)
        d = self._credentials(request, transaction, sender, 407)
        return d.addCallback(self._offer_from, files, recipient, transaction)

    def _offer_from(self, sender, files, recipient, transaction):
        """A file offer of an INVITE, as one `FileOffer` naming every file, down the path."""
        if sender is None:
            return None
        if sender.domain in self.peers and recipient.domain in self.peers:
            raise SipError(f"the gateway is no transit proxy: {sender.domain} to {recipient.domain} is not relayed", 403)
        name = ", ".join(f.name or "unnamed" for f in files)[:256]
        text = " ".join(([f"asks for {f.name or 'a file'}." for f in files if f.pull])
                        + [f.title for f in files if f.title])
        event = self.api.file_offer(sender, recipient, name, sum(f.size for f in files), text,
                                    transfer="sip:" + (transaction.request.headers.get("call-id") or "")[:120])
        if self.api.capturing:
            self.api.capture(event.id, "received", sender.network, transaction.request.to_bytes(), ("reserialized",))
        return self.api.submit(event, origin=self).addCallback(self._answer_offer, transaction)

    def _answer_offer(self, outcome, transaction):
        if outcome.rejected:
            status, reason, headers = adapter.outcome_response(outcome)
        else:
            status, reason = 488, "Not Acceptable Here"
            headers = [("Warning", '399 gateway "the recipient was shown the offer; this gateway carries no files"')]
        self._respond(transaction, status, reason, headers)

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
            if self.api.capturing:
                # Serialized again from the parsed request: header names may be spelled otherwise.
                self.api.capture(event.id, "received", sender.network, transaction.request.to_bytes(),
                                 ("reserialized",))
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
        if self.api.capturing and event.kind in ("im", "file", "chat"):
            self.api.capture(event.id, "sent", event.recipient.network, request.to_bytes(),
                             ["file-not-transferred"] if event.kind == "file" and not event.url else [])
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

    # -- the rest -------------------------------------------------------------------

    def _on_options(self, request, transaction, flow):
        self._respond(transaction, 200, headers=[
            ("Allow", ALLOW), ("Accept", "text/plain, text/html, application/im-iscomposing+xml, application/pidf+xml"),
            ("Allow-Events", "presence"),
        ])

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


def _clean(text):
    return "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in str(text))[:200]


@hookimpl
def gateway_register_connectors(api):
    api.register_connector(NAME, SipConnector, options=OPTIONS)
