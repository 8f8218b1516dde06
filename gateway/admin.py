"""The admin HTTP listener: Prometheus /metrics and a /status JSON document."""

import json

from twisted.web import resource, server

from gateway import __version__


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


class _Refresh(resource.Resource):
    """POST /directory/refresh: forget every cached directory look-up."""

    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self._gateway = gateway

    def render_POST(self, request):
        self._gateway.directory_invalidate()
        request.setHeader(b"content-type", b"application/json")
        return b'{"refreshed": true}\n'


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
    root = resource.Resource()
    root.putChild(b"metrics", _Metrics(gateway))
    root.putChild(b"status", _Status(gateway))
    directory = resource.Resource()
    directory.putChild(b"refresh", _Refresh(gateway))
    root.putChild(b"directory", directory)
    site = server.Site(root)
    site.displayTracebacks = False
    return site
