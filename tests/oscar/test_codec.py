"""OSCAR codec: round-trips, the observed client bytes, every split offset, and arbitrary bytes."""

import hashlib

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from gateway_oscar import adapter, codec
from gateway_oscar.codec import Flap, OscarCodecError, Snac, SsiItem, TextPart

# Bytes observed from the real clients (PROTOCOL-NOTES 2.2-2.4).
TW15_HELLO = bytes.fromhex("2a01000100040000 0001".replace(" ", ""))
TW15_1706 = bytes.fromhex("2a02000200170017000600000000000000010005616c696365004b0000")
APF_SIGNON_PAYLOAD = bytes.fromhex(
    "00000001" "00010005616c696365" "000200068043e2b65cf2"
    "0003001a" + b"AOL Instant Messenger (SM)".hex() + "001600020001" "001700020001" "001800020000"
    "001a00020001" "000e00027573" "000f0002656e" "000900020015"
)
TW15_IM_SNAC = bytes.fromhex(
    "00040006000000000001" "0f177c4572045564" "0001" "03626f62"
    "00020021" "0501000301010201010016" "00000000" + b"hello from twisted".hex() + "00030000"
)


def samples():
    return [
        TW15_HELLO,
        TW15_1706,
        codec.encode_flap(1, 7, APF_SIGNON_PAYLOAD),
        codec.encode_flap(2, 9, TW15_IM_SNAC),
        codec.encode_flap(5, 10, b""),
        codec.encode_flap(4, 65535, codec.encode_tlvs([(1, b"alice"), (5, b"127.0.0.1:5190"), (6, b"c" * 32)])),
    ]


class FlapTests(unittest.TestCase):
    def test_round_trip(self):
        for channel, seq, payload in [(1, 0, b""), (2, 65535, b"x" * 1000), (5, 17, b"")]:
            data = codec.encode_flap(channel, seq, payload)
            frames, rest = codec.parse_flaps(data)
            self.assertEqual(frames, [Flap(channel, seq, payload)])
            self.assertEqual(rest, b"")
            self.assertEqual(frames[0].to_bytes(), data)

    def test_observed_twisted_hello_and_1706(self):
        frames, rest = codec.parse_flaps(TW15_HELLO + TW15_1706)
        self.assertEqual(rest, b"")
        self.assertEqual(frames[0], Flap(1, 1, b"\x00\x00\x00\x01"))
        snac = codec.parse_snac(frames[1].payload)
        self.assertEqual((snac.family, snac.subtype, snac.request_id), (0x17, 0x06, 0))
        self.assertEqual(codec.parse_tlvs(snac.body), [(1, b"alice"), (0x4B, b"")])

    def test_every_sample_split_at_every_offset(self):
        stream = b"".join(samples())
        whole, rest = codec.parse_flaps(stream)
        self.assertEqual(len(whole), len(samples()))
        self.assertEqual(rest, b"")
        for cut in range(len(stream) + 1):
            first, pending = codec.parse_flaps(stream[:cut])
            second, rest = codec.parse_flaps(pending + stream[cut:])
            self.assertEqual(first + second, whole, cut)
            self.assertEqual(rest, b"")

    def test_byte_by_byte(self):
        stream = b"".join(samples())
        got, pending = [], b""
        for i in range(len(stream)):
            frames, pending = codec.parse_flaps(pending + stream[i:i + 1])
            got.extend(frames)
        self.assertEqual(got, codec.parse_flaps(stream)[0])

    def test_errors(self):
        for bad, why in [
            (b"\x2b\x01\x00\x01\x00\x00", "starts with 0x2b"),
            (b"\x2a\x07\x00\x01\x00\x00", "channel 7"),
            (b"\x2a\x02\x00\x01\x10\x00", "over the limit"),
            (b"\x00", "starts with 0x00"),
        ]:
            e = self.assertRaises(OscarCodecError, codec.parse_flaps, bad, 1024)
            self.assertIn(why, str(e))

    def test_too_big_to_encode(self):
        self.assertRaises(OscarCodecError, codec.encode_flap, 2, 1, b"x" * 70000)


