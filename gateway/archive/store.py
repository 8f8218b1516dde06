"""Archive rows in SQL: build them, write them in batches, search, stream, verify."""

import datetime
import json
import time
from typing import Optional

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway import model
from gateway.archive import OfflineFull
from gateway.schema import deliveries, events, offline

__all__ = [
    "ARCHIVE_UNAVAILABLE",
    "ArchiveStore",
    "ArchivedEvent",
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
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def record_to_row(
    event,
    verdict,
    outcome=None,
    sender_identity=None,
    recipient_identity=None,
    recorded=None,
    node="",
):
    """
    The ``events`` row (a JSON-able dict) recording ``event`` and the
    decision about it: ``outcome`` when known, else the policy ``verdict``
    (status ``accepted`` or ``rejected``).
    """
    if outcome is not None:
        status = outcome.status.value
        reason = outcome.reason or verdict.reason
        rule = outcome.rule or verdict.rule
        code = outcome.code
    else:
        status = "accepted" if verdict.allowed else "rejected"
        reason, rule = verdict.reason, verdict.rule
        code = "" if verdict.allowed else "policy"
    recipient = event.recipient
    row = {
        "id": event.id,
        "kind": event.kind,
        "created": float(event.created),
        "sender": str(event.sender),
        "recipient": None if recipient is None else str(recipient),
        "sender_identity": sender_identity,
        "recipient_identity": recipient_identity,
        "text": getattr(event, "text", None),
        "html": getattr(event, "html", None),
        "thread": getattr(event, "thread", None) or getattr(event, "room", None),
        "allowed": bool(verdict.allowed),
        "status": status,
        "reason": reason or "",
        "rule": rule or "",
        "code": code or "",
        "node": node,
        "data": json.dumps(
            model.event_to_dict(event), ensure_ascii=False, separators=(",", ":")
        ),
        "recorded": time.time() if recorded is None else float(recorded),
    }
    for name, limit in _LIMITS.items():
        value = row[name]
        if value.__class__ is str and len(value) > limit:
            row[name] = value[:limit]
    return row


def delivery_row(event_id, status, where, at):
    """The ``deliveries`` row saying ``event_id`` reached ``status`` at ``where``."""
    return {
        "event_id": event_id,
        "status": getattr(status, "value", status),
        "where_": where[: deliveries.c.where_.type.length],
        "at": float(at),
    }


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
    delivered_at: Optional[float] = None

    @classmethod
    def from_row(cls, row, delivery=None):
        """From an ``events`` row and its newest ``deliveries`` row, if any."""
        values = {name: row._mapping[name] for name in _COLUMN_NAMES}
        values["allowed"] = bool(values["allowed"])
        if delivery is not None:
            values["status"] = delivery.status
            values["delivered_at"] = delivery.at
        return cls(**values)


_COLUMN_NAMES = [
    f.name for f in attrs.fields(ArchivedEvent) if f.name != "delivered_at"
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


def _filters(user=None, peer=None, since=None, until=None, text=None, kind=None):
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
    return clauses


def _plain_insert(table, dialect):
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` in the driver's own parameter style."""
    names = [c.name for c in table.c]
    marker = (lambda n: f":{n}") if dialect == "sqlite" else (lambda n: f"%({n})s")
    keys = ", ".join(c.name for c in table.primary_key.columns)
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES "
        f"({', '.join(marker(n) for n in names)}) ON CONFLICT ({keys}) DO NOTHING"
    )


class ArchiveStore:
    """
    The archive's SQL: synchronous, for the writer thread, a
    `gateway.dbthread.DatabaseThread` or the command line; never call it in
    the reactor thread. ``node`` is written into every row it builds.
    """

    def __init__(self, engine, node=""):
        self.engine = engine
        self.node = node
        dialect = engine.dialect.name
        if dialect not in _INSERT:
            raise ValueError(
                f"the archive supports SQLite and PostgreSQL, not {dialect!r}"
            )
        self._insert = _INSERT[dialect]
        self._insert_events_sql = _plain_insert(events, dialect)

    # -- writing ------------------------------------------------------------

    def record_to_row(
        self,
        event,
        verdict,
        outcome=None,
        sender_identity=None,
        recipient_identity=None,
        recorded=None,
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
        )

    def insert_rows(self, rows, delivery_rows=()):
        """
        Write ``events`` rows and ``deliveries`` rows in one transaction.

        A row whose key is already stored is skipped, so writing a batch
        again is harmless; except that a row the archive itself rejected
        (code ``archive-unavailable``) overrides the decision of a copy
        whose commit was reported as failed but in fact happened: the
        caller was told "rejected", so the record must say so too.
        """
        rows = list(rows)
        delivery_rows = list(delivery_rows)
        plain = [row for row in rows if row.get("code") != ARCHIVE_UNAVAILABLE]
        overriding = [row for row in rows if row.get("code") == ARCHIVE_UNAVAILABLE]
        with self.engine.begin() as conn:
            if plain:
                # The driver's own executemany: SQLAlchemy's per-row parameter
                # processing cost more than the insert itself (bench/stages.py).
                conn.exec_driver_sql(self._insert_events_sql, plain)
            if overriding:
                stmt = self._insert(events)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[events.c.id],
                    set_={
                        name: stmt.excluded[name]
                        for name in ("status", "reason", "code", "recorded")
                    },
                )
                conn.execute(stmt, overriding)
            if delivery_rows:
                conn.execute(
                    self._insert(deliveries).on_conflict_do_nothing(), delivery_rows
                )

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
    ):
        """
        The `ArchivedEvent` list matching every filter given, ordered by time.

        ``user`` is an address (``aim:alice``) or an identity id (``alice``)
        on either side; ``peer`` the same for the other side; ``since`` and
        ``until`` are epoch seconds or datetimes (``until`` excluded);
        ``text`` a case-insensitive substring; ``kind`` an event kind.
        """
        query = (
            sa.select(*_COLUMNS)
            .where(*_filters(user, peer, since, until, text, kind))
            .order_by(events.c.created, events.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return self._finish(conn, conn.execute(query).all())

    def count(self, user=None, peer=None, since=None, until=None, text=None, kind=None):
        """How many events `search` with these filters would find without a limit."""
        query = (
            sa.select(sa.func.count())
            .select_from(events)
            .where(*_filters(user, peer, since, until, text, kind))
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
    ):
        """Every matching `ArchivedEvent` in time order, ``batch`` rows per query."""
        c = events.c
        clauses = _filters(user, peer, since, until, text, kind)
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
        return [ArchivedEvent.from_row(row, latest.get(row.id)) for row in rows]

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


def _data_matches(event_id, data):
    try:
        parsed = json.loads(data)
        return parsed["id"] == event_id and model.event_from_dict(parsed).id == event_id
    except (ValueError, TypeError, KeyError):
        return False
