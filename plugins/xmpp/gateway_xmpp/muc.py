"""
Multi-user chat (XEP-0045) for c2s clients: the gateway's rooms as
``NAME@conference.DOMAIN`` (``muc_domain``).

What a client does maps onto the facade's room methods, so every join,
message, subject, invitation, kick and leave crosses the one path:

- presence to ``room@muc/nick`` joins (`GatewayApi.join_room`), ``type='unavailable'`` leaves;
- ``<message type='groupchat'>`` to the room says something, or with only a ``<subject/>`` sets it;
- a mediated invitation (``<x xmlns='...muc#user'><invite to=.../></x>``) invites;
- ``<iq type='set'>`` with ``muc#admin`` ``<item nick=... role='none'/>`` puts someone out (the owner);
- disco#info and disco#items on the service and a room; a self-ping (XEP-0410) to one's own occupant JID.

What the room shows (a `ChatEvent` delivered to a session) becomes occupant
presence (the client's own with status 110), groupchat messages, history
with ``<delay/>``, the subject (always, so the client knows the join is
complete), an unavailable presence for a leave, with status 307 and the
reason for a kick, or an invitation from the room. Rooms are
semi-anonymous: occupants see nicknames, never real JIDs (the archive has
them). Private messages to an occupant, nickname changes and room
configuration forms are refused with an XMPP error (and a private message is
archived as refused).
"""

from __future__ import annotations

import time

from gateway.plugin import Address, ChatEvent

from gateway_xmpp import adapter
from gateway_xmpp.adapter import NETWORK, parse_jid
from gateway_xmpp.codec import escape_attr, escape_text

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"

# The XMPP error (condition, type) for each rooms rule (`gateway.rooms`) that refused something.
RULE_ERRORS = {
    "rooms:nick": ("conflict", "cancel"),
    "rooms:unknown": ("item-not-found", "cancel"),
    "rooms:closing": ("item-not-found", "cancel"),
    "rooms:not-member": ("not-acceptable", "cancel"),
    "rooms:full": ("service-unavailable", "wait"),
    "rooms:flood": ("resource-constraint", "wait"),
    "rooms:external": ("registration-required", "auth"),
    "rooms:network": ("registration-required", "auth"),
    "rooms:owner": ("forbidden", "auth"),
    "rooms:subject": ("not-acceptable", "modify"),
    "rooms:no-nick": ("item-not-found", "cancel"),
}


