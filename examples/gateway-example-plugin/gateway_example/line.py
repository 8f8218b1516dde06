"""
A connector plugin: a line-based text protocol, small enough to read in one sitting.

Try it with netcat once the demo gateway runs (``nc 127.0.0.1 7777``)::

    LOGIN alice secret              -> OK LOGIN line:alice
    MSG aim:bob hello there         -> OK delivered 3f2a...   (or QUEUED / ERR ...)
    AWAY out for lunch              -> OK AWAY
    BACK                            -> OK BACK
    JOIN #lobby [nick]              -> ROOM lines (who is there, recent messages, subject), then OK
    SAY #lobby hello all            -> OK delivered ... (and the ROOM ... MSG line everyone gets)
    TOPIC #lobby today's agenda     -> OK ...
    INVITE #lobby xmpp:dan@example.com come in
    KICK #lobby nick [reason]       (the room's owner)
    PART #lobby
    QUIT

The gateway pushes ``FROM <address> <text>``, ``PRESENCE <address>
<status> [note]``, ``TYPING <address> on|off``, ``INVITE #<room>
<address> <text>`` and, for rooms, ``ROOM #<room> JOIN|LEAVE <nick>
<address>``, ``ROOM #<room> MSG|HISTORY <nick> <text>``, ``ROOM #<room>
SUBJECT <text>`` and ``ROOM #<room> KICK <nick> [reason]``. Errors are
``ERR <code> <reason>``. Limits: lines up to 4096 bytes (longer closes the connection),
``idle_timeout`` seconds without a line, ``rate`` lines per second.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from gateway.plugin import (
    Address,
    AddressError,
    ChatEvent,
    ConfigError,
    DirectoryUnavailable,
    FileOffer,
    IConnector,
    LoginThrottled,
    Message,
    Presence,
    PresenceStatus,
    Typing,
    connector_option,
    hookimpl,
)

NETWORK = "line"


# -- codec: pure functions over one line --------------------------------------


class LineError(ValueError):
    """A line that is not a command; its text is the reason sent back."""


COMMANDS = {"LOGIN": 2, "MSG": 2, "AWAY": 0, "BACK": 0, "TYPING": 2, "QUIT": 0,
            "JOIN": 1, "PART": 1, "SAY": 2, "TOPIC": 2, "KICK": 2, "INVITE": 2}


def parse_command(line: bytes) -> tuple:
    """``b"MSG aim:bob hi"`` -> ``("MSG", ["aim:bob", "hi"])``; raises `LineError`."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError("lines must be UTF-8") from None
    verb, _, rest = text.strip().partition(" ")
    verb = verb.upper()
    if verb not in COMMANDS:
        raise LineError(f"unknown command {verb!r}; commands: {', '.join(COMMANDS)}")
    needed = COMMANDS[verb]
    args = rest.split(" ", needed - 1) if needed else ([rest] if rest else [])
    if needed and (len(args) < needed or not all(args)):
        raise LineError(f"{verb} needs {needed} arguments")
    return verb, args


def render_room(event) -> str:
    """The line a client is shown for something in a room (a `ChatEvent`)."""
    room = f"#{event.room}"
    if event.action == "invite":
        line = f"INVITE {room} {event.sender} {event.text}"
    elif event.action in ("join", "leave"):
        line = f"ROOM {room} {event.action.upper()} {event.nick} {event.sender}"
    elif event.action in ("message", "history"):
        line = f"ROOM {room} {'MSG' if event.action == 'message' else 'HISTORY'} {event.nick} {event.text}"
    elif event.action == "subject":
        line = f"ROOM {room} SUBJECT {event.text}"
    else:
        line = f"ROOM {room} {event.action.upper()} {event.text}"
    return line.rstrip().replace("\r", " ").replace("\n", " ")


def room_name(text: str) -> str:
    """``#lobby`` or ``lobby`` -> ``lobby``."""
    return text[1:] if text.startswith("#") else text


