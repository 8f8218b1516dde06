"""
The node's archive signing key (Ed25519) and the checkpoints it signs.

A checkpoint says "node N's chain had head H at entry S, at time T"; signed
with the node's private key, made on the first start and kept in the data
folder (mode 0600), it lets a reviewer holding the public key
(``gatewayctl archive key``) tell a chain written here from one rewritten
later, as long as a copy of the checkpoints lives outside the database
(``[archive] checkpoint_file``, or ``gatewayctl archive checkpoints``).
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["load_or_create", "public_hex", "checkpoint", "signed_bytes", "valid", "append_checkpoint"]


def load_or_create(path: str) -> Ed25519PrivateKey:
    """The private key in PEM file ``path``, made (mode 0600) when there is none."""
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        return key
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def public_hex(key) -> str:
    """The raw public key (32 bytes) as hex, of a private or public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def signed_bytes(node: str, seq: int, head: str, at: float) -> bytes:
    """What a checkpoint's signature covers."""
    return f"gateway-archive-checkpoint\n{node}\n{seq}\n{head}\n{at!r}".encode("utf-8")


def checkpoint(key: Ed25519PrivateKey, node: str, seq: int, head: str, at: float) -> dict:
    """A checkpoint row: the head of ``node``'s chain at entry ``seq``, signed."""
    return {"node": node, "seq": seq, "head": head, "at": at, "key": public_hex(key),
            "signature": key.sign(signed_bytes(node, seq, head, at)).hex()}


def valid(row) -> bool:
    """Whether a checkpoint's signature is good for its own key (the key itself is checked by the caller)."""
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(row["key"]))
        public.verify(bytes.fromhex(row["signature"]), signed_bytes(row["node"], row["seq"], row["head"], row["at"]))
    except (InvalidSignature, ValueError):
        return False
    return True


def append_checkpoint(path: str, row: dict) -> None:
    """Append a checkpoint to the JSON-lines file ``path`` and make it durable."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