class SnacTlvTests(unittest.TestCase):
    def test_snac_round_trip(self):
        snac = Snac(4, 6, 0, 0x80000001, b"body")
        self.assertEqual(codec.parse_snac(snac.to_bytes()), snac)
        self.assertEqual(snac.name, "04/06")

    def test_snac_extra_data_flag_skipped(self):
        data = codec.encode_snac(1, 3, b"\x00\x04abcd" + b"\x00\x01", flags=0x8000)
        self.assertEqual(codec.parse_snac(data).body, b"\x00\x01")

    def test_snac_errors(self):
        self.assertRaises(OscarCodecError, codec.parse_snac, b"\x00" * 9)
        self.assertRaises(OscarCodecError, codec.parse_snac, codec.encode_snac(1, 3, b"\x00\x09ab", flags=0x8000))

    def test_tlvs(self):
        tlvs = [(1, b"alice"), (0x25, b"\x00" * 16), (0x4C, b"")]
        data = codec.encode_tlvs(tlvs)
        self.assertEqual(codec.parse_tlvs(data), tlvs)
        self.assertEqual(codec.first_tlv(tlvs, 0x25), b"\x00" * 16)
        self.assertIsNone(codec.first_tlv(tlvs, 9))
        self.assertRaises(OscarCodecError, codec.parse_tlvs, data[:-1] + b"\x00\x05ab")
        self.assertRaises(OscarCodecError, codec.parse_tlvs, b"\x00\x01\x00")

    def test_observed_aimpyfly_signon(self):
        tlvs = codec.parse_signon(APF_SIGNON_PAYLOAD)
        self.assertEqual(codec.first_tlv(tlvs, 1), b"alice")
        self.assertEqual(codec.unroast(codec.first_tlv(tlvs, 2)), b"secret")
        profile = adapter.client_profile(tlvs)
        self.assertTrue(profile.html_utf8)
        self.assertEqual(profile.name, "AOL Instant Messenger (SM)")
        self.assertRaises(OscarCodecError, codec.parse_signon, b"\x00\x00\x00\x02")


class PasswordTests(unittest.TestCase):
    def test_roast_is_its_own_inverse(self):
        self.assertEqual(codec.roast(b"secret"), bytes.fromhex("8043e2b65cf2"))
        self.assertEqual(codec.unroast(codec.roast(b"a much longer password!")), b"a much longer password!")

    def test_observed_twisted_strong_hash(self):
        digest = codec.bucp_hash(b"3141592653", hashlib.md5(b"secret").digest())
        self.assertEqual(digest.hex(), "f51fd826f81e5b02c2f8e8cc28a01317")

    def test_weak_hash(self):
        self.assertEqual(
            codec.bucp_weak_hash(b"k", b"pw"), hashlib.md5(b"kpwAOL Instant Messenger (SM)").digest()
        )


class IcbmTests(unittest.TestCase):
    def test_observed_twisted_im(self):
        snac = codec.parse_snac(TW15_IM_SNAC)
        icbm = codec.parse_icbm_send(snac.body)
        self.assertEqual((icbm.cookie, icbm.channel, icbm.screen_name), (bytes.fromhex("0f177c4572045564"), 1, b"bob"))
        self.assertEqual(icbm.tlv(3), b"")
        parts = codec.text_parts(icbm.tlv(2))
        self.assertEqual(parts, [TextPart(0, 0, b"hello from twisted")])

    def test_fragments_round_trip(self):
        parts = [TextPart(2, 0, "h\u00e9".encode("utf-16-be")), TextPart(0, 0, b"x")]
        data = codec.encode_message_fragments(parts)
        self.assertEqual(data[:7], bytes.fromhex("05010003010102"))  # what Twisted 15.4 assumes
        self.assertEqual(codec.text_parts(data), parts)

    def test_receive_round_trip(self):
        info = codec.encode_user_info(b"alice", [(1, b"\x00\x10"), (3, b"\x00\x00\x00\x01")])
        body = codec.encode_icbm_receive(b"C" * 8, 1, info, [(2, b"\x05\x01\x00\x00")])
        icbm = codec.parse_icbm_receive(body)
        self.assertEqual((icbm.screen_name, icbm.warning, icbm.user_tlvs[0]), (b"alice", 0, (1, b"\x00\x10")))
        self.assertEqual(icbm.tlvs, [(2, b"\x05\x01\x00\x00")])


