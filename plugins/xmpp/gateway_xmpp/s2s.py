"""Server-to-server federation (RFC 6120 s2s) with Server Dialback (XEP-0220), peers from a static table."""

from __future__ import annotations

import hashlib
import hmac
import os

from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from gateway.plugin import ChatEvent, ConfigError, FileOffer, Message, Presence, Typing

from gateway_xmpp import adapter
from gateway_xmpp.codec import (
    NS_SERVER,
    NS_STREAMS,
    Limits,
    StreamParser,
    StreamViolation,
    escape_attr,
    escape_text,
)
from gateway_xmpp.component import RemoteStanzas
from gateway_xmpp.tls import load_ca

NS_DIALBACK = "jabber:server:dialback"
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
S2S_KEYS = {"listen", "peers", "secret", "idle_timeout", "max_queued", "tls", "ca"}
ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185: HMAC-SHA256 keyed with SHA-256(secret) (hex) over ``receiving originating id``."""
    key = hashlib.sha256(secret.encode("utf-8")).hexdigest().encode("ascii")
    return hmac.new(key, f"{receiving} {originating} {stream_id}".encode("utf-8"), "sha256").hexdigest()


def _header(sender: str, to: str, stream_id: str = "") -> bytes:
    out = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
           "xmlns:stream='http://etherx.jabber.org/streams'")
    if sender:
        out += f" from='{escape_attr(sender)}'"
    if to:
        out += f" to='{escape_attr(to)}'"
    if stream_id:
        out += f" id='{stream_id}'"
    return (out + " version='1.0'>").encode("utf-8")


class _S2SStream(protocol.Protocol):
    """Common parts of both directions: restricted parser, stream errors, TCP_NODELAY, idle timeout."""

    log = Logger()

    def __init__(self, link):
        self.link = link
        self.closed = False
        self.parser = None
        self._idle = None
        self.encrypted = False  # STARTTLS done on this stream

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self._new_parser()
        self._idle = self.link.api.clock.callLater(self.link.idle_timeout, self._timed_out)

    def _new_parser(self):
        """A fresh parser: at the start, and for the stream both sides restart after STARTTLS."""
        if self.parser is not None:
            self.parser.close()
        self.parser = StreamParser(self._on_start, self._on_stanza, self._on_end, self.link.limits)

    def dataReceived(self, data):
        if self.closed:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.link.idle_timeout)
        try:
            self.parser.feed(data)
        except StreamViolation as e:
            self.fail(e.condition, e.text)
        except Exception:
            self.log.failure("xmpp s2s: internal error on a stream with {peer}", peer=str(self.transport.getPeer()))
            self.fail("internal-server-error", "")

    def write(self, data: bytes):
        if not self.closed:
            self.transport.write(data)

    def fail(self, condition, text=""):
        if self.closed:
            return
        self.log.warn("xmpp s2s: closing a stream with {peer}: {condition} {text}",
                      peer=str(self.transport.getPeer()), condition=condition, text=text)
        self.write(f"<stream:error><{condition} xmlns='{ERRORS_NS}'/>".encode()
                   + (f"<text xmlns='{ERRORS_NS}'>{escape_text(text)}</text>".encode() if text else b"")
                   + b"</stream:error>")
        self.close()  # which ends the stream

    def close(self):
        if not self.closed:
            self.write(b"</stream:stream>")
            self.closed = True
            self.parser.close()
            self.transport.loseConnection()

    def _timed_out(self):
        self._idle = None
        self.fail("connection-timeout", "idle")

    def _on_end(self):
        self.close()

    def connectionLost(self, reason):
        from OpenSSL import SSL

        if self.link.tls and not self.closed and reason.check(SSL.Error):
            self.log.warn("xmpp s2s: TLS with {peer} failed: {why}", peer=str(self.transport.getPeer()),
                          why=reason.getErrorMessage())
        self.closed = True
        if self.parser is not None:
            self.parser.close()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.link.stream_lost(self)


class InboundStream(_S2SStream):
    """A stream another server opened to us: dialback requests, verifications, then its stanzas."""

    def __init__(self, link):
        super().__init__(link)
        self.stream_id = os.urandom(12).hex()
        self.authorized = set()  # remote domains verified on this stream

    def _on_start(self, name, attributes):
        if name != (NS_STREAMS, "stream"):
            raise StreamViolation("invalid-namespace", "the root element must be stream:stream")
        to = attributes.get("to", "")
        if to and not self.link.connector.domains.is_local(to):
            self.write(_header(self.link.connector.domain, "", self.stream_id))
            raise StreamViolation("host-unknown", f"this server is {self.link.connector.domain}")
        self.write(_header(to or self.link.connector.domain, "", self.stream_id))
        if self.link.tls and not self.encrypted:
            if not attributes.get("version", "").startswith("1."):
                raise StreamViolation("policy-violation", "this server takes s2s streams over TLS only (STARTTLS)")
            self.write(f"<stream:features><starttls xmlns='{NS_TLS}'><required/></starttls>"
                       f"</stream:features>".encode())
        elif attributes.get("version", "").startswith("1."):
            self.write(f"<stream:features><dialback xmlns='{NS_DIALBACK_FEATURE}'/></stream:features>".encode())

    def _on_stanza(self, element):
        if element.uri == NS_TLS and element.name == "starttls" and self.link.tls and not self.encrypted:
            self.write(f"<proceed xmlns='{NS_TLS}'/>".encode())
            self.transport.startTLS(self.link.server_tls)
            self.encrypted = True
            self.stream_id = os.urandom(12).hex()
            self._new_parser()
            return
        if self.link.tls and not self.encrypted:
            raise StreamViolation("policy-violation", "STARTTLS first: this server federates over TLS only")
        if element.uri == NS_DIALBACK and element.name == "result":
            self._result(element)
        elif element.uri == NS_DIALBACK and element.name == "verify":
            self._verify(element)
        elif element.uri == NS_STREAMS and element.name == "error":
            self.log.info("xmpp s2s: stream error from a peer: {error}", error=element.toXml())
            self.close()
        elif element.name in ("message", "presence", "iq"):
            sender = adapter.parse_jid(element.getAttribute("from"))
            if sender is None or sender.host.lower() not in self.authorized:
                raise StreamViolation("not-authorized", "the sending domain was not verified on this stream")
            self.link.handle_stanza(element)
        else:
            raise StreamViolation("unsupported-stanza-type", f"<{element.name}/>")

    def _result(self, element):
        remote = element.getAttribute("from", "").lower()
        local = element.getAttribute("to", "").lower()
        key = str(element).strip()
        if not self.link.connector.domains.is_local(local):
            raise StreamViolation("host-unknown", f"not {local}")
        if remote not in self.link.peers:
            self.write(f"<db:result from='{escape_attr(local)}' to='{escape_attr(remote)}' type='error'>"
                       f"<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                       f"</error></db:result>".encode("utf-8"))
            self.log.warn("xmpp s2s: {remote} is not in the peer table; refused", remote=remote)
            return
        d = self.link.verify_key(remote, local, self.stream_id, key)

        def answer(valid):
            kind = "valid" if valid else "invalid"
            self.write(f"<db:result from='{escape_attr(local)}' to='{escape_attr(remote)}' type='{kind}'/>".encode())
            if valid:
                self.authorized.add(remote)
                self.log.info("xmpp s2s: {remote} verified by dialback", remote=remote)
            else:
                self.fail("not-authorized", "dialback key not valid")

        d.addCallback(answer).addErrback(lambda f: self.fail("remote-connection-failed", f.getErrorMessage()))

    def _verify(self, element):
        receiving = element.getAttribute("from", "").lower()
        originating = element.getAttribute("to", "").lower()
        stream_id = element.getAttribute("id", "")
        expected = dialback_key(self.link.secret, receiving, originating, stream_id)
        valid = hmac.compare_digest(expected.encode("utf-8"), str(element).strip().encode("utf-8", "surrogatepass"))
        self.write(
            f"<db:verify from='{escape_attr(originating)}' to='{escape_attr(receiving)}' "
            f"id='{escape_attr(stream_id)}' type='{'valid' if valid else 'invalid'}'/>".encode("utf-8")
        )


class OutboundStream(_S2SStream):
    """
    A stream we open to a peer. ``mode`` "route": dialback then stanzas;
    "verify": send one ``db:verify`` for an inbound stream and report.
    """

    def __init__(self, link, domain, mode="route", verify=None):
        super().__init__(link)
        self.domain = domain
        self.mode = mode
        self.verify = verify  # (stream id, key, Deferred) in verify mode
        self.ready = False
        self.stream_id = None
        self._sent = False

    def connectionMade(self):
        super().connectionMade()
        self.write(_header(self.link.connector.domain, self.domain))

    def _on_start(self, name, attributes):
        if name != (NS_STREAMS, "stream"):
            raise StreamViolation("invalid-namespace", "the root element must be stream:stream")
        self.stream_id = attributes.get("id", "")
        if not attributes.get("version", "").startswith("1."):
            if self.link.tls:
                self.fail("policy-violation", "this server federates over TLS only (STARTTLS needs version 1.0)")
                return
            self._go()

    def _go(self):
        if self._sent:
            return
        self._sent = True
        local = self.link.connector.domain
        if self.mode == "verify":
            stream_id, key, _ = self.verify
            self.write(f"<db:verify from='{escape_attr(local)}' to='{escape_attr(self.domain)}' "
                       f"id='{escape_attr(stream_id)}'>{escape_text(key)}</db:verify>".encode("utf-8"))
        else:
            key = dialback_key(self.link.secret, self.domain, local, self.stream_id)
            self.write(f"<db:result from='{escape_attr(local)}' to='{escape_attr(self.domain)}'>{key}</db:result>"
                       .encode("utf-8"))

    def _on_stanza(self, element):
        if element.uri == NS_STREAMS and element.name == "features":
            if self.link.tls and not self.encrypted:
                if not any(child.uri == NS_TLS and child.name == "starttls" for child in element.elements()):
                    self.log.warn("xmpp s2s: {domain} offers no STARTTLS; not federating with it in clear",
                                  domain=self.domain)
                    self.fail("policy-violation", "this server federates over TLS only")
                    return
                self.write(f"<starttls xmlns='{NS_TLS}'/>".encode())
                return
            self._go()
        elif element.uri == NS_TLS and element.name == "proceed" and self.link.tls and not self.encrypted:
            self.transport.startTLS(self.link.client_tls(self.domain))
            self.encrypted = True
            self._new_parser()
            self.write(_header(self.link.connector.domain, self.domain))
        elif element.uri == NS_TLS and element.name == "failure":
            self.log.warn("xmpp s2s: {domain} refused STARTTLS", domain=self.domain)
            self.close()
        elif element.uri == NS_STREAMS and element.name == "error":
            self.log.warn("xmpp s2s: {domain} sent a stream error: {error}", domain=self.domain, error=element.toXml())
            self.close()
        elif element.uri == NS_DIALBACK and element.name == "verify" and self.mode == "verify":
            _, _, d = self.verify
            if not d.called:
                d.callback(element.getAttribute("type") == "valid")
            self.close()
        elif element.uri == NS_DIALBACK and element.name == "result" and self.mode == "route":
            if element.getAttribute("type") == "valid":
                self.ready = True
                self.log.info("xmpp s2s: {domain} accepted us by dialback", domain=self.domain)
                self.link.outbound_ready(self)
            else:
                self.log.warn("xmpp s2s: {domain} refused dialback: {result}", domain=self.domain,
                              result=element.toXml())
                self.close()
        # Anything else on an outbound stream is ignored (streams are one-way without XEP-0288).

    def connectionLost(self, reason):
        if self.mode == "verify":
            _, _, d = self.verify
            if not d.called:
                d.errback(ConnectionError(f"the verify connection to {self.domain} closed"))
        super().connectionLost(reason)


class S2SLink(RemoteStanzas):
    """Our domain federated with the servers in the static ``peers`` table (domain -> endpoint string)."""

    namespace = NS_SERVER
    log = Logger()

    def __init__(self, connector, listen, peers, secret, idle_timeout=600.0, max_queued=1000, tls=False,
                 server_tls=None, ca=None):
        self.connector = connector
        self.max_queued = max_queued  # stanzas waiting for one domain's dialback
        self.tls = tls  # STARTTLS required both ways
        self.server_tls = server_tls  # our certificate's options, for inbound streams
        self._trust = ca  # what peers' certificates are checked against (None: the system's roots)
        self.api = connector.api
        self.listen = listen
        self.peers = {d.lower(): e for d, e in peers.items()}
        self.secret = secret
        self.idle_timeout = idle_timeout
        self.limits = Limits(stanza_size=1 << 20)
        self.ports = []
        self.outbound = {}  # domain -> OutboundStream (connecting or ready)
        self.queues = {}  # domain -> bytes waiting for dialback
        self.inbound = set()

    @classmethod
    def from_config(cls, connector, table):
        unknown = set(table) - S2S_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; known: {', '.join(sorted(S2S_KEYS))}",
                              key="connectors.xmpp.s2s")
        listen = table.get("listen", ["tcp:5269:interface=127.0.0.1"])
        peers = table.get("peers", {})
        secret = table.get("secret", "") or os.urandom(16).hex()
        idle = table.get("idle_timeout", 600.0)
        max_queued = table.get("max_queued", 1000)
        if not isinstance(listen, list) or not all(isinstance(x, str) for x in listen):
            raise ConfigError("expected a list of endpoint strings", key="connectors.xmpp.s2s.listen")
        if not isinstance(peers, dict) or not all(isinstance(v, str) for v in peers.values()):
            raise ConfigError('expected a table domain = "endpoint string"', key="connectors.xmpp.s2s.peers")
        if not isinstance(secret, str):
            raise ConfigError("expected a string", key="connectors.xmpp.s2s.secret")
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0:
            raise ConfigError("expected a number greater than 0", key="connectors.xmpp.s2s.idle_timeout")
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
            raise ConfigError("expected a whole number of at least 1", key="connectors.xmpp.s2s.max_queued")
        tls = table.get("tls", True)
        if not isinstance(tls, bool):
            raise ConfigError("expected true or false", key="connectors.xmpp.s2s.tls")
        server_tls = connector.tls_options_for(b"xmpp-server")
        ca = None
        if tls:
            if server_tls is None:
                raise ConfigError(
                    "s2s runs over TLS: set the connector's tls_certificate and tls_key (the certificate of "
                    "its domain), or tls = false to federate in clear (loopback tests only)",
                    key="connectors.xmpp.s2s.tls",
                )
            ca = cls._load_ca(table.get("ca", ""))
        else:
            cls.log.warn("[connectors.xmpp.s2s] tls = false: federation streams run in clear, and a peer is "
                         "authenticated by dialback alone")
        return cls(connector, listen, peers, secret, float(idle), max_queued, tls, server_tls, ca)

    @staticmethod
    def _load_ca(path):
        return load_ca(path, "connectors.xmpp.s2s.ca")

    def client_tls(self, domain):
        """Options for our side of STARTTLS to ``domain``: its certificate must name it and chain to ``ca``."""
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(domain, trustRoot=self._trust, acceptableProtocols=[b"xmpp-server"])

    def reaches(self, domain):
        return domain.lower() in self.peers

    # -- lifecycle --

    def start(self):
        factory = protocol.Factory.forProtocol(lambda: self._inbound())
        for description in self.listen:
            options = getattr(self.connector, "listen_options", {})
            self.api.listen(description, factory, connector="xmpp-s2s", options=options).addCallbacks(
                self._listening, self._listen_failed, callbackArgs=(description,), errbackArgs=(description,))

    def _inbound(self):
        stream = InboundStream(self)
        self.inbound.add(stream)
        return stream

    def _listening(self, port, description):
        self.ports.append(port)
        self.log.info("xmpp s2s: listening on {where}", where=description)

    def _listen_failed(self, failure, description):
        self.log.error("xmpp s2s: cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def stop(self):
        for stream in list(self.inbound) + list(self.outbound.values()):
            stream.close()
        ports, self.ports = self.ports, []
        return defer.DeferredList([p.stopListening() for p in ports])

    def stream_lost(self, stream):
        self.inbound.discard(stream)
        if isinstance(stream, OutboundStream) and self.outbound.get(stream.domain) is stream:
            del self.outbound[stream.domain]
            if not stream.ready:
                dropped = self.queues.pop(stream.domain, [])
                if dropped:
                    self.log.warn("xmpp s2s: {n} stanzas to {domain} dropped: no connection",
                                  n=len(dropped), domain=stream.domain)

    # -- outbound --

    def _connect(self, domain, stream):
        endpoint = endpoints.clientFromString(self.api.reactor, self.peers[domain])
        d = endpoints.connectProtocol(endpoint, stream)
        d.addErrback(self._connect_failed, domain, stream)
        return d

    def _connect_failed(self, failure, domain, stream):
        self.log.warn("xmpp s2s: cannot connect to {domain}: {why}", domain=domain, why=failure.getErrorMessage())
        stream.link.stream_lost(stream)
        if stream.mode == "verify":
            _, _, d = stream.verify
            if not d.called:
                d.errback(failure)

    def send_to(self, domain, data: bytes):
        domain = domain.lower()
        if domain not in self.peers:
            raise ConnectionError(f"{domain} is not in the s2s peer table")
        stream = self.outbound.get(domain)
        if stream is not None and stream.ready:
            stream.write(data)
            return
        queue = self.queues.setdefault(domain, [])
        if len(queue) >= self.max_queued:
            # The peer is slow to connect or to verify us: refuse rather than hold without bound.
            raise ConnectionError(f"{len(queue)} stanzas already wait for the connection to {domain}")
        queue.append(data)
        if stream is None:
            stream = self.outbound[domain] = OutboundStream(self, domain)
            self._connect(domain, stream)

    def outbound_ready(self, stream):
        for data in self.queues.pop(stream.domain, []):
            stream.write(data)

    def verify_key(self, remote, local, stream_id, key):
        """Ask the authoritative server of ``remote`` whether ``key`` is right (XEP-0220 2.3)."""
        d = defer.Deferred()
        self._connect(remote, OutboundStream(self, remote, mode="verify", verify=(stream_id, key, d)))
        return d

    def deliver(self, event):
        sender = self.connector.domains.address_to_jid(event.sender)
        to = self.connector.domains.address_to_jid(event.recipient)
        domain = event.recipient.domain
        if isinstance(event, Message):
            data = adapter.render_message(event, sender, to)
            self.send_to(domain, data)
            adapter.capture_sent(self.api, event, data)
        elif isinstance(event, Presence):
            self.send_to(domain, adapter.render_presence(event, sender + "/gateway", to))
        elif isinstance(event, Typing):
            self.send_to(domain, adapter.render_typing(event, sender, to))
        elif isinstance(event, (FileOffer, ChatEvent)):
            data = adapter.render_offer(event, sender, to)
            self.send_to(domain, data)
            adapter.capture_sent(self.api, event, data)
        else:
            # Delivered means shown: a kind this link cannot render is not delivered.
            raise ConnectionError(f"an XMPP server cannot be shown a {event.kind} event")

    def send_subscription(self, local, remote, kind):
        sender = self.connector.domains.address_to_jid(local)
        to = self.connector.domains.address_to_jid(remote)
        try:
            self.send_to(remote.domain, adapter.render_presence(None, sender, to, kind))
        except ConnectionError as e:
            self.log.warn("xmpp s2s: subscription {kind} from {sender} to {to} not sent: {why}", kind=kind,
                          sender=sender, to=to, why=str(e))
