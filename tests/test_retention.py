"""Retention rules, purges and legal holds: what expires goes, what is held stays, and verify tells them apart."""

import json
import os

import sqlalchemy as sa
from twisted.trial.unittest import TestCase

from gateway.compliance import keys
from gateway.compliance.retention import add_hold, list_holds, purge, release_hold
from gateway.compliance.verify import verify
from gateway.config import ConfigError, RetentionConfig, loads
from gateway.model import Message, Presence, PresenceStatus, Verdict
from gateway.storage.archive.store import ArchiveStore, delivery_row, record_to_row
from gateway.storage.schema import events, holds, purged
from tests.support import command_folder, gatewayctl, postgres_engine, sqlite_engine

DAY = 86400.0
NOW = 1_800_000_000.0
ALLOW = Verdict.allow("default", "allowed")
RULES = (
    RetentionConfig("presence-90-days", 90, kinds=("presence",)),
    RetentionConfig("aim-7-years", 2555, parties=("network:aim",)),
    RetentionConfig("everything-else-1-year", 365),
)


def im(sender, recipient, text, age_days, sender_identity=None, recipient_identity=None, now=NOW):
    event = Message(sender, recipient, text, created=now - age_days * DAY)
    return record_to_row(event, ALLOW, None, sender_identity, recipient_identity, recorded=event.created, node="n1")


def presence(sender, age_days, identity):
    event = Presence(sender, PresenceStatus.AWAY, created=NOW - age_days * DAY)
    return record_to_row(event, ALLOW, None, identity, None, recorded=event.created, node="n1")


