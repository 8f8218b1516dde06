"""
Chat rooms for AIM/ICQ clients: the gateway's rooms (shared with every
other network) through OSCAR's chat navigation (family 0x0D) and chat
(family 0x0E) services.

How a client gets into a room, as AIM clients do it:

1. On its BOS connection it asks for the chat navigation service (01/04
   family 0x0D) and is sent (01/05) to this server with a cookie; on that
   connection it asks to create a room by name (0D/08) and is given the
   room's cookie (``!aol://2719:10-4-NAME``), or asks about a room (0D/04).
2. On BOS it asks for the chat service of that room (01/04 family 0x0E,
   TLV 1: exchange, cookie, instance). That is the join: it crosses the
   one path (`GatewayApi.join_room`, the screen name as nickname); refused,
   the client gets the service error (01/01); allowed, a redirect (01/05)
   with a cookie for the room's connection.
3. On the room's connection, once the client says it is ready (01/02), it
   is shown who is in the room (0E/03, everyone, itself too), the room
   (0E/02), then the recent messages and everything after: arrivals
   (0E/03), departures and kicks (0E/04), messages (0E/06, its own
   reflected). What it says (0E/05) crosses the path
   (`GatewayApi.room_message`); refused, it gets 0E/01. Closing that
   connection leaves the room.

Room names: an AIM room name lower-cased, its spaces made ``-``; one that
cannot name a gateway room is refused. Subjects have no OSCAR form and are
not shown; invitations arrive as an IM naming the room.
"""

from __future__ import annotations

import os

from gateway_oscar import adapter, codec
from gateway_oscar.codec import OscarCodecError, Reader, encode_tlv, encode_tlvs, first_tlv, u16, u32
from gateway_oscar.common import ProtocolViolation

# The exchange rooms are made in (the one AIM clients use for rooms made by users).
EXCHANGE = 4
# Seconds a client has to open the room's connection after its join was allowed.
CONNECT_TIMEOUT = 60.0
# What the redirect (01/05) carries before its TLVs: Twisted 15.4's client reads them from the third
# byte on, libpurple from the first; a leading two-byte TLV (type 0xFE, value 00 00) suits both readings.
REDIRECT_FILLER = b"\x00\xfe\x00\x02\x00\x00"


# -- codec: pure functions ----------------------------------------------------------------


def room_key(name: str) -> str:
    """An AIM room name as the gateway's rooms name it: lower case, spaces as ``-``."""
    return "-".join(name.strip().lower().split())


def room_cookie(name: str, exchange: int = EXCHANGE) -> bytes:
    return f"!aol://2719:10-{exchange}-{name}".encode("utf-8")


def encode_redirect(family: int, address: str, cookie: bytes) -> bytes:
    """A 01/05 body: where the service of ``family`` is and the cookie that opens it."""
    return REDIRECT_FILLER + encode_tlvs([(0x000D, u16(family)), (0x0005, address.encode("ascii")),
                                          (0x0006, cookie)])


def redirect_host(bos_address: str) -> str:
    """
    The address a redirect names: ``host`` when the port is OSCAR's own
    5190, else ``host:port``. Clients connect to 5190 when no port is
    given, and Twisted 15.4's client takes the whole text for a host name.
    """
    return bos_address[:-5] if bos_address.endswith(":5190") else bos_address


def encode_room_block(name: str, created: float = 0.0, exchange: int = EXCHANGE) -> bytes:
    """A room's info as 0D/09 (TLV 4) and 0E/02 carry it: exchange, cookie, instance, detail level, TLVs."""
    display = name.encode("utf-8")[:255]
    cookie = room_cookie(name, exchange)
    tlvs = [(0x006A, display), (0x00C9, u16(0)), (0x00CA, u32(int(created))), (0x00D1, u16(1024)),
            (0x00D2, u16(200)), (0x00D3, display), (0x00D5, b"\x02")]
    return (u16(exchange) + bytes((len(cookie),)) + cookie + u16(0) + b"\x02" + u16(len(tlvs))
            + encode_tlvs(tlvs))


