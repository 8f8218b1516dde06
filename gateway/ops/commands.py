"""
``gatewayctl operator ...`` (the admin API's operators, in the database)
and the commands that ask the running gateway through its admin API:
``sessions list|kick``, ``broadcast``, ``rooms list|members|create|remove``,
``policy reload``, ``directory refresh`` (each archived there with the
caller's operator name).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from gateway.ops.errors import CommandError

__all__ = ["add_parsers", "api_call", "add_api_arguments", "admin_url"]

TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"


# -- the admin API, from the command line -------------------------------------------------


def add_api_arguments(parser):
    parser.add_argument("--url", help="the admin listener, e.g. http://127.0.0.1:8080 (default: from the config)")
    parser.add_argument("--token", help=f"an operator's token (default: ${TOKEN_ENV}, else [admin] token or "
                                        "token_file, else the data folder's admin-token)")


def admin_url(listen):
    """``tcp:8080:interface=127.0.0.1`` -> ``http://127.0.0.1:8080``; None when there is no TCP listener."""
    parts = listen.split(":")
    if len(parts) < 2 or parts[0] not in ("tcp", "ssl"):
        return None
    host = "127.0.0.1"
    for part in parts[2:]:
        if part.startswith("interface="):
            host = part.split("=", 1)[1]
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
    return f"{'https' if parts[0] == 'ssl' else 'http'}://{host}:{parts[1]}"


