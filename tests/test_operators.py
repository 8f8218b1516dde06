"""The operator API: operators' tokens and roles, every action archived with the operator's name, and gatewayctl."""

import json
import os
import urllib.request

import sqlalchemy as sa
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from gateway.ops.operators import Operator, OperatorError, OperatorStore, token_hash
from gateway.storage import db
from tests.test_admin import TOKEN, FakeGateway, serve_admin


class OperatorStoreTests(unittest.TestCase):
    def setUp(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.engine = db.create_engine(f"sqlite:///{folder}/gateway.sqlite")
        db.migrate(self.engine)
        self.addCleanup(self.engine.dispose)
        self.store = OperatorStore(self.engine, clock=lambda: 1000.0)

    def test_tokens_are_kept_hashed_and_found_until_revoked_or_replaced(self):
        token = self.store.add("Carol", "operator")
        self.assertEqual(self.store.find(token), Operator("carol", "operator"))
        self.assertIsNone(self.store.find(token + "x"))
        with self.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT * FROM operators")).mappings().one()
        self.assertNotIn(token, json.dumps(dict(stored)))
        self.assertEqual(stored["token_hash"], token_hash(token))
        fresh = self.store.replace_token("carol")
        self.assertIsNone(self.store.find(token))
        self.assertEqual(self.store.find(fresh), Operator("carol", "operator"))
        self.store.revoke("carol")
        self.assertIsNone(self.store.find(fresh))
        self.assertEqual(self.store.list(), [{"name": "carol", "role": "operator", "created": 1000.0,
                                              "revoked": 1000.0}])
        self.assertRaises(OperatorError, self.store.revoke, "carol")
        self.assertRaises(OperatorError, self.store.replace_token, "carol")

    def test_names_and_roles_are_checked(self):
        for name, role in (("admin", "operator"), ("-x", "operator"), ("a b", "reviewer"), ("x" * 65, "operator"),
                           ("dave", "root")):
            self.assertRaises(OperatorError, self.store.add, name, role)
        self.store.add("dave", "reviewer")
        # A name stays with its record, revoked or not.
        self.assertRaises(OperatorError, self.store.add, "dave", "operator")


OPERATOR_TOKEN, REVIEWER_TOKEN = "gwop_operator-token", "gwop_reviewer-token"


class OperatorGateway(FakeGateway):
    """The fake gateway with operators, a search and a reload."""

    def __init__(self, config):
        super().__init__(config)
        self.reloaded = 0
        self.searched = []

    def find_operator(self, token):
        found = {OPERATOR_TOKEN: Operator("olga", "operator"), REVIEWER_TOKEN: Operator("rita", "reviewer")}
        return defer.succeed(found.get(token))

    def reload(self):
        self.reloaded += 1
        return True

    def search(self, query, limit):
        self.searched.append((query, limit))
        return defer.succeed([])


class RoleTests(unittest.TestCase):
    def setUp(self):
        return serve_admin(self, OperatorGateway)

    @defer.inlineCallbacks
    def request(self, path, token, method=b"GET", body=None):
        import io

        headers = Headers({b"authorization": [f"Bearer {token}".encode()]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode()))
        response = yield Agent(reactor).request(method, (self.base + path).encode(), headers, producer)
        text = yield readBody(response)
        return response.code, json.loads(text) if text.startswith(b"{") else text

    def admin_actions(self):
        return [(e.sender.user, e.role, e.action, e.target, e.text) for e in self.gateway.archive.events("admin")]

    @defer.inlineCallbacks
    def test_each_role_has_its_tools_and_not_the_others(self):
        for path, method in (("/status", b"GET"), ("/sessions", b"GET"), ("/policy/reload", b"POST"),
                             ("/broadcast", b"POST")):
            code, answer = yield self.request(path, REVIEWER_TOKEN, method, {} if method == b"POST" else None)
            self.assertEqual(code, 403, path)
            self.assertIn("operator role", answer["error"])
        code, answer = yield self.request("/archive/search", OPERATOR_TOKEN)
        self.assertEqual(code, 403)
        self.assertIn("reviewer role", answer["error"])
        # The configured token is the operator "admin".
        code, answer = yield self.request("/archive/search", TOKEN)
        self.assertEqual(code, 403)
        code, answer = yield self.request("/whoami", TOKEN)
        self.assertEqual(answer, {"name": "admin", "role": "operator"})
        code, answer = yield self.request("/whoami", REVIEWER_TOKEN)
        self.assertEqual(answer, {"name": "rita", "role": "reviewer"})
        code, _ = yield self.request("/status", "gwop_nobodys")
        self.assertEqual(code, 401)
        # Nothing was done, so nothing was recorded; the refusals are counted.
        self.assertEqual((self.gateway.reloaded, self.admin_actions()), (0, []))
        metrics = self.gateway.core.metrics.render().decode()
        self.assertIn('gateway_admin_refused_total{reason="role"} 6.0', metrics)

    @defer.inlineCallbacks
    def test_every_action_is_archived_with_the_operator_before_it_is_done(self):
        code, answer = yield self.request("/policy/reload", OPERATOR_TOKEN, b"POST", {})
        self.assertEqual((code, answer["reloaded"]), (200, True))
        code, answer = yield self.request("/archive/search?user=alice&since=2026-01-01T00:00&limit=5",
                                          REVIEWER_TOKEN)
        self.assertEqual((code, answer), (200, {"events": [], "count": 0}))
        [(query, limit)] = self.gateway.searched
        self.assertEqual((query["user"], limit), ("alice", 5))
        code, answer = yield self.request("/sessions?user=bob", OPERATOR_TOKEN)
        self.assertEqual((code, answer["sessions"]), (200, []))
        self.assertEqual(self.admin_actions(), [
            ("olga", "operator", "policy.reload", "", ""),
            ("rita", "reviewer", "archive.search", "", json.dumps(dict(query, limit=5), sort_keys=True)),
            ("olga", "operator", "sessions.list", "bob", ""),
        ])
        [event] = [e for e in self.gateway.archive.events("admin") if e.action == "archive.search"]
        self.assertEqual(event.source, "127.0.0.1")

    @defer.inlineCallbacks
    def test_an_action_the_archive_cannot_record_is_not_done(self):
        self.gateway.archive.refuse = True
        code, answer = yield self.request("/policy/reload", OPERATOR_TOKEN, b"POST", {})
        self.assertEqual(code, 503)
        self.assertIn("not done", answer["error"])
        self.assertEqual(self.gateway.reloaded, 0)
        code, answer = yield self.request("/archive/search", REVIEWER_TOKEN)
        self.assertEqual(code, 503)
        self.assertEqual(self.gateway.searched, [])

    @defer.inlineCallbacks
    def test_bad_requests_are_told_why_and_not_recorded(self):
        for path, body, wanted in (
            ("/broadcast", {}, 400),
            ("/broadcast", {"text": "x" * 5000}, 400),
            ("/broadcast", b"[1, 2]", 400),
            ("/broadcast", b"not json", 400),
            ("/broadcast", b"{" + b" " * (70 * 1024) + b"}", 413),
            ("/sessions/kick", {"session": "a", "user": "b"}, 400),
            ("/node/drain", {}, 409),  # not a cluster
        ):
            code, answer = yield self.request(path, OPERATOR_TOKEN, b"POST", body)
            self.assertEqual(code, wanted, (path, body, answer))
            self.assertIn("error", answer)
        code, answer = yield self.request("/archive/search?since=yesterday-ish", REVIEWER_TOKEN)
        self.assertEqual(code, 400)
        code, answer = yield self.request("/archive/search?limit=100000", REVIEWER_TOKEN)
        self.assertEqual(code, 400)
        # Methods and paths an endpoint lacks, for a token looked up in the table too.
        for path, method in (("/broadcast", b"GET"), ("/policy", b"GET"), ("/status", b"POST")):
            code, _ = yield self.request(path, OPERATOR_TOKEN, method)
            self.assertEqual(code, 405, path)
        code, _ = yield self.request("/nowhere", OPERATOR_TOKEN)
        self.assertEqual(code, 404)
        self.assertEqual(self.admin_actions(), [])


GATEWAY_CONFIG = """
[gateway]
node = "ops-node"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class GatewayctlTests(unittest.TestCase):
    """A running ``twistd gateway``, its operators made and used with ``gatewayctl`` as an administrator does."""

    timeout = 120

    def test_operators_run_the_gateway_and_reviewers_read_what_they_did(self):
        from tests.gateway_process import Gateway, LineClient
        from tests.support import free_port

        admin, line = free_port(), free_port()
        gateway = Gateway(self, GATEWAY_CONFIG.format(admin=admin, line=line), wait_ports=(admin, line))
        out = gateway.gatewayctl("operator", "add", "olga", "--role", "operator")
        olga = out.splitlines()[-1]
        rita = gateway.gatewayctl("operator", "add", "rita", "--role", "reviewer").splitlines()[-1]
        self.assertIn("olga", gateway.gatewayctl("operator", "list"))
        alice, bob = LineClient(line, "alice"), LineClient(line, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)

        def ctl(token, *args):
            return gateway.ctl(*args, "--token", token)

        listed = ctl(olga, "sessions", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        sessions = [json.loads(line) for line in listed.stdout.splitlines()]
        self.assertEqual(sorted(s["person"] for s in sessions), ["alice", "bob"])
        self.assertEqual({s["node"] for s in sessions}, {"ops-node"})
        # A reviewer has no operator's tools.
        refused = ctl(rita, "sessions", "list")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("operator role", refused.stderr)
        # A broadcast reaches everyone online, from gateway:operator (as the line network names it), through
        # the one path.
        sent = ctl(olga, "broadcast", "maintenance at six tonight")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertIn("sent to 2 people online: 2 delivered", sent.stdout)
        for client in (alice, bob):
            self.assertEqual(client.expect("FROM"), "FROM line:gateway.operator maintenance at six tonight")
        # A kick ends bob's session in his protocol's terms.
        kicked = ctl(olga, "sessions", "kick", "--user", "bob", "--reason", "misbehaving client")
        self.assertEqual(kicked.returncode, 0, kicked.stderr)
        self.assertEqual(bob.expect("ERR"), "ERR closed misbehaving client")
        reloaded = ctl(olga, "policy", "reload")
        self.assertEqual(reloaded.returncode, 0, reloaded.stderr)
        # The reviewer reads the record of it all, over the API; an operator cannot.
        request = urllib.request.Request(f"http://127.0.0.1:{admin}/archive/search?kind=admin&limit=50",
                                         headers={"Authorization": f"Bearer {rita}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            found = json.loads(r.read())["events"]
        actions = [(e["sender"], e["text"]) for e in found]
        self.assertEqual([a for a in actions if a[0].startswith("operator:olga")], [
            ("operator:olga", "sessions.list"),
            ("operator:olga", "broadcast: maintenance at six tonight"),
            ("operator:olga", "sessions.kick bob: misbehaving client"),
            ("operator:olga", "policy.reload"),
        ])
        self.assertEqual([text for sender, text in actions if text.startswith("operator.add")],
                         ["operator.add olga: operator", "operator.add rita: reviewer"])
        self.assertEqual(actions[-1], ("operator:rita", 'archive.search: {"kind": "admin", "limit": 50}'))
        self.assertEqual(len(gateway.archived("alice", text="maintenance at six")), 1)
        # Revoked, olga's token no longer works; the record verifies.
        gateway.gatewayctl("operator", "revoke", "olga")
        refused = ctl(olga, "policy", "reload")
        self.assertIn("HTTP 401", refused.stderr)
        verified = gateway.ctl("archive", "verify")
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        self.assertEqual(gateway.tracebacks(), [])
