"""The OSCAR server protocol: one state machine per connection for login (roasted and BUCP) and BOS."""

from __future__ import annotations

import struct

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway_oscar import adapter, codec
from gateway_oscar.codec import (
    CH_DATA,
    CH_ERROR,
    CH_KEEPALIVE,
    CH_SIGNOFF,
    CH_SIGNON,
    FLAP_VERSION,
    OscarCodecError,
    encode_tlvs,
    u16,
)
from gateway_oscar.common import (
    CHAT_FAMILIES,
    FAMILY_VERSIONS,
    SIGNOFF_IDLE,
    SIGNOFF_OTHER_LOCATION,
    SIGNOFF_PROTOCOL_ERROR,
    SIGNOFF_RATE_LIMIT,
    SIGNOFF_SHUTDOWN,
    ProtocolViolation,
)
from gateway_oscar.chat import ChatServices
from gateway_oscar.families import SSI_CHUNK, BosFamilies
from gateway_oscar.icbm import MAX_PENDING_COOKIES, Icbm
from gateway_oscar.login import Authorizer

__all__ = [
    "OscarServerProtocol", "ProtocolViolation", "RateLimiter", "FAMILY_VERSIONS", "CHAT_FAMILIES", "QUIET",
    "SIGNOFF_OTHER_LOCATION", "SIGNOFF_PROTOCOL_ERROR", "SIGNOFF_RATE_LIMIT", "SIGNOFF_IDLE", "SIGNOFF_SHUTDOWN",
    "RATE_CHANGED", "RATE_WARNING", "RATE_LIMITED", "RATE_CLEAR", "SSI_CHUNK", "SERVER_REQUEST", "IM_SEND",
    "SNAC_REQUEST_ID", "MAX_PENDING_COOKIES",
]

# Rate class notifications (01/0A codes).
RATE_CHANGED, RATE_WARNING, RATE_LIMITED, RATE_CLEAR = 1, 2, 3, 4

# SNACs a client sends that need no answer.
QUIET = frozenset({(0x01, 0x08), (0x01, 0x14), (0x04, 0x02), (0x13, 0x11), (0x13, 0x12), (0x0B, 0x03)})

# Server-initiated SNACs get request ids with bit 31 set, so no client mistakes them for a reply.
SERVER_REQUEST = 0x80000000

# The first four bytes of a client's IM (SNAC 04/06) and where its request id is.
IM_SEND = b"\x00\x04\x00\x06"
SNAC_REQUEST_ID = struct.Struct("!I")


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


class OscarServerProtocol(Authorizer, BosFamilies, Icbm, ChatServices, protocol.Protocol, TimeoutMixin):
    """
    One client connection. States: ``new`` (sign-on frame awaited),
    ``login`` (roasted password being checked), ``bucp`` (17/06 awaited),
    ``bucp-wait`` (secret being looked up), ``bucp-key`` (17/02 awaited),
    ``bos`` (signed on with a cookie), ``chatnav`` and ``chat`` (a service
    connection of a BOS one, opened with a service cookie: chat navigation,
    one room; `gateway_oscar.chat`), ``closed``. Any frame that does not
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
        # Rooms (gateway_oscar.chat): on BOS, room name -> ChatLink; on a service connection, its BOS and room.
        self.chat_links = {}
        self.bos = None
        self.room_link = None

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
        if self.bos is not None:
            self.service_lost()
            return
        if self.chat_links:
            self.close_chat_links()
        session, self.session = self.session, None
        if session is not None:
            self.connector.session_gone(self, session)

    def kick(self, code, reason):
        """Close this BOS connection from the gateway's side (shutdown, another login)."""
        if self.state != "closed":
            self.log.info("oscar: signing {who} off: {reason}", who=str(self.address), reason=reason)
            self.signoff(code, reason)

    # -- BOS sign-on ------------------------------------------------------------------

    def bos_signon(self, cookie, tlvs):
        service = self.connector.take_service_ticket(cookie)
        if service is not None:
            self.service_signon(service)
            return
        ticket = self.connector.take_cookie(cookie)
        if ticket is not None:
            self._signed_on(ticket)
            return
        # Perhaps another node of the cluster authenticated this login and sent the client here.
        self.state = "claiming"
        d = self.connector.claim_cookie(cookie)
        d.addCallback(self._claimed)
        d.addErrback(self._internal_claim)

    def _claimed(self, ticket):
        if self.state != "claiming":
            return
        if ticket is None:
            self.log.info("oscar: {peer} presented an unknown or expired cookie", peer=self.peer)
            self.signoff(SIGNOFF_PROTOCOL_ERROR, "unknown or expired login cookie")
            return
        self._signed_on(ticket)

    def _internal_claim(self, failure):
        self.log.failure("oscar: taking a login cookie failed", failure)
        if self.state == "claiming":
            self.signoff(SIGNOFF_PROTOCOL_ERROR, "the login cannot be taken now")

    def _signed_on(self, ticket):
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

    HANDLERS = {
        (0x01, 0x02): BosFamilies.on_client_online,
        (0x01, 0x04): BosFamilies.on_service_request,
        (0x01, 0x06): BosFamilies.on_rate_request,
        (0x01, 0x0E): BosFamilies.on_self_info,
        (0x01, 0x11): BosFamilies.on_idle,
        (0x01, 0x17): BosFamilies.on_versions,
        (0x01, 0x1E): BosFamilies.on_icq_status,
        (0x02, 0x02): BosFamilies.on_location_rights,
        (0x02, 0x04): BosFamilies.on_set_info,
        (0x02, 0x05): BosFamilies.on_get_info,
        (0x02, 0x15): BosFamilies.on_get_info,
        (0x03, 0x02): BosFamilies.on_buddy_rights,
        (0x03, 0x04): BosFamilies.on_buddy_add,
        (0x03, 0x05): BosFamilies.on_buddy_remove,
        (0x04, 0x04): Icbm.on_icbm_rights,
        (0x04, 0x06): Icbm.on_icbm_send,
        (0x04, 0x14): Icbm.on_typing,
        (0x09, 0x02): BosFamilies.on_bos_rights,
        (0x13, 0x02): BosFamilies.on_ssi_rights,
        (0x13, 0x04): BosFamilies.on_ssi_request,
        (0x13, 0x05): BosFamilies.on_ssi_request,
        (0x13, 0x07): BosFamilies.on_ssi_activate,
        (0x13, 0x08): BosFamilies.on_ssi_change,
        (0x13, 0x09): BosFamilies.on_ssi_change,
        (0x13, 0x0A): BosFamilies.on_ssi_change,
    }

    def snac_received(self, snac):
        if self.state in ("bucp", "bucp-key", "bucp-wait"):
            if snac.family != 0x17:
                raise ProtocolViolation(f"SNAC {snac.name} before login")
            self.bucp_snac(snac)
            return
        if self.state in ("chatnav", "chat"):
            if snac.family == 0x17:
                raise ProtocolViolation(f"login SNAC {snac.name} on a service connection")
            if self._rate_ok(snac):
                result = self.service_snac(snac)
                if result is not None:
                    result.addErrback(self._async_failed, snac)
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