class RateAndSsiTests(unittest.TestCase):
    def test_rate_info_round_trip(self):
        classes = [codec.RateClassInfo(1, 80, 2500, 2000, 1500, 800, 6000, 6000, ((1, 2), (4, 6))),
                   codec.RateClassInfo(2, 60, 1500, 1000, 700, 300, 6000, 6000, ())]
        for with_state, size in ((True, 35), (False, 30)):
            data = codec.encode_rate_info(classes, with_state=with_state)
            self.assertEqual(len(data), 2 + 2 * size + 4 + 8 + 4)
            self.assertEqual(codec.parse_rate_info(data, with_state=with_state), classes)

    def test_ssi_round_trip(self):
        items = [SsiItem(b"", 0, 0, 1, ((0xC8, b"\x00\x01"),)), SsiItem(b"Buddies", 1, 0, 1, ()),
                 SsiItem(b"bob", 1, 7, 0, ((0x131, b"Bob"),))]
        version, parsed, stamp = codec.parse_ssi_list(codec.encode_ssi_list(items, 1234))
        self.assertEqual((version, parsed, stamp), (0, items, 1234))
        self.assertEqual(codec.parse_ssi_items(b"".join(codec.encode_ssi_item(i) for i in items)), items)

    def test_twisted_group_item_without_tlv_length(self):
        # Twisted 15.4's SSIGroup.oscarRep: type 0001 followed by TLV 0xC8 with no length field.
        data = b"\x00\x07Buddies" + bytes.fromhex("0001 0000 0001".replace(" ", "")) + bytes.fromhex("00c8000400010002")
        self.assertEqual(codec.parse_ssi_items(data), [SsiItem(b"Buddies", 1, 0, 1, ((0xC8, b"\x00\x01\x00\x02"),))])
        self.assertRaises(OscarCodecError, codec.parse_ssi_items, data, lenient=False)

    def test_user_info_limits(self):
        self.assertRaises(OscarCodecError, codec.encode_user_info, b"x" * 256, [])


class AnyBytesTests(unittest.TestCase):
    """Arbitrary input gives frames or a clean codec error, never another exception."""

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_flaps(self, data):
        try:
            codec.parse_flaps(data, 200)
        except OscarCodecError:
            pass

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200))
    def test_structures(self, data):
        for parse in (codec.parse_snac, codec.parse_tlvs, codec.parse_icbm_send, codec.parse_icbm_receive,
                      codec.text_parts, codec.parse_ssi_items, codec.parse_ssi_list, codec.parse_signon,
                      codec.parse_rate_info):
            try:
                parse(data)
            except OscarCodecError:
                pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120), st.sampled_from([0, 2, 3, 0xFFFF]))
    def test_text_decoding_never_raises(self, data, charset):
        self.assertIsInstance(adapter.decode_text_part(TextPart(charset, 0, data)), str)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=80))
    def test_text_round_trip(self, text):
        part = adapter.encode_text(text)
        if part.charset == 2 and adapter._utf8_if_plausible(part.data) is not None:
            # The documented ambiguity: UCS-2 bytes that are also plausible UTF-8 are read as
            # UTF-8 (what Twisted 15.4 sends under charset 2).
            self.assertEqual(adapter.decode_text_part(part), part.data.decode("utf-8"))
        else:
            self.assertEqual(adapter.decode_text_part(part), text)


class HotPathTests(unittest.TestCase):
    """The IM path's one-step helpers give exactly what the general functions give."""

    def test_observed_im(self):
        snac = codec.parse_snac(TW15_IM_SNAC)
        self.assertEqual(codec.parse_im_send(TW15_IM_SNAC, 10),
                         (bytes.fromhex("0f177c4572045564"), 1, b"bob", codec.parse_icbm_send(snac.body).tlv(2), True))
        self.assertEqual(adapter.im_text(codec.parse_icbm_send(snac.body).tlv(2)), ("hello from twisted", None))

    def test_snac_flap_and_text_tlv(self):
        self.assertEqual(codec.encode_snac_flap(0x1FFFF, 4, 7, b"body", 0x8000, 0x180000001),
                         codec.encode_flap(2, 0xFFFF, codec.encode_snac(4, 7, b"body", 0x8000, 0x80000001)))
        self.assertRaises(OscarCodecError, codec.encode_snac_flap, 1, 4, 7, b"x" * 0xFFF6)
        for charset, data in [(0, b"hi"), (2, "\u4e16".encode("utf-16-be")), (3, b"caf\xe9"), (0, b"")]:
            self.assertEqual(codec.encode_text_tlv(charset, data),
                             codec.encode_tlv(2, codec.encode_message_fragments([TextPart(charset, 0, data)])))
        self.assertEqual(len(codec.encode_text_tlv(0, b"x" * 0xFFF0)), 4 + 0xFFFF)
        self.assertRaises(OscarCodecError, codec.encode_text_tlv, 0, b"x" * 0xFFF1)

    def test_html_round_trip(self):
        profile = adapter.ClientProfile()
        tlv = adapter.im_tlv("a < b & c\nd", None, profile)
        self.assertEqual(tlv[:2], b"\x00\x02")
        self.assertEqual(adapter.im_text(tlv[4:]), ("a < b & c\nd", "<HTML><BODY>a &lt; b &amp; c<BR>d</BODY></HTML>"))
        self.assertEqual(adapter.im_tlv2("hi", None, profile), tlv_value(adapter.im_tlv("hi", None, profile)))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120), st.integers(0, 8))
    def test_im_send_agrees_with_parse_icbm_send(self, data, pos):
        data = b"\x00" * pos + data
        try:
            icbm = codec.parse_icbm_send(data[pos:])
        except OscarCodecError:
            self.assertRaises(OscarCodecError, codec.parse_im_send, data, pos)
            return
        self.assertEqual(codec.parse_im_send(data, pos),
                         (icbm.cookie, icbm.channel, icbm.screen_name, icbm.tlv(2), icbm.tlv(3) is not None))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120))
    def test_text_fragments_agree_with_text_parts(self, data):
        try:
            parts = codec.text_parts(data)
        except OscarCodecError:
            self.assertRaises(OscarCodecError, codec.text_fragments, data)
            return
        self.assertEqual(codec.text_fragments(data), [(p.charset, p.subset, p.data) for p in parts])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_split_flaps_agrees_with_parse_flaps(self, data):
        try:
            frames, rest = codec.parse_flaps(data, 200)
        except OscarCodecError:
            self.assertRaises(OscarCodecError, codec.split_flaps, data, 200)
            return
        self.assertEqual(codec.split_flaps(data, 200), ([(f.channel, f.seq, f.payload) for f in frames], rest))


