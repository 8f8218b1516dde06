"""One client's connection through the logging proxy: relayed upstream, what the proxy reads decided on the path."""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet import protocol
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from gateway.plugin import (
    Address,
    AddressError,
    ChatEvent,
    Presence,
    PresenceStatus,
)

from gateway_oscar import adapter, codec, intercept
from gateway_oscar.bounded import BoundedMap
from gateway_oscar.codec import CH_DATA, CH_SIGNOFF, CH_SIGNON, OscarCodecError, encode_tlvs, first_tlv, u16
from gateway_oscar.intercept import CHAT_IN, CHAT_OUT, CHAT_SERVICE, IM_IN, IM_OUT, UNKNOWN
from gateway_oscar.pipe import FrameSplitter, OrderedPipe
from gateway_oscar.rendezvous import room_address

NAME = "oscar-proxy"

# How offers are named in FileOffer.transfer (never shown to anyone).
TRANSFER_PREFIX = NAME + ":"

# With fail_closed off, the outcome codes that still stop a frame at the proxy (a decision);
# anything else (the path could not decide) lets it through.
BLOCKING = frozenset({"policy", "transform", "archive-unavailable", "internal", "invalid"})

# Services (SNAC families) a client may be redirected to (01/05 TLV 0x0D), for the log.
SERVICE_NAMES = {0x05: "adverts", 0x07: "admin", 0x0D: "chat navigation", 0x0E: "chat", 0x0F: "directory search",
                 0x10: "buddy icons", 0x18: "alerts"}


def _target(text, default_port):
    """Where a client is sent: ``host:port``, or a bare ``host`` on ``default_port`` (as AIM clients read it)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):  # [IPv6]:port
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@attrs.define(eq=False)
class Pending:
    """A frame waiting for the path: forwarded rendered from the decided event, or withheld."""

    leg: object  # the ProxyConnection
    to_client: bool
    slot: list
    frame: codec.Flap
    chunk: bytes
    render: object  # event -> the SNAC payload to forward
    after: object = None  # called with the event once it was forwarded
    done: bool = False

    @property
    def pipe(self):
        return self.leg.to_client if self.to_client else self.leg.to_upstream

    def forward(self, event):
        if self.done:
            return
        data = codec.encode_flap(self.frame.channel, self.frame.seq, self.render(event))
        self.done = True
        self.pipe.release(self.slot, data)
        if self.after is not None:
            self.after(event)

    def drop(self):
        if not self.done:
            self.done = True
            self.pipe.withhold(self.slot, self.chunk)


class UpstreamProtocol(protocol.Protocol):
    """The proxy's connection to the upstream service: hands everything to its `ProxyConnection`."""

    def __init__(self, leg):
        self.leg = leg
        self.swallow_hello = True  # the client had the proxy's own hello already

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self.leg is None:
            self.transport.loseConnection()
        else:
            self.leg.upstream_connected(self)

    def dataReceived(self, data):
        if self.leg is not None:  # None once the client side dropped this upstream
            self.leg.from_upstream(self, data)

    def connectionLost(self, reason=None):
        if self.leg is not None:
            self.leg.upstream_lost(self)


