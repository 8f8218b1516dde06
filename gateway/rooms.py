"""
Rooms: group chat that people on every network share, on the one path.

A room is named by one word (``lobby``, ``trading-desk``) and addressed
``room:NAME`` (`ROOM_NETWORK`, a network no connector serves); each
connector shows it in its own form (an XMPP ``NAME@conference.DOMAIN``, a
line client's ``#NAME``). Everything done in a room is a
`gateway.model.ChatEvent` to that address, submitted by a connector through
the facade (`gateway.api.GatewayApi.join_room` and its neighbours), and it
crosses the path once: the router sends it here, the policy engine asks
`Rooms.check` before its rules (room rules, walls between the joiner and
who is in the room), hooks see it, the archive records it once with the
members of that moment (``members``), and only then `Rooms.deliver` acts on
it: a join adds the member and shows them who is there, the subject and
the recent messages; a message goes to every member's sessions (its
sender's too: that is how clients of rooms see what they said went out);
a leave, a subject or a kick is shown to everyone in the room.

Walls, and the rules between two people, are checked when someone joins:
nobody walled from a member gets in, nor anyone a rule keeps from chatting
with a member (or a member with them), so the messages of a room need no
decision per member. Rooms made by an
operator (``gatewayctl rooms create``) are kept in the database and stay
when empty; rooms made by a first join (``[rooms] ad_hoc``) end with their
last member. Members are held in this process: in a cluster, a room's
members are those on the node where it is used (see the README).
"""

from __future__ import annotations

import collections
import re

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger

from gateway.model import Address, ChatEvent, Outcome, Verdict

__all__ = ["ROOM_NETWORK", "Rooms", "Room", "RoomStore", "RoomError", "room_address", "check_name"]

ROOM_NETWORK = "room"
# Who closes a room for an operator (a network no connector serves, as the admin API's broadcasts).
OPERATOR = Address("gateway", "operator")

# One person's requests in one room that may wait behind the one being decided.
MAX_WAITING = 50

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_NICK_MAX = 64


class RoomError(ValueError):
    """A room name, nickname or subject that cannot be; its text says why."""


def check_name(name: str) -> str:
    """``name`` lower-cased when it can name a room (1-64 of a-z 0-9 . _ -, a letter or digit first); else `RoomError`."""
    lowered = (name or "").strip().lower()
    if not _NAME.match(lowered):
        raise RoomError(f"{name!r} cannot name a room: 1 to 64 of a-z, 0-9, '.', '_' and '-', beginning with a letter "
                        "or a digit")
    return lowered


def room_address(name: str) -> Address:
    """The address of room ``name`` on the path (``room:NAME``)."""
    return Address(ROOM_NETWORK, check_name(name))


def _nick_of(address: Address, nick: str) -> str:
    nick = (nick or address.user).strip()
    if not nick or len(nick) > _NICK_MAX or any(ch in nick for ch in "\r\n\x00/"):
        raise RoomError(f"{nick!r} cannot be a nickname: 1 to {_NICK_MAX} characters, no '/' or line breaks")
    return nick


class Member:
    """Someone in a room: their address, the person (or None for a foreign user), nickname and sessions here."""

    __slots__ = ("address", "identity", "nick", "sessions")

    def __init__(self, address, identity, nick, session):
        self.address = address
        self.identity = identity
        self.nick = nick
        self.sessions = [session]


@attrs.define
class Room:
    """
    One room: ``owner`` (a person's id or an address), ``networks`` whose
    users may join (``()``: any), whether people outside the directory may
    (``external``), and whether it outlives its members (``persistent``).
    """

    name: str
    subject: str = ""
    owner: str = ""
    networks: tuple = ()
    external: bool = True
    persistent: bool = False
    created: float = 0.0
    members: dict = attrs.field(factory=dict)  # nick -> Member
    history: collections.deque = attrs.field(factory=collections.deque)
    closing: bool = False  # an operator is closing it: nobody joins any more

    def member(self, address):
        for member in self.members.values():
            if member.address == address:
                return member
        return None

    def roster(self) -> tuple:
        """The members' addresses as text, in the order they came (what the archive records)."""
        return tuple(str(m.address) for m in self.members.values())

    def describe(self) -> dict:
        return {"room": self.name, "address": f"{ROOM_NETWORK}:{self.name}", "subject": self.subject,
                "owner": self.owner, "networks": list(self.networks), "external": self.external,
                "persistent": self.persistent, "created": self.created,
                "members": [{"nick": m.nick, "address": str(m.address),
                             "person": m.identity.id if m.identity is not None else None,
                             "sessions": len(m.sessions)} for m in self.members.values()]}


