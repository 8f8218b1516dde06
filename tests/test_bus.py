"""The one path end to end with two in-memory connectors on a task.Clock."""

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from gateway.hookspecs import hookimpl
from gateway.interfaces import LoginThrottled
from gateway.model import Address, Contact, Message, Presence, PresenceStatus, Typing, Verdict
from gateway.plugins import Plugins
from gateway.testing import (
    ConnectorConformanceMixin,
    MemoryArchive,
    MemoryConnector,
    MemoryDirectory,
    MemoryOfflineStore,
    make_core,
)


def result_of(d):
    """The result of an already-fired Deferred (fails the test if it has not fired)."""
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


class Connectors:
    """Registers two in-memory connectors: 'left' (aim, icq) and 'right' (xmpp)."""

    def __init__(self, right_reach=()):
        self.right_reach = right_reach

    @hookimpl
    def gateway_register_connectors(self, api):
        api.register_connector(
            "left", lambda api, config: MemoryConnector(api, config, name="left", networks=("aim", "icq"))
        )
        api.register_connector(
            "right",
            lambda api, config: MemoryConnector(
                api, config, name="right", networks=("xmpp",), domain="gw.example", reach=self.right_reach
            ),
        )


CONFIG = """
[connectors.left]
[connectors.right]
"""


class BusTestCase(unittest.TestCase):
    config = CONFIG
    hooks = ()
    right_reach = (Address.parse("xmpp:dave@remote.example"),)

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.directory = MemoryDirectory()
        self.alice = self.directory.add("alice", "aim:alice", "xmpp:alice@gw.example", groups=["staff"])
        self.bob = self.directory.add("bob", "aim:bob", "icq:100002", "xmpp:bob@gw.example")
        self.carol = self.directory.add("carol", "xmpp:carol@gw.example", groups=["sales"])
        self.archive = MemoryArchive()
        self.offline = MemoryOfflineStore()
        plugins = Plugins()
        plugins.register(Connectors(self.right_reach), "test-connectors")
        for index, hook in enumerate(self.hooks):
            plugins.register(hook, f"hook{index}")
        self.core = make_core(
            self.config, clock=self.clock, directory=self.directory, plugins=plugins,
            archive=self.archive, offline=self.offline,
        )
        self.core.start_plugins()
        self.left = self.core.connectors["left"]
        self.right = self.core.connectors["right"]

    def login(self, connector, identity, handle):
        return result_of(connector.login(identity, Address.parse(handle)))

    def submit(self, sender, recipient, text="hi", **kw):
        return result_of(self.core.bus.submit(self.core.api.message(sender, recipient, text, **kw)))


