"""
``gatewayctl archive verify``: the archive recomputed against its hash chain.

Three passes, each streaming (memory stays flat whatever the archive's
size):

1. each node's chain in order: its entries written one row each before
   blocks (``chain``), then its blocks (``chain_blocks``): no entry missing
   (``seq`` 1, 2, 3, ...), each hash the link of the one before and its own
   fields; each block's entries go to a scratch table of the connection
   (``verify_entries``, temporary), so that the next pass finds them by key;
2. each row of ``events``, ``deliveries``, ``captures``, ``holds`` and
   ``purges`` against the last chain entry naming it: a row with none was
   *inserted* behind the writer's back, a row whose digest differs was
   *edited*; and each entry whose row is gone names a *deleted* row, unless
   a purge lists it (``purged``, whose list each purge's digest checks);
3. each checkpoint: signed by its key, that key the node's (when the caller
   names the keys it trusts), its head the chain's at that entry; and the
   same for every checkpoint in a copy kept outside the database.

A reordered range is a chain whose links break (the entries) or rows whose
``created``/``recorded`` changed (their digests).
"""

from __future__ import annotations

import collections
import hashlib
import json
import time

import sqlalchemy as sa

from gateway.compliance import keys
from gateway.compliance.chain import COLUMNS, GENESIS, SINGLE_KEYED, Canonical, block_hash, canonical_v1, link_block
from gateway.compliance.retention import removed_digest
from gateway.storage.schema import (
    captures, chain, chain_blocks, checkpoints, deliveries, events, holds, purged, purges,
)

__all__ = ["verify"]

_TABLES = {"events": events, "deliveries": deliveries, "captures": captures, "holds": holds, "purges": purges}
_Entry = collections.namedtuple("_Entry", "node seq kind ref digest hash")
# Problems reported in full; past this many, only counted.
_MAX_LISTED = 100
# Where two processes share the rows, by event id (hex): the first, which also checks the links, takes
# the ids below it (6/16 of them), the other the rest; measured best of "5", "6" and "8" on 330,000 rows.
_SPLIT = "6"


class _Report:
    def __init__(self):
        self.problems = []
        self.count = 0

    def add(self, what, **fields):
        self.count += 1
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(dict(problem=what, **fields))


# The entries of the blocks, unpacked for pass 2 (a temporary table of the job's connection).
_scratch_metadata = sa.MetaData()
_scratch = sa.Table(
    "verify_entries", _scratch_metadata,
    sa.Column("kind", sa.String(16)), sa.Column("ref", sa.String(400)), sa.Column("digest", sa.String(64)),
    sa.Column("node", sa.String(64)), sa.Column("seq", sa.BigInteger), sa.Column("format", sa.SmallInteger),
    prefixes=["TEMPORARY"],
)
_SCRATCH_COLUMNS = "kind, ref, digest, node, seq, format"

# The key parts each kind of row is ordered by, the event id first.
_ORDER = {"events": ("id",), "deliveries": ("event_id", "status", "where_"),
          "captures": ("event_id", "direction", "network"), "holds": ("id",), "purges": ("id",)}


def _binary(column, dialect):
    """``column`` ordered by code point, as Python compares text (PostgreSQL's default collation does not)."""
    return sa.collate(column, "C") if dialect == "postgresql" else column


def _event_of(ref):
    return ref.split("/", 1)[0]


def _stream(conn, query, batch):
    """
    The plain tuples of ``query``, ``batch`` at a time, from the driver's
    own cursor (a server-side one on PostgreSQL): no result processing,
    which would cost more than the checking itself.
    """
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    dbapi_connection = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi_connection.cursor(name=f"verify_{id(query):x}")
        cursor.itersize = batch
    else:
        cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        while True:
            part = cursor.fetchmany(batch)
            if not part:
                return
            yield part
    finally:
        cursor.close()


def _within(column, span, dialect):
    """The condition that ``column`` (text) lies in ``span``, (low or None, high or None), by code point."""
    low, high = span
    conditions = []
    if low is not None:
        conditions.append(_binary(column, dialect) >= low)
    if high is not None:
        conditions.append(_binary(column, dialect) < high)
    return sa.and_(sa.true(), *conditions)


