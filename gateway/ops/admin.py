"""
The admin HTTP listener: Prometheus /metrics, a /status JSON document, and
the operators' actions (`gateway.ops.actions`: sessions, broadcast, policy
reload, directory refresh, nodes, archive search).

Every endpoint needs ``Authorization: Bearer TOKEN``: the configured token
(`admin_token`, the operator ``admin``) or an operator's own
(`gateway.ops.operators`), except /metrics on a loopback listener while
``[admin] metrics_public`` is true. Each endpoint belongs to one role
(`ROLE_OF`); a caller of another role is refused with 403.
Cross-site request forgery needs a browser to send the credentials by
itself, and browsers never add an ``Authorization`` header to a request
another site makes (they would send cookies, which this API ignores); a
request whose ``Origin`` is not the listener's own is refused as well, and
state changes are accepted by POST only. TLS is the endpoint string's
(``ssl:8443:privateKey=key.pem:certKey=cert.pem``).
"""

import hmac
import json
import os
import secrets

from twisted.logger import Logger
from twisted.web import resource, server

from gateway import __version__
from gateway.ops.actions import action_tree
from gateway.ops.operators import ADMIN, OPERATOR, REVIEWER, Operator

__all__ = ["admin_site", "admin_token", "status", "loopback_listener"]

log = Logger(namespace="gateway.admin")


def admin_token(config, create=True):
    """
    The admin API's token: ``[admin] token``, else the contents of
    ``[admin] token_file``, else ``DATA_DIR/admin-token``, which is made
    (random, mode 0600) the first time when ``create``. None when there is
    none and ``create`` is false.
    """
    if config.admin.token:
        return config.admin.token
    path = config.resolve(config.admin.token_file) if config.admin.token_file else admin_token_path(config)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    if not create or config.admin.token_file:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.info("admin API token made in {path} (send it as 'Authorization: Bearer TOKEN')", path=path)
    return token


def admin_token_path(config):
    return os.path.join(config.data_dir, "admin-token")


def loopback_listener(description: str) -> bool:
    """True for an endpoint string that only this machine can reach: TCP bound to 127.x or ::1, or a unix socket."""
    parts, current, escaped = [], "", False
    for char in description:  # colons escaped with a backslash belong to the value (IPv6)
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts, current = parts + [current], ""
        else:
            current += char
    parts.append(current)
    kind = parts[0]
    if kind == "unix":
        return True
    if kind not in ("tcp", "ssl", "tcp6"):
        return False
    interface = ""
    for part in parts[2:]:
        if part.startswith("interface="):
            interface = part.split("=", 1)[1]
    return interface.startswith("127.") or interface in ("::1", "localhost")


# The role each endpoint (first path segment) belongs to; None: any role.
ROLE_OF = {
    b"metrics": OPERATOR, b"status": OPERATOR, b"sessions": OPERATOR, b"broadcast": OPERATOR,
    b"policy": OPERATOR, b"directory": OPERATOR, b"node": OPERATOR, b"rooms": OPERATOR,
    b"archive": REVIEWER,
    b"whoami": None,
}


