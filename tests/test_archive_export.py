"""Tests for gateway.storage.archive.export: exports, the progress bar, tables and JSON."""

import csv
import datetime
import io
import json
import os

import attrs
from twisted.trial.unittest import TestCase

from gateway.storage.archive.export import FIELDS, ProgressBar, export, format_table, to_json
from gateway.storage.archive.store import ArchivedEvent, ArchiveStore
from gateway.model import Message, Presence, Verdict
from tests.support import sqlite_engine

ALLOW = Verdict.allow("default", "allowed")


def archived(n, **changes):
    values = dict(
        id=f"{n:032x}",
        kind="im",
        created=1_700_000_000.0 + n,
        sender="aim:alice",
        recipient="sip:bob@example.com",
        sender_identity="alice",
        recipient_identity="bob",
        text=f"message {n}",
        html=None,
        allowed=True,
        status="delivered",
        reason="allowed",
        rule="default",
        code="",
        node="n1",
        delivered_at=None,
    )
    values.update(changes)
    return ArchivedEvent(**values)


class ExportTests(TestCase):
    def setUp(self):
        self.store = ArchiveStore(sqlite_engine(self))
        rows = [
            self.store.record_to_row(
                Message(
                    "aim:alice",
                    "sip:bob@example.com",
                    f'm{n}, "quoted"',
                    created=float(n),
                ),
                ALLOW,
                sender_identity="alice",
            )
            for n in range(2500)
        ]
        rows.append(
            self.store.record_to_row(
                Presence("aim:carol", "away", created=5000.0), ALLOW
            )
        )
        self.store.insert_rows(rows)
        self.output = os.path.abspath(self.mktemp())

    def test_jsonl(self):
        calls = []
        done = export(
            self.store, self.output, "jsonl", {}, progress=lambda *a: calls.append(a)
        )
        self.assertEqual(done, 2501)
        self.assertEqual(calls, [(1000, 2501), (2000, 2501), (2501, 2501)])
        with open(self.output, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        expected = list(self.store.iter_events())
        self.assertEqual(
            [line.pop("time") for line in lines][:2],
            [
                "1970-01-01T00:00:00.000+00:00",
                "1970-01-01T00:00:01.000+00:00",
            ],
        )
        self.assertEqual(lines, [attrs.asdict(event) for event in expected])
        self.assertFalse(os.path.exists(self.output + ".part"))

    def test_csv_with_filters(self):
        done = export(self.store, self.output, "csv", {"user": "alice", "until": 10})
        self.assertEqual(done, 10)
        with open(self.output, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], FIELDS)
        self.assertEqual(len(rows), 11)
        first = dict(zip(rows[0], rows[1]))
        self.assertEqual(
            (
                first["sender"],
                first["text"],
                first["created"],
                first["recipient_identity"],
            ),
            ("aim:alice", 'm0, "quoted"', "0.0", ""),
        )

    def test_nothing_matches(self):
        calls = []
        progress = lambda *args: calls.append(args)  # noqa: E731
        done = export(self.store, self.output, "csv", {"text": "absent"}, progress)
        self.assertEqual((done, calls), (0, [(0, 0)]))
        with open(self.output) as f:
            self.assertEqual(f.read().strip(), ",".join(FIELDS))

    def test_progress_once_at_a_round_end(self):
        calls = []
        done = export(
            self.store,
            self.output,
            "jsonl",
            {"until": 1000},
            lambda *a: calls.append(a),
        )
        self.assertEqual((done, calls), (1000, [(1000, 1000)]))

    def test_unknown_format(self):
        self.assertRaises(ValueError, export, self.store, self.output, "xml", {})
        self.assertFalse(os.path.exists(self.output))

    def test_failure_leaves_no_file(self):
        store = self.store

        class Broken:
            count = store.count

            def iter_events(self, **filters):
                yield from list(store.iter_events(**filters))[:5]
                raise RuntimeError("database went away")

        self.assertRaises(RuntimeError, export, Broken(), self.output, "jsonl", {})
        self.assertEqual(os.listdir(os.path.dirname(self.output)), [])


class ProgressBarTests(TestCase):
    def test_render(self):
        now = [100.0]
        stream = io.StringIO()
        bar = ProgressBar(stream, 1000, width=10, clock=lambda: now[0])
        now[0] = 102.0
        bar(500, 1000)
        self.assertEqual(
            stream.getvalue(), "\r[#####-----]  50%  500/1,000 rows  250 rows/s"
        )
        now[0] = 104.0
        bar(1000)
        bar.finish()
        self.assertEqual(stream.getvalue().count("\n"), 1)
        self.assertTrue(
            stream.getvalue().endswith(
                "[##########] 100%  1,000/1,000 rows  250 rows/s\n"
            )
        )

    def test_empty_total(self):
        bar = ProgressBar(io.StringIO(), 0, width=4, clock=lambda: 0.0)
        self.assertEqual(bar.render(0), "[####] 100%  0/0 rows  0 rows/s")


class FormatTests(TestCase):
    def test_table(self):
        events = [
            archived(1, text="hello\nthere"),
            archived(2, text="x" * 80, sender="xmpp:carol@localhost"),
            archived(3, kind="presence", text=None, recipient=None, status="accepted"),
        ]
        lines = format_table(events, text_width=20).splitlines()
        self.assertEqual(
            lines[0].split(), ["time", "sender", "recipient", "status", "text"]
        )
        self.assertEqual(set(lines[1].replace(" ", "")), {"-"})
        stamp = datetime.datetime.fromtimestamp(events[0].created).isoformat(sep=" ")
        self.assertTrue(lines[2].startswith(stamp + "  aim:alice "))
        self.assertTrue(lines[2].endswith("delivered  hello there"))
        self.assertTrue(lines[3].endswith("x" * 19 + "…"))
        self.assertIn(" *  ", lines[4])
        self.assertTrue(lines[4].endswith("accepted   [presence]"))
        # Columns line up.
        column = lines[0].index("recipient")
        self.assertEqual({line[column - 2 : column] for line in lines[2:]}, {"  "})

    def test_empty_table(self):
        self.assertEqual(format_table([]), "no events")

    def test_to_json(self):
        events = [archived(1), archived(2, delivered_at=5.0)]
        parsed = json.loads(to_json(events))
        self.assertEqual([item["id"] for item in parsed], [events[0].id, events[1].id])
        self.assertEqual(parsed[1]["delivered_at"], 5.0)
        self.assertEqual(parsed[0]["time"], "2023-11-14T22:13:21.000+00:00")
        self.assertEqual(json.loads(to_json([])), [])