class RoomStore:
    """The persistent rooms in the database (``rooms``); blocking calls, for a database thread or gatewayctl."""

    def __init__(self, engine):
        self.engine = engine

    def load(self) -> list:
        from gateway.storage.schema import rooms

        with self.engine.connect() as conn:
            return [Room(name=r.name, subject=r.subject, owner=r.owner,
                         networks=tuple(n for n in r.networks.split(",") if n), external=bool(r.external),
                         persistent=True, created=r.created)
                    for r in conn.execute(rooms.select().order_by(rooms.c.name))]

    def save(self, room) -> None:
        from gateway.storage.schema import rooms

        values = {"subject": room.subject, "owner": room.owner, "networks": ",".join(room.networks),
                  "external": room.external, "created": room.created}
        with self.engine.begin() as conn:
            if conn.execute(rooms.update().where(rooms.c.name == room.name).values(**values)).rowcount == 0:
                conn.execute(rooms.insert().values(name=room.name, **values))

    def delete(self, name) -> bool:
        from gateway.storage.schema import rooms

        with self.engine.begin() as conn:
            return conn.execute(rooms.delete().where(rooms.c.name == name)).rowcount > 0


def _deny(reason, rule):
    return Verdict.deny(reason, rule=f"rooms:{rule}")


class Rooms:
    """
    The rooms of this process. The router hands it every event addressed to
    a room (it is their connector, ``direct``); `check` is asked by the
    policy engine; `deliver` runs once the path has decided and recorded.
    ``connectors``: name -> connector, to reach members' sessions;
    ``walls``: `gateway.compliance.walls.Walls`; ``store`` and ``thread``:
    where persistent rooms are kept (a `RoomStore` and the database thread
    that runs its calls), None to keep nothing.
    """

    networks = (ROOM_NETWORK,)
    log = Logger(namespace="gateway.rooms")

    def __init__(self, config, clock, connectors, walls=None, store=None, thread=None, metrics=None):
        self.config = config
        self.clock = clock
        self.connectors = connectors
        self.walls = walls
        self.store = store
        self.thread = thread
        self.metrics = metrics
        self.bus = None  # set by the core
        self.policy = None  # the core's `gateway.policy.rules.PolicyEngine`: the rules between members
        self.rooms = {}  # name -> Room
        self._joining = {}  # event id -> session, while a join crosses the path
        self._joins = {}  # address -> (window start, joins in it): the join flood limit
        self._waiting = {}  # (room, sender) -> [(event, Deferred)] behind the one on the path

    # -- what the router and the bus see (IConnector's shape) ---------------------------------

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return address.network == ROOM_NETWORK

    def load(self, rooms) -> None:
        """Take the persistent rooms (at start, from `RoomStore.load`)."""
        for room in rooms:
            existing = self.rooms.get(room.name)
            if existing is not None:
                existing.subject, existing.owner, existing.persistent = room.subject, room.owner, True
                existing.networks, existing.external = room.networks, room.external
            else:
                room.history = collections.deque(room.history, maxlen=self.config.history)
                self.rooms[room.name] = room

    # -- events, as the facade builds them -----------------------------------------------------

    def event(self, sender, name, action, text="", nick="", session=None):
        """The `ChatEvent` of ``sender`` doing ``action`` in room ``name``, with who is in it now."""
        name = check_name(name)
        room = self.rooms.get(name)
        if action == "join":
            nick = _nick_of(sender, nick)
        elif room is not None:
            member = room.member(sender)
            nick = member.nick if member is not None else nick
        event = ChatEvent(sender, Address(ROOM_NETWORK, name), room=name, action=action, text=text, nick=nick,
                          members=room.roster() if room is not None else (), created=self.clock.seconds())
        if action == "join" and session is not None:
            self._joining[event.id] = session
        return event

    def submit(self, event):
        """
        ``event`` down the path; fires with its `Outcome`. One person's
        events in one room go one at a time, in the order they came (a
        client that sends a join and at once a message has the message
        decided once it is in); at most `MAX_WAITING` wait, beyond that
        they are refused (and archived as refused).
        """
        key = (event.room, event.sender)
        result = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            if len(waiting) >= MAX_WAITING:
                self._joining.pop(event.id, None)
                return succeed(self.bus.refuse(event, f"more than {MAX_WAITING} requests waiting in room {event.room}",
                                               "rate-limited"))
            waiting.append((event, result))
            return result
        self._waiting[key] = []
        self._run(key, event, result)
        return result

    def _run(self, key, event, result):
        d = self.bus.submit(event)
        if event.action == "join":
            d.addBoth(self._joined, event.id)
        d.addBoth(self._ran, key, result)

    def _ran(self, outcome, key, result):
        waiting = self._waiting.get(key)
        if waiting:
            self._run(key, *waiting.pop(0))
        else:
            self._waiting.pop(key, None)
        result.callback(outcome)

    def _joined(self, outcome, event_id):
        self._joining.pop(event_id, None)
        return outcome

    def rooms_of(self, session) -> list:
        return [room.name for room in self.rooms.values()
                if any(session in member.sessions for member in room.members.values())]

    # -- policy: asked before the rules ---------------------------------------------------------

    def check(self, event, sender):
        """
        A deny `Verdict` when ``event`` (to a room) may not be, whoever the
        rules allow; None to let the rules decide. ``sender``: its
        `gateway.policy.rules.Side`.
        """
        name = event.recipient.user
        if event.room != name:
            return _deny(f"the event names room {event.room!r} but is addressed to {name!r}", "address")
        room = self.rooms.get(name)
        action = event.action
        if action == "join":
            return self._check_join(event, sender, room)
        if room is None:
            return _deny(f"no room {name}", "unknown")
        if action == "kick" and event.sender == OPERATOR:
            return None  # an operator closing the room (`remove`): no connector serves that address
        member = room.member(event.sender)
        if member is None:
            return _deny(f"not in room {name}", "not-member")
        if action == "subject":
            if len(event.text) > self.config.max_subject:
                return _deny(f"a subject is at most {self.config.max_subject} characters", "subject")
        elif action == "kick":
            if not self._owns(room, sender):
                return _deny(f"only the owner of room {name} puts people out of it", "owner")
            target = event.text.partition("\n")[0]
            if target not in room.members:
                return _deny(f"nobody called {target!r} is in room {name}", "no-nick")
        elif action not in ("message", "leave"):
            return _deny(f"{action!r} is not something done in a room", "action")
        return None

    def _check_join(self, event, sender, room):
        if not self._join_allowed_now(event.sender):
            return _deny(f"too many joins: at most {self.config.joins_per_minute} a minute", "flood")
        return self._admission(event, sender, room)

    def _admission(self, event, sender, room):
        """Whether ``sender`` may come into ``room`` (None: it may): asked by policy, and again at the door."""
        name = event.recipient.user
        if room is None:
            if not self.config.ad_hoc:
                return _deny(f"no room {name}", "unknown")
            if len(self.rooms) >= self.config.max_rooms:
                return _deny(f"no more rooms can be made here (at most {self.config.max_rooms})", "full")
            return None
        if room.closing:
            return _deny(f"room {name} is being closed", "closing")
        if room.networks and event.sender.network not in room.networks:
            return _deny(f"room {name} is for users of {', '.join(room.networks)}", "network")
        if not room.external and sender.identity is None:
            return _deny(f"room {name} is for people of this organization only", "external")
        present = room.member(event.sender)
        taken = room.members.get(event.nick)
        if taken is not None and taken is not present:
            return _deny(f"the nickname {event.nick!r} is taken in room {name}", "nick")
        if present is None and len(room.members) >= self.config.max_members:
            return _deny(f"room {name} is full ({self.config.max_members} members)", "full")
        if present is not None:
            return None
        from gateway.policy.rules import Side

        walls = self.walls if self.walls is not None and self.walls.walls else None
        for member in room.members.values():
            other = Side(member.address, member.identity)
            if walls is not None:
                walled = walls.check(event, sender, other)
                if walled is not None:
                    return walled
            if self.policy is not None:
                # What is said in the room reaches everyone in it, both ways: two people the rules keep
                # from chatting with each other (a deny, either way) do not share a room.
                for a, b in ((sender, other), (other, sender)):
                    verdict = self.policy.check("chat", a, b)
                    if not verdict.allowed:
                        return verdict
        return None

    def _join_allowed_now(self, address) -> bool:
        now = self.clock.seconds()
        start, count = self._joins.get(address, (now, 0))
        if now - start >= 60.0:
            start, count = now, 0
        if count >= self.config.joins_per_minute:
            return False
        if len(self._joins) > 10_000:
            self._joins = {a: w for a, w in self._joins.items() if now - w[0] < 60.0}
        self._joins[address] = (start, count + 1)
        return True

    def _owns(self, room, side) -> bool:
        owner = room.owner
        return bool(owner) and (owner == str(side.address) or (side.identity is not None and side.identity.id == owner))

    # -- delivery: the path decided and recorded ---------------------------------------------

    def deliver(self, event, session):
        """Act on ``event``, which the path allowed and recorded (``session`` is None: a room has none)."""
        if event.__class__ is not ChatEvent:
            return fail(ConnectionError(f"a room takes chat, not {event.kind}"))
        action = self._ACTIONS.get(event.action)
        if action is None:
            return fail(ConnectionError(f"{event.action!r} is not done in rooms"))
        return action(self, event)

    def _join(self, event):
        session = self._joining.pop(event.id, None)
        if session is None:
            return fail(ConnectionError("the joining session has ended"))
        name = event.room
        room = self.rooms.get(name)
        # Asked again at the door: what changed while the join was decided and recorded (another join with that
        # nickname, someone walled from this person, the room filling or closing) still keeps them out.
        from gateway.policy.rules import Side

        refused = self._admission(event, Side(event.sender, session.identity), room)
        if refused is not None:
            return fail(ConnectionError(refused.reason))
        if room is None:
            owner = session.identity.id if session.identity is not None else str(event.sender)
            room = self.rooms[name] = Room(name=name, owner=owner, created=event.created,
                                          history=collections.deque(maxlen=self.config.history))
        member = room.member(event.sender)
        if member is not None:
            # Another session of someone in the room: it is shown the room, nobody is told.
            if session not in member.sessions:
                member.sessions.append(session)
            self._show_room(room, member, session, event)
            return None
        member = Member(event.sender, session.identity, event.nick, session)
        for other in room.members.values():
            self._to(other, event)
        room.members[member.nick] = member
        self._show_room(room, member, session, event)
        return None

    def _show_room(self, room, member, session, event):
        """To one new session: who is there (itself last), the recent messages, the subject (even when empty)."""
        for other in room.members.values():
            if other is not member:
                self._to_session(member, session, attrs.evolve(event, sender=other.address, nick=other.nick,
                                                               text="", id=event.id))
        self._to_session(member, session, event)
        for said in room.history:
            self._to_session(member, session, attrs.evolve(said, action="history"))
        # The subject, empty too: rooms' clients (XMPP's) take it as the end of what a join shows.
        self._to_session(member, session, ChatEvent(
            Address(ROOM_NETWORK, room.name), member.address, room=room.name, action="subject", text=room.subject,
            created=event.created, id=event.id))

    def _message(self, event):
        room = self.rooms.get(event.room)
        if room is None:
            return fail(ConnectionError(f"room {event.room} has ended"))
        if room.history.maxlen:
            room.history.append(event)
        for member in list(room.members.values()):
            self._to(member, event)
        return None

    def _subject(self, event):
        room = self.rooms.get(event.room)
        if room is None:
            return fail(ConnectionError(f"room {event.room} has ended"))
        room.subject = event.text
        for member in list(room.members.values()):
            self._to(member, event)
        if room.persistent:
            self._save(room)
        return None

    def _leave(self, event):
        room = self.rooms.get(event.room)
        member = room.member(event.sender) if room is not None else None
        if member is None:
            return None
        for other in list(room.members.values()):
            self._to(other, event)
        del room.members[member.nick]
        self._ended(room)
        return None

    def _kick(self, event, room=None):
        room = room or self.rooms.get(event.room)
        target = room.members.get(event.text.partition("\n")[0]) if room is not None else None
        if target is None:
            return None
        for other in list(room.members.values()):
            self._to(other, event)
        del room.members[target.nick]
        self._ended(room)
        return None

    def _ended(self, room):
        if not room.members and not room.persistent and self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    def _to(self, member, event):
        for session in list(member.sessions):
            self._to_session(member, session, event)

    def show(self, member, session, event):
        """Show ``event`` to one ``session`` of ``member`` (a leave of that session alone)."""
        self._to_session(member, session, event)

    def _to_session(self, member, session, event):
        connector = self.connectors.get(session.connector)
        if connector is None:
            return
        try:
            result = connector.deliver(attrs.evolve(event, recipient=member.address), session)
        except Exception as e:
            self._undelivered(e, member, session)
            return
        if hasattr(result, "addErrback"):
            result.addErrback(lambda f: self._undelivered(f.value, member, session))

    def _undelivered(self, error, member, session):
        if isinstance(error, ConnectionError):
            self.log.info("room event not delivered to {who}: {why}", who=str(member.address), why=str(error))
        else:
            self.log.failure("room event not delivered to {who}", who=str(member.address))

    # -- sessions ending, operators -------------------------------------------------------------

    def session_ended(self, session):
        """``session`` has ended: it leaves every room it is in (a leave on the path when it was the member's last)."""
        sends = []
        for room in list(self.rooms.values()):
            for member in list(room.members.values()):
                if session not in member.sessions:
                    continue
                if len(member.sessions) > 1:
                    member.sessions.remove(session)
                    continue
                event = self.event(member.address, room.name, "leave", text="session ended")
                sends.append(self.submit(event).addCallback(self._left_anyway, event))
        return sends

    def _left_anyway(self, outcome, event):
        # A leave the path refused (the archive unavailable, fail-closed) still ends the membership:
        # nobody gone may stay in a room, and its sessions cannot be reached any more.
        if outcome.rejected:
            room = self.rooms.get(event.room)
            member = room.member(event.sender) if room is not None else None
            if member is not None:
                del room.members[member.nick]
                self._ended(room)
        return outcome

    def create(self, name, subject="", owner="", networks=(), external=True):
        """An operator's room (persistent); fires once it is stored. `RoomError` when the name cannot be or is taken."""
        name = check_name(name)
        existing = self.rooms.get(name)
        if existing is not None and existing.persistent:
            raise RoomError(f"room {name} exists")
        if len(subject) > self.config.max_subject:
            raise RoomError(f"a subject is at most {self.config.max_subject} characters")
        room = existing or Room(name=name, created=self.clock.seconds(),
                                history=collections.deque(maxlen=self.config.history))
        room.subject = subject or room.subject
        room.owner, room.networks, room.external, room.persistent = owner, tuple(networks), bool(external), True
        self.rooms[name] = room
        return self._save(room).addCallback(lambda _: room)

    def remove(self, name, reason="the room was closed"):
        """Close room ``name``: everyone in it is told (a kick on the path for each), and it is forgotten."""
        name = check_name(name)
        room = self.rooms.get(name)
        if room is None:
            raise RoomError(f"no room {name}")
        room.persistent, room.closing = False, True
        sends = []
        for member in list(room.members.values()):
            event = ChatEvent(OPERATOR, Address(ROOM_NETWORK, name), room=name, action="kick",
                              text=f"{member.nick}\n{reason}", members=room.roster(), created=self.clock.seconds())
            sends.append(self.bus.submit(event, through=_Closing(self, room)))

        def closed(outcomes):
            room.members.clear()  # a kick the path refused (the archive away) puts its member out all the same
            if self.rooms.get(name) is room:
                del self.rooms[name]
            if self.store is not None and self.thread is not None:
                return self.thread.call(self.store.delete, name).addCallback(lambda _: outcomes)
            return outcomes

        return gatherResults(sends).addCallback(closed)

    def _save(self, room):
        if self.store is None or self.thread is None:
            return succeed(None)
        return self.thread.call(self.store.save, room).addErrback(
            lambda f: self.log.failure("room {room} could not be stored", f, room=room.name))


Rooms._ACTIONS = {"join": Rooms._join, "message": Rooms._message, "subject": Rooms._subject, "leave": Rooms._leave,
                  "kick": Rooms._kick}


class _Closing:
    """The ``through`` of an operator's closing of a room: each kick acts on the room as it was."""

    def __init__(self, rooms, room):
        self.rooms, self.room = rooms, room

    def deliver(self, event, session):
        return self.rooms._kick(event, self.room)


def outcome_for(error: RoomError) -> Outcome:
    """The rejected `Outcome` of a request that names no room or nickname that can be (nothing is archived)."""
    return Outcome.rejected_("", str(error), "bad-room")