def _rows(conn, kind, batch, dialect, span=(None, None)):
    """(event id, [(ref, values)]) per event, in event id order, for the rows of ``kind`` in ``span``."""
    table = _TABLES[kind]
    first = table.c[_ORDER[kind][0]]
    query = sa.select(*[table.c[name] for name in COLUMNS[kind]]).where(_within(first, span, dialect)).order_by(
        *[_binary(table.c[name], dialect) for name in _ORDER[kind]])
    single = kind in SINGLE_KEYED  # the key is the first column; else the first three (the event id first)
    group, items = None, []
    for part in _stream(conn, query, batch):
        for values in part:
            event = values[0]
            if event != group:
                if items:
                    yield group, items
                group, items = event, []
            items.append((event if single else f"{event}/{values[1]}/{values[2]}", values))
    if items:
        yield group, items


def _entries(conn, kind, batch, dialect, span=(None, None)):
    """
    (event id, {ref: (digest, node, seq, format)}) per event, in event id
    order: each row's last chain entry, from ``chain`` and the blocks'
    (the scratch table holds those of ``span`` only).
    """
    both = sa.union_all(
        sa.select(chain.c.ref, chain.c.digest, chain.c.node, chain.c.seq, chain.c.format)
        .where(chain.c.kind == kind, _within(chain.c.ref, span, dialect)),
        sa.select(_scratch.c.ref, _scratch.c.digest, _scratch.c.node, _scratch.c.seq, _scratch.c.format)
        .where(_scratch.c.kind == kind),
    ).subquery()
    query = sa.select(both).order_by(_binary(both.c.ref, dialect), both.c.seq)
    group, items = None, {}
    for part in _stream(conn, query, batch):
        for ref, row_digest, node, seq, format in part:
            event = _event_of(ref)
            if event != group:
                if items:
                    yield group, items
                group, items = event, {}
            items[ref] = (row_digest, node, seq, format)  # a later entry for the same row wins
    if items:
        yield group, items


def _compare(kind, rows, entries, report, counts, gone):
    """
    Merge the two event-ordered streams: rows without an entry, digests that
    differ; entries without a row go to ``gone(ref, node, seq)`` (a purge may
    explain them).
    """
    canonical, sha256 = Canonical(), hashlib.sha256
    rows, entries = iter(rows), iter(entries)
    row_group = next(rows, None)
    entry_group = next(entries, None)
    while row_group is not None or entry_group is not None:
        if entry_group is None or (row_group is not None and row_group[0] < entry_group[0]):
            found, named = row_group[1], {}
            row_group = next(rows, None)
        elif row_group is None or entry_group[0] < row_group[0]:
            found, named = [], entry_group[1]
            entry_group = next(entries, None)
        else:
            found, named = row_group[1], entry_group[1]
            row_group, entry_group = next(rows, None), next(entries, None)
        for ref, values in found:
            counts[kind] += 1
            last = named.pop(ref, None)
            if last is None:
                report.add("row not in the chain (inserted)", table=kind, ref=ref)
                continue
            # As stored: the writer took the digest of what the database keeps (PostgreSQL: no NUL).
            if sha256(canonical(values) if last[3] == 2 else canonical_v1(values)).hexdigest() != last[0]:
                report.add("row edited", table=kind, ref=ref, node=last[1], seq=last[2])
        for ref, (_, node, seq, _) in named.items():
            gone(ref, node, seq)


def _links(conn, batch, wanted, report, counts):
    """
    Pass 1, the entries written one row each before blocks: each node's in
    order; the heads at the ``wanted`` (node, seq). Returns the heads and,
    per node, where its blocks go on from: (last seq, last hash).
    """
    heads, ends = {}, {}
    node, expected, previous = None, 0, GENESIS
    block = []  # (seq, kind, ref, digest) of the entries since the last block's end

    def unended():
        report.add("chain entries after the last block's end (its hash is gone)", node=node, seq=block[0][0],
                   last=block[-1][0])

    query = sa.select(chain.c.node, chain.c.seq, chain.c.kind, chain.c.ref, chain.c.digest, chain.c.hash).order_by(
        chain.c.node, chain.c.seq)
    for part in _stream(conn, query, batch):
        for entry in map(_Entry._make, part):
            counts["entries"] += 1
            if entry.node != node:
                if block:
                    unended()
                node, expected, previous, block = entry.node, 0, GENESIS, []
            expected += 1
            if entry.seq != expected:
                report.add("chain entries missing", node=node, seq=expected, found=entry.seq)
                expected = entry.seq
            block.append((entry.seq, entry.kind, entry.ref, entry.digest))
            ends[node] = (expected, previous)  # until this block ends (at worst, where its entries begin)
            if not entry.hash:
                continue  # inside a block: its last entry holds the hash over all of it
            if link_block(previous, block) != entry.hash:
                first = block[0]
                report.add("chain entry altered (or entries reordered)", node=node, seq=entry.seq,
                           kind=entry.kind, ref=entry.ref,
                           **({"block": [first[0], entry.seq]} if len(block) > 1 else {}))
            previous, block = entry.hash, []
            ends[node] = (expected, previous)
            if (node, entry.seq) in wanted:
                heads[(node, entry.seq)] = entry.hash
    if block:
        unended()
    return heads, ends