class _Guard(resource.Resource):
    """Checks the origin, the credentials and the role of every request, then hands it to the API's tree."""

    def __init__(self, tree, token, metrics, public_metrics, clock, find=None):
        super().__init__()
        self._tree = tree
        self._token = token.encode("utf-8")
        self._find = find  # token -> Deferred of an Operator or None (the operators' table)
        self._metrics = metrics
        self._public_metrics = public_metrics
        self._clock = clock
        self._logged = {}  # source -> when a refusal was last logged

    def getChildWithDefault(self, name, request):
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if name == b"metrics" and self._public_metrics and not request.postpath:
            return self._tree.getChildWithDefault(name, request)
        origin = request.getHeader(b"origin")
        if origin is not None:
            host = request.getHeader(b"host") or b""
            if origin.split(b"://", 1)[-1].rstrip(b"/") != host:
                return _Refused(*self._refused(request, 403, "cross-origin requests are refused", "origin"))
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        given = given.strip()
        if scheme.lower() != b"bearer" or not given:
            return _Refused(*self._refused(request, 401, "an admin token is needed (Authorization: Bearer TOKEN)",
                                           "credentials" if header else "no-credentials"))
        if hmac.compare_digest(given, self._token):
            return self._authorized(Operator(ADMIN, OPERATOR), name, request)
        if self._find is None:
            return _Refused(*self._refused(request, 401, "an admin token is needed (Authorization: Bearer TOKEN)",
                                           "credentials"))
        return _Later(self, name, given)

    def _authorized(self, operator, name, request):
        """The resource ``operator`` gets for ``name`` (the first segment; the rest in ``request.postpath``)."""
        request.operator = operator
        if name not in ROLE_OF:
            return _Refused(404, "not found")
        role = ROLE_OF[name]
        if role is not None and role != operator.role:
            return _Refused(*self._refused(request, 403, f"this is a tool of the {role} role, not of "
                                                         f"{operator.name}'s ({operator.role})", "role"))
        return resource.getChildForRequest(self._tree.getChildWithDefault(name, request), request)

    def render(self, request):
        return _Refused(404, "not found").render(request)

    def _refused(self, request, code, text, reason):
        source = getattr(request.getClientAddress(), "host", "?")
        if self._metrics is not None:
            self._metrics.admin_refused(reason)
        now = self._clock.seconds()
        if now - self._logged.get(source, -1e9) >= 60:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[source] = now
            log.warn("admin API: refused a request from {source}: {why} (logged once a minute per source)",
                     source=source, why=text)
        return code, text


class _Later(resource.Resource):
    """A request whose token is looked up in the operators' table first (off the reactor's thread)."""

    isLeaf = True

    def __init__(self, guard, name, token):
        super().__init__()
        self.guard, self.name, self.token = guard, name, token

    def render(self, request):
        d = self.guard._find(self.token.decode("utf-8", "replace"))

        def found(operator):
            if operator is None:
                target = _Refused(*self.guard._refused(
                    request, 401, "an admin token is needed (Authorization: Bearer TOKEN)", "credentials"))
            else:
                target = self.guard._authorized(operator, self.name, request)
            if not request._disconnected:
                request.render(target)  # as the site would have: 405 for a method it lacks, its body written

        def failed(failure):
            log.failure("admin API: looking up an operator's token failed", failure)
            if not request._disconnected:
                request.setResponseCode(503)
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"error": "operators cannot be looked up now"}\n')
                request.finish()

        d.addCallbacks(found, failed)
        return server.NOT_DONE_YET


class _Refused(resource.Resource):
    isLeaf = True

    def __init__(self, code, text):
        super().__init__()
        self.code, self.text = code, text

    def render(self, request):
        request.setResponseCode(self.code)
        if self.code == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="gateway"')
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": self.text}).encode() + b"\n"


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._gateway.core.metrics.render()


class _Status(resource.Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status(self._gateway), indent=2).encode() + b"\n"


def status(gateway) -> dict:
    """What /status shows: node, uptime, connectors, sessions, archive, plugins."""
    core = gateway.core
    archive = gateway.archive
    return {
        "version": __version__,
        "node": core.node,
        "uptime_seconds": round(core.clock.seconds() - gateway.started, 3),
        "connectors": {
            name: {"networks": list(c.networks), "running": bool(getattr(c, "running", False))}
            for name, c in core.connectors.items()
        },
        "sessions": core.sessions.count_by_connector(),
        "archive": {
            "state": archive.state,
            "queue_depth": archive.queue_depth(),
            "spooled": archive.spooled(),
            "fail_closed": core.bus.fail_closed,
        },
        "policy": {"rules": len(core.policy.rules), "default": core.policy.section.default},
        "directory": {
            "backend": gateway.config.directory.backend,
            "cache_hits": core.directory.hits,
            "cache_misses": core.directory.misses,
        },
        "plugins": dict(core.plugins.loaded),
    }


def admin_site(gateway):
    """The admin API's ``twisted.web.server.Site``, guarded by the token of ``gateway.config``."""
    config = gateway.config
    tree = resource.Resource()
    tree.putChild(b"metrics", _Metrics(gateway))
    tree.putChild(b"status", _Status(gateway))
    action_tree(gateway, tree)
    public = config.admin.metrics_public and loopback_listener(config.admin.listen)
    guard = _Guard(tree, admin_token(config), gateway.core.metrics, public, gateway.core.clock,
                   getattr(gateway, "find_operator", None))
    site = server.Site(guard)
    site.displayTracebacks = False
    return site