class DeliveryTests(BusTestCase):
    def test_same_network(self):
        a = self.login(self.left, self.alice, "aim:alice")
        b = self.login(self.left, self.bob, "aim:bob")
        outcome = self.submit("aim:alice", "aim:bob", "hello")
        self.assertTrue(outcome.delivered)
        [got] = self.left.received(b, "im")
        self.assertEqual((got.sender, got.recipient, got.text), (a.address, b.address, "hello"))
        self.assertEqual(self.archive.status(got.id), "delivered")
        self.assertEqual(got.created, 1_700_000_000)

    def test_other_network_uses_senders_own_handle_there(self):
        self.login(self.left, self.alice, "aim:alice")
        b = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        outcome = self.submit("aim:alice", "aim:bob", "across")
        self.assertTrue(outcome.delivered)
        [got] = self.right.received(b, "im")
        self.assertEqual(got.sender, Address.parse("xmpp:alice@gw.example"))
        self.assertEqual(got.recipient, Address.parse("xmpp:bob@gw.example"))

    def test_every_session_of_the_recipient_gets_it(self):
        b1 = self.login(self.left, self.bob, "aim:bob")
        b2 = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        self.submit("aim:alice", "icq:100002", "both")
        self.assertEqual([e.text for e in self.left.received(b1, "im")], ["both"])
        self.assertEqual([e.text for e in self.right.received(b2, "im")], ["both"])

    def test_foreign_sender_gets_a_stable_alias(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.submit("xmpp:dave@remote.example", "aim:bob", "one")
        self.submit("xmpp:dave@remote.example", "aim:bob", "two")
        first, second = self.left.received(b, "im")
        self.assertEqual(first.sender, second.sender)
        self.assertEqual(first.sender.network, "aim")

    def test_reply_to_alias_reaches_the_foreign_address(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.submit("xmpp:dave@remote.example", "aim:bob", "hi bob")
        alias = self.left.received(b, "im")[0].sender
        outcome = self.submit("aim:bob", alias, "hi dave")
        self.assertTrue(outcome.delivered, outcome)
        [sent] = self.right.remote
        self.assertEqual(sent.recipient, Address.parse("xmpp:dave@remote.example"))
        self.assertEqual(sent.sender, Address.parse("xmpp:bob@gw.example"))

    def test_unknown_recipient_is_rejected_and_archived(self):
        outcome = self.submit("aim:alice", "aim:nobody")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.code, "unknown-recipient")
        self.assertEqual(self.archive.status(outcome.event_id), "rejected")

    def test_session_whose_delivery_fails_queues_the_message(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.left.failing.add(b)
        outcome = self.submit("aim:alice", "aim:bob", "later")
        self.assertTrue(outcome.queued)
        self.assertEqual(list(self.offline.held["bob"]), [outcome.event_id])
        # A client that is gone is how delivery fails, not an error of the gateway's.
        self.assertEqual(self.flushLoggedErrors(ConnectionError), [])

    def test_deferred_delivery(self):
        self.login(self.left, self.bob, "aim:bob")
        pending = Deferred()
        self.left.deliver = lambda event, session: pending
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "slow"))
        self.assertNoResult(d)
        pending.callback(None)
        self.assertTrue(result_of(d).delivered)

    def test_deferred_delivery_that_fails_queues_the_message(self):
        self.login(self.left, self.bob, "aim:bob")
        pending = Deferred()
        self.left.deliver = lambda event, session: pending
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "lost?"))
        pending.errback(ConnectionError("client went away"))
        outcome = result_of(d)
        self.assertTrue(outcome.queued, outcome)
        self.assertEqual(list(self.offline.held["bob"]), [outcome.event_id])
        self.assertEqual(self.flushLoggedErrors(ConnectionError), [])

    def test_delivery_that_raises_something_else_is_logged(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.left.deliver = lambda event, session: 1 / 0
        outcome = self.submit("aim:alice", "aim:bob", "oops")
        self.assertTrue(outcome.queued)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_typing_to_offline_person_is_dropped_not_queued(self):
        outcome = result_of(self.core.bus.submit(Typing("aim:alice", "aim:bob")))
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.code, "offline")
        self.assertEqual(self.offline.held, {})


class OfflineTests(BusTestCase):
    def test_held_until_login_then_delivered_once(self):
        outcome = self.submit("aim:alice", "aim:bob", "while away")
        self.assertTrue(outcome.queued)
        self.assertEqual(self.archive.status(outcome.event_id), "queued")
        b = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        [got] = self.right.received(b, "im")
        self.assertEqual((got.text, got.sender), ("while away", Address.parse("xmpp:alice@gw.example")))
        self.assertEqual(self.offline.held["bob"], {})
        self.assertIn((outcome.event_id, "delivered", "node1"), self.archive.deliveries)
        # A second login does not deliver it again.
        b2 = self.login(self.left, self.bob, "aim:bob")
        self.assertEqual(self.left.received(b2, "im"), [])

    def test_same_event_queued_twice_is_held_once(self):
        message = self.core.api.message("aim:alice", "aim:bob", "retry")
        result_of(self.core.bus.submit(message))
        result_of(self.core.bus.submit(message))
        self.assertEqual(len(self.offline.held["bob"]), 1)
        self.assertEqual(len(self.archive.rows), 1)


