"""
Sametime conferences (service 0x80000010) on the gateway's rooms.

A Meanwhile client (libpurple) opens a conference by creating a channel
whose parameters are a generated name and a title; it cannot name an
existing conference. The title is what names the room here: lower-cased,
spaces as ``-`` (in BitlBee, ``chat add sametime desk #desk`` with
``channel #desk set purple_chat.topic desk``). Creating that channel is the
join, on the one path (nickname: the user id): refused, the channel is
closed with ``ERR_NOT_AUTHORIZED`` (a rule, a wall) or ``ERR_NO_ELEMENT``
(no such room); allowed, it is accepted without encryption (the client
offers none for conferences) and the client gets WELCOME with everyone in
the room, itself too, under the room's title; then arrivals (JOIN),
departures and kicks (PART) and messages (MESSAGE, its own reflected, which
libpurple shows as its own). What it says is a room message on the path;
closing the channel leaves the room. A conference invitation the client
sends (INVITE) is a room invitation. Not shown: the subject; recent
messages of people no longer in the room (the client drops text from
someone it was not told of).
"""

from __future__ import annotations

from gateway_sametime import codec
from gateway_sametime.common import Channel
from gateway_sametime.wire import Reader, string, u16, u32

# Conference message types (a channel-send's type).
WELCOME, INVITE, JOIN, PART, MESSAGE = 0x0000, 0x0001, 0x0002, 0x0003, 0x0004
PROTO_TYPE, PROTO_VER = 0x10, 0x02


def room_of_title(title: str) -> str:
    return "-".join(title.strip().lower().split())


def parse_create(addtl: bytes) -> tuple:
    """``(name, title)`` of a conference channel's parameters."""
    r = Reader(addtl)
    return r.string(), r.string()


def encode_welcome(name: str, title: str, members) -> bytes:
    """WELCOME: name, title, two fields clients ignore, then ``(member id, login info)`` of each member."""
    return (string(name) + string(title) + u16(0) + u32(0) + u32(len(members))
            + b"".join(u16(member_id) + login.encode() for member_id, login in members))


def encode_message(member_id: int, text: str) -> bytes:
    return u16(member_id) + u32(0) + u32(1) + string(text)


class ConferenceLink:
    """One conference channel of a session: its room, its title, and the ids it gave the members."""

    __slots__ = ("channel", "room", "title", "name", "ids", "next_id", "ready", "waiting")

    def __init__(self, channel, room, title, name):
        self.channel, self.room, self.title, self.name = channel, room, title, name
        self.ids = {}  # nickname -> member id in this channel
        self.next_id = 1
        self.ready = False
        self.waiting = []  # messages shown before the channel was accepted

    def id_of(self, nick, new=False):
        member_id = self.ids.get(nick)
        if member_id is None and new:
            member_id = self.ids[nick] = self.next_id
            self.next_id = self.next_id % 0xFFFF + 1
        return member_id


class Conferences:
    """The `SametimeServerProtocol`'s conferences (a mixin: its channels, session and helpers are the protocol's)."""

    def _create_conf(self, channel: Channel, message):
        try:
            name, title = parse_create(message.addtl)
        except codec.CodecError as e:
            self.destroy_channel(channel.id, codec.ERR_BAD_DATA, f"bad conference parameters: {e}", "warn")
            return
        room = room_of_title(title)
        if self.session is None or not room:
            self.destroy_channel(channel.id, codec.ERR_NO_ELEMENT, "a conference is named by its title here")
            return
        link = ConferenceLink(channel, room, title, name)
        channel.conference = link
        self.conferences[room] = link
        d = self.api.join_room(self.session, room, self.user_id)
        d.addCallback(self._conf_joined, link)
        d.addErrback(self._internal, "conference join")

    def _conf_joined(self, outcome, link):
        channel = link.channel
        if self.channels.get(channel.id) is not channel:
            return
        if outcome.rejected:
            self.conferences.pop(link.room, None)
            code = codec.ERR_NOT_AUTHORIZED if outcome.code == "policy" and outcome.rule != "rooms:unknown" \
                else codec.ERR_NO_ELEMENT
            self.destroy_channel(channel.id, code, f"join of room {link.room} refused: {outcome.reason}")
            return
        self._accept(channel, b"", None, codec.EncryptAccept())
        members = (self.api.room(link.room) or {}).get("members", ())
        welcome = [(link.id_of(m["nick"], new=True), self._member_login(m["nick"])) for m in members]
        self._channel_send(channel, WELCOME, encode_welcome(link.name, link.title, welcome))
        link.ready = True
        waiting, link.waiting = link.waiting, []
        for event in waiting:
            self._show_conf(link, event)

    def _member_login(self, nick):
        return self.peer_login(nick, nick)

    def _conf_data(self, channel, send_type, data):
        link = getattr(channel, "conference", None)
        if link is None or not link.ready:
            return
        r = Reader(data)
        if send_type == MESSAGE:
            if r.u32() != 1:
                return  # typing and other data: not carried
            text = r.string()
            self.api.room_message(self.session, link.room, text).addErrback(self._internal, "conference message")
        elif send_type == INVITE:
            user = r.string()
            r.string()
            r.u16(), r.u32()
            text = r.string() if r.remaining else ""
            from gateway_sametime import adapter

            invitee = adapter.safe_address(user)
            if invitee is not None:
                self.api.room_invite(self.session, link.room, invitee, text).addErrback(self._internal,
                                                                                       "conference invitation")

    def conf_closed(self, channel):
        """The client closed a conference channel: it leaves the room."""
        link = getattr(channel, "conference", None)
        if link is not None and self.conferences.get(link.room) is link:
            del self.conferences[link.room]
            if self.session is not None:
                self.api.leave_room(self.session, link.room)

    def deliver_conference(self, event):
        link = self.conferences.get(event.room)
        if link is None:
            if event.action in ("leave", "kick"):
                return None  # gone already
            raise ConnectionError(f"{self.user_id} has no conference open for room {event.room}")
        if not link.ready:
            if event.action in ("message", "history"):
                link.waiting.append(event)
            return None
        self._show_conf(link, event)
        return None

    def _show_conf(self, link, event):
        channel, action = link.channel, event.action
        if action == "join":
            if event.sender != event.recipient and event.nick not in link.ids:
                member_id = link.id_of(event.nick, new=True)
                self._channel_send(channel, JOIN, u16(member_id) + self._member_login(event.nick).encode())
        elif action in ("leave", "kick"):
            nick = event.text.partition("\n")[0] if action == "kick" else event.nick
            member_id = link.ids.pop(nick, None)
            if nick == self.user_id and action == "kick":
                del self.conferences[link.room]
                self.destroy_channel(channel.id, codec.ERR_NOT_AUTHORIZED, f"put out of room {link.room}")
            elif member_id is not None:
                self._channel_send(channel, PART, u16(member_id))
        elif action in ("message", "history"):
            member_id = link.id_of(event.nick)
            if member_id is not None:  # the client drops text from someone it was not told of
                self._channel_send(channel, MESSAGE, encode_message(member_id, event.text))
