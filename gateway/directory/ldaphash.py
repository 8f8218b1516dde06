"""
Password hashes as LDAP servers store them in ``userPassword`` (RFC 2307
schemes and OpenLDAP's SHA-2 module): ``{SCHEME}base64``, the salt, when
there is one, after the digest. Used when the gateway compares a password
with the stored hash instead of binding as the person.
"""

import base64
import binascii
import hashlib
import hmac

__all__ = ["SCHEMES", "UnsupportedScheme", "verify"]

# scheme -> (hash name, salted)
SCHEMES = {
    "SHA": ("sha1", False),
    "SSHA": ("sha1", True),
    "SHA256": ("sha256", False),
    "SSHA256": ("sha256", True),
    "SHA384": ("sha384", False),
    "SSHA384": ("sha384", True),
    "SHA512": ("sha512", False),
    "SSHA512": ("sha512", True),
    "MD5": ("md5", False),
    "SMD5": ("md5", True),
}


class UnsupportedScheme(ValueError):
    """The stored value uses a scheme this module cannot check (e.g. ``{CRYPT}``)."""


def verify(stored: str, password: str) -> bool:
    """
    True when ``password`` matches ``stored`` (one ``userPassword`` value).
    A value without ``{SCHEME}`` (or ``{CLEARTEXT}``) is the password itself.
    Raises `UnsupportedScheme` for a scheme it does not know, so the caller
    can say so instead of calling the password wrong.
    """
    candidate = password.encode("utf-8")
    if not stored.startswith("{") or "}" not in stored:
        return hmac.compare_digest(stored.encode("utf-8"), candidate)
    scheme, _, rest = stored[1:].partition("}")
    scheme = scheme.upper()
    if scheme == "CLEARTEXT":
        return hmac.compare_digest(rest.encode("utf-8"), candidate)
    if scheme not in SCHEMES:
        raise UnsupportedScheme(f"userPassword scheme {{{scheme}}} is not supported")
    hash_name, salted = SCHEMES[scheme]
    try:
        raw = base64.b64decode(rest.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    size = hashlib.new(hash_name).digest_size
    if len(raw) < size or (not salted and len(raw) != size):
        return False
    digest, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hashlib.new(hash_name, candidate + salt).digest(), digest)
