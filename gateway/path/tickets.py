"""
Tickets: what one connection of a login proves, kept for the next
connection of the same login to take once (OSCAR's login server hands a
cookie that the client brings to BOS). On a node on its own they are kept
here; in a cluster, in Redis, signed, so that the next connection may go
to another node (`gateway.cluster.registry.NodeRegistry.share_ticket`).
"""

from __future__ import annotations

import secrets

from twisted.internet import defer

__all__ = ["LocalTickets", "MAX_TICKETS"]

# Tickets kept at once on a node on its own (a flood of logins that never come back cannot grow it further).
MAX_TICKETS = 10_000


class LocalTickets:
    def __init__(self, clock):
        self.clock = clock
        self._kept = {}  # (connector, key) -> (expires, data)

    def share(self, connector: str, data: dict, ttl: float):
        now = self.clock.seconds()
        if len(self._kept) >= MAX_TICKETS:
            for name in [n for n, (expires, _) in self._kept.items() if expires <= now]:
                del self._kept[name]
            if len(self._kept) >= MAX_TICKETS:
                return defer.fail(RuntimeError("too many logins in progress"))
        key = secrets.token_hex(32)
        self._kept[(connector, key)] = (now + ttl, data)
        return defer.succeed(key)

    def claim(self, connector: str, key: str):
        kept = self._kept.pop((connector, key), None)
        if kept is None or kept[0] <= self.clock.seconds():
            return defer.succeed(None)
        return defer.succeed(kept[1])
