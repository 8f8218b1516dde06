"""
The cluster's registry in Redis: which nodes run, with what load, and
where each person is online.

With ``[cluster] redis = "redis://..."`` each node keeps these keys (all
under ``[cluster] prefix``, ``gw`` by default)::

    gw:nodes                     set    the names of every node that ever registered
    gw:node:{NAME}               hash   state, listeners (JSON), capacity, sessions, load, started, beat, key
    gw:node:{NAME}:alive         string the node's last beat; expires ``heartbeat`` seconds after it
    gw:node:{NAME}:sessions      set    "PERSON SESSION" of each session the node published
    gw:node:{NAME}:reaper        string who removes a dead node's sessions (set once, expires)
    gw:person:{ID}               hash   session id -> JSON (node, network, address, connector, started)
    gw:ticket:CONNECTOR:{KEY}    string a login's ticket for its next connection (signed; taken once; expires)

and publishes the id of each person whose sessions changed on the channel
``gw:changed``. Every command names one key, and a node's keys share the
hash tag ``{NAME}`` (a person's, ``{ID}``): the layout works on Redis
Cluster as it does on one Redis, with no command that spans two slots.

A node beats every third of ``heartbeat``: its alive key again, its load.
At each beat it also looks for nodes whose alive key expired (kill -9,
power lost, cut off): the first node to claim one (``SET NX`` of its
reaper key) removes that node's sessions from the people's keys, tells
the channel, and marks it ``down``. A node that stops cleanly removes its
own and says ``stopped``. Redis unreachable: the node keeps serving its
own users; beats fail (logged once) and, connected again, the node writes
all of its sessions and its state anew, as another node may have reaped
it meanwhile.

Look-ups (`where`) are cached per person and the cache entry dropped when
the channel names that person (the whole cache when the subscriber
connection was lost, as it may have missed some).
"""

from __future__ import annotations

import hmac
import json
import secrets

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.cluster.redis import RedisClient
from gateway.cluster.secret import key_id, sign
from gateway.hookspecs import hookimpl

__all__ = ["NodeRegistry", "Keys", "node_states"]

UP, DOWN, STOPPED, DRAINING = "up", "down", "stopped", "draining"


class Keys:
    """The key names under one ``prefix``."""

    def __init__(self, prefix="gw"):
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"
        self.changed = f"{prefix}:changed"

    def node(self, name):
        return f"{self.prefix}:node:{{{name}}}"

    def alive(self, name):
        return f"{self.prefix}:node:{{{name}}}:alive"

    def node_sessions(self, name):
        return f"{self.prefix}:node:{{{name}}}:sessions"

    def reaper(self, name):
        return f"{self.prefix}:node:{{{name}}}:reaper"

    def person(self, identity_id):
        return f"{self.prefix}:person:{{{identity_id}}}"

    def stream(self, name):
        return f"{self.prefix}:node:{{{name}}}:stream"

    def ticket(self, connector, key):
        return f"{self.prefix}:ticket:{connector}:{{{key}}}"


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _member(entry):
    """A member of a node's sessions set, ``"PERSON SESSION"``: (person, session) (a session id has no space)."""
    person, _, session = _text(entry).rpartition(" ")
    return person, session


def _hash(reply) -> dict:
    """A HGETALL reply as a dict of text."""
    return {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply or ()), 2)}


