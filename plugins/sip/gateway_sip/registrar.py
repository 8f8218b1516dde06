"""The registrar: REGISTER with digest, bindings per flow, their expiry."""

from __future__ import annotations

from gateway_sip.codec import SipError, parse_name_addr, parse_uri, digits
from gateway_sip.common import NAME, log
from gateway_sip.protocol import StreamFlow
from gateway_sip.records import Binding


class Registrar:
    """The `SipConnector`'s registrar (a mixin: its state is the connector's)."""

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
        refused = self.api.admission() if adding else None
        if refused is not None:
            # A node of a cluster that takes no new logins (drained, or full): SIP's "try elsewhere or
            # later"; the registrations it holds still refresh.
            self._respond(transaction, 503, headers=[("Retry-After", "60"),
                                                     ("Warning", f'399 gateway "{refused[1]}"')])
            return None
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
