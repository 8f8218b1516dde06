"""Password hashing for the embedded directory: scrypt in a self-describing string."""

import hashlib
import hmac
import os

__all__ = ["hash_password", "verify_password", "SCRYPT_N"]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Refuse stored parameters that would make one check cost more than ~1 GiB.
_MAX_MEMORY = 2**30


def _derive(password, salt, n, r, p, dklen):
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=_MAX_MEMORY + 2**20,
    )


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    """
    Hash ``password`` with scrypt and a fresh random salt, as
    ``scrypt$N$r$p$salthex$hashhex``. ``n`` (a power of two) sets the cost;
    tests pass a small one.
    """
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, n, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """
    True when ``password`` matches ``stored`` (made by `hash_password`).
    An empty or malformed ``stored`` value is False, never an exception.
    """
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, expected = bytes.fromhex(salt), bytes.fromhex(expected)
    except (AttributeError, ValueError):
        return False
    if (
        scheme != "scrypt"
        or not salt
        or len(expected) != KEY_BYTES
        or min(n, r, p) < 1
        or 128 * r * (n + p) > _MAX_MEMORY
    ):
        return False
    try:
        key = _derive(password, salt, n, r, p, KEY_BYTES)
    except (AttributeError, ValueError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(key, expected)
