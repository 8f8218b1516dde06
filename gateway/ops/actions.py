"""
The admin API's actions: what an operator or a reviewer may do, each one
archived (a `gateway.model.AdminAction` with their name) before it takes
effect or before its answer goes out.

Every resource here is reached through `gateway.ops.admin`'s guard, which
has set ``request.operator`` (a `gateway.ops.operators.Operator`) and
checked that its role may use the resource. Bodies of POST requests are
JSON objects of at most `MAX_BODY` bytes; answers are JSON objects.

    GET  /whoami                      any role: the caller's name and role
    GET  /sessions[?user=U]           operator: sessions here and, in a cluster, on every live node
    POST /sessions/kick               operator: {"session": ID} or {"user": U}; ends them on this node
    POST /broadcast                   operator: {"text": T, "network": N?}: a message to everyone online
    POST /policy/reload               operator: the config's rules, walls and notices again (as SIGHUP)
    POST /node/drain, /node/undrain   operator: {"node": NAME} (default this node)
    GET  /rooms[?room=R]              operator: this node's rooms and who is in them
    POST /rooms/create                operator: {"room": R, "subject"?, "owner"?, "networks"?, "external"?}
    POST /rooms/remove                operator: {"room": R, "reason"?}: everyone put out, the room forgotten
    GET  /archive/search?...          reviewer: user, peer, since, until, text, kind, room, limit (<= 1000)
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.model import Address, AdminAction, Verdict

__all__ = ["action_tree", "BROADCAST_SENDER", "MAX_BODY", "record"]

log = Logger(namespace="gateway.admin")

MAX_BODY = 64 * 1024
# Who broadcasts come from (a network no connector serves: nobody can answer or impersonate it).
BROADCAST_SENDER = Address("gateway", "operator")
_RECORDED = Verdict.allow(reason="recorded")
_SEARCH_LIMIT = 1000


class BadRequest(Exception):
    def __init__(self, text, code=400):
        super().__init__(text)
        self.code = code


def record(gateway, request, action, target="", text=""):
    """
    Archive what ``request``'s operator does (committed to the database,
    not only spooled); fires once it is, fails when the archive cannot
    take it (then the action is not done).
    """
    operator = request.operator
    event = AdminAction(Address("operator", operator.name), action, role=operator.role, target=target, text=text,
                        source=getattr(request.getClientAddress(), "host", ""),
                        created=gateway.core.clock.seconds())
    return gateway.archive.record(event, _RECORDED, None, wait=True, strict=True)


class _Action(resource.Resource):
    """
    One action: ``describe`` says what is done to what (or raises
    `BadRequest`), ``check`` may look (without changing anything) whether
    it can be done, it is archived, then ``act`` does it and its answer
    (a dict, or a Deferred of one) is sent.
    """

    isLeaf = True
    name = ""
    methods = (b"POST",)

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        if request.method not in self.methods:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(self.methods))
            return _error(f"use {' or '.join(m.decode() for m in self.methods)}")
        try:
            body = _body(request) if request.method == b"POST" else {}
            target, text = self.describe(request, body)
        except BadRequest as e:
            request.setResponseCode(e.code)
            return _error(str(e))

        def unrecorded(failure):
            log.error("admin API: {operator}'s {action} not done: the archive could not record it: {error}",
                      operator=request.operator.name, action=self.name, error=failure.getErrorMessage())
            raise BadRequest("the archive cannot record this action now, so it was not done", 503)

        def recorded(_):
            return defer.maybeDeferred(record, self.gateway, request, self.name, target, text).addErrback(unrecorded)

        d = defer.maybeDeferred(self.check, request, body)
        d.addCallback(recorded)
        d.addCallback(lambda _: self.act(request, body))
        d.addCallbacks(lambda answer: _finish(request, 200, answer), lambda f: _failed(request, f, self.name))
        return server.NOT_DONE_YET

    def describe(self, request, body):
        return "", ""

    def check(self, request, body):
        return None

    def act(self, request, body):
        raise NotImplementedError


def _body(request):
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the body is over {MAX_BODY} bytes", 413)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    return body


def _text_field(body, key, required=True, limit=4096):
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key!r} must be non-empty text")
    if len(value) > limit:
        raise BadRequest(f"{key!r} is over {limit} characters")
    return value


def _arg(request, key):
    values = request.args.get(key.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _moment(key, text):
    """Epoch seconds, or an ISO 8601 time (local time when it names no zone)."""
    import datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{key}: {text!r} is not a time (epoch seconds or ISO 8601, e.g. 2026-11-22T10:30)") from None
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()


def _error(text):
    return json.dumps({"error": text}).encode() + b"\n"


def _finish(request, code, answer):
    if request._disconnected:
        return
    request.setResponseCode(code)
    request.write(json.dumps(answer, indent=2, sort_keys=True).encode() + b"\n")
    request.finish()


def _failed(request, failure, action):
    if failure.check(BadRequest):
        code, text = failure.value.code, str(failure.value)
    else:
        log.failure("admin API: {action} failed", failure, action=action)
        code, text = 500, f"{action} failed: {failure.getErrorMessage()}"
    if not request._disconnected:
        request.setResponseCode(code)
        request.write(_error(text))
        request.finish()


class WhoAmI(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"name": request.operator.name, "role": request.operator.role}).encode() + b"\n"


class Sessions(_Action):
    """The sessions of this node, and of every live node in a cluster (``user``: one person's)."""

    name = "sessions.list"
    methods = (b"GET",)

    def describe(self, request, body):
        return _arg(request, "user") or "", ""

    def act(self, request, body):
        user = (_arg(request, "user") or "").lower() or None
        core, registry = self.gateway.core, getattr(self.gateway, "registry", None)
        here = [{"session": s.id, "person": s.identity.id, "address": str(s.address), "connector": s.connector,
                 "network": s.address.network, "node": core.node, "started": s.started, "status": s.status.value}
                for s in core.sessions.all() if user is None or _is(s, user)]
        if registry is None or not registry.client.connected:
            return {"sessions": here, "cluster": registry is not None and "unreachable" or "none"}
        d = registry.all_sessions()

        def merged(everywhere):
            others = [dict(e, network=Address.parse(e["address"]).network) for e in everywhere
                      if e["node"] != core.node and (user is None or e["person"] == user or e["address"] == user)]
            return {"sessions": here + others, "cluster": "reachable"}

        return d.addCallback(merged)


def _is(session, user):
    return session.identity.id == user or str(session.address) == user


class Kick(_Action):
    """End sessions on this node, in their protocol's terms (a connector's optional ``disconnect``)."""

    name = "sessions.kick"

    def describe(self, request, body):
        session, user = body.get("session"), body.get("user")
        if bool(session) == bool(user) or not isinstance(session or user, str):
            raise BadRequest('give one of "session" (an id) or "user" (a person or an address)')
        return session or user.lower(), _text_field(body, "reason", required=False, limit=512) or ""

    def act(self, request, body):
        core = self.gateway.core
        target = body.get("session") or body["user"].lower()
        reason = body.get("reason") or "ended by an operator"
        kicked, refused = [], []
        for session in core.sessions.all():
            if session.id != target and not _is(session, target):
                continue
            disconnect = getattr(core.connectors.get(session.connector), "disconnect", None)
            if disconnect is None:
                refused.append({"session": session.id, "why": f"connector {session.connector} cannot end a session"})
                continue
            try:
                disconnect(session, reason)
            except Exception as e:
                log.failure("admin API: {connector} could not end {session}", connector=session.connector,
                            session=session.id)
                refused.append({"session": session.id, "why": str(e)})
                continue
            kicked.append(session.id)
        answer = {"kicked": kicked, "not_kicked": refused}
        registry = getattr(self.gateway, "registry", None)
        if registry is None or not registry.client.connected:
            return answer
        # Sessions on other nodes are that node's to end: the answer names them.
        d = registry.all_sessions()

        def elsewhere(found):
            answer["elsewhere"] = [{"session": e["session"], "node": e["node"]} for e in found
                                   if e["node"] != core.node and target in (e["session"], e["person"], e["address"])]
            return answer

        return d.addCallback(elsewhere)


class Broadcast(_Action):
    """
    A message from ``gateway:operator`` to every person online (on one
    network), each through the one path like any message: policy decides,
    the archive records, the cluster carries it to other nodes.
    """

    name = "broadcast"

    def describe(self, request, body):
        text = _text_field(body, "text")
        network = _text_field(body, "network", required=False, limit=32)
        return network or "", text

    def act(self, request, body):
        core, registry = self.gateway.core, getattr(self.gateway, "registry", None)
        network = (body.get("network") or "").lower() or None
        if registry is not None and registry.client.connected:
            d = registry.all_sessions()
            d.addCallback(lambda found: {Address.parse(e["address"]) for e in found})
        else:
            d = defer.succeed(set())

        def send(addresses):
            addresses |= {s.address for s in core.sessions.all()}
            addresses = sorted(a for a in addresses if network is None or a.network == network)
            sent = [core.bus.submit(core.api.message(BROADCAST_SENDER, address, body["text"]))
                    for address in addresses]
            return defer.gatherResults([defer.maybeDeferred(lambda r=r: r) for r in sent], consumeErrors=True)

        def counted(outcomes):
            delivered = sum(1 for o in outcomes if getattr(o, "delivered", False))
            return {"recipients": len(outcomes), "delivered": delivered, "not_delivered": len(outcomes) - delivered}

        return d.addCallback(send).addCallback(counted)


class Rooms(_Action):
    """The rooms of this node with their members (``room``: that one only)."""

    name = "rooms.list"
    methods = (b"GET",)

    def describe(self, request, body):
        return _arg(request, "room") or "", ""

    def check(self, request, body):
        wanted = (_arg(request, "room") or "").lower().lstrip("#")
        if wanted and wanted not in self.gateway.core.rooms.rooms:
            raise BadRequest(f"no room {wanted}", 404)

    def act(self, request, body):
        wanted = (_arg(request, "room") or "").lower().lstrip("#")
        rooms = self.gateway.core.rooms.rooms
        return {"rooms": [room.describe() for name, room in sorted(rooms.items()) if not wanted or name == wanted],
                "node": self.gateway.core.node}


class RoomCreate(_Action):
    """A room that stays when empty: ``room``, and ``subject``, ``owner``, ``networks``, ``external`` (default true)."""

    name = "rooms.create"

    def describe(self, request, body):
        from gateway.rooms import RoomError, check_name

        try:
            name = check_name(_text_field(body, "room", limit=64))
        except RoomError as e:
            raise BadRequest(str(e)) from None
        networks = body.get("networks") or []
        if not isinstance(networks, list) or not all(isinstance(n, str) and n.isidentifier() for n in networks):
            raise BadRequest('"networks" is a list of network names')
        if not isinstance(body.get("external", True), bool):
            raise BadRequest('"external" is true or false')
        _text_field(body, "owner", required=False, limit=255)
        return name, json.dumps({k: body[k] for k in ("subject", "owner", "networks", "external") if k in body},
                                sort_keys=True)

    def check(self, request, body):
        room = self.gateway.core.rooms.rooms.get(body["room"].lower())
        if room is not None and room.persistent:
            raise BadRequest(f"room {room.name} exists", 409)

    def act(self, request, body):
        from gateway.rooms import RoomError

        try:
            d = self.gateway.core.rooms.create(
                body["room"], subject=_text_field(body, "subject", required=False) or "",
                owner=(body.get("owner") or "").lower(), networks=[n.lower() for n in body.get("networks") or []],
                external=body.get("external", True))
        except RoomError as e:
            raise BadRequest(str(e)) from None
        return d.addCallback(lambda room: room.describe())


class RoomRemove(_Action):
    """Close a room: everyone in it is put out (each a kick on the path) and it is forgotten."""

    name = "rooms.remove"

    def describe(self, request, body):
        return _text_field(body, "room", limit=64).lower().lstrip("#"), _text_field(
            body, "reason", required=False, limit=512) or ""

    def check(self, request, body):
        if body["room"].lower().lstrip("#") not in self.gateway.core.rooms.rooms:
            raise BadRequest(f"no room {body['room']}", 404)

    def act(self, request, body):
        rooms = self.gateway.core.rooms
        members = len(rooms.rooms[body["room"].lower().lstrip("#")].members)
        d = rooms.remove(body["room"].lower().lstrip("#"), body.get("reason") or "the room was closed")
        return d.addCallback(lambda _: {"removed": body["room"].lower().lstrip("#"), "members_put_out": members})


class Reload(_Action):
    name = "policy.reload"

    def act(self, request, body):
        core = self.gateway.core
        if not self.gateway.reload():
            raise BadRequest("the config file has an error; the old rules stay (see the gateway's log)", 422)
        return {"reloaded": True, "rules": len(core.policy.rules)}


class Refresh(_Action):
    """POST /directory/refresh: forget every cached directory look-up."""

    name = "directory.refresh"

    def act(self, request, body):
        self.gateway.directory_invalidate()
        return {"refreshed": True}


class NodeState(_Action):
    """Drain a node of the cluster, or let it take logins again (it acts at its next beat)."""

    def __init__(self, gateway, wanted):
        super().__init__(gateway)
        self.wanted = wanted
        self.name = "node.drain" if wanted == "draining" else "node.undrain"

    def describe(self, request, body):
        registry = getattr(self.gateway, "registry", None)
        if registry is None:
            raise BadRequest("this gateway is not in a cluster ([cluster] redis)", 409)
        node = _text_field(body, "node", required=False, limit=64) or registry.node
        return node, ""

    @defer.inlineCallbacks
    def check(self, request, body):
        registry = self.gateway.registry
        node = body.get("node") or registry.node
        if not (yield registry.client.execute("SISMEMBER", registry.keys.nodes, node)):
            raise BadRequest(f"no node called {node!r} has registered", 404)

    @defer.inlineCallbacks
    def act(self, request, body):
        registry = self.gateway.registry
        node = body.get("node") or registry.node
        yield registry.client.execute("HSET", registry.keys.node(node), "wanted", self.wanted)
        return {"node": node, "wanted": self.wanted}


class Search(_Action):
    """The archive's events matching the query, as ``gatewayctl archive search --json`` gives them."""

    name = "archive.search"
    methods = (b"GET",)

    def describe(self, request, body):
        query = {}
        for key in ("user", "peer", "text", "kind", "room"):
            value = _arg(request, key)
            if value:
                query[key] = value
        for key in ("since", "until"):
            value = _arg(request, key)
            if value:
                query[key] = _moment(key, value)
        try:
            limit = int(_arg(request, "limit") or 100)
        except ValueError:
            raise BadRequest("limit must be a whole number") from None
        if not 0 < limit <= _SEARCH_LIMIT:
            raise BadRequest(f"limit must be 1 to {_SEARCH_LIMIT}")
        request.query = (query, limit)
        return "", json.dumps(dict(query, limit=limit), sort_keys=True)

    def act(self, request, body):
        from gateway.storage.archive.export import event_dict

        query, limit = request.query
        d = self.gateway.search(query, limit)
        return d.addCallback(lambda found: {"events": [event_dict(e) for e in found], "count": len(found)})


def action_tree(gateway, tree):
    """Put every action under ``tree`` (the admin API's root)."""
    tree.putChild(b"whoami", WhoAmI())
    sessions = Sessions(gateway)
    sessions.isLeaf = False
    sessions.putChild(b"kick", Kick(gateway))
    tree.putChild(b"sessions", sessions)
    tree.putChild(b"broadcast", Broadcast(gateway))
    policy = resource.Resource()
    policy.putChild(b"reload", Reload(gateway))
    tree.putChild(b"policy", policy)
    directory = resource.Resource()
    directory.putChild(b"refresh", Refresh(gateway))
    tree.putChild(b"directory", directory)
    node = resource.Resource()
    node.putChild(b"drain", NodeState(gateway, "draining"))
    node.putChild(b"undrain", NodeState(gateway, "up"))
    tree.putChild(b"node", node)
    rooms = Rooms(gateway)
    rooms.isLeaf = False
    rooms.putChild(b"create", RoomCreate(gateway))
    rooms.putChild(b"remove", RoomRemove(gateway))
    tree.putChild(b"rooms", rooms)
    archive = resource.Resource()
    archive.putChild(b"search", Search(gateway))
    tree.putChild(b"archive", archive)
