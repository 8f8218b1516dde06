"""The OSCAR server protocol: one state machine per connection for login (roasted and BUCP) and BOS."""

from __future__ import annotations

import os
import struct

from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway.plugin import (
    Address,
    AddressError,
    ChatEvent,
    DirectoryUnavailable,
    FileOffer,
    LoginThrottled,
    Message,
    Presence,
    PresenceStatus,
    Typing,
)

from gateway_oscar import adapter, codec
from gateway_oscar.codec import (
    CH_DATA,
    CH_ERROR,
    CH_KEEPALIVE,
    CH_SIGNOFF,
    CH_SIGNON,
    FLAP_VERSION,
    OscarCodecError,
    Reader,
    encode_tlvs,
    first_tlv,
    u16,
    u32,
)

# The families this server offers (01/03) and their versions (01/18).
FAMILY_VERSIONS = {0x0001: 4, 0x0002: 1, 0x0003: 1, 0x0004: 1, 0x0009: 1, 0x0013: 4}

# Codes of TLV 9 in a channel-4 frame that closes a BOS connection.
SIGNOFF_OTHER_LOCATION = 0x0001
SIGNOFF_PROTOCOL_ERROR = 0x0003
SIGNOFF_RATE_LIMIT = 0x0004
SIGNOFF_IDLE = 0x0005
SIGNOFF_SHUTDOWN = 0x0006

# Rate class notifications (01/0A codes).
RATE_CHANGED, RATE_WARNING, RATE_LIMITED, RATE_CLEAR = 1, 2, 3, 4

# SNACs a client sends that need no answer.
QUIET = frozenset({(0x01, 0x08), (0x01, 0x14), (0x04, 0x02), (0x13, 0x11), (0x13, 0x12), (0x0B, 0x03)})

# Bytes of feedbag items per 13/06 reply.
SSI_CHUNK = 7000

# Server-initiated SNACs get request ids with bit 31 set, so no client mistakes them for a reply.
SERVER_REQUEST = 0x80000000

# The first four bytes of a client's IM (SNAC 04/06) and where its request id is.
IM_SEND = b"\x00\x04\x00\x06"
SNAC_REQUEST_ID = struct.Struct("!I")

# Chat navigation and chat rooms: not served (group chat comes later); asking for them is archived as refused.
CHAT_FAMILIES = frozenset({0x0D, 0x0E})

# How many ICBM cookies wait for their IM's delivery at most (the oldest are forgotten).
MAX_PENDING_COOKIES = 10000


class ProtocolViolation(Exception):
    """Bad input that closes the connection; ``code`` goes into TLV 9 of the channel-4 frame."""

    def __init__(self, reason, code=SIGNOFF_PROTOCOL_ERROR):
        super().__init__(reason)
        self.reason, self.code = reason, code


class RateLimiter:
    """
    OSCAR's rate algorithm for one class: the level is a moving average of
    the milliseconds between SNACs over ``window`` SNACs; under ``alert``
    the client is warned, under ``limit`` its SNACs are refused until the
    level climbs back over ``clear``, under ``disconnect`` it is dropped.
    """

    OK, ALERT, LIMITED, CLEARED, DISCONNECT = "ok", "alert", "limited", "cleared", "disconnect"

    __slots__ = ("info", "level", "last", "limited", "alerted", "told")

    def __init__(self, info, now_ms):
        self.info = info
        self.level = float(info.max)
        self.last = now_ms
        self.limited = False
        self.alerted = False
        self.told = False

    def hit(self, now_ms) -> str:
        info = self.info
        delta = max(0.0, now_ms - self.last)
        self.last = now_ms
        self.level = min(float(info.max), (self.level * (info.window - 1) + delta) / info.window)
        if self.level < info.disconnect:
            return self.DISCONNECT
        if self.limited:
            if self.level >= info.clear:
                self.limited = self.alerted = False
                return self.CLEARED
            return self.LIMITED
        if self.level < info.limit:
            self.limited = True
            return self.LIMITED
        if self.level < info.alert:
            if not self.alerted:
                self.alerted = True
                return self.ALERT
            return self.OK
        if self.alerted and self.level >= info.clear:
            self.alerted = False
            return self.CLEARED
        return self.OK


