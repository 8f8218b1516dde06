"""The Sametime codec: wire-exact samples of libpurple's bytes, round trips, splits, and fuzzing."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gateway_sametime import adapter, codec


def h(text):
    """Hex with spaces and "quoted" ASCII, as the protocol notes write dumps."""
    out = b""
    for i, part in enumerate(text.split('"')):
        out += part.encode() if i % 2 else bytes.fromhex(part.replace(" ", ""))
    return out


# Observed from libpurple prpl-meanwhile / accepted by it (PROTOCOL-NOTES 1.2, 1.4, 5.1).
HANDSHAKE = h("00000022 0000 0000 00000000 001e 001d 00000000 00000000 1700 00000000 0100 00000000 0000")
LOGIN_RC2_40 = h(
    "0000002e 0001 0000 00000000 1700 0005 616c696365 00000015 00000005 da1b980667 "
    "00000008 b382b7cfe51ed516 0002 0000"
)
LOGIN_ACK = h(
    '00000037 8001 0000 00000000 000b "login-alice" 1700 0005 "alice" 0005 "alice" 0000 00 '
    "0000 00 00000000 0020 00000000 0000"
)
IM_SEND = h('0000002a 0004 0000 00000004 0064 0000001c 00000001 0016 "hello bob via sametime"')
SET_STATUS = h("00000010 0009 0000 00000000 0020 00000000 0000")
SET_PRIVACY = h("0000000d 000b 0000 00000000 01 00000000")
ACCEPT_PLAIN = h("00000025 0006 0000 00000003 00000011 00000011 00030005 00000000 00 0000 00000000 00000000 0007")
SAMPLES = [HANDSHAKE, LOGIN_RC2_40, LOGIN_ACK, IM_SEND, SET_STATUS, SET_PRIVACY, ACCEPT_PLAIN]

RESOLVE_BOB = h('00000000 00000001 00000001 0003 "bob" 0000000a')
AWARE_ADD_ALICE = h('00000001 0002 0005 "alice" 0000')
STORAGE_LOAD = h("00000001 00000001 00000000")


class SampleTests(unittest.TestCase):
    def one(self, wire):
        payloads, rest, keepalives = codec.split_frames(wire, 65536)
        self.assertEqual((len(payloads), rest, keepalives), (1, b"", 0))
        return codec.decode(payloads[0])

    def test_samples_decode_and_encode_back_exactly(self):
        for wire in SAMPLES:
            message = self.one(wire)
            self.assertEqual(codec.frame(message), wire, message)

    def test_handshake(self):
        m = self.one(HANDSHAKE)
        self.assertEqual((m.major, m.minor, m.login_type, m.unknown_a, m.local_host), (0x1E, 0x1D, 0x1700, 0x100, ""))

    def test_login(self):
        m = self.one(LOGIN_RC2_40)
        self.assertEqual((m.user_id, m.auth_type, len(m.auth_data)), ("alice", codec.AUTH_RC2_40, 0x15))

    def test_login_ack(self):
        m = self.one(LOGIN_ACK)
        self.assertEqual(m.login.login_id, "login-alice")
        self.assertEqual(m.login.user_id, "alice")
        self.assertEqual(m.status, codec.UserStatus(codec.STATUS_ACTIVE, 0, ""))
        self.assertEqual(m.privacy, codec.PrivacyInfo(False, ()))

    def test_im_send(self):
        m = self.one(IM_SEND)
        self.assertEqual((m.channel, m.type, m.encrypted), (4, codec.IM_MESSAGE, False))
        self.assertEqual(codec.decode_im(m.data), codec.ImText("hello bob via sametime"))

    def test_announce_layout(self):
        # MW message.c: the may-reply flag and the text travel inside an opaque
        wire = codec.encode(codec.Announce("hi", True, ("@U bob",)))
        self.assertEqual(wire, h('0022 0000 00000000 00 0000 00000005 01 0002 "hi" 00000001 0006 "@U bob"'))

    def test_accept_without_cipher(self):
        m = self.one(ACCEPT_PLAIN)
        self.assertEqual(m.encrypt, codec.EncryptAccept())
        self.assertIsNone(m.acceptor)

    def test_service_payloads(self):
        self.assertEqual(codec.decode_resolve_request(RESOLVE_BOB), (1, ("bob",), 0x0A))
        self.assertEqual(codec.encode_resolve_request(1, ["bob"]), RESOLVE_BOB)
        self.assertEqual(codec.decode_aware_list(AWARE_ADD_ALICE), (codec.AwareId("alice"),))
        self.assertEqual(codec.encode_aware_list([codec.AwareId("alice")]), AWARE_ADD_ALICE)
        self.assertEqual(codec.decode_storage_load(STORAGE_LOAD), (1, (0,)))

    def test_resolve_reply_as_libpurple_accepts_it(self):
        # PROTOCOL-NOTES 5.1: code 0, one match whose id equals the query.
        reply = codec.encode_resolve_reply(
            7, 0, [codec.ResolveResult("bob", 0, (codec.ResolveMatch("bob", "bob", ""),))]
        )
        self.assertEqual(
            reply,
            h('00000000 00000007 00000000 00000001 00000000 00000000 0003 "bob" 00000001 '
              '0003 "bob" 0003 "bob" 0000 00000001'),
        )
        self.assertEqual(codec.decode_resolve_reply(reply)[2][0].matches[0].id, "bob")

    def test_snapshot_offsets_are_absolute(self):
        entries = [
            codec.AwareEntry(codec.AwareId("bob"), codec.UserStatus(), "Bob"),
            codec.AwareEntry(codec.AwareId("carol")),
        ]
        data = codec.encode_aware_snapshot(entries)
        first_end = int.from_bytes(data[4:8], "big")
        self.assertEqual(data[first_end:first_end + 4], (len(data)).to_bytes(4, "big"))
        self.assertEqual(codec.decode_aware_snapshot(data), tuple(entries))
        self.assertEqual(
            data[:first_end],
            h('00000002 00000023 0002 0003 "bob" 0000 0000 01 0000 0020 00000000 0000 0003 "Bob"'),
        )


MESSAGES = [
    codec.Handshake(local_host="box"),
    codec.Handshake(0x1E, 0x18),
    codec.HandshakeAck(0x1E, 0x1D, 0, 0x01234567, b"\x01" * 64),
    codec.HandshakeAck(0x1E, 0x18, 7),
    codec.Login(0x1700, "alice", b"\x00secret", codec.AUTH_PLAIN),
    codec.LoginAck(
        codec.LoginInfo("n1-000001", 0x1700, "alice", "Alice A.", "", True, "desc", 0x7F000001, "srv"),
        codec.PrivacyInfo(True, (codec.PrivacyUser("bob"), codec.PrivacyUser("eve", "", True, "Eve"))),
        codec.UserStatus(codec.STATUS_AWAY, 5, "lunch"),
    ),
    codec.LoginRedirect("10.0.0.2", "node2"),
    codec.LoginContinue(),
    codec.ChannelCreate(
        0x80000001, codec.IdBlock("bob"), codec.SERVICE_IM, 0x1000, 3, codec.ImAddtl().encode(),
        codec.LoginInfo("alice:n1", 0x1700, "alice", "Alice"),
        codec.EncryptOffer(codec.ENCRYPT_WHATEVER, (codec.EncryptItem(0), codec.EncryptItem(1, b"k" * 64))),
    ),
    codec.ChannelCreate(3, codec.IdBlock("", ""), codec.SERVICE_AWARE, 0x11, 0x30005),
    codec.ChannelAccept(
        codec.SERVICE_IM, 0x1000, 3, b"", codec.LoginInfo("x" * 5),
        codec.EncryptAccept(1, codec.EncryptItem(1, b"key"), 0, False), channel=9,
    ),
    codec.ChannelSend(0x64, b"\x00\x01", True, channel=0x80000002),
    codec.ChannelSend(0x1F5, b"", channel=2),
    codec.ChannelDestroy(codec.ERR_NO_USER, b"why", channel=5),
    codec.SetUserStatus(codec.UserStatus(codec.STATUS_BUSY, 0, "meeting \u00e9")),
    codec.SetPrivacyList(codec.PrivacyInfo(False, (codec.PrivacyUser("bob", "c"),))),
    codec.SenseService(codec.SERVICE_STORAGE),
    codec.Admin("maintenance at 5"),
    codec.Announce("hi all", True, ("@U bob", "@G sales")),
    codec.Announce("server going down", False, (), codec.LoginInfo("admin-1", 0x1000, "admin")),
    codec.SenseService(codec.SERVICE_IM, attribs=b"\x00\x01"),
]


class RoundTripTests(unittest.TestCase):
    def test_every_message_type(self):
        seen = set()
        for message in MESSAGES:
            self.assertEqual(codec.decode(codec.encode(message)), message)
            seen.add(type(message))
        self.assertEqual(seen, set(codec.MESSAGE_TYPES.values()))

    def test_im_payloads(self):
        for payload in (
            codec.ImText("h\u00e9llo"),
            codec.ImData(codec.IM_DATA_TYPING, 1),
            codec.ImData(codec.IM_DATA_HTML, 0, b"<b>x</b>"),
        ):
            self.assertEqual(codec.decode_im(codec.encode_im(payload)), payload)

    def test_storage(self):
        units = ((0, codec.string("Version=3.1.3\r\n")),)
        self.assertEqual(codec.decode_storage_save(codec.encode_storage_save(4, units)), (4, units))
        self.assertEqual(codec.decode_storage_loaded(codec.encode_storage_loaded(4, 0, units)), (4, 0, units))

    def test_buddy_list(self):
        groups = (
            codec.ListGroup("Buddies", (codec.ListUser("bob", "Bob B"), codec.ListUser("xmpp.carol%example.org"))),
            codec.ListGroup("Work mates", (codec.ListUser("dave", "", "Dave"),)),
        )
        text = codec.render_buddy_list(groups)
        self.assertIn("U bob1:: Bob;B,\r\n", text)
        self.assertIn("G Work;mates2 Work;mates O\r\n", text)
        parsed = codec.parse_buddy_list(text)
        self.assertEqual([g.name for g in parsed], ["Buddies", "Work mates"])
        self.assertEqual(parsed[0].users[0], codec.ListUser("bob", "Bob B"))
        self.assertEqual(parsed[1].users[0], codec.ListUser("dave", "", "Dave"))
        entries = adapter.list_to_entries(text)
        self.assertEqual(entries[1], ("Buddies", "xmpp.carol%example.org", ""))

    def test_buddy_list_as_meanwhile_writes_it(self):
        text = "Version=3.1.3\r\nG Buddies2 Buddies O\r\nU alice1:: alice,\r\nU bob1:: ,Bobby\r\n"
        self.assertEqual(adapter.list_to_entries(text), [("Buddies", "alice", "alice"), ("Buddies", "bob", "Bobby")])


class SplitTests(unittest.TestCase):
    """Every sample, with keepalive bytes between, cut at every byte offset."""

    STREAM = b"\x80".join(SAMPLES) + b"\x80"

    def test_split_at_every_offset(self):
        whole, rest, keepalives = codec.split_frames(self.STREAM, 65536)
        self.assertEqual((len(whole), rest, keepalives), (len(SAMPLES), b"", len(SAMPLES)))
        for cut in range(len(self.STREAM) + 1):
            first, rest, k1 = codec.split_frames(self.STREAM[:cut], 65536)
            second, rest, k2 = codec.split_frames(rest + self.STREAM[cut:], 65536)
            self.assertEqual((first + second, rest, k1 + k2), (whole, b"", len(SAMPLES)), cut)

    def test_byte_by_byte(self):
        buffer, got = b"", []
        for byte in self.STREAM:
            frames, buffer, _ = codec.split_frames(buffer + bytes([byte]), 65536)
            got.extend(frames)
        self.assertEqual([codec.frame(codec.decode(p)) for p in got], SAMPLES)

    def test_oversized_is_an_error_before_the_data_arrives(self):
        self.assertRaises(codec.CodecError, codec.split_frames, b"\x00\x01\x00\x01", 65536)


class BadInputTests(unittest.TestCase):
    def test_errors(self):
        bad = {
            "short header": b"\x00\x01\x00",
            "truncated login": LOGIN_RC2_40[4:-6],
            "unknown type": h("0077 0000 00000000"),
            "trailing bytes": SET_STATUS[4:] + b"\x00",
            "encrypted status": h("0009 4000 00000000 0020 00000000 0000"),
            "huge count": h("000b 0000 00000000 01 ffffffff"),
            "string past the end": h("0019 0000 00000000 0010 41"),
        }
        for name, data in bad.items():
            self.assertRaises(codec.CodecError, codec.decode, data)
        self.assertRaises(codec.UnknownMessage, codec.decode, bad["unknown type"])
        self.assertRaises(codec.CodecError, codec.decode_im, h("00000009"))
        self.assertRaises(codec.CodecError, codec.decode_aware_snapshot, h("00000001 000000ff 0002 0000 0000 0000 00"))
        self.assertRaises(codec.CodecError, codec.string, "x" * 70000)
        self.assertRaises(codec.CodecError, codec.u16, 70000)


class FuzzTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_decode_or_fail_cleanly(self, data):
        try:
            message = codec.decode(data)
        except codec.CodecError:
            return
        self.assertIn(type(message), codec.MESSAGE_TYPES.values())

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(codec.MESSAGE_TYPES)), st.binary(max_size=120))
    def test_known_types_with_any_body(self, msg_type, body):
        try:
            codec.decode(codec.u16(msg_type) + b"\x00\x00\x00\x00\x00\x00" + body)
        except codec.CodecError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_framing_any_bytes(self, data):
        try:
            frames, rest, _ = codec.split_frames(data, 256)
        except codec.CodecError:
            return
        self.assertLessEqual(sum(len(f) + 4 for f in frames) + len(rest), len(data))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120))
    def test_service_payloads_any_bytes(self, data):
        for decoder in (
            codec.decode_im, codec.decode_aware_list, codec.decode_aware_snapshot, codec.decode_storage_load,
            codec.decode_storage_save, codec.decode_resolve_request, codec.decode_resolve_reply, codec.ImAddtl.decode,
        ):
            try:
                decoder(data)
            except codec.CodecError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=200))
    def test_buddy_list_text_never_raises(self, text):
        adapter.list_to_entries(text)

    @settings(max_examples=200, deadline=None)
    @given(
        user=st.text(min_size=1, max_size=40),
        data=st.binary(max_size=100),
        channel=st.integers(0, 2**32 - 1),
        kind=st.integers(0, 0xFFFF),
        text=st.text(max_size=100),
    )
    def test_generated_messages_round_trip(self, user, data, channel, kind, text):
        for message in (
            codec.Login(0x1700, user, data, codec.AUTH_RC2_40),
            codec.ChannelSend(kind, data, channel=channel),
            codec.ChannelDestroy(channel, data, channel=channel),
            codec.SetUserStatus(codec.UserStatus(kind, channel, text)),
            codec.ChannelCreate(channel, codec.IdBlock(user), channel, kind, kind, data, None),
        ):
            self.assertEqual(codec.decode(codec.encode(message)), message)
