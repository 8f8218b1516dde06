"""Throttles that protect users: a flood from one address can neither lock out nor delay a user at another."""

from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.trial import unittest

import gateway.directory.credentials as directory_credentials
from gateway.directory.sql import DirectoryStore, SQLDirectory, ensure_demo_users
from gateway.directory.hashqueue import HashQueue
from gateway.interfaces import LoginThrottled
from gateway.model import Address, Identity
from gateway.testing import MemoryDirectory, make_core
from gateway.path.throttle import LoginThrottle
from tests.support import sqlite_engine

ALICE = Address.parse("aim:alice")
BOB = Address.parse("aim:bob")
FLOOD, HOME = "127.0.0.2", "127.0.0.1"


class ThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_per_account_and_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60, per_source=100)
        for _ in range(3):
            throttle.failed(ALICE, "192.0.2.2")
        self.assertEqual(throttle.refusal(ALICE, "192.0.2.2"), "account-address")
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.1"))
        self.assertTrue(throttle.allowed(BOB, "192.0.2.2"))
        self.clock.advance(61)
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.2"))

    def test_per_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60, per_source=10)
        for n in range(10):
            throttle.failed(Address("aim", f"user{n}"), "192.0.2.2")
        self.assertEqual(throttle.refusal(Address.parse("aim:someone"), "192.0.2.2"), "address")
        self.assertTrue(throttle.allowed(Address.parse("aim:someone"), "192.0.2.3"))

    def test_per_account_ceiling_spares_addresses_the_account_knows(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60, per_account=5)
        throttle.succeeded(ALICE, HOME)
        for n in range(5):
            throttle.failed(ALICE, f"192.0.2.{n}")
        self.assertEqual(throttle.refusal(ALICE, "198.51.100.1"), "account")
        self.assertTrue(throttle.allowed(ALICE, HOME))
        self.assertTrue(throttle.allowed(BOB, "198.51.100.1"))
        self.assertTrue(LoginThrottle(self.clock, limit=3, window=60, per_account=0).allowed(ALICE, "198.51.100.1"))

    def test_garbage_from_an_address_spares_accounts_that_log_in_there(self):
        # A fuzzer behind the user's own address: hundreds of failed logins for made-up accounts.
        throttle = LoginThrottle(self.clock, limit=5, window=300, per_source=100)
        throttle.succeeded(ALICE, HOME)
        for n in range(300):
            throttle.failed(Address("aim", f"fuzz{n}"), HOME)
        self.assertTrue(throttle.allowed(ALICE, HOME))
        self.assertEqual(throttle.refusal(BOB, HOME), "address")  # never logged in from there
        # Known only for a while.
        self.clock.advance(30 * 86400 + 1)
        for n in range(100):
            throttle.failed(Address("aim", f"fuzz{n}"), HOME)
        self.assertEqual(throttle.refusal(ALICE, HOME), "address")

    def test_a_known_address_still_has_its_own_limit(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60)
        throttle.succeeded(ALICE, HOME)
        for _ in range(3):
            throttle.failed(ALICE, HOME)
        self.assertEqual(throttle.refusal(ALICE, HOME), "account-address")

    def test_checks_in_flight_count_until_they_end(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60)
        attempts = [throttle.started(ALICE, FLOOD) for _ in range(3)]
        self.assertEqual(throttle.refusal(ALICE, FLOOD), "account-address")
        throttle.finished(attempts[0], None)  # not decided (directory down): not a failure
        self.assertTrue(throttle.allowed(ALICE, FLOOD))
        throttle.finished(attempts[1], False)
        throttle.finished(attempts[2], False)
        throttle.started(ALICE, FLOOD)
        self.assertFalse(throttle.allowed(ALICE, FLOOD))

    def test_success_clears_that_address(self):
        throttle = LoginThrottle(self.clock, limit=3, window=60)
        throttle.failed(ALICE, "192.0.2.2")
        throttle.failed(ALICE, "192.0.2.2")
        throttle.finished(throttle.started(ALICE, "192.0.2.2"), True)
        throttle.failed(ALICE, "192.0.2.2")
        throttle.failed(ALICE, "192.0.2.2")
        self.assertTrue(throttle.allowed(ALICE, "192.0.2.2"))


def job(log, name):
    """A check that starts when the queue calls it and ends when the test fires its Deferred."""
    d = Deferred()

    def start():
        log.append((name, d))
        return d

    return start


