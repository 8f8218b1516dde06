"""The built-in policy: rules from the config, first match wins, a default."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Optional

import attrs

from gateway.config import DAYS, PolicySection, RuleConfig
from gateway.model import Address, Identity, Verdict


@attrs.frozen(slots=True)
class Side:
    """One side of an event as rules see it: the address and, if known, the person."""

    address: Address
    identity: Optional[Identity]


def _matcher(text: str):
    """A predicate over a `Side` for one matcher text (validated by the config)."""
    if text == "*":
        return lambda side: True
    prefix, _, rest = text.partition(":")
    if prefix == "user":
        wanted = rest.lower()
        return lambda side: side.identity is not None and side.identity.id == wanted
    if prefix == "group":
        return lambda side: side.identity is not None and rest in side.identity.groups
    if prefix == "domain":
        domain = rest.lower()
        suffix = "." + domain
        return lambda side: side.address.domain == domain or side.address.domain.endswith(suffix)
    if prefix == "network":
        network = rest.lower()
        return lambda side: side.address.network == network
    address = Address.parse(text)

    def match_address(side):
        if side.address == address:
            return True
        return side.identity is not None and address in side.identity.handles

    return match_address


def matchers(texts) -> tuple:
    """The predicates of matcher ``texts``; () when one is "*" (everything matches: nothing to call)."""
    return () if "*" in texts else tuple(_matcher(m) for m in texts)


def direction_matches(direction, sender: Side, recipient: Side) -> bool:
    """
    Whether ``sender`` to ``recipient`` goes in ``direction``: any;
    internal (both are people of the directory), inbound (from someone else
    to one of them), outbound (the other way), external (not internal).
    """
    if direction == "any":
        return True
    inside = (sender.identity is not None, recipient.identity is not None)
    if direction == "internal":
        return inside == (True, True)
    if direction == "inbound":
        return inside == (False, True)
    if direction == "outbound":
        return inside == (True, False)
    return not all(inside)  # external


def _any(matchers, side) -> bool:
    for matcher in matchers:
        if matcher(side):
            return True
    return False


@attrs.frozen
class Rule:
    """A compiled rule."""

    config: RuleConfig
    senders: tuple
    recipients: tuple
    kinds: frozenset
    weekdays: frozenset  # 0 = Monday

    @classmethod
    def compile(cls, config: RuleConfig) -> "Rule":
        return cls(
            config=config,
            senders=matchers(config.senders),
            recipients=matchers(config.recipients),
            kinds=frozenset(config.kinds),
            weekdays=frozenset(DAYS.index(d) for d in config.days),
        )

    @property
    def name(self) -> str:
        return self.config.name

    def matches(self, kind, sender: Side, recipient: Side, now) -> bool:
        if kind not in self.kinds:
            return False
        if not direction_matches(self.config.direction, sender, recipient):
            return False
        if self.senders and not _any(self.senders, sender):
            return False
        if self.recipients and not _any(self.recipients, recipient):
            return False
        if self.weekdays or self.config.hours:
            local = now()
            if self.weekdays and local.weekday() not in self.weekdays:
                return False
            if self.config.hours:
                start, end = self.config.hours
                minute = local.hour * 60 + local.minute
                inside_hours = start <= minute < end if start <= end else minute >= start or minute < end
                if not inside_hours:
                    return False
        return True

    def verdict(self) -> Verdict:
        if self.config.action == "allow":
            return Verdict.allow(rule=self.name, reason=self.config.reason or f"allowed by rule {self.name}")
        return Verdict.deny(self.config.reason or f"denied by rule {self.name}", rule=self.name)


class PolicyEngine:
    """
    Evaluates the built-in rules. ``check`` is synchronous and cheap: the
    rules were compiled once, and a decision is kept per (kind, sender,
    recipient), the sides with their people (`CACHE_SIZE` of them at most),
    until the rules are loaded again (SIGHUP) or, when a rule has a time
    window, until the next minute starts (windows are in whole minutes, so
    no decision changes in between).
    """

    # Decisions kept at most; all are forgotten when one more would not fit.
    CACHE_SIZE = 4096

    def __init__(self, section: PolicySection, clock, walls=None, fail_closed_parties=()):
        self._clock = clock
        self.walls = walls  # a `gateway.compliance.walls.Walls`, checked before the rules
        self.rooms = None  # `gateway.rooms.Rooms`: asked first about events to rooms
        self._strict_parties = tuple(_matcher(m) for m in fail_closed_parties)
        self.load(section)

    def load(self, section: PolicySection) -> None:
        """Replace the rules (on SIGHUP); sessions and events in flight are untouched."""
        self.section = section
        self.timezone = zoneinfo.ZoneInfo(section.timezone)
        self.rules = tuple(Rule.compile(r) for r in section.rules)
        self._strict_rules = frozenset(r.name for r in section.rules if r.fail_closed)
        if section.default == "allow":
            self._default = Verdict.allow(rule="default", reason="allowed by default")
        else:
            self._default = Verdict.deny("denied by default policy", rule="default")
        self._timed = any(rule.weekdays or rule.config.hours for rule in self.rules)
        self._decisions = {}
        self._minute = None  # with time windows: the minute the decisions kept were made in

    def _now(self):
        return datetime.datetime.fromtimestamp(self._clock.seconds(), self.timezone)

    def check(self, kind, sender: Side, recipient: Side) -> Verdict:
        if not self.rules:
            return self._default  # nothing to decide, nothing to keep
        decisions = self._decisions
        if self._timed:
            minute = self._clock.seconds() // 60
            if minute != self._minute:
                decisions.clear()
                self._minute = minute
        # Addresses and people hash once each (their hashes are cached); a Side is made per event.
        key = (kind, sender.address, sender.identity, recipient.address, recipient.identity)
        verdict = decisions.get(key)
        if verdict is None:
            verdict = self._decide(kind, sender, recipient)
            if len(decisions) >= self.CACHE_SIZE:
                decisions.clear()
            decisions[key] = verdict
        return verdict

    def _decide(self, kind, sender: Side, recipient: Side) -> Verdict:
        for rule in self.rules:
            if rule.matches(kind, sender, recipient, self._now):
                return rule.verdict()
        return self._default

    def fail_closed(self, event, route, verdict) -> bool:
        """
        Whether ``event`` (allowed by ``verdict``) must be in the database
        before anyone sees it: the rule that allowed it says so, or one of
        its sides matches ``[archive] fail_closed_parties``.
        """
        if verdict.rule in self._strict_rules:
            return True
        if not self._strict_parties:
            return False
        for side in (Side(event.sender, route.sender), Side(event.recipient, route.recipient)):
            if side.address is not None and any(match(side) for match in self._strict_parties):
                return True
        return False

    def check_route(self, event, route) -> Verdict:
        """
        The verdict on ``event`` whose two sides ``route`` resolved
        (``route.sender``, ``route.recipient``): an ethical wall's first,
        then the rules'.
        """
        sender, recipient = Side(event.sender, route.sender), Side(event.recipient, route.recipient)
        if event.kind == "chat" and self.rooms is not None and event.recipient.network in self.rooms.networks:
            refused = self.rooms.check(event, sender)  # the room's own rules, and walls against its members
            if refused is not None:
                return refused
        if self.walls is not None and self.walls.walls:
            walled = self.walls.check(event, sender, recipient)
            if walled is not None:
                return walled
        return self.check(event.kind, sender, recipient)
