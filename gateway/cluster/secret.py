"""
The cluster's shared secret: the key every node signs its stream entries
with (`gateway.cluster.streams`), read from ``[cluster] secret_file``.

The file holds at least 32 random bytes, as text (``gatewayctl node secret
FILE`` makes one: 64 hexadecimal digits, mode 0600); every node of one
cluster is given the same file. A node does not start without it: a
cluster whose nodes trusted whatever Redis hands them would let anyone who
can write to Redis deliver messages that no policy decided and no archive
recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

__all__ = ["SecretError", "load", "create", "key_id", "sign", "MIN_LENGTH"]

# Bytes of secret, at least.
MIN_LENGTH = 32


class SecretError(Exception):
    """The secret file is missing, unreadable or too short."""


def load(path: str) -> bytes:
    """The secret in ``path`` (its text, surrounding white space removed)."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        raise SecretError(f"{path} does not exist; make it once with 'gatewayctl node secret {path}' and give "
                          "every node of the cluster the same file") from None
    except OSError as e:
        raise SecretError(f"cannot read {path}: {e.strerror}") from None
    if len(secret) < MIN_LENGTH:
        raise SecretError(f"{path} holds {len(secret)} bytes; a cluster secret is at least {MIN_LENGTH} "
                          "('gatewayctl node secret' makes one)")
    return secret


def create(path: str) -> None:
    """A new secret in ``path`` (which must not exist), readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def sign(secret: bytes, data: bytes) -> str:
    """The signature of ``data`` under the cluster's secret: HMAC-SHA256, hex (stream entries, login tickets)."""
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def key_id(secret: bytes) -> str:
    """A name for the secret that gives nothing of it away: nodes compare theirs in the registry."""
    return sign(secret, b"gateway cluster key id")[:16]
