"""Login throttling that protects users: per account and address, per address, per account, decided before hashing."""

from __future__ import annotations

import collections
from typing import Optional

from gateway.directory.cache import TTLCache
from gateway.directory.hashqueue import HashQueue

# The fair queue of password checks; its old name here, for the core.
FairQueue = HashQueue

# Seconds an address someone logged in from stays known for that account.
KNOWN_FOR = 30 * 86400.0


class LoginThrottle:
    """
    Counts failed logins and decides, before any password is looked up or
    hashed, whether one more may be tried. A failure keeps its counts for
    another ``window`` seconds; a key at its limit is refused until
    ``window`` seconds pass without a counted failure (refused attempts are
    not counted). The keys:

    - the account *from that address* (``limit``, ``[directory]
      login_failures``, 5): guessing one person's password from one place
      stops there, while that person logs in from anywhere else as usual.
    - the address (``per_source``, ``login_failures_per_source``, 100): one
      place guessing many accounts stops, while the many honest users a NAT
      puts behind one address still have room.
    - the account from everywhere (``per_account``,
      ``login_failures_per_account``, 100; 0 for none): a ceiling that slows
      guessing one account from many addresses down to ``per_account``
      guesses a window.

    An address the account logged in from (with the right password) in the
    last ``known_for`` seconds stays *known* for it: the address and account
    limits never refuse that account there, only its own (account, address)
    limit does. So neither garbage from the user's own address (a fuzzer,
    a broken client behind the same NAT) nor a distributed attack on her
    account locks her out where she usually logs in; a first login from a
    new address waits while her account is under attack from many.

    A check in flight counts as a failure until it ends (`started`, then
    `finished`): 300 logins sent at once get ``limit`` checks, not 300.

    Bounded: at most ``maxsize`` keys and known addresses are remembered.
    Each process counts its own (a cluster's nodes do not share counts).
    """

    def __init__(self, clock, limit=5, window=300.0, per_source=100, per_account=100, known_for=KNOWN_FOR,
                 maxsize=100_000):
        self.limit = limit
        self.per_source = per_source
        self.per_account = per_account
        self._failures = TTLCache(clock, maxsize, window)
        self._known = TTLCache(clock, maxsize, known_for)
        self._pending = collections.Counter()  # key -> checks in flight

    def _keys(self, account, source):
        """``(key, limit, waived for a known address)`` of a login of ``account`` from ``source``."""
        keys = [(("pair", account, source), self.limit, False)]
        if source:
            keys.append((("source", source), self.per_source, True))
        if self.per_account:
            keys.append((("account", account), self.per_account, True))
        return keys

    def known(self, address, source) -> bool:
        """Did ``address`` log in from ``source`` lately?"""
        return bool(source) and self._known.get((str(address), source), False)

    def refusal(self, address, source=None) -> Optional[str]:
        """
        None when a login of ``address`` from ``source`` may be tried now,
        else which limit refuses it: ``account-address``, ``address`` or
        ``account``.
        """
        account, source = str(address), source or ""
        known = self.known(account, source)
        for key, limit, waived in self._keys(account, source):
            if waived and known:
                continue
            if limit and self._failures.get(key, 0) + self._pending.get(key, 0) >= limit:
                return {"pair": "account-address", "source": "address", "account": "account"}[key[0]]
        return None

    def allowed(self, address, source=None) -> bool:
        return self.refusal(address, source) is None

    def started(self, address, source=None):
        """A password check of ``address`` from ``source`` begins; pass what this returns to `finished`."""
        account, source = str(address), source or ""
        keys = [key for key, _, _ in self._keys(account, source)]
        for key in keys:
            self._pending[key] += 1
        return account, source, keys

    def finished(self, attempt, ok: Optional[bool]) -> None:
        """The check `started` returned ``attempt`` for ended: ``ok`` True, False (wrong), None (not decided)."""
        account, source, keys = attempt
        for key in keys:
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]
        if ok:
            self.succeeded(account, source)
        elif ok is not None:
            self.failed(account, source)

    def failed(self, address, source=None) -> None:
        for key, _, _ in self._keys(str(address), source or ""):
            self._failures.put(key, self._failures.get(key, 0) + 1)

    def succeeded(self, address, source=None) -> None:
        account, source = str(address), source or ""
        self._failures.invalidate(("pair", account, source))
        if source:
            self._known.put((account, source), True)
