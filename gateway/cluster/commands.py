"""``gatewayctl node ...``: the cluster's nodes as its registry in Redis has them."""

from __future__ import annotations

import json

from gateway.ops.errors import CommandError

__all__ = ["add_parsers"]


def cmd_node_list(ctx, args, out):
    """Every node: name, state, sessions, capacity, load, heartbeat age."""
    from gateway.cluster.redis import RedisError, RedisUnavailable
    from gateway.cluster.registry import node_states

    cluster = ctx.config.cluster
    url = args.redis or cluster.redis
    if not url:
        raise CommandError("no cluster in the config ([cluster] redis); give --redis")
    try:
        nodes = node_states(url, args.prefix or cluster.prefix)
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


def add_parsers(sub):
    """``node`` and its commands, on ``gatewayctl``'s subparsers."""
    node = sub.add_parser("node", help="the cluster's nodes (Redis registry)").add_subparsers(
        dest="node_command", required=True)
    listing = node.add_parser("list", help="every node: state, sessions, load, heartbeat age")
    listing.add_argument("--redis", default="", help="the registry's redis:// URL (default: [cluster] redis)")
    listing.add_argument("--prefix", default="", help="the cluster's key prefix (default: [cluster] prefix)")
    listing.add_argument("--json", action="store_true", help="one JSON object per node")
    listing.set_defaults(func=cmd_node_list)
