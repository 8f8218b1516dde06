"""Failed-login throttling per user and per source address."""

from gateway.cache import TTLCache


class LoginThrottle:
    """
    Counts failed logins per key (a user's address, a source host); each
    failure keeps the count for another ``window`` seconds. A key with
    ``limit`` failures is refused until ``window`` seconds pass without one.
    Bounded: at most ``maxsize`` keys are remembered.
    """

    def __init__(self, clock, limit=5, window=300.0, maxsize=100_000):
        self.limit = limit
        self._failures = TTLCache(clock, maxsize, window)

    def _keys(self, address, source):
        keys = [("user", str(address))]
        if source:
            keys.append(("source", source))
        return keys

    def allowed(self, address, source=None) -> bool:
        return all(self._failures.get(key, 0) < self.limit for key in self._keys(address, source))

    def failed(self, address, source=None) -> None:
        for key in self._keys(address, source):
            self._failures.put(key, self._failures.get(key, 0) + 1)

    def succeeded(self, address, source=None) -> None:
        self._failures.invalidate(("user", str(address)))
