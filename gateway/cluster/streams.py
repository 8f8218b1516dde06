"""
The cluster's cross-node path: events decided on one node, delivered on another.

The path runs once, on the node where an event entered: policy, hooks and
the archive there. When the recipient is online on other nodes (the
registry says where), the event is added to each such node's stream,
``gw:node:{NAME}:stream`` (a Redis Stream with the consumer group
``deliver``), and the sender is answered ``delivered`` once Redis has it.
The receiving node reads its stream, delivers to its own sessions of the
recipient without deciding again (or holds the message offline when they
have gone meanwhile), notes the delivery in the archive, marks the event
``gw:event:{ID}:done:NODE`` (kept a day) and only then acknowledges and
deletes the entry. An entry read again (its node died before the
acknowledgement, or Redis gave it twice) whose mark is there is not
delivered again; an entry whose delivery failed is not acknowledged, and
is read and tried again. Each entry names the recipient's sessions that
got the event elsewhere already (``skip``), so that taking over a dead
node's stream does not give it to them twice.

Every entry is signed: ``s``, an HMAC-SHA256 of its JSON ``m`` under the
cluster's shared secret (``[cluster] secret_file``, the same on every
node), and names when it was handed over (``t``). A node delivers only an
entry whose signature holds and which is at most ``DONE_TTL`` old (an older
one could repeat an event whose mark has expired): anyone who can write to
Redis but does not hold the secret cannot put an event past the policy and
the archive of the node it claims to come from. A refused entry is
acknowledged, logged as critical and counted (``refused``), never
delivered.

When a node stops beating, the others take over its stream: at each beat
a node claims what is pending there (entries read by the dead node but not
acknowledged, idle for ``CLAIM_IDLE`` seconds) and what was never read,
and delivers each where the person is online now: here, on a third node
(handed on), or held offline, so nothing the cluster accepted is lost.

While Redis is unreachable, a node delivers to its own sessions and holds
messages for people online elsewhere as offline messages (delivered at
their next login); a hand-off that fails is held the same way.
"""

from __future__ import annotations

import hmac
import json
from typing import NamedTuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.cluster.redis import RedisClient, RedisError
from gateway.cluster.secret import sign
from gateway.cluster.registry import DRAINING
from gateway.model import Address, Outcome, Presence, PresenceStatus, event_from_dict, event_to_dict
from gateway.path.router import then
from gateway.path.sessions import RemoteSession, more_available

__all__ = ["Relay", "GROUP"]

GROUP = "deliver"
# Entries read in one go.
BATCH = 200
# How long a reader may hold an entry before another node may claim it (a dead node's).
CLAIM_IDLE = 5.0
# How long a delivered event's mark is kept (entries older than that are not expected again).
DONE_TTL = 86_400