def _error_for(outcome):
    if outcome.code == "bad-room":
        return "jid-malformed", "modify"
    found = RULE_ERRORS.get(outcome.rule)
    if found is not None:
        return found
    return adapter.OUTCOME_ERRORS.get(outcome.code, ("undefined-condition", "cancel"))


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Muc:
    """The rooms service of one `gateway_xmpp.connector.XmppConnector`, at ``domain``."""

    def __init__(self, connector, domain):
        self.connector = connector
        self.api = connector.api
        self.domain = domain.lower()
        self.nicks = {}  # (stream, room) -> the stream's nickname there, once it is in
        self.waiting = {}  # stream -> room presences sent while its login was under way

    def handles(self, jid) -> bool:
        """Whether a stanza to ``jid`` is for the rooms."""
        return jid is not None and jid.host.lower() == self.domain

    def room_jid(self, room: str, nick: str = "") -> str:
        return f"{room}@{self.domain}/{nick}" if nick else f"{room}@{self.domain}"

    def _error(self, stream, element, condition, error_type, text=""):
        if element.getAttribute("from") is None:
            element["from"] = stream.jid
        # A join's error carries its <x xmlns='...muc'/> back: that is how clients tell it from others.
        keep = ("x",) if element.name == "presence" else ("body",)
        stream.write(adapter.stanza_error(element, condition, error_type, text, keep=keep))

    def _refused(self, outcome, stream, element):
        if stream.state == "closed" or not outcome.rejected:
            return
        condition, error_type = _error_for(outcome)
        self._error(stream, element, condition, error_type, outcome.reason)

    # -- from the client -------------------------------------------------------------

    def presence(self, stream, element, jid):
        kind = element.getAttribute("type")
        if kind in ("error", "probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return None
        room = (jid.user or "").lower()
        if not room:
            return self._error(stream, element, "bad-request", "modify", "join a room: ROOM@" + self.domain + "/NICK")
        if stream.session is None:
            if getattr(stream, "logging_in", False):
                # Its initial presence is being turned into a session: the join follows once it is.
                self.waiting.setdefault(stream, []).append((element, jid))
                return None
            return self._error(stream, element, "not-authorized", "auth", "send your presence before joining rooms")
        if kind == "unavailable":
            if (stream, room) not in self.nicks:
                return None
            return self.api.leave_room(stream.session, room).addCallback(self._refused, stream, element)
        nick = jid.resource or ""
        if not nick:
            return self._error(stream, element, "jid-malformed", "modify", "a join needs a nickname: ROOM@" +
                               self.domain + "/NICK")
        present = self.nicks.get((stream, room))
        if present is not None:
            if present != nick:
                return self._error(stream, element, "not-acceptable", "modify",
                                   "nickname changes are not supported here: leave and join again")
            return None  # a presence update inside the room: nothing to decide
        return self.api.join_room(stream.session, room, nick).addCallback(self._refused, stream, element)

    def message(self, stream, element, jid):
        kind = element.getAttribute("type", "normal")
        if kind == "error":
            return None
        room = (jid.user or "").lower()
        if stream.session is None or not room:
            return self._error(stream, element, "not-acceptable", "cancel")
        invites = [i for x in element.elements(NS_MUC_USER, "x") for i in x.elements(NS_MUC_USER, "invite")]
        if invites:
            return self._invite(stream, element, room, invites[0])
        body, _, _, _, _ = adapter.message_parts(element)
        if kind != "groupchat" or jid.resource:
            # A private message to an occupant: refused, and archived as such.
            self.api.refuse(ChatEvent(stream.address, Address("room", room), room=room, action="message",
                                      text=body or "", created=self.api.clock.seconds()),
                            "private messages in rooms are not carried here", "chat-unsupported")
            return self._error(stream, element, "not-acceptable", "cancel",
                               "private messages in rooms are not carried here")
        subject = next((child for child in element.elements() if child.name == "subject"), None)
        if subject is not None and body is None:
            d = self.api.room_subject(stream.session, room, str(subject))
        elif body:
            d = self.api.room_message(stream.session, room, body)
        else:
            return None
        return d.addCallback(self._refused, stream, element)

    def _invite(self, stream, element, room, invite):
        to = parse_jid(invite.getAttribute("to"))
        invitee = self.connector.domains.jid_to_address(to) if to is not None else None
        if invitee is None:
            return self._error(stream, element, "jid-malformed", "modify", "an invitation names whom it invites")
        reason = next((child for child in invite.elements() if child.name == "reason"), None)
        d = self.api.room_invite(stream.session, room, invitee, str(reason) if reason is not None else "")
        return d.addCallback(self._refused, stream, element)

    def iq(self, stream, element, payload, jid):
        key = (payload.uri, payload.name)
        kind = element["type"]
        room = (jid.user or "").lower()
        if key == (NS_DISCO_INFO, "query") and kind == "get" and not jid.resource:
            return self._disco_info(stream, element, room)
        if key == (NS_DISCO_ITEMS, "query") and kind == "get" and not jid.resource:
            items = "" if room else "".join(
                f"<item jid='{escape_attr(self.room_jid(name))}' name='{escape_attr(name)}'/>"
                for name in self.api.room_names())
            return self._result(stream, element, f"<query xmlns='{NS_DISCO_ITEMS}'>{items}</query>")
        if key == (NS_PING, "ping") and room and jid.resource:
            # A self-ping (XEP-0410): answered when that occupant is this client.
            if self.nicks.get((stream, room)) == jid.resource:
                return self._result(stream, element)
            return self._error(stream, element, "not-acceptable", "cancel", "not in the room under that nickname")
        if key == (NS_MUC_ADMIN, "query") and kind == "set" and room and not jid.resource:
            items = list(payload.elements(NS_MUC_ADMIN, "item"))
            if len(items) == 1 and items[0].getAttribute("role") == "none" and items[0].getAttribute("nick"):
                reason = next((c for c in items[0].elements() if c.name == "reason"), None)
                d = self.api.room_kick(stream.session, room, items[0]["nick"],
                                       str(reason) if reason is not None else "")
                return d.addCallback(self._kicked, stream, element)
        return self._error(stream, element, "feature-not-implemented", "cancel",
                           "rooms here support joining, talking, the subject, invitations and kicks")

    def _kicked(self, outcome, stream, element):
        if outcome.rejected:
            return self._refused(outcome, stream, element)
        return self._result(stream, element)

    def _disco_info(self, stream, element, room):
        if not room:
            inner = (f"<identity category='conference' type='text' name='Rooms'/>"
                     f"<feature var='{NS_DISCO_INFO}'/><feature var='{NS_DISCO_ITEMS}'/><feature var='{NS_MUC}'/>")
        else:
            info = self.api.room(room)
            if info is None:
                return self._error(stream, element, "item-not-found", "cancel", f"no room {room}")
            lasting = "muc_persistent" if info["persistent"] else "muc_temporary"
            inner = (f"<identity category='conference' type='text' name='{escape_attr(info['subject'] or room)}'/>"
                     + "".join(f"<feature var='{f}'/>" for f in (
                         NS_MUC, lasting, "muc_open", "muc_semianonymous", "muc_unmoderated", "muc_unsecured")))
        return self._result(stream, element, f"<query xmlns='{NS_DISCO_INFO}'>{inner}</query>")

    def _result(self, stream, element, inner=""):
        attributes = f" id='{escape_attr(element['id'])}' to='{escape_attr(stream.jid)}'"
        if element.getAttribute("to"):
            attributes += f" from='{escape_attr(element['to'])}'"
        stream.write((f"<iq type='result'{attributes}>{inner}</iq>" if inner
                      else f"<iq type='result'{attributes}/>").encode("utf-8"))

    # -- to the client ---------------------------------------------------------------

    def render(self, event, stream) -> bytes:
        """The stanza that shows ``event`` (a `ChatEvent` from a room) to ``stream``."""
        room, action, to = event.room, event.action, stream.jid
        mine = event.sender == event.recipient
        if action == "join":
            if mine:
                self.nicks[(stream, room)] = event.nick
            return self._presence_xml(room, event.nick, to, mine=mine)
        if action == "leave":
            if mine:
                self.nicks.pop((stream, room), None)
            return self._presence_xml(room, event.nick, to, unavailable=True, mine=mine)
        if action == "kick":
            nick, _, reason = event.text.partition("\n")
            mine = self.nicks.get((stream, room)) == nick
            if mine:
                self.nicks.pop((stream, room), None)
            return self._presence_xml(room, nick, to, unavailable=True, mine=mine, kicked=True, reason=reason)
        if action in ("message", "history"):
            delay = (f"<delay xmlns='{adapter.NS_DELAY}' from='{escape_attr(self.room_jid(room))}' "
                     f"stamp='{_stamp(event.created)}'/>") if action == "history" else ""
            return (f"<message type='groupchat' from='{escape_attr(self.room_jid(room, event.nick))}' "
                    f"to='{escape_attr(to)}' id='{event.id}'><body>{escape_text(event.text)}</body>{delay}"
                    "</message>").encode("utf-8")
        if action == "subject":
            return (f"<message type='groupchat' from='{escape_attr(self.room_jid(room, event.nick))}' "
                    f"to='{escape_attr(to)}' id='{event.id}'><subject>{escape_text(event.text)}</subject>"
                    "</message>").encode("utf-8")
        if action == "invite":
            inviter = (self.connector.domains.address_to_jid(event.sender) if event.sender.network == NETWORK
                       else self.room_jid(room, event.nick))
            reason = f"<reason>{escape_text(event.text)}</reason>" if event.text else ""
            return (f"<message from='{escape_attr(self.room_jid(room))}' to='{escape_attr(to)}' id='{event.id}'>"
                    f"<x xmlns='{NS_MUC_USER}'><invite from='{escape_attr(inviter)}'>{reason}</invite></x>"
                    f"<body>{escape_text(f'{inviter} invites you to {self.room_jid(room)}')}</body></message>"
                    ).encode("utf-8")
        raise ConnectionError(f"an XMPP client cannot be shown a room's {action!r}")

    def _presence_xml(self, room, nick, to, unavailable=False, mine=False, kicked=False, reason=""):
        kind = " type='unavailable'" if unavailable else ""
        role = "none" if unavailable else "participant"
        reason_xml = f"<reason>{escape_text(reason)}</reason>" if reason else ""
        codes = "".join(f"<status code='{c}'/>" for c, on in (("110", mine), ("307", kicked)) if on)
        return (f"<presence{kind} from='{escape_attr(self.room_jid(room, nick))}' to='{escape_attr(to)}'>"
                f"<x xmlns='{NS_MUC_USER}'><item affiliation='none' role='{role}'>{reason_xml}</item>{codes}</x>"
                "</presence>").encode("utf-8")

    def logged_in(self, stream):
        """``stream``'s session began: the room presences it sent meanwhile are handled now, in order."""
        for element, jid in self.waiting.pop(stream, ()):
            result = self.presence(stream, element, jid)
            if result is not None:
                result.addErrback(self.connector._stanza_failed, stream, element)

    def stream_closed(self, stream):
        self.waiting.pop(stream, None)
        for key in [key for key in self.nicks if key[0] is stream]:
            del self.nicks[key]
