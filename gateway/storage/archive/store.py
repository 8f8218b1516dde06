"""Archive rows in SQL: build them, write them in batches, search, stream, verify."""

import base64
import datetime
import importlib
import json
import operator
import sqlite3
import time
from typing import Optional

import attrs
import sqlalchemy as sa

from gateway import model
from gateway.storage import db
from gateway.storage.archive import OfflineFull
from gateway.storage.schema import captures, deliveries, events, offline

__all__ = [
    "ARCHIVE_UNAVAILABLE",
    "ArchiveStore",
    "ArchivedEvent",
    "capture_row",
    "delivery_row",
    "record_to_row",
]

# The code of a row the archive itself rejected because it could not write it.
ARCHIVE_UNAVAILABLE = "archive-unavailable"

# Bounded text columns (the whole event is kept in ``data``): longer values are
# cut so that one odd address cannot make a whole batch fail on PostgreSQL.
_LIMITS = {
    column.name: column.type.length
    for column in events.c
    if getattr(column.type, "length", None) and column.name != "id"
}
# The dialects the archive supports, whose INSERT ... ON CONFLICT it uses (imported
# when a store is made for one: PostgreSQL's is 2 MB a SQLite gateway does without).
_DIALECTS = ("sqlite", "postgresql")

# The events columns in table order, and a row dict's values in that order
# (positional parameters: the drivers bind them for less than named ones).
_EVENT_NAMES = tuple(column.name for column in events.c)
_event_values = operator.itemgetter(*_EVENT_NAMES)
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_K = _LIMITS  # short, for record_to_row
# The same for the small tables (a column's length looked up once, not per row).
_WHERE_LENGTH = deliveries.c.where_.type.length
_DIRECTION_LENGTH = captures.c.direction.type.length
_NETWORK_LENGTH = captures.c.network.type.length


def record_to_row(
    event,
    verdict,
    outcome=None,
    sender_identity=None,
    recipient_identity=None,
    recorded=None,
    node="",
    original=None,
    transforms=(),
):
    """
    The ``events`` row (a JSON-able dict) recording ``event`` and the
    decision about it: ``outcome`` when known, else the policy ``verdict``
    (status ``accepted`` or ``rejected``). When transform hooks changed the
    event, ``original`` is the event as its sender sent it and
    ``transforms`` the names of the hooks that changed it, in order.
    """
    if outcome is not None:
        decided = (outcome.status.value, outcome.reason, outcome.rule, outcome.code)
    else:
        decided = None
    return row_from_fields(
        model.event_to_dict(event), (verdict.allowed, verdict.reason, verdict.rule), decided,
        sender_identity, recipient_identity, recorded, node,
        None if original is None else model.event_to_dict(original), transforms,
    )


def row_from_fields(data, verdict, outcome=None, sender_identity=None, recipient_identity=None,
                    recorded=None, node="", original=None, transforms=()):
    """
    `record_to_row` from plain values: ``data`` as `gateway.model.event_to_dict`
    makes it, ``verdict`` as ``(allowed, reason, rule)``, ``outcome`` as
    ``(status, reason, rule, code)`` or None. The archive writer process
    builds rows from these without making the event objects again.
    """
    allowed, verdict_reason, verdict_rule = verdict
    if outcome is not None:
        status, reason, rule, code = outcome
        reason = reason or verdict_reason
        rule = rule or verdict_rule
    else:
        status = "accepted" if allowed else "rejected"
        reason, rule = verdict_reason, verdict_rule
        code = "" if allowed else "policy"
    kind = data["kind"]
    recipient = data.get("recipient")
    thread = data.get("thread") or data.get("room")
    if kind in ("file", "admin"):
        text = model.event_from_dict(data).summary()
    else:
        text = data.get("text")
    # The columns with a length are cut here (``data`` keeps every value
    # whole); slicing text no longer than the limit costs next to nothing.
    return {
        "id": data["id"],
        "kind": kind[: _K["kind"]],
        "created": float(data["created"]),
        "sender": data["sender"][: _K["sender"]],
        "recipient": None if recipient is None else recipient[: _K["recipient"]],
        "sender_identity": sender_identity and sender_identity[: _K["sender_identity"]],
        "recipient_identity": recipient_identity and recipient_identity[: _K["recipient_identity"]],
        "text": text,
        "html": data.get("html"),
        "thread": thread and thread[: _K["thread"]],
        "allowed": bool(allowed),
        "status": status[: _K["status"]],
        "reason": reason or "",
        "rule": (rule or "")[: _K["rule"]],
        "code": (code or "")[: _K["code"]],
        "node": node[: _K["node"]],
        "data": _to_json(data),
        "recorded": time.time() if recorded is None else float(recorded),
        "original": None if original is None else _to_json(original),
        "transforms": ",".join(transforms)[: _K["transforms"]] if transforms else None,
    }


