"""The c2s stream state machine: header, STARTTLS, SASL, bind, then stanzas; limits and stream errors."""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep
from twisted.words.xish import domish

from gateway.plugin import Address, AddressError, DirectoryUnavailable, LoginThrottled

from gateway_xmpp import adapter, sasl
from gateway_xmpp.codec import (
    NS_CLIENT,
    NS_STREAMS,
    Limits,
    StreamParser,
    StreamViolation,
    escape_attr,
    escape_text,
    stream_header,
)

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"

# States of a c2s stream.
HEADER = "header"  # waiting for the (next) stream header
NEGOTIATING = "negotiating"  # header seen, before SASL success
AUTHENTICATING = "authenticating"  # a SASL exchange is under way
AUTHENTICATED = "authenticated"  # SASL done, waiting for bind
BOUND = "bound"  # a resource is bound: stanzas flow
CLOSED = "closed"

MAX_SASL_ATTEMPTS = 3


class StreamSettings:
    """What one listener allows: limits, timeouts, TLS, and SASL mechanisms."""

    def __init__(self, *, limits=Limits(), idle_timeout=600.0, login_timeout=30.0, rate=500.0, burst=1000.0,
                 tls_options=None, require_tls=True, mechanisms=("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")):
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.login_timeout = login_timeout
        self.rate = rate
        self.burst = burst
        self.tls_options = tls_options
        self.require_tls = require_tls and tls_options is not None
        self.mechanisms = tuple(mechanisms)


class _Authenticator(xmlstream.ListenAuthenticator):
    """Twisted's authenticator hook; the negotiation itself is the stream's state machine."""

    def streamStarted(self, rootElement):  # pragma: no cover - the stream parses headers itself
        pass


