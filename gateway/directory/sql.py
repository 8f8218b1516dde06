"""
The embedded directory: people, handles, groups, contacts and aliases in SQL.

`DirectoryStore` reads and writes the tables synchronously; it is made of
`gateway.directory.entries.DirectoryEntries` (people, handles, groups,
contact lists, aliases) and `gateway.directory.credentials.CredentialsMixin`
(passwords and login secrets). `SQLDirectory` is the cached, Deferred
`IDirectory` over a store, and `ensure_demo_users` fills an empty one.
`GATEWAY_NETWORK` and `DirectoryError` live in `gateway.directory.entries`
and are importable from here too.
"""

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.directory.cache import TTLCache
from gateway.directory.credentials import CredentialsMixin
from gateway.directory.entries import GATEWAY_NETWORK, DirectoryEntries, DirectoryError, _address
from gateway.directory.passwords import hash_password, verify_password  # noqa: F401 (importable from here, as before)
from gateway.interfaces import IDirectory
from gateway.model import Address, Contact

__all__ = [
    "GATEWAY_NETWORK",
    "DirectoryError",
    "DirectoryStore",
    "SQLDirectory",
    "ensure_demo_users",
]

_MISSING = object()


class DirectoryStore(CredentialsMixin, DirectoryEntries):
    """
    The directory's tables, read and written synchronously: the CLI calls it
    directly, `SQLDirectory` from its database thread. Values in and out are
    `gateway.model` objects. Person ids, like addresses, are compared
    case-insensitively and stored lower-cased. Changes that cannot be made
    raise `DirectoryError`. Its methods come from the two classes it is
    made of: see the module docstring.
    """


_DEMO_PEOPLE = (
    ("alice", "Alice Demo", "100001"),
    ("bob", "Bob Demo", "100002"),
    ("carol", "Carol Demo", "100003"),
)


def ensure_demo_users(store, domains):
    """
    Fill an empty directory with alice, bob and carol (password "secret"),
    each with a handle on every network in ``domains`` (network -> domain or
    ""; ICQ handles are UINs), all in group "demo", alice and bob in each
    other's contact list. Return the ids created (none when anyone exists).
    """
    if not store.is_empty():
        return []
    if "demo" not in {name for name, _, _ in store.list_groups()}:
        store.add_group("demo", "Demo users")
    created = {}
    for identity_id, display_name, uin in _DEMO_PEOPLE:
        created[identity_id] = store.add_person(
            identity_id,
            password="secret",
            handles=[
                Address(network, uin if network == "icq" else identity_id, domain)
                for network, domain in domains.items()
            ],
            display_name=display_name,
            groups=["demo"],
        )
    network = "aim" if "aim" in domains else next(iter(domains), None)
    if network is not None:
        alice, bob = created["alice"], created["bob"]
        store.set_contacts(
            "alice", [Contact(bob.handle_on(network), name=bob.display_name)]
        )
        store.set_contacts(
            "bob", [Contact(alice.handle_on(network), name=alice.display_name)]
        )
    return list(created)


