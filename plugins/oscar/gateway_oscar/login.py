"""Login on an OSCAR connection: the roasted password on channel 1 and the BUCP exchange of family 0x17."""

from __future__ import annotations

import os

from gateway.plugin import Address, AddressError, DirectoryUnavailable, LoginThrottled

from gateway_oscar import adapter, codec
from gateway_oscar.codec import CH_SIGNOFF, encode_tlvs, first_tlv, u16
from gateway_oscar.common import ProtocolViolation


class Authorizer:
    """The `OscarServerProtocol`'s login side (a mixin: its state is the protocol's)."""

    # -- login: roasted password on channel 1 --------------------------------------

    def signon_received(self, tlvs):
        cookie = first_tlv(tlvs, 0x0006)
        name = first_tlv(tlvs, 0x0001)
        if cookie is not None:
            self.bos_signon(cookie, tlvs)
        elif name is not None:
            self.state = "login"
            self.roasted_login(name, first_tlv(tlvs, 0x0002), tlvs)
        else:
            self.state = "bucp"

    def _login_address(self, name: bytes) -> Address:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("screen name is not UTF-8")
        text = codec.normalize_screen_name(text)
        if not text or len(text) > 97:
            raise ProtocolViolation("empty or over-long screen name")
        try:
            return Address(adapter.network_of(text), text)
        except AddressError as e:
            raise ProtocolViolation(f"bad screen name: {e}")

    def roasted_login(self, name, roasted, tlvs):
        address = self.login_address = self._login_address(name)
        self.login_name = name
        profile = adapter.client_profile(tlvs)
        if roasted is None:
            self.login_failed(channel4=True, code=adapter.LOGIN_BAD_PASSWORD, why="no password TLV")
            return
        if not self.api.login_allowed(address, self.host):
            self.login_failed(channel4=True, code=adapter.LOGIN_TOO_FAST, why="too many failed logins")
            return
        password = codec.unroast(roasted).decode("utf-8", errors="replace")

        def checked(identity):
            if identity is None:
                # authenticate counted and archived the failure already.
                return self.api.identity_for(address).addCallback(
                    lambda known: self.login_failed(
                        channel4=True,
                        code=adapter.LOGIN_BAD_PASSWORD if known else self._unknown_code(address),
                        why="wrong password" if known else "unknown user",
                        counted=True,
                    )
                )
            self.login_ok(identity, address, profile, channel4=True)

        def refused(failure):
            failure.trap(LoginThrottled, DirectoryUnavailable)
            if failure.check(LoginThrottled):
                self.login_failed(channel4=True, code=adapter.LOGIN_TOO_FAST, why="throttled", counted=True)
            else:  # "try again later", in OSCAR's terms; no error of the gateway's
                self.login_failed(channel4=True, code=adapter.LOGIN_UNAVAILABLE, why="directory unavailable")

        self.api.authenticate(address, password, source=self.host).addCallback(checked).addErrback(
            refused).addErrback(self._login_error, True)

    def _unknown_code(self, address):
        return adapter.LOGIN_NO_SUCH_ICQ if address.network == "icq" else adapter.LOGIN_INVALID_ACCOUNT

    def _login_error(self, failure, channel4):
        if failure.check(DirectoryUnavailable):
            self.login_failed(channel4=channel4, code=adapter.LOGIN_UNAVAILABLE, why="directory unavailable")
            return
        self.log.failure("oscar: login of {who} failed", failure, who=str(self.login_address))
        self.login_failed(channel4=channel4, code=adapter.LOGIN_UNAVAILABLE, why="internal error")

    def login_reply(self, tlvs, channel4):
        if self.state == "closed":
            return
        if channel4:
            self.send_flap(CH_SIGNOFF, encode_tlvs(tlvs))
        else:
            self.send_snac(0x17, 0x03, encode_tlvs(tlvs), request_id=self._bucp_request)
        self.state = "closed"
        self.setTimeout(None)
        self.transport.loseConnection()

    def login_ok(self, identity, address, profile, channel4):
        d = self.connector.placed_cookie(identity, address, self.login_name, profile)
        d.addCallback(self._placed, identity, address, profile, channel4)
        d.addErrback(self._not_placed, channel4)

    def _placed(self, placed, identity, address, profile, channel4):
        if self.state == "closed":
            return
        if placed is None:
            cookie, bos = self.connector.issue_cookie(identity, address, self.login_name, profile), \
                self.connector.bos_address
            if cookie is None:
                self.login_failed(channel4, adapter.LOGIN_UNAVAILABLE, "too many logins in progress")
                return
        else:
            cookie, bos = placed
        self.log.info("oscar: {who} authenticated from {peer} ({client}); BOS at {bos}", who=str(address),
                      peer=self.peer, client=profile.name, bos=bos)
        self.login_reply([(0x0001, self.login_name), (0x0005, bos.encode("ascii")), (0x0006, cookie)], channel4)

    def _not_placed(self, failure, channel4):
        self.log.failure("oscar: the login of {who} could not be handed to another node", failure,
                         who=str(self.login_address))
        self.login_failed(channel4, adapter.LOGIN_UNAVAILABLE, "too many logins in progress")

    def login_failed(self, channel4, code, why, counted=False):
        if self.login_address is not None and not counted:
            if code == adapter.LOGIN_BAD_PASSWORD:
                # Counts towards the gateway's throttle, and is archived.
                self.api.login_failed(self.login_address, self.host, reason=why)
            else:
                self.api.audit(self.login_address, "login-failed", self.host, connector=self.connector.name,
                               reason=why)
        self.log.info("oscar: login of {who} from {peer} refused: {why}", who=str(self.login_address), peer=self.peer,
                      why=why)
        url = f"https://gateway.invalid/oscar/login-error?code={code}".encode("ascii")
        self.login_reply([(0x0001, self.login_name), (0x0008, u16(code)), (0x0004, url)], channel4)

    # -- login: BUCP (family 0x17) -------------------------------------------------

    _bucp_request = 0

    def bucp_snac(self, snac):
        self._bucp_request = snac.request_id
        tlvs = codec.parse_tlvs(snac.body)
        if snac.subtype == 0x0006 and self.state == "bucp":
            name = first_tlv(tlvs, 0x0001)
            if name is None:
                raise ProtocolViolation("17/06 without a screen name")
            self.login_address = self._login_address(name)
            self.login_name = name
            self.state = "bucp-wait"
            if not self.api.login_allowed(self.login_address, self.host):
                self.login_failed(False, adapter.LOGIN_TOO_FAST, "too many failed logins")
                return
            self.api.secret(self.login_address, "md5").addCallback(self._bucp_challenge, snac.request_id).addErrback(
                self._login_error, False
            )
        elif snac.subtype == 0x0002 and self.state == "bucp-key":
            self._bucp_verify(tlvs)
        else:
            raise ProtocolViolation(f"SNAC 17/{snac.subtype:02X} in state {self.state}")

    def _bucp_challenge(self, result, request_id):
        identity, secret = result
        if self.state != "bucp-wait":
            return
        if identity is None:
            self.login_failed(False, self._unknown_code(self.login_address), "unknown user")
            return
        # Without a secret the exchange still runs to 17/02, where it fails as a wrong password
        # would: clients expect the key (Twisted's reads any answer to 17/06 as one).
        self.bucp_identity = identity
        self.bucp_secret = bytes.fromhex(secret) if secret else None
        self.bucp_key = "".join(str(b % 10) for b in os.urandom(10)).encode("ascii")
        self.state = "bucp-key"
        self.send_snac(0x17, 0x07, u16(len(self.bucp_key)) + self.bucp_key, request_id)

    def _bucp_verify(self, tlvs):
        name = first_tlv(tlvs, 0x0001)
        digest = first_tlv(tlvs, 0x0025)
        if name is None or digest is None:
            raise ProtocolViolation("17/02 without screen name or password hash")
        if self._login_address(name) != self.login_address:
            raise ProtocolViolation("17/02 names another screen name than 17/06")
        # Asked again now that the proof is here: the 17/06 of attempts made
        # in parallel all passed the first check before any of them failed.
        if not self.api.login_allowed(self.login_address, self.host):
            self.login_failed(False, adapter.LOGIN_TOO_FAST, "too many failed logins")
            return
        if self.bucp_secret is None:
            self.log.warn(
                "oscar: no MD5 login secret is known for {who}: {why}", who=str(self.login_address),
                why="log in once with a client that sends the password (e.g. XMPP or OSCAR's roasted login)"
                if not getattr(self.api, "secrets_complete", True) else "set the password again",
            )
            self.login_failed(False, adapter.LOGIN_BAD_PASSWORD, "no MD5 secret")
            return
        expected = codec.bucp_hash(self.bucp_key, self.bucp_secret)
        if digest != expected:
            weak = first_tlv(tlvs, 0x004C) is None
            self.login_failed(
                False, adapter.LOGIN_BAD_PASSWORD,
                "wrong password" + (" (weak MD5 hash: needs the plain password, which is not stored)" if weak else ""),
            )
            return
        self.login_ok(self.bucp_identity, self.login_address, adapter.client_profile(tlvs), channel4=False)
