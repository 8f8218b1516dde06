"""The one path: route, policy, transform, archive, deliver, observe."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.storage.archive import OfflineFull
from gateway.path.content import html_of, normalize
from gateway.interfaces import DirectoryUnavailable
from gateway.model import (
    Message,
    Outcome,
    Presence,
    PresenceStatus,
    Profile,
    Verdict,
)
from gateway.path.router import Route, is_deferred, then
from gateway.path.sessions import more_available


class Rejection(Exception):
    """Ends the path with a rejected outcome (for ``event``, when given)."""

    def __init__(self, reason, code, rule="", event=None):
        super().__init__(reason)
        self.reason, self.code, self.rule, self.event = reason, code, rule, event


class Bus:
    """
    Every event crosses `submit`; it returns a Deferred `Outcome` for the
    origin connector to answer in its own protocol. Hooks with no
    implementation cost nothing; an event no hook changed is not copied.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock,
        router,
        policy,
        plugins,
        archive,
        offline,
        sessions,
        metrics,
        fail_closed=False,
        durable=True,
        hook_timeout=5.0,
        archive_kinds=frozenset({"im", "presence", "chat", "file", "info", "access"}),
        offline_enabled=True,
        node="",
        unrecorded="reject",
    ):
        self.clock = clock
        self.router = router
        self.policy = policy
        self.plugins = plugins
        self.archive = archive
        self.offline = offline
        self.sessions = sessions
        self.metrics = metrics
        self.fail_closed = fail_closed
        self.durable = durable or fail_closed
        self.hook_timeout = hook_timeout
        self.archive_kinds = frozenset(archive_kinds)
        self.offline_enabled = offline_enabled
        self.node = node
        # When the archive can neither commit nor spool an event that is not fail-closed:
        # "reject" it (the default), or "deliver" it unrecorded (logged critical and counted).
        self.unrecorded = unrecorded
        self._draining = set()
        # In a cluster, `gateway.cluster.streams.Relay`: hands events to the nodes where their recipient is.
        self.cluster = None
        # The archive may say it is far behind (the writer process's queue is full).
        self._behind = getattr(archive, "behind", None)
        self.refresh_hooks()

    def refresh_hooks(self):
        """Re-read which hooks have implementations (after plugins were registered)."""
        self._policy_hooks = self.plugins.implementations("gateway_policy_check")
        self._transform_hooks = self.plugins.implementations("gateway_transform")
        self._delivered_hooks = self.plugins.implementations("gateway_delivered")
        self._rejected_hooks = self.plugins.implementations("gateway_rejected")

    # -- entry ------------------------------------------------------------

    def submit(self, event, origin=None, only_session=None, through=None) -> Deferred:
        """
        Send ``event`` down the path. ``origin`` names the connector it came
        from; the path does not use it yet (it is part of the API so that
        connectors pass it from the start). ``only_session`` restricts
        delivery to one session of the recipient; ``through`` (a connector)
        delivers it to that connector as it is, with no session. Fires with
        an `Outcome`; never fails.
        """
        if not event.created:
            event = attrs.evolve(event, created=self.clock.seconds())
        if event.__class__ in _RICH and event.html is not None:
            event = _normalized(event)
        if event.recipient is None:
            return self._broadcast(event)
        try:
            result = then(self.router.route(event, only_session, through), self._check, event)
        except Exception:
            return succeed(self._internal_error(Failure(), event))
        if is_deferred(result):
            return result.addErrback(self._internal_error, event)
        return succeed(result)

    def _internal_error(self, failure, event):
        if failure.check(DirectoryUnavailable):
            self.log.warn("event {event_id} refused: {why}", event_id=event.id, why=failure.getErrorMessage())
            outcome = Outcome.rejected_(event.id, failure.getErrorMessage(), "directory-unavailable")
            self._record(event, Verdict.deny("directory unavailable"), outcome, None)
            self._observe(event, outcome)
            return outcome
        self.log.failure(
            "internal error on the path for event {event_id}",
            failure,
            event_id=event.id,
        )
        outcome = Outcome.rejected_(event.id, "internal error in the gateway", "internal")
        self._record(event, Verdict.deny("internal error"), outcome, None)
        self._observe(event, outcome)
        return outcome

    def disclose(self, event) -> Deferred:
        """
        The path for an answer the origin connector gives itself (a presence
        probe, a profile query): route, policy, transform, archive and
        observe, then fire with ``(outcome, event)``: the event as
        transformed, which the connector renders as its answer only when the
        outcome is delivered. Never fails.
        """
        capture = _Capture()
        d = self.submit(event, through=capture)
        return d.addCallback(lambda outcome: (outcome, capture.event if capture.event is not None else event))

    def refuse(self, event, reason, code="unsupported") -> Outcome:
        """
        Refuse ``event`` without routing it (traffic its connector cannot
        carry, such as chat before rooms exist): archived as rejected with
        ``reason``, observed, and the outcome returned for the connector to
        answer natively.
        """
        if not event.created:
            event = attrs.evolve(event, created=self.clock.seconds())
        return self._reject(event, None, Verdict.deny(reason, rule=code), code, hold=False)

    def record_access(self, event) -> None:
        """Archive a login, failed login or logout (`gateway.model.Access`); nobody receives it."""
        if not event.created:
            event = attrs.evolve(event, created=self.clock.seconds())
        self.metrics.event(event.kind, _ACCESS_OUTCOME)
        if event.kind in self.archive_kinds:
            verdict = Verdict.deny(event.text or event.action) if event.action == "login-failed" else _RECORDED
            try:
                self.archive.record(event, verdict, None)
            except Exception:
                self.log.failure("archive refused access event {event_id}", event_id=event.id)

    # -- 2. policy --------------------------------------------------------

    def _check(self, route: Route, event):
        if route.unknown:
            return self._reject(
                event, route, Verdict.deny(f"no such user: {event.recipient}"), "unknown-recipient"
            )
        verdict = self.policy.check_route(event, route)
        if not verdict.allowed:
            return self._reject(event, route, verdict, "policy")
        if not self._policy_hooks:
            return self._allowed(verdict, event, route)
        return then(self._ask_plugins(event, route, verdict), self._allowed, event, route)

    def decide(self, event) -> Deferred:
        """
        The policy's `Verdict` on ``event`` (built-in rules, then plugins),
        without archiving or delivering it: for protocol steps that only ask
        (a subscription request, a buddy-list add).
        """
        def check(route):
            verdict = self.policy.check_route(event, route)
            if not verdict.allowed or not self._policy_hooks:
                return verdict
            return self._ask_plugins(event, route, verdict)

        result = then(self.router.route(event), check)
        return result if is_deferred(result) else succeed(result)

    def _ask_plugins(self, event, route, verdict):
        kwargs = {"event": event, "sender": route.sender, "recipient": route.recipient}
        answers = []
        pending = False
        for name, function, argnames in self._policy_hooks:
            try:
                answer = function(**{a: kwargs[a] for a in argnames})
            except Exception:
                answer = Failure()
            if is_deferred(answer):
                pending = True
                answer.addTimeout(self.hook_timeout, self.clock)
            answers.append((name, answer))
        if not pending:
            return self._fold(verdict, answers)
        # A failed answer arrives as its Failure, which _fold counts as a deny.
        return _all(a for _, a in answers).addCallback(
            lambda results: self._fold(
                verdict, [(name, value) for (name, _), (_, value) in zip(answers, results)]
            )
        )

    def _fold(self, verdict, answers):
        """Deny beats allow; errors, time-outs and garbage deny, naming the plugin."""
        denial = None
        for name, answer in answers:
            if answer is None or (isinstance(answer, Verdict) and answer.allowed):
                continue
            if isinstance(answer, Verdict):
                candidate = Verdict.deny(answer.reason or f"denied by plugin {name}", rule=answer.rule or f"plugin:{name}")
            else:
                if isinstance(answer, Failure):
                    if answer.check(TimeoutError):
                        what = f"plugin {name} did not answer within {self.hook_timeout:g}s"
                    else:
                        what = f"plugin {name} failed: {answer.getErrorMessage()}"
                        self.log.failure("policy plugin {plugin} raised", answer, plugin=name)
                else:
                    what = f"plugin {name} answered {type(answer).__name__}, not a Verdict"
                self.log.warn("policy check: {what}", what=what, plugin=name)
                self.metrics.plugin_error(name, "gateway_policy_check")
                candidate = Verdict.deny(what, rule=f"plugin:{name}")
            if denial is None:
                denial = candidate
        return denial or verdict

    # -- 3. transform, 4. archive, 5. deliver ------------------------------

    def _allowed(self, verdict, event, route):
        if not verdict.allowed:
            return self._reject(event, route, verdict, "policy")
        if self._transform_hooks:
            return then(self._transform(event, 0, event, ()), self._transformed, verdict, route)
        return self._accept(event, verdict, route)

    def _transformed(self, result, verdict, route):
        if isinstance(result, Rejection):
            # The event as its sender sent it is what is recorded as refused.
            return self._reject(result.event, route, Verdict.deny(result.reason, result.rule), result.code)
        event, original, names = result
        if not names:
            return self._accept(event, verdict, route)
        return self._accept(event, verdict, route, {"original": original, "transforms": names})

    def _accept(self, event, verdict, route, changes=None):
        """
        Archive, then deliver (durable) or deliver, then archive. ``changes``:
        when transforms changed the event, the event as sent and the names
        of the hooks that changed it, for the record.
        """
        extra = changes or _NO_CHANGES
        strict = self.fail_closed or self.policy.fail_closed(event, route, verdict)
        if (self.durable or strict) and event.kind in self.archive_kinds:
            # Durable before delivered: the row is in the database, or (unless
            # fail-closed, globally or for this rule or party) in the fsynced
            # spool, before anyone sees the event.
            d = self.archive.record(
                event, verdict, None,
                sender_identity=_id(route.sender), recipient_identity=_id(route.recipient),
                wait=True, strict=strict, **extra,
            )
            return d.addCallbacks(
                lambda _: then(self._deliver(event, route), self._delivered_durable, event),
                lambda f: self._archive_refused(f, event, route, strict),
            )
        return then(self._deliver(event, route), self._done, event, route, verdict, extra)

    def _transform(self, original, index, event, names):
        """
        Run the transform hooks from ``index`` on: ``(event, original,
        names of the hooks that changed it)``, a `Rejection` (returned, not
        raised) when one failed, timed out or returned garbage, or a
        Deferred of either when one answered with a Deferred.
        """
        hooks = self._transform_hooks
        while index < len(hooks):
            name, function, argnames = hooks[index]
            index += 1
            try:
                changed = function(event=event) if argnames else function()
            except Exception as e:
                self.log.failure("transform plugin {plugin} raised", plugin=name)
                self.metrics.plugin_error(name, "gateway_transform")
                return Rejection(f"plugin {name} failed to transform: {e}", "transform", f"plugin:{name}", original)
            if is_deferred(changed):
                changed.addTimeout(self.hook_timeout, self.clock)
                return changed.addCallbacks(
                    self._transform_answered, self._transform_failed,
                    callbackArgs=(name, original, index, event, names), errbackArgs=(name, original),
                )
            checked = self._checked(name, original, event, changed)
            if checked.__class__ is Rejection:
                return checked
            if checked is not event:
                event, names = checked, names + (name,)
        return event, original, names

    def _transform_answered(self, changed, name, original, index, event, names):
        checked = self._checked(name, original, event, changed)
        if checked.__class__ is Rejection:
            return checked
        if checked is not event:
            event, names = checked, names + (name,)
        return self._transform(original, index, event, names)

    def _transform_failed(self, failure, name, original):
        self.metrics.plugin_error(name, "gateway_transform")
        if failure.check(TimeoutError):
            why = f"plugin {name} did not transform within {self.hook_timeout:g}s"
            self.log.warn("transform: {why}", why=why)
        else:
            why = f"plugin {name} failed to transform: {failure.getErrorMessage()}"
            self.log.failure("transform plugin {plugin} failed", failure, plugin=name)
        return Rejection(why, "transform", f"plugin:{name}", original)

    def _checked(self, name, original, event, changed):
        """``changed`` made fit to deliver, ``event`` when None, or a `Rejection` when it is not a valid change."""
        if changed is None:
            return event
        if (
            type(changed) is not type(event)
            or changed.id != event.id
            or changed.sender != event.sender
            or changed.recipient != event.recipient
        ):
            self.metrics.plugin_error(name, "gateway_transform")
            return Rejection(
                f"plugin {name} returned an invalid event from gateway_transform",
                "transform",
                f"plugin:{name}",
                original,
            )
        if changed.__class__ in _RICH:
            changed = _renormalized(event, changed)
        return event if changed == event else changed

    def _archive_refused(self, failure, event, route=None, strict=True):
        reason = f"archive unavailable: {failure.getErrorMessage()}"
        if not strict and self.unrecorded == "deliver" and route is not None:
            # [archive] unrecorded = "deliver": the operator chose delivery over the record.
            self.log.critical("delivered {event_id} WITHOUT an archive row ({reason}): [archive] unrecorded = "
                              "\"deliver\"", event_id=event.id, reason=reason)
            self.metrics.unrecorded(event.kind)
            return then(self._deliver(event, route), self._observed, event)
        self.log.warn(
            "fail-closed: rejected {event_id}, the archive could not confirm: {reason}",
            event_id=event.id, reason=reason,
        )
        outcome = Outcome.rejected_(event.id, reason, "archive-unavailable")
        self._observe(event, outcome)
        return outcome

    def _observed(self, outcome, event):
        self._observe(event, outcome)
        return outcome

    def _delivered_durable(self, outcome, event):
        # The event row is durable already; note what became of it.
        if event.kind in self.archive_kinds:
            self.archive.record_delivery(event.id, outcome.status.value, self.node)
        self._observe(event, outcome)
        return outcome

    def _done(self, outcome, event, route, verdict, extra=None):
        self._record(event, verdict, outcome, route, extra)
        self._observe(event, outcome)
        return outcome

    def _deliver(self, event, route: Route):
        """Hand the event over; an `Outcome` or a Deferred of one."""
        cluster = self.cluster
        if cluster is not None and route.recipient is not None:
            return cluster.deliver(event, route, self._deliver_here)
        return self._deliver_here(event, route)

    def deliver_decided(self, event, elsewhere=False, session_id=None, skip=()) -> Deferred:
        """
        Deliver ``event``, which another node of the cluster decided and
        archived, to this node's sessions of its recipient (held offline
        when there are none), with no decision, hook or event row again;
        the archive gets this node's delivery note. ``elsewhere``: the
        recipient may be on a third node now (an entry taken over from a
        node that died): hand it on there too. ``session_id``: to that one
        session only (a presence for one watcher), dropped when it is gone.
        ``skip``: the ids of the recipient's sessions that have it already
        (it counts as delivered when they are all it has). Fires with the
        `Outcome`.
        """
        d = maybeDeferred(self.router.route, event)

        def routed(route):
            if session_id is not None:
                sessions = tuple(s for s in route.sessions if s.id == session_id)
                if not sessions:
                    return Outcome.rejected_(event.id, "the session has ended", "offline")
                return self._deliver_here(event, attrs.evolve(route, sessions=sessions))
            here = self._deliver_here
            if skip:
                route = attrs.evolve(route, sessions=tuple(s for s in route.sessions if s.id not in skip))
                here = self._deliver_here_unless_had
            if elsewhere and self.cluster is not None and route.recipient is not None:
                return self.cluster.deliver(event, route, here, skip)
            return here(event, route)

        def noted(outcome):
            if event.kind in self.archive_kinds:
                self.archive.record_delivery(event.id, outcome.status.value, self.node)
            return outcome

        return d.addCallback(routed).addCallback(noted)

    def _deliver_here_unless_had(self, event, route):
        # Some of the recipient's sessions had the event already: not held when they are all.
        if not route.sessions:
            return Outcome.delivered_(event.id)
        return self._deliver_here(event, route)

    def _deliver_here(self, event, route: Route):
        """To this node's sessions, a connector's peer, or held."""
        if route.sessions:
            return self._to_sessions(event, route, route.sessions)
        if route.direct:
            return self._to_remote(None, event, route)
        if route.connector is not None:
            return then(
                self._present(event, route.sender, route.target.network, route.connector),
                self._to_remote, event, route,
            )
        return self._hold(event, route)

    def _to_remote(self, sender, event, route):
        """To ``route.connector`` with no session: readdressed as from ``sender``, or as it is when direct."""
        translated = event if route.direct else _readdress(event, sender, route.target)
        try:
            result = route.connector.deliver(translated, None)
        except Exception:
            result = Failure()
        return self._handed(result, event, route, "cannot reach " + str(route.target))

    def _to_sessions(self, event, route, sessions):
        if len(sessions) == 1:  # the common case, without the bookkeeping below
            session = sessions[0]
            connector = self.router.connectors.get(session.connector)
            if connector is not None:
                presented = self._present(event, route.sender, session.address.network, connector)
                result = then(presented, self._to_session, event, session, connector)
                if result is None:
                    return Outcome.delivered_(event.id)
                if not is_deferred(result):
                    return self._hold(event, route, result)
                # A failed delivery arrives as its Failure: hold the message like the loop below does.
                return result.addBoth(lambda r: Outcome.delivered_(event.id) if r is None else self._hold(event, route, r))
        results = []
        presented = {}
        for session in sessions:
            connector = self.router.connectors.get(session.connector)
            if connector is None:
                continue
            network = session.address.network
            if network not in presented:
                presented[network] = self._present(event, route.sender, network, connector)
            results.append(then(presented[network], self._to_session, event, session, connector))
        if not results:
            return self._hold(event, route)
        if not any(is_deferred(r) for r in results):
            if any(r is None for r in results):
                return Outcome.delivered_(event.id)
            return self._hold(event, route, results[0])
        return _all(results).addCallback(self._sessions_done, event, route)

    def _sessions_done(self, results, event, route):
        failures = [value for ok, value in results if not ok or value is not None]
        if len(failures) < len(results):
            return Outcome.delivered_(event.id)
        return self._hold(event, route, failures[0])

    def _to_session(self, sender, event, session, connector):
        """None when handed over, else a Failure (never raises)."""
        try:
            result = connector.deliver(_readdress(event, sender, session.address), session)
        except Exception:
            return self._delivery_failed(Failure(), session)
        if is_deferred(result):
            return result.addCallbacks(lambda _: None, self._delivery_failed, errbackArgs=(session,))
        return None

    def _delivery_failed(self, failure, session):
        if failure.check(ConnectionError):
            # How a connector says its client is gone (IConnector.deliver): the
            # event is held or reported undelivered; no error of the gateway's.
            self.log.info("delivery to {session} failed: {why}", session=repr(session),
                          why=failure.getErrorMessage())
        else:
            self.log.failure("delivery to {session} failed", failure, session=repr(session))
        return failure

    def _handed(self, result, event, route, what):
        if is_deferred(result):
            return result.addCallbacks(
                lambda _: Outcome.delivered_(event.id),
                lambda f: Outcome.rejected_(event.id, f"{what}: {f.getErrorMessage()}", "delivery-failed"),
            )
        if isinstance(result, Failure):
            self.log.failure("delivery to {target} failed", result, target=str(route.target))
            return Outcome.rejected_(event.id, f"{what}: {result.getErrorMessage()}", "delivery-failed")
        return Outcome.delivered_(event.id)

    def _hold(self, event, route, failure=None):
        """The recipient is offline (or every session failed): queue messages, drop the rest."""
        if route.recipient is None:
            return Outcome.rejected_(event.id, "delivery failed", "delivery-failed")
        if isinstance(event, Message) and self.offline_enabled:
            d = self.offline.store(route.recipient.id, event)
            return d.addCallbacks(lambda _: Outcome.queued_(event.id), self._not_held, errbackArgs=(event,))
        return Outcome.rejected_(event.id, "recipient offline", "offline")

    def _not_held(self, failure, event):
        if failure.check(OfflineFull):
            return Outcome.rejected_(event.id, f"recipient offline and {failure.getErrorMessage()}", "offline-full")
        self.log.failure("offline store refused {event_id}", failure, event_id=event.id)
        return Outcome.rejected_(
            event.id, f"recipient offline and the offline store failed: {failure.getErrorMessage()}", "offline"
        )

    def _present(self, event, sender_identity, network, connector):
        """How the sender appears on ``network``: their own handle there, or a stable alias."""
        if sender_identity is not None:
            handle = sender_identity.handle_on(network)
            if handle is not None:
                return handle
        if event.sender.network == network:
            return event.sender
        return self.router.directory.alias_for(event.sender, network, connector.domain_for(network))

    # -- rejection, archive and observers ----------------------------------

    def _reject(self, event, route, verdict, code, hold=True):
        outcome = Outcome.rejected_(event.id, verdict.reason, code, verdict.rule)
        if hold and self._behind is not None and self._behind() and event.kind in self.archive_kinds:
            # The archive is far behind: the sender hears "rejected" only once
            # the row is durable, so a flood of refused traffic waits for the
            # writer instead of piling up in memory (back-pressure).
            d = self.archive.record(
                event, verdict, outcome,
                sender_identity=_id(route.sender) if route else None,
                recipient_identity=_id(route.recipient) if route else None,
                wait=True, strict=False,
            )
            self._observe(event, outcome)
            return d.addBoth(lambda _: outcome)
        self._record(event, verdict, outcome, route)
        self._observe(event, outcome)
        return outcome

    def _record(self, event, verdict, outcome, route, extra=None):
        if event.kind not in self.archive_kinds:
            return
        try:
            self.archive.record(
                event, verdict, outcome,
                sender_identity=_id(route.sender) if route else None,
                recipient_identity=_id(route.recipient) if route else None,
                **(extra or _NO_CHANGES),
            )
        except Exception:
            self.log.failure("archive refused event {event_id}", event_id=event.id)

    def _observe(self, event, outcome):
        self.metrics.event(event.kind, outcome)
        hooks = self._rejected_hooks if outcome.rejected else self._delivered_hooks
        hook_name = "gateway_rejected" if outcome.rejected else "gateway_delivered"
        for name, function, argnames in hooks:
            kwargs = {"event": event, "outcome": outcome}
            try:
                function(**{a: kwargs[a] for a in argnames})
            except Exception:
                self.log.failure("{hook} plugin {plugin} raised", hook=hook_name, plugin=name)
                self.metrics.plugin_error(name, hook_name)

    # -- presence and logins ----------------------------------------------

    def _broadcast(self, presence: Presence) -> Deferred:
        """Fan a presence change out to everyone who watches the sender."""
        if self.cluster is not None:
            self.cluster.presence_changed(presence.sender)
        d = then(self.router.identity(presence.sender), self._watchers, presence)
        if not is_deferred(d):
            d = succeed(d)
        return d.addErrback(self._internal_error, presence)

    def _watchers(self, identity, presence):
        if identity is None:
            return Outcome.rejected_(presence.id, f"no such user: {presence.sender}", "unknown-recipient")
        d = self.router.directory.watchers_of(identity.id)
        return d.addCallback(self._fan_out, presence, identity)

    def _fan_out(self, watcher_ids, presence, identity):
        def send(recipient, session=None):
            copy = Presence(
                sender=presence.sender,
                status=presence.status,
                note=presence.note,
                recipient=recipient,
                created=presence.created,
            )
            return self.submit(copy, only_session=session)

        sends = [send(session.address, session) for watcher in watcher_ids for session in self.sessions.live(watcher)]
        # Watchers outside the directory (a federated server's users) that connectors know of.
        for connector in self.router.connectors.values():
            foreign = getattr(connector, "foreign_watchers", None)
            if foreign is not None:
                for address in foreign(identity):
                    sends.append(send(address))
        if self.cluster is not None and watcher_ids:
            # Watchers online on other nodes: each copy decided here, then handed to its node.
            sends.append(self.cluster.remote_sessions(watcher_ids).addCallback(
                lambda remote: _all([send(s.address, s) for s in remote])))
        if not sends:
            return Outcome.delivered_(presence.id)
        return DeferredList(sends).addCallback(lambda _: Outcome.delivered_(presence.id))

    def session_started(self, session) -> Deferred:
        """Announce a new session: presence to watchers, contacts' presence to it, held messages."""
        self._observe_session(session, True)
        announce = self.submit(
            Presence(sender=session.address, status=session.status, note=session.note)
        )
        return DeferredList(
            [announce, self._snapshot(session), self.deliver_held(session)],
            consumeErrors=True,
        ).addCallback(lambda _: session)

    def session_ended(self, session) -> Deferred:
        self._observe_session(session, False)
        if self.sessions.online(session.identity.id):
            status, note = self.sessions.presence_of(session.identity.id)
        else:
            status, note = PresenceStatus.OFFLINE, ""
        return self.submit(Presence(sender=session.address, status=status, note=note))

    def _observe_session(self, session, online):
        for name, function, argnames in self.plugins.implementations("gateway_session_changed"):
            kwargs = {"session": session, "online": online}
            try:
                function(**{a: kwargs[a] for a in argnames})
            except Exception:
                self.log.failure("gateway_session_changed plugin {plugin} raised", plugin=name)
                self.metrics.plugin_error(name, "gateway_session_changed")

    def _snapshot(self, session):
        """Tell a new session who of its contacts is online, through the path (policy applies)."""
        d = self.router.directory.contacts(session.identity.id)

        def send(contacts):
            sends = []
            for contact in contacts:
                sends.append(then(self.router.identity(contact.address), self._contact_presence, contact, session))
            return _all(sends)

        return d.addCallback(send)

    def _contact_presence(self, identity, contact, session):
        if identity is None:
            return None
        here = self.sessions.presence_of(identity.id) if self.sessions.online(identity.id) else None
        if self.cluster is not None:
            # Online on other nodes too (or only): the most available of all.
            d = self.cluster.presence_of(identity.id)
            return d.addCallback(lambda there: self._tell_presence(_best(here, there), contact, session))
        return self._tell_presence(here, contact, session)

    def _tell_presence(self, presence, contact, session):
        if presence is None:
            return None
        status, note = presence
        return self.submit(
            Presence(sender=contact.address, status=status, note=note, recipient=session.address),
            only_session=session,
        )

    def deliver_held(self, session) -> Deferred:
        """Deliver the messages held for this person to ``session``, each exactly once."""
        identity_id = session.identity.id
        if not self.offline_enabled or identity_id in self._draining:
            return succeed(0)
        self._draining.add(identity_id)
        connector = self.router.connectors.get(session.connector)

        def deliver(events):
            steps = [
                then(self.router.identity(event.sender), self._held_one, event, session, connector)
                for event in events
            ]
            return _all(steps)

        def forget(results):
            delivered = [value for ok, value in results if ok and value]
            if delivered:
                for event_id in delivered:
                    self.archive.record_delivery(event_id, "delivered", self.node)
                return self.offline.remove(identity_id, delivered).addCallback(lambda _: len(delivered))
            return 0

        def done(result):
            self._draining.discard(identity_id)
            return result

        d = self.offline.pending(identity_id).addCallback(deliver).addCallback(forget)
        d.addErrback(lambda f: self.log.failure("delivering held messages for {who} failed", f, who=identity_id))
        return d.addBoth(done)

    def _held_one(self, sender_identity, event, session, connector):
        presented = self._present(event, sender_identity, session.address.network, connector)
        return then(presented, self._held_deliver, event, session, connector)

    def _held_deliver(self, sender, event, session, connector):
        result = self._to_session(sender, event, session, connector)
        if is_deferred(result):
            return result.addCallback(lambda r: event.id if r is None else None)
        return event.id if result is None else None


