"""
Retention and legal hold: how long archive rows are kept, and what no
purge may remove.

``[[archive.retention]]`` rules say how many days rows of some kinds and
parties are kept; the first rule a row matches decides, and a row no rule
matches is kept for ever. A purge deletes the expired rows (with their
delivery notes and captures) except those under a hold, lists every row it
removed in ``purged``, and is itself a row of ``purges`` (when, which rules,
how many, the digest of that list). Holds, their releases and purges are
linked into the node's *records* chain (`records_node`), beside the chain
of the rows, so that ``gatewayctl archive verify`` tells a lawful purge
(the chain entries of rows a purge lists) from an unlawful deletion, and
a hold altered or removed after the fact.

Everything here is synchronous SQL: for the command line and a database
thread, never the reactor.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from typing import Optional

import attrs
import sqlalchemy as sa

from gateway.model import Address, AddressError
from gateway.policy.rules import Side, matchers
from gateway.storage.schema import captures, deliveries, events, holds, memberships, purged, purges

__all__ = ["records_settings", "records_node", "write_chained", "add_hold", "release_hold", "list_holds", "purge"]

# Candidate rows read at a time while a purge looks for expired ones.
_BATCH = 5000


def records_settings(config):
    """
    What writing ``config``'s records chain needs: ``(chain, lock_path)``, the
    chain settings (node, and with ``[archive] chain`` on the signing key and
    checkpoint file) and the lock file of its one writer at a time.
    """
    from gateway.compliance import keys

    options = config.chain_options
    chain = {"node": config.gateway.node}
    if options:
        chain["key"] = keys.load_or_create(options["signing_key"])
        chain["checkpoint_file"] = options["checkpoint_file"] or None
    return chain, os.path.join(config.data_dir, "records.lock")


def records_node(node: str) -> str:
    """The name of ``node``'s records chain (holds, releases, purges)."""
    return f"{node}+records"[:64]


@contextmanager
def _locked(lock_path):
    """One writer of a records chain at a time (the gateway's purges and the command line)."""
    if lock_path is None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _records(store_chain):
    """A fresh `ChainWriter` for the records chain (the head is read from the database each time)."""
    from gateway.compliance.writer import ChainWriter

    return ChainWriter(records_node(store_chain["node"]), store_chain.get("key"),
                       checkpoint_rows=1, checkpoint_file=store_chain.get("checkpoint_file"))


def write_chained(engine, chain, lock_path, work):
    """Run ``work(conn) -> [(kind, row)]`` and chain what it wrote, in one transaction."""
    with _locked(lock_path):
        writer = _records(chain)
        with engine.begin() as conn:
            pending = writer.append(conn, work(conn))
        writer.committed(pending)


# -- holds -----------------------------------------------------------------------------------


def add_hold(engine, chain, user, reason, peer=None, since=None, now=None, lock_path=None) -> str:
    """
    Hold ``user``'s rows (with ``peer`` only, an address or ``user:ID``;
    from ``since`` only) against every purge until released. ``chain``:
    ``{"node", "key", "checkpoint_file"}``. Returns the hold's id.
    """
    hold = {"id": uuid.uuid4().hex, "user": user.lower(), "peer": peer, "since": since, "reason": reason,
            "created": time.time() if now is None else now, "released": None, "release_reason": None}

    def work(conn):
        conn.execute(sa.insert(holds), [hold])
        return [("holds", hold)]

    write_chained(engine, chain, lock_path, work)
    return hold["id"]


def release_hold(engine, chain, hold_id, reason, now=None, lock_path=None) -> dict:
    """Release hold ``hold_id`` (from now on purges may remove its rows); the hold as released."""
    released = {}

    def work(conn):
        row = conn.execute(sa.select(holds).where(holds.c.id == hold_id)).mappings().first()
        if row is None:
            raise KeyError(f"no hold {hold_id}")
        if row["released"] is not None:
            raise ValueError(f"hold {hold_id} was released already")
        values = {"released": time.time() if now is None else now, "release_reason": reason}
        conn.execute(sa.update(holds).where(holds.c.id == hold_id).values(values))
        released.update(dict(row), **values)
        return [("holds", released)]

    write_chained(engine, chain, lock_path, work)
    return released


def list_holds(engine, active_only=False) -> list:
    query = sa.select(holds).order_by(holds.c.created)
    if active_only:
        query = query.where(holds.c.released.is_(None))
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


@attrs.frozen
class _Hold:
    user: str
    peer: Optional[str]
    since: Optional[float]

    def covers(self, row) -> bool:
        if self.since is not None and row.created < self.since:
            return False
        sides = ((row.sender_identity, row.sender), (row.recipient_identity, row.recipient))
        for index, (identity, _) in enumerate(sides):
            if identity != self.user:
                continue
            if self.peer is None:
                return True
            other_identity, other_address = sides[1 - index]
            if self.peer.startswith("user:") and other_identity == self.peer[5:].lower():
                return True
            if other_address == self.peer.lower():
                return True
        return False


