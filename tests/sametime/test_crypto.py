"""Login and channel ciphers, checked against libmeanwhile's bytes, RFC 2268 and plain-int Diffie-Hellman."""

import os
import random

from twisted.trial import unittest

from gateway_sametime import codec, crypto

# -- an independent RC2 (RFC 2268), written from the RFC for these tests -------

PITABLE = bytes.fromhex(
    "d978f9c419ddb5ed28e9fd794aa0d89dc67e37832b76538e624c6488448bfba2"
    "179a59f587b34f1361456d8d09817d32bd8f40eb86b77b0bf09521225c6b4e82"
    "54d66593ce60b21c7356c014a78cf1dc1275ca1f3bbee4d1423dd430a33cb626"
    "6fbf0eda4669075727f21d9bbc944303f811c7f690ef3ee706c3d52fc8661ed7"
    "08e8eade8052eef784aa72ac354d6a2a961ad2715a1549744b9fd05e0418a4ec"
    "c2e0416e0f51cbcc2491af50a1f47039997c3a8523b8b47afc02365b25559731"
    "2d5dfa98e38a92ae05df2910676cbac9d300e6cfe19ea82c6316013f58e289a9"
    "0d38341bab33ffb0bb480c5fb9b1cd2ec5f3db47e5a59c770aa62068fe7fc1ad"
)


def rc2_key_schedule(key, effective_bits):
    L = list(key) + [0] * (128 - len(key))
    for i in range(len(key), 128):
        L[i] = PITABLE[(L[i - 1] + L[i - len(key)]) & 0xFF]
    t8 = (effective_bits + 7) // 8
    tm = 0xFF % (1 << (8 + effective_bits - 8 * t8))
    L[128 - t8] = PITABLE[L[128 - t8] & tm]
    for i in range(127 - t8, -1, -1):
        L[i] = PITABLE[L[i + 1] ^ L[i + t8]]
    return [L[2 * i] | (L[2 * i + 1] << 8) for i in range(64)]


def rc2_block(K, block):
    R = [block[2 * i] | (block[2 * i + 1] << 8) for i in range(4)]
    shifts = (1, 2, 3, 5)
    j = 0

    def mix():
        nonlocal j
        for i in range(4):
            value = (R[i] + K[j] + (R[i - 1] & R[i - 2]) + ((~R[i - 1]) & R[i - 3])) & 0xFFFF
            j += 1
            R[i] = ((value << shifts[i]) | (value >> (16 - shifts[i]))) & 0xFFFF

    def mash():
        for i in range(4):
            R[i] = (R[i] + K[R[i - 1] & 63]) & 0xFFFF

    for rounds in (5, None, 6, None, 5):
        if rounds is None:
            mash()
        else:
            for _ in range(rounds):
                mix()
    return b"".join(bytes([r & 0xFF, r >> 8]) for r in R)


def rc2_cbc(key, iv, data, effective_bits=1024):
    K = rc2_key_schedule(key, effective_bits)
    out, prev = b"", iv
    for start in range(0, len(data), 8):
        block = bytes(a ^ b for a, b in zip(data[start:start + 8], prev))
        prev = rc2_block(K, block)
        out += prev
    return out


def pad(data):
    n = 8 - len(data) % 8
    return data + bytes([n]) * n


class IndependentRc2Tests(unittest.TestCase):
    def test_rfc2268_vectors(self):
        # (key, effective bits, plaintext, ciphertext) from RFC 2268 section 5.
        vectors = [
            ("0000000000000000", 63, "0000000000000000", "ebb773f993278eff"),
            ("ffffffffffffffff", 64, "ffffffffffffffff", "278b27e42e2f0d49"),
            ("3000000000000000", 64, "1000000000000001", "30649edf9be7d2c2"),
            ("88", 64, "0000000000000000", "61a8a244adacccf0"),
            ("88bca90e90875a", 64, "0000000000000000", "6ccf4308974c267f"),
            ("88bca90e90875a7f0f79c384627bafb2", 64, "0000000000000000", "1a807d272bbe5db1"),
            ("88bca90e90875a7f0f79c384627bafb2", 128, "0000000000000000", "2269552ab0f85ca6"),
        ]
        self.assertEqual(sorted(PITABLE), list(range(256)))
        for key, bits, plain, cipher in vectors:
            K = rc2_key_schedule(bytes.fromhex(key), bits)
            self.assertEqual(rc2_block(K, bytes.fromhex(plain)).hex(), cipher, (key, bits))