class _Retention:
    def engine(self):
        raise NotImplementedError

    def setUp(self):
        self.db = self.engine()
        self.key = keys.load_or_create(os.path.join(self.mktemp(), "signing.key"))
        self.chain = {"node": "n1", "key": self.key}
        self.store = ArchiveStore(self.db, node="n1").chained(self.key)
        self.rows = {
            "old-presence": presence("xmpp:alice@corp", 100, "alice"),
            "new-presence": presence("xmpp:alice@corp", 10, "alice"),
            "old-aim": im("aim:alice", "aim:bob", "seven years are not over", 400, "alice", "bob"),
            "old-xmpp": im("xmpp:alice@corp", "xmpp:carol@corp", "over a year ago", 400, "alice", "carol"),
            "old-xmpp-bob": im("xmpp:bob@corp", "xmpp:alice@corp", "to alice, long ago", 400, "bob", "alice"),
            "new-xmpp": im("xmpp:alice@corp", "xmpp:carol@corp", "last week", 7, "alice", "carol"),
        }
        self.store.insert_rows(list(self.rows.values()),
                               [delivery_row(self.rows["old-xmpp"]["id"], "delivered", "xmpp:carol@corp", NOW)])

    def left(self):
        with self.db.connect() as conn:
            ids = set(conn.execute(sa.select(events.c.id)).scalars())
        return {name for name, row in self.rows.items() if row["id"] in ids}

    def check(self):
        return verify(self.db, trusted_keys={keys.public_hex(self.key)})

    def test_the_first_matching_rule_decides_and_verify_accepts_the_purge(self):
        report = purge(self.db, "n1", RULES, self.chain, now=NOW)
        self.assertEqual(report["expired"], {"presence-90-days": 1, "everything-else-1-year": 2})
        self.assertEqual(report["rows"], 4)  # three events and one delivery note
        self.assertEqual(self.left(), {"new-presence", "old-aim", "new-xmpp"})
        result = self.check()
        self.assertEqual(result["problems"], [])
        self.assertEqual(result["purges"], 1)

    def test_a_dry_run_removes_nothing(self):
        report = purge(self.db, "n1", RULES, self.chain, now=NOW, dry_run=True)
        self.assertEqual(sum(report["expired"].values()), 3)
        self.assertIsNone(report["purge"])
        self.assertEqual(self.left(), set(self.rows))

    def test_a_hold_keeps_its_rows_until_released(self):
        hold = add_hold(self.db, self.chain, "alice", "litigation 2026-17", peer="user:carol", now=NOW)
        report = purge(self.db, "n1", RULES, self.chain, now=NOW)
        self.assertEqual(report["held"], 1)
        self.assertIn("old-xmpp", self.left())
        self.assertNotIn("old-xmpp-bob", self.left())  # alice and bob: not under this hold
        [active] = list_holds(self.db, active_only=True)
        self.assertEqual((active["user"], active["peer"], active["reason"]), ("alice", "user:carol",
                                                                              "litigation 2026-17"))
        release_hold(self.db, self.chain, hold, "case closed", now=NOW + 1)
        self.assertEqual(list_holds(self.db, active_only=True), [])
        purge(self.db, "n1", RULES, self.chain, now=NOW + 2)
        self.assertNotIn("old-xmpp", self.left())
        self.assertEqual(self.check()["problems"], [])
        with self.assertRaises(ValueError):
            release_hold(self.db, self.chain, hold, "again")

    def test_a_hold_by_address_and_from_a_time(self):
        add_hold(self.db, self.chain, "bob", "inquiry", peer="xmpp:alice@corp", since=NOW - 500 * DAY, now=NOW)
        add_hold(self.db, self.chain, "alice", "only recent", since=NOW - 200 * DAY, now=NOW)
        purge(self.db, "n1", RULES, self.chain, now=NOW)
        # alice's hold covers her presence of 100 days ago (not her message of 400); bob's, his message to alice.
        self.assertEqual(self.left(), {"old-presence", "new-presence", "old-aim", "new-xmpp", "old-xmpp-bob"})

    def test_a_deletion_no_purge_lists_is_still_caught(self):
        purge(self.db, "n1", RULES, self.chain, now=NOW)
        with self.db.begin() as conn:
            conn.execute(sa.delete(events).where(events.c.id == self.rows["new-xmpp"]["id"]))
        [problem] = self.check()["problems"]
        self.assertEqual((problem["problem"], problem["ref"]), ("row deleted", self.rows["new-xmpp"]["id"]))

    def test_a_purge_list_stretched_to_cover_a_deletion_is_caught(self):
        report = purge(self.db, "n1", RULES, self.chain, now=NOW)
        victim = self.rows["new-xmpp"]["id"]
        with self.db.begin() as conn:
            conn.execute(sa.delete(events).where(events.c.id == victim))
            conn.execute(sa.insert(purged), [{"kind": "events", "ref": victim, "purge_id": report["purge"]}])
        problems = {(p["problem"], p["ref"]) for p in self.check()["problems"]}
        self.assertEqual(problems, {("purge list altered (rows added to or taken from it)", report["purge"])})

    def test_an_altered_hold_is_caught(self):
        hold = add_hold(self.db, self.chain, "alice", "litigation", now=NOW)
        with self.db.begin() as conn:
            conn.execute(sa.update(holds).where(holds.c.id == hold).values(released=NOW, release_reason="quietly"))
        [problem] = self.check()["problems"]
        self.assertEqual((problem["problem"], problem["table"], problem["ref"]), ("row edited", "holds", hold))

    def test_a_large_purge_verifies(self):
        # More purged rows than verify looks up at once, while it streams the rest.
        self.store.insert_rows([im("xmpp:x@corp", "xmpp:y@corp", f"old {i}", 500) for i in range(2500)])
        report = purge(self.db, "n1", RULES, self.chain, now=NOW)
        self.assertEqual(report["rows"], 2504)
        result = self.check()
        self.assertEqual((result["problems"], result["events"]), ([], 3))

    def test_rules_by_group(self):
        from gateway.directory.sql import DirectoryStore

        directory = DirectoryStore(self.db)
        directory.add_group("traders", "")
        directory.add_person("carol", password=None, handles=["xmpp:carol@corp"], groups=["traders"])
        rules = (RetentionConfig("traders-10-years", 3650, parties=("group:traders",)),) + RULES
        purge(self.db, "n1", rules, self.chain, now=NOW)
        self.assertEqual(self.left(), {"new-presence", "old-aim", "new-xmpp", "old-xmpp"})


class SQLiteRetentionTests(_Retention, TestCase):
    def engine(self):
        return sqlite_engine(self)


class PostgreSQLRetentionTests(_Retention, TestCase):
    def engine(self):
        return postgres_engine(self)