class PresenceTests(BusTestCase):
    def setUp(self):
        super().setUp()
        self.directory.set_contacts("alice", [Contact("aim:bob")])

    def test_login_tells_watchers(self):
        a = self.login(self.left, self.alice, "aim:alice")
        self.login(self.right, self.bob, "xmpp:bob@gw.example")
        [seen] = self.left.received(a, "presence")
        self.assertEqual((seen.sender, seen.status.value), (Address.parse("aim:bob"), "available"))

    def test_login_gets_contacts_presence(self):
        self.login(self.right, self.bob, "xmpp:bob@gw.example")
        a = self.login(self.left, self.alice, "aim:alice")
        [seen] = self.left.received(a, "presence")
        self.assertEqual(seen.sender, Address.parse("aim:bob"))

    def test_logout_tells_watchers_offline(self):
        a = self.login(self.left, self.alice, "aim:alice")
        b = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        result_of(self.right.logout(b))
        statuses = [p.status.value for p in self.left.received(a, "presence")]
        self.assertEqual(statuses, ["available", "offline"])

    def test_foreign_watchers_get_presence_through_the_path(self):
        self.right.foreign_watchers = lambda identity: (
            [Address.parse("xmpp:dave@remote.example")] if identity.id == "bob" else []
        )
        self.login(self.left, self.bob, "aim:bob")
        [sent] = self.right.remote
        self.assertEqual((sent.kind, sent.recipient, sent.sender), (
            "presence", Address.parse("xmpp:dave@remote.example"), Address.parse("xmpp:bob@gw.example")))

    def test_through_a_connector_to_a_person_without_a_session(self):
        # A SIP subscription of someone not registered: checked and archived, then handed as it is.
        presence = Presence(sender=Address.parse("aim:bob"), status=PresenceStatus.AWAY, note="out",
                            recipient=Address.parse("xmpp:alice@gw.example"))
        outcome = result_of(self.core.bus.submit(presence, through=self.right))
        self.assertTrue(outcome.delivered)
        [sent] = self.right.remote
        self.assertEqual((sent.sender, sent.recipient, sent.status), (presence.sender, presence.recipient,
                                                                      PresenceStatus.AWAY))
        self.assertEqual(self.archive.status(presence.id), "delivered")
        self.assertEqual(self.left.delivered, {})

    def test_away(self):
        a = self.login(self.left, self.alice, "aim:alice")
        b = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        result_of(self.core.api.set_presence(b, "away", "lunch"))
        last = self.left.received(a, "presence")[-1]
        self.assertEqual((last.status.value, last.note), ("away", "lunch"))


RULES = CONFIG + """
[policy]
default = "allow"

[[policy.rule]]
name = "sales-quiet"
action = "deny"
to = ["group:sales"]
kinds = ["im"]
reason = "sales is not reachable by IM"

[[policy.rule]]
name = "no-presence-for-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
kinds = ["presence"]
"""


class PolicyOnPathTests(BusTestCase):
    config = RULES

    def test_denied_by_rule_is_archived_with_rule(self):
        self.login(self.right, self.carol, "xmpp:carol@gw.example")
        outcome = self.submit("aim:alice", "xmpp:carol@gw.example")
        self.assertTrue(outcome.rejected)
        self.assertEqual((outcome.code, outcome.rule, outcome.reason), ("policy", "sales-quiet", "sales is not reachable by IM"))
        event, verdict, status = self.archive.rows[outcome.event_id]
        self.assertEqual((status, verdict.rule), ("rejected", "sales-quiet"))

    def test_presence_filtered_per_watcher(self):
        self.directory.set_contacts("carol", [Contact("aim:bob")])
        self.directory.set_contacts("alice", [Contact("aim:bob")])
        c = self.login(self.right, self.carol, "xmpp:carol@gw.example")
        a = self.login(self.left, self.alice, "aim:alice")
        self.login(self.left, self.bob, "aim:bob")
        self.assertEqual(self.right.received(c, "presence"), [])
        self.assertEqual(len(self.left.received(a, "presence")), 1)


class Allow:
    @hookimpl
    def gateway_policy_check(self, event):
        return Verdict.allow()


class Raises:
    @hookimpl
    def gateway_policy_check(self, event, sender, recipient):
        raise RuntimeError("boom")


class Garbage:
    @hookimpl
    def gateway_policy_check(self):
        return "yes please"


class Hangs:
    @hookimpl
    def gateway_policy_check(self, event):
        return Deferred()


class LaterDeny:
    @hookimpl
    def gateway_policy_check(self, event):
        self.d = Deferred()
        return self.d


