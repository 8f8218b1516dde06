"""Tests for gateway.storage.archive.store: rows, inserts, search, streaming, verify."""

import json

import attrs
import sqlalchemy
import sqlalchemy as sa
from twisted.trial.unittest import TestCase

from gateway.storage.archive import OfflineFull
from gateway import model
from gateway.storage import db
from gateway.storage.archive.store import (
    ARCHIVE_UNAVAILABLE,
    ArchivedEvent,
    ArchiveStore,
    capture_row,
    delivery_row,
    record_to_row,
)
from gateway.model import Message, Outcome, Presence, Verdict
from gateway.storage.schema import events
from tests.support import postgres_engine, sqlite_engine

ALLOW = Verdict.allow("default", "allowed")


def message(sender, recipient, text, created, **kwargs):
    return Message(sender, recipient, text, created=created, **kwargs)


class RecordToRowTests(TestCase):
    """Building the ``events`` row of an event and its decision."""

    def test_allowed_message(self):
        event = message(
            "AIM:Alice", "sip:bob@example.com", "hi", 12.5, html="<b>hi</b>"
        )
        row = record_to_row(
            event, ALLOW, sender_identity="alice", recorded=13.0, node="n1"
        )
        self.assertEqual(row["id"], event.id)
        self.assertEqual(row["kind"], "im")
        self.assertEqual(row["sender"], "aim:alice")
        self.assertEqual(row["recipient"], "sip:bob@example.com")
        self.assertEqual(
            (row["sender_identity"], row["recipient_identity"]), ("alice", None)
        )
        self.assertEqual((row["text"], row["html"]), ("hi", "<b>hi</b>"))
        self.assertEqual(row["status"], "accepted")
        self.assertIs(row["allowed"], True)
        self.assertEqual(
            (row["reason"], row["rule"], row["code"]), ("allowed", "default", "")
        )
        self.assertEqual(
            (row["node"], row["created"], row["recorded"]), ("n1", 12.5, 13.0)
        )
        self.assertEqual(json.loads(row["data"]), model.event_to_dict(event))
        self.assertEqual(json.loads(json.dumps(row)), row)

    def test_denied_by_policy(self):
        event = message("aim:alice", "aim:bob", "secret", 1.0)
        row = record_to_row(event, Verdict.deny("no secrets", "dlp"))
        self.assertEqual(row["status"], "rejected")
        self.assertIs(row["allowed"], False)
        self.assertEqual(
            (row["reason"], row["rule"], row["code"]), ("no secrets", "dlp", "policy")
        )

    def test_outcome_decides(self):
        event = message("aim:alice", "aim:bob", "hi", 1.0)
        delivered = record_to_row(event, ALLOW, Outcome.delivered_(event.id))
        self.assertEqual(delivered["status"], "delivered")
        self.assertEqual(
            (delivered["reason"], delivered["rule"]), ("allowed", "default")
        )
        queued = record_to_row(event, ALLOW, Outcome.queued_(event.id))
        self.assertEqual((queued["status"], queued["code"]), ("queued", "offline"))
        rejected = record_to_row(
            event, ALLOW, Outcome.rejected_(event.id, "nobody", "unknown-recipient")
        )
        self.assertEqual(
            (
                rejected["status"],
                rejected["reason"],
                rejected["code"],
                rejected["allowed"],
            ),
            ("rejected", "nobody", "unknown-recipient", True),
        )

    def test_presence_broadcast(self):
        event = Presence("aim:alice", "away", note="lunch", created=5.0)
        row = record_to_row(event, ALLOW)
        self.assertEqual(row["kind"], "presence")
        self.assertIsNone(row["recipient"])
        self.assertIsNone(row["text"])
        self.assertEqual(json.loads(row["data"])["status"], "away")
        json.dumps(row)

    def test_long_values_cut_but_kept_in_data(self):
        event = message("aim:" + "a" * 600, "aim:bob", "hi", 1.0)
        row = record_to_row(event, ALLOW)
        self.assertEqual(len(row["sender"]), events.c.sender.type.length)
        self.assertEqual(json.loads(row["data"])["sender"], str(event.sender))

    def test_store_adds_node(self):
        store = ArchiveStore(sqlalchemy.create_engine("sqlite://"), node="node-7")
        row = store.record_to_row(message("aim:a", "aim:b", "x", 1.0), ALLOW)
        self.assertEqual(row["node"], "node-7")

    def test_delivery_row(self):
        row = delivery_row("e1", model.OutcomeStatus.DELIVERED, "oscar", 3)
        self.assertEqual(
            row, {"event_id": "e1", "status": "delivered", "where_": "oscar", "at": 3.0}
        )


