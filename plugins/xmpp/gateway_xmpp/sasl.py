"""SASL for the server side: PLAIN (RFC 4616) and SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from gateway.plugin import parse_scram

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

# Mechanism name -> (hashlib name, directory secret scheme)
SCRAM_MECHANISMS = {
    "SCRAM-SHA-256": ("sha256", "scram-sha-256"),
    "SCRAM-SHA-1": ("sha1", "scram-sha-1"),
}


class SASLFailure(Exception):
    """The exchange failed: ``condition`` is the RFC 6120 6.5 failure condition."""

    def __init__(self, condition: str, text: str = ""):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


def b64decode(text: str) -> bytes:
    """The bytes of a SASL payload; ``=`` alone is the empty response (RFC 6120 6.4.2)."""
    text = text.strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("incorrect-encoding", "the payload is not base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_plain(data: bytes) -> tuple:
    """``authzid NUL authcid NUL password`` -> ``(authzid, authcid, password)`` as text."""
    parts = data.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise SASLFailure("malformed-request", "PLAIN needs authzid NUL authcid NUL password")
    try:
        return tuple(p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SASLFailure("malformed-request", "PLAIN credentials must be UTF-8") from None


def _saslname(value: str) -> str:
    """Decode a SCRAM saslname (``=2C`` is ``,``, ``=3D`` is ``=``; any other ``=`` is an error)."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise SASLFailure("malformed-request", "bad escape in SCRAM user name")
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _attributes(text: str) -> list:
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise SASLFailure("malformed-request", f"bad SCRAM attribute {part[:20]!r}")
        pairs.append((part[0], part[2:]))
    return pairs


class ScramServer:
    """
    One SCRAM exchange, server side, against stored keys (no password).

    ``start(client_first)`` -> the user name the client claims;
    ``challenge(stored_value)`` -> server-first-message, with ``stored_value``
    the directory's ``ITERATIONS$SALT$STOREDKEY$SERVERKEY`` (None for an
    unknown user: the exchange goes on with made-up keys and fails at the end,
    so answers do not tell who exists); ``finish(client_final)`` -> the
    server-final-message (``v=...``) or `SASLFailure`. Channel binding is not
    offered, so ``p=`` is refused and ``y`` is accepted.
    """

    def __init__(self, mechanism: str, nonce: str = None):
        self.hash_name, self.scheme = SCRAM_MECHANISMS[mechanism]
        self.server_nonce = nonce or b64encode(os.urandom(18))
        self.user = None
        self.authzid = ""

    def start(self, data: bytes) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "SCRAM messages must be UTF-8") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SASLFailure("malformed-request", "no GS2 header")
        flag, authzid, bare = parts
        if flag.startswith("p="):
            raise SASLFailure("malformed-request", "channel binding was not offered")
        if flag not in ("n", "y"):
            raise SASLFailure("malformed-request", "bad GS2 channel binding flag")
        if authzid:
            if not authzid.startswith("a="):
                raise SASLFailure("malformed-request", "bad GS2 authzid")
            self.authzid = _saslname(authzid[2:])
        self.gs2_header = f"{flag},{authzid},"
        attrs = _attributes(bare)
        if attrs and attrs[0][0] == "m":
            raise SASLFailure("malformed-request", "mandatory extensions are not supported")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise SASLFailure("malformed-request", "client-first-message needs n= then r=")
        self.user = _saslname(attrs[0][1])
        self.client_nonce = attrs[1][1]
        if not self.user or not self.client_nonce:
            raise SASLFailure("malformed-request", "empty user name or nonce")
        self.client_first_bare = bare
        return self.user

    def challenge(self, stored_value) -> bytes:
        if stored_value:
            self.iterations, self.salt, self.stored_key, self.server_key = parse_scram(stored_value)
            self.known = True
        else:
            digest = hashlib.new(self.hash_name).digest_size
            self.iterations, self.salt = 4096, os.urandom(16)
            self.stored_key, self.server_key = os.urandom(digest), os.urandom(digest)
            self.known = False
        self.nonce = self.client_nonce + self.server_nonce
        self.server_first = f"r={self.nonce},s={b64encode(self.salt)},i={self.iterations}"
        return self.server_first.encode("ascii")

    def finish(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request", "SCRAM messages must be UTF-8") from None
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise SASLFailure("malformed-request", "client-final-message has no proof")
        attrs = dict(_attributes(without_proof))
        if attrs.get("c") != b64encode(self.gs2_header.encode("utf-8")):
            raise SASLFailure("not-authorized", "channel binding data does not match")
        if attrs.get("r") != self.nonce:
            raise SASLFailure("not-authorized", "nonce does not match")
        proof = b64decode(proof_text)
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode("utf-8")
        signature = hmac.new(self.stored_key, auth_message, self.hash_name).digest()
        if len(proof) != len(signature):
            raise SASLFailure("not-authorized", "wrong proof length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not self.known or not hmac.compare_digest(
            hashlib.new(self.hash_name, client_key).digest(), self.stored_key
        ):
            raise SASLFailure("not-authorized", "wrong user name or password")
        server_signature = hmac.new(self.server_key, auth_message, self.hash_name).digest()
        return f"v={b64encode(server_signature)}".encode("ascii")
