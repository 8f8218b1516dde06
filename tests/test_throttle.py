"""Throttles that protect users: a flood from one address can neither lock out nor delay a user at another."""

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from gateway.interfaces import LoginThrottled
from gateway.model import Address, Identity
from gateway.testing import MemoryDirectory, make_core
from gateway.throttle import FairQueue, LoginThrottle

ALICE = Address.parse("aim:alice")


class ThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_per_account_and_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60, per_source=100)
        for _ in range(3):
            throttle.failed(ALICE, "192.0.2.2")
        self.assertFalse(throttle.allowed(ALICE, "192.0.2.2"))
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.1"))
        self.assertTrue(throttle.allowed(Address.parse("aim:bob"), "192.0.2.2"))
        self.clock.advance(61)
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.2"))

    def test_per_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60, per_source=10)
        for n in range(10):
            throttle.failed(Address("aim", f"user{n}"), "192.0.2.2")
        self.assertFalse(throttle.allowed(Address.parse("aim:someone"), "192.0.2.2"))
        self.assertTrue(throttle.allowed(Address.parse("aim:someone"), "192.0.2.3"))

    def test_per_account_ceiling_only_when_configured(self):
        open_ = LoginThrottle(self.clock, limit=3, window=60)
        capped = LoginThrottle(self.clock, limit=3, window=60, per_account=5)
        for n in range(5):
            open_.failed(ALICE, f"192.0.2.{n}")
            capped.failed(ALICE, f"192.0.2.{n}")
        self.assertTrue(open_.allowed(ALICE, "198.51.100.1"))
        self.assertFalse(capped.allowed(ALICE, "198.51.100.1"))

    def test_success_clears_that_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60)
        throttle.failed(ALICE, "192.0.2.2")
        throttle.failed(ALICE, "192.0.2.2")
        throttle.succeeded(ALICE, "192.0.2.2")
        throttle.failed(ALICE, "192.0.2.2")
        throttle.failed(ALICE, "192.0.2.2")
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.2"))


class FairQueueTests(unittest.TestCase):
    def test_round_robin_by_source_and_bounds(self):
        queue = FairQueue(concurrency=1, per_source=4, total=100)
        started = []

        def job(name):
            d = Deferred()

            def start():
                started.append((name, d))
                return d

            return start

        results = [queue.run("192.0.2.2", job(f"flood{n}")) for n in range(10)]
        refused = [r for r in results if r.called]
        self.assertEqual(len(refused), 5)  # one running, four waiting; the rest refused at once
        for r in refused:
            self.failureResultOf(r, LoginThrottled)
        mine = queue.run("192.0.2.1", job("alice"))
        self.assertEqual([name for name, _ in started], ["flood0"])
        started[0][1].callback("done")
        # Alice's check is next, ahead of the flood's three others.
        self.assertEqual([name for name, _ in started], ["flood0", "alice"])
        started[1][1].callback("ok")
        self.assertEqual(self.successResultOf(mine), "ok")

    def test_total_bound(self):
        queue = FairQueue(concurrency=1, per_source=10, total=3)
        pending = Deferred()
        first = queue.run("a", lambda: pending)
        for source in "bcd":
            self.assertFalse(queue.run(source, lambda: succeed(None)).called)
        self.failureResultOf(queue.run("e", lambda: succeed(None)), LoginThrottled)
        pending.callback(None)
        self.successResultOf(first)
        self.assertEqual(queue.depth(), 0)


class SlowDirectory(MemoryDirectory):
    """Password checks that finish when the test says (as scrypt in its thread does, one at a time)."""

    def __init__(self):
        super().__init__()
        self.checks = []

    def authenticate(self, address, password):
        d = Deferred()
        self.checks.append((address, password, d))
        return d

    def finish_next(self):
        address, password, d = self.checks.pop(0)
        identity = self._by_handle(address)
        d.callback(identity if identity is not None and self.passwords[identity.id] == password else None)


class LockOutScenarioTests(unittest.TestCase):
    """300 wrong-password logins for alice from 127.0.0.2, then alice from 127.0.0.1."""

    def test_the_real_user_is_served_next_and_let_in(self):
        directory = SlowDirectory()
        directory.add("alice", "aim:alice")
        core = make_core(directory=directory)
        api = core.api
        flood = [api.authenticate(ALICE, f"guess{n}", source="127.0.0.2") for n in range(300)]
        # Only a handful ever reach the password check; the rest are refused at once, unhashed.
        self.assertEqual(len(directory.checks), 1)
        self.assertEqual(sum(1 for d in flood if d.called), 300 - 1 - core.config.directory.login_queue_per_source)
        for d in flood:
            d.addErrback(lambda failure: failure.trap(LoginThrottled))
        real = api.authenticate(ALICE, "secret", source="127.0.0.1")
        directory.finish_next()  # the flood's check that was running
        self.assertEqual(directory.checks[0][1], "secret")  # alice's is next
        directory.finish_next()
        identity = self.successResultOf(real)
        self.assertIsInstance(identity, Identity)
        self.assertEqual(identity.id, "alice")
        while directory.checks:
            directory.finish_next()
        # The flood is locked out of alice from its address; alice is not, from hers.
        self.failureResultOf(api.authenticate(ALICE, "secret", source="127.0.0.2"), LoginThrottled)
        self.assertFalse(api.authenticate(ALICE, "secret", source="127.0.0.1").called)
