"""XEP-0114: the gateway attached to an XMPP server as an external component (jabber:component:accept)."""

from __future__ import annotations

import hashlib
import ipaddress

import attrs

from twisted.application.internet import ClientService
from twisted.internet import endpoints, protocol
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from gateway.plugin import (
    Address, AddressError, ChatEvent, ConfigError, FileOffer, Message, Presence, PresenceStatus, Typing,
)

from gateway_xmpp import adapter
from gateway_xmpp.adapter import NETWORK, parse_jid
from gateway_xmpp.tls import load_ca
from gateway_xmpp.codec import (
    NS_COMPONENT,
    NS_STREAMS,
    Limits,
    StreamParser,
    StreamViolation,
    escape_attr,
)

COMPONENT_KEYS = {"host", "port", "domain", "secret", "remote_domains", "reconnect", "tls", "ca", "server_name"}


class ComponentStream(protocol.Protocol):
    """The component's side of one connection to the server: handshake, then stanzas both ways."""

    log = Logger()

    def __init__(self, link):
        self.link = link
        self.ready = False
        self.closed = False
        self.parser = None
        self.stream_id = None

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.parser = StreamParser(self._on_start, self._on_stanza, self._on_end, self.link.limits)
        self.transport.write(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
            b"xmlns:stream='http://etherx.jabber.org/streams' to='"
            + escape_attr(self.link.domain).encode("utf-8") + b"'>"
        )

    def dataReceived(self, data):
        if self.closed:
            return
        try:
            self.parser.feed(data)
        except StreamViolation as e:
            self.fail(e.condition, e.text)
        except Exception:
            self.log.failure("xmpp component: internal error on the stream to {domain}", domain=self.link.domain)
            self.fail("internal-server-error", "")

    def fail(self, condition, text):
        self.log.warn("xmpp component {domain}: closing: {condition} {text}",
                      domain=self.link.domain, condition=condition, text=text)
        self.write(f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                   f"</stream:error></stream:stream>".encode())
        self.closed = True
        self.parser.close()
        self.transport.loseConnection()

    def write(self, data: bytes):
        if not self.closed:
            self.transport.write(data)

    def connectionLost(self, reason):
        self.closed = True
        if self.parser is not None:
            self.parser.close()
        self.link.lost(self)

    def _on_start(self, name, attributes):
        if name != (NS_STREAMS, "stream"):
            raise StreamViolation("invalid-namespace", "the root element must be stream:stream")
        self.stream_id = attributes.get("id", "")
        digest = hashlib.sha1((self.stream_id + self.link.secret).encode("utf-8")).hexdigest()
        self.write(f"<handshake>{digest}</handshake>".encode())

    def _on_end(self):
        self.log.info("xmpp component {domain}: the server closed the stream", domain=self.link.domain)
        self.write(b"</stream:stream>")
        self.closed = True
        self.transport.loseConnection()

    def _on_stanza(self, element):
        if not self.ready:
            if element.name == "handshake":
                self.ready = True
                self.link.ready(self)
            elif element.name == "error" and element.uri == NS_STREAMS:
                self.log.error("xmpp component {domain}: refused by the server: {error}",
                               domain=self.link.domain, error=element.toXml())
                self.closed = True
                self.transport.loseConnection()
            else:
                raise StreamViolation("not-authorized", "stanza before the handshake")
            return
        if element.name == "error" and element.uri == NS_STREAMS:
            self.log.error("xmpp component {domain}: stream error from the server: {error}",
                           domain=self.link.domain, error=element.toXml())
            self.closed = True
            self.transport.loseConnection()
            return
        self.link.handle_stanza(element)