class PolicyHookTests(unittest.TestCase):
    """Every plugin is asked; deny beats allow; errors, time-outs and garbage deny."""

    def make(self, *hooks):
        case = BusTestCase("run")
        case.hooks = hooks
        case.setUp()
        self.case = case
        case.login(case.left, case.bob, "aim:bob")
        return case

    def test_allow_passes(self):
        case = self.make(Allow())
        self.assertTrue(case.submit("aim:alice", "aim:bob").delivered)

    def assertDeniedBy(self, outcome, plugin, words):
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.code, "policy")
        self.assertEqual(outcome.rule, f"plugin:{plugin}")
        self.assertIn(words, outcome.reason)
        self.assertEqual(self.case.archive.status(outcome.event_id), "rejected")
        metrics = self.case.core.metrics.render().decode()
        self.assertIn(f'gateway_plugin_errors_total{{hook="gateway_policy_check",plugin="{plugin}"}} 1.0', metrics)

    def test_raising_plugin_denies_even_if_another_allows(self):
        case = self.make(Allow(), Raises())
        self.assertDeniedBy(case.submit("aim:alice", "aim:bob"), "hook1", "boom")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_garbage_denies(self):
        case = self.make(Garbage(), Allow())
        self.assertDeniedBy(case.submit("aim:alice", "aim:bob"), "hook0", "str")

    def test_timeout_denies(self):
        case = self.make(Allow(), Hangs())
        d = case.core.bus.submit(case.core.api.message("aim:alice", "aim:bob", "x"))
        self.assertNoResult(d)
        case.clock.advance(4.9)
        self.assertNoResult(d)
        case.clock.advance(0.2)
        self.assertDeniedBy(result_of(d), "hook1", "did not answer within 5s")

    def test_deferred_deny(self):
        hook = LaterDeny()
        case = self.make(hook, Allow())
        d = case.core.bus.submit(case.core.api.message("aim:alice", "aim:bob", "x"))
        hook.d.callback(Verdict.deny("dlp: card number", rule="dlp-cards"))
        outcome = result_of(d)
        self.assertEqual((outcome.rule, outcome.reason), ("dlp-cards", "dlp: card number"))


class Redact:
    @hookimpl
    def gateway_transform(self, event):
        if isinstance(event, Message):
            return attrs.evolve(event, text=event.text.replace("secret", "[redacted]"))
        return None


class BadTransform:
    @hookimpl
    def gateway_transform(self, event):
        return attrs.evolve(event, recipient=Address.parse("aim:mallory"))


class Observer:
    def __init__(self):
        self.seen = []

    @hookimpl
    def gateway_delivered(self, event, outcome):
        self.seen.append(("delivered", outcome.status.value))

    @hookimpl
    def gateway_rejected(self, outcome):
        self.seen.append(("rejected", outcome.code))
        raise ValueError("observer bug must not matter")


class TransformAndObserveTests(unittest.TestCase):
    def make(self, *hooks):
        case = BusTestCase("run")
        case.hooks = hooks
        case.setUp()
        self.b = case.login(case.left, case.bob, "aim:bob")
        return case

    def test_transform_changes_archived_and_delivered_text(self):
        case = self.make(Redact())
        outcome = case.submit("aim:alice", "aim:bob", "the secret plan")
        [got] = case.left.received(self.b, "im")
        self.assertEqual(got.text, "the [redacted] plan")
        self.assertEqual(case.archive.rows[outcome.event_id][0].text, "the [redacted] plan")

    def test_transform_that_changes_addresses_rejects(self):
        case = self.make(BadTransform())
        outcome = case.submit("aim:alice", "aim:bob", "x")
        self.assertEqual((outcome.code, outcome.rule), ("transform", "plugin:hook0"))
        self.assertEqual(case.left.received(self.b, "im"), [])

    def test_observers(self):
        observer = Observer()
        case = self.make(observer)
        case.submit("aim:alice", "aim:bob")
        case.submit("aim:alice", "aim:nobody")
        self.assertEqual(observer.seen, [("delivered", "delivered"), ("rejected", "unknown-recipient")])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class FailClosedTests(BusTestCase):
    config = CONFIG + "[archive]\nfail_closed = true\n"

    def test_delivered_after_durable(self):
        b = self.login(self.left, self.bob, "aim:bob")
        outcome = self.submit("aim:alice", "aim:bob", "safe")
        self.assertTrue(outcome.delivered)
        self.assertEqual(self.archive.status(outcome.event_id), "delivered")
        self.assertIn((outcome.event_id, "delivered", "node1"), self.archive.deliveries)
        self.assertEqual(len(self.left.received(b, "im")), 1)

    def test_archive_down_rejects_and_does_not_deliver(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.archive.refuse = True
        outcome = self.submit("aim:alice", "aim:bob", "unsafe")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.code, "archive-unavailable")
        self.assertEqual(self.left.received(b, "im"), [])