class LoginCipherTests(unittest.TestCase):
    def test_libmeanwhile_rc2_40_login(self):
        # Captured from libpurple (PROTOCOL-NOTES 1.2): key da1b980667, password "secret".
        auth = bytes.fromhex("00000005da1b98066700000008b382b7cfe51ed516")
        self.assertEqual(crypto.login_password(codec.AUTH_RC2_40, auth), "secret")
        self.assertEqual(rc2_cbc(bytes.fromhex("da1b980667"), crypto.IV, pad(b"secret")).hex(), "b382b7cfe51ed516")

    def test_rc2_matches_the_independent_implementation(self):
        rng = random.Random(7)
        for key_len in (5, 16, 5, 16, 1, 64):
            key = bytes(rng.getrandbits(8) for _ in range(key_len))
            for size in (0, 1, 7, 8, 9, 100):
                data = bytes(rng.getrandbits(8) for _ in range(size))
                expected = rc2_cbc(key if key_len >= 5 else key.ljust(5, b"\0"), crypto.IV, pad(data))
                self.assertEqual(crypto.rc2_encrypt(key, data), expected, (key_len, size))
                self.assertEqual(crypto.rc2_decrypt(key, expected), data)

    def test_stream_chains_across_messages(self):
        key = os.urandom(16)
        out, back = crypto.Rc2Stream(key), crypto.Rc2Stream(key)
        parts = [b"one", b"", b"three three three"]
        wire = [out.encrypt(p) for p in parts]
        self.assertEqual(b"".join(wire), rc2_cbc(key, crypto.IV, b"".join(pad(p) for p in parts)))
        self.assertEqual([back.decrypt(w) for w in wire], parts)
        self.assertRaises(crypto.CryptoError, out.decrypt, wire[0])  # one direction per stream

    def test_bad_padding_and_sizes(self):
        key = b"12345"
        self.assertRaises(crypto.CryptoError, crypto.rc2_decrypt, key, b"1234567")
        self.assertRaises(crypto.CryptoError, crypto.rc2_decrypt, key, rc2_cbc(key, crypto.IV, b"x" * 7 + b"\x09"))
        self.assertRaises(crypto.CryptoError, crypto.rc2_decrypt, key, b"")
        self.assertRaises(crypto.CryptoError, crypto.rc2_encrypt, b"", b"x")


class DiffieHellmanTests(unittest.TestCase):
    P = int(
        "CF84AFCE86DDFA527F136D10357528EEFBA0AFEF808F29174E3B6A9E970001717C8F106C41C161A6CE91057B34DA62CBB87BFDC1B35C1B910FEA72249D566B9F",
        16,
    )

    def test_agreement_with_plain_ints(self):
        x, y = 0xC0FFEE ** 7, 0xBADC0DE ** 5
        ours, theirs = crypto.DHKeypair(private=x), crypto.DHKeypair(private=y)
        self.assertEqual(int.from_bytes(ours.public_bytes, "big"), pow(3, x, self.P))
        shared = pow(pow(3, y, self.P), x, self.P)
        width = (shared.bit_length() + 7) // 8
        self.assertEqual(ours.shared_secret(theirs.public_bytes), shared.to_bytes(width, "big"))
        self.assertEqual(ours.rc2_key(theirs.public_bytes), shared.to_bytes(width, "big")[-16:])
        self.assertEqual(ours.rc2_key(theirs.public_bytes), theirs.rc2_key(ours.public_bytes))
        self.assertEqual(crypto.DH_PRIME, self.P)

    def test_rc2_128_login_vector(self):
        # A client login built with plain ints and the independent RC2, read by the server side.
        server = crypto.DHKeypair(private=123456789 ** 9)
        client_private = 987654321 ** 8
        client_public = pow(3, client_private, self.P)
        shared = pow(server.public, client_private, self.P)
        key = shared.to_bytes((shared.bit_length() + 7) // 8, "big")[-16:]
        secret = rc2_cbc(key, crypto.IV, pad(codec.u32(0x01234567) + codec.string("s\u00e9cret")))
        public = client_public.to_bytes((client_public.bit_length() + 7) // 8, "big")
        auth = codec.u16(1) + codec.opaque(public) + codec.opaque(secret)
        self.assertEqual(crypto.login_password(codec.AUTH_RC2_128, auth, server, 0x01234567), "s\u00e9cret")
        self.assertRaises(crypto.CryptoError, crypto.login_password, codec.AUTH_RC2_128, auth, server, 0x7654321)
        self.assertRaises(crypto.CryptoError, crypto.login_password, codec.AUTH_RC2_128, auth, None, 0x01234567)
        # and the helper the test clients use builds the same bytes
        self.assertEqual(
            crypto.compose_auth_rc2_128("s\u00e9cret", 0x01234567, server.public_bytes, crypto.DHKeypair(private=client_private)),
            auth,
        )

    def test_public_keys_out_of_range(self):
        ours = crypto.DHKeypair(private=5)
        for bad in (b"\x00", b"\x01", (self.P - 1).to_bytes(64, "big"), self.P.to_bytes(64, "big")):
            self.assertRaises(crypto.CryptoError, ours.shared_secret, bad)

    def test_unknown_auth_type(self):
        self.assertRaises(crypto.CryptoError, crypto.login_password, 0x0009, b"")
        self.assertRaises(codec.CodecError, crypto.login_password, codec.AUTH_RC2_40, b"\x00\x00")