def api_call(ctx, args, method, path, body=None, query=None):
    """The JSON answer of the running gateway's admin API; CommandError with its error otherwise."""
    from gateway.ops.admin import admin_token

    url = getattr(args, "url", None) or admin_url(ctx.config.admin.listen)
    if url is None:
        raise CommandError("no admin listener in the config ([admin] listen); give --url")
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or admin_token(ctx.config, create=False)
    if not token:
        raise CommandError(f"no admin token: give --token or set ${TOKEN_ENV} (an operator's, from 'gatewayctl "
                           "operator add'), or set [admin] token or token_file (a running gateway keeps one in "
                           "DATA_DIR/admin-token)")
    target = url.rstrip("/") + path
    if query:
        target += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(target, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            why = e.reason
        raise CommandError(f"the gateway at {url} refused: {why} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        raise CommandError(f"cannot reach the gateway at {url}: {getattr(e, 'reason', e)}") from None


def cmd_sessions_list(ctx, args, out):
    answer = api_call(ctx, args, "GET", "/sessions", query={"user": args.user})
    sessions = answer["sessions"]
    if args.json:
        for session in sessions:
            out.write(json.dumps(session, sort_keys=True) + "\n")
        return
    if not sessions:
        out.write("no sessions\n")
    else:
        out.write(f"{'SESSION':<34} {'PERSON':<16} {'ADDRESS':<32} {'CONNECTOR':<10} {'NODE':<12} STATUS\n")
        for s in sessions:
            out.write(f"{s['session']:<34} {s['person']:<16} {s['address']:<32} {s['connector']:<10} "
                      f"{s['node']:<12} {s.get('status', '')}\n")
    if answer.get("cluster") == "unreachable":
        out.write("(the cluster's registry is unreachable: this node's sessions only)\n")


def cmd_sessions_kick(ctx, args, out):
    body = {"session": args.session} if args.session else {"user": args.user}
    if args.reason:
        body["reason"] = args.reason
    answer = api_call(ctx, args, "POST", "/sessions/kick", body)
    for sid in answer["kicked"]:
        out.write(f"ended {sid}\n")
    for refused in answer["not_kicked"]:
        out.write(f"not ended {refused['session']}: {refused['why']}\n")
    for other in answer.get("elsewhere", ()):
        out.write(f"{other['session']} is on node {other['node']}: ask that node (its --url)\n")
    if not (answer["kicked"] or answer["not_kicked"] or answer.get("elsewhere")):
        raise CommandError("no such session here")


def cmd_broadcast(ctx, args, out):
    body = {"text": args.text}
    if args.network:
        body["network"] = args.network
    answer = api_call(ctx, args, "POST", "/broadcast", body)
    out.write(f"sent to {answer['recipients']} people online: {answer['delivered']} delivered, "
              f"{answer['not_delivered']} not (refused by policy, or gone)\n")


def cmd_policy_reload(ctx, args, out):
    answer = api_call(ctx, args, "POST", "/policy/reload", {})
    out.write(f"the gateway reloaded its config: {answer['rules']} policy rules\n")


def cmd_directory_refresh(ctx, args, out):
    """Ask the running gateway to forget cached directory look-ups."""
    api_call(ctx, args, "POST", "/directory/refresh", {})
    out.write("directory cache of the running gateway flushed\n")


def cmd_rooms_list(ctx, args, out):
    answer = api_call(ctx, args, "GET", "/rooms", query={"room": getattr(args, "room", None)})
    rooms = answer["rooms"]
    if args.json:
        for room in rooms:
            out.write(json.dumps(room, sort_keys=True) + "\n")
        return
    if not rooms:
        out.write("no rooms\n")
        return
    out.write(f"{'ROOM':<24} {'KIND':<10} {'MEMBERS':>7}  {'OWNER':<20} SUBJECT\n")
    for room in rooms:
        kind = "kept" if room["persistent"] else "ad hoc"
        out.write(f"{room['room']:<24} {kind:<10} {len(room['members']):>7}  {room['owner']:<20} {room['subject']}\n")


def cmd_rooms_members(ctx, args, out):
    answer = api_call(ctx, args, "GET", "/rooms", query={"room": args.room.lstrip("#")})
    [room] = answer["rooms"]
    if args.json:
        for member in room["members"]:
            out.write(json.dumps(member, sort_keys=True) + "\n")
        return
    if not room["members"]:
        out.write(f"nobody is in room {room['room']}\n")
    for member in room["members"]:
        out.write(f"{member['nick']:<24} {member['address']:<36} {member['person'] or '(outside the directory)'}\n")


def cmd_rooms_create(ctx, args, out):
    body = {"room": args.room.lstrip("#"), "external": not args.staff_only}
    for key in ("subject", "owner"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.network:
        body["networks"] = args.network
    room = api_call(ctx, args, "POST", "/rooms/create", body)
    out.write(f"room {room['room']} made ({room['address']})\n")


def cmd_rooms_remove(ctx, args, out):
    body = {"room": args.room.lstrip("#")}
    if args.reason:
        body["reason"] = args.reason
    answer = api_call(ctx, args, "POST", "/rooms/remove", body)
    out.write(f"room {answer['removed']} closed; {answer['members_put_out']} member(s) put out\n")


# -- operators, in the database ----------------------------------------------------------


def _store(ctx):
    from gateway.ops.operators import OperatorStore

    return OperatorStore(ctx.engine)


def _archive(ctx, action, target, text=""):
    """Record an operator change made here in the archive (the records chain, as holds are)."""
    from gateway.compliance.retention import records_settings, write_chained
    from gateway.model import Address, AdminAction, Verdict
    from gateway.storage.archive.store import record_to_row
    from gateway.storage.schema import events

    import sqlalchemy as sa

    chain, lock = records_settings(ctx.config)
    who = Address("operator", getpass.getuser(), socket.gethostname())
    event = AdminAction(who, action, role="gatewayctl", target=target, text=text, source="gatewayctl",
                        created=time.time())
    row = record_to_row(event, Verdict.allow(reason="recorded"), node=ctx.config.gateway.node)

    def work(conn):
        conn.execute(sa.insert(events), [row])
        return [("events", row)]

    write_chained(ctx.engine, chain, lock, work)


def cmd_operator_add(ctx, args, out):
    from gateway.ops.operators import OperatorError

    try:
        token = _store(ctx).add(args.name, args.role)
    except OperatorError as e:
        raise CommandError(str(e)) from None
    _archive(ctx, "operator.add", args.name.lower(), args.role)
    out.write(f"operator {args.name.lower()} ({args.role}) added; their token, shown only now:\n{token}\n")


def cmd_operator_token(ctx, args, out):
    from gateway.ops.operators import OperatorError

    try:
        token = _store(ctx).replace_token(args.name)
    except OperatorError as e:
        raise CommandError(str(e)) from None
    _archive(ctx, "operator.token", args.name.lower())
    out.write(f"new token for {args.name.lower()} (the old one no longer works), shown only now:\n{token}\n")


def cmd_operator_revoke(ctx, args, out):
    from gateway.ops.operators import OperatorError

    try:
        _store(ctx).revoke(args.name)
    except OperatorError as e:
        raise CommandError(str(e)) from None
    _archive(ctx, "operator.revoke", args.name.lower())
    out.write(f"operator {args.name.lower()} revoked: their token no longer works\n")


def cmd_operator_list(ctx, args, out):
    import datetime

    found = _store(ctx).list()
    if args.json:
        for row in found:
            out.write(json.dumps(row, sort_keys=True) + "\n")
        return
    if not found:
        out.write("no operators (the configured admin token is the operator 'admin')\n")
    for row in found:
        made = datetime.datetime.fromtimestamp(row["created"]).isoformat(timespec="seconds")
        state = "active" if row["revoked"] is None else "revoked " + datetime.datetime.fromtimestamp(
            row["revoked"]).isoformat(timespec="seconds")
        out.write(f"{row['name']:<24} {row['role']:<9} since {made}  {state}\n")


def add_parsers(sub):
    from gateway.ops.operators import ROLES

    operator = sub.add_parser("operator", help="the admin API's operators and their tokens").add_subparsers(
        dest="operator_command", required=True)
    add = operator.add_parser("add", help="a new operator; prints their token once")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True,
                     help="operator: runs the gateway; reviewer: reads the archive")
    add.set_defaults(func=cmd_operator_add)
    token = operator.add_parser("token", help="a new token for an operator (the old one stops working)")
    token.add_argument("name")
    token.set_defaults(func=cmd_operator_token)
    revoke = operator.add_parser("revoke", help="an operator's token stops working (the record stays)")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_operator_revoke)
    listing = operator.add_parser("list", help="every operator: role, since when, active or revoked")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_operator_list)

    sessions = sub.add_parser("sessions", help="the running gateway's sessions (admin API)").add_subparsers(
        dest="sessions_command", required=True)
    listing = sessions.add_parser("list", help="sessions here and, in a cluster, on every live node")
    listing.add_argument("--user", help="one person (id) or address")
    listing.add_argument("--json", action="store_true", help="one JSON object per session")
    listing.set_defaults(func=cmd_sessions_list)
    kick = sessions.add_parser("kick", help="end sessions on this node, in their protocol's terms")
    which = kick.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", help="a session id (from sessions list)")
    which.add_argument("--user", help="every session of a person (id) or an address")
    kick.add_argument("--reason", help="told to the client where its protocol can say it")
    kick.set_defaults(func=cmd_sessions_kick)
    broadcast = sub.add_parser("broadcast", help="a message from gateway:operator to everyone online (admin API)")
    broadcast.add_argument("text")
    broadcast.add_argument("--network", help="only the people online on this network")
    broadcast.set_defaults(func=cmd_broadcast)
    rooms = sub.add_parser("rooms", help="the running gateway's rooms (admin API)").add_subparsers(
        dest="rooms_command", required=True)
    room_list = rooms.add_parser("list", help="the rooms, how many are in each, owner and subject")
    room_list.add_argument("--json", action="store_true", help="one JSON object per room")
    room_list.set_defaults(func=cmd_rooms_list)
    members = rooms.add_parser("members", help="who is in a room: nickname, address, person")
    members.add_argument("room")
    members.add_argument("--json", action="store_true")
    members.set_defaults(func=cmd_rooms_members)
    create = rooms.add_parser("create", help="a room that stays when empty (kept in the database)")
    create.add_argument("room", help="1 to 64 of a-z, 0-9, '.', '_', '-'")
    create.add_argument("--subject")
    create.add_argument("--owner", help="the person (id) or address who may put people out")
    create.add_argument("--network", action="append", help="only users of this network may join (repeat)")
    create.add_argument("--staff-only", action="store_true", help="only people of the directory may join")
    create.set_defaults(func=cmd_rooms_create)
    remove = rooms.add_parser("remove", help="close a room: everyone in it is put out")
    remove.add_argument("room")
    remove.add_argument("--reason")
    remove.set_defaults(func=cmd_rooms_remove)
    for command in (listing, kick, broadcast, room_list, members, create, remove):
        add_api_arguments(command)
