"""gatewayctl: the administrator's command line (archive, users, groups, policy, database)."""

from __future__ import annotations

import argparse
import base64
import datetime
import getpass
import json
import os
import re
import sys
import time

from gateway import __version__
from gateway import config as config_module
from gateway.config import ConfigError
from gateway.storage.db import DatabaseError
from gateway.model import Address, AddressError
from gateway.ops.errors import CommandError, Failed

DEFAULT_CONFIG = "gateway.toml"



def parse_time(text: str) -> float:
    """``2026-11-22``, ``2026-11-22T10:00``, or a span back from now: ``90m``, ``12h``, ``7d``."""
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if m:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - seconds
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(
            f"{text!r} is not a time: use 2026-11-22, 2026-11-22T10:30, or 90m / 12h / 7d ago"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.timestamp()


def parse_address(text: str) -> Address:
    try:
        return Address.parse(text)
    except AddressError as e:
        raise CommandError(str(e)) from None


class Context:
    """Opens the config and the database lazily, for the command that needs them."""

    def __init__(self, config_path):
        self.config_path = config_path
        self._config = None
        self._engine = None

    @property
    def config(self):
        if self._config is None:
            if self.config_path is None:
                if os.path.exists(DEFAULT_CONFIG):
                    self.config_path = DEFAULT_CONFIG
                else:
                    self._config = config_module.loads("", "<defaults>", base_dir=os.getcwd())
                    return self._config
            self._config = config_module.load(self.config_path)
        return self._config

    @property
    def engine(self):
        if self._engine is None:
            from gateway.storage.db import create_engine, migrate

            self._engine = create_engine(self.config.database_url)
            migrate(self._engine)
        return self._engine

    def directory(self):
        from gateway.directory.sql import DirectoryStore

        return DirectoryStore(self.engine)

    def archive(self):
        from gateway.storage.archive.store import ArchiveStore

        return ArchiveStore(self.engine, node=self.config.gateway.node)

    def ldap(self):
        """The LDAP directory of the config, or None when the backend is SQL."""
        if self.config.directory.backend != "ldap":
            return None
        from twisted.internet import reactor

        from gateway.storage.dbthread import DatabaseThread
        from gateway.service import make_directory

        return make_directory(self.config, self.directory(), DatabaseThread(reactor), reactor)

    def people(self):
        ldap = self.ldap()
        if ldap is None:
            return self.directory().list_people()
        return run_sync(ldap.list_people, ldap)

    def identities_for(self, addresses):
        """The `Identity` (or None) of each address, in one pass (the reactor runs once)."""
        ldap = self.ldap()
        if ldap is None:
            return [self.directory().identity_for(a) for a in addresses]
        from twisted.internet.defer import gatherResults

        return run_sync(lambda: gatherResults([ldap.identity_for(a) for a in addresses], consumeErrors=True), ldap)


def run_sync(fn, directory, *args):
    """Run ``fn(*args)`` (a Deferred) to its end on the reactor; the CLI's one use of it."""
    from twisted.internet import reactor
    from twisted.internet.defer import FirstError, maybeDeferred
    from twisted.python.failure import Failure

    from gateway.interfaces import DirectoryUnavailable

    result = []

    def go():
        directory.start()
        d = maybeDeferred(fn, *args)
        d.addBoth(result.append)
        d.addBoth(lambda _: directory.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    value = result[0]
    if isinstance(value, Failure):
        if value.check(FirstError):
            value = value.value.subFailure
        if value.check(DirectoryUnavailable):
            raise CommandError(value.getErrorMessage())
        value.raiseException()
    return value



# -- archive ---------------------------------------------------------------


def _filters(args) -> dict:
    return {
        "user": args.user,
        "peer": args.peer,
        "since": parse_time(args.since) if args.since else None,
        "until": parse_time(args.until) if args.until else None,
        "text": args.text,
        "kind": args.kind,
        "room": args.room,
    }


def cmd_archive_search(ctx, args, out):
    from gateway.storage.archive.export import format_table, to_json

    events = ctx.archive().search(limit=args.limit, **_filters(args))
    if args.json:
        out.write(to_json(events) + "\n")
    else:
        out.write(format_table(events) + "\n")
        out.write(f"{len(events)} event(s)\n")


def cmd_archive_export(ctx, args, out):
    from gateway.storage.archive.export import ProgressBar, export

    store = ctx.archive()
    filters = _filters(args)
    progress = None
    if args.progress or sys.stderr.isatty():
        progress = ProgressBar(sys.stderr, store.count(**filters))
    if args.format in ("eml", "html"):
        from gateway.compliance.discovery import export_conversations

        manifest = export_conversations(store, args.output, args.format, filters, progress=progress)
        out.write(f"exported {manifest['events']} event(s) in {len(manifest['files'])} conversation-day(s) "
                  f"to {args.output}/ (manifest.json)\n")
        return
    written = export(store, args.output, args.format, filters, progress=progress)
    out.write(f"exported {written} event(s) to {args.output}\n")


def cmd_archive_show(ctx, args, out):
    shown = ctx.archive().show(args.id)
    if shown is None:
        raise CommandError(f"no archived event {args.id}")
    event = shown["event"]
    if args.json:
        out.write(json.dumps({
            "event": shown["data"],
            "status": event.status, "allowed": event.allowed, "reason": event.reason, "rule": event.rule,
            "code": event.code, "node": event.node,
            "original": json.loads(event.original) if event.original else None,
            "transforms": event.transforms.split(",") if event.transforms else [],
            "deliveries": [dict(status=s, where=w, at=a) for s, w, a in shown["deliveries"]],
            "captures": [
                dict(direction=d, network=n, at=a, bytes=base64.b64encode(b).decode(), notes=notes)
                for d, n, a, b, notes in shown["captures"]
            ],
        }, indent=2, ensure_ascii=False) + "\n")
        return
    out.write(f"event {event.id} ({event.kind}) at {_when(event.created)}\n")
    for name, value in shown["data"].items():
        if name not in ("id", "kind", "created"):
            out.write(f"  {name}: {value!r}\n")
    if event.transforms:
        out.write(f"transformed by: {', '.join(event.transforms.split(','))}; as its sender sent it:\n")
        for name, value in json.loads(event.original).items():
            if name not in ("id", "kind", "created"):
                out.write(f"  {name}: {value!r}\n")
    out.write(f"decision: {'allowed' if event.allowed else 'denied'}"
              f"{' by ' + event.rule if event.rule else ''}: {event.reason}\n")
    out.write(f"status: {event.status}{' (' + event.code + ')' if event.code else ''} on node {event.node}\n")
    for status, where, at in shown["deliveries"]:
        out.write(f"  {status} at {where}, {_when(at)}\n")
    if not shown["captures"]:
        out.write("native capture: none kept (see [archive] capture)\n")
    for direction, network, at, data, notes in shown["captures"]:
        out.write(f"{direction} {'from' if direction == 'received' else 'to'} {network}, {_when(at)}"
                  f"{', lost: ' + ', '.join(notes) if notes else ''}, {len(data)} bytes:\n")
        for start in range(0, len(data), 16):
            chunk = data[start:start + 16]
            shown_text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            out.write(f"  {start:06x}  {chunk.hex(' '):<47}  {shown_text}\n")


def _when(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


def cmd_archive_verify(ctx, args, out):
    """The rows against the hash chain, the chain against its checkpoints (in the database and outside)."""
    from gateway.compliance import keys
    from gateway.compliance.verify import verify

    options = ctx.config.chain_options
    outside_path = args.checkpoints or options.get("checkpoint_file") or ""
    outside = []
    if outside_path:
        try:
            with open(outside_path, encoding="utf-8") as f:
                outside = f.readlines()
        except FileNotFoundError:
            if args.checkpoints:
                raise CommandError(f"no checkpoint file {outside_path}") from None
    trusted = set(args.key)
    if not trusted and options and os.path.exists(options["signing_key"]):
        trusted = {keys.public_hex(keys.load_or_create(options["signing_key"]))}
    report = verify(ctx.engine, trusted_keys=trusted or None, outside=outside, jobs=args.jobs)
    report["checkpoint_file"] = outside_path if outside else None
    # The rows whose own content is not an event with their id (a writer's slip, not tampering).
    report["bad"] = ctx.archive().verify()["bad"] if args.deep else []
    report["ok"] = report["ok"] and not report["bad"]
    out.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if not report["ok"]:
        first = report["problems"][0] if report["problems"] else {"problem": "row data is not its event",
                                                                  "ref": report["bad"][0]}
        detail = ", ".join(f"{k} {v}" for k, v in first.items() if k != "problem")
        raise Failed(f"{report['problem_count'] + len(report['bad'])} problem(s) in the archive; "
                           f"the first: {first['problem']} ({detail})")


def cmd_archive_key(ctx, args, out):
    """The node's public checkpoint key (made with the private one if the gateway has not started yet)."""
    from gateway.compliance import keys

    options = ctx.config.chain_options
    if not options:
        raise CommandError("[archive] chain = false: no checkpoints are signed")
    key = keys.load_or_create(options["signing_key"])
    out.write(f"{keys.public_hex(key)}\n")


def cmd_archive_checkpoints(ctx, args, out):
    """Every signed checkpoint in the database, as JSON lines (to keep a copy elsewhere)."""
    import sqlalchemy as sa

    from gateway.storage.schema import checkpoints

    with ctx.engine.connect() as conn:
        for row in conn.execute(sa.select(checkpoints).order_by(checkpoints.c.node, checkpoints.c.seq)).mappings():
            out.write(json.dumps(dict(row), sort_keys=True) + "\n")


# -- retention and legal hold ------------------------------------------------


def _records(ctx):
    from gateway.compliance.retention import records_settings

    return records_settings(ctx.config)


def cmd_archive_purge(ctx, args, out):
    """Delete the rows whose retention ran out, except those under a hold; recorded as a purge."""
    from gateway.compliance.retention import purge

    rules = ctx.config.archive.retention
    if not rules:
        raise CommandError("no [[archive.retention]] rules: nothing ever expires")
    chain, lock = _records(ctx)
    at = parse_time(args.at) if args.at else None
    report = purge(ctx.engine, ctx.config.gateway.node, rules, chain, now=at, dry_run=args.dry_run, lock_path=lock)
    if args.json:
        out.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return
    verb = "would remove" if args.dry_run else "removed"
    for name, count in sorted(report["expired"].items()):
        out.write(f"{verb} {count} event(s) under retention rule {name!r}\n")
    if not report["expired"]:
        out.write("nothing has expired\n")
    if report["held"]:
        out.write(f"kept {report['held']} expired event(s) under a legal hold\n")
    if report["purge"]:
        out.write(f"purge {report['purge']}: {report['rows']} row(s) with their notes and captures\n")


def cmd_hold_add(ctx, args, out):
    from gateway.compliance.retention import add_hold

    chain, lock = _records(ctx)
    since = parse_time(args.since) if args.since else None
    hold_id = add_hold(ctx.engine, chain, args.user, args.reason, peer=args.peer, since=since, lock_path=lock)
    out.write(f"{hold_id}\n")


def cmd_hold_list(ctx, args, out):
    from gateway.compliance.retention import list_holds

    found = list_holds(ctx.engine, active_only=not args.all)
    if args.json:
        out.write(json.dumps(found, indent=2, sort_keys=True) + "\n")
        return
    for hold in found:
        state = "active" if hold["released"] is None else f"released {_when(hold['released'])}"
        scope = hold["user"] + (f" with {hold['peer']}" if hold["peer"] else "") + (
            f" since {_when(hold['since'])}" if hold["since"] is not None else "")
        out.write(f"{hold['id']}  {state}  {scope}  ({hold['reason']})\n")
    if not found:
        out.write("no holds\n")


def cmd_hold_release(ctx, args, out):
    from gateway.compliance.retention import release_hold

    chain, lock = _records(ctx)
    try:
        release_hold(ctx.engine, chain, args.id, args.reason, lock_path=lock)
    except (KeyError, ValueError) as e:
        raise CommandError(str(e).strip("'\"")) from None
    out.write(f"released {args.id}\n")


# -- users and groups --------------------------------------------------------


def _password(args, prompt="Password: "):
    if args.password is not None:
        return args.password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        raise CommandError("the two passwords differ")
    return first


def cmd_users_add(ctx, args, out):
    from gateway.directory.sql import DirectoryError

    handles = [parse_address(h) for h in args.handle]
    try:
        ctx.directory().add_person(
            args.name,
            password=_password(args),
            handles=handles,
            display_name=args.display_name or "",
            groups=args.group,
        )
    except DirectoryError as e:
        raise CommandError(str(e)) from None
    out.write(f"added {args.name}" + (f" ({', '.join(map(str, handles))})" if handles else "") + "\n")


def cmd_users_list(ctx, args, out):
    people = ctx.people()
    if args.json:
        out.write(
            json.dumps(
                [
                    {
                        "id": p.id,
                        "display_name": p.display_name,
                        "handles": [str(h) for h in p.handles],
                        "groups": sorted(p.groups),
                    }
                    for p in people
                ],
                indent=2,
            )
            + "\n"
        )
        return
    rows = [("ID", "NAME", "HANDLES", "GROUPS")] + [
        (p.id, p.display_name, " ".join(map(str, p.handles)), ",".join(sorted(p.groups))) for p in people
    ]
    _table(out, rows)
    out.write(f"{len(people)} user(s)\n")


def cmd_users_remove(ctx, args, out):
    directory = ctx.directory()
    if directory.get_identity(args.name) is None:
        raise CommandError(f"no user called {args.name!r}")
    directory.remove_person(args.name)
    out.write(f"removed {args.name}\n")


def cmd_users_passwd(ctx, args, out):
    directory = ctx.directory()
    if directory.get_identity(args.name) is None:
        raise CommandError(f"no user called {args.name!r}")
    directory.set_password(args.name, _password(args, "New password: "))
    out.write(f"password of {args.name} changed\n")


def cmd_users_handle(ctx, args, out):
    from gateway.directory.sql import DirectoryError

    directory = ctx.directory()
    address = parse_address(args.address)
    try:
        if args.action == "add":
            directory.add_handle(args.name, address)
        else:
            directory.remove_handle(args.name, address)
    except DirectoryError as e:
        raise CommandError(str(e)) from None
    out.write(f"{'added' if args.action == 'add' else 'removed'} {address} for {args.name}\n")


def cmd_groups(ctx, args, out):
    from gateway.directory.sql import DirectoryError

    directory = ctx.directory()
    try:
        if args.groups_command == "add":
            directory.add_group(args.name, args.description or "")
            out.write(f"added group {args.name}\n")
        elif args.groups_command == "remove":
            directory.remove_group(args.name)
            out.write(f"removed group {args.name}\n")
        elif args.groups_command == "add-member":
            directory.add_member(args.name, args.user)
            out.write(f"{args.user} is in {args.name}\n")
        elif args.groups_command == "remove-member":
            directory.remove_member(args.name, args.user)
            out.write(f"{args.user} left {args.name}\n")
        else:
            groups = directory.list_groups()
            rows = [("GROUP", "DESCRIPTION", "MEMBERS")] + [
                (name, description, ",".join(sorted(members))) for name, description, members in groups
            ]
            _table(out, rows)
    except DirectoryError as e:
        raise CommandError(str(e)) from None


# -- policy and database -------------------------------------------------------


def cmd_policy_test(ctx, args, out):
    from gateway.policy.rules import PolicyEngine, Side

    class _Now:
        @staticmethod
        def seconds():
            return parse_time(args.at) if args.at else time.time()

    sender, recipient = parse_address(args.sender), parse_address(args.recipient)
    engine = PolicyEngine(ctx.config.policy, _Now)
    sender_identity, recipient_identity = ctx.identities_for([sender, recipient])
    verdict = engine.check(args.kind, Side(sender, sender_identity), Side(recipient, recipient_identity))
    decision = "allow" if verdict.allowed else "deny"
    if args.json:
        out.write(json.dumps({"decision": decision, "rule": verdict.rule, "reason": verdict.reason}) + "\n")
    else:
        out.write(f"{decision}  rule={verdict.rule}  reason={verdict.reason}\n")
        out.write("(built-in rules only; hook plugins are asked by the running gateway)\n")


def cmd_db_upgrade(ctx, args, out):
    from gateway.storage.db import current_revision

    engine = ctx.engine  # migrates
    out.write(f"database at revision {current_revision(engine)}\n")


def cmd_plugins(ctx, args, out):
    """Every installed plugin: name, distribution, kind, hooks, and whether the config enables it."""
    import importlib.metadata

    from gateway.plugins import GROUP, PluginLoadError, Plugins

    config = ctx.config
    disabled = set(config.plugins.disabled)
    plugins = Plugins()
    rows, problems = [], []
    for entry_point in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name):
        single = Plugins()
        try:
            single.load_entry_points_named([entry_point])
        except PluginLoadError as e:
            problems.append(str(e))
            continue
        for name, dist, kind, hooks in single.describe():
            rows.append((name, dist, kind, hooks, "disabled" if name in disabled else "enabled"))
    for path in config.plugins.paths:
        try:
            plugins.load_paths([config.resolve(path)])
        except PluginLoadError as e:
            problems.append(str(e))
    for name, dist, kind, hooks in plugins.describe():
        rows.append((name, dist, kind, hooks, "enabled"))
    if args.json:
        out.write(json.dumps(
            [dict(name=n, distribution=d.removeprefix("distribution "), kind=k, hooks=h, state=s)
             for n, d, k, h, s in rows]
            + [dict(error=p) for p in problems], indent=2) + "\n")
    else:
        for name, dist, kind, hooks, state in rows:
            out.write(f"{name}  ({dist}; {kind}; {state})\n    hooks: {', '.join(hooks) or 'none'}\n")
        for problem in problems:
            out.write(f"ERROR {problem}\n")
        out.write(f"{len(rows)} plugin(s)\n")
    if problems:
        raise CommandError(f"{len(problems)} plugin(s) could not be loaded")


def cmd_plugin_new(ctx, args, out):
    from gateway.ops.scaffold import ScaffoldError, new_plugin

    try:
        written = new_plugin(args.name, args.kind, args.dir)
    except ScaffoldError as e:
        raise CommandError(str(e)) from None
    root = os.path.join(args.dir, f"gateway-{args.name}")
    out.write(f"wrote {len(written)} files under {root}; next:\n"
              f"  pip install {root} && python -m twisted.trial gateway_{args.name}\n")


def cmd_config_check(ctx, args, out):
    config = ctx.config
    _check_connectors(config)
    out.write(
        f"{config.path}: ok ({len(config.policy.rules)} rules, connectors: "
        f"{', '.join(config.connectors) or 'none'}, database {config.database_url})\n"
    )


def _check_connectors(config):
    """Each configured connector's table against the options its plugin declares (nothing is started)."""
    from gateway.options import read_options
    from gateway.plugins import Plugins

    class Offers:
        """What ``gateway_register_connectors`` offers, without building anything."""

        def __init__(self):
            self.factories, self.options = {}, {}

        def register_connector(self, name, factory, options=None):
            self.factories[name] = factory
            if options is not None:
                self.options[name] = tuple(options)

        def __getattr__(self, name):
            raise CommandError(f"a plugin used api.{name} while registering connectors; "
                               "config check can only see what they offer")

    plugins = Plugins(disabled=config.plugins.disabled)
    plugins.load_entry_points()
    plugins.load_paths([config.resolve(path) for path in config.plugins.paths])
    offers = Offers()
    plugins.hook.gateway_register_connectors.call_historic(kwargs={"api": offers})
    for name, table in config.connectors.items():
        if table.get("enabled", True) is False:
            continue
        if name not in offers.factories:
            raise ConfigError(
                f"no installed plugin provides a connector called {name!r}; installed connectors: "
                f"{', '.join(sorted(offers.factories)) or 'none'}",
                config.path, f"connectors.{name}",
            )
        if name in offers.options:
            read_options(name, {k: v for k, v in table.items() if k != "enabled"}, offers.options[name], config.path)


def _table(out, rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def build_parser() -> argparse.ArgumentParser:
    from gateway.ops import commands as ops_commands
    from gateway.ops.commands import add_api_arguments

    parser = argparse.ArgumentParser(prog="gatewayctl", description="Administer an instant-messaging gateway.")
    parser.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG"),
                        help=f"the gateway's TOML config (default: $GATEWAY_CONFIG or ./{DEFAULT_CONFIG})")
    parser.add_argument("--version", action="version", version=f"gatewayctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    archive = sub.add_parser("archive", help="search, export and verify the archive").add_subparsers(
        dest="archive_command", required=True)

    def filters(p):
        p.add_argument("--user", help="an address (aim:alice) or a person id: either side")
        p.add_argument("--peer", help="the other side, an address or a person id")
        p.add_argument("--since", help="from this time (2026-11-22T10:00, or 12h for 12 hours ago)")
        p.add_argument("--until", help="up to this time")
        p.add_argument("--text", help="text contained in the message (any case)")
        p.add_argument("--kind", choices=config_module.KINDS + ("access", "admin"))
        p.add_argument("--room", help="a room's name: everything done in it (joins, messages, subjects, ...)")

    search = archive.add_parser("search", help="find archived events")
    filters(search)
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--json", action="store_true", help="JSON instead of a table")
    search.set_defaults(func=cmd_archive_search)

    export = archive.add_parser("export", help="write archived events to a file")
    filters(export)
    export.add_argument("--format", choices=("jsonl", "csv", "eml", "html"), default="jsonl",
                        help="eml, html: one message or page per conversation and day, in the folder --output, "
                             "with manifest.json")
    export.add_argument("--output", "-o", required=True)
    export.add_argument("--progress", action="store_true", help="show a progress bar even when not on a terminal")
    export.set_defaults(func=cmd_archive_export)

    show = archive.add_parser("show", help="one event: the decision, deliveries, and native captures")
    show.add_argument("id", help="the event id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_archive_show)
    verify = archive.add_parser(
        "verify", help="recompute the hash chain: any row edited, inserted, deleted or reordered is named (exit 1)")
    verify.add_argument("--checkpoints", metavar="FILE",
                        help="a copy of the checkpoints kept elsewhere (default: [archive] checkpoint_file)")
    verify.add_argument("--key", action="append", default=[], metavar="HEX",
                        help="a public key checkpoints may be signed with (default: this node's)")
    verify.add_argument("--deep", action="store_true", help="also parse each row's stored event")
    verify.add_argument("--jobs", type=int, choices=(1, 2), default=2 if (os.cpu_count() or 1) > 1 else 1,
                        help="processes to share the work (default: 2 on a machine with more than one core)")
    verify.set_defaults(func=cmd_archive_verify)
    key = archive.add_parser("key", help="the public key that signs this node's chain checkpoints")
    key.set_defaults(func=cmd_archive_key)
    marks = archive.add_parser("checkpoints", help="the signed checkpoints, as JSON lines")
    marks.set_defaults(func=cmd_archive_checkpoints)
    purge = archive.add_parser(
        "purge", help="delete rows whose [[archive.retention]] ran out, except those under a legal hold")
    purge.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    purge.add_argument("--at", help="purge as of this time instead of now (a date, or a span back: 30d)")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(func=cmd_archive_purge)

    hold = sub.add_parser("hold", help="legal holds: rows no purge may remove").add_subparsers(
        dest="hold_command", required=True)
    add_hold = hold.add_parser("add", help="hold a person's rows (with one peer, from a time)")
    add_hold.add_argument("--user", required=True, help="the person (directory id)")
    add_hold.add_argument("--peer", help="only rows with this address, or user:ID")
    add_hold.add_argument("--since", help="only rows from this time (a date, or a span back: 90d)")
    add_hold.add_argument("--reason", required=True)
    add_hold.set_defaults(func=cmd_hold_add)
    list_hold = hold.add_parser("list", help="the active holds (--all: released ones too)")
    list_hold.add_argument("--all", action="store_true")
    list_hold.add_argument("--json", action="store_true")
    list_hold.set_defaults(func=cmd_hold_list)
    release = hold.add_parser("release", help="release a hold")
    release.add_argument("id")
    release.add_argument("--reason", required=True)
    release.set_defaults(func=cmd_hold_release)

    users = sub.add_parser("users", help="people in the embedded directory").add_subparsers(
        dest="users_command", required=True)
    add = users.add_parser("add", help="add a person")
    add.add_argument("name")
    add.add_argument("--password")
    add.add_argument("--password-stdin", action="store_true")
    add.add_argument("--handle", action="append", default=[], metavar="NETWORK:HANDLE")
    add.add_argument("--display-name")
    add.add_argument("--group", action="append", default=[])
    add.set_defaults(func=cmd_users_add)
    lst = users.add_parser("list", help="list people")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_users_list)
    rm = users.add_parser("remove", help="remove a person")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_users_remove)
    pw = users.add_parser("passwd", help="set a person's password")
    pw.add_argument("name")
    pw.add_argument("--password")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=cmd_users_passwd)
    handle = users.add_parser("handle", help="add or remove a handle")
    handle.add_argument("action", choices=("add", "remove"))
    handle.add_argument("name")
    handle.add_argument("address", metavar="NETWORK:HANDLE")
    handle.set_defaults(func=cmd_users_handle)

    groups = sub.add_parser("groups", help="groups of people").add_subparsers(dest="groups_command", required=True)
    g = groups.add_parser("add")
    g.add_argument("name")
    g.add_argument("--description")
    groups.add_parser("remove").add_argument("name")
    groups.add_parser("list")
    for verb in ("add-member", "remove-member"):
        m = groups.add_parser(verb)
        m.add_argument("name", metavar="GROUP")
        m.add_argument("user")
    for choice in groups.choices.values():
        choice.set_defaults(func=cmd_groups)

    policy = sub.add_parser("policy", help="policy rules").add_subparsers(dest="policy_command", required=True)
    test = policy.add_parser("test", help="which rule decides an event")
    test.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    test.add_argument("--to", dest="recipient", required=True, metavar="ADDR")
    test.add_argument("--kind", choices=config_module.KINDS, default="im")
    test.add_argument("--at", help="pretend it is this time (for rules with hours/days)")
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_policy_test)
    reload = policy.add_parser("reload", help="the running gateway reads its rules, walls and notices again")
    add_api_arguments(reload)
    reload.set_defaults(func=ops_commands.cmd_policy_reload)

    directory = sub.add_parser("directory", help="the running gateway's directory").add_subparsers(
        dest="directory_command", required=True)
    refresh = directory.add_parser("refresh", help="flush the running gateway's directory cache")
    add_api_arguments(refresh)
    refresh.set_defaults(func=ops_commands.cmd_directory_refresh)

    db = sub.add_parser("db", help="the database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply schema migrations").set_defaults(func=cmd_db_upgrade)

    plugin = sub.add_parser("plugin", help="write a new plugin").add_subparsers(dest="plugin_command", required=True)
    new = plugin.add_parser("new", help="a new plugin distribution that installs and passes its own tests")
    new.add_argument("name", help="its name: lower-case letters and digits (the network name, for a connector)")
    new.add_argument("--kind", choices=("connector", "hook"), required=True)
    new.add_argument("--dir", default=".", help="the folder to write gateway-NAME/ into")
    new.set_defaults(func=cmd_plugin_new)
    plugins = sub.add_parser("plugins", help="installed plugins: distribution, kind, hooks, enabled or not")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)
    cfg = sub.add_parser("config", help="the config file").add_subparsers(dest="config_command", required=True)
    cfg.add_parser("check", help="validate the config file").set_defaults(func=cmd_config_check)
    from gateway.cluster.commands import add_parsers as cluster_parsers

    cluster_parsers(sub)
    ops_commands.add_parsers(sub)
    return parser


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(args.config)
    try:
        args.func(ctx, args, out)
    except (CommandError, ConfigError, DatabaseError) as e:
        sys.stderr.write(f"gatewayctl: {e}\n")
        return getattr(e, "status", 2)
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
