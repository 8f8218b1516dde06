"""SIP digest authentication (RFC 2617, RFC 8760 SHA-256): responses, challenges, stateless nonces on the injected clock."""

from __future__ import annotations

import collections
import hashlib
import hmac
import os

from gateway_sip.codec import quote

# Algorithm token -> hashlib name; the -sess variants use the same stored HA1.
HASHES = {"MD5": "md5", "SHA-256": "sha256"}
# Algorithm -> the directory's secret scheme prefix (gateway.directory.secrets).
SCHEMES = {"MD5": "digest-md5", "SHA-256": "digest-sha-256"}


class DigestError(ValueError):
    """Credentials that cannot be checked (unknown algorithm, missing field)."""


def split_algorithm(algorithm: str) -> tuple:
    """``"SHA-256-sess"`` -> ("SHA-256", True); unknown -> `DigestError`."""
    name = (algorithm or "MD5").upper()
    session = name.endswith("-SESS")
    base = name[:-5] if session else name
    if base not in HASHES:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return base, session


def _h(hash_name: str, data) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.new(hash_name, data).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    base, _ = split_algorithm(algorithm)
    return _h(HASHES[base], f"{user}:{realm}:{password}")


def response(algorithm, ha1_hex, method, uri, nonce, nc=None, cnonce=None, qop=None, body=b"") -> str:
    """The request-digest of RFC 2617 3.2.2.1 (and RFC 2069 when ``qop`` is None)."""
    base, session = split_algorithm(algorithm)
    name = HASHES[base]
    if session:
        ha1_hex = _h(name, f"{ha1_hex}:{nonce}:{cnonce or ''}")
    if qop == "auth-int":
        ha2 = _h(name, f"{method}:{uri}:{_h(name, body)}")
    else:
        ha2 = _h(name, f"{method}:{uri}")
    if qop:
        return _h(name, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(name, f"{ha1_hex}:{nonce}:{ha2}")


def challenge(realm: str, nonce: str, algorithm: str = "MD5", stale: bool = False, opaque: str = "") -> str:
    """A ``WWW-Authenticate`` / ``Proxy-Authenticate`` value."""
    value = f"Digest realm={quote(realm)}, nonce={quote(nonce)}, algorithm={algorithm}, qop=\"auth\""
    if opaque:
        value += f", opaque={quote(opaque)}"
    if stale:
        value += ", stale=true"
    return value


def check(credentials: dict, ha1_hex: str, method: str, body: bytes = b"") -> bool:
    """True when ``credentials`` (parsed Authorization parameters) prove knowledge of ``ha1_hex``."""
    for field in ("username", "realm", "nonce", "uri", "response"):
        if field not in credentials:
            raise DigestError(f"credentials lack {field}")
    qop = credentials.get("qop")
    if qop and qop not in ("auth", "auth-int"):
        raise DigestError(f"unsupported qop {qop!r}")
    if qop and ("nc" not in credentials or "cnonce" not in credentials):
        raise DigestError("qop without nc and cnonce")
    expected = response(
        credentials.get("algorithm", "MD5"), ha1_hex, method, credentials["uri"], credentials["nonce"],
        credentials.get("nc"), credentials.get("cnonce"), qop, body,
    )
    return hmac.compare_digest(expected.encode("utf-8"), credentials["response"].lower().encode("utf-8", "surrogatepass"))


class Nonces:
    """
    Nonces that need no table: ``<issued time hex>.<random>.<HMAC>``. A nonce is
    fresh for ``lifetime`` seconds of the injected clock, then stale (the
    client retries with stale=true, no password prompt). With qop the
    nonce-count must grow (a bounded memory of the last ones seen).
    """

    def __init__(self, clock, lifetime: float = 300.0, key: bytes = None, remember: int = 10000):
        self.clock = clock
        self.lifetime = lifetime
        self._key = key if key is not None else os.urandom(32)
        self._counts = collections.OrderedDict()
        self._remember = remember

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def make(self) -> str:
        stamp = format(int(self.clock.seconds() * 1000), "x") + "." + os.urandom(6).hex()
        return f"{stamp}.{self._mac(stamp)}"

    def state(self, nonce: str) -> str:
        """``"fresh"``, ``"stale"`` (ours but expired) or ``"invalid"`` (not ours)."""
        stamp, _, mac = (nonce or "").rpartition(".")
        try:
            issued = int(stamp.partition(".")[0], 16) / 1000.0
        except ValueError:
            return "invalid"
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(stamp).encode("ascii")):
            return "invalid"
        age = self.clock.seconds() - issued
        if age < -1 or age > self.lifetime:
            return "stale"
        return "fresh"

    def count_ok(self, nonce: str, nc) -> bool:
        """With qop: the nonce-count must be higher than the last one seen for this nonce."""
        if nc is None:
            return True
        try:
            value = int(nc, 16)
        except ValueError:
            return False
        last = self._counts.get(nonce, 0)
        if value <= last:
            return False
        self._counts[nonce] = value
        self._counts.move_to_end(nonce)
        while len(self._counts) > self._remember:
            self._counts.popitem(last=False)
        return True
