"""The archive's hash chain: written with the rows, recomputed by verify, anchored by signed checkpoints."""

import hashlib
import io
import json
import os
import struct

import sqlalchemy as sa
from twisted.trial.unittest import TestCase

from gateway.compliance import keys
from gateway.compliance.chain import (
    BLOCK_COLUMNS, COLUMNS, GENESIS, Chain, block_hash, canonical, digest, link, link_block,
)
from gateway.compliance.verify import verify
from gateway.model import Message, Outcome, Verdict
from gateway.storage.archive.store import (
    ARCHIVE_UNAVAILABLE,
    ArchiveStore,
    capture_row,
    delivery_row,
    record_to_row,
)
from gateway.storage.schema import captures, chain, chain_blocks, checkpoints, deliveries, events
from tests.support import command_folder, gatewayctl, postgres_engine, sqlite_engine

ALLOW = Verdict.allow("default", "allowed")


def row(text, created, node="n1", **kwargs):
    event = Message("aim:alice", "aim:bob", text, created=created)
    return record_to_row(event, kwargs.pop("verdict", ALLOW), kwargs.pop("outcome", None), "alice", "bob",
                         recorded=created + 0.5, node=node, **kwargs)


class ChainTests(TestCase):
    def test_links_and_digests(self):
        c = Chain("n1")
        rows = [("events", {name: None for name in COLUMNS["events"]} | {"id": "e1", "allowed": True}),
                ("deliveries", {"event_id": "e1", "status": "delivered", "where_": "aim:bob/x", "at": 2.0})]
        block, state = c.block(rows, 5.0)
        block = dict(zip(BLOCK_COLUMNS, block))
        event_digest = digest([rows[0][1][name] for name in COLUMNS["events"]])
        delivery_digest = digest([rows[1][1][name] for name in COLUMNS["deliveries"]])
        self.assertEqual((block["node"], block["first"], block["last"], block["at"], block["format"]), ("n1", 1, 2, 5.0, 2))
        self.assertEqual(json.loads(block["entries"]), [["events", "e1", event_digest],
                                                        ["deliveries", "e1/delivered/aim:bob/x", delivery_digest]])
        self.assertEqual(block["hash"], block_hash(GENESIS, 1, 2, 2, block["entries"]))
        self.assertEqual((c.seq, c.head), (0, GENESIS))  # not moved before the commit
        c.advance(state)
        self.assertEqual((c.seq, c.head), (2, block["hash"]))
        # The next block links to it; nothing, no block.
        more, state = c.block(rows[1:], 6.0)
        self.assertEqual((more[1], more[2]), (3, 3))
        self.assertEqual(more[4], block_hash(block["hash"], 3, 3, 2, more[3]))
        self.assertEqual(c.block([], 7.0), (None, (2, block["hash"])))
        # The links of chains written one row an entry, before blocks.
        # (an entry linked alone, as written before blocks: the hash over the one before and its own fields)
        self.assertEqual(link("h", 3, "events", "e1", "d"), hashlib.sha256(b"h\n3\nevents\ne1\nd").hexdigest())
        self.assertNotEqual(link_block("h", [(3, "events", "e1", "d"), (4, "events", "e2", "d")]),
                            link_block("h", [(3, "events", "e2", "d"), (4, "events", "e1", "d")]))
        # SQLite's 1 and PostgreSQL's True hash alike; any other change does not.
        self.assertEqual(digest(["e1", True, 1.5]), digest(["e1", 1, 1.5]))
        self.assertNotEqual(digest(["e1", True, 1.5]), digest(["e1", True, 1.50001]))

    def test_canonical_bytes_are_as_described(self):
        # Format 2's bytes against an encoder written from `Canonical`'s description, on rows of every shape.
        from hypothesis import given, settings, strategies as st

        value = st.one_of(st.none(), st.text(), st.floats(allow_nan=False), st.booleans(),
                          st.integers(min_value=-(2 ** 70), max_value=2 ** 70))

        @settings(max_examples=300, deadline=None)
        @given(st.lists(value, min_size=4, max_size=24))
        def check(values):
            self.assertEqual(canonical(values), described(values))
            self.assertEqual(canonical(tuple(values)), described(values))

        check()
        # One object twice (the writer's rows) or two equal ones (rows read back) give the same bytes.
        text = "".join(["sha", "red"])
        self.assertEqual(canonical([text, text, None, 1.0]), canonical(["shared", "shared", None, 1.0]))
        self.assertEqual(digest(["e1", True, 1.5, None]), digest(["e1", 1, 1.5, None]))
        self.assertNotEqual(digest(["e1", "", 1.5, None]), digest(["e1", None, 1.5, None]))
        self.assertNotEqual(digest(["e1", True, 1.5, None], format=1), digest(["e1", True, 1.5, None]))
        self.assertEqual(digest(["e1", True, 1.5], format=1),
                         hashlib.sha256(b'["e1",1,1.5]').hexdigest())

    def test_every_column_is_hashed(self):
        for table in (events, deliveries, captures):
            self.assertEqual(set(COLUMNS[table.name]), {c.name for c in table.c}, table.name)


