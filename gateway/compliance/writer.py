"""
The chain's side of the archive writer: it extends the node's chain with
every row a transaction writes, in that transaction, and signs a
checkpoint every ``checkpoint_rows`` entries or ``checkpoint_interval``
seconds (`gateway.storage.archive.store.ArchiveStore` calls it; it runs in
the writer process or thread, never in the reactor).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from twisted.logger import Logger

from gateway.compliance import keys
from gateway.compliance.chain import BLOCK_COLUMNS, Chain
from gateway.storage.schema import captures, chain as chain_table, chain_blocks, checkpoints, deliveries, events

__all__ = ["ChainWriter", "chained"]

# Rows read at a time when a chain is started over an archive that has rows already.
_ADOPT_BATCH = 5000


class _Pending:
    """What one batch added to the chain, for `ChainWriter.committed`; ``checkpointed``: the (seq, time) of the newest checkpoint after it."""

    __slots__ = ("state", "checkpoint", "checkpointed")

    def __init__(self, state, checkpoint, checkpointed):
        self.state = state
        self.checkpoint = checkpoint
        self.checkpointed = checkpointed


class ChainWriter:
    """
    One node's chain as its archive writer extends it. ``key`` (an Ed25519
    private key) signs checkpoints, which also go to ``checkpoint_file``
    (JSON lines) when one is named; ``clean`` maps a row's values to what
    the database keeps of them (PostgreSQL: no NUL characters).
    """

    def __init__(self, node, key=None, checkpoint_rows=10_000, checkpoint_interval=60.0, checkpoint_file=None,
                 clock=time.time, clean=None, log=None):
        self.node = node
        self.key = key
        self.checkpoint_rows = checkpoint_rows
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_file = checkpoint_file
        self.clock = clock
        self.clean = clean
        self.log = log if log is not None else Logger(namespace="gateway.compliance")
        self.chain = None  # loaded at the first transaction
        self._checkpointed = (0, clock())  # (seq, time) of the last checkpoint

    # -- inside the writer's transaction ---------------------------------------------------

    def prepare(self, conn):
        """Before the transaction's first rows: read the head (and adopt rows archived before the chain)."""
        if self.chain is None:
            self._load(conn)

    def stored(self, conn, ids):
        """The ``events`` rows of ``ids`` as the database holds them (dicts), in the order of ``ids``."""
        rows = {row["id"]: dict(row) for row in conn.execute(sa.select(events).where(events.c.id.in_(ids))).mappings()}
        return [rows[event_id] for event_id in ids if event_id in rows]

    def write(self, conn, fresh, overridden_ids=(), delivery_rows=(), capture_rows=(), after=None):
        """
        Chain what the transaction wrote: the ``events`` rows (as `stored`
        where a replay found some there already), the rows
        whose decision was overridden (as stored now), the ``deliveries``
        and ``captures`` rows. Returns what `committed` needs; ``after``:
        what an earlier `write` in the same transaction returned.
        """
        if self.chain is None:
            self._load(conn)
        written = [("events", row) for row in fresh]
        if overridden_ids:
            stored = conn.execute(sa.select(events).where(events.c.id.in_(list(overridden_ids)))).mappings()
            written += [("events", dict(row)) for row in stored]
        written += [("deliveries", row) for row in delivery_rows]
        written += [("captures", row) for row in capture_rows]
        return self.append(conn, written, after)

    def append(self, conn, written, after=None):
        """
        Chain ``written`` (``(kind, row)`` in the order written) in
        ``conn``'s transaction; for `committed`. ``after``: what an earlier
        `append` in the same transaction returned (its entries come first).
        """
        if self.chain is None:
            self._load(conn)
        if not written:
            return after
        now = self.clock()
        block, state = self.chain.block(written, now, self.clean, None if after is None else after.state)
        _insert_block(conn, block)
        checkpoint = None
        checkpointed = self._checkpointed if after is None else after.checkpointed
        seq, at = checkpointed
        if self.key is not None and (state[0] - seq >= self.checkpoint_rows or now - at >= self.checkpoint_interval):
            checkpoint = keys.checkpoint(self.key, self.node, state[0], state[1], now)
            conn.execute(sa.insert(checkpoints), [checkpoint])
            checkpointed = (checkpoint["seq"], checkpoint["at"])
        return _Pending(state, checkpoint, checkpointed)

    # -- after the commit ------------------------------------------------------------------

    def committed(self, pending) -> None:
        """The transaction of ``pending`` (an `append`'s answer, or a list of them in order) committed."""
        if pending is None:
            return
        if isinstance(pending, list):
            for each in pending:
                self.committed(each)
            return
        self.chain.advance(pending.state)
        if pending.checkpoint is not None:
            self._checkpointed = pending.checkpointed
            if self.checkpoint_file:
                try:
                    keys.append_checkpoint(self.checkpoint_file, pending.checkpoint)
                except OSError as e:
                    self.log.critical("archive checkpoint not written to {path}: {error}",
                                      path=self.checkpoint_file, error=str(e))

    def rolled_back(self) -> None:
        """A transaction failed: read the head from the database again at the next one."""
        self.chain = None

    # -- the head ----------------------------------------------------------------------------

    def _load(self, conn):
        # The last block; else the last entry written one row each, before blocks.
        last = conn.execute(
            sa.select(chain_blocks.c.last, chain_blocks.c.hash).where(chain_blocks.c.node == self.node)
            .order_by(chain_blocks.c.last.desc()).limit(1)
        ).first() or conn.execute(
            sa.select(chain_table.c.seq, chain_table.c.hash).where(chain_table.c.node == self.node)
            .order_by(chain_table.c.seq.desc()).limit(1)
        ).first()
        self.chain = Chain(self.node) if last is None else Chain(self.node, last[0], last[1])
        mark = conn.execute(
            sa.select(checkpoints.c.seq, checkpoints.c.at).where(checkpoints.c.node == self.node)
            .order_by(checkpoints.c.seq.desc()).limit(1)
        ).first()
        if mark is not None:
            self._checkpointed = (mark.seq, mark.at)
        if last is None and mark is None:
            self._adopt(conn)
        elif last is None:
            # Signed checkpoints of a chain that is gone: adopting the rows would launder whatever was
            # done to them; they stay outside the chain, and verify names them.
            self.log.critical("the archive chain of node {node!r} is empty although checkpoints of it were "
                     "signed: rows archived before are not adopted; run gatewayctl archive verify", node=self.node)

    def _adopt(self, conn):
        """
        A chain started over an archive with rows already (one written
        before the chain existed): those rows are chained first, events in
        the order recorded, then their deliveries and captures, so that
        `verify` covers them too from here on.
        """
        mine = events.c.node == self.node
        adopted = 0
        for table, query in (
            ("events", sa.select(events).where(mine).order_by(events.c.recorded, events.c.id)),
            ("deliveries", sa.select(deliveries).where(deliveries.c.event_id.in_(sa.select(events.c.id).where(mine)))
             .order_by(deliveries.c.at, deliveries.c.event_id)),
            ("captures", sa.select(captures).where(captures.c.event_id.in_(sa.select(events.c.id).where(mine)))
             .order_by(captures.c.at, captures.c.event_id)),
        ):
            result = conn.execute(query, execution_options={"yield_per": _ADOPT_BATCH}).mappings()
            for part in result.partitions(_ADOPT_BATCH):
                block, state = self.chain.block([(table, dict(row)) for row in part], self.clock(), self.clean)
                _insert_block(conn, block)
                self.chain.advance(state)
                adopted += len(part)
        if adopted:
            self.log.warn("archive chain started over {count} rows already archived on node {node!r}",
                     count=adopted, node=self.node)



