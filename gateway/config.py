"""The TOML configuration file, read into validated attrs values."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Optional

import attrs

from gateway.model import Address, AddressError

__all__ = ["ConfigError", "Config", "load", "loads", "RuleConfig", "RetentionConfig", "WallConfig", "NoticeConfig"]

KINDS = ("im", "presence", "typing", "chat", "file", "info")
DIRECTIONS = ("any", "internal", "inbound", "outbound", "external")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(Exception):
    """A configuration problem: names the file, the key, its line and what was expected."""

    def __init__(self, message, path=None, key=None, line=None):
        self.path, self.key, self.line = path, key, line
        where = ""
        if path:
            where = f"{path}"
            if line:
                where += f", line {line}"
            where += ": "
        if key:
            where += f"[{key}] " if "." not in key else f"{key}: "
        super().__init__(f"{where}{message}")


def _opt(default, kind, doc="", choices=None, check=None):
    return attrs.field(
        default=default,
        metadata={"kind": kind, "doc": doc, "choices": choices, "check": check},
    )


def _time_zone(value):
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "a time zone name such as 'UTC' or 'Europe/Berlin'"
    return None


def _positive(value):
    if value <= 0:
        return "a number greater than 0"
    return None


def _not_negative(value):
    if value < 0:
        return "a number of 0 or more"
    return None


@attrs.frozen
class GatewaySection:
    """``[gateway]``: this node."""

    node: str = _opt("node1", str, "name of this node (cluster member)")
    data_dir: str = _opt("var", str, "folder for SQLite files and the spool, relative to the config file")


@attrs.frozen
class DatabaseSection:
    """``[database]``: the SQL database for the archive, offline store and directory."""

    url: str = _opt("", str, "SQLAlchemy URL; default sqlite under data_dir")


@attrs.frozen
class RetentionConfig:
    """One ``[[archive.retention]]``: rows of these kinds and parties are kept ``days``, then purged."""

    name: str
    days: float
    kinds: tuple = ()  # () for every kind
    parties: tuple = ("*",)  # policy matchers; a row matches when its sender or recipient does


@attrs.frozen
class WallConfig:
    """One ``[[compliance.wall]]``: no traffic between people matching ``left`` and people matching ``right``."""

    name: str
    left: tuple
    right: tuple
    notice: str
    kinds: tuple = ()  # () for every kind


@attrs.frozen
class NoticeConfig:
    """One ``[[compliance.notice]]``: ``text`` shown to both parties of a matching conversation, once a ``period``."""

    name: str
    text: str
    parties: tuple = ("*",)
    direction: str = "any"
    period: float = 24.0  # hours


@attrs.frozen
class ComplianceSection:
    """``[compliance]``: ethical walls (``[[compliance.wall]]``) and notices (``[[compliance.notice]]``)."""

    walls: tuple = attrs.field(default=(), metadata={"kind": "walls"})
    notices: tuple = attrs.field(default=(), metadata={"kind": "walls"})


@attrs.frozen
class ArchiveSection:
    """``[archive]``: how events are recorded."""

    fail_closed: bool = _opt(
        False, bool, "deliver only after the archive database has the row (reject while it is down)"
    )
    durable: bool = _opt(
        True, bool, "deliver only after the row is durable in the database or the fsynced spool"
    )
    capture: str = _opt(
        "off", str, "native: keep each event's bytes as received and each rendering as sent",
        choices=("off", "native"),
    )
    writer: str = _opt(
        "process", str, "where the SQL work runs: a child process (two cores), or a thread of the gateway's",
        choices=("process", "thread"),
    )
    journal: bool = _opt(
        True, bool, "the writer process acknowledges rows once fsync'd to its journal, before their SQL commit",
    )
    batch_size: int = _opt(500, int, "rows per transaction", check=_positive)
    batch_wait: float = _opt(
        0.002, float, "seconds the writer waits after a row for more to join its transaction (0: no wait)",
        check=_not_negative,
    )
    queue_max: int = _opt(100_000, int, "records waiting before spilling to the spool", check=_positive)
    retry_interval: float = _opt(2.0, float, "seconds between retries while the database is down", check=_positive)
    spool_dir: str = _opt("spool", str, "durable local spool, relative to data_dir")
    spool_max_mb: int = _opt(
        1024, int, "megabytes the spool may take while the database is down (0: no bound); past it, "
        "events that cannot be recorded are not delivered", check=_not_negative,
    )
    presence: bool = _opt(True, bool, "record presence changes")
    typing: bool = _opt(False, bool, "record typing notifications")
    unrecorded: str = _opt(
        "reject", str, "an event that is not fail-closed and that the archive can neither commit nor spool (a "
        "full spool): reject it, or deliver it without a record (logged critical, counted)",
        choices=("reject", "deliver"),
    )
    fail_closed_parties: tuple = _opt(
        (), list, "policy matchers (e.g. \"domain:partner.example\", \"network:xmpp\"): events from or to "
        "them are fail-closed (and durable) whatever fail_closed says", check=lambda items: _matchers(items),
    )
    chain: bool = _opt(
        True, bool, "link every archived row into this node's hash chain, so that gatewayctl archive verify "
        "finds any row edited, inserted, deleted or reordered since",
    )
    signing_key: str = _opt(
        "archive-signing.key", str, "the node's Ed25519 key that signs chain checkpoints (PEM; made on the "
        "first start), relative to data_dir",
    )
    checkpoint_rows: int = _opt(10_000, int, "chain entries between two signed checkpoints", check=_positive)
    checkpoint_interval: float = _opt(
        60.0, float, "seconds between two signed checkpoints while rows are written", check=_positive
    )
    checkpoint_file: str = _opt(
        "archive-checkpoints.jsonl", str, "a copy of every checkpoint, appended as a JSON line (relative to "
        "data_dir; point it outside the database's disk, or \"\" for none)",
    )
    purge_interval: float = _opt(
        24.0, float, "hours between two purges of expired rows in the running gateway (0: only gatewayctl "
        "archive purge)", check=_not_negative,
    )
    retention: tuple = attrs.field(default=(), metadata={"kind": "retention"})


def _matchers(items):
    for item in items:
        problem = matcher_problem(item)
        if problem:
            return f"policy matchers ({problem})"
    return None


def _ldap_url(value):
    if not value.startswith(("ldap://", "ldaps://")):
        return "an ldap:// or ldaps:// URL"
    return None


def _membership(value):
    if value not in ("member", "uniqueMember", "memberUid", "memberOf"):
        return "one of 'member', 'uniqueMember', 'memberUid', 'memberOf'"
    return None


@attrs.frozen
class LDAPSection:
    """``[directory.ldap]``: people, groups and passwords from an LDAP server."""

    url: str = _opt("ldap://127.0.0.1:389", str, "ldap://HOST:PORT or ldaps://HOST:PORT", check=_ldap_url)
    starttls: bool = _opt(False, bool, "upgrade ldap:// with StartTLS")
    ca_file: str = _opt("", str, "CA certificates (PEM) that sign the server's; empty: the system's")
    bind_dn: str = _opt("", str, "the gateway's service account; empty: anonymous")
    bind_password: str = _opt("", str, "its password")
    people_base: str = _opt("", str, "where people are (e.g. ou=people,dc=example,dc=com)")
    people_filter: str = _opt("(objectClass=inetOrgPerson)", str, "which entries are people")
    id_attribute: str = _opt("uid", str, "the attribute holding a person's id")
    name_attribute: str = _opt("cn", str, "the attribute holding a display name")
    handles: dict = _opt({}, dict, "network -> attribute holding the handle there, e.g. { xmpp = \"mail\" }")
    groups_base: str = _opt("", str, "where groups are; empty: no groups")
    groups_filter: str = _opt(
        "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
        str, "which entries are groups",
    )
    group_name_attribute: str = _opt("cn", str, "the attribute holding a group's name")
    membership: str = _opt("member", str, "how members are listed", check=_membership)
    timeout: float = _opt(5.0, float, "seconds an LDAP operation may take", check=_positive)
    negative_ttl: float = _opt(5.0, float, "seconds a 'no such person' answer is cached", check=_positive)
    password_attribute: str = _opt(
        "", str,
        "empty: check passwords by binding as the person; else compare with this attribute's hash "
        "({SSHA}, {SSHA256/384/512}, {SHA...}, {SMD5}, {MD5} or cleartext), read with the service account",
    )
    learn_secrets: bool = _opt(
        True, bool,
        "keep the login secrets of OSCAR MD5, SIP digest and SCRAM, derived from a password LDAP accepted, "
        "so clients that never send the password can log in",
    )
    learned_secrets_max_age: float = _opt(
        30 * 86400.0, float, "seconds learned secrets stay usable after the last login that sent the password",
        check=_positive,
    )


@attrs.frozen
class DirectorySection:
    """``[directory]``: where people, handles and groups come from."""

    backend: str = _opt("sql", str, "directory backend", choices=("sql", "ldap"))
    cache_size: int = _opt(10_000, int, "cached look-ups", check=_positive)
    cache_ttl: float = _opt(60.0, float, "seconds a look-up is cached", check=_positive)
    demo_users: bool = _opt(False, bool, "create alice, bob and carol (password 'secret') when empty; demo only")
    demo_networks: tuple = _opt(
        ("aim", "icq", "sametime", "sip@localhost", "xmpp@localhost"), list,
        "networks the demo users also get handles on when no connector serves them, as NETWORK or "
        "NETWORK@DOMAIN (a connector's own domain wins for its networks)",
    )
    login_failures: int = _opt(
        5, int, "failed logins for one account from one address before that address is refused for it",
        check=_positive,
    )
    login_failures_per_source: int = _opt(
        100, int,
        "failed logins from one address (any account) before it is refused for accounts that have not logged in "
        "from it lately", check=_positive,
    )
    login_failures_per_account: int = _opt(
        100, int,
        "failed logins for one account from anywhere before it is refused from addresses it has not logged in "
        "from lately (0: no such limit)",
        check=_not_negative,
    )
    login_window: float = _opt(300.0, float, "seconds in which failures are counted, and the lock-out", check=_positive)
    login_queue_per_source: int = _opt(
        4, int, "password checks that may wait per source address; more are refused at once", check=_positive
    )
    login_queue: int = _opt(256, int, "password checks that may wait in all", check=_positive)
    ldap: LDAPSection = attrs.field(default=LDAPSection(), metadata={"kind": LDAPSection})


@attrs.frozen
class RuleConfig:
    """One ``[[policy.rule]]``."""

    name: str
    action: str
    senders: tuple = ("*",)
    recipients: tuple = ("*",)
    kinds: tuple = KINDS
    direction: str = "any"
    days: tuple = ()
    hours: Optional[tuple] = None  # (start_minute, end_minute)
    reason: str = ""
    fail_closed: bool = False  # an event this rule allows is delivered only once the database has its row


@attrs.frozen
class PolicySection:
    """``[policy]``: built-in rules, then hook plugins."""

    default: str = _opt("allow", str, "decision when no rule matches", choices=("allow", "deny"))
    hook_timeout: float = _opt(5.0, float, "seconds a policy hook may take", check=_positive)
    timezone: str = _opt("UTC", str, "time zone of rule hours and days", check=_time_zone)
    rules: tuple = attrs.field(default=(), metadata={"kind": "rules"})


@attrs.frozen
class AdminSection:
    """``[admin]``: /metrics and /status over HTTP."""

    listen: str = _opt("tcp:8080:interface=127.0.0.1", str, "endpoint string; empty to disable")
    token: str = _opt("", str, "the admin API's bearer token; empty: token_file, else DATA_DIR/admin-token (made at start)")
    token_file: str = _opt("", str, "a file holding the token, relative to the config file")
    metrics_public: bool = _opt(True, bool, "/metrics needs no token when the listener is on loopback")


@attrs.frozen
class PluginsSection:
    """``[plugins]``: which entry-point plugins not to load, one-off plugin files, tracing."""

    disabled: tuple = _opt((), list, "plugin (entry point) names not to load")
    paths: tuple = _opt((), list, "plugin modules to load from files (.py), relative to the config file")
    trace: bool = _opt(False, bool, "log every hook call: plugin, arguments, answer or error, time (also GATEWAY_TRACE_HOOKS=1)")


@attrs.frozen
class OfflineSection:
    """``[offline]``: messages for people who are not online."""

    enabled: bool = _opt(True, bool, "store messages for offline people")
    max_per_person: int = _opt(1000, int, "held messages per person", check=_positive)


@attrs.frozen
class RoomsSection:
    """``[rooms]``: group chat (`gateway.rooms`)."""

    ad_hoc: bool = _opt(True, bool, "a join to a room nobody made makes it (it ends with its last member)")
    max_rooms: int = _opt(1000, int, "rooms at once", check=_positive)
    max_members: int = _opt(200, int, "members of one room", check=_positive)
    max_subject: int = _opt(512, int, "characters of a subject", check=_positive)
    history: int = _opt(20, int, "recent messages shown to someone who joins (0: none)", check=_not_negative)
    joins_per_minute: int = _opt(30, int, "joins one address may make a minute", check=_positive)


def _redis_url(value):
    if not value:
        return None
    from gateway.cluster.redis import parse_url

    try:
        parse_url(value)
    except ValueError:
        return "empty, or a URL such as redis://127.0.0.1:6379/0"
    return None


@attrs.frozen
class ClusterSection:
    """``[cluster]``: several nodes sharing Redis (and PostgreSQL); empty ``redis`` is one node on its own."""

    redis: str = _opt("", str, "redis://HOST:PORT/DB of the cluster's registry; empty: no cluster", check=_redis_url)
    heartbeat: float = _opt(3.0, float, "seconds after its last beat that a node counts as gone", check=_positive)
    max_sessions: int = _opt(0, int, "sessions this node takes, told to the registry as its capacity; 0: no limit",
                             check=_not_negative)
    prefix: str = _opt("gw", str, "the first part of every Redis key and channel of this cluster")
    advertise: str = _opt("", str, "the host name clients reach this node by, for redirects (default: the "
                                   "listener's interface)")
    secret_file: str = _opt("", str, "file of the secret every node of the cluster signs what it hands another "
                                     "with (the same file on each; 'gatewayctl node secret FILE' makes one), "
                                     "relative to the config file; needed with redis")


@attrs.frozen
class Config:
    path: str
    base_dir: str
    gateway: GatewaySection = GatewaySection()
    database: DatabaseSection = DatabaseSection()
    archive: ArchiveSection = ArchiveSection()
    directory: DirectorySection = DirectorySection()
    policy: PolicySection = PolicySection()
    admin: AdminSection = AdminSection()
    plugins: PluginsSection = PluginsSection()
    offline: OfflineSection = OfflineSection()
    rooms: RoomsSection = RoomsSection()
    compliance: ComplianceSection = ComplianceSection()
    cluster: ClusterSection = ClusterSection()
    connectors: dict = attrs.field(factory=dict)
    plugin: dict = attrs.field(factory=dict)

    def resolve(self, path: str) -> str:
        """``path`` relative to the config file's folder (absolute paths stay)."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path)))

    @property
    def data_dir(self) -> str:
        return self.resolve(self.gateway.data_dir)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return "sqlite:///" + os.path.join(self.data_dir, "gateway.sqlite")

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.data_dir, self.archive.spool_dir)

    @property
    def chain_options(self) -> dict:
        """What the archive writer needs for the hash chain (``{}`` when it is off)."""
        archive = self.archive
        if not archive.chain:
            return {}
        return {
            "signing_key": os.path.join(self.data_dir, archive.signing_key),
            "checkpoint_rows": archive.checkpoint_rows,
            "checkpoint_interval": archive.checkpoint_interval,
            "checkpoint_file": os.path.join(self.data_dir, archive.checkpoint_file) if archive.checkpoint_file else "",
        }


