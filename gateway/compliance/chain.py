"""
The archive's hash chain: every row the archive writes is linked, in the
order written, into one chain per node, so that an edited, inserted,
deleted or reordered row shows.

Each row has an *entry* in its node's chain: its ``seq`` (1, 2, 3, ...),
its ``kind`` (``events``, ``deliveries``, ``captures``, and in the records
chain ``holds`` and ``purges``), ``ref`` (the row's key as text) and the
``digest`` of its content (`Canonical`). The entries one writer batch
adds form a *block*, stored as one row of ``chain_blocks``: the seq of
its first and last entry, the entries as JSON (``[[kind, ref, digest],
...]``, in seq order), the digest format, and ``hash`` = SHA-256 over the
previous block's hash and this block's first, last, format and entries
(`block_hash`). The first block of a node links to `GENESIS`. Blocks are
written in the same transaction as their rows, by the archive writer
(never the reactor). Signed checkpoints of a block's hash
(`gateway.compliance.keys`) anchor the chain outside the database;
`gateway.compliance.verify` recomputes all of it.

Archives chained before blocks hold one ``chain`` row an entry, each with
its own ``hash`` (`link`), or blocks spread over ``chain`` rows whose last
holds the hash (`link_block`), and digests in format 1 (`canonical_v1`)
or 2; verify reads those as they are, and a node's blocks go on from its
last such entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import pickle

__all__ = ["GENESIS", "FORMAT", "BLOCK_COLUMNS", "Chain", "Canonical", "canonical", "canonical_v1", "digest",
           "block_hash", "link", "link_block", "ref_of", "EVENT_COLUMNS", "DELIVERY_COLUMNS", "CAPTURE_COLUMNS"]

GENESIS = "0" * 64

# The digest format the writer uses (`canonical`); 1 is `canonical_v1`, which entries written before hold.
FORMAT = 2

# The columns of a ``chain_blocks`` row, in the order `Chain.block` gives them.
BLOCK_COLUMNS = ("node", "last", "first", "entries", "hash", "at", "format")

# The columns each kind of row is hashed over, in this order (every column it has).
EVENT_COLUMNS = (
    "id", "kind", "created", "sender", "recipient", "sender_identity", "recipient_identity", "text", "html",
    "thread", "allowed", "status", "reason", "rule", "code", "node", "data", "recorded", "original", "transforms",
)
DELIVERY_COLUMNS = ("event_id", "status", "where_", "at")
CAPTURE_COLUMNS = ("event_id", "direction", "network", "at", "data", "notes")
HOLD_COLUMNS = ("id", "user", "peer", "since", "reason", "created", "released", "release_reason")
PURGE_COLUMNS = ("id", "node", "at", "rules", "count", "digest")
COLUMNS = {"events": EVENT_COLUMNS, "deliveries": DELIVERY_COLUMNS, "captures": CAPTURE_COLUMNS,
           "holds": HOLD_COLUMNS, "purges": PURGE_COLUMNS}
# Kinds whose rows are keyed by their ``id`` alone.
SINGLE_KEYED = ("events", "holds", "purges")

# A row's values in its kind's column order, and where its one boolean is (the events' ``allowed``).
_GETTERS = {kind: operator.itemgetter(*columns) for kind, columns in COLUMNS.items()}
_FLAG = {"events": EVENT_COLUMNS.index("allowed")}

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def _fast_encoder():
    """
    ``_encode`` without the per-call set-up ``json.JSONEncoder.encode`` does
    (it builds its C encoder again for every call): the same bytes, 1.6 us
    less per event row and 0.5 us less per delivery row here. None where
    the C encoder is missing or takes other arguments.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None

    def refuse(value):
        raise TypeError(f"{value.__class__.__name__} is not part of a row")

    try:
        encoder = make(None, refuse, json.encoder.encode_basestring, None, ":", ",", False, False, True)
        probe = [1, 0.5, "a\"\u00e9", None]
        if "".join(encoder(probe, 0)) != _encode(probe):
            return None
    except Exception:
        return None
    join = "".join
    return lambda values: join(encoder(values, 0))


_encode = _fast_encoder() or _encode


def _as_stored(values):
    """``values`` with booleans as the integers 1 and 0 (SQLite gives them back so, PostgreSQL as bool)."""
    if True in values or False in values:  # 1 and 0 match too: then the booleans are found by class
        return [int(v) if v.__class__ is bool else v for v in values]
    return values


