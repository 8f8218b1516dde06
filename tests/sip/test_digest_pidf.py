"""Digest authentication against the RFC test vectors, nonces on a clock; PIDF and isComposing documents."""

from twisted.internet import task
from twisted.trial import unittest

from gateway.directory.secrets import derive
from gateway.model import Address, PresenceStatus
from gateway_sip import adapter, digest
from gateway_sip.pidf import PidfError, parse_composing, parse_pidf, render_composing, render_pidf


class DigestVectorTests(unittest.TestCase):
    def test_rfc2617_section_3_5(self):
        ha1 = digest.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
        self.assertEqual(
            digest.response("MD5", ha1, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                            "00000001", "0a4f113b", "auth"),
            "6629fae49393a05397450978507c4ef1",
        )

    def test_rfc7616_section_3_9_1_md5_and_sha256(self):
        # RFC 8760 takes SHA-256 digest for SIP from RFC 7616, whose example this is.
        nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
        cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
        for algorithm, expected in (
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ):
            ha1 = digest.ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
            self.assertEqual(
                digest.response(algorithm, ha1, "GET", "/dir/index.html", nonce, "00000001", cnonce, "auth"),
                expected,
            )

    def test_stored_secrets_are_the_ha1_we_check_with(self):
        secrets = derive("secret", [Address("sip", "alice", "localhost")])
        self.assertEqual(secrets["digest-md5:localhost:alice"], digest.ha1("MD5", "alice", "localhost", "secret"))
        self.assertEqual(secrets["digest-sha-256:localhost:alice"], digest.ha1("SHA-256", "alice", "localhost", "secret"))

    def test_check_rfc2069_and_sess_and_auth_int(self):
        ha1 = digest.ha1("MD5", "alice", "localhost", "secret")
        base = {"username": "alice", "realm": "localhost", "nonce": "n", "uri": "sip:localhost"}
        # libpurple answers without qop (RFC 2069 form).
        creds = dict(base, response=digest.response("MD5", ha1, "REGISTER", "sip:localhost", "n"))
        self.assertTrue(digest.check(creds, ha1, "REGISTER"))
        self.assertFalse(digest.check(creds, ha1, "MESSAGE"))
        creds = dict(base, qop="auth-int", nc="00000001", cnonce="c", algorithm="MD5-sess",
                     response=digest.response("MD5-sess", ha1, "MESSAGE", "sip:localhost", "n", "00000001", "c",
                                              "auth-int", b"body"))
        self.assertTrue(digest.check(creds, ha1, "MESSAGE", b"body"))
        self.assertFalse(digest.check(creds, ha1, "MESSAGE", b"other body"))
        self.assertFalse(digest.check(dict(creds, response="\u00e9" * 32), ha1, "MESSAGE", b"body"))  # not hex at all
        self.assertRaises(digest.DigestError, digest.check, dict(creds, algorithm="SHA-512"), ha1, "MESSAGE")
        self.assertRaises(digest.DigestError, digest.check, {"username": "a"}, ha1, "MESSAGE")

    def test_challenge(self):
        self.assertEqual(
            digest.challenge("localhost", "abc", "SHA-256", stale=True),
            'Digest realm="localhost", nonce="abc", algorithm=SHA-256, qop="auth", stale=true',
        )


class NonceTests(unittest.TestCase):
    def test_fresh_stale_invalid(self):
        clock = task.Clock()
        clock.advance(1000)
        nonces = digest.Nonces(clock, lifetime=300, key=b"k" * 32)
        nonce = nonces.make()
        self.assertEqual(nonces.state(nonce), "fresh")
        clock.advance(300)
        self.assertEqual(nonces.state(nonce), "fresh")
        clock.advance(1)
        self.assertEqual(nonces.state(nonce), "stale")
        self.assertEqual(nonces.state(nonce[:-1] + ("0" if nonce[-1] != "0" else "1")), "invalid")
        self.assertEqual(nonces.state("zz.zz"), "invalid")
        self.assertEqual(digest.Nonces(clock, key=b"x" * 32).state(nonce), "invalid")

    def test_nonce_count_must_grow(self):
        nonces = digest.Nonces(task.Clock(), remember=2)
        self.assertTrue(nonces.count_ok("a", "00000001"))
        self.assertFalse(nonces.count_ok("a", "00000001"))
        self.assertTrue(nonces.count_ok("a", "00000002"))
        self.assertFalse(nonces.count_ok("a", "zz"))
        self.assertTrue(nonces.count_ok("a", None))
        nonces.count_ok("b", "1")
        nonces.count_ok("c", "1")
        self.assertEqual(len(nonces._counts), 2)  # bounded


# What libpurple prpl-simple PUBLISHes after registering (observed).
PURPLE_PIDF = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
xmlns:im="urn:ietf:params:xml:ns:pidf:im"
entity="sip:alice@localhost">
<tuple id="bs35r9f">
<status>
<basic>open</basic>
</status>
<note>available</note>
</tuple>
</presence>"""


class PidfTests(unittest.TestCase):
    def test_libpurple_document(self):
        doc = parse_pidf(PURPLE_PIDF)
        self.assertEqual((doc.entity, doc.open, doc.note), ("sip:alice@localhost", True, "available"))
        self.assertEqual(adapter.status_of(doc), PresenceStatus.AVAILABLE)

    def test_round_trip_with_activity(self):
        for status in PresenceStatus:
            body = adapter.presence_body("sip:bob@localhost", status, "a <note> & more")
            doc = parse_pidf(body)
            self.assertEqual(doc.note, "a <note> & more")
            expected = {PresenceStatus.IDLE: PresenceStatus.AWAY}.get(status, status)
            self.assertEqual(adapter.status_of(doc), expected)

    def test_entities_and_dtds_are_refused(self):
        bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&lol2;</note></presence>')
        self.assertRaises(PidfError, parse_pidf, bomb)
        external = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                    b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&x;</note></presence>')
        self.assertRaises(PidfError, parse_pidf, external)

    def test_not_pidf(self):
        for bad in (b"", b"<presence>", b"<other xmlns='x'/>", b"\xff\xfe", b"x" * 70000):
            self.assertRaises(PidfError, parse_pidf, bad)

    def test_closed(self):
        self.assertFalse(parse_pidf(render_pidf("sip:a@b", False)).open)

    def test_is_composing(self):
        self.assertTrue(parse_composing(render_composing(True)).active)
        self.assertEqual(parse_composing(render_composing(True, 90)).refresh, 90)
        self.assertFalse(parse_composing(render_composing(False)).active)
        self.assertRaises(PidfError, parse_composing, PURPLE_PIDF)
        self.assertRaises(PidfError, parse_composing,
                          b'<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"/>')