class OscarServerProtocol(protocol.Protocol, TimeoutMixin):
    """
    One client connection. States: ``new`` (sign-on frame awaited),
    ``login`` (roasted password being checked), ``bucp`` (17/06 awaited),
    ``bucp-wait`` (secret being looked up), ``bucp-key`` (17/02 awaited),
    ``bos`` (signed on with a cookie), ``closed``. Any frame that does not
    fit the state closes the connection. Login connections are closed
    after the login reply, as AOL's were.
    """

    log = Logger(namespace="gateway.oscar")

    def __init__(self, connector):
        self.connector = connector
        self.api = connector.api
        self.callLater = connector.api.clock.callLater  # TimeoutMixin's timer, on the injected clock
        self.state = "new"
        self.buffer = b""
        self.seq = 0
        self.server_request = SERVER_REQUEST
        # Login
        self.login_name = b""
        self.login_address = None
        self.bucp_key = None
        self.bucp_secret = None
        self.bucp_identity = None
        # BOS
        self.ticket = None
        self.address = None
        self.session = None
        self.profile = adapter.ClientProfile()
        self.family_versions = {}
        self.limiters = {}
        self.im_limiter = None
        self.feedbag = None
        self.profile_text = b""
        self.profile_mime = None  # TLV 1 of 02/04: the profile's MIME type and charset
        self.away_html = b""
        self.away_mime = None  # TLV 3 of 02/04
        self.idle = False
        self.icq_status = None
        self.signed_on_at = 0
        self.signed_on_time = 0.0
        self.logging_in = False
        self.login_waiters = []
        self.ssi_active = False

    # -- plumbing ---------------------------------------------------------------

    @property
    def peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    @property
    def host(self):
        """The client's address, for the gateway's login throttle and the access record."""
        return getattr(self.transport.getPeer(), "host", None) if self.transport is not None else None

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:
                pass
        self.setTimeout(self.connector.login_timeout)
        self.connector.connections.add(self)
        self.send_flap(CH_SIGNON, FLAP_VERSION)

    def send_flap(self, channel, payload=b""):
        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.write(codec.encode_flap(channel, self.seq, payload))

    def send_snac(self, family, subtype, body=b"", request_id=None, flags=0):
        if request_id is None:
            self.server_request = request_id = SERVER_REQUEST | ((self.server_request + 1) & 0x7FFFFFFF)
        self.seq = seq = (self.seq + 1) & 0xFFFF
        self.transport.write(codec.encode_snac_flap(seq, family, subtype, body, flags, request_id))

    def send_error(self, family, request_id, code):
        self.send_snac(family, 0x0001, u16(code), request_id)

    def signoff(self, code, reason, tlvs=None):
        """Close with a channel-4 frame: TLV 9 = code, TLV 0x0B = reason."""
        if self.state == "closed":
            return
        self.state = "closed"
        payload = encode_tlvs(tlvs if tlvs is not None else [(0x0009, u16(code)), (0x000B, reason.encode("utf-8"))])
        self.send_flap(CH_SIGNOFF, payload)
        self.setTimeout(None)
        self.transport.loseConnection()

    def violation(self, reason, code=SIGNOFF_PROTOCOL_ERROR):
        self.connector.metrics_bad_input += 1
        self.log.warn(
            "oscar: closing {peer} ({who}) in state {state}: {reason}",
            peer=self.peer, who=str(self.address or self.login_address or "-"), state=self.state, reason=reason,
        )
        self.signoff(code, reason)

    def dataReceived(self, data):
        if self.state == "closed":
            return
        self.resetTimeout()
        try:
            frames, self.buffer = codec.split_flaps(self.buffer + data if self.buffer else data,
                                                    self.connector.max_frame)
        except OscarCodecError as e:
            self.buffer = b""
            self.violation(f"malformed FLAP: {e}")
            return
        for channel, seq, payload in frames:
            if self.state == "closed":
                return
            try:
                if channel == CH_DATA:
                    self.data_received(payload)
                else:
                    self.frame_received(codec.Flap(channel, seq, payload))
            except ProtocolViolation as e:
                self.violation(e.reason, e.code)
            except OscarCodecError as e:
                self.violation(f"malformed frame on channel {channel}: {e}")
            except Exception as e:  # never into the reactor
                self.log.failure("oscar: internal error on {peer}", peer=self.peer)
                self.violation(f"internal error: {type(e).__name__}")

    def data_received(self, payload):
        """A channel-2 payload: an IM sent on a signed-on connection takes a short cut past `snac_received`."""
        if payload[:4] == IM_SEND and self.state == "bos" and len(payload) >= 10 and not payload[4] & 0x80:
            request_id = SNAC_REQUEST_ID.unpack_from(payload, 6)[0]
            limiter = self.im_limiter
            if limiter is None or self._rate_verdict(limiter, 0x04, request_id):
                self.im_send(payload, 10, request_id)
            return
        self.snac_received(codec.parse_snac(payload))

    def frame_received(self, frame):
        channel = frame.channel
        if channel == CH_DATA:
            self.snac_received(codec.parse_snac(frame.payload))
        elif channel == CH_SIGNON:
            if self.state != "new":
                raise ProtocolViolation(f"sign-on frame in state {self.state}")
            self.signon_received(codec.parse_signon(frame.payload))
        elif channel == CH_KEEPALIVE:
            pass
        elif channel == CH_SIGNOFF:
            self.state = "closed"
            self.setTimeout(None)
            self.transport.loseConnection()
        elif channel == CH_ERROR:
            self.log.info("oscar: error frame from {peer}: {data}", peer=self.peer, data=frame.payload.hex())

    def timeoutConnection(self):
        self.log.info("oscar: {peer} ({who}) idle too long, closing", peer=self.peer, who=str(self.address or "-"))
        self.signoff(SIGNOFF_IDLE, "idle timeout")

    def connectionLost(self, reason=None):
        self.state = "closed"
        self.setTimeout(None)
        self.connector.connections.discard(self)
        session, self.session = self.session, None
        if session is not None:
            self.connector.session_gone(self, session)

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
        cookie = self.connector.issue_cookie(identity, address, self.login_name, profile)
        if cookie is None:
            self.login_failed(channel4, adapter.LOGIN_UNAVAILABLE, "too many logins in progress")
            return
        self.log.info("oscar: {who} authenticated from {peer} ({client})", who=str(address), peer=self.peer,
                      client=profile.name)
        self.login_reply(
            [(0x0001, self.login_name), (0x0005, self.connector.bos_address.encode("ascii")), (0x0006, cookie)],
            channel4,
        )

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

    # -- BOS sign-on ------------------------------------------------------------------

    def bos_signon(self, cookie, tlvs):
        ticket = self.connector.take_cookie(cookie)
        if ticket is None:
            self.log.info("oscar: {peer} presented an unknown or expired cookie", peer=self.peer)
            self.signoff(SIGNOFF_PROTOCOL_ERROR, "unknown or expired login cookie")
            return
        self.ticket = ticket
        self.address = ticket.address
        self.profile = ticket.profile
        self.state = "bos"
        self.signed_on_time = self.api.clock.seconds()
        self.signed_on_at = int(self.signed_on_time)
        self.setTimeout(self.connector.idle_timeout)
        now_ms = self._now_ms()
        self.limiters = {info.id: RateLimiter(info, now_ms) for info in self.connector.rate_classes}
        self.im_limiter = self.limiters.get(
            self.connector.rate_class_of.get((0x04, 0x06), self.connector.default_rate_class))
        self.send_snac(0x01, 0x03, b"".join(u16(f) for f in FAMILY_VERSIONS), request_id=0)

    def _now_ms(self):
        return self.api.clock.seconds() * 1000.0

    # -- SNAC dispatch --------------------------------------------------------------

    def snac_received(self, snac):
        if self.state in ("bucp", "bucp-key", "bucp-wait"):
            if snac.family != 0x17:
                raise ProtocolViolation(f"SNAC {snac.name} before login")
            self.bucp_snac(snac)
            return
        if self.state != "bos":
            raise ProtocolViolation(f"SNAC {snac.name} in state {self.state}")
        if snac.family == 0x17:
            raise ProtocolViolation(f"login SNAC {snac.name} on a BOS connection")
        if not self._rate_ok(snac):
            return
        key = (snac.family, snac.subtype)
        handler = self.HANDLERS.get(key)
        if handler is not None:
            result = handler(self, snac)
            if result is not None:  # an inlineCallbacks handler: its errors close the connection too
                result.addErrback(self._async_failed, snac)
        elif key not in QUIET:
            if snac.family in CHAT_FAMILIES:
                self.connector.rendezvous.refuse_chat(self, "", "message" if key == (0x0E, 0x05) else "join")
            self.send_error(snac.family, snac.request_id, adapter.ERR_NOT_SUPPORTED)

    def _async_failed(self, failure, snac):
        if failure.check(ProtocolViolation):
            self.violation(failure.value.reason, failure.value.code)
        elif failure.check(OscarCodecError):
            self.violation(f"malformed SNAC {snac.name}: {failure.getErrorMessage()}")
        else:
            self.log.failure("oscar: internal error handling {snac} from {peer}", failure, snac=snac.name, peer=self.peer)
            self.violation(f"internal error: {failure.type.__name__}")

    def _rate_ok(self, snac) -> bool:
        class_id = self.connector.rate_class_of.get((snac.family, snac.subtype), self.connector.default_rate_class)
        limiter = self.limiters.get(class_id)
        if limiter is None:
            return True
        return self._rate_verdict(limiter, snac.family, snac.request_id)

    def _rate_verdict(self, limiter, family, request_id) -> bool:
        """Count one SNAC of ``family`` against ``limiter``'s class; False when it must not be handled."""
        verdict = limiter.hit(self._now_ms())
        if verdict == RateLimiter.OK:
            return True
        class_id = limiter.info.id
        if verdict == RateLimiter.DISCONNECT:
            self.violation(f"rate class {class_id} under its disconnect level", SIGNOFF_RATE_LIMIT)
            return False
        if verdict == RateLimiter.LIMITED:
            if not limiter.told:  # tell the client once per limited spell
                limiter.told = True
                self.send_snac(0x01, 0x0A, u16(RATE_LIMITED) + self._rate_class_bytes(limiter))
                self.log.info("oscar: {who} rate limited (class {cls})", who=str(self.address), cls=class_id)
            self.send_error(family, request_id, adapter.ERR_RATE_TO_HOST)
            return False
        if verdict == RateLimiter.CLEARED:
            limiter.told = False
        code = RATE_WARNING if verdict == RateLimiter.ALERT else RATE_CLEAR
        self.send_snac(0x01, 0x0A, u16(code) + self._rate_class_bytes(limiter))
        return True

    def _rate_class_bytes(self, limiter):
        i = limiter.info
        return struct.pack("!HIIIIIIIIB", i.id, i.window, i.clear, i.alert, i.limit, i.disconnect,
                           int(limiter.level), i.max, 0, 0)

    # -- family 1: generic service ----------------------------------------------------

    def on_versions(self, snac):
        r = Reader(snac.body, "01/17")
        pairs = []
        while r.remaining >= 4:
            family, version = r.u16(), r.u16()
            self.family_versions[family] = version
            if family in FAMILY_VERSIONS:
                pairs.append(u16(family) + u16(FAMILY_VERSIONS[family]))
        self.send_snac(0x01, 0x18, b"".join(pairs), snac.request_id)

    def on_rate_request(self, snac):
        with_state = self.family_versions.get(0x0001, 0) >= 3
        body = codec.encode_rate_info(self.connector.rate_classes, with_state=with_state)
        self.send_snac(0x01, 0x07, body, snac.request_id)

    def on_self_info(self, snac):
        self.send_snac(0x01, 0x0F, self._self_info(), snac.request_id)

    def _self_info(self):
        status = self._status()[0]
        tlvs = adapter.user_info_tlvs(status, self.address.network, self.signed_on_at)
        return codec.encode_user_info(self.ticket.screen_name, tlvs)

    def on_service_request(self, snac):
        r = Reader(snac.body, "01/04")
        family = r.u16() if r.remaining >= 2 else 0
        if family in CHAT_FAMILIES:
            room = ""
            if family == 0x0E:
                try:
                    room = codec.room_name(codec.parse_room_info(first_tlv(r.tlvs(), 0x0001))[1])
                except OscarCodecError:
                    pass
            self.connector.rendezvous.refuse_chat(self, room, "join")
        self.send_error(0x01, snac.request_id, adapter.ERR_SERVICE_UNAVAILABLE)

    def on_idle(self, snac):
        seconds = Reader(snac.body, "01/11").u32()
        self.idle = seconds > 0
        self._presence_changed()

    def on_icq_status(self, snac):
        value = first_tlv(codec.parse_tlvs(snac.body), 0x0006)
        if value is not None:
            self.icq_status = adapter.status_from_icq(value)
            self._presence_changed()

    def on_client_online(self, snac):
        if self.session is not None or self.logging_in:
            return
        status, note = self._status()
        self.connector.start_session(self, status, note)

    def logged_in(self):
        """A Deferred that fires (with None) once the session login under way has ended, either way."""
        d = Deferred()
        self.login_waiters.append(d)
        return d

    def login_ended(self):
        waiters, self.login_waiters = self.login_waiters, []
        for d in waiters:
            d.callback(None)

    def _status(self):
        if self.away_html:
            return PresenceStatus.AWAY, adapter.html_to_text(adapter.decode_rich(self.away_html, self.away_mime))
        if self.icq_status is not None and self.icq_status is not PresenceStatus.AVAILABLE:
            return self.icq_status, ""
        if self.idle:
            return PresenceStatus.IDLE, ""
        return PresenceStatus.AVAILABLE, ""

    def _presence_changed(self):
        if self.session is not None:
            status, note = self._status()
            if (status, note) != (self.session.status, self.session.note):
                self.api.set_presence(self.session, status, note)

    # -- family 2: location ---------------------------------------------------------------

    def on_location_rights(self, snac):
        self.send_snac(0x02, 0x03, encode_tlvs([(0x0001, u16(4096)), (0x0002, u16(32)), (0x0005, u16(32))]),
                       snac.request_id)

    def on_set_info(self, snac):
        tlvs = codec.parse_tlvs(snac.body)
        profile = first_tlv(tlvs, 0x0002)
        if profile is not None:
            self.profile_text = profile[: self.connector.max_profile]
            self.profile_mime = first_tlv(tlvs, 0x0001)
        away = first_tlv(tlvs, 0x0004)
        if away is not None:
            self.away_html = away[: self.connector.max_profile]
            self.away_mime = first_tlv(tlvs, 0x0003)
            self._presence_changed()

    @inlineCallbacks
    def on_get_info(self, snac):
        r = Reader(snac.body, "02/05")
        if snac.subtype == 0x0005:
            kind = r.u16()
            want_profile, want_away = kind == 0x0001, kind == 0x0003
        else:  # 02/15: u32 flags (1 profile, 2 away)
            flags = r.u32()
            want_profile, want_away = bool(flags & 1), bool(flags & 2)
        name = r.bytes8()
        try:
            target = adapter.address_for(name, self.address.network)
        except AddressError:
            self.send_error(0x02, snac.request_id, adapter.ERR_BAD_FORMAT)
            return
        info = yield self.connector.user_info(target, self.address.network)
        event = None
        if info is not None and self.state == "bos":
            # Rendered from the event as the path decided it (sanitized, transformed), or not at all.
            event = yield self.connector.disclose_info(self.address, info, want_profile, want_away)
        if self.state != "bos":
            return
        if event is None:
            # Offline, unknown, or not to be disclosed to this asker: the same answer for all three.
            self.send_error(0x02, snac.request_id, adapter.ERR_NOT_LOGGED_IN)
            return
        tlvs = []
        if want_profile:
            tlvs += [(0x0001, adapter.RICH_MIME), (0x0002, adapter.render_rich(event.text, event.html))]
        if want_away:
            tlvs += [(0x0003, adapter.RICH_MIME), (0x0004, adapter.render_rich(event.note, None))]
        block = codec.encode_user_info(name, adapter.user_info_tlvs(event.status, self.address.network,
                                                                    info.online_since))
        self.send_snac(0x02, 0x06, block + encode_tlvs(tlvs), snac.request_id)

    # -- family 3: buddy list (client-side lists) ------------------------------------------

    def on_buddy_rights(self, snac):
        limit = self.connector.max_buddies
        self.send_snac(0x03, 0x03, encode_tlvs([(0x0001, u16(limit)), (0x0002, u16(limit * 3)), (0x0004, u16(160))]),
                       snac.request_id)

    def on_buddy_add(self, snac):
        names = self._names(snac.body)
        self.connector.change_contacts(self, add=names)

    def on_buddy_remove(self, snac):
        names = self._names(snac.body)
        self.connector.change_contacts(self, remove=names)

    def _names(self, body):
        r = Reader(body, "buddy names")
        out = []
        while r.remaining:
            try:
                out.append(adapter.address_for(r.bytes8(), self.address.network))
            except AddressError:
                continue
        return out

    # -- family 4: ICBM -------------------------------------------------------------------

    def on_icbm_rights(self, snac):
        body = u16(2) + u32(0x0000000B) + u16(self.connector.max_message) + u16(999) + u16(999) + u32(0)
        self.send_snac(0x04, 0x05, body, snac.request_id)

    def on_icbm_send(self, snac):
        self.im_send(snac.body, 0, snac.request_id)

    def im_send(self, data, pos, request_id):
        """04/06 whose body starts at ``data[pos]``: submit the IM; the outcome becomes an ack or an error."""
        cookie, channel, name, tlv2, want_ack = codec.parse_im_send(data, pos)
        if channel != 1:
            self.other_channel(codec.parse_icbm_send(data[pos:] if pos else data), request_id, want_ack)
            return
        connector = self.connector
        try:
            recipient = connector.address_for(name, self.address.network)
        except AddressError:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        if tlv2 is None:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        text, html = adapter.im_text(tlv2)
        if len(text) > connector.max_message:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        event = self.api.message(self.address, recipient, text, html=html)
        if self.api.capturing:
            # The ICBM (SNAC 04/06 body) exactly as the client sent it.
            self.api.capture(event.id, "received", self.address.network, bytes(data[pos:]))
        cookies = connector.icbm_cookies
        cookies[event.id] = cookie
        if len(cookies) > MAX_PENDING_COOKIES:
            cookies.popitem(last=False)
        # submit never fails; _icbm_outcome catches its own errors, so one callback is all it takes.
        self.api.submit(event, origin=connector).addCallback(
            self._icbm_outcome, event.id, cookie, name, request_id, want_ack)

    def other_channel(self, icbm, request_id, want_ack):
        """ICBM channel 2 (rendezvous) goes to the connector's `Rendezvous`; others are refused and archived."""
        if icbm.channel == 2:
            self.connector.rendezvous.received(self, icbm, request_id, want_ack)
            return
        try:
            recipient = self.connector.address_for(icbm.screen_name, self.address.network)
        except AddressError:
            self.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        text = adapter.icq_message_text(icbm.tlv(0x0005)) if icbm.channel == 4 else ""
        self.api.refuse(self.api.message(self.address, recipient, text),
                        f"ICBM channel {icbm.channel} is not supported on this gateway", "unsupported")
        self.send_error(0x04, request_id, adapter.ERR_NOT_SUPPORTED)

    def _icbm_outcome(self, outcome, event_id, cookie, name, request_id, want_ack):
        try:
            if outcome.rejected:
                self.connector.icbm_cookies.pop(event_id, None)
                if self.state == "closed":
                    return
                self.log.info(
                    "oscar: IM from {who} to {to} rejected: {code} {reason}",
                    who=str(self.address), to=name.decode("latin-1"), code=outcome.code, reason=outcome.reason,
                )
                self.send_error(0x04, request_id, adapter.icbm_error_for(outcome.code))
            elif want_ack and self.state != "closed":
                self.send_snac(0x04, 0x0C, cookie + b"\x00\x01" + bytes((len(name),)) + name, request_id)
        except Exception:
            self.log.failure("oscar: IM outcome handling failed")

    def on_typing(self, snac):
        body = snac.body
        if len(body) < 11 or len(body) < 13 + body[10]:
            raise OscarCodecError(f"typing notification 04/14 of {len(body)} bytes is too short")
        end = 11 + body[10]
        name, kind = body[11:end], (body[end] << 8) | body[end + 1]
        try:
            recipient = self.connector.address_for(name, self.address.network)
        except AddressError:
            return
        self.api.submit(self.api.typing(self.address, recipient, kind == 0x0002), origin=self.connector)

    # -- family 9: permit/deny ----------------------------------------------------------------

    def on_bos_rights(self, snac):
        self.send_snac(0x09, 0x03, encode_tlvs([(0x0001, u16(200)), (0x0002, u16(200))]), snac.request_id)

    # -- family 0x13: feedbag (SSI) ------------------------------------------------------------

    def on_ssi_rights(self, snac):
        limits = [self.connector.max_buddies, 50, 200, 200, 1, 1] + [0] * 14
        self.send_snac(0x13, 0x03, encode_tlvs([(0x0004, b"".join(u16(n) for n in limits))]), snac.request_id)

    @inlineCallbacks
    def on_ssi_request(self, snac):
        if self.feedbag is None:
            self.feedbag = yield self.connector.load_feedbag(self)
        if self.state != "bos":
            return
        # A long list goes in several 13/06 replies; all but the last have time 0 and SNAC flag 1 ("more follow").
        chunks, chunk, size = [], [], 0
        for item in self.feedbag.ordered():
            length = len(codec.encode_ssi_item(item))
            if chunk and size + length > SSI_CHUNK:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += length
        chunks.append(chunk)
        for i, items in enumerate(chunks):
            last = i == len(chunks) - 1
            body = codec.encode_ssi_list(items, self.feedbag.last_modified if last else 0)
            self.send_snac(0x13, 0x06, body, snac.request_id, flags=0 if last else 0x0001)

    def on_ssi_activate(self, snac):
        self.ssi_active = True

    @inlineCallbacks
    def on_ssi_change(self, snac):
        action = {0x08: "add", 0x09: "modify", 0x0A: "delete"}[snac.subtype]
        items = codec.parse_ssi_items(snac.body)
        if len(items) > self.connector.max_buddies:
            self.send_error(0x13, snac.request_id, adapter.ERR_BAD_FORMAT)
            return
        if self.feedbag is None:
            self.feedbag = yield self.connector.load_feedbag(self)
        codes = [self.feedbag.apply(action, item) for item in items]
        self.send_snac(0x13, 0x0E, adapter.ssi_status_body(codes), snac.request_id)
        if any(item.kind == codec.SSI_BUDDY for item, code in zip(items, codes) if code == 0):
            added = [item for item, code in zip(items, codes) if code == 0 and item.kind == codec.SSI_BUDDY
                     and action == "add"]
            yield self.connector.store_feedbag(self, added)

    HANDLERS = {
        (0x01, 0x02): on_client_online,
        (0x01, 0x04): on_service_request,
        (0x01, 0x06): on_rate_request,
        (0x01, 0x0E): on_self_info,
        (0x01, 0x11): on_idle,
        (0x01, 0x17): on_versions,
        (0x01, 0x1E): on_icq_status,
        (0x02, 0x02): on_location_rights,
        (0x02, 0x04): on_set_info,
        (0x02, 0x05): on_get_info,
        (0x02, 0x15): on_get_info,
        (0x03, 0x02): on_buddy_rights,
        (0x03, 0x04): on_buddy_add,
        (0x03, 0x05): on_buddy_remove,
        (0x04, 0x04): on_icbm_rights,
        (0x04, 0x06): on_icbm_send,
        (0x04, 0x14): on_typing,
        (0x09, 0x02): on_bos_rights,
        (0x13, 0x02): on_ssi_rights,
        (0x13, 0x04): on_ssi_request,
        (0x13, 0x05): on_ssi_request,
        (0x13, 0x07): on_ssi_activate,
        (0x13, 0x08): on_ssi_change,
        (0x13, 0x09): on_ssi_change,
        (0x13, 0x0A): on_ssi_change,
    }

    # -- from the gateway to the client ---------------------------------------------------------

    def deliver(self, event):
        if self.state != "bos":
            raise ConnectionError(f"OSCAR connection of {self.address} is closed")
        if isinstance(event, Message):
            self._deliver_message(event)
        elif isinstance(event, Presence):
            self._deliver_presence(event)
        elif isinstance(event, Typing):
            body = b"\x00" * 8 + u16(1) + self._name8(event.sender) + u16(2 if event.active else 0)
            self.send_snac(0x04, 0x14, body)
        elif isinstance(event, FileOffer):
            self.connector.rendezvous.deliver(self, event)
        elif isinstance(event, ChatEvent):
            # No chat rooms here: what the path delivered is shown as a notice, never dropped unseen.
            self.deliver_notice(event.sender, adapter.chat_notice(event), event)

    def _name8(self, address):
        name = adapter.screen_name_of(address)[:255]
        return bytes((len(name),)) + name

    def _deliver_message(self, event):
        connector = self.connector
        cookie = connector.icbm_cookies.pop(event.id, None) or os.urandom(8)
        parts = [cookie, b"\x00\x01", connector.sender_block(event.sender, self.address.network),
                 adapter.im_tlv(event.text, event.html, self.profile)]
        if event.created and event.created < self.signed_on_time:
            parts.append(b"\x00\x06\x00\x00")  # TLV 6: held while the recipient was offline
        body = b"".join(parts)
        self.send_snac(0x04, 0x07, body)
        if self.api.capturing:
            self.api.capture(event.id, "sent", self.address.network, body, adapter.lost_in_rendering(event, self.profile))

    def send_rendezvous(self, sender, cookie, block):
        """A channel-2 04/07 from ``sender`` (an `Address`) with the rendezvous ``block`` (TLV 5)."""
        info = self.connector.sender_block(sender, self.address.network)
        body = cookie + b"\x00\x02" + info + codec.encode_tlv(5, block)
        self.send_snac(0x04, 0x07, body)

    def deliver_notice(self, sender, text, event):
        """An IM from ``sender`` with ``text`` standing for an event the client has no native form for."""
        parts = [os.urandom(8), b"\x00\x01", self.connector.sender_block(sender, self.address.network),
                 adapter.im_tlv(text, None, self.profile)]
        if event.created and event.created < self.signed_on_time:
            parts.append(b"\x00\x06\x00\x00")
        self.send_snac(0x04, 0x07, b"".join(parts))

    def _deliver_presence(self, event):
        sender = adapter.screen_name_of(event.sender)[:255]
        if event.status is PresenceStatus.OFFLINE:
            self.send_snac(0x03, 0x0C, codec.encode_user_info(sender, []))
            return
        tlvs = adapter.user_info_tlvs(event.status, self.address.network, int(event.created))
        self.send_snac(0x03, 0x0B, codec.encode_user_info(sender, tlvs))

    def kick(self, code, reason):
        """Close this BOS connection from the gateway's side (shutdown, another login)."""
        if self.state != "closed":
            self.log.info("oscar: signing {who} off: {reason}", who=str(self.address), reason=reason)
            self.signoff(code, reason)