class Relay(service.Service):
    """Hands events to other nodes' streams and delivers what arrives on this node's own."""

    name = "cluster-relay"
    log = Logger()

    def __init__(self, reactor, url, registry, bus, secret, *, block=1.0, claim_idle=CLAIM_IDLE):
        self.reactor = reactor
        self.secret = secret
        self.claim_idle = claim_idle
        self.registry = registry
        self.bus = bus
        self.node = registry.node
        self.keys = registry.keys
        self.block = block
        self.stream = self.stream_of(self.node)
        self.handed = self.received = self.duplicates = self.claimed = self.refused = 0
        self._reading = None
        self._draining = set()
        # Its own connection: a blocking read must not hold up the registry's commands.
        self.reader = RedisClient(reactor, url, name=f"cluster {self.node} (stream)")

    def stream_of(self, node):
        return self.keys.stream(node)

    def done_key(self, event_id, owner):
        return f"{self.keys.prefix}:event:{{{event_id}}}:done:{owner}"

    # -- sending ------------------------------------------------------------------------

    def deliver(self, event, route, here, skip=()):
        """
        The bus's delivery of ``event`` in a cluster: ``here(event, route)``
        for this node's sessions, and a hand-off to every other node where
        the recipient is online. ``skip``: ids of the recipient's sessions
        that have the event already (an entry taken over from a dead node
        whose sender's node had delivered it to some). An `Outcome` or a
        Deferred of one.
        """
        remote = route.remote
        if remote is not None:  # to one session on another node (a presence for a watcher there)
            d = self.handoff(remote.node, event, remote.id)
            return d.addCallback(lambda ok: Outcome.delivered_(event.id) if ok else Outcome.rejected_(
                event.id, f"node {remote.node} could not be reached", "delivery-failed"))
        nodes = self.registry.where(route.recipient.id)
        return nodes.addCallbacks(self._placed, self._unplaced, (event, route, here, skip), None,
                                  (event, route, here))

    def _unplaced(self, failure, event, route, here):
        # Redis unreachable: this node's sessions, or held offline.
        return here(event, route)

    def _placed(self, sessions, event, route, here, skip=()):
        # Not to a node known to be gone: its stream is being taken over (an entry handed to it again
        # would be taken for one it delivered already); nor to one whose sessions have it already.
        others = sorted({s["node"] for s in sessions if s["session"] not in skip} - {self.node} - self.registry.down)
        if not others:
            return here(event, route)
        # Every entry names the sessions that get the event elsewhere (here, and before): should the node
        # it goes to die before acknowledging it, whoever takes it over does not give it to them again.
        skip = tuple(skip) + tuple(s.id for s in route.sessions)
        handed = [self.handoff(node, event, skip=skip) for node in others]
        local = here(event, route) if route.sessions else None
        d = defer.gatherResults(handed, consumeErrors=True)

        def combined(results):
            if any(results):
                if local is not None:
                    return then(local, lambda _: Outcome.delivered_(event.id))
                return Outcome.delivered_(event.id)
            # No node took it: this node's answer (its sessions, or held offline).
            return local if local is not None else here(event, route)

        return d.addCallback(combined)

    def handoff(self, node, event, session_id=None, skip=()):
        """
        Add ``event`` to ``node``'s stream (for one session of the
        recipient there: ``session_id``; not for the sessions in ``skip``,
        which have it); fires True once Redis has it, False when it could
        not.
        """
        entry = {"e": event_to_dict(event), "from": self.node, "to": node, "t": self.reactor.seconds()}
        if session_id is not None:
            entry["sid"] = session_id
        if skip:
            entry["skip"] = list(skip)
        entry = json.dumps(entry, separators=(",", ":")).encode("utf-8")
        d = self.registry.client.execute("XADD", self.stream_of(node), "*", "m", entry, "s", sign(self.secret, entry))

        def added(_):
            self.handed += 1
            return True

        def failed(failure):
            self.log.warn("cluster: could not hand event {event_id} to node {node}: {error}; holding it here",
                          event_id=event.id, node=node, error=failure.getErrorMessage())
            return False

        return d.addCallbacks(added, failed)

    # -- presence -----------------------------------------------------------------------

    def remote_sessions(self, identity_ids):
        """Fire with the `RemoteSession` of each of these people on other nodes (none while Redis is away)."""
        d = defer.gatherResults([self.registry.where(i) for i in identity_ids], consumeErrors=True)

        def found(answers):
            return [RemoteSession(s["node"], s["session"], Address.parse(s["address"]),
                                  PresenceStatus(s.get("status", "available")), s.get("note", ""))
                    for sessions in answers for s in sessions
                    if s["node"] != self.node and s["node"] not in self.registry.down]

        return d.addCallbacks(found, lambda f: [])

    def presence_of(self, identity_id):
        """Fire with the (status, note) a person shows on other nodes, or None when online on none."""
        d = self.remote_sessions([identity_id])

        def best(sessions):
            top = None
            for session in sessions:
                if top is None or more_available(session.status, top.status):
                    top = session
            return None if top is None else (top.status, top.note)

        return d.addCallback(best)

    def gone(self, identity_id, address):
        """
        A dead node took this person's sessions along: unless they are
        online elsewhere still, their watchers are told they are offline,
        through the path here, as a logout would.
        """
        if self.bus.sessions.online(identity_id):
            return None
        d = self.remote_sessions([identity_id])

        def tell(sessions):
            if not sessions:
                return self.bus.submit(Presence(sender=Address.parse(address), status=PresenceStatus.OFFLINE))

        return d.addCallback(tell)

    def presence_changed(self, address):
        """A person's presence changed on this node: the registry gets their sessions' status and note."""
        sessions = self.bus.sessions.by_address(address)
        if sessions:
            identity_id = sessions[0].identity.id
            self.registry.republish(identity_id, self.bus.sessions.live(identity_id))

    # -- receiving ----------------------------------------------------------------------

    def startService(self):
        super().startService()
        self.reader.start()
        self._reading = self._read()

    def stopService(self):
        super().stopService()
        d = self._reading if self._reading is not None else defer.succeed(None)
        # The blocking read ends within ``block``; then the reader closes.
        return d.addBoth(lambda _: self.reader.stop())

    @defer.inlineCallbacks
    def _read(self):
        """Read this node's stream: first what an earlier run left unacknowledged, then what is new."""
        backlog, grouped = True, False
        while self.running:
            if not self.reader.connected:
                yield task.deferLater(self.reactor, 0.2, lambda: None)
                continue
            try:
                if not grouped:
                    # Once, and again after an error (a Redis that restarted empty has no group).
                    yield self._ensure_group(self.reader, self.stream)
                    grouped = True
                reply = yield self.reader.execute("XREADGROUP", "GROUP", GROUP, self.node, "COUNT", BATCH, "BLOCK",
                                                  int(self.block * 1000), "STREAMS", self.stream,
                                                  "0" if backlog else ">")
                entries = self._entries(reply, self.node)
                if backlog and not entries:
                    backlog = False
                    continue
                if entries and (yield self._process(self.reader, self.stream, entries, self.node)):
                    # Some could not be delivered: this node's unacknowledged entries again, in a while.
                    backlog = True
                    yield task.deferLater(self.reactor, 1.0, lambda: None)
            except Exception as e:
                grouped = False
                if self.running:
                    self.log.warn("cluster: reading the stream of {node} failed: {error}", node=self.node, error=str(e))
                    yield task.deferLater(self.reactor, 0.5, lambda: None)

    def _ensure_group(self, client, stream):
        d = client.execute("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
        return d.addErrback(lambda f: f.trap(RedisError) and None)  # BUSYGROUP: it exists

    @defer.inlineCallbacks
    def _process(self, client, stream, entries, owner):
        """Deliver ``entries`` of ``owner``'s stream (not again when marked done), then acknowledge them."""
        marks = yield client.pipeline([("EXISTS", self.done_key(entry.event_id, owner)) for entry in entries])
        # Entries of a dead node, or this node's own while it drains: delivered where the person is now.
        elsewhere = owner != self.node or self.registry.state == DRAINING
        pending = []
        for entry, done in zip(entries, marks):
            if entry.event is None:
                continue
            if done:
                self.duplicates += 1
                continue
            # A presence for one session whose node died is not followed elsewhere: the watcher
            # gets the person's presence anew when it logs in again.
            if entry.session_id is not None and elsewhere:
                continue
            pending.append((entry, defer.maybeDeferred(
                self.bus.deliver_decided, entry.event, elsewhere, entry.session_id, entry.skip)))
        failed = set()
        for entry, d in pending:
            try:
                yield d
            except Exception:
                # Not acknowledged: read again (this node's own backlog, or claimed again) and retried.
                self.log.failure("cluster: delivering event {event_id} failed; it is tried again",
                                 event_id=entry.event_id)
                failed.add(entry.entry_id)
                continue
            self.received += 1
        ids = [entry.entry_id for entry in entries if entry.entry_id not in failed]
        commands = [("SET", self.done_key(entry.event_id, owner), "1", "EX", DONE_TTL) for entry, _ in pending
                    if entry.entry_id not in failed]
        if ids:
            commands += [("XACK", stream, GROUP, *ids), ("XDEL", stream, *ids)]
        yield client.pipeline(commands)
        return bool(failed)

    # -- a dead node's stream -----------------------------------------------------------

    @defer.inlineCallbacks
    def take_over(self, node):
        """Deliver what waits in the stream of ``node`` (down or stopped): its pending and its unread entries."""
        if node in self._draining or node == self.node or not self.registry.client.connected:
            return
        self._draining.add(node)
        client, stream = self.registry.client, self.stream_of(node)
        try:
            if not (yield client.execute("XLEN", stream)):
                return
            yield self._ensure_group(client, stream)
            while True:
                reply = yield client.execute("XAUTOCLAIM", stream, GROUP, self.node, int(self.claim_idle * 1000), "0-0",
                                             "COUNT", BATCH)
                entries = self._parse(reply[1], node) if reply else []
                if not entries:
                    break
                self.claimed += len(entries)
                yield self._process(client, stream, entries, node)
            while True:
                reply = yield client.execute("XREADGROUP", "GROUP", GROUP, self.node, "COUNT", BATCH,
                                             "STREAMS", stream, ">")
                entries = self._entries(reply, node)
                if not entries:
                    break
                self.claimed += len(entries)
                yield self._process(client, stream, entries, node)
        except Exception as e:
            self.log.warn("cluster: taking over the stream of {dead} failed: {error}", dead=node, error=str(e))
        finally:
            self._draining.discard(node)

    # -- entries --------------------------------------------------------------------------

    def _entries(self, reply, owner):
        """The entries of an XREADGROUP reply on ``owner``'s stream (none on a time-out)."""
        if not reply:
            return []
        return self._parse(reply[0][1], owner)

    def _parse(self, raw, owner):
        """
        The `_Entry` of each raw entry of ``owner``'s stream; its event None
        when the entry is not one, is not signed with the cluster's secret,
        was meant for another node's stream, or is too old to be told from
        one delivered already.
        """
        out = []
        now = self.reactor.seconds()

        def refuse(entry_id, event_id, why, /, **fields):  # (the log's fields may name an entry or event too)
            self.refused += 1
            self.log.critical("cluster: " + why + "; refused, not delivered", **fields)
            out.append(_Entry(entry_id, event_id, None, None, ()))

        for item in raw:
            if not item or item[1] is None:
                continue  # deleted meanwhile
            entry_id, fields = item[0], item[1]
            values = {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}
            message, signature = values.get(b"m"), values.get(b"s")
            if message is None or signature is None or not hmac.compare_digest(
                    sign(self.secret, message).encode("ascii"), signature):
                refuse(entry_id, "", "an entry of stream {stream} is not signed with this cluster's secret (another "
                       "cluster's node, a node with another secret_file, or someone writing to Redis): {entry!r}",
                       stream=self.stream_of(owner), entry=item)
                continue
            try:
                data = json.loads(message)
                event = event_from_dict(data["e"])
                handed = float(data["t"])
            except Exception:
                self.log.warn("cluster: an entry of a stream is not an event; dropped: {entry!r}", entry=item)
                out.append(_Entry(entry_id, "", None, None, ()))
                continue
            if data.get("to") != owner:
                refuse(entry_id, event.id, "entry for event {event_id} in the stream of {owner} was signed for {to}'s",
                       event_id=event.id, owner=owner, to=data.get("to"))
            elif now - handed > DONE_TTL:
                refuse(entry_id, event.id, "entry for event {event_id} was handed over {age:.0f} s ago, longer than a "
                       "delivery is remembered", event_id=event.id, age=now - handed)
            else:
                out.append(_Entry(entry_id, event.id, event, data.get("sid"), tuple(data.get("skip", ()))))
        return out


class _Entry(NamedTuple):
    entry_id: bytes
    event_id: str
    event: object  # None: the entry is not an event
    session_id: object  # for one session only (a presence to a watcher)
    skip: tuple  # sessions that have the event already


