"""Tests for the archive's keys and bulk inserts: time-ordered event ids, rows many to a statement."""

import json
import os
import re
import sqlite3

import sqlalchemy
from twisted.trial.unittest import TestCase

from gateway import model
from gateway.storage.archive.store import ArchiveStore, record_to_row
from gateway.model import Message, Outcome, Presence, Verdict
from gateway.storage.schema import events
from tests.support import postgres_engine, sqlite_engine

ALLOW = Verdict.allow("default", "allowed")


class FakeClock:
    """Stands in for the ``time`` module in `gateway.model`: ``time_ns`` is what it is told."""

    def __init__(self, ms):
        self.ms = ms

    def time_ns(self):
        return self.ms * 1_000_000 + 999_999


class EventIdTests(TestCase):
    def setUp(self):
        self.clock = FakeClock(1_700_000_000_123)
        self.patch(model, "time", self.clock)

    def test_format(self):
        event_id = model.new_event_id()
        self.assertTrue(re.fullmatch("[0-9a-f]{32}", event_id), event_id)
        self.assertEqual(event_id[:12], "%012x" % 1_700_000_000_123)

    def test_later_ids_sort_later(self):
        made = []
        for ms in (1_700_000_000_123, 1_700_000_000_124, 1_700_000_001_000, 1_800_000_000_000):
            self.clock.ms = ms
            made.extend(model.new_event_id() for _ in range(50))
        # Sorting the ids sorts them by the time they were made.
        self.assertEqual([i[:12] for i in sorted(made)], [i[:12] for i in made])
        self.assertEqual([int(i[:12], 16) for i in made[::50]],
                         [1_700_000_000_123, 1_700_000_000_124, 1_700_000_001_000, 1_800_000_000_000])

    def test_unique_within_a_millisecond(self):
        ids = [model.new_event_id() for _ in range(20_000)]
        self.assertEqual(len(set(ids)), len(ids))

    def test_events_get_them(self):
        event = Message("aim:alice", "aim:bob", "hi")
        self.assertEqual(event.id[:12], "%012x" % self.clock.ms)

    def test_forked_child_makes_other_ids(self):
        """A child process does not repeat its parent's ids (the generator is seeded again)."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one id into the pipe, and out
            try:
                os.write(write, model.new_event_id().encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            child = pipe.read().decode()
        os.waitpid(pid, 0)
        parent = model.new_event_id()
        self.assertEqual(len(child), 32)
        self.assertEqual(child[:12], parent[:12])  # the same (fake) millisecond
        self.assertNotEqual(child, parent)


def odd_rows():
    """Rows with every kind of value a column takes: NULLs, booleans, text, floats."""
    rows = []
    for i in range(600):
        if i % 7 == 3:
            event = Presence("aim:alice", "away", created=1_700_000_000.123456 + i)
            verdict, outcome = ALLOW, None
        else:
            event = Message(
                "aim:alice" if i % 2 else "sip:bob@example.com",
                "xmpp:carol@localhost",
                f"message {i}: tab\there, newline\nthere, back\\slash, quote' \"é ✓",
                html="<b>x</b>" if i % 5 == 0 else None,
                thread=f"t{i}" if i % 3 == 0 else None,
                created=1_700_000_000.000001 * (1 + i / 1e6),
            )
            verdict = ALLOW if i % 4 else Verdict.deny("dlp", "no-secrets")
            outcome = Outcome.delivered_(event.id) if i % 4 else None
        rows.append(
            record_to_row(
                event,
                verdict,
                outcome,
                sender_identity="alice" if i % 2 else None,
                recipient_identity=None if i % 3 else "carol",
                recorded=1_700_000_100.5 + i / 7,
                node="n1",
            )
        )
    return rows


class InsertTestsMixin:
    """Bulk inserts write exactly the rows given; subclasses say which database to use."""

    def make_engine(self, **kwargs):
        raise NotImplementedError

    def stored(self, engine):
        with engine.connect() as conn:
            found = conn.execute(sqlalchemy.select(events)).mappings().all()
        return {row["id"]: dict(row, allowed=bool(row["allowed"])) for row in found}

    def test_every_batch_size_round_trips(self):
        engine = self.make_engine()
        store = ArchiveStore(engine)
        rows = odd_rows()
        done = 0
        for size in (1, 2, 255, 256, 257, 0, 89):
            store.insert_rows(rows[done : done + size])
            done += size
        self.assertEqual(self.stored(engine), {row["id"]: row for row in rows[:done]})

    def test_duplicates_in_one_batch_and_across_batches(self):
        engine = self.make_engine()
        store = ArchiveStore(engine)
        rows = odd_rows()[:300]
        changed = [dict(row, text="changed") for row in rows[:10]]
        store.insert_rows(rows[:100] + rows[:100] + changed)
        store.insert_rows(changed + rows)
        self.assertEqual(self.stored(engine), {row["id"]: row for row in rows})


class SQLiteInsertTests(InsertTestsMixin, TestCase):
    def make_engine(self, **kwargs):
        return sqlite_engine(self, **kwargs)

    def test_commit_waits_for_the_disk_and_the_setting_is_restored(self):
        """Archive commits run with synchronous=FULL; the connection goes back to NORMAL."""
        engine = self.make_engine(pool_size=1, max_overflow=0)
        seen = []

        @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
        def setting(conn, cursor, statement, parameters, context, executemany):
            if statement.startswith("INSERT INTO events"):
                seen.append(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])

        ArchiveStore(engine).insert_rows(odd_rows()[:300])
        self.assertEqual(set(seen), {2})  # FULL
        with engine.connect() as conn:
            self.assertEqual(conn.exec_driver_sql("PRAGMA synchronous").scalar(), 1)  # NORMAL

    def test_few_parameters_allowed(self):
        """A SQLite built with a low parameter limit gets fewer rows per statement."""
        engine = self.make_engine()

        @sqlalchemy.event.listens_for(engine, "connect")
        def limit(dbapi_connection, record):
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        engine.dispose()  # connections made from now on have the limit
        store = ArchiveStore(engine)
        rows = odd_rows()
        store.insert_rows(rows)
        self.assertEqual(len(self.stored(engine)), len(rows))


class PostgresInsertTests(InsertTestsMixin, TestCase):
    def make_engine(self, **kwargs):
        return postgres_engine(self, **kwargs)

    def test_failed_batch_leaves_nothing_staged(self):
        """After a batch that fails, the same connection writes the next one, and only it."""
        engine = self.make_engine(pool_size=1, max_overflow=0)
        store = ArchiveStore(engine)
        rows = odd_rows()[:50]
        # The first batch on a new connection makes the staging table, then fails.
        with self.assertRaises(sqlalchemy.exc.DBAPIError):
            store.insert_rows(rows[:20] + [dict(rows[20], created="not a time")])
        store.insert_rows(rows[30:40])
        with self.assertRaises(sqlalchemy.exc.DBAPIError):
            store.insert_rows(rows[:20] + [dict(rows[20], created="not a time")])
        store.insert_rows(rows[40:])
        self.assertEqual(self.stored(engine), {row["id"]: row for row in rows[30:]})

    def test_nul_characters(self):
        """PostgreSQL text cannot hold NUL: the columns get U+FFFD, ``data`` keeps the event whole."""
        engine = self.make_engine()
        store = ArchiveStore(engine)
        event = Message("aim:alice", "aim:bob", "a\x00b", html="<i>\x00</i>", thread="t\x00")
        row = record_to_row(event, Verdict.deny("no\x00", "r\x00"), sender_identity="al\x00ice", recorded=1.0)
        fine = odd_rows()[:5]
        store.insert_rows(fine + [row])
        stored = self.stored(engine)
        self.assertEqual(
            stored.pop(event.id),
            dict(
                row,
                sender_identity="al\ufffdice",
                text="a\ufffdb",
                html="<i>\ufffd</i>",
                thread="t\ufffd",
                reason="no\ufffd",
                rule="r\ufffd",
            ),
        )
        self.assertEqual(model.event_from_dict(json.loads(row["data"])), event)
        self.assertEqual(stored, {r["id"]: r for r in fine})