class StoreTestsMixin:
    """The store's behaviour; subclasses say which database to use."""

    def make_engine(self):
        raise NotImplementedError

    def setUp(self):
        self.store = ArchiveStore(self.make_engine(), node="n1")

    def insert(self, *items):
        """Insert (event, verdict[, outcome, sender_identity, recipient_identity])."""
        rows = [self.store.record_to_row(*item, recorded=1.0) for item in items]
        self.store.insert_rows(rows)
        return [item[0] for item in items]

    def ids(self, found):
        return [event.id for event in found]

    def corpus(self):
        e1 = message("aim:alice", "sip:bob@example.com", "Hello Bob", 100.0)
        e2 = message("sip:bob@example.com", "aim:alice", "hi ALICE, 100% sure", 200.0)
        e3 = message("aim:alice", "xmpp:carol@localhost", "lunch?", 300.0)
        e4 = Presence("aim:alice", "away", created=400.0)
        e5 = message(
            "xmpp:carol@localhost", "sip:bob@example.com", "secret_plan", 500.0
        )
        self.insert(
            (e1, ALLOW, None, "alice", "bob"),
            (e2, ALLOW, None, "bob", "alice"),
            (e3, ALLOW, None, "alice", "carol"),
            (e4, ALLOW, None, "alice", None),
            (e5, Verdict.deny("dlp", "no-secrets"), None, "carol", "bob"),
        )
        return e1, e2, e3, e4, e5

    def test_insert_ignores_duplicates(self):
        event = message("aim:alice", "aim:bob", "first", 1.0)
        row = self.store.record_to_row(event, ALLOW)
        delivery = delivery_row(event.id, "delivered", "oscar", 2.0)
        self.store.insert_rows([row], [delivery])
        self.store.insert_rows([dict(row, text="second"), row], [delivery, delivery])
        [found] = self.store.search()
        self.assertEqual((found.text, found.status), ("first", "delivered"))
        self.assertEqual(self.store.count(), 1)

    def test_insert_many(self):
        rows = [
            self.store.record_to_row(message("aim:a", "aim:b", str(i), float(i)), ALLOW)
            for i in range(1200)
        ]
        self.store.insert_rows(rows)
        self.store.insert_rows(rows[600:])
        self.assertEqual(self.store.count(), 1200)

    def test_archive_unavailable_row_overrides(self):
        """The archive's own rejection wins over a copy whose commit looked failed."""
        event = message("aim:alice", "aim:bob", "hi", 1.0)
        row = self.store.record_to_row(event, ALLOW)
        self.store.insert_rows([row])
        rejected = dict(
            row,
            status="rejected",
            code=ARCHIVE_UNAVAILABLE,
            reason="archive unavailable: x",
        )
        self.store.insert_rows([rejected])
        self.store.insert_rows([rejected])
        [found] = self.store.search()
        self.assertEqual(
            (found.status, found.code, found.reason),
            ("rejected", ARCHIVE_UNAVAILABLE, "archive unavailable: x"),
        )

    def test_search_values(self):
        e1 = self.corpus()[0]
        [found] = self.store.search(text="hello")
        self.assertEqual(
            found,
            ArchivedEvent(
                id=e1.id,
                kind="im",
                created=100.0,
                sender="aim:alice",
                recipient="sip:bob@example.com",
                sender_identity="alice",
                recipient_identity="bob",
                text="Hello Bob",
                html=None,
                allowed=True,
                status="accepted",
                reason="allowed",
                rule="default",
                code="",
                node="n1",
                delivered_at=None,
            ),
        )

    def test_search_by_user(self):
        e1, e2, e3, e4, e5 = self.corpus()
        expected = self.ids([e1, e2, e3, e4])
        self.assertEqual(self.ids(self.store.search(user="aim:alice")), expected)
        self.assertEqual(self.ids(self.store.search(user="AIM:Alice")), expected)
        self.assertEqual(self.ids(self.store.search(user="alice")), expected)
        self.assertEqual(
            self.ids(self.store.search(user="bob")), self.ids([e1, e2, e5])
        )
        self.assertEqual(self.store.search(user="aim:nobody"), [])

    def test_search_by_peer(self):
        e1, e2, e3, e4, e5 = self.corpus()
        self.assertEqual(
            self.ids(self.store.search(user="alice", peer="sip:bob@example.com")),
            self.ids([e1, e2]),
        )
        self.assertEqual(
            self.ids(self.store.search(user="bob", peer="alice")), self.ids([e1, e2])
        )
        self.assertEqual(self.ids(self.store.search(peer="carol")), self.ids([e3, e5]))

    def test_search_by_time_text_kind(self):
        e1, e2, e3, e4, e5 = self.corpus()
        self.assertEqual(
            self.ids(self.store.search(since=200, until=400)), self.ids([e2, e3])
        )
        self.assertEqual(self.ids(self.store.search(text="HELLO")), self.ids([e1]))
        # LIKE wildcards in the text are literal.
        self.assertEqual(self.ids(self.store.search(text="100%")), self.ids([e2]))
        self.assertEqual(self.ids(self.store.search(text="t_p")), self.ids([e5]))
        self.assertEqual(self.ids(self.store.search(kind="presence")), self.ids([e4]))
        self.assertEqual(
            self.ids(self.store.search(user="alice", kind="im", since=150)),
            self.ids([e2, e3]),
        )

    def test_search_limit_offset(self):
        e1, e2, e3, e4, e5 = self.corpus()
        self.assertEqual(self.ids(self.store.search(limit=2)), self.ids([e1, e2]))
        self.assertEqual(
            self.ids(self.store.search(limit=2, offset=3)), self.ids([e4, e5])
        )

    def test_status_from_newest_delivery(self):
        e1, e2 = self.corpus()[:2]
        self.store.insert_rows(
            [],
            [
                delivery_row(e1.id, "queued", "offline", 110.0),
                delivery_row(e1.id, "delivered", "oscar", 150.0),
            ],
        )
        found = {event.id: event for event in self.store.search()}
        self.assertEqual(
            (found[e1.id].status, found[e1.id].delivered_at), ("delivered", 150.0)
        )
        self.assertEqual(
            (found[e2.id].status, found[e2.id].delivered_at), ("accepted", None)
        )
        rejected = self.store.search(peer="carol", user="bob")
        self.assertEqual([event.status for event in rejected], ["rejected"])

    def test_count(self):
        self.corpus()
        self.assertEqual(self.store.count(), 5)
        self.assertEqual(self.store.count(user="alice"), 4)
        self.assertEqual(self.store.count(user="alice", peer="bob"), 2)
        self.assertEqual(self.store.count(text="nothing like it"), 0)

    def test_iter_events_pages_in_order(self):
        # Equal times on page boundaries: the id breaks the tie.
        items = [
            (message("aim:alice", "aim:bob", f"m{i}", float(i // 3)), ALLOW)
            for i in range(25)
        ]
        self.insert(*items)
        self.insert((message("aim:carol", "aim:dave", "other", 2.0), ALLOW))
        everything = self.store.search(limit=None)
        self.assertEqual(list(self.store.iter_events(batch=4)), everything)
        self.assertEqual(len(everything), 26)
        alice = list(self.store.iter_events(user="aim:alice", batch=5))
        self.assertEqual(len(alice), 25)
        self.assertEqual(alice, self.store.search(user="aim:alice", limit=None))
        self.assertEqual(list(self.store.iter_events(text="absent")), [])

    def test_verify(self):
        e1, e2, e3 = self.corpus()[:3]
        report = self.store.verify()
        self.assertEqual(
            report,
            {"rows": 5, "rejected": 1, "bad": [], "ok": True},
        )
        other = json.dumps(model.event_to_dict(message("aim:x", "aim:y", "z", 1.0)))
        with self.store.engine.begin() as conn:
            conn.execute(
                events.update().where(events.c.id == e1.id).values(data="{not json")
            )
            conn.execute(events.update().where(events.c.id == e3.id).values(data=other))
        report = self.store.verify()
        self.assertEqual((report["rows"], report["ok"]), (5, False))
        self.assertEqual(sorted(report["bad"]), sorted([e1.id, e3.id]))

    def test_offline_store(self):
        first = message("aim:bob", "aim:alice", "one", 2.0)
        second = message("aim:bob", "aim:alice", "two", 1.0)
        other = message("aim:bob", "aim:carol", "three", 1.5)
        for identity, event in [("alice", first), ("alice", second), ("carol", other)]:
            self.store.offline_store(identity, model.event_to_dict(event))
        self.store.offline_store("alice", model.event_to_dict(first))
        pending = self.store.offline_pending("alice")
        self.assertEqual(
            [model.event_from_dict(data) for data in pending], [second, first]
        )
        self.store.offline_remove("alice", [first.id, other.id])
        self.assertEqual(
            [data["id"] for data in self.store.offline_pending("alice")], [second.id]
        )
        self.assertEqual(len(self.store.offline_pending("carol")), 1)
        self.store.offline_remove(None, [second.id, other.id])
        self.store.offline_remove("alice", [])
        self.assertEqual(self.store.offline_pending("alice"), [])
        self.assertEqual(self.store.offline_pending("carol"), [])

    def test_offline_limit(self):
        first, second = (message("aim:bob", "aim:alice", t, 1.0) for t in ("one", "two"))
        self.store.offline_store("alice", model.event_to_dict(first), limit=1)
        self.store.offline_store("alice", model.event_to_dict(first), limit=1)  # a retry is fine
        with self.assertRaises(OfflineFull):
            self.store.offline_store("alice", model.event_to_dict(second), limit=1)
        self.store.offline_store("carol", model.event_to_dict(second), limit=1)
        self.assertEqual(len(self.store.offline_pending("alice")), 1)

    def test_probe(self):
        self.store.probe()


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    def make_engine(self):
        return sqlite_engine(self)


class PostgresStoreTests(StoreTestsMixin, TestCase):
    def make_engine(self):
        return postgres_engine(self)


class TransformChainMigrationTests(TestCase):
    """Revisions 0004 and 0005 upgrade a database that already holds events, and the new rows use them."""

    def check(self, engine):
        import json

        from alembic import command

        from gateway.storage.db import HEAD_REVISION, _alembic_config, current_revision
        from gateway.model import Message, Verdict

        command.downgrade(_alembic_config(engine), "0003")
        self.assertEqual(current_revision(engine), "0003")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("events")}
        self.assertNotIn("original", columns)
        old = Message("aim:alice", "aim:bob", "from before", created=1.0)
        row = record_to_row(old, Verdict.allow(), None)
        del row["original"], row["transforms"]
        with engine.begin() as conn:
            conn.execute(sa.insert(events), [row])
        db.migrate(engine)
        self.assertEqual(current_revision(engine), HEAD_REVISION)
        store = ArchiveStore(engine)
        sent = Message("aim:alice", "aim:bob", "card 4111", created=2.0)
        shown = attrs.evolve(sent, text="card [card]")
        store.insert_rows([store.record_to_row(shown, Verdict.allow(), None, original=sent, transforms=("mask",))],
                          capture_rows=[capture_row(sent.id, "received", "aim", b"\x00raw", ["html-dropped"], 2.0)])
        before, after = store.search(user="aim:alice")
        self.assertEqual((before.text, before.original, before.transforms), ("from before", None, None))
        self.assertEqual((after.text, json.loads(after.original)["text"], after.transforms),
                         ("card [card]", "card 4111", "mask"))
        shown_whole = store.show(sent.id)
        self.assertEqual(shown_whole["captures"], [("received", "aim", 2.0, b"\x00raw", ["html-dropped"])])

    def test_sqlite(self):
        self.check(sqlite_engine(self))

    def test_postgresql(self):
        self.check(postgres_engine(self))