def described(values):
    """`Canonical`'s bytes, as its docstring describes them."""
    out = [b"\x80\x02("]
    for value in values:
        if value is None:
            out.append(b"N")
        elif isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
            out.append(b"X" + len(data).to_bytes(4, "little") + data)
        elif isinstance(value, float):
            out.append(b"G" + struct.pack(">d", value))
        else:
            value = int(value)
            if 0 <= value < 256:
                out.append(b"K" + value.to_bytes(1, "little"))
            elif 0 <= value < 65536:
                out.append(b"M" + value.to_bytes(2, "little"))
            elif -(2 ** 31) <= value < 2 ** 31:
                out.append(b"J" + value.to_bytes(4, "little", signed=True))
            else:
                size = (value + (value < 0)).bit_length() // 8 + 1
                out.append(b"\x8a" + bytes([size]) + value.to_bytes(size, "little", signed=True))
    out.append(b"t.")
    return b"".join(out)


class KeyTests(TestCase):
    def test_made_once_private_and_signing(self):
        path = os.path.join(self.mktemp(), "k.pem")
        key = keys.load_or_create(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(keys.public_hex(keys.load_or_create(path)), keys.public_hex(key))
        mark = keys.checkpoint(key, "n1", 7, "ab" * 32, 12.5)
        self.assertTrue(keys.valid(mark))
        self.assertFalse(keys.valid(dict(mark, seq=8)))
        self.assertFalse(keys.valid(dict(mark, head="cd" * 32)))


class _Verify:
    """The chain on a real database: each kind of tampering is found and named."""

    def engine(self):
        raise NotImplementedError

    def setUp(self):
        self.db = self.engine()
        self.key_path = os.path.join(self.mktemp(), "signing.key")
        self.key = keys.load_or_create(self.key_path)
        self.marks = os.path.join(os.path.dirname(self.key_path), "checkpoints.jsonl")
        self.store = ArchiveStore(self.db, node="n1").chained(self.key, checkpoint_rows=4, checkpoint_file=self.marks)
        self.rows = [row(f"message {i}", 100.0 + i) for i in range(6)]
        self.store.insert_rows(self.rows[:3], [delivery_row(self.rows[0]["id"], "delivered", "aim:bob", 101.0)])
        self.store.insert_rows(self.rows[3:], [], [capture_row(self.rows[3]["id"], "received", "aim", b"raw", ["x"],
                                                               104.0)])

    def check(self, **kwargs):
        with open(self.marks) as f:
            outside = f.readlines()
        return verify(self.db, trusted_keys={keys.public_hex(self.key)}, outside=outside, **kwargs)

    def sql(self, statement, **params):
        with self.db.begin() as conn:
            conn.execute(sa.text(statement), params)

    def test_two_processes_find_what_one_finds(self):
        ids = sorted(r["id"] for r in self.rows)
        self.sql("UPDATE events SET text = 'x' WHERE id = :id", id=ids[0])  # both halves of the id range
        self.sql("DELETE FROM events WHERE id = :id", id=ids[-1])
        self.sql("UPDATE events SET id = '8' || substr(id, 2) WHERE id = :id", id=ids[1])
        one, two = self.check(jobs=1), self.check(jobs=2)
        key = lambda report: sorted((p["problem"], p.get("ref", "")) for p in report["problems"])  # noqa: E731
        self.assertEqual(key(one), key(two))
        self.assertEqual(len(one["problems"]), 4)  # edited, deleted, and one id changed: deleted + inserted
        self.assertEqual((one["events"], one["entries"]), (two["events"], two["entries"]))

    def test_batches_of_one_transaction_chain_in_order(self):
        # The writer process fills one transaction a few rows at a time: its entries, and the checkpoints
        # made between its batches, verify once committed; a rolled-back one leaves no trace in the chain.
        more = [row(f"later {i}", 200.0 + i) for i in range(10)]
        transaction = self.store.begin()
        for start in range(0, 10, 3):
            transaction.add(more[start:start + 3], [delivery_row(more[start]["id"], "delivered", "aim:bob", 201.0)])
        transaction.commit()
        dropped = self.store.begin()
        dropped.add([row("rolled back", 300.0)])
        dropped.rollback()
        self.store.insert_rows([row("after", 400.0)])
        report = self.check()
        self.assertEqual(report["problems"], [])
        self.assertEqual((report["events"], report["deliveries"], report["entries"]), (17, 5, 8 + 14 + 1))
        # At entries 12, 16 and 20, in its batches (each counted in the database and outside, as above).
        self.assertEqual(report["checkpoints"], 4 + 2 * 3)

    def test_untouched_verifies(self):
        report = self.check()
        self.assertEqual(report["problems"], [])
        self.assertTrue(report["ok"])
        self.assertEqual((report["events"], report["deliveries"], report["captures"], report["entries"]), (6, 1, 1, 8))
        self.assertEqual(report["checkpoints"], 4)  # one per batch of 4 entries, in the database and outside

    def test_edited_row(self):
        self.sql("UPDATE events SET text = 'message 1, amended' WHERE id = :id", id=self.rows[1]["id"])
        [problem] = self.check()["problems"]
        self.assertEqual((problem["problem"], problem["table"], problem["ref"]), ("row edited", "events",
                                                                                  self.rows[1]["id"]))

    def test_deleted_row(self):
        self.sql("DELETE FROM events WHERE id = :id", id=self.rows[2]["id"])
        [problem] = self.check()["problems"]
        self.assertEqual((problem["problem"], problem["ref"]), ("row deleted", self.rows[2]["id"]))

    def test_inserted_row(self):
        forged = row("never said", 103.2)
        with self.db.begin() as conn:
            conn.execute(sa.insert(events), [forged])
        [problem] = self.check()["problems"]
        self.assertEqual((problem["problem"], problem["ref"]), ("row not in the chain (inserted)", forged["id"]))

    def test_reordered_rows(self):
        # Two rows' times swapped: both rows' digests change.
        a, b = self.rows[1], self.rows[4]
        self.sql("UPDATE events SET created = :t, recorded = :r WHERE id = :id", t=b["created"], r=b["recorded"],
                 id=a["id"])
        self.sql("UPDATE events SET created = :t, recorded = :r WHERE id = :id", t=a["created"], r=a["recorded"],
                 id=b["id"])
        problems = self.check()["problems"]
        self.assertEqual(sorted(p["ref"] for p in problems), sorted([a["id"], b["id"]]))
        self.assertEqual({p["problem"] for p in problems}, {"row edited"})

    def blocks(self):
        with self.db.connect() as conn:
            return conn.execute(sa.select(chain_blocks).order_by(chain_blocks.c.last)).all()

    def test_reordered_chain_entries(self):
        first = self.blocks()[0]
        entries = json.loads(first.entries)
        entries[1], entries[2] = entries[2], entries[1]
        self.sql("UPDATE chain_blocks SET entries = :e WHERE last = :last", e=json.dumps(entries), last=first.last)
        problems = self.check()["problems"]
        self.assertEqual(problems[0]["problem"], "chain entry altered (or entries reordered)")
        # The first batch's block, entries 1 to 4 (its three events and one delivery), is named.
        self.assertEqual((problems[0]["seq"], problems[0]["block"]), (4, [1, 4]))

    def test_entries_of_format_1_verify_and_the_chain_goes_on_from_them(self):
        # An archive chained before blocks: one ``chain`` row an entry, each its own link, the events'
        # digests those of JSON arrays (the deliveries and captures in format 2: a chain may hold both).
        with self.db.begin() as conn:
            stored = {r.id: r for r in conn.execute(sa.select(events))}
            conn.execute(sa.delete(checkpoints))
            previous = GENESIS
            for block in conn.execute(sa.select(chain_blocks).order_by(chain_blocks.c.last)).all():
                for index, (kind, ref, row_digest) in enumerate(json.loads(block.entries)):
                    format = 2
                    if kind == "events":
                        format, row_digest = 1, digest([getattr(stored[ref], n) for n in COLUMNS["events"]], format=1)
                    seq = block.first + index
                    previous = link(previous, seq, kind, ref, row_digest)
                    conn.execute(sa.insert(chain).values(node="n1", seq=seq, kind=kind, ref=ref, digest=row_digest,
                                                         hash=previous, at=block.at, format=format))
            conn.execute(sa.delete(chain_blocks))
        os.remove(self.marks)
        open(self.marks, "w").close()
        self.store.chain.rolled_back()  # the writer reads the (rewritten) head again
        self.store.insert_rows([row("after the upgrade", 300.0)])
        report = self.check()
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["events"], 7)
        self.sql("UPDATE events SET text = 'x' WHERE id = :id", id=self.rows[1]["id"])
        problems = self.check()["problems"]
        self.assertEqual([(p["problem"], p["ref"]) for p in problems], [("row edited", self.rows[1]["id"])])

    def test_entries_written_before_the_format_column_are_format_1(self):
        from alembic import command

        from gateway.storage.db import HEAD_REVISION, _alembic_config, current_revision, migrate

        command.downgrade(_alembic_config(self.db), "0008")
        self.assertNotIn("format", {c["name"] for c in sa.inspect(self.db).get_columns("chain")})
        self.sql("INSERT INTO chain (node, seq, kind, ref, digest, hash, at) VALUES ('n1', 1, 'events', 'e', 'd', 'h', 1)")
        migrate(self.db)
        self.assertEqual(current_revision(self.db), HEAD_REVISION)
        with self.db.connect() as conn:
            self.assertEqual(conn.execute(sa.select(chain.c.format)).scalars().all(), [1])
            self.assertEqual(conn.execute(sa.select(sa.func.count()).select_from(chain_blocks)).scalar(), 0)

    def test_a_deleted_block(self):
        # The first batch's block is gone: its entries are missing, the next block no longer links to what
        # comes before it, and its rows are in no chain.
        self.sql("DELETE FROM chain_blocks WHERE last = :last", last=self.blocks()[0].last)
        problems = {p["problem"] for p in self.check()["problems"]}
        self.assertTrue({"chain entries missing", "chain entry altered (or entries reordered)",
                         "row not in the chain (inserted)"} <= problems, problems)

    def test_an_unreadable_block(self):
        blocks = self.blocks()
        self.sql("UPDATE chain_blocks SET entries = '[[\"events\"' WHERE last = :last", last=blocks[0].last)
        self.sql("UPDATE chain_blocks SET entries = '[[1, 2, 3], null]' WHERE last = :last", last=blocks[1].last)
        problems = {p["problem"] for p in self.check()["problems"]}
        self.assertIn("chain block altered (its entries unreadable or miscounted)", problems)
        self.assertIn("chain entry altered (or entries reordered)", problems)
        self.assertIn("row not in the chain (inserted)", problems)

    def test_deleted_delivery_and_capture(self):
        self.sql("DELETE FROM deliveries")
        self.sql("UPDATE captures SET notes = ''")
        problems = {(p["problem"], p["table"]) for p in self.check()["problems"]}
        self.assertEqual(problems, {("row deleted", "deliveries"), ("row edited", "captures")})

    def test_a_rewritten_chain_is_caught_by_the_checkpoints(self):
        # The forger edits a row and recomputes every digest and hash after it, but cannot sign.
        self.sql("UPDATE events SET text = 'rewritten' WHERE id = :id", id=self.rows[0]["id"])
        with self.db.begin() as conn:
            stored = {r.id: r for r in conn.execute(sa.select(events))}
            previous = GENESIS
            for block in conn.execute(sa.select(chain_blocks).order_by(chain_blocks.c.last)).all():
                entries = [[kind, ref, digest([getattr(stored[ref], n) for n in COLUMNS["events"]])
                            if kind == "events" else row_digest] for kind, ref, row_digest in json.loads(block.entries)]
                text = json.dumps(entries, separators=(",", ":"))
                previous = block_hash(previous, block.first, block.last, block.format, text)
                conn.execute(sa.update(chain_blocks).where(chain_blocks.c.last == block.last).values(
                    entries=text, hash=previous))
        problems = self.check()["problems"]
        self.assertTrue(problems)
        self.assertEqual({p["problem"] for p in problems},
                         {"checkpoint does not match the chain (rewritten after it was signed)"})
        # ... and re-signing with another key does not help.
        other = keys.load_or_create(os.path.join(self.mktemp(), "other.pem"))
        with self.db.begin() as conn:
            for mark in conn.execute(sa.select(checkpoints)).mappings().all():
                head = conn.execute(sa.select(chain_blocks.c.hash).where(chain_blocks.c.last == mark["seq"])).scalar()
                conn.execute(sa.update(checkpoints).where(checkpoints.c.seq == mark["seq"]).values(
                    keys.checkpoint(other, "n1", mark["seq"], head, mark["at"])))
        problems = {p["problem"] for p in self.check()["problems"]}
        self.assertIn("checkpoint signed by a key not trusted", problems)

    def test_written_again_and_overridden_rows_verify(self):
        # A batch written twice (a journal replayed; one row of it built again, with another time) and a
        # decision overridden by the archive itself. The replayed rows are chained again as the database
        # holds them (the same digests), not as the replay has them.
        self.store.insert_rows([self.rows[0], dict(self.rows[1], recorded=999.0)])
        overriding = record_to_row(
            Message("aim:alice", "aim:bob", "message 5", created=105.0, id=self.rows[5]["id"]), ALLOW,
            Outcome.rejected_(self.rows[5]["id"], "archive down", ARCHIVE_UNAVAILABLE), "alice", "bob",
            recorded=106.0, node="n1")
        self.store.insert_rows([overriding])
        report = self.check()
        self.assertEqual(report["problems"], [])
        with self.db.connect() as conn:
            self.assertEqual(conn.execute(sa.select(sa.func.max(chain_blocks.c.last))).scalar(), 9 + 2)

    def test_a_failed_transaction_leaves_the_head_where_it_was(self):
        bad = dict(row("too long a kind", 120.0), kind="x" * 10_000 if self.db.dialect.name == "postgresql"
                   else None)
        with self.assertRaises(Exception):
            self.store.insert_rows([bad])
        self.store.insert_rows([row("after the failure", 121.0)])
        self.assertEqual(self.check()["problems"], [])

    def test_a_chain_started_over_rows_already_there_covers_them(self):
        plain = ArchiveStore(self.db, node="n2")
        old = [row(f"before the chain {i}", 50.0 + i, node="n2") for i in range(3)]
        plain.insert_rows(old, [delivery_row(old[0]["id"], "delivered", "aim:bob", 51.0)])
        self.assertEqual({p["ref"] for p in self.check()["problems"]},
                         {r["id"] for r in old} | {f"{old[0]['id']}/delivered/aim:bob"})
        store = ArchiveStore(self.db, node="n2").chained(self.key)
        store.insert_rows([row("with the chain", 60.0, node="n2")])
        self.assertEqual(self.check()["problems"], [])
        with self.db.connect() as conn:
            self.assertEqual(conn.execute(sa.select(sa.func.sum(chain_blocks.c.last - chain_blocks.c.first + 1))
                                          .where(chain_blocks.c.node == "n2")).scalar(), 5)

    def test_an_emptied_chain_is_not_rebuilt_over_the_rows(self):
        # Deleting the chain and restarting the writer must not launder the rows: checkpoints were signed.
        self.sql("DELETE FROM chain_blocks")
        store = ArchiveStore(self.db, node="n1").chained(self.key)
        store.insert_rows([row("after", 130.0)])
        problems = self.check()["problems"]
        inserted = {p["ref"].split("/")[0] for p in problems if p["problem"] == "row not in the chain (inserted)"}
        self.assertEqual(inserted, {r["id"] for r in self.rows})  # with their delivery and capture
        self.assertIn("checkpoint does not match the chain (rewritten after it was signed)",
                      {p["problem"] for p in problems})


