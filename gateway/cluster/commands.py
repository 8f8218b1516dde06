"""``gatewayctl node ...``: the cluster's nodes as its registry in Redis has them."""

from __future__ import annotations

import json

from gateway.ops.errors import CommandError

__all__ = ["add_parsers"]


def cmd_node_list(ctx, args, out):
    """Every node: name, state, sessions, capacity, load, heartbeat age."""
    from gateway.cluster.redis import RedisError, RedisUnavailable
    from gateway.cluster.registry import node_states

    url, prefix = _registry(ctx, args)
    try:
        nodes = node_states(url, prefix)
    except (OSError, RedisError, RedisUnavailable, ValueError) as e:
        raise CommandError(f"cannot read the cluster's registry at {url}: {e}") from None
    if args.json:
        for node in nodes:
            out.write(json.dumps(node, sort_keys=True) + "\n")
        return
    if not nodes:
        out.write("no node has registered\n")
        return
    out.write(f"{'NODE':<20} {'STATE':<9} {'SESSIONS':>8} {'CAPACITY':>8} {'LOAD':>6} {'HEARTBEAT':>10}\n")
    for node in nodes:
        age = "-" if node["heartbeat_age"] is None else f"{node['heartbeat_age']:.1f} s"
        capacity = node["capacity"] or "-"
        out.write(f"{node['name']:<20} {node['state']:<9} {node['sessions']:>8} {capacity!s:>8} "
                  f"{node['load']:>6.2f} {age:>10}\n")


def _registry(ctx, args):
    cluster = ctx.config.cluster
    url = args.redis or cluster.redis
    if not url:
        raise CommandError("no cluster in the config ([cluster] redis); give --redis")
    return url, args.prefix or cluster.prefix


def _ask(ctx, args, wanted):
    """
    Record what the operator wants of a node; it acts on it at its next
    beat. Through the admin API of the node the config names (archived
    there with the operator's name) when it has an admin listener and no
    ``--redis`` is given; else in Redis directly.
    """
    from gateway.cluster.redis import RedisError, RedisUnavailable, command
    from gateway.cluster.registry import Keys

    url, prefix = _registry(ctx, args)
    if not args.redis and ctx.config.admin.listen:
        from gateway.ops.commands import api_call

        api_call(ctx, args, "POST", "/node/drain" if wanted == "draining" else "/node/undrain", {"node": args.name})
        return url, prefix
    keys = Keys(prefix)
    try:
        [known] = command(url, ("SISMEMBER", keys.nodes, args.name))
        if not known:
            raise CommandError(f"no node called {args.name!r} has registered")
        command(url, ("HSET", keys.node(args.name), "wanted", wanted))
    except (OSError, RedisError, RedisUnavailable, ValueError) as e:
        raise CommandError(f"cannot reach the cluster's registry at {url}: {e}") from None
    return url, prefix


def cmd_node_drain(ctx, args, out):
    """Drain a node: no new connections, its sessions asked to move; ``--wait``: until it is empty."""
    import time

    from gateway.cluster.redis import command
    from gateway.cluster.registry import node_states

    url, prefix = _ask(ctx, args, "draining")
    out.write(f"node {args.name} asked to drain (it acts at its next beat)\n")
    if not args.wait:
        return
    from gateway.cluster.registry import Keys

    stream = Keys(prefix).stream(args.name)
    deadline = time.monotonic() + args.timeout
    while True:
        node = {n["name"]: n for n in node_states(url, prefix)}[args.name]
        [waiting] = command(url, ("XLEN", stream))
        if node["state"] in ("draining", "down", "stopped") and node["sessions"] == 0 and not waiting:
            out.write(f"node {args.name} is empty: no sessions, nothing in its stream\n")
            return
        if time.monotonic() > deadline:
            raise CommandError(f"node {args.name} still has {node['sessions']} sessions and {waiting} stream "
                               f"entries after {args.timeout:g} s (state {node['state']})")
        time.sleep(0.25)


def cmd_node_undrain(ctx, args, out):
    """Let a drained node take new connections again."""
    _ask(ctx, args, "up")
    out.write(f"node {args.name} asked to take new logins again (at its next beat)\n")


def cmd_node_secret(ctx, args, out):
    """Make the file of a new cluster's shared secret (give every node the same file)."""
    from gateway.cluster import secret

    try:
        secret.create(args.file)
    except FileExistsError:
        raise CommandError(f"{args.file} exists already; a cluster keeps its secret (remove the file first to "
                           "make a new one, then give it to every node)") from None
    except OSError as e:
        raise CommandError(f"cannot write {args.file}: {e.strerror}") from None
    out.write(f"cluster secret made in {args.file} (readable by its owner only); give every node this file as "
              "[cluster] secret_file\n")


def add_parsers(sub):
    """``node`` and its commands, on ``gatewayctl``'s subparsers."""
    node = sub.add_parser("node", help="the cluster's nodes (Redis registry)").add_subparsers(
        dest="node_command", required=True)
    listing = node.add_parser("list", help="every node: state, sessions, load, heartbeat age")
    listing.add_argument("--json", action="store_true", help="one JSON object per node")
    listing.set_defaults(func=cmd_node_list)
    drain = node.add_parser("drain", help="no new connections on a node, its sessions asked to move elsewhere")
    drain.add_argument("name")
    drain.add_argument("--wait", action="store_true", help="until the node has no sessions and nothing to deliver")
    drain.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most (600)")
    drain.set_defaults(func=cmd_node_drain)
    undrain = node.add_parser("undrain", help="a drained node takes new connections again")
    undrain.add_argument("name")
    undrain.set_defaults(func=cmd_node_undrain)
    made = node.add_parser("secret", help="make the file of a new cluster's shared secret")
    made.add_argument("file")
    made.set_defaults(func=cmd_node_secret)
    from gateway.ops.commands import add_api_arguments

    for command in (drain, undrain):
        add_api_arguments(command)
    for command in (listing, drain, undrain):
        command.add_argument("--redis", default="", help="the registry's redis:// URL (default: [cluster] redis); "
                                                         "drain and undrain: write there directly, not through the "
                                                         "admin API (not archived)")
        command.add_argument("--prefix", default="", help="the cluster's key prefix (default: [cluster] prefix)")