def delivery_row(event_id, status, where, at):
    """The ``deliveries`` row saying ``event_id`` reached ``status`` at ``where``."""
    return {
        "event_id": event_id,
        "status": getattr(status, "value", status),
        "where_": where[:_WHERE_LENGTH],
        "at": float(at),
    }


def capture_row(event_id, direction, network, data, notes, at):
    """
    The ``captures`` row of ``data`` (bytes) as ``direction`` (``received``
    or ``sent``) on ``network``, with ``notes`` of what translation lost.
    """
    return {
        "event_id": event_id,
        "direction": direction[:_DIRECTION_LENGTH],
        "network": network[:_NETWORK_LENGTH],
        "at": float(at),
        "data": base64.b64encode(bytes(data)).decode("ascii"),
        "notes": ",".join(notes),
    }


class Transaction:
    """
    One archive transaction of an `ArchiveStore` (`ArchiveStore.begin`):
    `add` batches, then `commit` or `rollback`; the hash chain's entries
    go in with the rows, and its head moves at the commit. Not thread-safe:
    one thread at a time, as with a database connection.
    """

    def __init__(self, store):
        self.store = store
        self.rows = 0  # rows added so far
        self._linked = []  # the chain's pending state after each batch, in order
        self._staged = False
        self._conn = conn = store.engine.connect()
        self._sqlite = None
        try:
            if store._dialect == "sqlite":
                # The database connection's own setting is NORMAL (commits
                # reach the disk at the next checkpoint): an archive commit
                # must survive a power loss, since the rows are then no
                # longer anywhere else, so it waits for the WAL's fsync.
                # That is one fsync per transaction. (SQLite refuses to
                # change it inside a transaction: hence before, and after.)
                self._sqlite = conn.connection.dbapi_connection
                self._sqlite.execute("PRAGMA synchronous=FULL")
            self._transaction = conn.begin()
        except BaseException:
            self._close()
            raise

    def add(self, rows, delivery_rows=(), capture_rows=()):
        """Write one batch (as `ArchiveStore.insert_rows` says) into the transaction; on an error, `rollback`."""
        store, conn = self.store, self._conn
        rows = list(rows)
        delivery_rows = list(delivery_rows)
        capture_rows = list(capture_rows)
        plain = [row for row in rows if row.get("code") != ARCHIVE_UNAVAILABLE]
        overriding = [row for row in rows if row.get("code") == ARCHIVE_UNAVAILABLE]
        chain = store.chain
        if chain is not None:
            chain.prepare(conn)
        fresh = plain
        if plain:
            if self._sqlite is not None:
                added = store._insert_sqlite(conn, self._sqlite, plain)
            else:
                added = store._insert_postgresql(conn, plain, again=self._staged)
                self._staged = True
            if chain is not None and added != len(plain):
                # Some were stored already (a replay): the chain takes the rows as the database holds them
                # now. Those it holds already are chained again with the same digest: harmless.
                fresh = chain.stored(conn, [row["id"] for row in plain])
        if overriding:
            if self._sqlite is None:
                overriding = [
                    dict(zip(_EVENT_NAMES, _without_nul(_event_values(row))))
                    for row in overriding
                ]
            stmt = store._insert(events)
            stmt = stmt.on_conflict_do_update(
                index_elements=[events.c.id],
                set_={
                    name: stmt.excluded[name]
                    for name in ("status", "reason", "code", "recorded")
                },
            )
            conn.execute(stmt, overriding)
        if delivery_rows:
            if self._sqlite is not None:
                store._insert_deliveries_sqlite(conn, delivery_rows)
            else:
                conn.execute(store._insert(deliveries).on_conflict_do_nothing(), delivery_rows)
        if capture_rows:
            conn.execute(store._insert(captures).on_conflict_do_nothing(), capture_rows)
        if chain is not None:
            linked = self._linked
            pending = chain.write(conn, fresh, [row["id"] for row in overriding], delivery_rows, capture_rows,
                                  linked[-1] if linked else None)
            if pending is not None and (not linked or pending is not linked[-1]):
                linked.append(pending)
        self.rows += len(rows) + len(delivery_rows) + len(capture_rows)

    def commit(self):
        """Commit what was added (the chain's head moves); on an error the transaction is rolled back, and raised."""
        try:
            self._transaction.commit()
        except BaseException:
            self.rollback()
            raise
        if self._staged:
            # The staging table outlives the transaction that made it.
            self._conn.connection.info[_STAGE] = True
        self._close()
        if self.store.chain is not None:
            self.store.chain.committed(self._linked)

    def rollback(self):
        """Forget what was added (the chain reads its head again at the next transaction)."""
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        except Exception:
            pass  # a broken connection: the error that broke it is what the caller reports
        finally:
            if self.store.chain is not None:
                self.store.chain.rolled_back()
            self._close()

    def _close(self):
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._sqlite is not None:
            try:
                self._sqlite.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                pass  # a broken connection: the error that broke it is raised
        conn.close()


