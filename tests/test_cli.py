"""gatewayctl: users, groups, policy test, archive search/export/verify, on a real SQLite database."""

import csv
import io
import json
import os
import shutil
import tempfile

from twisted.trial import unittest

from gateway.storage.archive.store import ArchiveStore
from gateway.cli import CommandError, main, parse_time
from gateway.storage.db import create_engine
from gateway.model import Message, Outcome, Verdict

CONFIG = """
[gateway]
data_dir = "data"

[[policy.rule]]
name = "sales-closed"
action = "deny"
to = ["group:sales"]
kinds = ["im"]
reason = "sales takes no IM"

[[policy.rule]]
name = "weekend"
action = "deny"
days = ["sat", "sun"]
"""


class CliTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gw-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "gateway.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)

    def run_cli(self, *args, expect=0, stdin=None):
        out, err = io.StringIO(), io.StringIO()
        import sys

        saved = sys.stderr, sys.stdin
        sys.stderr = err
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        try:
            code = main(["--config", self.config, *args], out=out)
        finally:
            sys.stderr, sys.stdin = saved
        self.assertEqual(code, expect, err.getvalue() + out.getvalue())
        return out.getvalue() + err.getvalue()

    def test_users_and_groups(self):
        self.run_cli("groups", "add", "sales", "--description", "Sales team")
        out = self.run_cli("users", "add", "dana", "--password", "pw1", "--handle", "aim:DanaS",
                           "--handle", "xmpp:dana@corp.example", "--group", "sales", "--display-name", "Dana S")
        self.assertIn("added dana (aim:danas, xmpp:dana@corp.example)", out)
        self.run_cli("users", "add", "eli", "--password-stdin", stdin="pw2\n")
        listed = json.loads(self.run_cli("users", "list", "--json"))
        self.assertEqual([p["id"] for p in listed], ["dana", "eli"])
        self.assertEqual(listed[0]["groups"], ["sales"])
        self.assertIn("aim:danas", self.run_cli("users", "list"))

        out = self.run_cli("users", "add", "fay", "--password", "x", "--handle", "aim:danas", expect=2)
        self.assertIn("aim:danas", out)
        out = self.run_cli("users", "add", "gus", "--password", "x", "--handle", "danas", expect=2)
        self.assertIn("NETWORK:USER", out)

        self.run_cli("users", "handle", "add", "eli", "sip:eli@corp.example")
        self.run_cli("groups", "add-member", "sales", "eli")
        self.assertIn("dana,eli", self.run_cli("groups", "list"))
        self.run_cli("groups", "remove-member", "sales", "eli")
        self.run_cli("users", "passwd", "eli", "--password", "new")
        self.run_cli("users", "remove", "eli")
        self.assertIn("no user called 'eli'", self.run_cli("users", "remove", "eli", expect=2))
        self.assertIn("1 user(s)", self.run_cli("users", "list"))

        from gateway.directory.sql import DirectoryStore
        from gateway.model import Address

        store = DirectoryStore(create_engine("sqlite:///" + os.path.join(self.dir, "data", "gateway.sqlite")))
        self.assertEqual(store.authenticate(Address.parse("xmpp:dana@corp.example"), "pw1").id, "dana")
        self.assertIsNone(store.authenticate(Address.parse("xmpp:dana@corp.example"), "pw2"))

    def test_policy_test(self):
        self.run_cli("groups", "add", "sales")
        self.run_cli("users", "add", "dana", "--password", "x", "--handle", "aim:dana", "--group", "sales")
        out = self.run_cli("policy", "test", "--from", "xmpp:eve@outside.example", "--to", "aim:dana", "--at", "2026-11-18T12:00")
        self.assertIn("deny  rule=sales-closed  reason=sales takes no IM", out)
        out = self.run_cli("policy", "test", "--from", "aim:dana", "--to", "aim:x", "--kind", "presence",
                           "--at", "2026-11-18T12:00", "--json")
        self.assertEqual(json.loads(out.splitlines()[0]), {"decision": "allow", "rule": "default", "reason": "allowed by default"})
        out = self.run_cli("policy", "test", "--from", "aim:dana", "--to", "aim:x", "--kind", "presence", "--at", "2026-11-21T12:00")
        self.assertIn("deny  rule=weekend", out)
        self.assertIn("not a time", self.run_cli("policy", "test", "--from", "aim:a", "--to", "aim:b", "--at", "soon", expect=2))

    def _archive(self):
        engine = create_engine("sqlite:///" + os.path.join(self.dir, "data", "gateway.sqlite"))
        from gateway.storage.db import migrate

        migrate(engine)
        from gateway.compliance.writer import chained
        from gateway.config import load

        # Written as the gateway's archive writer writes it: into the node's hash chain.
        store = chained(ArchiveStore(engine, node="n1"), load(self.config).chain_options)
        rows = []
        for i in range(30):
            m = Message("aim:alice", "xmpp:bob@corp.example", f"message {i}", created=1_790_000_000 + i)
            rows.append(store.record_to_row(m, Verdict.allow(rule="default"), Outcome.delivered_(m.id), "alice", "bob"))
        m = Message("aim:mallory", "aim:alice", "buy now", created=1_790_000_100)
        rows.append(store.record_to_row(m, Verdict.deny("spam", "no-spam"), Outcome.rejected_(m.id, "spam", "policy", "no-spam")))
        store.insert_rows(rows)
        return store

    def test_archive_search_export_verify(self):
        self._archive()
        out = self.run_cli("archive", "search", "--user", "alice", "--text", "MESSAGE 2", "--limit", "5")
        self.assertIn("message 2", out)
        self.assertIn("message 23", out)  # "message 2" is in "message 2x" too; oldest first
        self.assertNotIn("message 24", out)
        self.assertIn("5 event(s)", out)
        found = json.loads(self.run_cli("archive", "search", "--peer", "aim:mallory", "--json"))
        self.assertEqual([(r["status"], r["rule"]) for r in found], [("rejected", "no-spam")])

        target = os.path.join(self.dir, "out.csv")
        out = self.run_cli("archive", "export", "--format", "csv", "--output", target, "--user", "bob", "--progress")
        self.assertIn("exported 30 event(s)", out)
        self.assertIn("100%", out)
        with open(target, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([r["text"] for r in rows], [f"message {i}" for i in range(30)])

        target = os.path.join(self.dir, "out.jsonl")
        self.run_cli("archive", "export", "--output", target)
        with open(target) as f:
            self.assertEqual(len(f.readlines()), 31)
        report = json.loads(self.run_cli("archive", "verify", "--deep"))
        self.assertEqual((report["events"], report["bad"], report["ok"]), (31, [], True))

    def test_db_upgrade_and_config_check(self):
        from alembic.script import ScriptDirectory

        from gateway.storage.db import HEAD_REVISION, MIGRATIONS

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        self.assertEqual(self.run_cli("db", "upgrade"), f"database at revision {head}\n")
        # Start-up skips Alembic only when the database is at this very revision.
        self.assertEqual(HEAD_REVISION, head)
        self.assertIn("ok (2 rules", self.run_cli("config", "check"))
        with open(self.config, "a") as f:
            f.write("[oops]\n")
        self.assertIn("unknown section [oops]", self.run_cli("config", "check", expect=2))


class ParseTimeTests(unittest.TestCase):
    def test_forms(self):
        import time

        self.assertLess(abs(parse_time("2h") - (time.time() - 7200)), 5)
        self.assertEqual(parse_time("2026-11-22T10:00+00:00"), 1795341600.0)
        self.assertRaises(CommandError, parse_time, "yesterday")
