"""
The archive's hash chain: every row the archive writes is linked, in the
order written, into one chain per node, so that an edited, inserted,
deleted or reordered row shows.

A chain entry names a row (its ``kind``, ``events``, ``deliveries`` or
``captures``, and ``ref``, the row's key as text), the ``digest`` of the
row's canonical content, and ``hash`` = SHA-256 over the previous entry's
hash and this entry's ``seq``, ``kind``, ``ref`` and ``digest``. The first
entry of a node links to `GENESIS`. Entries are written in the same
transaction as their rows, by the archive writer (never the reactor).
Signed checkpoints of the head (`gateway.compliance.keys`) anchor the chain
outside the database; `gateway.compliance.verify` recomputes all of it.
"""

from __future__ import annotations

import hashlib
import json
import operator

__all__ = ["GENESIS", "ENTRY_COLUMNS", "Chain", "canonical", "digest", "link", "ref_of", "EVENT_COLUMNS", "DELIVERY_COLUMNS",
           "CAPTURE_COLUMNS"]

GENESIS = "0" * 64

# The columns of a chain entry, in the order `Chain.entries` gives them.
ENTRY_COLUMNS = ("node", "seq", "kind", "ref", "digest", "hash", "at")

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


def canonical(values) -> bytes:
    """
    The bytes a row's digest is taken over: its column values as one JSON
    array; booleans as 1 and 0 (SQLite gives them back so, PostgreSQL as
    bool).
    """
    if True in values or False in values:  # 1 and 0 match too: then the booleans are found by class
        values = [int(v) if v.__class__ is bool else v for v in values]
    return _encode(values).encode("utf-8", "surrogatepass")


def digest(values) -> str:
    """The hex SHA-256 of a row's column values (in its kind's `COLUMNS` order)."""
    return hashlib.sha256(canonical(values)).hexdigest()


def link(previous: str, seq: int, kind: str, ref: str, row_digest: str) -> str:
    """An entry's hash: over the previous entry's and its own position, row and digest."""
    return hashlib.sha256(f"{previous}\n{seq}\n{kind}\n{ref}\n{row_digest}".encode("utf-8", "surrogatepass")).hexdigest()


def ref_of(kind: str, row) -> str:
    """The key of a row as the chain names it (``/`` between key parts: none but the last may hold one)."""
    if kind in SINGLE_KEYED:
        return row["id"]
    if kind == "deliveries":
        return f"{row['event_id']}/{row['status']}/{row['where_']}"
    return f"{row['event_id']}/{row['direction']}/{row['network']}"


class Chain:
    """
    The head of one node's chain, as the writer extends it. `entries`
    computes the entries for a batch without moving the head; `advance`
    moves it once their transaction committed (a rolled-back batch leaves
    the head where it was).
    """

    def __init__(self, node: str, seq: int = 0, head: str = GENESIS):
        self.node = node
        self.seq = seq
        self.head = head

    def entries(self, rows, at: float, clean=None, after=None):
        """
        ``rows``: ``(kind, row dict)`` in the order written. The chain rows
        for them, as tuples in `ENTRY_COLUMNS` order, and the (seq, head)
        they leave. ``clean`` maps a row's values to what the database will
        hold (PostgreSQL drops NUL). ``after``: the (seq, head) to go on
        from instead of the committed head (an earlier batch of the same
        transaction).
        """
        seq, head = after if after is not None else (self.seq, self.head)
        out, node = [], self.node
        sha256 = hashlib.sha256
        for kind, row in rows:
            values = _GETTERS[kind](row)
            if clean is not None:
                values = clean(values)
            flag = _FLAG.get(kind)
            if flag is not None and values[flag].__class__ is bool:
                values = list(values)
                values[flag] = int(values[flag])
            row_digest = sha256(_encode(values).encode("utf-8", "surrogatepass")).hexdigest()
            ref = ref_of(kind, row)
            seq += 1
            head = link(head, seq, kind, ref, row_digest)
            out.append((node, seq, kind, ref, row_digest, head, at))
        return out, (seq, head)

    def advance(self, state) -> None:
        self.seq, self.head = state
