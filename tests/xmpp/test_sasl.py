"""Server-side SASL: the RFC 5802 and RFC 7677 SCRAM test vectors, failures, PLAIN."""

import base64

from twisted.trial import unittest

from gateway.directory.secrets import scram

from gateway_xmpp.sasl import SASLFailure, ScramServer, b64decode, parse_plain


def stored(password, hash_name, salt_b64, iterations=4096):
    return scram(password, hash_name, salt=base64.b64decode(salt_b64), iterations=iterations)


class ScramVectorTests(unittest.TestCase):
    def run_vector(self, mechanism, hash_name, client_first, server_nonce, salt, server_first, client_final, server_final):
        server = ScramServer(mechanism, nonce=server_nonce)
        self.assertEqual(server.start(client_first.encode()), "user")
        self.assertEqual(server.challenge(stored("pencil", hash_name, salt)).decode(), server_first)
        self.assertEqual(server.finish(client_final.encode()).decode(), server_final)

    def test_rfc5802_sha1(self):
        self.run_vector(
            "SCRAM-SHA-1", "sha1",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        )

    def test_rfc7677_sha256(self):
        self.run_vector(
            "SCRAM-SHA-256", "sha256",
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        )

    def test_wrong_password(self):
        server = ScramServer("SCRAM-SHA-1", nonce="3rfcNHYJY1ZVvWVs7j")
        server.start(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
        server.challenge(stored("not-pencil", "sha1", "QSXCR+Q6sek8bf92"))
        e = self.assertRaises(SASLFailure, server.finish,
                              b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
        self.assertEqual(e.condition, "not-authorized")

    def test_unknown_user_fails_only_at_the_end(self):
        server = ScramServer("SCRAM-SHA-256")
        server.start(b"n,,n=ghost,r=abc")
        first = server.challenge(None).decode()
        self.assertTrue(first.startswith("r=abc") and ",i=4096" in first)
        nonce = first.split(",")[0][2:]
        proof = base64.b64encode(b"\0" * 32).decode()
        self.assertRaises(SASLFailure, server.finish, f"c=biws,r={nonce},p={proof}".encode())

    def test_bad_messages(self):
        for first in (b"p=tls-unique,,n=user,r=x", b"x,,n=user,r=x", b"n,,r=x", b"n,,m=ext,n=user,r=x",
                      b"n,,n=us=er,r=x", b"nonsense", b"\xff,,n=u,r=x"):
            e = self.assertRaises(SASLFailure, ScramServer("SCRAM-SHA-1").start, first)
            self.assertEqual(e.condition, "malformed-request", first)
        server = ScramServer("SCRAM-SHA-1", nonce="S")
        self.assertEqual(server.start(b"y,a=user,n=user,r=C"), "user")
        self.assertEqual(server.authzid, "user")
        server.challenge(stored("pencil", "sha1", "QSXCR+Q6sek8bf92"))
        # c= must carry the GS2 header exactly; r= the combined nonce.
        self.assertRaises(SASLFailure, server.finish, b"c=biws,r=CS,p=AAAA")
        self.assertRaises(SASLFailure, server.finish, b"c=eSxhPXVzZXIs,r=CX,p=AAAA")
        self.assertRaises(SASLFailure, server.finish, b"c=eSxhPXVzZXIs,r=CS")

    def test_saslname_escapes(self):
        server = ScramServer("SCRAM-SHA-1")
        self.assertEqual(server.start(b"n,,n=a=2Cb=3Dc,r=x"), "a,b=c")


class PlainTests(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_plain(b"\x00alice\x00secret"), ("", "alice", "secret"))
        self.assertEqual(parse_plain(b"alice@localhost\x00alice\x00s\xc3\xa9"), ("alice@localhost", "alice", "s\u00e9"))
        for bad in (b"alice\x00secret", b"\x00\x00secret", b"\x00a\x00b\x00c", b"\x00\xff\x00x"):
            self.assertRaises(SASLFailure, parse_plain, bad)

    def test_base64(self):
        self.assertEqual(b64decode("="), b"")
        self.assertEqual(b64decode("AGFsaWNlAHNlY3JldA=="), b"\x00alice\x00secret")
        self.assertEqual(self.assertRaises(SASLFailure, b64decode, "!!!").condition, "incorrect-encoding")