def render_event(event) -> str:
    """The line a client is shown for an event from the gateway."""
    if isinstance(event, ChatEvent):
        return render_room(event)
    if isinstance(event, Message):
        return f"FROM {event.sender} {event.text}".replace("\r", " ").replace("\n", " ")
    if isinstance(event, Presence):
        return f"PRESENCE {event.sender} {event.status.value} {event.note}".rstrip()
    if isinstance(event, Typing):
        return f"TYPING {event.sender} {'on' if event.active else 'off'}"
    if isinstance(event, FileOffer):
        return " ".join(
            filter(None, ["FILE", str(event.sender), event.name.replace(" ", "_") or "-", str(event.size), event.url])
        ).replace("\r", " ").replace("\n", " ")
    return f"EVENT {event.kind} {event.sender}"


def lost_in_rendering(event) -> list:
    """What a line client cannot be shown of ``event`` (for native capture)."""
    lost = []
    if getattr(event, "html", None):
        lost.append("html-dropped")
    if "\n" in (getattr(event, "text", "") or ""):
        lost.append("newlines-flattened")
    return lost


# -- protocol ---------------------------------------------------------------


class LineProtocol(LineOnlyReceiver, TimeoutMixin):
    delimiter = b"\n"
    MAX_LENGTH = 4096
    log = Logger()

    def __init__(self, connector):
        self.connector = connector
        self.callLater = connector.api.clock.callLater  # TimeoutMixin's timer, on the injected clock
        self.session = None
        self._window_start = 0.0
        self._in_window = 0

    def connectionMade(self):
        self.setTimeout(self.connector.idle_timeout)
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.send("HELLO gateway line protocol; LOGIN <user> <password>")

    def send(self, text):
        self.transport.write(text.encode("utf-8") + b"\r\n")

    def lineLengthExceeded(self, line):
        self.send(f"ERR too-long lines are limited to {self.MAX_LENGTH} bytes")
        self.log.warn("line connector: closing {peer}: line too long", peer=str(self.transport.getPeer()))
        self.transport.loseConnection()

    def _rate_ok(self):
        now = self.connector.api.clock.seconds()
        if now - self._window_start >= 1.0:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        return self._in_window <= self.connector.rate

    def lineReceived(self, line):
        self._line = line  # as received, for native capture
        self.resetTimeout()
        if not line.strip():
            return
        if not self._rate_ok():
            self.send("ERR rate-limited too many lines; slow down")
            return
        try:
            verb, args = parse_command(line.rstrip(b"\r"))
        except LineError as e:
            self.send(f"ERR bad-command {e}")
            return
        if verb == "QUIT":
            self.send("BYE")
            self.transport.loseConnection()
        elif verb == "LOGIN":
            self.login(*args)
        elif self.session is None:
            self.send("ERR not-logged-in LOGIN first")
        elif verb == "MSG":
            self.message(*args)
        elif verb == "TYPING":
            self.typing(*args)
        elif verb in ("JOIN", "PART", "SAY", "TOPIC", "KICK", "INVITE"):
            self.room(verb, *args)
        elif verb == "AWAY":
            self.presence(PresenceStatus.AWAY, args[0] if args else "")
        elif verb == "BACK":
            self.presence(PresenceStatus.AVAILABLE, "")

    def login(self, user, password):
        if self.session is not None:
            self.send("ERR already-logged-in")
            return
        try:
            address = Address(NETWORK, user)
        except AddressError as e:
            self.send(f"ERR bad-user {e}")
            return
        api = self.connector.api

        def authenticated(identity):
            if identity is None:
                self.send("ERR auth-failed wrong user or password")
                return None
            if self.transport.disconnecting:
                return None
            return api.login(identity, address, self.connector.name, handler=self, source=source).addCallback(logged_in)

        def logged_in(session):
            self.session = session
            self.connector.sessions.add(session)
            self.send(f"OK LOGIN {session.address}")

        def refused(failure):
            if failure.check(DirectoryUnavailable):
                self.send("ERR try-later the directory is unavailable; try again later")
            elif failure.check(LoginThrottled):
                self.send("ERR throttled too many failed logins; try again later")
            else:
                self._failed(failure, "login")

        source = getattr(self.transport.getPeer(), "host", None)
        api.authenticate(address, password, source=source).addCallback(authenticated).addErrback(refused)

    def _recipient(self, text):
        try:
            return Address.parse(text)
        except AddressError as e:
            self.send(f"ERR bad-address {e}")
            return None

    def message(self, recipient, text):
        to = self._recipient(recipient)
        if to is not None:
            api = self.connector.api
            event = api.message(self.session.address, to, text)
            if api.capturing:
                api.capture(event.id, "received", NETWORK, self._line + b"\n")
            api.submit(event, origin=self.connector).addCallback(self.answer)

    def typing(self, recipient, state):
        to = self._recipient(recipient)
        if to is not None:
            api = self.connector.api
            api.submit(api.typing(self.session.address, to, state.lower() == "on"))

    def room(self, verb, target, rest=""):
        api, name = self.connector.api, room_name(target.split(" ", 1)[0])
        if verb == "JOIN":
            d = api.join_room(self.session, name, target.split(" ", 1)[1] if " " in target else "")
        elif verb == "PART":
            d = api.leave_room(self.session, name)
        elif verb == "SAY":
            d = api.room_message(self.session, name, rest)
        elif verb == "TOPIC":
            d = api.room_subject(self.session, name, rest)
        elif verb == "KICK":
            nick, _, reason = rest.partition(" ")
            d = api.room_kick(self.session, name, nick, reason)
        else:
            invitee, _, text = rest.partition(" ")
            to = self._recipient(invitee)
            if to is None:
                return
            d = api.room_invite(self.session, name, to, text)
        d.addCallback(self.answer)

    def presence(self, status, note):
        self.connector.api.set_presence(self.session, status, note)
        self.send(f"OK {'AWAY' if status is PresenceStatus.AWAY else 'BACK'}")

    def answer(self, outcome):
        if outcome.rejected:
            self.send(f"ERR {outcome.code} {outcome.reason}")
        else:
            self.send(f"OK {outcome.status.value} {outcome.event_id}")

    def _failed(self, failure, what):
        self.log.failure("line connector: {what} failed", failure, what=what)
        self.send(f"ERR internal {what} failed")

    def timeoutConnection(self):
        self.send("ERR idle-timeout")
        TimeoutMixin.timeoutConnection(self)

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self.session is not None:
            session, self.session = self.session, None
            self.connector.sessions.discard(session)
            self.connector.api.logout(session)


