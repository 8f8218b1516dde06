"""
Disclaimers and notices: a text both parties of a conversation are shown,
once per conversation per period, when the conversation crosses a boundary.

A ``[[compliance.notice]]`` names its ``text``, the ``parties`` it is for
(policy matchers; a conversation matches when either side does), a
``direction`` (any, internal, inbound, outbound, external: as in policy
rules) and a ``period`` in hours (24). When policy has allowed an instant
message of a matching conversation and the notice was not sent to that
pair of people within the period, the gateway sends it to both, as a
message from ``gateway:compliance``, before that message goes on: a
message like any other, which each recipient's connector renders in its
own network's form, and which policy, the hooks and the archive see. So
the recipient reads the notice first, and the archive holds it first.
This is a built-in hook plugin (``gateway_transform``, which changes
nothing and holds the message until the notices are delivered or held,
at most half of ``[policy] hook_timeout``); it replaces appending a
disclaimer to every message, which the example plugin still shows as a
transform.
"""

from __future__ import annotations

import collections

from twisted.internet.defer import Deferred, DeferredList

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
    """
    The built-in plugin sending ``[[compliance.notice]]`` texts; `load`
    replaces them (SIGHUP). ``wait``: how long a message waits for its
    notices at most (then it goes on, and they follow).
    """

    def __init__(self, api, configs=(), wait=2.5):
        self.api = api
        self.wait = wait
        self.load(configs)

    def load(self, configs) -> None:
        self.notices = tuple(_Notice(config) for config in configs)

    @hookimpl
    def gateway_transform(self, event):
        if not self.notices or event.kind != "im" or event.sender == SENDER:
            return None
        api = self.api
        d = api.identity_for(event.sender)
        d.addCallback(lambda sender: api.identity_for(event.recipient).addCallback(
            lambda recipient: self._decide(event, sender, recipient)))
        d.addErrback(lambda failure: api.log.failure("compliance notice not sent", failure))
        if d.called and d.result is None:
            return None  # no notice due, decided at once: the message goes on in this turn
        return d

    def _decide(self, event, sender_identity, recipient_identity):
        """Send the notices due for this conversation; None, or a Deferred firing None once they are on their way."""
        sender = Side(event.sender, sender_identity)
        recipient = Side(event.recipient, recipient_identity)
        parties = tuple(sorted((sender_identity.id if sender_identity else str(event.sender),
                                recipient_identity.id if recipient_identity else str(event.recipient))))
        now = self.api.clock.seconds()
        sent = []
        for notice in self.notices:
            if notice.matches(sender, recipient) and notice.due(parties, now):
                for address in (event.sender, event.recipient):
                    sent.append(self.api.submit(self.api.message(SENDER, address, notice.config.text)))
        if not sent:
            return None
        ready = Deferred()

        def go_on(_=None):
            if not ready.called:
                ready.callback(None)  # nothing changed: the message is delivered as it was

        timer = self.api.clock.callLater(self.wait, go_on)
        DeferredList(sent, consumeErrors=True).addCallback(lambda _: timer.active() and timer.cancel()).addBoth(go_on)
        return ready