class ConfigTests(TestCase):
    def test_rules_read_and_checked(self):
        config = loads('[[archive.retention]]\nname = "presence"\ndays = 90\nkinds = ["presence"]\n'
                       '[[archive.retention]]\ndays = 2555\nparties = ["network:aim", "group:traders"]\n', "<t>")
        self.assertEqual(config.archive.retention, (
            RetentionConfig("presence", 90.0, ("presence",)),
            RetentionConfig("retention-2", 2555.0, (), ("network:aim", "group:traders"))))
        for text, wanted in (("days = 0", "days must be a number greater than 0"),
                             ("days = 1\nkinds = [\"mail\"]", "kinds must be a list of"),
                             ("days = 1\nparties = [42]", "a matcher is text"),
                             ("days = 1\nkeep = true", "unknown key 'keep'")):
            e = self.assertRaises(ConfigError, loads, f"[[archive.retention]]\n{text}\n", "<t>")
            self.assertIn(wanted, str(e))


class CommandTests(TestCase):
    def test_purge_and_holds_from_the_command_line(self):
        from gateway.compliance.writer import chained

        path, settings, engine = command_folder(
            self, '[gateway]\nnode = "n1"\ndata_dir = "var"\n[[archive.retention]]\nname = "one-year"\ndays = 365\n')

        def run(*args, status=0):
            code, text = gatewayctl(path, *args)
            self.assertEqual(code, status, text)
            return text

        store = chained(ArchiveStore(engine, node="n1"), settings.chain_options)
        import time

        now = time.time()
        old = im("aim:alice", "aim:bob", "long ago", 400, "alice", "bob", now=now)
        store.insert_rows([old, im("aim:alice", "aim:bob", "lately", 3, "alice", "bob", now=now)])
        hold = run("hold", "add", "--user", "alice", "--peer", "user:bob", "--reason", "audit").strip()
        self.assertIn(f"{hold}  active  alice with user:bob  (audit)", run("hold", "list"))
        self.assertIn("kept 1 expired event(s) under a legal hold", run("archive", "purge"))
        run("hold", "release", hold, "--reason", "audit done")
        self.assertIn("would remove 1 event(s) under retention rule 'one-year'", run("archive", "purge", "--dry-run"))
        report = json.loads(run("archive", "purge", "--json"))
        self.assertEqual((report["expired"], report["rows"]), ({"one-year": 1}, 1))
        verified = json.loads(run("archive", "verify"))
        self.assertEqual((verified["ok"], verified["events"], verified["holds"], verified["purges"]), (True, 1, 1, 1))


class ScheduledPurgeTests(TestCase):
    """The running gateway purges every purge_interval hours, the first time one interval after its start."""

    def test_the_gateway_purges_on_its_own(self):
        import shutil
        import tempfile
        import time

        from twisted.internet import reactor, task

        from gateway.compliance.writer import chained
        from gateway.service import GatewayService
        from gateway.storage import db

        folder = tempfile.mkdtemp(prefix="gw-purge-")
        self.addCleanup(shutil.rmtree, folder, True)
        config = loads(f'[gateway]\nnode = "n1"\ndata_dir = "{folder}"\n[admin]\nlisten = ""\n'
                       f'[archive]\nwriter = "thread"\npurge_interval = 0.0002\n'
                       f'[[archive.retention]]\nname = "a-day"\ndays = 1\n', "<t>")
        engine = db.create_engine(config.database_url)
        self.addCleanup(engine.dispose)
        db.migrate(engine)
        now = time.time()
        old = im("aim:alice", "aim:bob", "two days ago", 2, "alice", "bob", now=now)
        chained(ArchiveStore(engine, node="n1"), config.chain_options).insert_rows(
            [old, im("aim:alice", "aim:bob", "now", 0, "alice", "bob", now=now)])
        gateway = GatewayService(config, reactor)
        gateway.startService()
        self.addCleanup(gateway.stopService)

        def left():
            with engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()

        def wait(tries=50):
            if left() == 1 or not tries:
                return None
            return task.deferLater(reactor, 0.2, wait, tries - 1)

        def check(_):
            self.assertEqual(left(), 1)
            self.assertTrue(verify(engine)["ok"])

        return wait().addCallback(check)