_SECTIONS = {
    "compliance": ComplianceSection,
    "gateway": GatewaySection,
    "database": DatabaseSection,
    "archive": ArchiveSection,
    "directory": DirectorySection,
    "policy": PolicySection,
    "admin": AdminSection,
    "plugins": PluginsSection,
    "offline": OfflineSection,
    "rooms": RoomsSection,
    "cluster": ClusterSection,
}
_TYPE_NAMES = {
    str: "text", bool: "true or false", int: "a whole number", float: "a number", list: "a list",
    dict: "a table of text",
}


class _Reader:
    """Validates parsed TOML against the section classes, knowing the source text for line numbers."""

    def __init__(self, path, text):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, section, key=None):
        """Best-effort line number of ``key`` in ``[section]`` (or of the section header)."""
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
        in_section = False
        found_header = None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if header.match(stripped):
                in_section = True
                found_header = found_header or number
                if key is None:
                    return number
                continue
            if stripped.startswith("["):
                in_section = False
                continue
            if in_section and key is not None and re.match(
                r"^" + re.escape(key) + r"\s*=", stripped
            ):
                return number
        return found_header

    def error(self, message, section, key=None):
        name = f"{section}.{key}" if key else section
        raise ConfigError(message, self.path, name, self.line_of(section, key))

    def value(self, section, key, raw, field):
        meta = field.metadata
        kind = meta["kind"]
        expected = _TYPE_NAMES.get(kind, str(kind))
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if kind is list:
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                self.error(f"expected a list of text, got {raw!r}", section, key)
            wanted = meta["check"](raw) if meta["check"] else None
            if wanted:
                self.error(f"expected {wanted}, got {raw!r}", section, key)
            return tuple(raw)
        if kind is dict:
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                self.error(f"expected a table of text values, got {raw!r}", section, key)
            return dict(raw)
        if attrs.has(kind):
            return self.section(f"{section}.{key}", kind, raw)
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            self.error(f"expected {expected}, got {raw!r}", section, key)
        if meta["choices"] and raw not in meta["choices"]:
            self.error(
                f"expected one of {', '.join(map(repr, meta['choices']))}, got {raw!r}",
                section,
                key,
            )
        if meta["check"]:
            wanted = meta["check"](raw)
            if wanted:
                self.error(f"expected {wanted}, got {raw!r}", section, key)
        return raw

    def section(self, name, cls, table):
        if not isinstance(table, dict):
            self.error("expected a table", name)
        fields = {f.name: f for f in attrs.fields(cls)}
        if cls is DirectorySection and table.get("backend") == "ldap":
            ldap = table.get("ldap")
            if not isinstance(ldap, dict) or not ldap.get("people_base"):
                self.error("backend 'ldap' needs [directory.ldap] with people_base", name, "backend")
        values = {}
        for key, raw in table.items():
            field = fields.get(key)
            if key == "rule" and cls is PolicySection:
                values["rules"] = self.rules(raw)
                continue
            if key == "retention" and cls is ArchiveSection:
                values["retention"] = self.retention(raw)
                continue
            if key == "wall" and cls is ComplianceSection:
                values["walls"] = self.walls(raw)
                continue
            if key == "notice" and cls is ComplianceSection:
                values["notices"] = self.notices(raw)
                continue
            if field is None or isinstance(field.metadata.get("kind"), str):  # tables read apart: rules, walls...
                known = ", ".join(k for k, f in fields.items() if not isinstance(f.metadata.get("kind"), str))
                self.error(f"unknown key {key!r}; known keys: {known}", name, key)
            values[key] = self.value(name, key, raw, field)
        return cls(**values)

    def rules(self, raw):
        if not isinstance(raw, list):
            self.error("expected [[policy.rule]] tables", "policy.rule")
        rules = []
        for index, table in enumerate(raw):
            rules.append(self.rule(index, table))
        names = [r.name for r in rules]
        for name in names:
            if names.count(name) > 1:
                self.error(f"two rules are named {name!r}", "policy.rule", "name")
        return tuple(rules)

    def _named_tables(self, raw, where, label, known):
        """``(name, table)`` of each ``[[where]]`` table: a list of tables with only ``known`` keys, named once."""
        if not isinstance(raw, list):
            self.error(f"expected [[{where}]] tables", where)
        found = []
        for index, table in enumerate(raw):
            if not isinstance(table, dict):
                self.error("expected a table", where)
            for key in table:
                if key not in known:
                    self.error(f"unknown key {key!r} in {label} {index + 1}; known keys: {', '.join(known)}",
                               where, key)
            name = table.get("name", f"{label}-{index + 1}")
            if not isinstance(name, str) or not name:
                self.error(f"{label} {index + 1}: name must be text", where, "name")
            if name in [n for n, _ in found]:
                self.error(f"two {label}s are named {name!r}", where, "name")
            found.append((name, table))
        return found

    def _kinds(self, table, where, label, name, allowed=KINDS):
        kinds = table.get("kinds", [])
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not set(kinds) <= set(allowed):
            self.error(f"{label} {name!r}: kinds must be a list of {', '.join(allowed)}; got {kinds!r}", where,
                       "kinds")
        return tuple(kinds)

    def _parties(self, table, where, label, name):
        """A table's ``parties``: policy matchers (one as text, or a list), ``("*",)`` when absent."""
        parties = table.get("parties", ["*"])
        if isinstance(parties, str):
            parties = [parties]
        if not isinstance(parties, list) or not parties:
            self.error(f"{label} {name!r}: expected a list of matchers", where, "parties")
        for item in parties:
            problem = matcher_problem(item)
            if problem:
                self.error(f"{label} {name!r}: {problem}", where, "parties")
        return tuple(parties)

    def walls(self, raw):
        where = "compliance.wall"
        found = []
        for name, table in self._named_tables(raw, where, "wall", ("name", "between", "notice", "kinds")):
            between = table.get("between")
            if (not isinstance(between, list) or len(between) != 2
                    or not all(isinstance(side, (str, list)) and side for side in between)):
                self.error(f'wall {name!r}: between must name its two sides, e.g. ["group:traders", '
                           f'"group:research"], got {between!r}', where, "between")
            sides = [tuple([side] if isinstance(side, str) else side) for side in between]
            for side in sides:
                for item in side:
                    problem = matcher_problem(item)
                    if problem or item == "*":
                        self.error(f"wall {name!r}: {problem or 'a side cannot be everyone'}", where, "between")
            notice = table.get("notice", f"an ethical wall ({name}) stands between you")
            if not isinstance(notice, str) or not notice:
                self.error(f"wall {name!r}: notice must be text", where, "notice")
            found.append(WallConfig(name, sides[0], sides[1], notice, self._kinds(table, where, "wall", name)))
        return tuple(found)

    def notices(self, raw):
        where = "compliance.notice"
        found = []
        for name, table in self._named_tables(raw, where, "notice", ("name", "text", "parties", "direction",
                                                                      "period")):
            text = table.get("text")
            if not isinstance(text, str) or not text.strip():
                self.error(f"notice {name!r}: text must be some text", where, "text")
            parties = self._parties(table, where, "notice", name)
            direction = table.get("direction", "any")
            if direction not in DIRECTIONS:
                self.error(f"notice {name!r}: direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}",
                           where, "direction")
            period = table.get("period", 24)
            if isinstance(period, bool) or not isinstance(period, (int, float)) or period <= 0:
                self.error(f"notice {name!r}: period must be hours greater than 0, got {period!r}", where, "period")
            found.append(NoticeConfig(name, text, parties, direction, float(period)))
        return tuple(found)

    def retention(self, raw):
        where = "archive.retention"
        found = []
        for name, table in self._named_tables(raw, where, "retention", ("name", "days", "kinds", "parties")):
            days = table.get("days")
            if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
                self.error(f"retention {name!r}: days must be a number greater than 0, got {days!r}", where, "days")
            kinds = self._kinds(table, where, "retention", name, KINDS + ("access", "admin"))
            found.append(RetentionConfig(name, float(days), kinds, self._parties(table, where, "retention", name)))
        return tuple(found)

    def rule(self, index, table):
        where = "policy.rule"
        known = ("name", "action", "from", "to", "kinds", "direction", "days", "hours", "reason", "fail_closed")
        for key in table:
            if key not in known:
                self.error(f"unknown key {key!r} in rule {index + 1}; known keys: {', '.join(known)}", where, key)
        action = table.get("action")
        if action not in ("allow", "deny"):
            self.error(f"rule {index + 1}: expected action 'allow' or 'deny', got {action!r}", where, "action")
        name = table.get("name", f"rule-{index + 1}")
        if not isinstance(name, str) or not name:
            self.error(f"rule {index + 1}: name must be text", where, "name")

        def matchers(key):
            raw = table.get(key, ["*"])
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not raw:
                self.error(f"rule {name!r}: expected a list of matchers", where, key)
            for item in raw:
                problem = matcher_problem(item)
                if problem:
                    self.error(f"rule {name!r}: {problem}", where, key)
            return tuple(raw)

        kinds = table.get("kinds", list(KINDS))
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not set(kinds) <= set(KINDS) or not kinds:
            self.error(f"rule {name!r}: kinds must be a list of {', '.join(KINDS)}; got {kinds!r}", where, "kinds")
        direction = table.get("direction", "any")
        if direction not in DIRECTIONS:
            self.error(f"rule {name!r}: direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}", where, "direction")
        days = table.get("days", [])
        if isinstance(days, str):
            days = [days]
        if not isinstance(days, list) or not set(d.lower() for d in days) <= set(DAYS):
            self.error(f"rule {name!r}: days must be a list of {', '.join(DAYS)}; got {days!r}", where, "days")
        hours = table.get("hours")
        if hours is not None:
            hours = parse_hours(hours)
            if hours is None:
                self.error(f"rule {name!r}: hours must look like \"09:00-17:30\"; got {table['hours']!r}", where, "hours")
        reason = table.get("reason", "")
        if not isinstance(reason, str):
            self.error(f"rule {name!r}: reason must be text", where, "reason")
        fail_closed = table.get("fail_closed", False)
        if not isinstance(fail_closed, bool):
            self.error(f"rule {name!r}: fail_closed must be true or false", where, "fail_closed")
        return RuleConfig(
            name=name,
            action=action,
            senders=matchers("from"),
            recipients=matchers("to"),
            kinds=tuple(kinds),
            direction=direction,
            days=tuple(d.lower() for d in days),
            hours=hours,
            reason=reason,
            fail_closed=fail_closed,
        )