@attrs.frozen(slots=True)
class ArchivedEvent:
    """One archived event as search and export see it, with its final status."""

    id: str
    kind: str
    created: float
    sender: str
    recipient: Optional[str]
    sender_identity: Optional[str]
    recipient_identity: Optional[str]
    text: Optional[str]
    html: Optional[str]
    allowed: bool
    status: str
    reason: str
    rule: str
    code: str
    node: str
    # When transforms changed it: the event as sent (JSON) and the hooks, comma-separated.
    original: Optional[str] = None
    transforms: Optional[str] = None
    # A message's thread, or the room of a chat event.
    thread: Optional[str] = None
    delivered_at: Optional[float] = None
    # Of a chat event (`gateway.rooms`): its room, action, the sender's nickname and who was in the room.
    chat: Optional[dict] = None

    @classmethod
    def from_row(cls, row, delivery=None, chat=None):
        """From an ``events`` row and its newest ``deliveries`` row, if any."""
        values = {name: row._mapping[name] for name in _COLUMN_NAMES}
        values["allowed"] = bool(values["allowed"])
        if delivery is not None:
            values["status"] = delivery.status
            values["delivered_at"] = delivery.at
        if chat is not None:
            values["chat"] = chat
        return cls(**values)


_COLUMN_NAMES = [
    f.name for f in attrs.fields(ArchivedEvent) if f.name not in ("delivered_at", "chat")
]
_COLUMNS = [events.c[name] for name in _COLUMN_NAMES]


def _seconds(value):
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value)


def _normal_address(text):
    if ":" in text:
        try:
            return str(model.Address.parse(text))
        except model.AddressError:
            pass
    return text


def _is(who, address_column, identity_column):
    return sa.or_(address_column == _normal_address(who), identity_column == who)


def _filters(user=None, peer=None, since=None, until=None, text=None, kind=None, room=None):
    c = events.c

    def sender(who):
        return _is(who, c.sender, c.sender_identity)

    def recipient(who):
        return _is(who, c.recipient, c.recipient_identity)

    clauses = []
    if user is not None and peer is not None:
        clauses.append(
            sa.or_(
                sa.and_(sender(user), recipient(peer)),
                sa.and_(recipient(user), sender(peer)),
            )
        )
    else:
        for who in (user, peer):
            if who is not None:
                clauses.append(sa.or_(sender(who), recipient(who)))
    if since is not None:
        clauses.append(c.created >= _seconds(since))
    if until is not None:
        clauses.append(c.created < _seconds(until))
    if text:
        clauses.append(c.text.icontains(text, autoescape=True))
    if kind:
        clauses.append(c.kind == kind)
    if room:
        # Everything said and done in the room (joins, messages, subjects, leaves, kicks) and invitations to it.
        clauses.append(sa.and_(c.kind == "chat", c.thread == room.lower().lstrip("#")))
    return clauses


# Events rows per SQLite INSERT statement at most: a power of two, so that a
# batch of any size takes a few statements of a few shapes, each compiled
# once (the driver keeps them); fewer if SQLite allows fewer parameters.
_SQLITE_ROWS = 256
# The temporary table a PostgreSQL connection COPYs a batch into first.
_STAGE = "archive_events_stage"