class OfflineLimitTests(BusTestCase):
    def setUp(self):
        super().setUp()
        self.offline.limit = 2

    def test_full_store_rejects_with_its_own_code(self):
        self.assertTrue(self.submit("aim:alice", "aim:bob", "1").queued)
        self.assertTrue(self.submit("aim:alice", "aim:bob", "2").queued)
        outcome = self.submit("aim:alice", "aim:bob", "3")
        self.assertEqual(outcome.code, "offline-full")
        self.assertEqual(self.archive.status(outcome.event_id), "rejected")


class MemoryConformance(ConnectorConformanceMixin, unittest.TestCase):
    """The in-memory connector passes the same conformance tests as every connector."""

    def make_connector(self, api):
        return MemoryConnector(api)

    def connect_client(self, connector, identity, address):
        return connector.login(identity, address)

    def client_received(self, connector, session):
        return [e.text for e in connector.received(session, "im")]

    # Its "clients" are calls on the facade, as a connector's protocol makes them.

    def try_login(self, connector, address, password):
        def checked(identity):
            return None if identity is None else connector.login(identity, address)

        d = connector.api.authenticate(address, password, source="192.0.2.1").addCallback(checked)
        return d.addCallbacks(lambda session: (session, ""), lambda failure: (None, failure.getErrorMessage()))

    def client_send(self, connector, session, recipient, text):
        return connector.api.submit(connector.api.message(session.address, recipient, text))

    def test_native_capture_keeps_what_came_and_what_went(self):
        raise unittest.SkipTest("the memory connector has no wire: there are no bytes to keep")

    def drop_client(self, connector, session):
        return connector.logout(session)

    def client_presence(self, connector, session):
        return [(e.sender, e.status.value) for e in connector.received(session, "presence")]


class LoginThrottleTests(BusTestCase):
    def test_failures_from_one_address_lock_only_that_address_out_of_that_account(self):
        api = self.core.api
        bob = Address.parse("aim:bob")
        for _ in range(5):
            self.assertIsNone(result_of(api.authenticate(bob, "wrong", source="10.0.0.9")))
        failure = result_of(api.authenticate(bob, "secret", source="10.0.0.9"))
        self.assertTrue(failure.check(LoginThrottled))
        # Someone else's failures never lock bob out: from his own address he logs in.
        self.assertEqual(result_of(api.authenticate(bob, "secret", source="10.0.0.1")).id, "bob")
        # Nor do they lock that address out for other people (a NAT has many).
        self.assertEqual(result_of(api.authenticate(Address.parse("aim:alice"), "secret", source="10.0.0.9")).id,
                         "alice")
        self.clock.advance(301)
        self.assertEqual(result_of(api.authenticate(bob, "secret", source="10.0.0.9")).id, "bob")


class DecideTests(BusTestCase):
    config = RULES

    def test_verdict_without_delivery_or_archive(self):
        c = self.login(self.right, self.carol, "xmpp:carol@gw.example")
        verdict = result_of(self.core.api.check_policy(self.core.api.message("aim:alice", "xmpp:carol@gw.example", "x")))
        self.assertEqual((verdict.allowed, verdict.rule), (False, "sales-quiet"))
        verdict = result_of(self.core.api.check_policy(Typing("aim:alice", "xmpp:carol@gw.example")))
        self.assertTrue(verdict.allowed)
        self.assertEqual(self.right.received(c, "im"), [])
        self.assertEqual(self.archive.events("im"), [])

    def test_only_session(self):
        b1 = self.login(self.left, self.bob, "aim:bob")
        b2 = self.login(self.right, self.bob, "xmpp:bob@gw.example")
        result_of(self.core.api.submit(self.core.api.message("aim:alice", "aim:bob", "one"), only_session=b2))
        self.assertEqual(self.left.received(b1, "im"), [])
        self.assertEqual([e.text for e in self.right.received(b2, "im")], ["one"])