_RICH = (Message, Profile)
_NO_CHANGES = {}
_RECORDED = Verdict.allow(reason="recorded")
_ACCESS_OUTCOME = Outcome.delivered_("")


def _normalized(event):
    """``event`` with its rich part sanitized and its text derived from it (`gateway.path.content`)."""
    text, html = normalize(event.text, event.html)
    if text == event.text and html == event.html:
        return event
    return attrs.evolve(event, text=text, html=html)


def _renormalized(before, after):
    """
    What a transform returned, with every rendering made from what it
    changed: new rich text is sanitized and the text derived from it; new
    plain text beside untouched rich text replaces the rich text, so a
    redaction or a disclaimer reaches every recipient.
    """
    if after.html is not None and after.html != before.html:
        return _normalized(after)
    if after.html is not None and after.text != before.text:
        return attrs.evolve(after, html=html_of(after.text))
    return after


class _Capture:
    """The ``through`` of `Bus.disclose`: keeps the event the path would deliver."""

    event = None

    def deliver(self, event, session):
        self.event = event


def _all(results):
    """A DeferredList over values and Deferreds alike; failures arrive as (False, Failure)."""
    return DeferredList(
        [r if is_deferred(r) else succeed(r) for r in results], consumeErrors=True
    )


def _best(a, b):
    """The more available of two (status, note), either of which may be None."""
    if a is None or (b is not None and more_available(b[0], a[0])):
        return b
    return a


def _id(identity):
    return None if identity is None else identity.id


def _readdress(event, sender, recipient):
    if event.sender == sender and event.recipient == recipient:
        return event
    return attrs.evolve(event, sender=sender, recipient=recipient)