class NodeRegistry(service.Service):
    """
    This node in the registry, and the registry's answers for the path.
    A built-in hook plugin too: ``gateway_session_changed`` publishes the
    node's sessions.
    """

    name = "cluster-registry"
    log = Logger()

    def __init__(self, reactor, url, node, *, heartbeat=3.0, capacity=0, prefix="gw", listeners=None, clock=None,
                 advertise="", secret=None):
        self.reactor = reactor
        # The cluster's secret: login tickets in Redis are signed with it (None: this node shares none).
        self.secret = secret
        # The name of the secret, published: a peer naming another is told in the log.
        self.key_id = key_id(secret) if secret is not None else ""
        self._other_keys = {}  # node -> the key id it was last seen with, when not this node's
        self.clock = clock or reactor  # the beats' time (connections are the reactor's)
        self.node = node
        self.heartbeat = heartbeat
        self.capacity = capacity
        self.keys = Keys(prefix)
        self.listeners = listeners or (lambda: {})
        self.state = UP
        self.started = self.clock.seconds()
        self.beats = 0
        self.reaped = []  # names of nodes this one found dead and cleaned up
        self.down = set()  # nodes whose beats stopped, as this one last looked
        self.peers = {}  # the other live nodes' hashes (state, sessions, capacity, listeners...), as last read
        self.advertise = advertise
        # Called with the name of each node that is down or stopped, at every beat (the relay's
        # `gateway.cluster.streams.Relay.take_over`: what waits in that node's stream).
        self.take_over = None
        # Called with (person, address) for each person whose sessions a dead node took along
        # (the relay's `gateway.cluster.streams.Relay.gone`: their watchers are told).
        self.gone = None
        # Called when the node starts draining: ends the sessions whose connectors can (how many).
        self.on_drain = None
        self._published = {}  # session id -> (identity id, field JSON): written again after an outage
        self._cache = {}
        self._changes = 0  # changes told by the channel so far
        self._beating = None
        self._in_flight = None
        self.client = RedisClient(reactor, url, on_connect=self._connected, name=f"cluster {node}")
        self.subscriber = RedisClient(reactor, url, on_message=self._changed, channels=[self.keys.changed],
                                      on_connect=self._subscribed, name=f"cluster {node} (subscriber)")

    # -- the node's own state -----------------------------------------------------------

    def startService(self):
        super().startService()
        self.client.start()
        self.subscriber.start()
        self._beating = task.LoopingCall(self._tick)
        self._beating.clock = self.clock
        self._beating.start(self.heartbeat / 3, now=False)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._beating is not None and self._beating.running:
            self._beating.stop()
        if self.client.connected:
            try:
                yield self._withdraw()
            except Exception as e:
                self.log.warn("cluster: could not withdraw node {node} from Redis: {error}", node=self.node,
                              error=str(e))
        yield self.client.stop()
        yield self.subscriber.stop()

    def _load(self):
        count = len(self._published)
        return count, (count / self.capacity if self.capacity else 0.0)

    def _state_commands(self):
        keys, name, now = self.keys, self.node, self.clock.seconds()
        count, load = self._load()
        return [
            ("SET", keys.alive(name), repr(now), "PX", int(self.heartbeat * 1000)),
            ("HSET", keys.node(name), "name", name, "state", self.state, "sessions", count,
             "capacity", self.capacity, "load", f"{load:.4f}", "beat", repr(now), "started", repr(self.started),
             "listeners", json.dumps(self.listeners(), sort_keys=True), "advertise", self.advertise, "key", self.key_id),
            ("SADD", keys.nodes, name),
        ]

    def _connected(self, proto):
        """A new connection: the node's state and every session it has, written anew."""
        commands = self._state_commands()
        commands.append(("DEL", self.keys.node_sessions(self.node)))
        changed = set()
        for sid, (person, field) in self._published.items():
            commands.append(("HSET", self.keys.person(person), sid, field))
            commands.append(("SADD", self.keys.node_sessions(self.node), f"{person} {sid}"))
            changed.add(person)
        for person in sorted(changed):
            commands.append(("PUBLISH", self.keys.changed, person))
        return proto.pipeline(commands)

    def _subscribed(self, proto):
        self._changes += 1
        self._cache.clear()  # what was said while the subscriber was away is unknown
        return None

    def _beaten_back(self, replies):
        if _text(replies[0]) == DOWN:
            # Taken for dead (this node did not beat for ``heartbeat`` seconds: a stall, a cut): another
            # node removed its sessions from the registry. They are written again.
            self.log.warn("cluster: node {node} was taken for dead by another; writing its sessions again",
                          node=self.node)
            d = self._connected(self.client)
            return d.addCallback(lambda _: self._wanted(_text(replies[-1])))
        return self._wanted(_text(replies[-1]))

    def _tick(self):
        # On time, whatever Redis takes: a beat still waiting for its
        # answers makes this one wait its turn, not pile up behind it.
        if self._in_flight is None:
            self._in_flight = self.beat()
            self._in_flight.addBoth(self._beaten)

    def _beaten(self, _):
        self._in_flight = None

    def beat(self):
        """Say this node is alive; look for nodes that are not. A Deferred (for tests)."""
        if not self.client.connected:
            return defer.succeed(None)
        self.beats += 1
        node = self.keys.node(self.node)
        commands = [("HGET", node, "state")] + self._state_commands() + [("HGET", node, "wanted")]
        d = self.client.pipeline(commands)
        d.addCallback(self._beaten_back)
        d.addCallback(lambda _: self._look_for_dead())
        d.addErrback(lambda f: self.log.warn("cluster: heartbeat of {node} failed: {error}", node=self.node,
                                             error=f.getErrorMessage()))
        return d

    # -- draining -----------------------------------------------------------------------

    def admission(self):
        """
        Whether this node takes new connections now: None when it does,
        else ``(reason, text)`` (its listeners refuse them so, in each
        protocol's terms).
        """
        if self.state == DRAINING:
            return ("node-draining", "this node is being drained; connect to another")
        if self.capacity and len(self._published) >= self.capacity:
            return ("node-full", f"this node has its {self.capacity} sessions; connect to another")
        return None

    def placement(self, connector):
        """
        Where a new login on ``connector`` should go: None for this node,
        else ``host:port`` of that connector's listener on the least-loaded
        live node with room, when this node is full or draining, or that
        node has at least two sessions fewer (so that equal nodes do not
        send clients back and forth).
        """
        here = self.admission() is None
        mine = len(self._published)
        best = None
        for name, info in self.peers.items():
            if name in self.down or info.get("state") != UP:
                continue
            sessions, capacity = int(info.get("sessions") or 0), int(info.get("capacity") or 0)
            if capacity and sessions >= capacity:
                continue
            address = _address(json.loads(info.get("listeners") or "{}").get(connector), info.get("advertise"))
            if address is None:
                continue
            load = sessions / capacity if capacity else 0.0
            if best is None or (load, sessions, name) < best[0]:
                best = ((load, sessions, name), address)
        if best is None:
            return None
        if here and best[0][1] > mine - 2:
            return None
        return best[1]

    def _wanted(self, wanted):
        """What the operator asked for (``gatewayctl node drain|undrain``), read at each beat."""
        if wanted == DRAINING and self.state != DRAINING:
            self.drain()
        elif wanted == UP and self.state == DRAINING:
            self.state = UP
            self.log.info("cluster: node {node} takes new logins again", node=self.node)
            return self.client.execute("HSET", self.keys.node(self.node), "state", UP)

    def drain(self):
        """
        Take no new connections, and ask every session's connector to end
        it so that its client connects to another node (``on_drain``).
        """
        self.state = DRAINING
        moved = self.on_drain() if self.on_drain is not None else 0
        self.log.warn("cluster: node {node} is draining: new connections refused, {moved} of {count} sessions "
                      "asked to move", node=self.node, moved=moved, count=len(self._published))
        if self.client.connected:
            return self.client.execute("HSET", self.keys.node(self.node), "state", DRAINING)

    @defer.inlineCallbacks
    def _withdraw(self):
        keys, name = self.keys, self.node
        commands = [("HDEL", keys.person(person), sid) for sid, (person, _) in self._published.items()]
        commands += [("PUBLISH", keys.changed, person) for person in {p for p, _ in self._published.values()}]
        commands += [("DEL", keys.node_sessions(name)), ("DEL", keys.alive(name)),
                     ("HSET", keys.node(name), "state", STOPPED, "sessions", 0, "load", "0.0000")]
        yield self.client.pipeline(commands)

    # -- other nodes --------------------------------------------------------------------

    @defer.inlineCallbacks
    def _look_for_dead(self):
        keys, execute = self.keys, self.client.execute
        names = [n for n in map(_text, (yield execute("SMEMBERS", keys.nodes))) if n != self.node]
        # Each node's alive key and hash, in one round trip.
        replies = yield self.client.pipeline([c for name in names for c in (("EXISTS", keys.alive(name)),
                                                                             ("HGETALL", keys.node(name)))])
        peers = {}
        for i, name in enumerate(names):
            info = _hash(replies[2 * i + 1])
            if replies[2 * i]:
                self.down.discard(name)
                peers[name] = info
                self._check_key(name, info.get("key", ""))
                continue
            self.down.add(name)
            if info.get("state") in (DOWN, STOPPED):
                if self.take_over is not None:
                    # Not waited for: this node's own beats must go on meanwhile.
                    self.take_over(name)
                continue
            # One node cleans up: the first to claim it.
            claimed = yield execute("SET", keys.reaper(name), self.node, "NX", "PX",
                                    int(max(10.0, 3 * self.heartbeat) * 1000))
            if claimed is None:
                continue
            yield self._reap(name)
            if self.take_over is not None:
                self.take_over(name)
        self.peers = peers

    def _check_key(self, name, key):
        """A live peer signs with another secret: what it hands this node is refused; said once per change."""
        if key == self.key_id:
            self._other_keys.pop(name, None)
        elif self._other_keys.get(name) != key:
            self._other_keys[name] = key
            self.log.critical("cluster: node {peer} signs with another secret (key {theirs}, this node's {ours}): "
                              "the events it hands this node are refused, and this node's are refused there; "
                              "give every node the same [cluster] secret_file", peer=name, theirs=key or "none",
                              ours=self.key_id)

    @defer.inlineCallbacks
    def _reap(self, name):
        keys, execute = self.keys, self.client.execute
        split = [_member(entry) for entry in (yield execute("SMEMBERS", keys.node_sessions(name)))]
        fields = yield self.client.pipeline([("HGET", keys.person(person), sid) for person, sid in split])
        people = set()
        commands = []
        gone = {}  # person -> an address of theirs the dead node served
        for (person, sid), field in zip(split, fields):
            commands.append(("HDEL", keys.person(person), sid))
            people.add(person)
            if field is not None:
                gone.setdefault(person, json.loads(field)["address"])
        commands += [("PUBLISH", keys.changed, person) for person in sorted(people)]
        commands += [("DEL", keys.node_sessions(name)),
                     ("HSET", keys.node(name), "state", DOWN, "sessions", 0, "load", "0.0000")]
        for person in people:
            self._cache.pop(person, None)  # at once: taking over the node's stream looks them up next
        yield self.client.pipeline(commands)
        self.reaped.append(name)
        self.log.warn("cluster: node {dead} stopped beating; {count} of its sessions removed by {node}",
                      dead=name, count=len(split), node=self.node)
        if self.gone is not None:
            for person, address in sorted(gone.items()):
                self.gone(person, address)

    # -- sessions -----------------------------------------------------------------------

    @hookimpl
    def gateway_session_changed(self, session, online):
        person, sid = session.identity.id, session.id
        keys = self.keys
        if online:
            field = self._field(session)
            self._published[sid] = (person, field)
            commands = [("HSET", keys.person(person), sid, field),
                        ("SADD", keys.node_sessions(self.node), f"{person} {sid}")]
        else:
            if self._published.pop(sid, None) is None:
                return
            commands = [("HDEL", keys.person(person), sid),
                        ("SREM", keys.node_sessions(self.node), f"{person} {sid}")]
        commands.append(("PUBLISH", keys.changed, person))
        self._cache.pop(person, None)
        self._tell(commands)

    def _tell(self, commands):
        # Not waited for: a session does not wait for Redis. Lost with the
        # connection, the state is written whole again when it returns.
        self.client.pipeline(commands).addErrback(lambda f: None)

    def _field(self, session):
        return json.dumps({"node": self.node, "network": session.address.network, "address": str(session.address),
                           "connector": session.connector, "started": session.started,
                           "status": session.status.value, "note": session.note}, sort_keys=True)

    def republish(self, identity_id, sessions):
        """This node's ``sessions`` of a person whose presence changed: their status and note, anew."""
        keys, commands = self.keys, []
        for session in sessions:
            if session.id in self._published:
                field = self._field(session)
                if self._published[session.id][1] == field:
                    continue
                self._published[session.id] = (identity_id, field)
                commands.append(("HSET", keys.person(identity_id), session.id, field))
        if not commands:
            return
        commands.append(("PUBLISH", keys.changed, identity_id))
        self._cache.pop(identity_id, None)
        self._tell(commands)

    def _changed(self, channel, data):
        self._changes += 1
        self._cache.pop(_text(data), None)

    def where(self, identity_id):
        """
        Fire with the person's sessions on every node, as dicts (node,
        network, address, connector, started, status, note, session); cached until the
        registry says the person changed. Fails with `RedisUnavailable`
        while Redis is not reachable.
        """
        cached = self._cache.get(identity_id)
        if cached is not None and self.subscriber.connected:
            return defer.succeed(cached)
        d = self.client.execute("HGETALL", self.keys.person(identity_id))
        # A change told while the answer was on its way may be older or newer
        # than the answer: then the answer is used once, not kept.
        changes = self._changes

        def found(reply):
            sessions = []
            for sid, field in _hash(reply).items():
                entry = json.loads(field)
                entry["session"] = sid
                sessions.append(entry)
            sessions.sort(key=lambda s: (s["node"], s["session"]))
            if self.subscriber.connected and changes == self._changes:
                self._cache[identity_id] = sessions
            return sessions

        return d.addCallback(found)

    # -- tickets (`gateway.api.GatewayApi.share_ticket`) ----------------------------------

    def share_ticket(self, connector, data, ttl):
        """
        ``data`` in Redis for ``ttl`` seconds, signed; fires with its key.
        Fails while Redis is unreachable (the ticket is meant for another
        node: the caller serves the login itself instead).
        """
        if self.secret is None:
            return defer.fail(RuntimeError("no cluster secret to sign tickets with"))
        key = secrets.token_hex(32)
        body = json.dumps(data, separators=(",", ":"), sort_keys=True)
        value = f"{self._ticket_mac(connector, key, body)} {body}"
        d = self.client.execute("SET", self.keys.ticket(connector, key), value, "PX", max(1, int(ttl * 1000)))
        return d.addCallback(lambda _: key)

    def claim_ticket(self, connector, key):
        """The data under ``key``, once, taken from Redis; None when there is none signed by this cluster."""
        if self.secret is None:
            return defer.succeed(None)
        d = self.client.execute("GETDEL", self.keys.ticket(connector, key))
        return d.addCallbacks(lambda value: self._checked(connector, key, value), lambda f: None)

    def _checked(self, connector, key, value):
        if value is None:
            return None
        mac, _, body = _text(value).partition(" ")
        if not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"),
                                   self._ticket_mac(connector, key, body).encode("utf-8")):
            self.log.critical("cluster: a {connector} ticket in Redis is not signed with this cluster's secret; "
                              "refused", connector=connector)
            return None
        return json.loads(body)

    def _ticket_mac(self, connector, key, body):
        return sign(self.secret, f"{connector}\n{key}\n{body}".encode("utf-8"))

    share, claim = share_ticket, claim_ticket  # as `gateway.path.tickets.LocalTickets`, for `Core.tickets`

    @defer.inlineCallbacks
    def all_sessions(self):
        """
        Every session of every live node, as `where` gives them (with
        ``person``): for the operators' session list and broadcasts. Two
        round trips; a person whose sessions changed meanwhile may show as
        before.
        """
        keys = self.keys
        names = sorted(n for n in map(_text, (yield self.client.execute("SMEMBERS", keys.nodes)))
                       if n == self.node or n not in self.down)
        sets = yield self.client.pipeline([("SMEMBERS", keys.node_sessions(name)) for name in names])
        wanted = sorted({_member(member) for members in sets for member in members})
        fields = yield self.client.pipeline([("HGET", keys.person(person), sid) for person, sid in wanted])
        found = []
        for (person, sid), field in zip(wanted, fields):
            if field is None:
                continue
            entry = json.loads(field)
            entry.update(session=sid, person=person)
            found.append(entry)
        return found