@implementer(IDirectory)
class SQLDirectory:
    """
    `IDirectory` over a `DirectoryStore`: each call runs in ``dbthread`` (a
    `gateway.storage.dbthread.DatabaseThread`) and fires on the reactor.

    Look-ups of identities, aliases, contact lists and watchers go through
    bounded LRU caches that expire on ``clock`` (an ``IReactorTime``) after
    ``cache_ttl`` seconds; "not found" is cached too, for at most 5 seconds.
    Concurrent misses for the same key share one database call.
    ``set_contacts`` drops the cached contact lists and watchers;
    `invalidate` drops everything (after changes made elsewhere, e.g. by the
    CLI). Password checks run in ``password_thread`` when one is given (a
    second `DatabaseThread`), so scrypt does not hold up other look-ups;
    with a ``hash_queue`` (a `gateway.directory.hashqueue.HashQueue`), each check
    (its look-up and its hash) waits there for its turn by the client's
    address, ``authenticate(address, password, source=...)``, and a full
    queue refuses it at once with `LoginThrottled`.
    """

    secrets_complete = True

    def __init__(
        self,
        store,
        dbthread,
        clock,
        cache_size=10000,
        cache_ttl=60.0,
        password_thread=None,
        hash_queue=None,
    ):
        self.store = store
        self._db = dbthread
        self._password_thread = password_thread
        self._hash_queue = hash_queue
        # Tells the gateway's facade to pass ``source`` rather than queue the whole call itself.
        self.queues_password_checks = hash_queue is not None
        # Keys: an Address (who owns that handle), a person id (their Identity),
        # ("alias", Address) and ("alias-for", ...); bare keys for the two that
        # every session holds, as a tuple per entry costs 56 bytes.
        self._lookups = TTLCache(clock, cache_size, cache_ttl)
        self._lists = TTLCache(clock, cache_size, cache_ttl)
        self._negative_ttl = min(cache_ttl, 5.0)
        self._inflight = {}  # cache key -> Deferreds waiting for the one call
        self._generation = 0  # bumped by invalidation; older results are not cached

    @property
    def hits(self):
        return self._lookups.hits + self._lists.hits

    @property
    def misses(self):
        return self._lookups.misses + self._lists.misses

    def start(self):
        """Start the database thread(s)."""
        self._db.start()
        if self._password_thread is not None:
            self._password_thread.start()

    def stop(self):
        """Finish queued calls and stop the thread(s); a Deferred."""
        threads = [self._db]
        if self._password_thread is not None:
            threads.append(self._password_thread)
        d = gatherResults([thread.stop() for thread in threads])
        return d.addCallback(lambda _: None)

    def invalidate(self):
        """Forget everything cached."""
        self._forget(self._lookups)
        self._forget(self._lists)

    def _forget(self, cache):
        cache.invalidate()
        self._generation += 1
        self._inflight.clear()

    def _cached(self, cache, key, fn, *args, remember=None, call=None):
        """
        ``cache[key]``, or the result of ``fn(*args)`` run in the database
        thread (or of ``call(*args)``, a function returning a Deferred).
        """
        value = cache.get(key, _MISSING)
        if value is not _MISSING:
            return succeed(value)
        d = Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._inflight[key] = [d]
        pending = call(*args) if call is not None else self._db.call(fn, *args)
        pending.addBoth(
            self._landed, cache, key, waiting, self._generation, remember
        )
        return d

    def _landed(self, result, cache, key, waiting, generation, remember):
        if self._inflight.get(key) is waiting:
            del self._inflight[key]
        if isinstance(result, Failure):
            for d in waiting:
                d.errback(result)
            return None
        if generation == self._generation:
            if result is None:
                cache.put(key, None, self._negative_ttl)
            else:
                cache.put(key, result)
                if remember is not None:
                    remember(result)
        for d in waiting:
            d.callback(result)
        return None

    def _remember_identity(self, identity):
        self._lookups.put(identity.id, identity)

    def cached_identity_for(self, address):
        """
        ``(True, identity_or_None)`` when the cache knows who owns
        ``address``, else ``(False, None)``; never touches the database and
        makes no Deferred, for the hot path.
        """
        value = self._lookups.get(address, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value

    def identity_for(self, address):
        address = _address(address)
        return self._cached(
            self._lookups,
            address,
            self.store.identity_for,
            address,
            remember=self._remember_identity,
        )

    def get_identity(self, identity_id):
        return self._cached(
            self._lookups, identity_id, self.store.get_identity, identity_id
        )

    def authenticate(self, address, password, source=None):
        """
        The `Identity` if ``password`` fits ``address``, else None;
        ``source`` (the client's address) is the queue's turn to wait in.
        """
        address = _address(address)

        def check():
            checker = self._password_thread or self._db
            d = self._db.call(self.store.credentials, address)
            return d.addCallback(lambda credentials: checker.call(self.store.check_password, credentials, password))

        if self._hash_queue is None:
            return check()
        return self._hash_queue.run(source, check)

    def secret(self, address, scheme):
        """
        ``(identity, value)`` as `DirectoryStore.secret` says, the owner
        from the identity cache (as routing has it) and only the secret's
        value read from the database, every time: a digest or SCRAM check
        per request (SIP over UDP challenges every MESSAGE) then costs one
        small query, not the owner's whole identity again.
        """

        def found(identity):
            if identity is None:
                return None, None
            d = self._db.call(self.store.own_secret, identity.id, scheme)
            return d.addCallback(lambda value: (identity, value))

        return self.identity_for(address).addCallback(found)

    def contacts(self, identity_id):
        d = self._cached(
            self._lists, ("contacts", identity_id), self._contacts_tuple, identity_id
        )
        return d.addCallback(list)

    def _contacts_tuple(self, identity_id):
        return tuple(self.store.contacts(identity_id))

    def set_contacts(self, identity_id, new_contacts):
        # Forget before (later reads queue behind the write) and after (reads
        # that were queued before it must not leave their answer cached).
        self._forget(self._lists)
        d = self._db.call(self.store.set_contacts, identity_id, list(new_contacts))

        def written(result):
            self._forget(self._lists)
            return result

        return d.addBoth(written)

    def watchers_of(self, identity_id):
        d = self._cached(
            self._lists, ("watchers", identity_id), self._watchers_tuple, identity_id
        )
        return d.addCallback(list)

    def _watchers_tuple(self, identity_id):
        return tuple(self.store.watchers_of(identity_id))

    def alias_for(self, address, network, domain=""):
        address = _address(address)

        def remember(alias):
            self._lookups.put(("alias", alias), address)

        return self._cached(
            self._lookups,
            ("alias-for", address, network, domain),
            self.store.alias_for,
            address,
            network,
            domain,
            remember=remember,
        )

    def resolve_alias(self, address):
        address = _address(address)
        return self._cached(
            self._lookups, ("alias", address), self.store.resolve_alias, address
        )