MATCHER_PREFIXES = ("user", "group", "domain", "network")


def matcher_problem(item) -> Optional[str]:
    """Why ``item`` is not a valid policy matcher, or None when it is."""
    if not isinstance(item, str):
        return f"a matcher is text, not {item!r}"
    if item == "*":
        return None
    prefix, sep, rest = item.partition(":")
    if not sep:
        return (
            f"matcher {item!r} needs a prefix: user:ID, group:NAME, domain:NAME, "
            "network:NAME, or an address such as aim:alice"
        )
    if prefix in MATCHER_PREFIXES:
        return None if rest else f"matcher {item!r} names nothing after {prefix}:"
    try:
        Address.parse(item)
    except AddressError as e:
        return f"matcher {item!r} is not an address: {e}"
    return None


def parse_hours(text) -> Optional[tuple]:
    """``"09:00-17:30"`` -> (540, 1050) minutes; None when malformed. May wrap midnight."""
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        return None
    h1, m1, h2, m2 = map(int, m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        return None
    return (h1 * 60 + m1, h2 * 60 + m2)


def loads(text: str, path: str = "<config>", base_dir: Optional[str] = None) -> Config:
    """Read configuration text; raise `ConfigError` naming the key and line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path) from None
    reader = _Reader(path, text)
    values: dict[str, Any] = {}
    for key, table in data.items():
        if key in _SECTIONS:
            values[key] = reader.section(key, _SECTIONS[key], table)
        elif key == "connectors":
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                reader.error("expected [connectors.NAME] tables", "connectors")
            values["connectors"] = {name: dict(t) for name, t in table.items()}
        elif key == "plugin":
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                reader.error("expected [plugin.NAME] tables", "plugin")
            values["plugin"] = {name: dict(t) for name, t in table.items()}
        else:
            known = ", ".join(list(_SECTIONS) + ["connectors", "plugin"])
            raise ConfigError(
                f"unknown section [{key}]; known sections: {known}",
                path,
                key,
                reader.line_of(key),
            )
    cluster = values.get("cluster")
    if cluster is not None and cluster.redis and not cluster.secret_file:
        reader.error("a cluster needs the file of its shared secret (make it once with 'gatewayctl node secret "
                     "FILE' and give every node the same)", "cluster", "secret_file")
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(path)) if path != "<config>" else os.getcwd()
    return Config(path=path, base_dir=base_dir, **values)


def load(path: str) -> Config:
    """Read the configuration file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file: {e.strerror}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("the configuration file is not UTF-8 text", path) from None
    return loads(text, path)


def connector_option(name, table, key, kind, default, path="<config>"):
    """
    One option from a ``[connectors.NAME]`` table, type-checked.

    For connector plugins: ``connector_option("oscar", config, "listen",
    list, ["tcp:5190"])``. Raises `ConfigError` naming the key.
    """
    value = table.get(key, default)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"expected {_TYPE_NAMES.get(kind, kind)}, got {value!r}",
            path,
            f"connectors.{name}.{key}",
        )
    return value