class RemoteStanzas:
    """
    Stanzas from another XMPP server (through the component link or s2s)
    turned into gateway events; answers go back with ``send_raw(bytes)``.
    Subclasses set ``connector``, ``api``, ``namespace`` and define ``send_to(domain, data)``.
    """

    log = Logger()
    namespace = NS_COMPONENT

    def handle_stanza(self, element):
        sender_jid = parse_jid(element.getAttribute("from"))
        to_jid = parse_jid(element.getAttribute("to"))
        if to_jid is None or not self.connector.domains.is_local(to_jid.host):
            return
        if sender_jid is None or not sender_jid.user:
            if element.name == "iq" and to_jid is not None and element.getAttribute("type") in ("get", "set"):
                self._iq(element, to_jid)
            return
        try:
            sender = Address(NETWORK, sender_jid.user, sender_jid.host)
        except AddressError:
            return
        recipient = self.connector.domains.jid_to_address(to_jid)
        if element.name == "iq":
            offer = recipient and adapter.stream_offer_event(self.api, element, sender, recipient)
            if offer:
                adapter.capture_received(self.api, offer, element)
                self.api.submit(offer, origin=self.connector).addCallback(
                    lambda outcome: self.reply(element, adapter.offer_answer(element, outcome, self.namespace))
                ).addErrback(lambda f: self.log.failure("xmpp federation: file offer from {who} failed", f,
                                                        who=str(sender)))
            elif element.getAttribute("type") in ("get", "set"):
                self._iq(element, to_jid)
            return
        if recipient is None:
            return
        if element.name == "message":
            self._message(element, sender, recipient)
        elif element.name == "presence":
            self._presence(element, sender, recipient).addErrback(
                lambda f: self.log.failure("xmpp federation: presence from {who} failed", f, who=str(sender)))

    def _message(self, element, sender, recipient):
        if element.getAttribute("type") in ("error", "groupchat"):
            return
        event = adapter.file_offer_event(self.api, element, sender, recipient)
        if event is None:
            event = adapter.message_event(self.api, element, sender, recipient)
        if event is None:
            return
        adapter.capture_received(self.api, event, element)
        wants_receipt = isinstance(event, Message) and adapter.message_parts(element)[3]
        self.api.submit(event, origin=self.connector).addCallback(
            self._answer, element, wants_receipt
        )

    def _answer(self, outcome, element, wants_receipt):
        if outcome.rejected:
            self.reply(element, adapter.outcome_error(element, outcome, namespace=self.namespace))
        elif wants_receipt and outcome.delivered and element.getAttribute("id"):
            self.reply(element, adapter.render_receipt(element["to"], element["from"], element["id"]))

    @inlineCallbacks
    def _presence(self, element, sender, recipient):
        kind = element.getAttribute("type")
        identity = yield self.api.identity_for(recipient)
        local_jid = element["to"].split("/")[0]
        remote_jid = element["from"].split("/")[0]
        if kind == "subscribe":
            if identity is None:
                self.reply(element, adapter.render_presence(None, local_jid, remote_jid, "unsubscribed"))
                return
            status, note = self.api.presence_of(identity.id)
            # Policy (kind "presence") decides. The probe event says "offline": the requester's
            # real presence is not known until the gateway user subscribes back.
            outcome = yield self.api.submit(
                Presence(sender, status=PresenceStatus.OFFLINE, recipient=recipient,
                         created=self.api.clock.seconds()),
                origin=self.connector,
            )
            if outcome.rejected and outcome.code in ("policy", "transform", "unknown-recipient"):
                self.log.info("xmpp federation: subscription {who} -> {to} refused: {why}",
                              who=remote_jid, to=local_jid, why=outcome.reason)
                self.reply(element, adapter.render_presence(None, local_jid, remote_jid, "unsubscribed"))
                return
            self.connector.foreign.setdefault(identity.id, set()).add(sender)
            self.reply(element, adapter.render_presence(None, local_jid, remote_jid, "subscribed"))
            yield self._send_presence(recipient, sender, local_jid, remote_jid, status, note)
            return
        if kind in ("unsubscribe", "unsubscribed") and identity is not None:
            if kind == "unsubscribe":
                self.connector.foreign.get(identity.id, set()).discard(sender)
            return
        if kind == "subscribed":
            return
        if kind == "probe":
            if identity is None:
                return
            if sender not in self.connector.foreign.get(identity.id, ()):
                # The remote server believes in a subscription we do not know (the gateway was
                # restarted): policy decides again, as for a new subscription request.
                outcome = yield self.api.submit(
                    Presence(sender, status=PresenceStatus.OFFLINE, recipient=recipient,
                             created=self.api.clock.seconds()),
                    origin=self.connector,
                )
                if outcome.rejected and outcome.code in ("policy", "transform", "unknown-recipient"):
                    return
                self.connector.foreign.setdefault(identity.id, set()).add(sender)
            status, note = self.api.presence_of(identity.id)
            yield self._send_presence(recipient, sender, local_jid, remote_jid, status, note)
            return
        if kind in (None, "unavailable"):
            status, note = adapter.presence_status(element)
            yield self.api.submit(
                Presence(sender, status, note, recipient=recipient, created=self.api.clock.seconds()),
                origin=self.connector,
            )

    def reply(self, element, data: bytes):
        """Send ``data`` back towards the server ``element`` came from."""
        self.send_to(element.getAttribute("from", "").split("/")[0].rpartition("@")[2], data)

    @inlineCallbacks
    def _send_presence(self, local, remote, local_jid, remote_jid, status, note):
        """
        Tell the remote server ``local``'s presence for ``remote``: a
        disclosure, decided and archived on the path; refused, it is sent
        as "unavailable".
        """
        outcome, shown = yield self.api.disclose(Presence(local, status, note, recipient=remote))
        if not outcome.delivered:
            shown = Presence(local, PresenceStatus.OFFLINE, recipient=remote)
        self.send_to(remote_jid.rpartition("@")[2], adapter.render_presence(
            attrs.evolve(shown, id="reply"), local_jid + "/gateway", remote_jid
        ))

    def _iq(self, element, to_jid):
        payload = next(iter(element.elements()), None)
        key = (payload.uri, payload.name) if payload is not None else None
        ident = f" id='{escape_attr(element.getAttribute('id', ''))}'"
        addr = f" from='{escape_attr(element['to'])}' to='{escape_attr(element.getAttribute('from', ''))}'"
        if key == ("urn:xmpp:ping", "ping"):
            self.reply(element, f"<iq type='result'{ident}{addr}/>".encode("utf-8"))
        elif key == ("http://jabber.org/protocol/disco#info", "query") and element["type"] == "get":
            if to_jid.user:
                inner = "<identity category='account' type='registered'/>"
            else:
                inner = "<identity category='gateway' type='xmpp' name='gateway'/>"
            inner += "".join(f"<feature var='{f}'/>" for f in (
                "http://jabber.org/protocol/disco#info", "urn:xmpp:ping", adapter.NS_RECEIPTS, adapter.NS_CHATSTATES))
            self.reply(element, f"<iq type='result'{ident}{addr}><query xmlns='http://jabber.org/protocol/disco#info'>"
                         f"{inner}</query></iq>".encode("utf-8"))
        else:
            self.reply(element, adapter.stanza_error(element, "service-unavailable", "cancel", namespace=self.namespace))


