"""The ``[connectors.xmpp]`` service: c2s listeners, sessions, stanza handling, component link, hookimpl."""

from __future__ import annotations

import os
import time

import attrs

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from gateway.plugin import (
    ChatEvent,
    ConfigError,
    Contact,
    FileOffer,
    IConnector,
    LISTENER_OPTIONS,
    Message,
    Option,
    Presence,
    PresenceStatus,
    Typing,
    hookimpl,
    positive,
    read_options,
)

from gateway_xmpp import adapter
from gateway_xmpp.adapter import NETWORK, Domains, parse_jid
from gateway_xmpp.codec import Limits, escape_attr, escape_text
from gateway_xmpp.iq import NS_ROSTER, IqHandlers
from gateway_xmpp.protocol import C2SStream, StreamSettings

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")


def _domain(value):
    """``domain`` as it is used: stripped, lower case."""
    return value.strip().lower()


def _domain_name(value):
    """An `Option` check: a domain name (no ``@`` or ``/``)."""
    domain = _domain(value)
    return None if domain and "@" not in domain and "/" not in domain else "a domain name"


def _mechanisms(value):
    """An `Option` check: SASL mechanisms this connector knows."""
    return None if all(m in MECHANISMS for m in value) else f"a list of {', '.join(MECHANISMS)}"


# The keys of ``[connectors.xmpp]``; ``listen`` entries, ``component`` and ``s2s`` are checked
# by the connector, which knows their keys. ``require_tls`` and ``mechanisms`` default to None:
# unset, they follow the certificate and the directory.
OPTIONS = (
    Option("domain", str, "localhost", "the XMPP domain the gateway serves (alice@DOMAIN)", check=_domain_name),
    Option("listen", list, ["tcp:5222:interface=127.0.0.1"],
           "c2s listeners: endpoint strings, or tables {endpoint, require_tls}"),
    Option("tls_certificate", str, "", "PEM file of the domain's certificate; STARTTLS is offered when set"),
    Option("tls_key", str, "", "PEM file of its private key (when not in tls_certificate)"),
    Option("require_tls", bool, None,
           "clients must STARTTLS before they log in; unset: true when tls_certificate is set, and a "
           "listener reachable from other hosts needs a certificate"),
    Option("mechanisms", list, None,
           f"SASL mechanisms offered, of {', '.join(MECHANISMS)}; unset: all, or only PLAIN when the directory "
           "keeps SCRAM keys only for people who logged in before (as with LDAP)", check=_mechanisms),
    Option("idle_timeout", float, 600.0, "seconds a client may stay silent before its stream is closed",
           check=positive),
    Option("login_timeout", float, 30.0, "seconds a client has to log in", check=positive),
    Option("rate", float, 500.0, "stanzas per second per stream", check=positive),
    Option("burst", float, 1000.0, "stanzas a stream may send at once", check=positive),
    Option("max_stanza_size", int, 262144, "bytes of one stanza", check=positive),
    Option("max_depth", int, 24, "nesting depth of elements in a stanza", check=positive),
    Option("max_attributes", int, 32, "attributes of one element", check=positive),
    Option("muc_domain", str, "",
           "the domain of rooms (XEP-0045), ROOM@MUC_DOMAIN; empty: conference.DOMAIN; \"-\": no rooms"),
    Option("component", dict, {},
           "attach to an XMPP server as an XEP-0114 component: {host, port, domain, secret, remote_domains, "
           "reconnect, tls, ca, server_name} (see Component)"),
    Option("s2s", dict, {},
           "server-to-server federation with dialback: {listen, peers, secret, idle_timeout, max_queued, tls, ca} "
           "(see Federation)"),
) + LISTENER_OPTIONS


class _StreamFactory(protocol.Factory):
    """Builds c2s streams; a connection over the listener's limits gets a stream error first."""

    api = None  # the connector's, for where a node of a cluster that refuses sends the client

    def refusal(self, reason):
        error = ""
        if reason in ("node-draining", "node-full"):
            # A node of a cluster that takes no more logins: to another node (RFC 6120 4.9.3.19).
            target = self.api.placement("xmpp") if self.api is not None else None
            if target is not None:
                error = f"<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{escape_text(target)}" \
                        "</see-other-host>"
            else:
                error = "<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" if reason == "node-draining" \
                    else "<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            text = "this node takes no new logins; connect to another"
        else:
            condition = "resource-constraint" if reason == "too-many-connections" else "policy-violation"
            error = f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            text = "too many connections"
        return (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
            f"<stream:error>{error}"
            f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text>"
            "</stream:error></stream:stream>"
        ).encode()


