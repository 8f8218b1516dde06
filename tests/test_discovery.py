"""eDiscovery exports: conversations as RFC 5322 messages and HTML pages, with a manifest that adds up."""

import email
import email.policy
import hashlib
import json
import os

from twisted.trial.unittest import TestCase

from gateway.compliance import keys
from gateway.compliance.discovery import export_conversations
from gateway.model import Message, Outcome, Presence, PresenceStatus, Verdict
from gateway.storage.archive.store import ArchiveStore, record_to_row
from tests.support import command_folder, gatewayctl, sqlite_engine

DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
ALLOW = Verdict.allow("default", "allowed")


def row(event, identities=(None, None), verdict=ALLOW, outcome=None):
    return record_to_row(event, verdict, outcome, *identities, recorded=event.created, node="n1")


class ExportTests(TestCase):
    def setUp(self):
        self.db = sqlite_engine(self)
        self.store = ArchiveStore(self.db, node="n1").chained(keys.load_or_create(os.path.join(self.mktemp(), "k")))
        ab, ba = ("alice", "bob"), ("bob", "alice")
        self.rows = [
            row(Message("aim:alice", "xmpp:bob@corp", "morning, bob", created=T0), ab,
                outcome=Outcome.delivered_("x")),
            row(Message("xmpp:bob@corp", "aim:alice", "morning \u00e9\u4e16 <b>", created=T0 + 60), ba),
            row(Message("aim:alice", "xmpp:bob@corp", "project-x numbers", created=T0 + 120), ab,
                verdict=Verdict.deny("no project-x", "dlp")),
            row(Message("aim:alice", "sip:carol@corp", "hi carol", created=T0 + 180), ("alice", "carol")),
            row(Message("aim:alice", "xmpp:bob@corp", "next day", created=T0 + DAY), ab),
            row(Presence("aim:alice", PresenceStatus.AWAY, created=T0 + 240), ("alice", None)),
        ]
        self.store.insert_rows(self.rows)

    def test_eml_one_message_per_conversation_and_day(self):
        folder = os.path.join(self.mktemp(), "out")
        manifest = export_conversations(self.store, folder, "eml", {"user": "alice"})
        self.assertEqual((manifest["events"], len(manifest["files"])), (6, 4))
        self.assertEqual(manifest["first"]["id"], self.rows[0]["id"])
        self.assertEqual(manifest["last"]["id"], self.rows[4]["id"])
        self.assertEqual(manifest["kinds"], {"im": 5, "presence": 1})
        self.assertIn("n1", manifest["chain_heads"])
        self.assertEqual(sum(f["events"] for f in manifest["files"]), manifest["events"])
        with open(os.path.join(folder, "manifest.json")) as f:
            self.assertEqual(json.load(f)["events"], 6)
        first = manifest["files"][0]
        with open(os.path.join(folder, first["file"]), "rb") as f:
            data = f.read()
        self.assertEqual(hashlib.sha256(data).hexdigest(), first["sha256"])
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(message["From"].addresses[0].addr_spec, "alice@aim.invalid")
        self.assertEqual(message["To"].addresses[0].addr_spec, "bob@corp")
        self.assertEqual(message["X-Gateway-Events"], "3")
        self.assertIn("2027-01-15", message["Subject"])
        body = message.get_body().get_content()
        lines = body.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn("morning \u00e9\u4e16 <b>", lines[1])
        self.assertIn("denied by dlp: no project-x", lines[2])
        self.assertTrue(lines[0].startswith("[08:00:00 UTC] aim:alice -> xmpp:bob@corp (im, delivered)"))

    def test_html_pages_and_index(self):
        folder = os.path.join(self.mktemp(), "out")
        manifest = export_conversations(self.store, folder, "html", {"user": "alice", "peer": "bob"})
        self.assertEqual((manifest["events"], len(manifest["files"])), (4, 2))
        with open(os.path.join(folder, manifest["files"][0]["file"]), encoding="utf-8") as f:
            page = f.read()
        self.assertIn("morning \u00e9\u4e16 &lt;b&gt;", page)
        self.assertIn("class='denied'", page)
        with open(os.path.join(folder, "index.html"), encoding="utf-8") as f:
            self.assertIn(manifest["files"][1]["file"], f.read())


class CommandTests(TestCase):
    def test_export_from_the_command_line(self):
        path, _, engine = command_folder(self, '[gateway]\nnode = "n1"\ndata_dir = "var"\n')
        ArchiveStore(engine, node="n1").insert_rows([row(Message("aim:alice", "aim:bob", "hello", created=T0))])
        target = os.path.join(os.path.dirname(path), "export")
        status, text = gatewayctl(path, "archive", "export", "--format", "eml", "--output", target)
        self.assertEqual(status, 0)
        self.assertIn("exported 1 event(s) in 1 conversation-day(s)", text)
        self.assertEqual(sorted(os.listdir(target)), ["000001-2027-01-15.eml", "manifest.json"])
