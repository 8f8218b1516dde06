"""GatewayApi: the one facade connector and hook plugins receive."""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from gateway.interfaces import LoginThrottled
from gateway.path.router import is_deferred
from gateway.model import (
    Access, Address, ChatEvent, FileOffer, Identity, Message, Outcome, Presence, PresenceStatus, Profile, Typing,
)
from gateway.rooms import RoomError, check_name, outcome_for as room_outcome
from gateway.path.sessions import Session


class GatewayApi:
    """
    What a plugin may do with the gateway. Stable within a hook spec
    version (`gateway.hookspecs.HOOKSPEC_VERSION`); every method that may
    wait returns a Deferred.

    Added in version 1: everything below.
    """

    def __init__(self, core):
        self._core = core
        self.clock = core.clock
        # For listeners and outgoing connections (endpoints.serverFromString(api.reactor, ...)).
        self.reactor = core.reactor
        self.node = core.node
        self.log = Logger(namespace="gateway.plugin")

    # -- registration -----------------------------------------------------

    def register_connector(self, name: str, factory, options=None) -> None:
        """
        Offer a connector: ``factory(api, config_dict)`` builds it when
        ``[connectors.NAME]`` exists. With ``options`` (a sequence of
        `gateway.plugin.Option`), the table is checked first (unknown keys,
        types, choices; errors name the file and line, and ``gatewayctl
        config check`` finds them before start) and ``config_dict`` holds
        every declared key, defaults filled in.
        """
        self._core.register_connector_factory(name, factory, options)

    def plugin_config(self, name: str) -> dict:
        """The ``[plugin.NAME]`` table of the config file (empty when absent)."""
        return dict(self._core.config.plugin.get(name, {}))

    def config_path(self) -> str:
        return self._core.config.path

    def data_path(self, *parts) -> str:
        """A path under the gateway's data folder (for a plugin's own files)."""
        import os

        return os.path.join(self._core.config.data_dir, *parts)

    # -- events -----------------------------------------------------------

    def submit(self, event, origin=None, only_session=None, through=None) -> Deferred:
        """
        Send an event down the one path; fires with its `Outcome` (never
        fails). ``only_session``: deliver to that one session of the
        recipient instead of all of them (e.g. presence for the client that
        just added a buddy). ``through``: a connector that reaches the
        recipient by other means than a session (a SIP subscription of
        someone not registered): the path checks and archives the event as
        usual, then calls ``through.deliver(event, None)`` with the event as
        it is, and the outcome says whether that worked.
        """
        return self._core.bus.submit(event, origin, only_session, through)

    def check_policy(self, event) -> Deferred:
        """Fire with the policy's `Verdict` on ``event`` without archiving or delivering it."""
        return self._core.bus.decide(event)

    def disclose(self, event) -> Deferred:
        """
        For an answer the connector gives itself, about someone, to someone
        who asked: a presence probe or awareness snapshot (a `Presence` with
        a recipient), a profile or away-message query (a `Profile`). The
        event crosses the path (policy, hooks, archive) without a delivery
        stage, and the Deferred fires with ``(outcome, event)``: render the
        answer from that ``event`` (as transformed) only when
        ``outcome.delivered``; otherwise answer as if there were nothing to
        disclose (offline, no profile), or with the protocol's refusal.

        Added in version 1.
        """
        if not event.created:
            event = attrs.evolve(event, created=self.clock.seconds())
        return self._core.bus.disclose(event)

    @property
    def capturing(self) -> bool:
        """True with ``[archive] capture = "native"``: then call `capture` (else it costs nothing to skip)."""
        return self._core.config.archive.capture == "native"

    def capture(self, event_id: str, direction: str, network: str, data: bytes, notes=()) -> None:
        """
        Native capture: keep the bytes event ``event_id`` arrived as
        (``direction`` ``"received"``, on the origin ``network``) or was
        rendered as for ``network`` (``"sent"``), with ``notes``: short
        machine-readable words for what the translation lost, such as
        ``html-dropped``, ``typing-unsupported``, ``truncated-to-2048``.
        Does nothing unless `capturing`.

        Added in version 1.
        """
        if self.capturing:
            record = getattr(self._core.archive, "record_capture", None)
            if record is not None:
                record(event_id, direction, network, bytes(data), tuple(notes))

    def refuse(self, event, reason: str, code: str = "unsupported"):
        """
        Refuse an event this connector cannot carry (chat traffic before
        rooms exist, an unsupported kind of transfer): it is archived as
        rejected with ``reason`` and observed, never silently dropped.
        Returns the rejected `Outcome` to answer in the protocol's own way.

        Added in version 1.
        """
        return self._core.bus.refuse(event, reason, code)

    def file_offer(self, sender, recipient, name, size=0, text="", url="", transfer="") -> FileOffer:
        """A new `FileOffer` stamped with the gateway's time; `submit` it like a message."""
        return FileOffer(sender, recipient, name, size, text, url, transfer, created=self.clock.seconds())

    def profile(self, sender, recipient, status=PresenceStatus.AVAILABLE, note="", text="", html=None) -> Profile:
        """A new `Profile` disclosure of ``sender`` to ``recipient``; pass it to `disclose`."""
        return Profile(sender, recipient, status, note, text, html, created=self.clock.seconds())

    def message(self, sender, recipient, text, html=None, thread=None) -> Message:
        """A new `Message` stamped with the gateway's time."""
        return Message(sender, recipient, text, html=html, thread=thread, created=self.clock.seconds())

    def typing(self, sender, recipient, active=True) -> Typing:
        return Typing(sender, recipient, active, created=self.clock.seconds())

    # -- rooms ------------------------------------------------------------

    def join_room(self, session: Session, room: str, nick: str = "") -> Deferred:
        """
        ``session`` asks to join ``room`` (its name: 1 to 64 of a-z, 0-9,
        ``.``, ``_``, ``-``) as ``nick`` (default: its address's user). The
        join crosses the path; the Deferred fires with its `Outcome`. When
        allowed, before it fires, the connector's ``deliver`` has been
        handed, for this session, a `ChatEvent` ``join`` for each member
        already there, its own ``join`` last (``sender ==
        recipient``), the recent messages (``history``) and the subject;
        later every ``join``, ``leave``, ``message``, ``subject`` and
        ``kick`` of the room. A name or nickname that cannot be is refused
        at once (code ``bad-room``), with nothing archived, as a malformed
        frame would be.

        Added in version 3.
        """
        return self._room(session.address, room, "join", "", nick, session)

    def leave_room(self, session: Session, room: str) -> Deferred:
        """
        ``session`` leaves ``room``. When the person is in it from other
        sessions too, only this one stops hearing it (nothing crosses the
        path: nobody else sees a change); otherwise a ``leave`` crosses the
        path and everyone in the room is told. Fires with an `Outcome`.

        Added in version 3.
        """
        try:
            name, found, member = self._membership(room, session)
        except RoomError as e:
            return succeed(room_outcome(e))
        rooms = self._core.rooms
        if member is not None and session in member.sessions and len(member.sessions) > 1:
            # Only this session stops hearing the room; it alone is shown its leave.
            event = rooms.event(session.address, name, "leave")
            member.sessions.remove(session)
            rooms.show(member, session, event)
            return succeed(Outcome.delivered_(event.id))
        return self._room(session.address, name, "leave", "", "", None)

    def room_message(self, session: Session, room: str, text: str) -> Deferred:
        """``session`` says ``text`` in ``room``; fires with the `Outcome`. Added in version 3."""
        return self._room(session.address, room, "message", text, "", None)

    def room_subject(self, session: Session, room: str, subject: str) -> Deferred:
        """``session`` sets the subject of ``room``; fires with the `Outcome`. Added in version 3."""
        return self._room(session.address, room, "subject", subject, "", None)

    def room_kick(self, session: Session, room: str, nick: str, reason: str = "") -> Deferred:
        """``session`` (the room's owner) puts ``nick`` out of ``room``; fires with the `Outcome`. Added in version 3."""
        if not nick or "\n" in nick:
            return succeed(Outcome.rejected_("", f"{nick!r} is not a nickname", "bad-room"))
        text = f"{nick}\n{reason}".rstrip("\n")
        return self._room(session.address, room, "kick", text, "", None)

    def room_invite(self, session: Session, room: str, invitee: Address, text: str = "") -> Deferred:
        """
        ``session`` invites ``invitee`` (any address) to ``room``: a
        `ChatEvent` ``invite`` to that person, decided like a message to
        them, which their connector shows as an invitation. Only members
        invite. Fires with the `Outcome`. Added in version 3.
        """
        try:
            name, _, member = self._membership(room, session)
        except RoomError as e:
            return succeed(room_outcome(e))
        event = ChatEvent(session.address, invitee, room=name, action="invite", text=text,
                          nick=member.nick if member is not None else "", created=self.clock.seconds())
        if member is None:
            return succeed(self.refuse(event, f"not in room {name}", "not-member"))
        return self._core.bus.submit(event)

    def room(self, room: str) -> Optional[dict]:
        """
        What is known of ``room`` now (None when there is none): ``room``,
        ``address``, ``subject``, ``owner``, ``networks``, ``external``,
        ``persistent``, ``members`` (``nick``, ``address``, ``person``).
        For a connector answering a room query (disco, chat info).
        Added in version 3.
        """
        try:
            found = self._core.rooms.rooms.get(check_name(room))
        except RoomError:
            return None
        return None if found is None else found.describe()

    def room_names(self) -> list:
        """The names of the rooms there are now, sorted (for a room directory such as disco#items). Added in version 3."""
        return sorted(self._core.rooms.rooms)

    def rooms_of(self, session: Session) -> list:
        """The names of the rooms ``session`` is in. Added in version 3."""
        return self._core.rooms.rooms_of(session)

    def _membership(self, room, session):
        """``(name, room or None, session's person's membership or None)``; `RoomError` when the name cannot be."""
        name = check_name(room)
        found = self._core.rooms.rooms.get(name)
        return name, found, found.member(session.address) if found is not None else None

    def _room(self, sender, room, action, text, nick, session):
        rooms = self._core.rooms
        try:
            event = rooms.event(sender, room, action, text, nick, session)
        except RoomError as e:
            return succeed(room_outcome(e))
        return rooms.submit(event)

    # -- people -----------------------------------------------------------

    def authenticate(self, address: Address, password: str, source: Optional[str] = None) -> Deferred:
        """
        Fire with the `Identity` if ``password`` is right for handle
        ``address``, else None. ``source`` is the client's host, for
        throttling. Fails with `gateway.interfaces.LoginThrottled` after too
        many failures for that user from that source, or from that source,
        or when too many checks wait (decided before anything is hashed),
        and with `gateway.interfaces.DirectoryUnavailable` when the
        directory cannot tell now: answer both in the protocol's own terms.
        """
        throttle = self._core.throttle
        refusal = throttle.refusal(address, source)
        if refusal is not None:
            self.log.warn("login of {address} from {source} throttled: the {limit} limit", address=str(address),
                          source=source, limit=refusal)
            self.audit(address, "login-failed", source, reason=f"throttled: too many failed logins ({refusal})")
            self._core.metrics.login_throttled(refusal)
            return fail(LoginThrottled(f"too many failed logins for {address}; try again later"))
        attempt = throttle.started(address, source)

        def checked(identity):
            throttle.finished(attempt, identity is not None)
            if identity is None:
                self.audit(address, "login-failed", source, reason="wrong password or no such user")
            return identity

        def unchecked(failure):
            throttle.finished(attempt, None)
            if failure.check(LoginThrottled):
                self._core.metrics.login_throttled("queue")
                self.audit(address, "login-failed", source, reason="throttled: too many logins waiting")
            return failure

        directory = self._core.directory
        if getattr(directory, "queues_password_checks", False):
            # It runs its checks in its own fair, bounded queue (gateway.directory.hashqueue), by source.
            d = maybeDeferred(directory.authenticate, address, password, source=source)
        else:
            d = self._core.login_queue.run(source, lambda: directory.authenticate(address, password))
        return d.addCallbacks(checked, unchecked)

    def login_allowed(self, address: Address, source: Optional[str] = None) -> bool:
        """
        For protocols that check a `secret` themselves: may this login be
        tried now? Ask before looking the secret up, and again right before
        comparing the client's proof with it (attempts made in parallel all
        pass the first question before any of them failed; the second,
        with the comparison in the same turn, stops them at the limit). A
        False is counted as throttled (refuse the login as `authenticate`
        would).
        """
        refusal = self._core.throttle.refusal(address, source)
        if refusal is not None:
            self._core.metrics.login_throttled(refusal)
        return refusal is None

    def login_failed(self, address: Address, source: Optional[str] = None, reason: str = "wrong password") -> None:
        """
        For protocols that check a `secret` themselves: count (and archive)
        a wrong password or secret. A login refused for another cause (a
        malformed or unsupported request) is no guess: `audit` it instead,
        so it does not count against everyone at its address.
        """
        self.audit(address, "login-failed", source, reason=reason)
        self._core.throttle.failed(address, source)

    def audit(self, address, action: str, source: Optional[str] = None, *, connector: str = "", reason: str = "") -> None:
        """
        Archive an access event (`gateway.model.Access`): ``action`` is
        ``login``, ``login-failed`` or ``logout``. `authenticate`,
        `login_failed`, `login` and `logout` call it themselves; a connector
        calls it for a login it refuses before any of them (a malformed or
        unsupported login, a refused weak cipher).

        Added in version 1.
        """
        if not isinstance(address, Address):
            try:
                address = Address.parse(str(address))
            except ValueError:
                return
        self._core.bus.record_access(
            Access(address, action, source=source or "", connector=connector, text=reason,
                   created=self.clock.seconds())
        )

    def secret(self, address: Address, scheme: str) -> Deferred:
        """
        Fire with ``(identity, value)`` of a login secret for protocols that
        never send the password (OSCAR MD5, SIP digest, XMPP SCRAM); see
        `gateway.directory.secrets` for the schemes and how to check them.
        """
        return self._core.directory.secret(address, scheme)

    @property
    def secrets_complete(self) -> bool:
        """
        False when `secret` knows only the secrets learned at earlier logins
        that sent the password (an LDAP directory): a connector then offers a
        login that sends the password (over TLS) by default.
        """
        return getattr(self._core.directory, "secrets_complete", True)

    def identity_for(self, address: Address) -> Deferred:
        result = self._core.router.identity(address)
        return result if is_deferred(result) else succeed(result)

    def contacts(self, identity_id: str) -> Deferred:
        return self._core.directory.contacts(identity_id)

    def set_contacts(self, identity_id: str, contacts) -> Deferred:
        return self._core.directory.set_contacts(identity_id, list(contacts))

    def alias_for(self, address: Address, network: str, domain: str = "") -> Deferred:
        return self._core.directory.alias_for(address, network, domain)

    def resolve_alias(self, address: Address) -> Deferred:
        return self._core.directory.resolve_alias(address)

    # -- sessions and presence ---------------------------------------------

    def login(
        self,
        identity: Identity,
        address: Address,
        connector: str,
        handler=None,
        status: PresenceStatus = PresenceStatus.AVAILABLE,
        note: str = "",
        source: Optional[str] = None,
    ) -> Deferred:
        """
        Register a logged-in session and fire with it once watchers were
        told, the contacts' presence was delivered to it and held messages
        were handed over. The login is archived, with ``source`` (the
        client's address) when given.
        """
        self.audit(address, "login", source, connector=connector)
        # A login that checked a protocol secret itself (SCRAM, MD5, digest) succeeded too:
        # its address is now known for the account, and its failure count is cleared.
        self._core.throttle.succeeded(address, source)
        session = Session(
            identity=identity,
            address=address,
            connector=connector,
            node=self.node,
            started=self.clock.seconds(),
            status=PresenceStatus(status),
            note=note,
            handler=handler,
        )
        self._core.sessions.add(session)
        return self._core.bus.session_started(session)

    def logout(self, session: Session) -> Deferred:
        """Forget the session; watchers see the person's remaining presence (or offline)."""
        self.audit(session.address, "logout", connector=session.connector)
        self._core.rooms.session_ended(session)
        self._core.sessions.remove(session)
        return self._core.bus.session_ended(session)

    def set_presence(self, session: Session, status, note: str = "") -> Deferred:
        """The session's status changed: tell everyone who watches."""
        session.status = PresenceStatus(status)
        session.note = note
        best, best_note = self._core.sessions.presence_of(session.identity.id)
        return self._core.bus.submit(
            Presence(sender=session.address, status=best, note=best_note, created=self.clock.seconds())
        )

    def placement(self, connector: str) -> Optional[str]:
        """
        In a cluster, where a new login on ``connector`` should go:
        ``host:port`` of that connector's listener on another node (this
        node is full or being drained, or that node is less loaded), or
        None to take it here (always None on a node on its own). For
        protocols that can send a client elsewhere (XMPP's
        ``see-other-host``); ask before the client has authenticated.

        Added in version 2.
        """
        return self._core.placement(connector)

    def admission(self) -> Optional[tuple]:
        """
        None while this node takes new logins; in a cluster, ``(reason,
        text)`` when it does not: ``node-full`` (``max_sessions``) or
        ``node-draining``. Listeners opened with `listen` refuse new
        connections by it already; a protocol with no connection to
        refuse (SIP over UDP) asks it before a new registration.

        Added in version 2.
        """
        return self._core.admission()

    def share_ticket(self, connector: str, data: dict, ttl: float) -> Deferred:
        """
        Keep ``data`` (a JSON-able dict) for ``ttl`` seconds for the next
        connection of a login to take once (`claim_ticket`), on whichever
        node of the cluster it comes to; fire with its key: 64 hexadecimal
        digits, unguessable, fit to be a protocol's cookie. On a node on
        its own it is kept here; in a cluster, in Redis, signed with the
        cluster's secret (so that writing to Redis does not let anyone in).
        Fails when it cannot be kept (too many logins in progress; Redis
        unreachable): then the connection that asked should serve the login.

        Added in version 2.
        """
        return self._core.tickets.share(connector, data, ttl)

    def claim_ticket(self, connector: str, key: str) -> Deferred:
        """
        Fire with the ``data`` shared under ``key`` by `share_ticket`, once
        (None when unknown, expired, taken already, or not signed by this
        cluster).

        Added in version 2.
        """
        return self._core.tickets.claim(connector, key)

    def sessions_of(self, identity_id: str) -> list:
        return list(self._core.sessions.sessions_of(identity_id))

    def presence_of(self, identity_id: str) -> tuple:
        """(`PresenceStatus`, note) of a person on this node."""
        return self._core.sessions.presence_of(identity_id)

    def identity(self, identity_id: str) -> Deferred:
        return self._core.directory.get_identity(identity_id)

    def connector(self, name: str) -> Optional[object]:
        return self._core.connectors.get(name)

    # -- listeners ---------------------------------------------------------

    #: The keys every connector's table accepts for its listeners (`listen`).
    LIMIT_KEYS = ("max_connections", "max_connections_per_source", "max_output_buffer", "output_timeout")

    def listener_options(self, connector: str, table: dict) -> dict:
        """
        The listener limit keys (`LIMIT_KEYS`) of a connector's table,
        checked now (a wrong value raises `gateway.plugin.ConfigError`), for
        `listen` later. Every connector accepts these keys in its table.

        Added in version 1.
        """
        from gateway.path.limits import listener_limits

        options = {key: table[key] for key in self.LIMIT_KEYS if key in table}
        listener_limits(connector, options)
        return options

    def listen(self, description: str, factory, *, connector: str, options: Optional[dict] = None) -> Deferred:
        """
        Listen on endpoint string ``description`` with ``factory``, under the
        gateway's connection limits: ``max_connections`` (10000) and
        ``max_connections_per_source`` (50) from ``options`` (the
        connector's table; every connector accepts the `LIMIT_KEYS`). A
        connection over a limit is closed before a protocol is built, after
        the bytes ``factory.refusal(reason)`` returns when the factory has
        that method (the protocol's own error); refusals are counted in
        ``gateway_connections_refused_total`` and logged once a minute per
        address. A peer that does not read what is sent to it is closed
        once ``max_output_buffer`` bytes (4 MiB) wait for it, or once more
        than 64 KiB have waited for it for ``output_timeout`` seconds (120;
        reason ``peer-not-reading``). A node of a cluster that is being
        drained, or has its ``max_sessions``, refuses new connections the
        same way (reasons ``node-draining``, ``node-full``). Fires with the
        listening port.

        Added in version 1.
        """
        from twisted.internet import endpoints

        from gateway.path.limits import LimitedFactory, listener_limits

        limits = listener_limits(connector, options or {})
        limited = LimitedFactory(factory, limits, f"{connector} {description}", self.clock, self._core.metrics,
                                 admission=self._core.admission, placement=lambda: self._core.placement(connector))
        limited.owner, limited.endpoint = connector, description
        self._core.listeners.append(limited)
        return endpoints.serverFromString(self.reactor, description).listen(limited)