_INSERT_BLOCK = {
    "sqlite": f"INSERT INTO chain_blocks ({', '.join(BLOCK_COLUMNS)}) VALUES ({', '.join('?' * len(BLOCK_COLUMNS))})",
    "postgresql": f"INSERT INTO chain_blocks ({', '.join(BLOCK_COLUMNS)}) "
                  f"VALUES ({', '.join(['%s'] * len(BLOCK_COLUMNS))})",
}


def _insert_block(conn, block):
    """One block (a tuple in `BLOCK_COLUMNS` order) into ``chain_blocks``, on the driver's own cursor."""
    dbapi_connection = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_INSERT_BLOCK["postgresql"], block)
    else:
        dbapi_connection.execute(_INSERT_BLOCK["sqlite"], block)


def chained(store, options, log=None):
    """
    ``store`` (an `ArchiveStore`) writing the hash chain as ``options``
    (`gateway.config.Config.chain_options`) say; as it was when they are
    empty (the chain is off).
    """
    if not options:
        return store
    return store.chained(
        keys.load_or_create(options["signing_key"]),
        checkpoint_rows=options["checkpoint_rows"],
        checkpoint_interval=options["checkpoint_interval"],
        checkpoint_file=options["checkpoint_file"] or None,
        log=log,
    )