class SQLiteVerifyTests(_Verify, TestCase):
    def engine(self):
        return sqlite_engine(self)


class PostgreSQLVerifyTests(_Verify, TestCase):
    def engine(self):
        return postgres_engine(self)


class CommandTests(TestCase):
    def test_verify_key_and_checkpoints_from_the_command_line(self):
        from gateway.compliance.writer import chained

        config, settings, engine = command_folder(self, '[gateway]\ndata_dir = "var"\n[archive]\ncheckpoint_rows = 1\n')

        def run(*args):
            return gatewayctl(config, *args)

        status, public = run("archive", "key")
        self.assertEqual((status, len(public.strip())), (0, 64))
        store = chained(ArchiveStore(engine, node=settings.gateway.node), settings.chain_options)
        first = row("one", 1.0, node=settings.gateway.node)
        store.insert_rows([first, row("two", 2.0, node=settings.gateway.node)])
        status, text = run("archive", "verify")
        report = json.loads(text)
        self.assertEqual((status, report["ok"], report["events"]), (0, True, 2))
        self.assertTrue(report["checkpoint_file"])
        status, text = run("archive", "checkpoints")
        [mark] = [json.loads(line) for line in text.splitlines()]
        self.assertEqual((mark["seq"], mark["key"]), (2, public.strip()))
        with engine.begin() as conn:
            conn.execute(sa.update(events).where(events.c.id == first["id"]).values(text="three"))
        import sys

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        status, text = run("archive", "verify")
        self.assertEqual(status, 1)
        self.assertFalse(json.loads(text)["ok"])
        self.assertIn(f"the first: row edited (table events, ref {first['id']}", err.getvalue())
