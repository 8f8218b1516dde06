"""The SIP codec: parsing, serialising, stream framing split at every byte, header values, and any bytes."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gateway_sip.codec import (
    FramingError,
    Headers,
    NameAddr,
    Request,
    Response,
    SipError,
    parse_auth,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_commas,
    split_stream,
    validate_request,
)

# The first message libpurple prpl-simple 2.14.12 sent (PROTOCOL-NOTES.md section 3).
PURPLE_REGISTER = (
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 0.0.0.0:5060;branch=z9hG4bK1EFB41F2D7AB58BA7CCD\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=5767043491;epid=1234567890\r\n"
    b"To: <sip:alice@127.0.0.1>\r\n"
    b"Max-Forwards: 10\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"User-Agent: Purple/2.14.12\r\n"
    b"Call-ID: 1F29g58ECa944Ai5CFFmDC51t4873b9869x23C6x\r\n"
    b'Contact: <sip:alice@0.0.0.0:5060;transport=tcp>;methods="MESSAGE, SUBSCRIBE, NOTIFY"\r\n'
    b"Expires: 900\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# A pager MESSAGE as SIPp sends it: no trailing CRLF in the body, padded Content-Length.
SIPP_MESSAGE = (
    b"MESSAGE sip:bob@localhost SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport\r\n"
    b"From: <sip:alice@localhost>;tag=1m1\r\n"
    b"To: <sip:bob@localhost>\r\n"
    b"Call-ID: 1-1@127.0.0.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"Content-Length:    12\r\n"
    b"\r\n"
    b"hello \xc3\xa7a va"
)

RESPONSE = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport=5070\r\n"
    b"From: <sip:alice@localhost>;tag=1m1\r\n"
    b"To: <sip:alice@localhost>;tag=x\r\n"
    b"Call-ID: 1-1@127.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="localhost", nonce="abc", algorithm=MD5, qop="auth"\r\n'
    b"Content-Length: 0\r\n"
    b"\r\n"
)


class ParseTests(unittest.TestCase):
    def test_libpurple_register_round_trip(self):
        message = parse_message(PURPLE_REGISTER)
        validate_request(message)
        self.assertIsInstance(message, Request)
        self.assertEqual((message.method, message.uri), ("REGISTER", "sip:127.0.0.1"))
        self.assertEqual(message.cseq(), (1, "REGISTER"))
        self.assertEqual(message.top_via().sent_by, "0.0.0.0:5060")
        self.assertEqual(message.top_via().branch, "z9hG4bK1EFB41F2D7AB58BA7CCD")
        self.assertEqual(parse_name_addr(message.headers.get("from")).tag, "5767043491")
        self.assertEqual(
            message.headers.get_all("contact"),
            ['<sip:alice@0.0.0.0:5060;transport=tcp>;methods="MESSAGE, SUBSCRIBE, NOTIFY"'],
        )
        self.assertEqual(message.to_bytes(), PURPLE_REGISTER)

    def test_sipp_message_body_and_padded_length(self):
        message = parse_message(SIPP_MESSAGE)
        self.assertEqual(message.body.decode("utf-8"), "hello ça va")
        again = parse_message(message.to_bytes())
        self.assertEqual((again.body, again.headers.get("content-length")), (message.body, "12"))

    def test_response_round_trip(self):
        message = parse_message(RESPONSE)
        self.assertIsInstance(message, Response)
        self.assertEqual((message.status, message.reason), (401, "Unauthorized"))
        self.assertEqual(message.to_bytes(), RESPONSE)

    def test_compact_forms_folding_and_joined_via(self):
        raw = (
            b"MESSAGE sip:bob@localhost SIP/2.0\r\n"
            b"v: SIP/2.0/UDP a.example:5060;branch=z9hG4bKa, SIP/2.0/UDP b.example;branch=z9hG4bKb\r\n"
            b"f: <sip:alice@localhost>\r\n ;tag=1\r\n"
            b"t: sip:bob@localhost\r\n"
            b"i: abc\r\n"
            b"CSeq: 7 MESSAGE\r\n"
            b"c: text/plain\r\n"
            b"l: 2\r\n"
            b"\r\n"
            b"hiIGNORED"
        )
        message = parse_message(raw)
        validate_request(message)
        self.assertEqual([parse_via(v).host for v in message.headers.get_all("Via")], ["a.example", "b.example"])
        self.assertEqual(parse_name_addr(message.headers.get("From")).tag, "1")
        self.assertEqual(message.call_id, "abc")
        self.assertEqual(message.body, b"hi")
        self.assertIn(b"\r\nCall-ID: abc\r\n", message.to_bytes())

    def test_datagram_without_content_length(self):
        message = parse_message(SIPP_MESSAGE.replace(b"Content-Length:    12\r\n", b""))
        self.assertEqual(message.body, "hello ça va".encode())

    def test_errors_name_the_problem(self):
        cases = [
            (b"", "empty message"),
            (b"HELLO\r\n\r\n", "bad request line"),
            (b"MESSAGE sip:bob@x SIP/3.0\r\n\r\n", "SIP version"),
            (b"SIP/2.0 99 Low\r\n\r\n", "bad status code"),
            (SIPP_MESSAGE.replace(b"Content-Length:    12", b"Content-Length: 99"), "Content-Length says 99"),
            (SIPP_MESSAGE.replace(b"Content-Length:    12", b"Content-Length: x"), "Content-Length is not a number"),
            (SIPP_MESSAGE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"), "not a header field"),
            (b"MESSAGE sip:b@x SIP/2.0\r\nTo: \xff\r\n\r\n", "not UTF-8"),
        ]
        for raw, reason in cases:
            with self.assertRaises(SipError) as caught:
                parse_message(raw)
            self.assertIn(reason, caught.exception.reason, raw)

    def test_a_bad_header_still_gives_the_request_to_answer(self):
        with self.assertRaises(SipError) as caught:
            parse_message(SIPP_MESSAGE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"))
        self.assertEqual(caught.exception.message.headers.get("call-id"), "1-1@127.0.0.1")

    def test_version_505(self):
        with self.assertRaises(SipError) as caught:
            parse_message(b"OPTIONS sip:x SIP/1.0\r\nVia: SIP/2.0/UDP h\r\n\r\n")
        self.assertEqual(caught.exception.status, 505)

    def test_validate_request(self):
        message = parse_message(SIPP_MESSAGE)
        for header, reason in (("call-id", "missing Call-ID header"), ("via", "missing Via header"), ("cseq", "missing CSeq header")):
            broken = parse_message(SIPP_MESSAGE)
            broken.headers.remove(header)
            with self.assertRaises(SipError) as caught:
                validate_request(broken)
            self.assertEqual(caught.exception.reason, reason)
        message.headers.set("cseq", "1 INVITE")
        self.assertRaises(SipError, validate_request, message)
        message = parse_message(SIPP_MESSAGE.replace(b"MESSAGE sip:bob@localhost", b"MESSAGE tel:+123"))
        with self.assertRaises(SipError) as caught:
            validate_request(message)
        self.assertEqual(caught.exception.status, 416)


class HeaderValueTests(unittest.TestCase):
    def test_uri(self):
        uri = parse_uri("sip:Alice@Example.COM:5070;transport=tcp;lr?subject=x")
        self.assertEqual((uri.user, uri.host, uri.port, uri.param("transport"), uri.param("lr")),
                         ("Alice", "example.com", 5070, "tcp", None))
        self.assertEqual(uri.aor, "sip:Alice@example.com")
        self.assertEqual(str(parse_uri("sip:127.0.0.1")), "sip:127.0.0.1")
        self.assertEqual(parse_uri("sips:[::1]:5061").host, "::1")
        alias = parse_uri("sip:xmpp.carol%25prosody.example@localhost")
        self.assertEqual(alias.user, "xmpp.carol%prosody.example")
        self.assertEqual(str(alias), "sip:xmpp.carol%25prosody.example@localhost")
        for bad in ("http://x", "sip:", "sip:a@", "sip:a@b:99999", "sip:a@b c"):
            self.assertRaises(SipError, parse_uri, bad)

    def test_name_addr(self):
        value = parse_name_addr('"Bob \\"B\\" Smith" <sip:bob@localhost;transport=udp>;tag=abc;epid=1')
        self.assertEqual((value.display, value.uri, value.tag), ('Bob "B" Smith', "sip:bob@localhost;transport=udp", "abc"))
        self.assertEqual(str(value), '"Bob \\"B\\" Smith" <sip:bob@localhost;transport=udp>;tag=abc;epid=1')
        bare = parse_name_addr("sip:bob@localhost;tag=1")
        self.assertEqual((bare.uri, bare.tag), ("sip:bob@localhost", "1"))
        self.assertEqual(str(NameAddr("sip:a@b").with_param("tag", "t")), "<sip:a@b>;tag=t")
        for bad in ("", '"open', "<sip:a@b", '"x" sip:a@b'):
            self.assertRaises(SipError, parse_name_addr, bad)

    def test_via_and_cseq(self):
        via = parse_via("SIP/2.0/udp 10.0.0.1:5060 ;branch=z9hG4bKx;rport;received=1.2.3.4")
        self.assertEqual((via.transport, via.host, via.port, via.branch, via.has("rport")),
                         ("UDP", "10.0.0.1", 5060, "z9hG4bKx", True))
        self.assertEqual(str(via.with_params(rport="5060")),
                         "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport=5060;received=1.2.3.4")
        for bad in ("SIP/2.0 host", "SIP/1.0/UDP h", "SIP/2.0/UDP h:0", "SIP/2.0/UDP "):
            self.assertRaises(SipError, parse_via, bad)
        self.assertEqual(parse_cseq("  42 MESSAGE"), (42, "MESSAGE"))
        for bad in ("x MESSAGE", "1", "99999999999 MESSAGE"):
            self.assertRaises(SipError, parse_cseq, bad)

    def test_a_via_of_only_commas_is_a_sip_error(self):
        # Found by the fuzzer: a Via that splits into nothing raised IndexError instead of answering 400.
        from gateway_sip.codec import parse_message

        message = parse_message(b"REGISTER sip:localhost SIP/2.0\r\nVia: , ,\r\nFrom: <sip:a@localhost>;tag=1\r\n"
                                b"To: <sip:a@localhost>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
        self.assertRaises(SipError, message.top_via)

    def test_via_spellings_parse_alike(self):
        # The usual spelling takes a shortcut; every other spelling must give the same Via.
        usual = parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx;rport")
        for text in ("SIP/2.0/udp 127.0.0.1:5070;branch=z9hG4bKx;rport", "SIP/2.0/UDP 127.0.0.1:5070 ;branch=z9hG4bKx;rport",
                     "SIP/2.0/UDP  127.0.0.1:5070;branch=z9hG4bKx;rport", "  SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx;rport "):
            self.assertEqual(parse_via(text), usual, text)
        self.assertEqual(parse_via("SIP/2.0/TCP Host.Example:5060;branch=b"), parse_via("SIP/2.0/TCP host.example:5060;branch=b"))
        self.assertEqual(parse_via("SIP/2.0/TLS [::1]:5061;branch=b").host, "::1")
        self.assertEqual(parse_via("SIP/2.0/UDP h;branch=b").port, None)
        for bad in ("SIP/2.0/UDP h:65536;branch=b", "SIP/2.0/UDP h:00000;branch=b", "SIP/2.0/UDP h:x;branch=b"):
            self.assertRaises(SipError, parse_via, bad)

    def test_parsed_values_stay_with_the_message(self):
        message = parse_message(SIPP_MESSAGE)
        validate_request(message)
        self.assertIs(message.from_(), message.from_())
        self.assertIs(message.top_via(), message.top_via())
        message.headers.set("from", "<sip:carol@localhost>;tag=9")  # a changed header is parsed again
        self.assertEqual((message.from_().uri, message.from_().tag), ("sip:carol@localhost", "9"))

    def test_bad_uri_errors_carry_the_request_every_time(self):
        request = Request("MESSAGE", "sip:a@b c")
        for _ in range(2):  # (URIs are remembered once parsed; errors are not)
            with self.assertRaises(SipError) as caught:
                parse_uri("sip:a@b c", request)
            self.assertIs(caught.exception.message, request)

    def test_auth_and_commas(self):
        scheme, values = parse_auth('Digest username="bob",realm="local, host", nc=00000001, qop=auth, uri="sip:x"')
        self.assertEqual(scheme, "digest")
        self.assertEqual(values, {"username": "bob", "realm": "local, host", "nc": "00000001", "qop": "auth", "uri": "sip:x"})
        self.assertRaises(SipError, parse_auth, "Digest nonsense")
        self.assertEqual(split_commas('a, "b, c" <sip:x,y>, d'), ['a', '"b, c" <sip:x,y>', 'd'])

    def test_headers(self):
        headers = Headers([("Via", "a"), ("v", "b"), ("To", "t")])
        self.assertEqual(headers.get_all("VIA"), ["a", "b"])
        headers.set("via", "c")
        self.assertEqual(headers.items(), [("via", "c"), ("to", "t")])
        headers.remove("to")
        self.assertNotIn("to", headers)


STREAM = PURPLE_REGISTER + b"\r\n\r\n" + SIPP_MESSAGE + b"\r\n" + RESPONSE


def frames_of(chunks):
    """Feed ``chunks`` to split_stream as a protocol would; return what came out."""
    buffer, out = b"", []
    for chunk in chunks:
        buffer += chunk
        while True:
            kind, frame, used = split_stream(buffer)
            if kind is None:
                break
            buffer = buffer[used:]
            out.append((kind, frame))
    return out, buffer


class StreamFramingTests(unittest.TestCase):
    expected = [("message", PURPLE_REGISTER), ("ping", b""), ("message", SIPP_MESSAGE), ("blank", b""), ("message", RESPONSE)]

    def test_whole(self):
        self.assertEqual(frames_of([STREAM]), (self.expected, b""))

    def test_split_at_every_byte_offset(self):
        for offset in range(len(STREAM) + 1):
            got = frames_of([STREAM[:offset], STREAM[offset:]])
            self.assertEqual(got, (self.expected, b""), f"split at {offset}")

    def test_byte_by_byte(self):
        self.assertEqual(frames_of([STREAM[i:i + 1] for i in range(len(STREAM))]), (self.expected, b""))

    def test_framing_errors(self):
        no_length = PURPLE_REGISTER.replace(b"Content-Length: 0\r\n", b"")
        self.assertRaises(FramingError, split_stream, no_length)
        self.assertRaises(FramingError, split_stream, PURPLE_REGISTER.replace(b"Length: 0", b"Length: -1"))
        self.assertRaises(FramingError, split_stream, SIPP_MESSAGE, 100)
        self.assertRaises(FramingError, split_stream, b"x" * 20000)
        both = PURPLE_REGISTER.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 5\r\n")
        self.assertRaises(FramingError, split_stream, both)

    def test_needs_more(self):
        self.assertEqual(split_stream(PURPLE_REGISTER[:-1]), (None, b"", 0))
        self.assertEqual(split_stream(SIPP_MESSAGE[:-1]), (None, b"", 0))
        self.assertEqual(split_stream(b"\r"), (None, b"", 0))
        self.assertEqual(split_stream(b"\r\n\r"), (None, b"", 0))


class AnyBytesTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=600))
    def test_parse_any_bytes(self, data):
        try:
            message = parse_message(data)
        except SipError as e:
            self.assertIsInstance(e.reason, str)
            return
        self.assertIsInstance(message, (Request, Response))
        if isinstance(message, Request):
            try:
                validate_request(message)
            except SipError:
                pass
        message.to_bytes()

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([
        b"MESSAGE sip:b@x SIP/2.0\r\n", b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", b"Content-Length: 3\r\n",
        b"CSeq: 1 MESSAGE\r\n", b"\r\n", b"abc", b"To: <sip:b@x>\r\n", b"From: x;tag=\r\n", b":", b"\xff",
        b"Call-ID: 1\r\n", b"l: 99999999999\r\n", b" folded\r\n", b"SIP/2.0 200 OK\r\n",
    ]), max_size=30))
    def test_parse_sip_like_bytes(self, parts):
        data = b"".join(parts)
        try:
            message = parse_message(data)
            if isinstance(message, Request):
                validate_request(message)
        except SipError:
            pass
        try:
            kind, frame, used = split_stream(data)
        except FramingError:
            return
        self.assertLessEqual(used, len(data))
        if kind == "message":
            self.assertEqual(frame, data[:used])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_split_stream_any_bytes(self, data):
        try:
            kind, frame, used = split_stream(data)
        except FramingError:
            return
        self.assertIn(kind, (None, "message", "ping", "blank"))
        self.assertLessEqual(used, len(data))

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=80))
    def test_header_values_any_text(self, text):
        for parser in (parse_uri, parse_name_addr, parse_via, parse_cseq, parse_auth):
            try:
                parser(text)
            except SipError:
                pass