class ProxyConnection(protocol.Protocol, TimeoutMixin):
    """One client relayed to the upstream; the logging happens here."""

    log = Logger(namespace="gateway.oscar.proxy")

    def __init__(self, connector):
        self.connector = connector
        self.api = connector.api
        self.callLater = connector.api.clock.callLater
        self.upstream = None
        self.upstream_target = None
        self.client_frames = FrameSplitter()
        self.upstream_frames = FrameSplitter()
        limit = connector.max_buffer
        self.to_upstream = OrderedPipe(self._write_upstream, limit, self._pause_client, self._resume_client)
        self.to_client = OrderedPipe(self._write_client, limit, self._pause_upstream, self._resume_upstream)
        self.early = []  # client bytes before the upstream is connected
        self.early_bytes = 0
        self.reading = {"client": True, "upstream": True}  # False while paused for back-pressure
        self.screen_name = None
        self.profile = adapter.ClientProfile()  # the client's quirks, learned from its login
        self.service = None  # the SNAC family of a redirected service connection, when known
        self.room = ""  # the room of a chat service connection
        self.room_requests = BoundedMap(16)  # request id of a 01/04 for a chat room -> the room's name
        self.chat_sent = BoundedMap(100)  # cookie of a chat message let out -> its event (the room reflects it)
        self.closed = False

    # -- connections -----------------------------------------------------------------------

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.setTimeout(self.connector.idle_timeout)
        self.connector.connections.add(self)
        # Greet the client at once (some clients wait for it); the upstream is chosen by its first frame.
        self.to_client.push_own(CH_SIGNON, codec.FLAP_VERSION)

    def connect_upstream(self, target):
        self.upstream_target = target
        d = self.connector.connect(target, lambda: UpstreamProtocol(self))
        d.addErrback(self._upstream_failed, target)

    def _upstream_failed(self, failure, target):
        self.log.warn("oscar proxy: cannot reach upstream {host}:{port}: {why}", host=target[0], port=target[1],
                      why=failure.getErrorMessage())
        if not self.closed:
            payload = encode_tlvs([(0x0008, u16(adapter.LOGIN_UNAVAILABLE)),
                                   (0x0004, b"https://gateway.invalid/oscar/upstream-unavailable")])
            self.to_client.push_own(CH_SIGNOFF, payload)
            self.transport.loseConnection()

    def upstream_connected(self, upstream):
        if self.closed or self.upstream is not None:
            upstream.leg = None
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
        early, self.early, self.early_bytes = self.early, [], 0
        for chunk in early:
            upstream.transport.write(chunk)
        if not self.to_upstream.paused:
            self._resume_client()
        if not self.to_client.paused:
            self._resume_upstream()

    def upstream_lost(self, upstream):
        if upstream is self.upstream and not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.closed = True
        self.setTimeout(None)
        self.connector.connections.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def timeoutConnection(self):
        self.log.info("oscar proxy: {who} idle, closing", who=self.screen_name or "-")
        TimeoutMixin.timeoutConnection(self)

    def _write_upstream(self, data):
        if self.upstream is None:
            self.early.append(data)
            self.early_bytes += len(data)
            if self.early_bytes > self.connector.max_buffer:
                self._pause_client()
        else:
            self.upstream.transport.write(data)

    # Back-pressure: a side that sends more than the proxy may hold for it stops being read.

    def _pause_client(self):
        if self.reading["client"] and not self.closed:
            self.reading["client"] = False
            self.connector.paused += 1
            self.transport.pauseProducing()

    def _resume_client(self):
        if not self.reading["client"] and not self.closed and self.early_bytes <= self.connector.max_buffer:
            self.reading["client"] = True
            self.transport.resumeProducing()

    def _pause_upstream(self):
        if self.reading["upstream"] and self.upstream is not None:
            self.reading["upstream"] = False
            self.connector.paused += 1
            self.upstream.transport.pauseProducing()

    def _resume_upstream(self):
        if not self.reading["upstream"] and self.upstream is not None:
            self.reading["upstream"] = True
            self.upstream.transport.resumeProducing()

    def _write_client(self, data):
        if not self.closed:
            self.transport.write(data)

    # -- client -> upstream ------------------------------------------------------------------

    def dataReceived(self, data):
        self.resetTimeout()
        for frame, chunk in self.client_frames.feed(data):
            if self.closed:
                return
            if frame is None and self.connector.fail_closed:
                self.went_raw("client", chunk)
                return
            if self.upstream_target is None:
                self.choose_upstream(frame)
            try:
                self.client_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect a client frame; passed through")
                self.to_upstream.push(chunk)

    def choose_upstream(self, frame):
        """The client's first frame says where it goes: a cookie this proxy handed out names the real address."""
        target = self.connector.upstream
        if frame is not None and frame.channel == CH_SIGNON:
            try:
                tlvs = codec.parse_signon(frame.payload)
            except OscarCodecError:
                tlvs = []
            cookie = first_tlv(tlvs, 0x0006)
            if cookie is not None:
                route = self.connector.routes.pop(cookie, None)
                if route is None:
                    self.log.info("oscar proxy: a client brought a cookie this proxy did not hand out; "
                                  "relaying it to the login service")
                else:
                    target, self.service, self.room = route.target, route.service, route.room
                    self.profile = route.profile or self.profile
                    self.learn_name(route.name)
            else:
                self.learn_name(first_tlv(tlvs, 0x0001))
                if tlvs:
                    self.profile = adapter.client_profile(tlvs)
        self.connect_upstream(target)

    def client_frame(self, frame, chunk):
        if frame is None:
            self.to_upstream.push_raw(chunk)
            return
        if frame.channel == CH_DATA:
            key = intercept.snac_key(frame.payload)
            if self.reads(key, to_client=False):
                self.intercept(frame, chunk, key, to_client=False)
                return
            if len(frame.payload) >= 10:
                snac = codec.parse_snac(frame.payload)
                if snac.family == 0x17 and snac.subtype in (0x02, 0x06):
                    tlvs = codec.parse_tlvs(snac.body)
                    self.learn_name(first_tlv(tlvs, 0x0001))
                    if snac.subtype == 0x02:
                        self.profile = adapter.client_profile(tlvs)
                elif key == (0x01, 0x04):
                    self.chat_room_request(snac)
        self.to_upstream.push(chunk)

    def chat_room_request(self, snac):
        """A 01/04 for a chat room: its name, for the chat connection the answer (01/05) leads to."""
        r = codec.Reader(snac.body, "01/04")
        if r.remaining >= 2 and r.u16() == CHAT_SERVICE:
            try:
                room = codec.room_name(codec.parse_room_info(first_tlv(r.tlvs(), 0x0001))[1])
            except OscarCodecError:
                return
            self.room_requests[snac.request_id] = room

    def learn_name(self, name):
        if name:
            self.screen_name = codec.normalize_screen_name(name.decode("utf-8", "replace"))

    # -- upstream -> client -------------------------------------------------------------------

    def from_upstream(self, upstream, data):
        if upstream is not self.upstream:
            return
        for frame, chunk in self.upstream_frames.feed(data):
            if self.closed:
                return
            if upstream.swallow_hello:
                upstream.swallow_hello = False
                if frame is not None and frame.channel == CH_SIGNON:
                    self.to_client.skip(chunk)  # the client had the proxy's hello
                    continue
            if frame is None and self.connector.fail_closed:
                self.went_raw("upstream", chunk)
                return
            try:
                self.upstream_frame(frame, chunk)
            except Exception:
                self.log.failure("oscar proxy: could not inspect an upstream frame; passed through")
                self.to_client.push(chunk)

    def upstream_frame(self, frame, chunk):
        if frame is None:
            self.to_client.push_raw(chunk)
            return
        if frame.channel == CH_SIGNOFF and frame.payload:
            try:
                tlvs = codec.parse_tlvs(frame.payload)
            except OscarCodecError:
                tlvs = None
            if tlvs and first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                payload = encode_tlvs(self.rewrite_address(tlvs, "BOS"))
                self.to_client.push(codec.encode_flap(CH_SIGNOFF, frame.seq, payload))
                return
        elif frame.channel == CH_DATA:
            key = intercept.snac_key(frame.payload)
            if self.reads(key, to_client=True):
                self.intercept(frame, chunk, key, to_client=True)
                return
            if key in ((0x17, 0x03), (0x01, 0x05)) and len(frame.payload) >= 10:
                snac = codec.parse_snac(frame.payload)
                tlvs = codec.parse_tlvs(snac.body)
                if first_tlv(tlvs, 0x0005) is not None and first_tlv(tlvs, 0x0006) is not None:
                    body = encode_tlvs(self.rewrite_address(tlvs, "BOS" if key == (0x17, 0x03) else "service",
                                                            snac.request_id))
                    prefix = frame.payload[:len(frame.payload) - len(snac.body)]  # header (+ extra data)
                    self.to_client.push(codec.encode_flap(CH_DATA, frame.seq, prefix + body))
                    return
        self.to_client.push(chunk)

    def rewrite_address(self, tlvs, what, request_id=None):
        """
        A login reply or a service redirect with this proxy's address in TLV 5;
        the real one is kept under the cookie (TLV 6) for the client's next connection.
        """
        real = first_tlv(tlvs, 0x0005).decode("ascii", "replace")
        cookie = first_tlv(tlvs, 0x0006)
        target = _target(real, self.connector.upstream[1])
        if target is None:
            self.log.warn("oscar proxy: the upstream sent {who} to an unusable {what} address {real!r}; "
                          "relaying that connection to the login service", who=self.screen_name or "-", what=what,
                          real=real)
            target = self.connector.upstream
        service = None
        group = first_tlv(tlvs, 0x000D)
        if what == "service" and group is not None and len(group) == 2:
            service = int.from_bytes(group, "big")
        name = first_tlv(tlvs, 0x0001) or (self.screen_name or "").encode()
        self.learn_name(name)
        room = self.room_requests.pop(request_id, "") if service == CHAT_SERVICE else ""
        self.connector.add_route(cookie, target, name, service, self.profile, room)
        if what == "service":
            self.log.info("oscar proxy: {who} redirected to the {service} service at {host}:{port}; "
                          "relaying it through this proxy", who=self.screen_name or "-",
                          service=SERVICE_NAMES.get(service, f"0x{service or 0:04x}"), host=target[0], port=target[1])
        ours = self.connector.bos_address.encode("ascii")
        return [(t, ours if t == 0x0005 else v) for t, v in tlvs]

    # -- what the proxy reads ------------------------------------------------------------------

    def me(self) -> Optional[Address]:
        """The address of the client on this connection, or None when the proxy did not see its login."""
        if not self.screen_name:
            return None
        try:
            return Address(adapter.network_of(self.screen_name), self.screen_name)
        except AddressError:
            return None

    def reads(self, key, to_client) -> bool:
        if key == (IM_IN if to_client else IM_OUT) or (to_client and key in intercept.DISCLOSURES):
            return True
        return self.service == CHAT_SERVICE and key == (CHAT_IN if to_client else CHAT_OUT)

    def intercept(self, frame, chunk, key, to_client):
        """An IM or chat message: an event down the path; what cannot be read is `unreadable`."""
        try:
            snac = codec.parse_snac(frame.payload)
            if key in (IM_OUT, IM_IN):
                self.read_icbm(frame, snac, chunk, to_client)
            elif key in intercept.DISCLOSURES:
                self.read_disclosure(frame, snac, chunk, key)
            else:
                self.read_chat(frame, snac, chunk, to_client)
        except (OscarCodecError, AddressError) as e:
            self.unreadable(frame, chunk, key, to_client, str(e))
        except Exception as e:
            self.log.failure("oscar proxy: could not read a {what}", what="chat message" if key[0] == 0x0E else "IM")
            self.unreadable(frame, chunk, key, to_client, f"internal error: {type(e).__name__}")

    def parties(self, other_name, to_client):
        """``(sender, recipient)`` of a frame to or from ``other_name``; `UNKNOWN` for whom the proxy cannot tell."""
        me = self.me()
        other = adapter.address_for(other_name, me.network if me else "aim")
        return (other, me or UNKNOWN) if to_client else (me or UNKNOWN, other)

    def read_icbm(self, frame, snac, chunk, to_client):
        icbm = intercept.parse_icbm(snac, to_client)
        sender, recipient = self.parties(icbm.screen_name, to_client)
        if icbm.channel == 2:
            self.read_rendezvous(frame, snac, chunk, icbm, sender, recipient, to_client)
            return
        if icbm.channel != 1:
            text = adapter.icq_message_text(icbm.tlv(0x0005)) if icbm.channel == 4 else ""
            self.not_read(self.api.message(sender, recipient, text), f"ICBM channel {icbm.channel}", "unsupported",
                          frame, chunk, to_client)
            return
        tlv2 = icbm.tlv(0x0002)
        if tlv2 is None:
            raise OscarCodecError("a channel-1 IM without its message (TLV 2)")
        text, html = adapter.im_text(tlv2)
        profile = self.profile if to_client else adapter.ClientProfile()

        def render(event):
            return intercept.render_im(snac, icbm, to_client, event, profile)

        if to_client:
            seen = self.connector.seen_before(icbm.cookie, sender, recipient, text)
            if seen is not None:
                # Decided and archived on its way out of another client of this proxy: shown as decided.
                self.to_client.push(codec.encode_flap(frame.channel, frame.seq, render(seen)))
                return
            after = None
        else:
            def after(event):
                self.connector.note_seen(icbm.cookie, sender, recipient, (text, event.text), event)

        self.decide(self.api.message(sender, recipient, text, html=html), frame, chunk, to_client, render, after)

    def read_rendezvous(self, frame, snac, chunk, icbm, sender, recipient, to_client):
        """ICBM channel 2: file and direct-IM offers are file events, chat invitations chat events."""
        rdv = codec.parse_rendezvous(icbm.tlv(0x0005))

        def render_with(files):
            return lambda event: intercept.render_rendezvous(
                snac, icbm, to_client, rdv, intercept.rendezvous_tlvs(rdv, to_client, event, files))

        if rdv.capability in (codec.CAP_SEND_FILE, codec.CAP_DIRECT_IM):
            known = self.connector.offers.get(rdv.cookie)
            if known is not None and {known[0].sender, known[0].recipient} == {sender, recipient}:
                # What follows an offer that was let through (or the offer reaching its recipient): as decided.
                offer, files = known
                self.pipe(to_client).push(codec.encode_flap(frame.channel, frame.seq, render_with(files)(offer)))
                return
            if rdv.kind != codec.RDV_PROPOSE:
                event = self.api.file_offer(sender, recipient, "", text="an answer to an offer the proxy did not see")
                self.not_read(event, "an answer to a rendezvous the proxy did not see", "unattributed", frame, chunk,
                              to_client)
                return
            content = adapter.offer_content(rdv)
            event = self.api.file_offer(sender, recipient, content.name, content.size, content.text,
                                        transfer=TRANSFER_PREFIX + rdv.cookie.hex())

            def after(decided):
                self.connector.offers[rdv.cookie] = (decided, content.files)

            self.decide(event, frame, chunk, to_client, render_with(content.files), after)
        elif rdv.capability == codec.CAP_CHAT:
            room = ""
            if rdv.tlv(0x2711) is not None:
                room = codec.room_name(codec.parse_room_info(rdv.tlv(0x2711))[1])
            event = ChatEvent(sender, recipient, room=room, action="invite", text=adapter.invitation_text(rdv),
                              created=self.api.clock.seconds())
            self.decide(event, frame, chunk, to_client, render_with(None))
        else:
            what = adapter.capability_name(rdv.capability)
            self.not_read(self.api.file_offer(sender, recipient, "", text=what), what, "rendezvous-unsupported", frame,
                          chunk, to_client)

    def read_chat(self, frame, snac, chunk, to_client):
        """A message in the chat room of this connection: a chat event (the room reflects one's own: as decided)."""
        message = intercept.parse_chat(snac.body, incoming=to_client)

        def render(event):
            return intercept.render_chat(snac, message, event)

        if to_client:
            sent = self.chat_sent.pop(message.cookie, None)
            if sent is not None:
                self.to_client.push(codec.encode_flap(frame.channel, frame.seq, render(sent)))
                return
            sender, recipient = self.parties(message.author, to_client=True)
            after = None
        else:
            me = self.me() or UNKNOWN
            sender, recipient = me, room_address(me.network, self.room)

            def after(event):
                self.chat_sent[message.cookie] = event

        event = ChatEvent(sender, recipient, room=self.room, action="message", text=message.text,
                          created=self.api.clock.seconds())
        self.decide(event, frame, chunk, to_client, render, after)

    def read_disclosure(self, frame, snac, chunk, key):
        """
        What the upstream tells this client about others: arrivals (03/0B),
        departures (03/0C) and user info answers (02/06) are disclosures on
        the path (presence, then the profile and away message as kind
        ``info``); a hidden arrival or departure is withheld, a hidden answer
        becomes the error a query for someone offline gets.
        """
        me = self.me() or UNKNOWN
        if key == (0x02, 0x06):
            info = intercept.parse_info_answer(snac.body)
            subject = adapter.address_for(info.name, me.network)
            presence = Presence(subject, info.status, recipient=me, created=self.api.clock.seconds())
            profile = self.api.profile(subject, me, status=info.status, note=info.away, text=info.text, html=info.html)
            steps = [presence, profile]
        else:
            users = intercept.parse_user_blocks(snac.body)
            steps = [Presence(adapter.address_for(name, me.network),
                              intercept.status_of(tlvs) if key == (0x03, 0x0B) else PresenceStatus.OFFLINE,
                              recipient=me, created=self.api.clock.seconds())
                     for name, _, tlvs in users]
        if me == UNKNOWN and self.connector.fail_closed:
            for event in steps[:1] if key == (0x02, 0x06) else steps:
                self.api.refuse(event, "the proxy does not know who is signed on to this connection (it did not"
                                       " see the login)", "unattributed")
            self.to_client.skip(chunk)
            if key == (0x02, 0x06):
                self.to_client.push_own(CH_DATA, codec.encode_snac(0x02, 0x01, u16(adapter.ERR_NOT_LOGGED_IN), 0,
                                                                   snac.request_id))
            return
        slot = self.to_client.hold()
        if key == (0x02, 0x06):
            d = self.disclose_in_turn(steps)
            d.addCallback(self._info_decided, snac, info, frame, chunk, slot)
        else:
            d = gatherResults([self.api.disclose(event) for event in steps])
            d.addCallback(self._presence_decided, snac, users, frame, chunk, slot)
        d.addErrback(self._disclosure_failed, frame, chunk, slot)

    @inlineCallbacks
    def disclose_in_turn(self, events):
        """Each event's ``(outcome, event)`` until one is not delivered (nothing more is disclosed then)."""
        decided = []
        for event in events:
            outcome, event = yield self.api.disclose(event)
            decided.append((outcome, event))
            if not self.disclosed(outcome):
                break
        return decided

    def disclosed(self, outcome):
        return outcome.delivered or (not self.connector.fail_closed and outcome.code not in BLOCKING)

    def _presence_decided(self, decided, snac, users, frame, chunk, slot):
        shown = [codec.encode_user_info(name, tlvs, warning) for (name, warning, tlvs), (outcome, _) in
                 zip(users, decided) if self.disclosed(outcome)]
        if not shown:
            self.to_client.withhold(slot, chunk)
            return
        payload = codec.encode_snac(snac.family, snac.subtype, b"".join(shown), snac.flags & ~0x8000, snac.request_id)
        self.to_client.release(slot, codec.encode_flap(frame.channel, frame.seq, payload))

    def _info_decided(self, decided, snac, info, frame, chunk, slot):
        if len(decided) < 2 or not self.disclosed(decided[-1][0]):
            error = codec.encode_snac(0x02, 0x01, u16(adapter.ERR_NOT_LOGGED_IN), 0, snac.request_id)
            self.to_client.replace(slot, chunk, CH_DATA, error)
            return
        payload = intercept.render_info_answer(snac, info, decided[-1][1])
        self.to_client.release(slot, codec.encode_flap(frame.channel, frame.seq, payload))

    def _disclosure_failed(self, failure, frame, chunk, slot):
        self.log.failure("oscar proxy: a disclosure failed on the path", failure)
        if self.connector.fail_closed:
            self.to_client.withhold(slot, chunk)
        else:
            self.to_client.release(slot, chunk)

    # -- deciding -------------------------------------------------------------------------------

    def pipe(self, to_client):
        return self.to_client if to_client else self.to_upstream

    def decide(self, event, frame, chunk, to_client, render, after=None):
        """Hold the frame while the path decides ``event``; forwarded rendered from it only if it is delivered."""
        if (event.sender == UNKNOWN or event.recipient == UNKNOWN) and self.connector.fail_closed:
            self.withhold(event, "the proxy does not know who is signed on to this connection (it did not see "
                                 "the login)", "unattributed", frame, chunk, to_client)
            return
        pending = Pending(self, to_client, self.pipe(to_client).hold(), frame, chunk, render, after)
        self.connector.pending[event.id] = pending
        try:
            d = self.api.submit(event, origin=self.connector, through=self.connector)
        except Exception:
            from twisted.python.failure import Failure

            self._undecided(Failure(), event, pending)
            return
        d.addCallbacks(self._outcome, self._undecided, callbackArgs=(event, pending), errbackArgs=(event, pending))

    def _outcome(self, outcome, event, pending):
        self.connector.pending.pop(event.id, None)
        try:
            if outcome.delivered or outcome.queued:
                pending.forward(event)  # the path handed it to `deliver` already, transformed: nothing more then
                return
            if not self.connector.fail_closed and outcome.code not in BLOCKING:
                self.log.warn("oscar proxy: {kind} from {sender} to {recipient} passed undecided ({code} {reason}):"
                              " fail_closed is off", kind=event.kind, sender=str(event.sender),
                              recipient=str(event.recipient), code=outcome.code, reason=outcome.reason)
                pending.forward(event)
                return
        except Exception:
            self.log.failure("oscar proxy: could not render {kind} {event_id}; withheld", kind=event.kind,
                             event_id=event.id)
        pending.drop()
        self.log_withheld(event, pending.to_client, outcome.code, outcome.reason, outcome.rule)
        if not pending.to_client:
            self.answer_error(pending.frame, adapter.icbm_error_for(outcome.code))

    def _undecided(self, failure, event, pending):
        self.connector.pending.pop(event.id, None)
        self.log.failure("oscar proxy: the path failed on {kind} {event_id}", failure, kind=event.kind,
                         event_id=event.id)
        if not self.connector.fail_closed:
            pending.forward(event)
            return
        pending.drop()
        self.api.refuse(event, f"the path could not decide it: {failure.getErrorMessage()}", "undecided")
        self.log_withheld(event, pending.to_client, "undecided", failure.getErrorMessage(), "")
        if not pending.to_client:
            self.answer_error(pending.frame, adapter.icbm_error_for("undecided"))

    def withhold(self, event, reason, code, frame, chunk, to_client):
        """Withhold a frame the proxy cannot let through, archived as rejected with ``reason``."""
        self.pipe(to_client).skip(chunk)
        self.api.refuse(event, reason, code)
        if self.api.capturing:
            self.api.capture(event.id, "received", "aim", chunk, ("withheld",))
        self.log_withheld(event, to_client, code, reason, "")
        if not to_client:
            self.answer_error(frame, adapter.icbm_error_for(code))

    def not_read(self, event, what, code, frame, chunk, to_client):
        """Traffic the proxy does not read: withheld and archived when failing closed, else passed as it came."""
        if self.connector.fail_closed:
            self.withhold(event, f"{what}: the proxy cannot read it", code, frame, chunk, to_client)
        else:
            self.log.warn("oscar proxy: {what} passed unread (fail_closed is off)", what=what)
            self.pipe(to_client).push(chunk)

    def unreadable(self, frame, chunk, key, to_client, why):
        me = self.me() or UNKNOWN
        sender, recipient = (UNKNOWN, me) if to_client else (me, UNKNOWN)
        if key in intercept.DISCLOSURES:
            event = Presence(sender, PresenceStatus.AVAILABLE, recipient=recipient, created=self.api.clock.seconds())
            what = "a buddy arrival or user info answer"
        elif key[0] == 0x0E:
            event = ChatEvent(sender, room_address(me.network, self.room), room=self.room, action="message",
                              created=self.api.clock.seconds())
            what = "a chat message"
        else:
            event, what = self.api.message(sender, recipient, ""), "an IM"
        self.not_read(event, f"{what} the proxy cannot parse ({why})", "unparsable", frame, chunk, to_client)

    def went_raw(self, side, chunk):
        """A stream stopped being FLAP: nothing in it can be read, so it goes no further and the connection closes."""
        me = self.me() or UNKNOWN
        event = self.api.message(me, UNKNOWN, "")
        reason = f"the {side}'s stream stopped being OSCAR (FLAP): the proxy cannot read it and closed the connection"
        self.api.refuse(event, reason, "raw-stream")
        if self.api.capturing:
            self.api.capture(event.id, "received", "aim", chunk, ("withheld",))
        self.log.warn("oscar proxy: {who}: {reason}", who=str(me), reason=reason, event_id=event.id)
        self.closed = True
        self.transport.loseConnection()
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def answer_error(self, frame, code):
        """The family's error (04/01, 0E/01) to the client for a frame of its that was withheld."""
        key, request = intercept.snac_key(frame.payload), intercept.request_id(frame.payload)
        if key is not None and request is not None:
            self.to_client.push_own(CH_DATA, codec.encode_snac(key[0], 0x01, u16(code), 0, request))

    def log_withheld(self, event, to_client, code, reason, rule):
        fields = dict(kind=event.kind, sender=str(event.sender), recipient=str(event.recipient), code=code,
                      reason=reason, rule=rule or "-", event_id=event.id)
        if to_client:
            self.log.warn("oscar proxy: {kind} from {sender} (upstream) to {recipient} withheld from the client:"
                          " {code} {reason} (rule {rule}); archived as rejected", **fields)
        else:
            self.log.info("oscar proxy: {kind} from {sender} to {recipient} (upstream) stopped: {code} {reason}"
                          " (rule {rule}); archived as rejected", **fields)
