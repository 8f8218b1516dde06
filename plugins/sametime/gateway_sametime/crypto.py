"""Sametime ciphers: the Diffie-Hellman key agreement and RC2-CBC as Meanwhile uses them."""

from __future__ import annotations

import os

from Crypto.Cipher import ARC2

from gateway_sametime import codec

__all__ = [
    "CryptoError",
    "DH_PRIME",
    "DH_GENERATOR",
    "IV",
    "DHKeypair",
    "rc2_encrypt",
    "rc2_decrypt",
    "Rc2Stream",
    "login_password",
    "compose_auth_rc2_40",
    "compose_auth_rc2_128",
]

# The 512-bit group every Sametime peer uses (generator 3).
DH_PRIME = int(
    "CF84AFCE86DDFA527F136D10357528EEFBA0AFEF808F29174E3B6A9E97000171"
    "7C8F106C41C161A6CE91057B34DA62CBB87BFDC1B35C1B910FEA72249D566B9F",
    16,
)
DH_GENERATOR = 3
# The fixed initialisation vector of every RC2-CBC stream.
IV = bytes.fromhex("0123456789abcdef")
# RC2 with the full 1024-bit effective key: the key schedule Meanwhile uses.
EFFECTIVE_KEY_BITS = 1024


class CryptoError(ValueError):
    """Ciphertext or a key that cannot be right (bad padding, key out of range)."""


def int_to_bytes(value: int) -> bytes:
    """An unsigned integer as its shortest big-endian bytes (Meanwhile's export)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


class DHKeypair:
    """Our side of a Diffie-Hellman exchange in the Sametime group."""

    def __init__(self, private: int = None, random_bytes=os.urandom):
        if private is None:
            private = int.from_bytes(random_bytes(64), "big") % (DH_PRIME - 2) + 1
        if not 0 < private < DH_PRIME:
            raise CryptoError("private key out of range")
        self.private = private
        self.public = pow(DH_GENERATOR, private, DH_PRIME)

    @property
    def public_bytes(self) -> bytes:
        return int_to_bytes(self.public)

    def shared_secret(self, remote_public: bytes) -> bytes:
        remote = int.from_bytes(remote_public, "big")
        if not 1 < remote < DH_PRIME - 1:
            raise CryptoError("the peer's public key is out of range")
        return int_to_bytes(pow(remote, self.private, DH_PRIME))

    def rc2_key(self, remote_public: bytes) -> bytes:
        """The 16-byte RC2/128 key: the last 16 bytes of the shared secret."""
        shared = self.shared_secret(remote_public)
        if len(shared) < 16:
            raise CryptoError("shared secret shorter than 16 bytes")
        return shared[-16:]


def _cipher(key: bytes, iv: bytes = IV):
    if not 1 <= len(key) <= 128:
        raise CryptoError(f"an RC2 key has 1 to 128 bytes, not {len(key)}")
    if len(key) < 5:
        key = key.ljust(5, b"\x00")  # pycryptodome's minimum; never on the wire
    return ARC2.new(key, ARC2.MODE_CBC, iv=iv, effective_keylen=EFFECTIVE_KEY_BITS)


def _pad(data: bytes) -> bytes:
    n = 8 - len(data) % 8
    return data + bytes([n]) * n


def _unpad(data: bytes) -> bytes:
    if not data or len(data) % 8:
        raise CryptoError(f"ciphertext of {len(data)} bytes is not whole 8-byte blocks")
    n = data[-1]
    if not 1 <= n <= 8 or data[-n:] != bytes([n]) * n:
        raise CryptoError("bad padding: wrong key or corrupted data")
    return data[:-n]


def rc2_encrypt(key: bytes, data: bytes) -> bytes:
    """One RC2-CBC message from the fixed IV, padded with 1..8 bytes of the pad length."""
    return _cipher(key).encrypt(_pad(data))


def rc2_decrypt(key: bytes, data: bytes) -> bytes:
    if not data or len(data) % 8:
        raise CryptoError(f"ciphertext of {len(data)} bytes is not whole 8-byte blocks")
    return _unpad(_cipher(key).decrypt(data))


class Rc2Stream:
    """
    One direction of an encrypted channel: the CBC chain runs on from one
    message to the next (each starts where the last left off), as in
    Meanwhile. The key schedule is made once per stream.
    """

    def __init__(self, key: bytes):
        self._key = key
        self._cipher = None
        self._direction = None

    def _for(self, direction):
        if self._direction is None:
            self._cipher, self._direction = _cipher(self._key), direction
        elif self._direction != direction:
            raise CryptoError("an RC2 stream runs one way only")
        return self._cipher

    def encrypt(self, data: bytes) -> bytes:
        return self._for("encrypt").encrypt(_pad(data))

    def decrypt(self, data: bytes) -> bytes:
        if not data or len(data) % 8:
            raise CryptoError(f"ciphertext of {len(data)} bytes is not whole 8-byte blocks")
        return _unpad(self._for("decrypt").decrypt(data))


def rc2_40_key(login_id: str) -> bytes:
    """The RC2/40 channel key of a login: the first five bytes of its login id."""
    return login_id.encode("utf-8")[:5].ljust(5, b"\x00")


# -- login ------------------------------------------------------------------


def login_password(auth_type: int, auth_data: bytes, keypair: DHKeypair = None, magic: int = None) -> str:
    """
    The password a LOGIN carries; raises `CryptoError` or `codec.CodecError`
    when it cannot be read (wrong cipher, bad magic, malformed data).
    """
    if auth_type == codec.AUTH_PLAIN:
        raw = auth_data
    elif auth_type == codec.AUTH_RC2_40:
        r = codec.Reader(auth_data)
        key, secret = r.opaque(), r.opaque()
        r.done("RC2/40 auth data")
        if len(key) != 5:
            raise CryptoError(f"an RC2/40 login key has 5 bytes, not {len(key)}")
        raw = rc2_decrypt(key, secret)
    elif auth_type == codec.AUTH_RC2_128:
        if keypair is None:
            raise CryptoError("RC2/128 login without a Diffie-Hellman key offered")
        r = codec.Reader(auth_data)
        r.u16()
        remote, secret = r.opaque(), r.opaque()
        r.done("RC2/128 auth data")
        inner = codec.Reader(rc2_decrypt(keypair.rc2_key(remote), secret))
        their_magic, password = inner.u32(), inner.string()
        inner.done("RC2/128 password")
        if magic is not None and their_magic != magic:
            raise CryptoError("the login's magic number is not the one we sent")
        return password
    else:
        raise CryptoError(f"auth type 0x{auth_type:04x} is not supported")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def compose_auth_rc2_40(password: str, key: bytes) -> bytes:
    """What a client sends for an RC2/40 login with the 5-byte ``key`` (for test and load clients)."""
    return codec.opaque(key) + codec.opaque(rc2_encrypt(key, password.encode("utf-8")))


def compose_auth_rc2_128(password: str, magic: int, server_key: bytes, keypair: DHKeypair) -> bytes:
    """What a client sends for a Diffie-Hellman + RC2/128 login (for test and load clients)."""
    secret = rc2_encrypt(keypair.rc2_key(server_key), codec.u32(magic) + codec.string(password))
    return codec.u16(1) + codec.opaque(keypair.public_bytes) + codec.opaque(secret)