class HashQueueTests(unittest.TestCase):
    def test_round_robin_by_source(self):
        queue = HashQueue(concurrency=1, per_source=10, total=100)
        started = []
        for n in range(5):
            queue.run("a", job(started, f"a{n}"))
        for n in range(2):
            queue.run("b", job(started, f"b{n}"))
        queue.run("c", job(started, "c0"))
        while len(started) < 8:
            started[-1][1].callback(None)
        self.assertEqual([name for name, _ in started], ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"])
        started[-1][1].callback(None)
        self.assertEqual((queue.depth(), queue.running()), (0, 0))

    def test_bound_per_source(self):
        queue = HashQueue(concurrency=1, per_source=4, total=100)
        started = []
        results = [queue.run("192.0.2.2", job(started, f"flood{n}")) for n in range(10)]
        # One runs, four wait; the rest are refused at once and never started.
        self.assertEqual([r.called for r in results], [False] * 5 + [True] * 5)
        for r in results[5:]:
            self.failureResultOf(r, LoginThrottled)
        self.assertEqual(queue.waiting("192.0.2.2"), 4)
        self.assertFalse(queue.run("192.0.2.1", job(started, "other")).called)
        while started[-1][0] != "other":
            started[-1][1].callback(None)
        self.assertEqual(len(started), 2)  # the other address's check came next
        self.assertEqual(set(name for name, _ in started), {"flood0", "other"})

    def test_total_bound(self):
        queue = HashQueue(concurrency=1, per_source=10, total=3)
        pending = Deferred()
        first = queue.run("a", lambda: pending)
        for source in "bcd":
            self.assertFalse(queue.run(source, lambda: succeed(None)).called)
        self.failureResultOf(queue.run("e", lambda: succeed(None)), LoginThrottled)
        self.assertEqual(queue.depth(), 3)
        pending.callback(None)
        self.successResultOf(first)
        self.assertEqual(queue.depth(), 0)

    def test_checks_that_end_at_once_do_not_recurse(self):
        queue = HashQueue(concurrency=1, per_source=5000, total=5000)
        pending = Deferred()
        queue.run("a", lambda: pending)
        results = [queue.run(f"s{n}", lambda: succeed(n)) for n in range(3000)]
        pending.callback(None)
        self.assertEqual(self.successResultOf(results[-1]), 2999)

    def test_a_failing_check_frees_its_turn(self):
        queue = HashQueue(concurrency=1)
        self.failureResultOf(queue.run("a", lambda: 1 / 0), ZeroDivisionError)
        self.assertEqual(self.successResultOf(queue.run("a", lambda: "ok")), "ok")


class ByHand:
    """A password thread the test runs one call at a time (the real one runs them one at a time too)."""

    def __init__(self):
        self.calls = []

    def call(self, fn, *args, **kwargs):
        d = Deferred()
        self.calls.append((fn, args, kwargs, d))
        return d

    def run_next(self):
        fn, args, kwargs, d = self.calls.pop(0)
        maybeDeferred(fn, *args, **kwargs).chainDeferred(d)

    def passwords(self):
        """The passwords of the checks waiting in the thread."""
        return [args[1] for _, args, _, _ in self.calls]


class AtOnce:
    """A database thread that answers at once."""

    def call(self, fn, *args, **kwargs):
        return maybeDeferred(fn, *args, **kwargs)


class DirectoryLoginTests(unittest.TestCase):
    """Through the facade to the SQL directory, whose scrypt checks run in a thread driven by hand."""

    N = 16  # scrypt cost

    def setUp(self):
        store = DirectoryStore(sqlite_engine(self), password_n=self.N)
        ensure_demo_users(store, {"aim": ""})
        self.hashed = []
        verify = directory_credentials.verify_password

        def counted(password, stored):
            self.hashed.append(password)
            return verify(password, stored)

        self.patch(directory_credentials, "verify_password", counted)
        self.thread = ByHand()
        self.clock = task.Clock()
        self.queue = HashQueue(concurrency=1, per_source=4, total=256)
        directory = SQLDirectory(store, AtOnce(), self.clock, password_thread=self.thread, hash_queue=self.queue)
        self.core = make_core(clock=self.clock, directory=directory)
        self.api = self.core.api

    def login(self, address, password, source):
        d = self.api.authenticate(address, password, source=source)
        d.addErrback(lambda failure: failure.trap(LoginThrottled) and "throttled")
        return d

    def drain(self):
        while self.thread.calls:
            self.thread.run_next()

    def throttled(self, limit):
        return self.core.metrics.logins_throttled.labels(limit)._value.get()

    def test_the_real_user_is_served_ahead_of_a_flood_and_let_in(self):
        """300 wrong-password logins for alice from 127.0.0.2, all at once; then alice from 127.0.0.1."""
        flood = [self.login(ALICE, f"guess{n}", FLOOD) for n in range(300)]
        real = self.api.authenticate(ALICE, "secret", source=HOME)
        # One flood check runs; alice's is next, ahead of everything else the flood has waiting.
        self.assertEqual(self.thread.passwords(), ["guess0"])
        self.thread.run_next()
        self.assertEqual(self.thread.passwords(), ["secret"])
        self.thread.run_next()
        identity = self.successResultOf(real)
        self.assertIsInstance(identity, Identity)
        self.assertEqual(identity.id, "alice")
        self.drain()
        self.assertEqual([self.successResultOf(d) for d in flood].count(None), 5)
        # The flood is refused for alice from its address; alice is not, from hers.
        self.assertEqual(self.successResultOf(self.login(ALICE, "secret", FLOOD)), "throttled")
        again = self.login(ALICE, "secret", HOME)
        self.drain()
        self.assertEqual(self.successResultOf(again).id, "alice")

    def test_refused_logins_are_never_hashed(self):
        flood = [self.login(ALICE, f"guess{n}", FLOOD) for n in range(300)]
        self.drain()
        self.assertEqual(sorted(self.hashed), sorted(f"guess{n}" for n in range(5)))
        self.assertEqual([self.successResultOf(d) for d in flood].count("throttled"), 295)
        self.assertEqual(self.throttled("account-address"), 295)
        more = [self.login(ALICE, f"late{n}", FLOOD) for n in range(50)]
        self.drain()
        self.assertEqual(len(self.hashed), 5)
        self.assertEqual({self.successResultOf(d) for d in more}, {"throttled"})

    def test_failures_from_one_address_do_not_throttle_another_account_elsewhere(self):
        for n in range(120):
            self.login(Address("aim", f"nobody{n}"), "guess", FLOOD)
            self.drain()
        self.assertEqual(self.successResultOf(self.login(BOB, "secret", FLOOD)), "throttled")
        bob = self.login(BOB, "secret", HOME)
        self.drain()
        self.assertEqual(self.successResultOf(bob).id, "bob")

    def test_the_per_address_limit(self):
        limit = self.core.config.directory.login_failures_per_source
        for n in range(limit):
            self.login(Address("aim", f"nobody{n}"), "guess", FLOOD)
            self.drain()
        self.assertEqual(len(self.hashed), limit)
        self.assertEqual(self.successResultOf(self.login(Address.parse("aim:carol"), "secret", FLOOD)), "throttled")
        self.assertEqual(self.throttled("address"), 1)
        self.assertEqual(len(self.hashed), limit)
        self.clock.advance(self.core.config.directory.login_window + 1)
        carol = self.login(Address.parse("aim:carol"), "secret", FLOOD)
        self.drain()
        self.assertEqual(self.successResultOf(carol).id, "carol")

    def test_the_queue_bound(self):
        # Twenty accounts from one address at once: one check runs, four wait, the rest are refused unhashed.
        logins = [self.login(Address("aim", f"nobody{n}"), f"guess{n}", FLOOD) for n in range(20)]
        self.assertEqual(self.queue.depth(), 4)
        self.assertEqual([d.called for d in logins], [False] * 5 + [True] * 15)
        self.assertEqual(self.throttled("queue"), 15)
        self.drain()
        self.assertEqual(len(self.hashed), 5)
        # Refusals by the queue are not failures: the address is not closer to its limit for them.
        self.assertTrue(self.api.login_allowed(BOB, FLOOD))


class SlowDirectory(MemoryDirectory):
    """A third party's directory, which knows nothing of sources: the gateway queues its whole check."""

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


class OtherDirectoryTests(unittest.TestCase):
    def test_the_real_user_is_served_next_and_let_in(self):
        directory = SlowDirectory()
        directory.add("alice", "aim:alice")
        api = make_core(directory=directory).api
        flood = [api.authenticate(ALICE, f"guess{n}", source=FLOOD) for n in range(300)]
        for d in flood:
            d.addErrback(lambda failure: failure.trap(LoginThrottled))
        self.assertEqual(len(directory.checks), 1)
        self.assertEqual(sum(1 for d in flood if d.called), 295)
        real = api.authenticate(ALICE, "secret", source=HOME)
        directory.finish_next()  # the flood's check that was running
        self.assertEqual(directory.checks[0][1], "secret")  # alice's is next
        directory.finish_next()
        self.assertEqual(self.successResultOf(real).id, "alice")
        while directory.checks:
            directory.finish_next()
        self.failureResultOf(api.authenticate(ALICE, "secret", source=FLOOD), LoginThrottled)
        self.assertFalse(api.authenticate(ALICE, "secret", source=HOME).called)