def parse_room_request(body: bytes) -> tuple:
    """``(exchange, cookie, instance, TLVs)`` of a 0D/08 (create) or 0D/04 (room info) request."""
    r = Reader(body, "chat room request")
    exchange, cookie, instance = r.u16(), r.bytes8(), r.u16()
    tlvs = []
    if r.remaining >= 3:
        r.u8()  # detail level
        count = r.u16()
        for _ in range(count):
            if r.remaining < 4:
                break
            tlv_type, size = r.u16(), r.u16()
            tlvs.append((tlv_type, r.take(size)))
    return exchange, cookie, instance, tlvs


def encode_member(nick: str) -> bytes:
    """A room member as user info (screen name = their nickname in the room)."""
    return codec.encode_user_info(nick.encode("utf-8")[:255], [(0x0001, u16(0x0010))])


def encode_chat_message(nick: str, text: str) -> bytes:
    """A 0E/06 body: cookie, channel 3, the sender (TLV 3), TLV 1, and the message (TLV 5: text, charset, language)."""
    html = adapter.text_to_html(text) if text else ""
    inner = encode_tlvs([(0x0001, html.encode("utf-8")), (0x0002, adapter.charset_name(html)), (0x0003, b"en")])
    return (os.urandom(8) + u16(3) + encode_tlv(0x0003, encode_member(nick)) + encode_tlv(0x0001, b"")
            + encode_tlv(0x0005, inner))


# -- the state of one person's room on one BOS connection ----------------------------------


class ChatLink:
    """One room of one BOS connection: its room connection once open, and what waits for it."""

    __slots__ = ("room", "display", "nick", "proto", "ready", "waiting", "timer")

    def __init__(self, room, display, nick):
        self.room, self.display, self.nick = room, display, nick
        self.proto = None
        self.ready = False
        self.waiting = []  # messages shown before the client said it is ready
        self.timer = None


class ServiceTicket:
    """What a service cookie opens: ``family`` (0x0D or 0x0E) for ``bos`` (its BOS protocol), and the room."""

    __slots__ = ("family", "bos", "link", "expires")

    def __init__(self, family, bos, link, expires):
        self.family, self.bos, self.link, self.expires = family, bos, link, expires