def tlv_value(tlv):
    return tlv[4:]


# A file-transfer proposal in the layout libpurple 2.x sends (a propose block, cookie, the send-file
# capability, then TLVs 2, 3, 5, 0x0A, 0x0F and 0x2711 = u16 one-file, u16 count, u32 size, name, NUL).
SENDFILE_RDV = bytes.fromhex(
    "0000" "c0ffee0012345678" "094613434c7f11d18222444553540000"
    "00020004c0000201" "00030004c0000201" "00050002" "1151" "000a00020001" "000f0000"
    "2711" "0012" "0001" "0001" "000004b0" + b"plans.txt".hex() + "00" + "000c0005" + b"hello".hex()
)


class RendezvousTests(unittest.TestCase):
    def test_sendfile_proposal(self):
        rdv = codec.parse_rendezvous(SENDFILE_RDV)
        self.assertEqual((rdv.kind, rdv.cookie, rdv.capability), (codec.RDV_PROPOSE, bytes.fromhex("c0ffee0012345678"),
                                                                  codec.CAP_SEND_FILE))
        self.assertEqual([t for t, _ in rdv.tlvs], [2, 3, 5, 0x0A, 0x0F, 0x2711, 0x0C])
        self.assertEqual(codec.parse_file_info(rdv.tlv(0x2711)), codec.FileInfo(1, 1, 1200, b"plans.txt"))
        self.assertEqual(codec.encode_rendezvous(rdv.kind, rdv.cookie, rdv.capability, rdv.tlvs), SENDFILE_RDV)
        self.assertEqual(codec.encode_file_info(codec.FileInfo(1, 1, 1200, b"plans.txt")), rdv.tlv(0x2711))

    def test_accept_and_cancel_have_no_file_info(self):
        accept = codec.encode_rendezvous(codec.RDV_ACCEPT, b"12345678", codec.CAP_DIRECT_IM, [])
        self.assertEqual(len(accept), 26)
        rdv = codec.parse_rendezvous(accept)
        self.assertEqual((rdv.kind, rdv.tlvs), (codec.RDV_ACCEPT, []))
        cancel = codec.parse_rendezvous(codec.encode_rendezvous(codec.RDV_CANCEL, b"12345678", codec.CAP_SEND_FILE,
                                                                [(0x0B, b"\x00\x01")]))
        self.assertEqual(cancel.tlv(0x0B), b"\x00\x01")

    def test_chat_room_info(self):
        room = codec.encode_room_info(4, b"!aol://2719:10-4-lobby", 0)
        self.assertEqual(room, bytes.fromhex("0004") + bytes((22,)) + b"!aol://2719:10-4-lobby" + b"\x00\x00")
        self.assertEqual(codec.parse_room_info(room), (4, b"!aol://2719:10-4-lobby", 0))
        self.assertEqual(codec.room_name(b"!aol://2719:10-4-lobby"), "lobby")
        self.assertEqual(codec.room_name(b"odd"), "odd")

    def test_short_or_odd_blocks_are_errors(self):
        for data in (b"", SENDFILE_RDV[:25], SENDFILE_RDV[:-2]):
            self.assertRaises(OscarCodecError, codec.parse_rendezvous, data)
        for data in (b"\x00\x01\x00\x01\x00\x00", b"\x00\x01\x00\x01\x00\x00\x00\x05name"):
            self.assertRaises(OscarCodecError, codec.parse_file_info, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80))
    def test_any_bytes_give_a_block_or_a_clean_error(self, data):
        for parse in (codec.parse_rendezvous, codec.parse_file_info, codec.parse_room_info):
            try:
                parse(data)
            except OscarCodecError:
                pass