class C2SStream(xmlstream.XmlStream):
    """
    One client connection. ``connector`` is the `XmppConnector` that owns
    the sessions; ``settings`` the listener's `StreamSettings`. Incoming
    bytes go to a restricted `StreamParser`; any violation, exception or
    timeout ends this stream alone with a stream error and a log line.
    """

    namespace = NS_CLIENT
    initiating = False
    log = Logger()

    @staticmethod
    def new_id() -> str:
        """A fresh stream id (tests replace it for wire-exact checks)."""
        return os.urandom(8).hex()

    def __init__(self, connector, settings: StreamSettings):
        xmlstream.XmlStream.__init__(self, _Authenticator())
        self.connector = connector
        self.api = connector.api
        self.clock = connector.api.clock
        self.settings = settings
        self.state = HEADER
        self.tls = False
        self.parser = None
        self.identity = None
        self.address = None  # gateway Address of the authenticated user
        self.jid = None  # full JID text once bound
        self.bare = None
        self.session = None  # gateway Session once available
        self.wants_roster = False
        self.logging_in = False
        self.sasl_attempts = 0
        self._sasl = None
        self._last_activity = 0.0
        self._idle_call = None
        self._login_call = None
        self._tokens = settings.burst
        self._token_time = 0.0
        self._resume_call = None
        self.peer = "?"

    # -- connection ------------------------------------------------------------

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:  # pragma: no cover - not a TCP transport
                pass
        self.peer = str(self.transport.getPeer())
        # The client's address: for the gateway's login throttle and the access record.
        self.host = getattr(self.transport.getPeer(), "host", None)
        self._new_parser()
        now = self.clock.seconds()
        self._last_activity = self._token_time = now
        self._idle_call = self.clock.callLater(self.settings.idle_timeout, self._check_idle)
        self._login_call = self.clock.callLater(self.settings.login_timeout, self._login_timed_out)

    def _new_parser(self):
        if self.parser is not None:
            self.parser.close()
        self.parser = StreamParser(self._on_start, self._on_stanza, self._on_end, self.settings.limits)
        self.state = HEADER if self.state != CLOSED else CLOSED
        self._headerSent = False

    def dataReceived(self, data):
        if self.state == CLOSED:
            return
        self._last_activity = self.clock.seconds()
        try:
            self.parser.feed(data)
        except StreamViolation as e:
            self.stream_error(e.condition, e.text)
        except Exception:
            self.log.failure("xmpp: internal error on the stream of {peer}", peer=self.peer, jid=self.jid)
            self.stream_error("internal-server-error", "")

    def connectionLost(self, reason):
        self.state = CLOSED
        if self.parser is not None:
            self.parser.close()
        for name in ("_idle_call", "_login_call", "_resume_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self.connector.stream_closed(self)

    def write(self, data: bytes):
        if self.state != CLOSED and self.transport is not None:
            self.transport.write(data)

    def close(self):
        """End the stream politely."""
        if self.state != CLOSED:
            self.write(b"</stream:stream>")
            self.state = CLOSED
            self.parser.close()
            self.transport.loseConnection()

    def stream_error(self, condition: str, text: str = "", content: str = ""):
        """
        Send a stream error (``content``: the condition element's text, as
        see-other-host's address), close, and log why (RFC 6120 4.9).
        """
        if self.state == CLOSED:
            return
        quiet = ("connection-timeout", "system-shutdown", "conflict", "see-other-host")
        level = self.log.warn if condition not in quiet else self.log.info
        level(
            "xmpp: closing stream from {peer} ({jid}): {condition} {text}",
            peer=self.peer, jid=self.jid or "-", condition=condition, text=text,
        )
        out = b""
        if not self._headerSent:
            out = stream_header(NS_CLIENT, self.connector.domain, self.new_id())
        if content:
            body = escape_text(content)
            out += f"<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'>{body}</{condition}>".encode()
        else:
            out += f"<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>".encode()
        if text:
            out += f"<text xmlns='{NS_STREAM_ERRORS}'>{escape_text(text)}</text>".encode("utf-8")
        out += b"</stream:error></stream:stream>"
        self.write(out)
        self.state = CLOSED
        self.parser.close()
        self.transport.loseConnection()

    # -- timers ------------------------------------------------------------------

    def _check_idle(self):
        idle = self.clock.seconds() - self._last_activity
        if idle >= self.settings.idle_timeout:
            self._idle_call = None
            self.stream_error("connection-timeout", f"idle for {int(idle)} seconds")
        else:
            self._idle_call = self.clock.callLater(self.settings.idle_timeout - idle, self._check_idle)

    def _login_timed_out(self):
        self._login_call = None
        if self.state != BOUND:
            self.stream_error("connection-timeout", "no login within the time allowed")

    def _rate_ok(self):
        """Token bucket per stream; when empty, stop reading until it refills."""
        now = self.clock.seconds()
        rate = self.settings.rate
        self._tokens = min(self.settings.burst, self._tokens + (now - self._token_time) * rate)
        self._token_time = now
        self._tokens -= 1
        if self._tokens < 0 and self._resume_call is None:
            try:
                self.transport.pauseProducing()
            except Exception:  # pragma: no cover - transports without flow control
                return True
            self._resume_call = self.clock.callLater(-self._tokens / rate, self._resume)
        return True

    def _resume(self):
        self._resume_call = None
        if self.state != CLOSED:
            self.transport.resumeProducing()

    # -- stream header and features ----------------------------------------------

    def _on_start(self, name, attributes):
        if name != (NS_STREAMS, "stream"):
            raise StreamViolation("invalid-namespace", "the root element must be stream:stream")
        to = attributes.get("to", "")
        if self.state != HEADER:
            raise StreamViolation("not-well-formed", "a second stream header")
        self._headerSent = False
        if to and to.lower() != self.connector.domain:
            self._send_header()
            raise StreamViolation("host-unknown", f"this server is {self.connector.domain}, not {to}")
        version = attributes.get("version", "")
        if not version.startswith("1."):
            self._send_header()
            raise StreamViolation("unsupported-version", "only XMPP 1.0 streams are supported")
        self.sid = self.new_id()
        self._send_header()
        if self.address is None:
            if not self._offers_tls():
                # In a cluster, a less loaded node takes the login (not before TLS: a redirect
                # in the clear could be forged to send the client elsewhere).
                target = self.connector.api.placement("xmpp")
                if target is not None:
                    self.stream_error("see-other-host", "a less loaded node takes this login", content=target)
                    return
            self.state = NEGOTIATING
            self.write(self._features_before_auth())
        else:
            self.state = AUTHENTICATED
            self.write(
                f"<stream:features><bind xmlns='{NS_BIND}'/>"
                f"<session xmlns='{NS_SESSION}'><optional/></session></stream:features>".encode()
            )

    def _send_header(self):
        if not self._headerSent:
            self.write(stream_header(NS_CLIENT, self.connector.domain, self.sid or self.new_id()))
            self._headerSent = True

    def _offers_tls(self):
        return self.settings.tls_options is not None and not self.tls

    def _features_before_auth(self) -> bytes:
        parts = ["<stream:features>"]
        if self._offers_tls():
            parts.append(f"<starttls xmlns='{NS_TLS}'>")
            if self.settings.require_tls:
                parts.append("<required/>")
            parts.append("</starttls>")
        if not (self.settings.require_tls and not self.tls):
            parts.append(f"<mechanisms xmlns='{sasl.NS_SASL}'>")
            parts.extend(f"<mechanism>{m}</mechanism>" for m in self.settings.mechanisms)
            parts.append("</mechanisms>")
        parts.append("</stream:features>")
        return "".join(parts).encode()

    def _on_end(self):
        self.log.info("xmpp: {jid} closed its stream", jid=self.jid or self.peer)
        self.close()

    # -- stanzas by state -----------------------------------------------------------

    def _on_stanza(self, element: domish.Element):
        state = self.state
        if state == BOUND:
            self._rate_ok()
            element["from"] = self.jid  # the server stamps the sender (RFC 6120 8.1.2.1)
            try:
                self.connector.handle_stanza(self, element)
            except StreamViolation:
                raise
            except Exception:
                # A bug handling one stanza answers that stanza; the stream goes on.
                self.log.failure("xmpp: handling <{name}/> from {jid} failed", name=element.name, jid=self.jid)
                if element.getAttribute("type") not in ("error", "result"):
                    self.write(adapter.stanza_error(element, "internal-server-error", "wait"))
        elif element.uri == NS_STREAMS and element.name == "error":
            self.log.info("xmpp: {peer} sent a stream error: {error}", peer=self.peer, error=element.toXml())
            self.close()
        elif state == NEGOTIATING:
            self._negotiate(element)
        elif state == AUTHENTICATING:
            self._sasl_step(element)
        elif state == AUTHENTICATED:
            self._bind(element)
        else:
            raise StreamViolation("not-authorized", f"<{element.name}/> is not allowed now")

    def _negotiate(self, element):
        if element.uri == NS_TLS and element.name == "starttls":
            if not self._offers_tls():
                self.write(f"<failure xmlns='{NS_TLS}'/></stream:stream>".encode())
                self.log.warn("xmpp: {peer} asked for STARTTLS, which is not offered", peer=self.peer)
                self.state = CLOSED
                self.parser.close()
                self.transport.loseConnection()
                return
            self.write(f"<proceed xmlns='{NS_TLS}'/>".encode())
            self.transport.startTLS(self.settings.tls_options)
            self.tls = True
            self._new_parser()
            return
        if element.uri == sasl.NS_SASL and element.name == "auth":
            if self.settings.require_tls and not self.tls:
                self._sasl_failure("encryption-required", "use STARTTLS first")
                return
            self._sasl_start(element)
            return
        raise StreamViolation("not-authorized", f"<{element.name}/> before authentication")

    # -- SASL ----------------------------------------------------------------------

    def _sasl_failure(self, condition, text=""):
        self.state = NEGOTIATING
        self._sasl = None
        self.sasl_attempts += 1
        out = f"<failure xmlns='{sasl.NS_SASL}'><{condition}/>"
        if text:
            out += f"<text>{escape_text(text)}</text>"
        self.write((out + "</failure>").encode("utf-8"))
        self.log.info("xmpp: SASL failed for {peer}: {condition} {text}", peer=self.peer, condition=condition, text=text)
        if self.sasl_attempts >= MAX_SASL_ATTEMPTS:
            self.stream_error("policy-violation", "too many failed logins")

    def _address(self, user):
        try:
            return Address(adapter.NETWORK, user, self.connector.domain)
        except AddressError as e:
            raise sasl.SASLFailure("not-authorized", str(e))

    def _sasl_start(self, element):
        mechanism = element.getAttribute("mechanism", "")
        if mechanism not in self.settings.mechanisms:
            self._sasl_failure("invalid-mechanism")
            return
        self.state = AUTHENTICATING
        try:
            data = sasl.b64decode(str(element))
            if mechanism == "PLAIN":
                authzid, user, password = sasl.parse_plain(data)
                address = self._address(user)
                self._check_authzid(authzid, address)
                d = self.api.authenticate(address, password, source=self.host)
                d.addCallback(self._plain_checked, address)
            else:
                self._sasl = sasl.ScramServer(mechanism)
                user = self._sasl.start(data)
                address = self._address(user)
                self._check_authzid(self._sasl.authzid, address)
                # SCRAM checks its proof here, not in the directory: the same
                # throttle and record as every other login, before any work.
                if self._scram_throttled(address):
                    return
                d = self.api.secret(address, self._sasl.scheme)
                d.addCallback(self._scram_secret, address)
        except sasl.SASLFailure as e:
            self._sasl_failure(e.condition, e.text)
            return
        d.addErrback(self._sasl_throttled).addErrback(self._sasl_error)

    def _scram_throttled(self, address):
        """True (and the login refused, archived) when the throttle says no more logins of ``address`` now."""
        if self.api.login_allowed(address, self.host):
            return False
        self.api.audit(address, "login-failed", self.host, connector="xmpp", reason="throttled")
        self._sasl_failure("temporary-auth-failure", "too many failed logins; try again later")
        return True

    def _sasl_throttled(self, failure):
        failure.trap(LoginThrottled, DirectoryUnavailable)
        if self.state != CLOSED:
            why = ("too many failed logins; try again later" if failure.check(LoginThrottled)
                   else "the directory is unavailable; try again later")
            self._sasl_failure("temporary-auth-failure", why)

    def _check_authzid(self, authzid, address):
        if authzid and authzid.lower() not in (address.handle, address.user):
            raise sasl.SASLFailure("invalid-authzid", "you can only log in as yourself")

    def _sasl_error(self, failure: Failure):
        self.log.failure("xmpp: SASL on {peer} failed inside the gateway", failure, peer=self.peer)
        if self.state != CLOSED:
            self._sasl_failure("temporary-auth-failure")

    def _plain_checked(self, identity, address):
        if self.state != AUTHENTICATING:
            return
        if identity is None:
            self._sasl_failure("not-authorized", "wrong user name or password")
            return
        self._authenticated(identity, address, b"")

    def _scram_secret(self, result, address):
        if self.state != AUTHENTICATING:
            return
        identity, value = result
        self._sasl.identity = identity
        self._sasl.address = address
        challenge = self._sasl.challenge(value if identity is not None else None)
        self.write(f"<challenge xmlns='{sasl.NS_SASL}'>{sasl.b64encode(challenge)}</challenge>".encode())

    def _sasl_step(self, element):
        if element.uri != sasl.NS_SASL:
            raise StreamViolation("not-authorized", f"<{element.name}/> during SASL")
        if element.name == "abort":
            self._sasl_failure("aborted")
            return
        if element.name != "response" or self._sasl is None or not hasattr(self._sasl, "nonce"):
            self._sasl_failure("malformed-request", "unexpected SASL element")
            return
        address = getattr(self._sasl, "address", None)
        # Asked again now that the proof is here: the first messages of
        # exchanges made in parallel all passed the first check before any
        # of them failed.
        if address is not None and self._scram_throttled(address):
            return
        try:
            final = self._sasl.finish(sasl.b64decode(str(element)))
        except sasl.SASLFailure as e:
            if address is not None and e.condition == "not-authorized":
                self.api.login_failed(address, self.host, reason="wrong password or no such user")
            self._sasl_failure(e.condition, e.text)
            return
        self._authenticated(self._sasl.identity, self._sasl.address, final)

    def _authenticated(self, identity, address, final: bytes):
        self._sasl = None
        self.identity = identity
        self.address = address
        body = sasl.b64encode(final) if final else ""
        self.write(f"<success xmlns='{sasl.NS_SASL}'>{body}</success>".encode())
        self.log.info("xmpp: {address} authenticated from {peer}", address=str(address), peer=self.peer)
        self._new_parser()

    # -- bind ------------------------------------------------------------------------

    def _bind(self, element):
        if element.name != "iq" or element.getAttribute("type") != "set":
            raise StreamViolation("not-authorized", "bind a resource first")
        bind = None
        for child in element.elements():
            if child.uri == NS_BIND and child.name == "bind":
                bind = child
        if bind is None:
            self.write(adapter.stanza_error(element, "not-allowed", "cancel", "bind a resource first"))
            return
        resource = ""
        for child in bind.elements():
            if child.name == "resource":
                resource = str(child).strip()
        try:
            resource = resourceprep.prepare(resource) if resource else ""
        except UnicodeError:
            resource = ""
        if not resource or len(resource.encode("utf-8")) > 1023:
            resource = "gw-" + os.urandom(4).hex()
        self.bare = self.connector.domains.address_to_jid(self.address)
        resource = self.connector.bind(self, self.bare, resource)
        self.jid = f"{self.bare}/{resource}"
        self.state = BOUND
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None
        self.write(
            f"<iq type='result' id='{escape_attr(element.getAttribute('id', ''))}'>"
            f"<bind xmlns='{NS_BIND}'><jid>{escape_text(self.jid)}</jid></bind></iq>".encode("utf-8")
        )


__all__ = ["C2SStream", "StreamSettings"]
