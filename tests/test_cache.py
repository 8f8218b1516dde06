"""Tests for gateway.directory.cache.TTLCache: LRU bound and expiry on an injected clock."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from gateway.directory.cache import TTLCache

MISSING = object()


class TTLCacheTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.cache = TTLCache(self.clock, maxsize=3, ttl=10.0)

    def test_get_put_and_counters(self):
        self.assertIsNone(self.cache.get("a"))
        self.cache.put("a", 1)
        self.assertEqual(self.cache.get("a"), 1)
        self.assertEqual(self.cache.get("b", "default"), "default")
        self.assertEqual((self.cache.hits, self.cache.misses), (1, 2))

    def test_cached_none_is_a_hit(self):
        self.cache.put("a", None)
        self.assertIsNone(self.cache.get("a", MISSING))
        self.assertEqual(self.cache.hits, 1)

    def test_expiry(self):
        self.cache.put("a", 1)
        self.clock.advance(9.9)
        self.assertEqual(self.cache.get("a"), 1)
        self.clock.advance(0.1)
        self.assertIs(self.cache.get("a", MISSING), MISSING)
        self.assertEqual(len(self.cache), 0)

    def test_per_entry_ttl(self):
        self.cache.put("short", None, ttl=2.0)
        self.cache.put("long", 1)
        self.clock.advance(2.0)
        self.assertIs(self.cache.get("short", MISSING), MISSING)
        self.assertEqual(self.cache.get("long"), 1)

    def test_put_again_renews(self):
        self.cache.put("a", 1)
        self.clock.advance(8)
        self.cache.put("a", 2)
        self.clock.advance(8)
        self.assertEqual(self.cache.get("a"), 2)

    def test_least_recently_used_goes_first(self):
        for key in "abc":
            self.cache.put(key, key)
        self.cache.get("a")  # now b is the least recently used
        self.cache.put("d", "d")
        self.assertEqual(len(self.cache), 3)
        self.assertIs(self.cache.get("b", MISSING), MISSING)
        self.assertEqual([self.cache.get(k) for k in "acd"], ["a", "c", "d"])

    def test_zero_size_caches_nothing(self):
        cache = TTLCache(self.clock, maxsize=0, ttl=10.0)
        cache.put("a", 1)
        self.assertIs(cache.get("a", MISSING), MISSING)
        self.assertEqual(len(cache), 0)

    def test_invalidate_some_or_all(self):
        for key in "abc":
            self.cache.put(key, key)
        self.cache.invalidate("a", "b", "missing")
        self.assertEqual(len(self.cache), 1)
        self.assertEqual(self.cache.get("c"), "c")
        self.cache.invalidate()
        self.assertEqual(len(self.cache), 0)

    def test_len_counts_live_entries(self):
        self.cache.put("a", 1, ttl=1.0)
        self.cache.put("b", 2)
        self.assertEqual(len(self.cache), 2)
        self.clock.advance(1.0)
        self.assertEqual(len(self.cache), 1)
