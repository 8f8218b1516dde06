"""
Ethical walls: two groups of people who may not reach each other, on any
network, by any kind of traffic.

A ``[[compliance.wall]]`` names its two sides (policy matchers: usually
``group:NAME`` of the directory, SQL or LDAP) and a ``notice``. Every
event between a person on one side and a person on the other, in either
direction (messages, files, presence, profiles, rooms) is refused with the
notice as its reason and ``wall:NAME`` as its rule, archived as rejected,
counted (``gateway_wall_breaches_total``) and handed to the
``gateway_wall_breach`` hook. Foreign users mapped to people (aliases) are
those people here: the path resolves them before policy runs. Walls are
checked before the policy rules, and reload with them (SIGHUP).
"""

from __future__ import annotations

from gateway.model import Verdict
from gateway.policy.rules import _matcher

__all__ = ["Walls"]


class _Wall:
    __slots__ = ("config", "left", "right", "kinds")

    def __init__(self, config):
        self.config = config
        self.left = tuple(_matcher(m) for m in config.left)
        self.right = tuple(_matcher(m) for m in config.right)
        self.kinds = frozenset(config.kinds)

    def between(self, a, b) -> bool:
        return any(m(a) for m in self.left) and any(m(b) for m in self.right)


class Walls:
    """The configured walls; ``breached(event, wall, sender, recipient)`` is told of each attempt."""

    def __init__(self, configs=(), breached=None):
        self.breached = breached
        self.load(configs)

    def load(self, configs) -> None:
        self.walls = tuple(_Wall(config) for config in configs)

    def check(self, event, sender, recipient):
        """
        A deny `Verdict` when a wall stands between ``sender`` and
        ``recipient`` (`gateway.policy.rules.Side`), else None.
        """
        if not self.walls or sender.identity is None or recipient.identity is None:
            return None  # a wall stands between people: both sides must be known
        for wall in self.walls:
            if wall.kinds and event.kind not in wall.kinds:
                continue
            if wall.between(sender, recipient) or wall.between(recipient, sender):
                if self.breached is not None:
                    self.breached(event, wall.config, sender, recipient)
                return Verdict.deny(wall.config.notice, rule=f"wall:{wall.config.name}")
        return None
