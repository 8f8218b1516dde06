"""Tests for gateway.directory.passwords: scrypt hashes and their checks."""

from twisted.trial import unittest

from gateway.directory.passwords import SCRYPT_N, hash_password, verify_password

N = 16  # cheap enough for tests


class HashPasswordTests(unittest.TestCase):
    def test_format(self):
        scheme, n, r, p, salt, key = hash_password("secret", n=N).split("$")
        self.assertEqual((scheme, n, r, p), ("scrypt", "16", "8", "1"))
        self.assertEqual(len(bytes.fromhex(salt)), 16)
        self.assertEqual(len(bytes.fromhex(key)), 32)

    def test_default_cost(self):
        self.assertEqual(SCRYPT_N, 2**14)
        stored = hash_password("secret")
        self.assertEqual(stored.split("$")[1], str(2**14))
        self.assertTrue(verify_password("secret", stored))

    def test_fresh_salt_each_time(self):
        self.assertNotEqual(hash_password("secret", n=N), hash_password("secret", n=N))


class VerifyPasswordTests(unittest.TestCase):
    def test_right_and_wrong(self):
        stored = hash_password("secret", n=N)
        self.assertTrue(verify_password("secret", stored))
        self.assertFalse(verify_password("Secret", stored))
        self.assertFalse(verify_password("", stored))

    def test_unicode(self):
        stored = hash_password("pässwörd ✓", n=N)
        self.assertTrue(verify_password("pässwörd ✓", stored))
        self.assertFalse(verify_password("passwort", stored))

    def test_empty_password_can_be_hashed(self):
        self.assertTrue(verify_password("", hash_password("", n=N)))

    def test_malformed_stored_values_are_false(self):
        good = hash_password("secret", n=N)
        scheme, n, r, p, salt, key = good.split("$")
        for stored in [
            "",
            None,
            42,
            "secret",
            "scrypt$16$8$1$00",
            good + "$extra",
            good.replace("scrypt", "bcrypt"),
            f"scrypt$x$8$1${salt}${key}",
            f"scrypt$15${r}${p}${salt}${key}",  # N not a power of two
            f"scrypt$0${r}${p}${salt}${key}",
            f"scrypt${n}$0${p}${salt}${key}",
            f"scrypt${n}${r}$-1${salt}${key}",
            f"scrypt${2**40}${r}${p}${salt}${key}",  # would need terabytes
            f"scrypt${n}${r}${p}$zz${key}",
            f"scrypt${n}${r}${p}$${key}",
            f"scrypt${n}${r}${p}${salt}$",
            f"scrypt${n}${r}${p}${salt}${key[:-2]}",
        ]:
            self.assertFalse(verify_password("secret", stored), stored)

    def test_password_not_text(self):
        self.assertFalse(verify_password(None, hash_password("secret", n=N)))