# Deliveries rows per statement on SQLite (4 parameters each), and the statements by row count.
_SQLITE_DELIVERIES = 1024
_SQLITE_DELIVERY_SQL = {}
_EVENTS_HEAD = f"INSERT INTO events ({', '.join(_EVENT_NAMES)})"


class ArchiveStore:
    """
    The archive's SQL: synchronous, for the writer thread, a
    `gateway.storage.dbthread.DatabaseThread` or the command line; never call it in
    the reactor thread. ``node`` is written into every row it builds.
    """

    def __init__(self, engine, node=""):
        self.engine = engine
        self.node = node
        dialect = engine.dialect.name
        if dialect not in _DIALECTS:
            raise ValueError(
                f"the archive supports SQLite and PostgreSQL, not {dialect!r}"
            )
        self._insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert
        self._dialect = dialect
        self._sqlite_rows = None  # rows per statement, from the first connection
        self._sqlite_sql = {}  # rows -> statement
        self.chain = None  # a `gateway.compliance.writer.ChainWriter` once `chained`

    def chained(self, key=None, **settings):
        """
        From now on, link every row written into the node's hash chain
        (`gateway.compliance.chain`), signing checkpoints with ``key``;
        ``settings``: `gateway.compliance.writer.ChainWriter`'s.
        """
        from gateway.compliance.writer import ChainWriter

        clean = _without_nul if self._dialect == "postgresql" else None
        self.chain = ChainWriter(self.node, key, clean=clean, **settings)
        return self

    # -- writing ------------------------------------------------------------

    def record_to_row(
        self,
        event,
        verdict,
        outcome=None,
        sender_identity=None,
        recipient_identity=None,
        recorded=None,
        original=None,
        transforms=(),
    ):
        """`record_to_row` with this store's node."""
        return record_to_row(
            event,
            verdict,
            outcome,
            sender_identity,
            recipient_identity,
            recorded,
            node=self.node,
            original=original,
            transforms=transforms,
        )

    def insert_rows(self, rows, delivery_rows=(), capture_rows=()):
        """
        Write ``events`` rows and ``deliveries`` rows in one transaction.

        A row whose key is already stored is skipped, so writing a batch
        again is harmless; except that a row the archive itself rejected
        (code ``archive-unavailable``) overrides the decision of a copy
        whose commit was reported as failed but in fact happened: the
        caller was told "rejected", so the record must say so too.
        """
        transaction = self.begin()
        try:
            transaction.add(rows, delivery_rows, capture_rows)
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()

    def begin(self):
        """
        A `Transaction` that several batches go into (`Transaction.add`, as
        `insert_rows` writes one) before one commit: the writer process
        fills one over several reactor turns, a few rows at a time, so that
        acknowledging what it journals never waits long behind the SQL.
        """
        return Transaction(self)

    def _insert_sqlite(self, conn, dbapi_connection, rows):
        """``rows`` into SQLite, many to a statement (`gateway.storage.db.sqlite_insert_many`); how many went in."""
        if self._sqlite_rows is None:
            most = dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            per_row = len(_EVENT_NAMES)
            self._sqlite_rows = 1 << ((min(_SQLITE_ROWS, most // per_row)).bit_length() - 1)
        return db.sqlite_insert_many(conn, _EVENTS_HEAD, len(_EVENT_NAMES), list(map(_event_values, rows)),
                                     self._sqlite_rows, self._sqlite_sql, " ON CONFLICT (id) DO NOTHING")

    def _insert_deliveries_sqlite(self, conn, rows):
        """``deliveries`` rows into SQLite, many to a statement (a row already there is skipped)."""
        values = [(row["event_id"], row["status"], row["where_"], row["at"]) for row in rows]
        db.sqlite_insert_many(conn, "INSERT INTO deliveries (event_id, status, where_, at)", 4, values,
                              _SQLITE_DELIVERIES, _SQLITE_DELIVERY_SQL, " ON CONFLICT DO NOTHING")

    def _insert_postgresql(self, conn, rows, again=False):
        """
        ``rows`` into PostgreSQL: COPY into a temporary table, then one
        ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`` (COPY alone
        cannot skip a key that is there already). The driver formats COPY
        rows in C: a fraction of the Python that ``executemany`` costs.
        ``again``: an earlier batch of this transaction used the staging
        table, whose rows are emptied first (it empties itself at the
        commit). Returns how many rows went in.
        """
        dbapi = self.engine.dialect.loaded_dbapi
        dbapi_connection = conn.connection.dbapi_connection
        columns = ", ".join(_EVENT_NAMES)
        statement = f"COPY {_STAGE} ({columns}) FROM STDIN"
        try:
            with dbapi_connection.cursor() as cursor:
                if not conn.connection.info.get(_STAGE):
                    cursor.execute(
                        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
                        f"(LIKE events) ON COMMIT DELETE ROWS"
                    )
                if again:
                    cursor.execute(f"DELETE FROM {_STAGE}")
                with cursor.copy(statement) as copy:
                    for values in map(_event_values, rows):
                        try:
                            copy.write_row(values)
                        except dbapi.DataError:
                            # PostgreSQL text cannot hold NUL (``data``, JSON,
                            # has it escaped): one such row must not keep
                            # the whole batch, and every later one, out. A
                            # row the driver refuses leaves nothing behind.
                            copy.write_row(_without_nul(values))
                statement = (
                    f"INSERT INTO events ({columns}) SELECT {columns} FROM {_STAGE} "
                    f"ON CONFLICT (id) DO NOTHING"
                )
                cursor.execute(statement)
                return cursor.rowcount
        except dbapi.Error as e:
            # What SQLAlchemy does for the statements it runs itself: the
            # same exception type, and a dropped connection leaves the pool.
            if self.engine.dialect.is_disconnect(e, dbapi_connection, None):
                conn.invalidate(e)
            raise sa.exc.DBAPIError.instance(
                statement, None, e, dbapi.Error
            ) from e

    def probe(self):
        """Raise unless the database answers a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    # -- reading ------------------------------------------------------------

    def search(
        self,
        user=None,
        peer=None,
        since=None,
        until=None,
        text=None,
        kind=None,
        limit=100,
        offset=0,
        room=None,
    ):
        """
        The `ArchivedEvent` list matching every filter given, ordered by time.

        ``user`` is an address (``aim:alice``) or an identity id (``alice``)
        on either side; ``peer`` the same for the other side; ``since`` and
        ``until`` are epoch seconds or datetimes (``until`` excluded);
        ``text`` a case-insensitive substring; ``kind`` an event kind;
        ``room`` a room's name (`gateway.rooms`): what was done in it.
        """
        query = (
            sa.select(*_COLUMNS)
            .where(*_filters(user, peer, since, until, text, kind, room))
            .order_by(events.c.created, events.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return self._finish(conn, conn.execute(query).all())

    def count(self, user=None, peer=None, since=None, until=None, text=None, kind=None, room=None):
        """How many events `search` with these filters would find without a limit."""
        query = (
            sa.select(sa.func.count())
            .select_from(events)
            .where(*_filters(user, peer, since, until, text, kind, room))
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def iter_events(
        self,
        user=None,
        peer=None,
        since=None,
        until=None,
        text=None,
        kind=None,
        batch=1000,
        room=None,
    ):
        """Every matching `ArchivedEvent` in time order, ``batch`` rows per query."""
        c = events.c
        clauses = _filters(user, peer, since, until, text, kind, room)
        after = None
        while True:
            query = sa.select(*_COLUMNS).where(*clauses)
            if after is not None:
                created, event_id = after
                query = query.where(
                    sa.or_(
                        c.created > created,
                        sa.and_(c.created == created, c.id > event_id),
                    )
                )
            query = query.order_by(c.created, c.id).limit(batch)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                page = self._finish(conn, rows)
            yield from page
            if len(rows) < batch:
                return
            after = (rows[-1].created, rows[-1].id)

    def _finish(self, conn, rows):
        latest = {}
        if rows:
            query = (
                sa.select(deliveries.c.event_id, deliveries.c.status, deliveries.c.at)
                .where(deliveries.c.event_id.in_([row.id for row in rows]))
                .order_by(deliveries.c.at, deliveries.c.status)
            )
            for delivery in conn.execute(query):
                latest[delivery.event_id] = delivery
        chats = {}
        chat_ids = [row.id for row in rows if row.kind == "chat"]
        if chat_ids:
            for event_id, data in conn.execute(sa.select(events.c.id, events.c.data).where(events.c.id.in_(chat_ids))):
                fields = json.loads(data)
                chats[event_id] = {key: fields.get(key) for key in ("room", "action", "nick", "members")}
        return [ArchivedEvent.from_row(row, latest.get(row.id), chats.get(row.id)) for row in rows]

    def show(self, event_id):
        """
        Everything kept about one event: its `ArchivedEvent` (None when there
        is none), the whole event as recorded (``data``), every delivery note
        ``(status, where, at)`` and every capture ``(direction, network, at,
        bytes, notes)``.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*_COLUMNS, events.c.data).where(events.c.id == event_id)).first()
            if row is None:
                return None
            [archived] = self._finish(conn, [row])
            notes = conn.execute(
                sa.select(deliveries.c.status, deliveries.c.where_, deliveries.c.at)
                .where(deliveries.c.event_id == event_id).order_by(deliveries.c.at)
            ).all()
            kept = conn.execute(
                sa.select(captures.c.direction, captures.c.network, captures.c.at, captures.c.data, captures.c.notes)
                .where(captures.c.event_id == event_id).order_by(captures.c.at, captures.c.direction)
            ).all()
        return {
            "event": archived,
            "data": json.loads(row.data),
            "deliveries": [(n.status, n.where_, n.at) for n in notes],
            "captures": [
                (c.direction, c.network, c.at, base64.b64decode(c.data), [x for x in c.notes.split(",") if x])
                for c in kept
            ],
        }

    def verify(self):
        """
        Check every row: its ``data`` must be an event whose id is the row's.
        A report: ``rows``, ``rejected`` (how many), ``bad`` (the ids of the
        rows that fail) and ``ok``.
        """
        report = {"rows": 0, "rejected": 0, "bad": []}
        query = sa.select(events.c.id, events.c.status, events.c.data)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(query)
            for row in result:
                report["rows"] += 1
                if row.status == "rejected":
                    report["rejected"] += 1
                if not _data_matches(row.id, row.data):
                    report["bad"].append(row.id)
        report["ok"] = not report["bad"]
        return report

    # -- offline store --------------------------------------------------------

    def offline_store(self, identity_id, event, limit=None):
        """
        Hold ``event`` (an `event_to_dict` dict) for ``identity_id``, once per
        id; raise `OfflineFull` when ``limit`` events are held already.
        """
        row = {
            "identity_id": identity_id,
            "event_id": event["id"],
            "created": float(event.get("created", 0.0)),
            "data": json.dumps(event, ensure_ascii=False, separators=(",", ":")),
        }
        with self.engine.begin() as conn:
            if limit is not None:
                held = conn.execute(
                    sa.select(sa.func.count()).select_from(offline).where(offline.c.identity_id == identity_id)
                ).scalar_one()
                already = conn.execute(
                    sa.select(offline.c.event_id).where(
                        offline.c.identity_id == identity_id, offline.c.event_id == row["event_id"]
                    )
                ).first()
                if held >= limit and already is None:
                    raise OfflineFull(f"{identity_id} has {held} messages waiting already")
            conn.execute(self._insert(offline).on_conflict_do_nothing(), [row])

    def offline_pending(self, identity_id):
        """The event dicts held for ``identity_id``, oldest first."""
        query = (
            sa.select(offline.c.data)
            .where(offline.c.identity_id == identity_id)
            .order_by(offline.c.created, offline.c.event_id)
        )
        with self.engine.connect() as conn:
            return [json.loads(data) for data in conn.execute(query).scalars()]

    def offline_remove(self, identity_id, event_ids):
        """Forget ``event_ids`` held for ``identity_id`` (for anyone when None)."""
        event_ids = list(event_ids)
        if not event_ids:
            return
        query = offline.delete().where(offline.c.event_id.in_(event_ids))
        if identity_id is not None:
            query = query.where(offline.c.identity_id == identity_id)
        with self.engine.begin() as conn:
            conn.execute(query)


def _without_nul(values):
    """``values`` with U+FFFD for each NUL character in text."""
    return tuple(
        value.replace("\x00", "\ufffd") if value.__class__ is str else value
        for value in values
    )


def _data_matches(event_id, data):
    try:
        parsed = json.loads(data)
        return parsed["id"] == event_id and model.event_from_dict(parsed).id == event_id
    except (ValueError, TypeError, KeyError):
        return False