def _address(endpoints, advertise):
    """``host:port`` clients reach the first TCP or TLS endpoint string of ``endpoints`` at, or None."""
    for description in endpoints or ():
        parts = description.split(":")
        if parts[0] not in ("tcp", "ssl", "tls") or len(parts) < 2 or not parts[1].isdigit():
            continue
        options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        host = advertise or options.get("interface", "")
        if host in ("", "0.0.0.0", "::"):
            continue  # listening everywhere: the node must say by which name ([cluster] advertise)
        return f"[{host}]:{parts[1]}" if ":" in host else f"{host}:{parts[1]}"
    return None


def node_states(url, prefix="gw", now=None):
    """
    Every registered node as a dict (name, state, sessions, capacity, load,
    heartbeat age in seconds or None, listeners), read with blocking
    sockets: for ``gatewayctl node list``. A node whose alive key expired
    shows ``down`` even before another node has reaped it.
    """
    import time

    from gateway.cluster.redis import command

    keys = Keys(prefix)
    [names] = command(url, ("SMEMBERS", keys.nodes))
    names = sorted(_text(n) for n in names)
    if not names:
        return []
    replies = command(url, *[c for name in names for c in (("HGETALL", keys.node(name)),
                                                             ("EXISTS", keys.alive(name)))])
    now = time.time() if now is None else now
    out = []
    for i, name in enumerate(names):
        fields, alive = _hash(replies[2 * i]), replies[2 * i + 1]
        state = fields.get("state", UP)
        if not alive and state not in (STOPPED, DOWN):
            state = DOWN
        beat = fields.get("beat")
        out.append({
            "name": name, "state": state, "sessions": int(fields.get("sessions") or 0),
            "capacity": int(fields.get("capacity") or 0), "load": float(fields.get("load") or 0.0),
            "heartbeat_age": None if beat is None else round(max(0.0, now - float(beat)), 1),
            "listeners": json.loads(fields.get("listeners") or "{}"),
        })
    return out
