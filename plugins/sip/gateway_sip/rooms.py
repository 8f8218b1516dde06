"""
Page-mode group chat (RFC 3428 MESSAGEs) in the gateway's rooms, for SIP
users: a room is ``sip:NAME@ROOM_DOMAIN`` (``room_domain``, by default
``conference.`` and the first of ``domains``).

SIP has no standard way to join a page-mode room short of a conference
focus (RFC 4575), which SIMPLE clients do not speak; so interest is
registered by messaging:

- a MESSAGE to the room from a registered user joins them (their user part
  as nickname) and says its text; later ones say theirs;
- ``/join [nick]`` only joins (with that nickname); ``/leave`` leaves;
- unregistering (or the registration's expiry) leaves every room.

Each of these crosses the one path as the room's event and is answered
with its outcome (200, or the refusal: 403 with the reason for a room rule,
a wall or a policy rule). The room's messages reach each SIP member at
its registration as a MESSAGE from the room's URI with the speaker's
nickname as display name and the text after ``nick:``, so that any SIMPLE
client shows who spoke; one's own messages are not sent back, arrivals and
departures are not sent (page mode has no roster), the recent messages at
join are (``[earlier] nick: text``), and so are a new subject and one's own
removal.
"""

from __future__ import annotations

from gateway_sip import adapter
from gateway_sip.codec import SipError


def room_text(event, recipient):
    """The text a SIP member is sent for ``event`` (a room's `ChatEvent`), or None for nothing."""
    action = event.action
    if action == "message":
        return None if event.sender == recipient else f"{event.nick}: {event.text}"
    if action == "history":
        return f"[earlier] {event.nick}: {event.text}"
    if action == "subject":
        return f"* subject of #{event.room}: {event.text}" if event.text else None
    if action == "kick":
        nick, _, reason = event.text.partition("\n")
        return f"* {nick} was put out of #{event.room}" + (f": {reason}" if reason else "")
    if action == "join" and event.sender == recipient:
        return f"* you are in #{event.room} as {event.nick}; /leave to leave"
    return None


class PageModeRooms:
    """The `SipConnector`'s rooms (a mixin: ``api``, ``room_domain`` and the request helpers are the connector's)."""

    def room_of(self, address):
        """The room an address names, or None when it is not on the room domain."""
        if self.room_domain and address.domain == self.room_domain:
            return address.user
        return None

    def _on_room_message(self, request, transaction, flow, room):
        content = adapter.message_content(request.headers, request.body)
        sender, trusted = self._trusted_sender(request, flow)
        if trusted:
            return self._room_from(sender, content, room, transaction)
        d = self._credentials(request, transaction, sender, 407)
        return d.addCallback(self._room_from, content, room, transaction)

    def _room_from(self, sender, content, room, transaction):
        if sender is None:
            return None  # the credentials were refused, and that was answered
        if content[0] == "typing":
            return self._respond(transaction, 200, "OK")  # page mode has no typing in rooms
        session = self._session_of(sender)
        if session is None:
            raise SipError("register first: a room reaches its members at their registration", 403)
        api, text = self.api, content[1]
        command = text.strip()
        if command == "/leave":
            d = api.leave_room(session, room)
        elif command == "/join" or command.startswith("/join "):
            d = api.join_room(session, room, command[5:].strip())
        elif room in api.rooms_of(session):
            d = api.room_message(session, room, text)
        else:
            d = api.join_room(session, room).addCallback(self._joined_then_say, session, room, text)
        return d.addCallback(self._room_answer, transaction)

    def _joined_then_say(self, outcome, session, room, text):
        if outcome.rejected:
            return outcome
        return self.api.room_message(session, room, text)

    def _room_answer(self, outcome, transaction):
        status, reason, headers = adapter.outcome_response(outcome)
        self._respond(transaction, status, reason, headers)

    def deliver_room(self, event, session):
        """A room's event for a SIP member: a MESSAGE from the room, or nothing page mode shows."""
        text = room_text(event, session.address)
        if text is None:
            return None
        binding = session.handler
        if binding is None or binding.removed or not binding.flow.alive:
            raise ConnectionError(f"{session.address} has no live registration")
        room_uri = f"sip:{event.room}@{self.room_domain}"
        request = self._request("MESSAGE", binding.contact, room_uri, adapter.uri_of(session.address), binding.flow,
                                body=text.encode("utf-8"), content_type="text/plain;charset=UTF-8")
        fields = request.headers._fields
        nick = (event.nick or event.room).replace("\\", "").replace('"', "")[:64]
        for i, (name, value) in enumerate(fields):
            if name == "from":
                fields[i] = (name, f'"{nick}" {value}')  # who spoke, where page-mode clients show it
        d = self.transactions.request(request, binding.flow, request.branch)
        return self._bounded(d.addCallbacks(self._sent, self._not_sent, callbackArgs=(event,),
                                            errbackArgs=(event,)), session.address)
