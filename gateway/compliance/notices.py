"""
Disclaimers and notices: a text both parties of a conversation are shown,
once per conversation per period, when the conversation crosses a boundary.

A ``[[compliance.notice]]`` names its ``text``, the ``parties`` it is for
(policy matchers; a conversation matches when either side does), a
``direction`` (any, internal, inbound, outbound, external: as in policy
rules) and a ``period`` in hours (24). When an instant message of a
matching conversation has been delivered and the notice was not sent to
that pair of people within the period, the gateway sends it to both, as a
message from ``gateway:compliance``: a message like any other, which each
recipient's connector renders in its own network's form, and which policy,
the hooks and the archive see. This is a built-in hook plugin
(``gateway_delivered``); it replaces appending a disclaimer to every
message, which the example plugin still shows as a transform.
"""

from __future__ import annotations

import collections

from gateway.hookspecs import hookimpl
from gateway.model import Address
from gateway.policy.rules import Side, direction_matches, matchers

__all__ = ["Notices", "SENDER"]

# Who notices come from (a network no connector serves: nobody can answer or impersonate it).
SENDER = Address("gateway", "compliance")
# Conversations remembered per notice (the oldest forgotten first: it may then be sent again).
REMEMBERED = 100_000


class _Notice:
    __slots__ = ("config", "matchers", "sent")

    def __init__(self, config):
        self.config = config
        self.matchers = matchers(config.parties)
        self.sent = collections.OrderedDict()  # (party, party) -> time last sent

    def matches(self, sender, recipient) -> bool:
        if not direction_matches(self.config.direction, sender, recipient):
            return False
        return not self.matchers or any(m(side) for side in (sender, recipient) for m in self.matchers)

    def due(self, key, now) -> bool:
        last = self.sent.get(key)
        if last is not None and now - last < self.config.period * 3600:
            return False
        self.sent[key] = now
        self.sent.move_to_end(key)
        while len(self.sent) > REMEMBERED:
            self.sent.popitem(last=False)
        return True


class Notices:
    """The built-in plugin sending ``[[compliance.notice]]`` texts; `load` replaces them (SIGHUP)."""

    def __init__(self, api, configs=()):
        self.api = api
        self.load(configs)

    def load(self, configs) -> None:
        self.notices = tuple(_Notice(config) for config in configs)

    @hookimpl
    def gateway_delivered(self, event, outcome):
        if not self.notices or event.kind != "im" or event.sender == SENDER or not outcome.delivered:
            return
        api = self.api
        d = api.identity_for(event.sender)
        d.addCallback(lambda sender: api.identity_for(event.recipient).addCallback(
            lambda recipient: self._decide(event, sender, recipient)))
        d.addErrback(lambda failure: api.log.failure("compliance notice not sent", failure))

    def _decide(self, event, sender_identity, recipient_identity):
        sender = Side(event.sender, sender_identity)
        recipient = Side(event.recipient, recipient_identity)
        parties = tuple(sorted((sender_identity.id if sender_identity else str(event.sender),
                                recipient_identity.id if recipient_identity else str(event.recipient))))
        now = self.api.clock.seconds()
        for notice in self.notices:
            if notice.matches(sender, recipient) and notice.due(parties, now):
                for address in (event.sender, event.recipient):
                    self.api.submit(self.api.message(SENDER, address, notice.config.text))
