"""Who is asking: a registered flow, a peer signed with its secret, or digest (RFC 2617/8760)."""

from __future__ import annotations

from twisted.internet.defer import succeed

from gateway.plugin import Address, DirectoryUnavailable, LoginThrottled

from gateway_sip import adapter, digest
from gateway_sip.codec import SipError, parse_auth, parse_uri
from gateway_sip.common import NAME, log


class Authentication:
    """The `SipConnector`'s checks of who sent a request (a mixin: its state is the connector's)."""

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
        credentials = _digest_credentials(request, header, realm)
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

        def throttled():
            """True (and the request refused, archived) when the throttle says no more logins now."""
            if allowed is None or allowed(handle, source):
                return False
            log.warn("SIP: login of {user}@{realm} from {source} throttled", user=user, realm=realm, source=source)
            self.api.audit(handle, "login-failed", source, connector=NAME, reason="throttled")
            self._respond(transaction, 403, "Forbidden (too many failed logins; try again later)",
                          headers=[("Retry-After", "300"), ("Warning", '399 gateway "too many failed logins"')])
            return True

        if throttled():
            return succeed(None)

        def checked(result):
            identity, ha1 = result
            # Asked again now that the secret is here: requests sent in
            # parallel all passed the first check before any of them failed.
            if throttled():
                return None
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
        credentials = _digest_credentials(request, "proxy-authorization", realm)
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


def _digest_credentials(request, header, realm):
    """The parameters of the first Digest ``header`` of ``request`` for ``realm``, or None."""
    for value in request.headers.get_all(header):
        try:
            scheme, params = parse_auth(value)
        except SipError:
            continue
        if scheme == "digest" and params.get("realm", "").lower() == realm:
            return params
    return None