# -- purge -------------------------------------------------------------------------------------


class _Person:
    """What a policy matcher needs of a person: id, groups (from the SQL directory), no handles."""

    __slots__ = ("id", "groups", "handles")

    def __init__(self, identity_id, groups):
        self.id = identity_id
        self.groups = groups
        self.handles = ()


def _side(address_text, identity_id, groups_of):
    try:
        address = Address.parse(address_text) if address_text else Address("unknown", "unknown")
    except (AddressError, ValueError):
        address = Address("unknown", "unknown")
    return Side(address, _Person(identity_id, groups_of(identity_id)) if identity_id else None)


def _compiled(rules):
    return [(rule, frozenset(rule.kinds), matchers(rule.parties)) for rule in rules]


def _deciding(compiled, row, groups_of):
    """The first rule ``row`` matches, or None (kept for ever)."""
    sides = None
    for rule, kinds, predicates in compiled:
        if kinds and row.kind not in kinds:
            continue
        if not predicates:
            return rule
        if sides is None:
            sides = (_side(row.sender, row.sender_identity, groups_of),
                     _side(row.recipient, row.recipient_identity, groups_of))
        if any(match(side) for side in sides for match in predicates):
            return rule
    return None


def purge(engine, node, rules, chain, now=None, dry_run=False, lock_path=None) -> dict:
    """
    Delete ``node``'s rows whose retention ran out at ``now``, except those
    under a hold; with their delivery notes and captures. A report: rows
    per rule, held (kept because of a hold), and the purge's id (None for
    ``dry_run`` or when nothing expired).
    """
    now = time.time() if now is None else now
    report = {"expired": {}, "held": 0, "purge": None, "dry_run": dry_run, "at": now}
    if not rules:
        return report
    compiled = _compiled(rules)
    oldest = now - min(rule.days for rule in rules) * 86400
    cache = {}

    def groups_of(identity_id):
        found = cache.get(identity_id)
        if found is None:
            with engine.connect() as conn:
                found = cache[identity_id] = frozenset(conn.execute(
                    sa.select(memberships.c.group_name).where(memberships.c.identity_id == identity_id)).scalars())
        return found

    with _locked(lock_path):
        with engine.connect() as conn:
            active = [_Hold(h.user, h.peer, h.since) for h in conn.execute(
                sa.select(holds.c.user, holds.c.peer, holds.c.since).where(holds.c.released.is_(None)))]
            query = (sa.select(events.c.id, events.c.kind, events.c.created, events.c.sender, events.c.recipient,
                               events.c.sender_identity, events.c.recipient_identity)
                     .where(events.c.node == node, events.c.created < oldest))
            expired = []
            for part in conn.execute(query, execution_options={"yield_per": _BATCH}).partitions(_BATCH):
                for row in part:
                    rule = _deciding(compiled, row, groups_of)
                    if rule is None or row.created >= now - rule.days * 86400:
                        continue
                    if any(hold.covers(row) for hold in active):
                        report["held"] += 1
                        continue
                    expired.append(row.id)
                    report["expired"][rule.name] = report["expired"].get(rule.name, 0) + 1
        if dry_run or not expired:
            return report
        purge_id = uuid.uuid4().hex
        report["purge"] = purge_id
        writer = _records(chain)
        with engine.begin() as conn:
            removed = []
            for start in range(0, len(expired), _BATCH):
                ids = expired[start:start + _BATCH]
                removed += [("events", event_id) for event_id in ids]
                for kind, table, key in (
                    ("deliveries", deliveries, (deliveries.c.event_id, deliveries.c.status, deliveries.c.where_)),
                    ("captures", captures, (captures.c.event_id, captures.c.direction, captures.c.network)),
                ):
                    for a, b, c in conn.execute(sa.select(*key).where(key[0].in_(ids))):
                        removed.append((kind, f"{a}/{b}/{c}"))
                    conn.execute(sa.delete(table).where(key[0].in_(ids)))
                conn.execute(sa.delete(events).where(events.c.id.in_(ids)))
            conn.execute(sa.insert(purged), [{"kind": k, "ref": r, "purge_id": purge_id} for k, r in removed])
            row = {"id": purge_id, "node": node, "at": now, "count": len(removed),
                   "rules": json.dumps(report["expired"], sort_keys=True), "digest": removed_digest(removed)[0]}
            conn.execute(sa.insert(purges), [row])
            pending = writer.append(conn, [("purges", row)])
        writer.committed(pending)
        report["rows"] = len(removed)
        return report


def removed_digest(removed, ordered=False):
    """
    ``(digest, count)`` of a purge's list of removed rows, ``(kind, ref)``
    pairs: sorted here, unless ``ordered`` (an iterable already in that order,
    read once, as verify streams it).
    """
    h, count = hashlib.sha256(), 0
    for kind, ref in (removed if ordered else sorted(removed)):
        h.update(f"{kind} {ref}\n".encode("utf-8", "surrogatepass"))
        count += 1
    return h.hexdigest(), count