# -- connector --------------------------------------------------------------


class LineFactory(protocol.Factory):
    """Builds line clients; one over the listener's connection limits is told so first."""

    def refusal(self, reason):
        return f"ERR {reason} try again later\r\n".encode()


@implementer(IConnector)
class LineConnector(service.MultiService):
    """The ``[connectors.line]`` connector: ``listen`` (endpoint strings), ``idle_timeout``, ``rate``."""

    name = "line"
    networks = (NETWORK,)

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        known = {"listen", "idle_timeout", "rate", *self.api.LIMIT_KEYS}
        for key in config:
            if key not in known:
                raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        self.listen = connector_option("line", config, "listen", list, ["tcp:7777:interface=127.0.0.1"])
        self.idle_timeout = connector_option("line", config, "idle_timeout", float, 600.0)
        self.rate = connector_option("line", config, "rate", int, 20)
        self.listen_options = api.listener_options("line", config)
        self.sessions = set()
        self.ports = []

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return False

    def deliver(self, event, session):
        line = render_event(event)
        session.handler.send(line)
        if self.api.capturing:
            self.api.capture(event.id, "sent", NETWORK, line.encode("utf-8") + b"\r\n", lost_in_rendering(event))

    def disconnect(self, session, reason):
        """End ``session`` (the node is drained, or an operator kicked it): its client is told why."""
        session.handler.send(f"ERR closed {reason}")
        session.handler.transport.loseConnection()

    def startService(self):
        super().startService()
        factory = LineFactory.forProtocol(lambda: LineProtocol(self))
        for description in self.listen:
            self.api.listen(description, factory, connector="line", options=self.listen_options).addCallbacks(
                self.ports.append, self._listen_failed, errbackArgs=(description,))

    def _listen_failed(self, failure, description):
        Logger().error("line connector cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        for session in list(self.sessions):
            session.handler.transport.loseConnection()
        ports, self.ports = self.ports, []
        return gatherResults([port.stopListening() for port in ports] + [
            self.api.logout(s) for s in self._drain_sessions()
        ])

    def _drain_sessions(self):
        sessions = list(self.sessions)
        self.sessions.clear()
        for session in sessions:
            session.handler.session = None
        return sessions


@hookimpl
def gateway_register_connectors(api):
    api.register_connector("line", LineConnector)