def _blocks(conn, batch, span, links, wanted, report, counts, ends):
    """
    Pass 1, the blocks: each node's in order, going on from its ``ends``
    (when ``links``: checked, with the heads at the ``wanted`` (node, seq)
    returned); their entries whose event id lies in ``span`` go to the
    scratch table, for pass 2.
    """
    dialect = conn.dialect.name
    _scratch.drop(conn, checkfirst=True)  # a pooled connection's, from a verify before
    _scratch.create(conn)
    dbapi_connection = conn.connection.dbapi_connection
    low, high = span
    pending = []

    def flush():
        if dialect == "postgresql":
            with dbapi_connection.cursor() as cursor:
                with cursor.copy(f"COPY verify_entries ({_SCRATCH_COLUMNS}) FROM STDIN") as copy:
                    for values in pending:
                        copy.write_row(values)
        else:
            dbapi_connection.executemany(f"INSERT INTO verify_entries ({_SCRATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                                         pending)
        pending.clear()

    heads = {}
    node, expected, previous = None, 0, GENESIS
    query = sa.select(chain_blocks.c.node, chain_blocks.c.first, chain_blocks.c.last, chain_blocks.c.entries,
                      chain_blocks.c.hash, chain_blocks.c.format).order_by(chain_blocks.c.node, chain_blocks.c.last)
    loads = json.loads
    for part in _stream(conn, query, batch // 100 or 1):
        for block_node, first, last, text, hash_, format in part:
            if block_node != node:
                node = block_node
                expected, previous = ends.get(node, (0, GENESIS))
            try:
                entries = loads(text)
            except ValueError:
                entries = None
            if entries is None or len(entries) != last - first + 1:
                report.add("chain block altered (its entries unreadable or miscounted)", node=node, seq=last,
                           block=[first, last])
                entries = entries if isinstance(entries, list) else []
            if links:
                counts["entries"] += len(entries)
                if first != expected + 1:
                    report.add("chain entries missing", node=node, seq=expected + 1, found=first)
                if block_hash(previous, first, last, format, text) != hash_:
                    report.add("chain entry altered (or entries reordered)", node=node, seq=last, block=[first, last])
                if (node, last) in wanted:
                    heads[(node, last)] = hash_
            expected, previous = last, hash_
            for index, entry in enumerate(entries):
                try:
                    kind, ref, row_digest = entry
                except (TypeError, ValueError):
                    continue  # the block's hash (links) names the damage
                if not isinstance(ref, str):
                    continue  # as above
                event = ref.split("/", 1)[0]
                if (low is None or event >= low) and (high is None or event < high):
                    pending.append((kind, ref, row_digest, node, first + index, format))
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    return heads


def _unexplained(conn, kind, missing, report):
    """Report the chained rows that are gone and that no purge lists (a purge's own list is checked apart)."""
    for start in range(0, len(missing), 1000):
        part = missing[start:start + 1000]
        lawful = set(conn.execute(sa.select(purged.c.ref).where(
            purged.c.kind == kind, purged.c.ref.in_([ref for ref, _, _ in part]))).scalars())
        for ref, node, seq in part:
            if ref not in lawful:
                report.add("row deleted", table=kind, ref=ref, node=node, seq=seq)


def _purges(conn, report):
    """Each purge's list of removed rows against the digest its (chained) row holds, one purge at a time."""
    dialect = conn.dialect.name
    known = set()
    for row in conn.execute(sa.select(purges.c.id, purges.c.count, purges.c.digest)).all():
        known.add(row.id)
        listed = conn.execute(sa.select(purged.c.kind, purged.c.ref).where(purged.c.purge_id == row.id).order_by(
            _binary(purged.c.kind, dialect), _binary(purged.c.ref, dialect)))
        listed_digest, count = removed_digest(listed, ordered=True)
        if count != row.count or listed_digest != row.digest:
            report.add("purge list altered (rows added to or taken from it)", table="purged", ref=row.id)
    strays = conn.execute(sa.select(purged.c.purge_id).distinct()).scalars()
    for purge_id in strays:
        if purge_id not in known:
            report.add("rows listed as purged by no purge", table="purged", ref=purge_id)


def _job(engine, links, span, wanted, batch):
    """One share of passes 1 and 2: (problems, problem count, counts, heads)."""
    report = _Report()
    counts = {"entries": 0, **{kind: 0 for kind in _TABLES}}
    heads = {}
    dialect = engine.dialect.name
    with engine.connect() as conn:
        ends = {}  # only the share that checks the links needs to know where each node's blocks go on from
        if links:
            heads, ends = _links(conn, batch, wanted, report, counts)
            _purges(conn, report)
        heads.update(_blocks(conn, batch, span, links, wanted, report, counts, ends))
        for kind in _TABLES:
            missing = []

            def gone(ref, node, seq, kind=kind, missing=missing):
                missing.append((ref, node, seq))
                if len(missing) >= 1000:  # looked up in batches: memory stays flat after a large purge too
                    _unexplained(conn, kind, missing, report)
                    missing.clear()

            _compare(kind, _rows(conn, kind, batch, dialect, span), _entries(conn, kind, batch, dialect, span),
                     report, counts, gone)
            _unexplained(conn, kind, missing, report)
        _scratch.drop(conn)
    return report.problems, report.count, counts, heads


def _forked(function, *args):
    """Run ``function(*args)`` in a forked child; a callable that waits for and returns its result."""
    import os
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own database connections, its answer down the pipe
        os.close(read_end)
        status = 0
        try:
            args[0].dispose(close=False)
            answer = ("ok", function(*args))
        except BaseException as e:  # noqa: B902 - reported to the parent
            answer, status = ("error", f"{type(e).__name__}: {e}"), 1
        with os.fdopen(write_end, "wb") as f:
            pickle.dump(answer, f)
        os._exit(status)
    os.close(write_end)

    def result():
        with os.fdopen(read_end, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        kind, value = pickle.loads(data)
        if kind != "ok":
            raise RuntimeError(f"verify worker failed: {value}")
        return value

    return result


def verify(engine, trusted_keys=None, outside=None, batch=10_000, jobs=1) -> dict:
    """
    The report on the archive at ``engine``: rows and entries checked,
    ``problems`` (each with what, where, and the row or entry), ``ok``, and
    ``rows_per_second``. ``trusted_keys``: public keys (hex) checkpoints must
    be signed with; ``outside``: the lines of a checkpoint copy kept outside
    the database (JSON, as ``[archive] checkpoint_file`` holds them).
    ``jobs`` = 2 shares the work with a forked process (its own database
    connection): the rows of events whose id is from `_SPLIT` on, and their
    notes and captures, are checked there.
    """
    started = time.monotonic()
    with engine.connect() as conn:
        wanted = {(row.node, row.seq) for row in conn.execute(sa.select(checkpoints.c.node, checkpoints.c.seq))}
        stored = [dict(row) for row in conn.execute(sa.select(checkpoints)).mappings()]
    outside_rows = [json.loads(line) for line in outside or () if line.strip()]
    wanted.update((row["node"], row["seq"]) for row in outside_rows)
    if jobs > 1:
        # The links are this process's too: the other takes the larger share of the rows.
        other = _forked(_job, engine, False, (_SPLIT, None), wanted, batch)
        shares = [_job(engine, True, (None, _SPLIT), wanted, batch), other()]
    else:
        shares = [_job(engine, True, (None, None), wanted, batch)]
    report = _Report()
    counts = {"entries": 0, **{kind: 0 for kind in _TABLES}, "checkpoints": 0}
    heads = {}
    for problems, count, share_counts, share_heads in shares:
        report.problems.extend(problems[: _MAX_LISTED - len(report.problems)])
        report.count += count
        for name, value in share_counts.items():
            counts[name] += value
        heads.update(share_heads)

    # 3. the checkpoints, in the database and outside it.
    for where, rows in (("database", stored), ("outside", outside_rows)):
        for row in rows:
            counts["checkpoints"] += 1
            place = dict(node=row.get("node"), seq=row.get("seq"), copy=where)
            if not keys.valid(row):
                report.add("checkpoint signature invalid", **place)
            elif trusted_keys is not None and row["key"] not in trusted_keys:
                report.add("checkpoint signed by a key not trusted", key=row["key"], **place)
            if heads.get((row.get("node"), row.get("seq"))) != row.get("head"):
                report.add("checkpoint does not match the chain (rewritten after it was signed)", **place)
    elapsed = time.monotonic() - started
    rows = counts["events"] + counts["deliveries"] + counts["captures"]
    return {
        **counts,
        "problems": report.problems,
        "problem_count": report.count,
        "ok": report.count == 0,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed) if elapsed > 0 else rows,
    }