class Canonical:
    """
    The bytes a row's digest is taken over (format 2): its column values, in
    its kind's `COLUMNS` order, each typed and its length given, so that no
    two rows share them. In full: ``80 02 28``, then per value ``4E`` for
    NULL; ``58``, the length of its UTF-8 as 4 bytes little-endian, and the
    UTF-8 for text; ``47`` and 8 bytes of IEEE 754 double, big-endian, for a
    real; ``4B`` and 1 byte, ``4D`` and 2 bytes little-endian, or ``4A`` and
    4 bytes signed little-endian for an integer from 0 below 256, from 0
    below 65536, or else within 32 bits signed, and beyond that ``8A``, a
    byte giving the length and the integer's shortest two's-complement
    bytes, little-endian (booleans as the integers 1 and 0: SQLite gives
    them back so, PostgreSQL as bool); then ``74 2E``. (Every kind of row
    has more than three columns.) These are the bytes Python's pickle
    protocol 2 writes without its memo, which it writes in C: a fifth of
    the time the JSON array of format 1 took (`canonical_v1`). The tests
    hold them against an encoder written from this description. One
    instance per thread.
    """

    def __init__(self):
        self._buffer = buffer = io.BytesIO()
        self._pickler = pickler = pickle.Pickler(buffer, 2)
        pickler.fast = True  # no memo: the same bytes whether or not two values are one object
        self._dump = pickler.dump

    def __call__(self, values) -> bytes:
        values = _as_stored(values)
        return self.plain(values if values.__class__ is tuple else tuple(values))

    def plain(self, values: tuple) -> bytes:
        """The bytes of ``values``, a tuple known to hold no boolean."""
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._dump(values)
        return buffer.getvalue()


def canonical(values) -> bytes:
    """`Canonical` bytes of a row's column values (format 2)."""
    return Canonical()(values)


def canonical_v1(values) -> bytes:
    """
    The bytes a format 1 digest is taken over: the column values as one JSON
    array (no spaces, non-ASCII as is); booleans as 1 and 0.
    """
    return _encode(_as_stored(values)).encode("utf-8", "surrogatepass")


def digest(values, format: int = FORMAT) -> str:
    """The hex SHA-256 of a row's column values (in its kind's `COLUMNS` order), in digest ``format``."""
    return hashlib.sha256(canonical(values) if format == 2 else canonical_v1(values)).hexdigest()


def block_hash(previous: str, first: int, last: int, format: int, entries: str) -> str:
    """A block's hash: over the previous block's and its first and last seq, digest format and entries (JSON text)."""
    return hashlib.sha256(f"{previous}\n{first}\n{last}\n{format}\n{entries}".encode("utf-8", "surrogatepass")).hexdigest()


def link(previous: str, seq: int, kind: str, ref: str, row_digest: str) -> str:
    """The hash of a ``chain`` row linked alone: over the previous entry's hash and its own position, row and digest."""
    return link_block(previous, [(seq, kind, ref, row_digest)])


def link_block(previous: str, block) -> str:
    """
    The hash of a block spread over ``chain`` rows: over the previous
    entry's hash and, for each of its entries in order, ``(seq, kind, ref,
    digest)``; `link` for a block of one.
    """
    text = previous + "".join([f"\n{seq}\n{kind}\n{ref}\n{row_digest}" for seq, kind, ref, row_digest in block])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def ref_of(kind: str, row) -> str:
    """The key of a row as the chain names it (``/`` between key parts: none but the last may hold one)."""
    if kind in SINGLE_KEYED:
        return row["id"]
    if kind == "deliveries":
        return f"{row['event_id']}/{row['status']}/{row['where_']}"
    return f"{row['event_id']}/{row['direction']}/{row['network']}"


class Chain:
    """
    The head of one node's chain, as the writer extends it. `block`
    computes the block for a batch without moving the head; `advance`
    moves it once its transaction committed (a rolled-back batch leaves
    the head where it was).
    """

    def __init__(self, node: str, seq: int = 0, head: str = GENESIS):
        self.node = node
        self.seq = seq
        self.head = head

    def block(self, rows, at: float, clean=None, after=None):
        """
        ``rows``: ``(kind, row dict)`` in the order written. Their block, a
        ``chain_blocks`` row as a tuple in `BLOCK_COLUMNS` order (None for
        no rows), and the (seq, head) it leaves. ``clean`` maps a row's
        values to what the database will hold (PostgreSQL drops NUL).
        ``after``: the (seq, head) to go on from instead of the committed
        head (an earlier batch of the same transaction).
        """
        seq, head = after if after is not None else (self.seq, self.head)
        if not rows:
            return None, (seq, head)
        sha256, encode = hashlib.sha256, Canonical().plain
        entries = []
        add = entries.append
        flag = _FLAG["events"]
        for kind, row in rows:
            values = _GETTERS[kind](row)
            if clean is not None:
                values = tuple(clean(values))
            if kind == "events" and values[flag].__class__ is bool:
                values = (*values[:flag], int(values[flag]), *values[flag + 1:])
            add((kind, row["id"] if kind in SINGLE_KEYED else ref_of(kind, row), sha256(encode(values)).hexdigest()))
        first, last = seq + 1, seq + len(entries)
        text = _encode(entries)
        head = block_hash(head, first, last, FORMAT, text)
        return (self.node, last, first, text, head, at, FORMAT), (last, head)

    def advance(self, state) -> None:
        self.seq, self.head = state