class ChatServices:
    """
    The `OscarServerProtocol`'s rooms (a mixin: its state is the
    protocol's): the service requests on BOS, the chat navigation and
    room connections, and rendering a room's events on them.
    """

    # -- on BOS --------------------------------------------------------------------------------

    def request_chat_service(self, family, snac, tlvs):
        """01/04 for chat navigation or a room."""
        if self.session is None:
            if self.logging_in:  # asked right after 01/02, while the session is being made: once it is
                return self.logged_in().addCallback(lambda _: self.request_chat_service(family, snac, tlvs))
            if self.state == "bos":
                self.send_error(0x01, snac.request_id, adapter.ERR_NOT_LOGGED_IN)
            return None
        if family == 0x0D:
            self._redirect(family, None, snac.request_id)
            return None
        try:
            exchange, cookie, _ = codec.parse_room_info(first_tlv(tlvs, 0x0001))
        except OscarCodecError:
            raise ProtocolViolation("01/04 for a chat room without its room info (TLV 1)")
        display = codec.room_name(cookie)
        room = room_key(display)
        if room in self.chat_links:
            self._redirect(family, self.chat_links[room], snac.request_id)
            return None
        link = self.chat_links[room] = ChatLink(room, display, self.ticket.screen_name.decode("utf-8", "replace"))
        d = self.api.join_room(self.session, room, link.nick)
        return d.addCallback(self._joined, link, snac.request_id)

    def _joined(self, outcome, link, request_id):
        if outcome.rejected:
            if self.chat_links.get(link.room) is link:
                del self.chat_links[link.room]
            if self.state == "bos":
                self.send_error(0x01, request_id, adapter.ERR_REQUEST_DENIED if outcome.code == "policy"
                                else adapter.icbm_error_for(outcome.code))
            return
        if self.state != "bos":
            return
        self._redirect(0x0E, link, request_id)
        link.timer = self.api.clock.callLater(CONNECT_TIMEOUT, self._never_came, link)

    def _redirect(self, family, link, request_id):
        cookie = os.urandom(32)
        self.connector.service_tickets[cookie] = ServiceTicket(family, self, link,
                                                               self.api.clock.seconds() + CONNECT_TIMEOUT)
        self.send_snac(0x01, 0x05, encode_redirect(family, redirect_host(self.connector.bos_address), cookie),
                       request_id)

    def _never_came(self, link):
        link.timer = None
        if link.proto is None and self.chat_links.get(link.room) is link:
            del self.chat_links[link.room]
            if self.session is not None:
                self.api.leave_room(self.session, link.room)

    def deliver_chat(self, event):
        """Something in a room, for this BOS connection's person."""
        if event.action == "invite":
            self.deliver_notice(event.sender, adapter.chat_notice(event), event)
            return
        link = self.chat_links.get(event.room)
        if link is None:
            if event.action in ("leave", "kick") and event.sender == event.recipient:
                return  # its own departure, after its room's connection closed: nothing left to show it on
            raise ConnectionError(f"{self.address} has no connection to room {event.room}")
        if not link.ready:
            if event.action in ("message", "history"):
                link.waiting.append(event)
            return
        link.proto.show_in_room(link, event)

    def close_chat_links(self):
        """The BOS connection ended: its rooms' connections end too (the session's end leaves the rooms)."""
        links, self.chat_links = self.chat_links, {}
        for link in links.values():
            if link.timer is not None and link.timer.active():
                link.timer.cancel()
            if link.proto is not None:
                link.proto.room_link = None
                link.proto.signoff(0, "signed off")

    # -- a chat navigation or room connection -----------------------------------------------------

    def service_signon(self, ticket):
        """A connection opened with a service cookie: chat navigation or one room."""
        bos = ticket.bos
        if bos.state != "bos" or bos.session is None:
            raise ProtocolViolation("the connection this service belongs to has ended")
        self.state = "chatnav" if ticket.family == 0x0D else "chat"
        self.bos, self.address, self.ticket, self.profile = bos, bos.address, bos.ticket, bos.profile
        self.limiters = dict(bos.limiters)
        self.setTimeout(self.connector.idle_timeout)
        if ticket.family == 0x0E:
            link = ticket.link
            if link is None or bos.chat_links.get(link.room) is not link or link.proto is not None:
                raise ProtocolViolation("that room's connection is open already, or the join ended")
            link.proto, self.room_link = self, link
            if link.timer is not None and link.timer.active():
                link.timer.cancel()
            link.timer = None
        self.send_snac(0x01, 0x03, u16(0x0001) + u16(ticket.family), request_id=0)

    SERVICE_HANDLERS = {}  # filled below: (family, subtype) -> handler, for chat navigation and room connections

    def service_snac(self, snac):
        handler = self.SERVICE_HANDLERS.get((snac.family, snac.subtype))
        if handler is not None:
            return handler(self, snac)
        if (snac.family, snac.subtype) in ((0x01, 0x08), (0x01, 0x14)):
            return None
        self.send_error(snac.family, snac.request_id, adapter.ERR_NOT_SUPPORTED)
        return None

    def on_service_versions(self, snac):
        family = 0x0D if self.state == "chatnav" else 0x0E
        self.send_snac(0x01, 0x18, u16(0x0001) + u16(4) + u16(family) + u16(1), snac.request_id)

    def on_service_online(self, snac):
        link = getattr(self, "room_link", None)
        if self.state != "chat" or link is None or link.ready:
            return
        members = (self.api.room(link.room) or {}).get("members", ())
        self.send_snac(0x0E, 0x03, b"".join(encode_member(m["nick"]) for m in members))
        self.send_snac(0x0E, 0x02, encode_room_block(link.display))
        link.ready = True
        waiting, link.waiting = link.waiting, []
        for event in waiting:
            self.show_in_room(link, event)

    def on_nav_rights(self, snac):
        exchange = u16(EXCHANGE) + u16(2) + encode_tlvs([(0x00D3, b"gateway rooms"), (0x00D5, b"\x02")])
        self.send_snac(0x0D, 0x09, encode_tlvs([(0x0002, b"\x0a"), (0x0003, exchange)]), snac.request_id)

    def on_nav_room(self, snac):
        """0D/08 (create a room by name) and 0D/04 (what is this room): its info block, or an error."""
        exchange, cookie, _, tlvs = parse_room_request(snac.body)
        if snac.subtype == 0x08:
            name = first_tlv(tlvs, 0x00D3)
            display = adapter.charset_text(name, first_tlv(tlvs, 0x00D6)) if name else ""
        else:
            display = codec.room_name(cookie)
        room = room_key(display)
        if not display or len(room) > 64 or not room.replace("-", "").replace(".", "").replace("_", "").isalnum():
            self.send_error(0x0D, snac.request_id, adapter.ERR_BAD_FORMAT)
            return
        info = self.api.room(room)
        block = encode_room_block(display, (info or {}).get("created", 0.0) or self.api.clock.seconds())
        self.send_snac(0x0D, 0x09, encode_tlv(0x0004, block), snac.request_id)

    def on_room_message(self, snac):
        link = getattr(self, "room_link", None)
        if self.state != "chat" or link is None:
            raise ProtocolViolation("0E/05 outside a room")
        from gateway_oscar.intercept import parse_chat

        message = parse_chat(snac.body, incoming=False)
        d = self.bos.api.room_message(self.bos.session, link.room, message.text)
        return d.addCallback(self._said, snac.request_id)

    def _said(self, outcome, request_id):
        if outcome.rejected and self.state == "chat":
            self.send_error(0x0E, request_id, adapter.icbm_error_for(outcome.code))

    def show_in_room(self, link, event):
        """A room's event on this room connection."""
        action = event.action
        if action == "join":
            if event.sender != event.recipient:
                self.send_snac(0x0E, 0x03, encode_member(event.nick))
        elif action in ("leave", "kick"):
            nick = event.text.partition("\n")[0] if action == "kick" else event.nick
            self.send_snac(0x0E, 0x04, encode_member(nick))
            if nick == link.nick and action == "kick":
                link.proto = None  # put out: the client's room connection ends, the room is left already
                bos = self.bos
                if bos.chat_links.get(link.room) is link:
                    del bos.chat_links[link.room]
                self.room_link = None
                self.signoff(0, "put out of the room")
        elif action in ("message", "history"):
            self.send_snac(0x0E, 0x06, encode_chat_message(event.nick, event.text))
        # A subject has no OSCAR form.

    def service_lost(self):
        """A chat navigation or room connection closed: a room's is a leave."""
        link = getattr(self, "room_link", None)
        self.room_link = None
        bos = getattr(self, "bos", None)
        if link is None or bos is None:
            return
        if bos.chat_links.get(link.room) is link:
            del bos.chat_links[link.room]
            if bos.session is not None:
                bos.api.leave_room(bos.session, link.room)


ChatServices.SERVICE_HANDLERS = {
    (0x01, 0x02): ChatServices.on_service_online,
    (0x01, 0x06): lambda self, snac: self.on_rate_request(snac),
    (0x01, 0x17): ChatServices.on_service_versions,
    (0x0D, 0x02): ChatServices.on_nav_rights,
    (0x0D, 0x04): ChatServices.on_nav_room,
    (0x0D, 0x08): ChatServices.on_nav_room,
    (0x0E, 0x05): ChatServices.on_room_message,
}

__all__ = ["ChatServices", "ChatLink", "ServiceTicket", "room_key", "room_cookie", "encode_redirect",
           "encode_room_block", "encode_member", "encode_chat_message", "parse_room_request"]