def _loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ComponentLink(RemoteStanzas):
    """
    The connector's link to one XMPP server as component ``domain``:
    reconnects on its own, delivers events to remote JIDs, and turns the
    server's stanzas into gateway events.
    """

    log = Logger()

    def __init__(self, connector, host, port, domain, secret, remote_domains, reconnect=True, *,
                 tls=False, ca=None, server_name=None):
        self.connector = connector
        # Direct TLS to the server's component port (ejabberd's ``tls: true``
        # listener), its certificate checked against ``ca`` (None: the
        # system's roots) for ``server_name``.
        self.tls = tls
        self.ca = ca
        self.server_name = server_name
        self.api = connector.api
        self.host, self.port = host, port
        self.domain = domain.lower()
        self.secret = secret
        self.remote_domains = {d.lower() for d in remote_domains}
        self.reconnect = reconnect
        self.limits = Limits(stanza_size=1 << 20)
        self.stream = None
        self.service = None

    @classmethod
    def from_config(cls, connector, table):
        def need(key, kind, default=None):
            value = table.get(key, default)
            if value is None or not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise ConfigError(f"expected {kind.__name__}, got {value!r}", key=f"connectors.xmpp.component.{key}")
            return value

        unknown = set(table) - COMPONENT_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; known: {', '.join(sorted(COMPONENT_KEYS))}",
                              key="connectors.xmpp.component")
        host = need("host", str, "127.0.0.1")
        port = need("port", int, 5347)
        domain = need("domain", str)
        secret = need("secret", str)
        remote = need("remote_domains", list, [])
        if not remote:
            # The server's own domain: the component's domain without its first label.
            remote = [domain.split(".", 1)[1]] if "." in domain else []
        tls = need("tls", bool, False)
        ca = load_ca(table.get("ca", ""), "connectors.xmpp.component.ca")
        server_name = need("server_name", str, remote[0] if remote else host)
        return cls(connector, host, port, domain, secret, remote, need("reconnect", bool, True),
                   tls=tls, ca=ca, server_name=server_name)

    def reaches(self, domain):
        return domain.lower() in self.remote_domains

    # -- inbound --

    def handle_stanza(self, element):
        """
        A stanza from the server: only its ``remote_domains`` may speak over
        this link. Anything else (above all a ``from`` naming one of our own
        users, which would let the server speak as them) is refused with a
        stanza error and logged, never submitted.
        """
        sender = parse_jid(element.getAttribute("from"))
        if sender is None or sender.host.lower() not in self.remote_domains:
            claimed = element.getAttribute("from", "")
            self.log.warn(
                "xmpp component {domain}: refused a <{name}/> claiming to be from {claimed!r}: "
                "not one of remote_domains {remote}",
                domain=self.domain, name=element.name, claimed=claimed, remote=sorted(self.remote_domains),
            )
            if element.getAttribute("type") != "error" and self.stream is not None:
                self.stream.write(adapter.stanza_error(element, "forbidden", "auth", namespace=self.namespace))
            return
        super().handle_stanza(element)

    # -- lifecycle --

    def start(self):
        endpoint = endpoints.TCP4ClientEndpoint(self.api.reactor, self.host, self.port, timeout=10)
        if self.tls:
            from twisted.internet import ssl

            endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(self.server_name, trustRoot=self.ca), endpoint)
        elif not _loopback(self.host):
            self.log.warn(
                "xmpp component {domain}: the link to {host}:{port} is not encrypted: its secret handshake and every "
                "stanza cross the network in the clear; set tls = true where the server offers TLS on its "
                "component port (ejabberd), or keep the link on loopback",
                domain=self.domain, host=self.host, port=self.port,
            )
        factory = protocol.Factory.forProtocol(lambda: ComponentStream(self))
        self.service = ClientService(endpoint, factory, clock=self.api.clock)
        self.service.startService()

    def stop(self):
        service, self.service = self.service, None
        if self.stream is not None:
            self.stream.write(b"</stream:stream>")
        return service.stopService() if service is not None else None

    def ready(self, stream):
        self.stream = stream
        self.log.info("xmpp component {domain} attached to {host}:{port}{tls}", domain=self.domain,
                      host=self.host, port=self.port, tls=" over TLS" if self.tls else "")

    def lost(self, stream):
        if self.stream is stream:
            self.stream = None
            self.log.warn("xmpp component {domain}: connection lost", domain=self.domain)

    # -- outbound --

    def send_to(self, domain, data: bytes):
        if self.stream is not None:
            self.stream.write(data)

    def _jids(self, event):
        return (self.connector.domains.address_to_jid(event.sender, via_component=True),
                self.connector.domains.address_to_jid(event.recipient))

    def deliver(self, event):
        if self.stream is None:
            raise ConnectionError(f"the component {self.domain} is not attached to {self.host}:{self.port}")
        sender, to = self._jids(event)
        if isinstance(event, Message):
            data = adapter.render_message(event, sender, to)
            self.stream.write(data)
            adapter.capture_sent(self.api, event, data)
        elif isinstance(event, Presence):
            self.stream.write(adapter.render_presence(event, sender + "/gateway", to))
        elif isinstance(event, Typing):
            self.stream.write(adapter.render_typing(event, sender, to))
        elif isinstance(event, (FileOffer, ChatEvent)):
            data = adapter.render_offer(event, sender, to)
            self.stream.write(data)
            adapter.capture_sent(self.api, event, data)
        else:
            # Delivered means shown: a kind this link cannot render is not delivered.
            raise ConnectionError(f"an XMPP server cannot be shown a {event.kind} event")
        return None

    def send_subscription(self, local, remote, kind):
        if self.stream is None:
            return
        sender = self.connector.domains.address_to_jid(local, via_component=True)
        to = self.connector.domains.address_to_jid(remote)
        self.stream.write(adapter.render_presence(None, sender, to, kind))

__all__ = ["ComponentLink", "ComponentStream", "RemoteStanzas"]
