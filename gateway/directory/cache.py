"""A bounded least-recently-used cache whose entries expire on an injected clock."""

__all__ = ["TTLCache"]


class TTLCache:
    """
    At most ``maxsize`` entries, each forgotten ``ttl`` seconds after it was
    put (or a per-entry ``ttl``); when full, the least recently used goes.

    ``clock`` is an ``IReactorTime`` (``clock.seconds()``), so tests drive
    expiry with ``task.Clock``. ``hits`` and ``misses`` count `get` calls.
    A cached ``None`` is a value like any other: pass a sentinel ``default``
    to tell it from a miss.
    """

    def __init__(self, clock, maxsize, ttl):
        self._clock = clock
        self.maxsize = maxsize
        self.ttl = ttl
        # key -> (expires, value), least recently used first: a plain dict keeps
        # insertion order and costs less per entry than an OrderedDict.
        self._entries = {}
        self.hits = 0
        self.misses = 0

    def get(self, key, default=None):
        """The value cached for ``key``, or ``default`` when absent or expired."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock.seconds():
                entries = self._entries
                del entries[key]
                entries[key] = entry
                self.hits += 1
                return entry[1]
            del self._entries[key]
        self.misses += 1
        return default

    def put(self, key, value, ttl=None):
        """Cache ``value`` for ``key`` for ``ttl`` seconds (default: the cache's)."""
        if self.maxsize <= 0:
            return
        expires = self._clock.seconds() + (self.ttl if ttl is None else ttl)
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (expires, value)
        while len(entries) > self.maxsize:
            del entries[next(iter(entries))]

    def invalidate(self, *keys):
        """Forget ``keys``, or everything when no key is given."""
        if not keys:
            self._entries.clear()
        for key in keys:
            self._entries.pop(key, None)

    def __len__(self):
        """How many entries are live now (expired ones are dropped)."""
        now = self._clock.seconds()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        return len(self._entries)
