"""userPassword hashes: values made by OpenLDAP's slappasswd, and made-up bad ones."""

import os
import shutil
import subprocess

from twisted.trial import unittest

from gateway.directory.ldaphash import UnsupportedScheme, verify

# Made with `slappasswd -h SCHEME -s secret` (OpenLDAP 2.5; SHA-2 with -o module-load=pw-sha2.la).
MADE = [
    "{SSHA}9D6TAPmx0X8cr3Wf+3kcgJgV+yXKR/Nr",
    "{SMD5}wWSoRTErifDGvWpLNU40tUvNboA=",
    "{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",
    "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",
    "{SSHA512}ZsqKzyPIxiFzrTpQLud77/yy/nWJnGEQYe6J0+Et+ekwGnRDZravSAh7eEGjohNCLxa2fpFp4CTw+Yz0BmSZyXuutLPgLZ8g",
    "{CLEARTEXT}secret",
    "secret",
]


class VerifyTests(unittest.TestCase):
    def test_values_slappasswd_made(self):
        for stored in MADE:
            self.assertTrue(verify(stored, "secret"), stored)
            self.assertFalse(verify(stored, "Secret"), stored)
            self.assertFalse(verify(stored, ""), stored)

    def test_fresh_values_from_the_slappasswd_here(self):
        program = shutil.which("slappasswd") or "/usr/sbin/slappasswd"
        if not os.path.exists(program):
            raise unittest.SkipTest("slappasswd is not installed (Debian package slapd)")
        for scheme in ("{SSHA}", "{SMD5}", "{SHA}", "{MD5}"):
            stored = subprocess.run([program, "-h", scheme, "-s", "p\u00e4ss w0rd"], check=True, capture_output=True,
                                    text=True).stdout.strip()
            self.assertTrue(verify(stored, "p\u00e4ss w0rd"), stored)
            self.assertFalse(verify(stored, "pass w0rd"), stored)
        stored = subprocess.run([program, "-o", "module-load=pw-sha2.la", "-h", "{SSHA256}", "-s", "x"],
                                capture_output=True, text=True)
        if stored.returncode == 0:
            self.assertTrue(verify(stored.stdout.strip(), "x"))

    def test_broken_and_unknown(self):
        self.assertFalse(verify("{SSHA}not base64!", "secret"))
        self.assertFalse(verify("{SHA}AAAA", "secret"))  # too short for SHA-1
        self.assertFalse(verify("{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQAA", "secret"))  # unsalted with extra bytes
        self.assertRaises(UnsupportedScheme, verify, "{CRYPT}$6$abc$def", "secret")
        self.assertRaises(UnsupportedScheme, verify, "{ARGON2}$argon2id$v=19$m=65536", "secret")
