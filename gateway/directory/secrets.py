"""Protocol-specific login secrets derived from a password when it is set.

Some IM protocols never send the password itself, so a server cannot check
them against a slow hash: OSCAR's MD5 login needs MD5(password), SIP digest
needs HA1 = H(user:realm:password), XMPP SCRAM needs the salted StoredKey and
ServerKey. These are derived once, when the password is set, and stored
beside the scrypt hash (table ``secrets``). A handle added later gets its
digest secrets only when the password is set again.

People whose password lives in LDAP have no password here: their secrets are
*learned*, derived from a password LDAP accepted when they logged in with a
protocol that sends it (`gateway.directory.ldap`).
"""

import base64
import hashlib
import hmac
import os

SCRAM_ITERATIONS = 4096


def scram(password: str, hash_name: str, salt: bytes = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """``ITERATIONS$SALT$STOREDKEY$SERVERKEY`` (base64) as RFC 5802 defines them."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{iterations}${b64(salt)}${b64(stored_key)}${b64(server_key)}"


def parse_scram(value: str) -> tuple:
    """(iterations, salt, stored_key, server_key) of a `scram` value."""
    iterations, salt, stored, server = value.split("$")
    return int(iterations), base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server)


def digest_ha1(hash_name: str, user: str, realm: str, password: str) -> str:
    """HA1 of HTTP/SIP digest authentication (RFC 2617, RFC 8760), hex."""
    return hashlib.new(hash_name, f"{user}:{realm}:{password}".encode("utf-8")).hexdigest()


def md5_hex(password: str) -> str:
    """The ``md5`` secret: what OSCAR's strong MD5 login hashes with the key."""
    return hashlib.md5(password.encode("utf-8")).hexdigest()


def scheme_names(handles) -> set:
    """The scheme names `derive` gives for a person with ``handles``."""
    names = {"md5", "scram-sha-1", "scram-sha-256"}
    for handle in handles:
        if handle.domain:
            names.add(f"digest-md5:{handle.domain}:{handle.user}")
            names.add(f"digest-sha-256:{handle.domain}:{handle.user}")
    return names


def derive(password: str, handles) -> dict:
    """Every stored secret for ``password``: scheme name -> value."""
    secrets = {
        "md5": md5_hex(password),
        "scram-sha-1": scram(password, "sha1"),
        "scram-sha-256": scram(password, "sha256"),
    }
    for handle in handles:
        if handle.domain:
            secrets[f"digest-md5:{handle.domain}:{handle.user}"] = digest_ha1("md5", handle.user, handle.domain, password)
            secrets[f"digest-sha-256:{handle.domain}:{handle.user}"] = digest_ha1(
                "sha256", handle.user, handle.domain, password
            )
    return secrets