def _loopback(description: str) -> bool:
    """True for an endpoint string that listens on loopback only."""
    return any(f"interface={host}" in description for host in ("127.0.0.1", "localhost", "\\:\\:1", "::1"))


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@implementer(IConnector)
class XmppConnector(IqHandlers, service.MultiService):
    """
    XMPP for the gateway. Its config keys are declared in `OPTIONS` (the
    README's reference is generated from them); the nested ones:

    ``listen`` entries are endpoint strings or tables ``{endpoint, require_tls}``;
    ``component`` (a table: ``host``, ``port``, ``domain``, ``secret``,
    ``remote_domains``, ``reconnect``; ``tls``, false: direct TLS to the
    server's component port, as ejabberd's ``tls: true`` listener offers,
    its certificate checked for ``server_name`` (the first remote domain)
    against ``ca`` or the system's roots; XEP-0114 itself has no TLS and
    Prosody's component port offers none, so a link in the clear to a host
    that is not loopback is logged as a warning) to attach to an XMPP
    server as an XEP-0114 external component, and ``s2s`` (a table: ``listen``,
    ``peers`` = {domain = "endpoint"}, ``secret``, ``idle_timeout``,
    ``max_queued``: stanzas held per domain while its connection is made
    and verified, 1000; past it delivery fails; ``tls``, true: STARTTLS
    both ways with the connector's certificate, a peer's certificate
    checked against ``ca`` or the system's roots; false only for loopback
    tests) for server-to-server federation with dialback.
    """

    name = "xmpp"
    networks = (NETWORK,)
    log = Logger()

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        # Checked, defaults filled in (as the core hands it over, read once already).
        config = read_options("xmpp", config, OPTIONS)
        self.domain = _domain(config["domain"])
        listen = config["listen"]
        self.listen_options = api.listener_options("xmpp", config)
        cert = config["tls_certificate"]
        key = config["tls_key"]
        tls_options = self._tls_options(cert, key, b"xmpp-client") if cert else None
        self._tls_files = (cert, key)
        require_tls = config["require_tls"]
        if require_tls is None:
            require_tls = tls_options is not None
        if require_tls and tls_options is None:
            raise ConfigError(
                "require_tls is true but no tls_certificate is set; set both, or require_tls = false",
                key="connectors.xmpp.require_tls",
            )
        mechanisms = config["mechanisms"]
        if mechanisms is None:
            mechanisms = MECHANISMS
            if not getattr(api, "secrets_complete", True):
                # The directory (LDAP) has SCRAM keys only for people who logged in before with a
                # password: clients prefer SCRAM, so offering it would fail everyone else.
                self.log.info("xmpp: the directory keeps no SCRAM keys for everyone; offering SASL PLAIN only")
                mechanisms = ["PLAIN"]
        limits = Limits(
            stanza_size=config["max_stanza_size"], depth=config["max_depth"], attributes=config["max_attributes"],
        )
        common = dict(
            limits=limits,
            idle_timeout=config["idle_timeout"],
            login_timeout=config["login_timeout"],
            rate=config["rate"],
            burst=config["burst"],
            tls_options=tls_options,
            mechanisms=tuple(mechanisms),
        )
        self.listeners = []  # (endpoint description, StreamSettings)
        for entry in listen:
            if isinstance(entry, str):
                self.listeners.append((entry, StreamSettings(require_tls=require_tls, **common)))
            elif isinstance(entry, dict) and isinstance(entry.get("endpoint"), str):
                unknown = set(entry) - {"endpoint", "require_tls"}
                if unknown:
                    raise ConfigError(f"unknown listener keys {sorted(unknown)}", key="connectors.xmpp.listen")
                req = entry.get("require_tls", require_tls)
                if not isinstance(req, bool) or (req and tls_options is None):
                    raise ConfigError("require_tls must be true/false, and true needs tls_certificate",
                                      key="connectors.xmpp.listen")
                self.listeners.append((entry["endpoint"], StreamSettings(require_tls=req, **common)))
            else:
                raise ConfigError(f"expected an endpoint string or {{endpoint=...}}, got {entry!r}",
                                  key="connectors.xmpp.listen")
        self.default_settings = StreamSettings(require_tls=require_tls, **common)
        if tls_options is None:
            exposed = [d for d, _ in self.listeners if not _loopback(d)]
            if exposed and config["require_tls"] is None:
                raise ConfigError(
                    f"listener {exposed[0]!r} is reachable from other hosts but no tls_certificate is set: "
                    "set tls_certificate and tls_key, or say require_tls = false to allow passwords in clear",
                    key="connectors.xmpp.tls_certificate",
                )
        component = config["component"]
        self.component = None
        component_domain = ""
        if component:
            from gateway_xmpp.component import ComponentLink

            self.component = ComponentLink.from_config(self, component)
            component_domain = self.component.domain
        self.domains = Domains(self.domain, component_domain)
        s2s = config["s2s"]
        self.s2s = None
        if s2s:
            from gateway_xmpp.s2s import S2SLink

            self.s2s = S2SLink.from_config(self, s2s)
        muc_domain = config["muc_domain"]
        self.muc = None
        if muc_domain != "-":
            from gateway_xmpp.muc import Muc

            self.muc = Muc(self, _domain(muc_domain) if muc_domain else f"conference.{self.domain}")
        self.ports = []
        self.streams = set()  # every open C2SStream
        self.resources = {}  # bare JID -> {resource: stream}
        self.foreign = {}  # identity id -> set of foreign Address subscribed to that person's presence

    @staticmethod
    def _tls_options(cert_path, key_path, protocol):
        """
        Server TLS options with our certificate; ``protocol`` is the ALPN
        name we accept (RFC 7590: xmpp-client, xmpp-server). Clients and
        servers that offer ALPN (Prosody on s2s, some clients) get a TLS
        internal error from OpenSSL unless a protocol is set.
        """
        from twisted.internet import ssl

        try:
            with open(cert_path, "rb") as f:
                pem = f.read()
            if key_path:
                with open(key_path, "rb") as f:
                    pem += b"\n" + f.read()
            certificate = ssl.PrivateCertificate.loadPEM(pem)
            return ssl.CertificateOptions(privateKey=certificate.privateKey.original,
                                          certificate=certificate.original, acceptableProtocols=[protocol])
        except Exception as e:  # OSError, or an OpenSSL error for a bad PEM
            raise ConfigError(f"cannot load the TLS certificate/key: {e}", key="connectors.xmpp.tls_certificate")

    def tls_options_for(self, protocol):
        """Our certificate's server options for ALPN ``protocol``, or None without a certificate."""
        cert, key = self._tls_files
        return self._tls_options(cert, key, protocol) if cert else None

    # -- IConnector -------------------------------------------------------------------

    def domain_for(self, network):
        return self.domain if network == NETWORK else ""

    def can_reach(self, address):
        return self.remote_link(address) is not None

    def remote_link(self, address):
        """The s2s or component link that reaches a foreign XMPP address, or None."""
        if address.network != NETWORK or self.domains.is_local(address.domain):
            return None
        if self.s2s is not None and self.s2s.reaches(address.domain):
            return self.s2s
        if self.component is not None and self.component.reaches(address.domain):
            return self.component
        return None

    def foreign_watchers(self, identity):
        return sorted(self.foreign.get(identity.id, ()))

    def deliver(self, event, session):
        if session is None:
            link = self.remote_link(event.recipient)
            if link is None:
                raise ConnectionError(f"no route to {event.recipient}")
            return link.deliver(event)
        stream = session.handler
        if stream is None or stream.state == "closed":
            raise ConnectionError(f"{session.address} has disconnected")
        sender = self.domains.address_to_jid(event.sender)
        if isinstance(event, Message):
            stamp = _stamp(event.created) if session.started - event.created > 1.0 else ""
            data = adapter.render_message(event, sender, stream.jid, stamp)
        elif isinstance(event, Presence):
            data = adapter.render_presence(event, sender, stream.jid)
        elif isinstance(event, Typing):
            data = adapter.render_typing(event, sender, stream.jid)
        elif isinstance(event, ChatEvent) and self.muc is not None:
            data = self.muc.render(event, stream)
        elif isinstance(event, (FileOffer, ChatEvent)):
            data = adapter.render_offer(event, sender, stream.jid)
        else:
            # Delivered means shown: a kind this connector cannot render is not delivered.
            raise ConnectionError(f"an XMPP client cannot be shown a {event.kind} event")
        stream.write(data)
        adapter.capture_sent(self.api, event, data)
        return None

    # -- service ---------------------------------------------------------------------

    def startService(self):
        super().startService()
        for description, settings in self.listeners:
            factory = _StreamFactory.forProtocol(lambda s=settings: C2SStream(self, s))
            factory.api = self.api
            self.api.listen(description, factory, connector="xmpp", options=self.listen_options).addCallbacks(
                self._listening, self._listen_failed, callbackArgs=(description,), errbackArgs=(description,)
            )
        if self.component is not None:
            self.component.start()
        if self.s2s is not None:
            self.s2s.start()

    def _listening(self, port, description):
        self.ports.append(port)
        self.log.info("xmpp: c2s listening on {where} for {domain}", where=description, domain=self.domain)
        if self.default_settings.tls_options is None:
            self.log.warn("xmpp: no tls_certificate is set: clients on {where} log in without encryption",
                          where=description)

    def _listen_failed(self, failure, description):
        self.log.error("xmpp: cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def disconnect(self, session, reason):
        """End ``session`` (its node is drained) with the system-shutdown stream error; the client reconnects."""
        if session.handler is not None:
            session.handler.stream_error("system-shutdown", reason)

    def stopService(self):
        super().stopService()
        waits = []
        for stream in list(self.streams):
            if stream.session is not None:
                session, stream.session = stream.session, None
                waits.append(self.api.logout(session))
            stream.stream_error("system-shutdown", "the gateway is stopping")
        self.streams.clear()
        self.resources.clear()
        if self.component is not None:
            waits.append(self.component.stop())
        if self.s2s is not None:
            waits.append(self.s2s.stop())
        ports, self.ports = self.ports, []
        waits.extend(port.stopListening() for port in ports)
        return DeferredList([w for w in waits if w is not None], consumeErrors=True)

    # -- streams and resources ----------------------------------------------------------

    def bind(self, stream, bare, resource):
        """Register a bound stream; returns the resource it got (a new one if taken)."""
        self.streams.add(stream)
        resources = self.resources.setdefault(bare, {})
        if resource in resources:
            resource = f"{resource}-{os.urandom(3).hex()}"
        resources[resource] = stream
        return resource

    def stream_closed(self, stream):
        self.streams.discard(stream)
        if self.muc is not None:
            self.muc.stream_closed(stream)
        if stream.bare is not None:
            resources = self.resources.get(stream.bare, {})
            for resource, other in list(resources.items()):
                if other is stream:
                    del resources[resource]
            if not resources:
                self.resources.pop(stream.bare, None)
        if stream.session is not None:
            session, stream.session = stream.session, None
            self.api.logout(session).addErrback(
                lambda f: self.log.failure("xmpp: logout of {who} failed", f, who=str(session.address))
            )

    # -- stanzas from c2s streams ----------------------------------------------------------

    def handle_stanza(self, stream, element):
        name = element.name
        if name == "message":
            result = self._message(stream, element)
        elif name == "presence":
            result = self._presence(stream, element)
        elif name == "iq":
            result = self._iq(stream, element)
        else:
            stream.stream_error("unsupported-stanza-type", f"<{name}/> is not a stanza")
            return
        if result is not None and hasattr(result, "addErrback"):
            result.addErrback(self._stanza_failed, stream, element)

    def _stanza_failed(self, failure, stream, element):
        self.log.failure("xmpp: handling <{name}/> from {jid} failed", failure, name=element.name, jid=stream.jid)
        if element.getAttribute("type") not in ("error", "result") and stream.state != "closed":
            stream.write(adapter.stanza_error(element, "internal-server-error", "wait"))

    def _recipient(self, stream, element):
        """(JID, Address) of the ``to`` attribute, or (JID or None, None)."""
        jid = parse_jid(element.getAttribute("to"))
        if jid is None:
            return None, None
        return jid, self.domains.jid_to_address(jid)

    def _message(self, stream, element):
        kind = element.getAttribute("type", "normal")
        if kind == "error":
            return
        if element.getAttribute("to") and parse_jid(element["to"]) is None:
            stream.write(adapter.stanza_error(element, "jid-malformed", "modify"))
            return
        if self.muc is not None and self.muc.handles(parse_jid(element.getAttribute("to"))):
            return self.muc.message(stream, element, parse_jid(element["to"]))
        jid, recipient = self._recipient(stream, element)
        if recipient is None:
            if jid is not None:
                stream.write(adapter.stanza_error(element, "service-unavailable", "cancel",
                                                  "messages to the server are not handled"))
            return
        if kind == "groupchat":
            # Refused, and archived as such: never dropped unseen.
            body, _, _, _, _ = adapter.message_parts(element)
            self.api.refuse(ChatEvent(stream.address, recipient, room=jid.userhost(), action="message", text=body or ""),
                            "multi-user chat is not available here", "chat-unsupported")
            stream.write(adapter.stanza_error(element, "not-allowed", "cancel", "no multi-user chat here"))
            return
        event = adapter.file_offer_event(self.api, element, stream.address, recipient)
        if event is None:
            event = adapter.message_event(self.api, element, stream.address, recipient)
        if event is None:
            return
        adapter.capture_received(self.api, event, element)
        wants_receipt = isinstance(event, Message) and any(
            c.uri == adapter.NS_RECEIPTS and c.name == "request" for c in element.elements()
        )
        return self.api.submit(event, origin=self).addCallback(self._answer_message, stream, element, wants_receipt)

    def _answer_message(self, outcome, stream, element, wants_receipt):
        if stream.state == "closed":
            return
        if outcome.rejected:
            if element.getAttribute("from") is None:
                element["from"] = stream.jid
            stream.write(adapter.outcome_error(element, outcome))
        elif wants_receipt and outcome.delivered and element.getAttribute("id"):
            stream.write(adapter.render_receipt(element["to"], stream.jid, element["id"]))

    # -- presence --

    def _presence(self, stream, element):
        kind = element.getAttribute("type")
        to = element.getAttribute("to")
        if to and self.muc is not None and self.muc.handles(parse_jid(to)):
            return self.muc.presence(stream, element, parse_jid(to))
        if kind in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return self._subscription(stream, element, kind)
        if kind == "probe":
            jid, address = self._recipient(stream, element)
            if address is not None:
                return self._probe(stream, address)
            return
        if kind == "error":
            return
        if to:
            jid, recipient = self._recipient(stream, element)
            if recipient is None:
                return
            status, note = adapter.presence_status(element)
            event = Presence(stream.address, status, note, recipient=recipient, created=self.api.clock.seconds())
            self.api.submit(event, origin=self)
            return
        status, note = adapter.presence_status(element)
        # Reflect the presence to the resource that sent it (RFC 6121 4.2.2).
        reflected = Presence(stream.address, status, note, id="reflected")
        stream.write(adapter.render_presence(reflected, stream.jid, stream.jid))
        if status is PresenceStatus.OFFLINE:
            if stream.session is not None:
                session, stream.session = stream.session, None
                self.api.logout(session)
            return
        if stream.session is None and not stream.logging_in:
            stream.logging_in = True
            d = self.api.login(stream.identity, stream.address, self.name, handler=stream, status=status, note=note,
                               source=getattr(stream, "host", None))
            d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(stream,), errbackArgs=(stream,))
        elif stream.session is not None:
            self.api.set_presence(stream.session, status, note)

    def _logged_in(self, session, stream):
        stream.logging_in = False
        if stream.state == "closed":
            self.api.logout(session)
            return
        stream.session = session
        self.log.info("xmpp: {jid} is online", jid=stream.jid)
        if self.muc is not None:
            self.muc.logged_in(stream)
        self._probe_remote_contacts(stream).addErrback(
            lambda f: self.log.failure("xmpp: probing the contacts of {jid} failed", f, jid=stream.jid))

    @inlineCallbacks
    def _probe_remote_contacts(self, stream):
        """Ask federated servers for the presence of this person's remote contacts (RFC 6121 4.3)."""
        contacts = yield self.api.contacts(stream.identity.id)
        for contact in contacts:
            link = self.remote_link(contact.address)
            if link is not None:
                link.send_subscription(stream.address, contact.address, "probe")

    def _login_failed(self, failure, stream):
        self.log.failure("xmpp: login of {jid} failed", failure, jid=stream.jid)
        if self.muc is not None:
            self.muc.waiting.pop(stream, None)
        stream.session = None
        stream.logging_in = False
        stream.stream_error("internal-server-error", "login failed")

    @inlineCallbacks
    def _probe(self, stream, address):
        """
        Answer a probe with ``address``'s presence: a disclosure to the
        asker, decided and archived on the path like any other; a refused
        one is answered as "unavailable", as if there were nothing to tell.
        """
        identity = yield self.api.identity_for(address)
        jid = self.domains.address_to_jid(address)
        if identity is None:
            return
        status, note = self.api.presence_of(identity.id)
        outcome, shown = yield self.api.disclose(Presence(address, status, note, recipient=stream.address))
        if not outcome.delivered:
            shown = Presence(address, PresenceStatus.OFFLINE, recipient=stream.address)
        stream.write(adapter.render_presence(attrs.evolve(shown, id="probe"), jid, stream.jid))

    # -- subscriptions and roster --

    @inlineCallbacks
    def _subscription(self, stream, element, kind):
        jid, address = self._recipient(stream, element)
        if address is None:
            return
        contact_jid = self.domains.address_to_jid(address)
        remote = self.remote_link(address)
        if kind == "subscribe":
            status, note = self.api.presence_of(stream.identity.id)
            outcome = yield self.api.submit(
                Presence(stream.address, status, note, recipient=address, created=self.api.clock.seconds()),
                origin=self,
            )
            if outcome.rejected and outcome.code in ("policy", "unknown-recipient", "transform"):
                stream.write(adapter.render_presence(None, contact_jid, stream.bare, "unsubscribed"))
                self.log.info("xmpp: subscription {who} -> {to} refused: {why}", who=stream.bare,
                              to=contact_jid, why=outcome.reason)
                return
            yield self._add_contact(stream, address, contact_jid)
            if remote:
                remote.send_subscription(stream.address, address, "subscribe")
                return
            stream.write(adapter.render_presence(None, contact_jid, stream.bare, "subscribed"))
            yield self._probe(stream, address)
        elif kind == "unsubscribe":
            yield self._remove_contact(stream, address)
            if remote:
                remote.send_subscription(stream.address, address, "unsubscribe")
        elif kind == "subscribed":
            if remote:
                self.foreign.setdefault(stream.identity.id, set()).add(address)
                remote.send_subscription(stream.address, address, "subscribed")
                status, note = self.api.presence_of(stream.identity.id)
                remote.deliver(Presence(stream.address, status, note, recipient=address))
        elif kind == "unsubscribed":
            if remote:
                self.foreign.get(stream.identity.id, set()).discard(address)
                remote.send_subscription(stream.address, address, "unsubscribed")

    @inlineCallbacks
    def contact_jid(self, address):
        """The JID under which a contact-list entry appears to XMPP clients."""
        if address.network == NETWORK:
            return self.domains.address_to_jid(address)
        identity = yield self.api.identity_for(address)
        if identity is not None:
            handle = identity.handle_on(NETWORK)
            if handle is not None:
                return self.domains.address_to_jid(handle)
        alias = yield self.api.alias_for(address, NETWORK, self.domain)
        return self.domains.address_to_jid(alias)

    @inlineCallbacks
    def _stored_address(self, address):
        """What to keep in the contact list for an XMPP address: the original behind an alias."""
        original = yield self.api.resolve_alias(address)
        return original if original is not None else address

    @inlineCallbacks
    def _add_contact(self, stream, address, jid, name=None, group=None):
        stored = yield self._stored_address(address)
        contacts = yield self.api.contacts(stream.identity.id)
        kept = []
        found = None
        for contact in contacts:
            if contact.address == stored:
                found = contact
            else:
                kept.append(contact)
        contact = Contact(
            stored,
            group=group if group is not None else (found.group if found else "Buddies"),
            name=name if name is not None else (found.name if found else ""),
        )
        if found != contact:
            yield self.api.set_contacts(stream.identity.id, kept + [contact])
        self._push(stream.bare, self._roster_item(jid, contact))

    @inlineCallbacks
    def _remove_contact(self, stream, address):
        stored = yield self._stored_address(address)
        contacts = yield self.api.contacts(stream.identity.id)
        kept = [c for c in contacts if c.address != stored]
        if len(kept) != len(contacts):
            yield self.api.set_contacts(stream.identity.id, kept)
        jid = self.domains.address_to_jid(address)
        self._push(stream.bare, f"<item jid='{escape_attr(jid)}' subscription='remove'/>")

    @staticmethod
    def _roster_item(jid, contact):
        name = f" name='{escape_attr(contact.name)}'" if contact.name else ""
        group = f"<group>{escape_text(contact.group)}</group>" if contact.group else ""
        return f"<item jid='{escape_attr(jid)}'{name} subscription='both'>{group}</item>"

    def _push(self, bare, item):
        for stream in self.resources.get(bare, {}).values():
            if stream.wants_roster:
                stream.write(
                    f"<iq type='set' id='push-{os.urandom(4).hex()}' to='{escape_attr(stream.jid)}'>"
                    f"<query xmlns='{NS_ROSTER}'>{item}</query></iq>".encode("utf-8")
                )


@hookimpl
def gateway_register_connectors(api):
    api.register_connector("xmpp", XmppConnector, options=OPTIONS)
