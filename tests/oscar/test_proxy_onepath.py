"""The logging proxy fails closed: what it cannot attribute, read or decide is withheld and archived; files and chat."""

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import fail, succeed

from gateway.config import ConfigError
from gateway.model import Address, Outcome, Verdict

from gateway_oscar import adapter, codec, intercept
from gateway_oscar.codec import encode_tlvs, u16
from gateway_oscar.intercept import IM_IN, IM_OUT
from gateway_oscar.proxy import UNKNOWN, OscarProxyConnector

from tests.oscar.test_onepath import COOKIE, PARAMS, file_tlvs, rendezvous_body
from tests.oscar.test_proxy import PROXY, ProxyBase, flap, renumbered, snac
from tests.oscar.wire import im_body


def im_out(to, markup, request_id=7, ack=False, cookie=b"12345678"):
    return flap(2, 3, snac(4, 6, im_body(to, codec.TextPart(0, 0, markup), cookie=cookie, ack=ack), request_id))


def im_in(sender, markup, cookie=b"ABCDEFGH", seq=501):
    info = codec.encode_user_info(sender, [(1, b"\x00\x10")])
    tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, markup)])
    return flap(2, seq, snac(4, 7, codec.encode_icbm_receive(cookie, 1, info, [(2, tlv2)]), 0x80000001))


def rdv_in(sender, block, cookie=COOKIE, seq=501):
    info = codec.encode_user_info(sender, [(1, b"\x00\x10")])
    return flap(2, seq, snac(4, 7, codec.encode_icbm_receive(cookie, 2, info, [(5, block)]), 0x80000002))


def text_tlv(data):
    """The text fragment of a relayed IM frame (04/06 or 04/07)."""
    got = codec.parse_snac(codec.parse_flaps(data)[0][0].payload)
    icbm = codec.parse_icbm_send(got.body) if got.subtype == 6 else codec.parse_icbm_receive(got.body)
    (part,) = codec.text_parts(icbm.tlv(2))
    return part.charset, part.data


def sent_rendezvous(data):
    """``(sender or recipient name, Rendezvous, other TLVs)`` of a relayed channel-2 frame."""
    got = codec.parse_snac(codec.parse_flaps(data)[0][0].payload)
    icbm = codec.parse_icbm_send(got.body) if got.subtype == 6 else codec.parse_icbm_receive(got.body)
    return icbm.screen_name, codec.parse_rendezvous(icbm.tlv(5)), [(t, v) for t, v in icbm.tlvs if t != 5]


class Base(ProxyBase):
    def refused(self):
        """``(event, reason, rule)`` of the rows archived as rejected."""
        return [(e, v.reason, v.rule) for e, v, s in self.core.archive.rows.values() if s == "rejected"]

    def error_to_client(self, client):
        (frame,) = codec.parse_flaps(self.take(client))[0]
        got = codec.parse_snac(frame.payload)
        return got.family, got.subtype, got.request_id, got.body

    def stranger(self):
        """A client whose connection brings a cookie the proxy did not hand out: nobody knows who it is."""
        leg, client = self.client()
        leg.dataReceived(flap(1, 1, codec.FLAP_VERSION + encode_tlvs([(6, b"not ours")])))
        _, upstream, up = self.upstreams[-1]
        upstream.dataReceived(flap(1, 500, codec.FLAP_VERSION))
        self.take(up), self.take(client)
        return leg, client, upstream, up


class FailClosedTests(Base):
    def test_config(self):
        self.assertTrue(self.proxy.fail_closed)
        self.assertFalse(OscarProxyConnector(self.core.api, dict(PROXY, fail_closed=False)).fail_closed)
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, fail_closed="yes"))

    def test_im_from_an_unknown_user_is_withheld_archived_and_answered(self):
        leg, client, upstream, up = self.stranger()
        leg.dataReceived(im_out(b"bob", b"who am i", request_id=9))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 9, u16(adapter.ERR_SERVICE_UNAVAILABLE)))
        ((event, reason, rule),) = self.refused()
        self.assertEqual((event.sender, str(event.recipient), event.text, rule), (UNKNOWN, "aim:bob", "who am i",
                                                                                 "unattributed"))
        self.assertIn("does not know who", reason)
        # and to such a client
        upstream.dataReceived(im_in(b"carol", b"hello stranger"))
        self.assertEqual(self.take(client), b"")
        self.assertEqual(self.refused()[-1][0].text, "hello stranger")

    def test_unparsable_im_is_withheld_archived_and_answered(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(4, 6, b"short", request_id=11)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 11, u16(adapter.ERR_BAD_FORMAT)))
        upstream.dataReceived(flap(2, 501, snac(4, 7, b"\x00" * 9)))
        self.assertEqual(self.take(client), b"")
        rows = self.refused()
        self.assertEqual([(e.sender, e.recipient, rule) for e, _, rule in rows],
                         [(Address("aim", "alice"), UNKNOWN, "unparsable"), (UNKNOWN, Address("aim", "alice"), "unparsable")])
        # a SNAC header the proxy cannot read does not hide an IM either
        leg.dataReceived(flap(2, 4, codec.encode_snac(4, 6, b"\x00\x05ab", 0x8000, 12)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(len(self.refused()), 3)
        # the connection goes on, numbered without gaps
        ping = flap(2, 5, snac(1, 0x11, b"\x00\x00\x00\x00"))
        leg.dataReceived(ping)
        self.assertEqual(self.take(up), renumbered(ping, 3))

    def test_undecided_im_is_withheld_and_archived(self):
        leg, client, upstream, up = self.bos()
        real = self.core.api.submit
        self.core.api.submit = lambda event, **kw: fail(RuntimeError("path broke"))
        leg.dataReceived(im_out(b"bob", b"lost", request_id=13))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 13, u16(adapter.ERR_SERVICE_UNAVAILABLE)))
        ((event, reason, rule),) = self.refused()
        self.assertEqual((event.text, rule), ("lost", "undecided"))
        self.assertIn("path broke", reason)
        self.flushLoggedErrors(RuntimeError)
        # an outcome that is neither delivered nor a policy decision: withheld too
        self.core.api.submit = lambda event, **kw: succeed(Outcome.rejected_(event.id, "directory down",
                                                                             "directory-unavailable"))
        upstream.dataReceived(im_in(b"carol", b"maybe"))
        self.assertEqual(self.take(client), b"")
        self.core.api.submit = real

    def test_a_stream_that_stops_being_flap_is_closed_and_archived(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(b"\x00\x01garbage that is not FLAP" + im_out(b"bob", b"hidden"))
        self.assertEqual(self.take(up), b"")
        self.assertTrue(client.disconnecting)
        self.assertTrue(up.disconnecting)
        ((event, reason, rule),) = self.refused()
        self.assertEqual((str(event.sender), rule), ("aim:alice", "raw-stream"))
        leg, client, upstream, up = self.bos(b"bob")
        upstream.dataReceived(b"\xffupstream junk")
        self.assertEqual(self.take(client), b"")
        self.assertTrue(client.disconnecting)
        self.assertEqual([rule for _, _, rule in self.refused()], ["raw-stream", "raw-stream"])

    def test_a_stream_that_is_never_flap_never_reaches_the_upstream(self):
        leg, client = self.client()
        leg.dataReceived(b"\x16\x03\x01\x02\x00")  # a TLS hello
        self.assertEqual(self.upstreams, [])
        self.assertTrue(client.disconnecting)
        ((event, _, rule),) = self.refused()
        self.assertEqual((event.sender, rule), (UNKNOWN, "raw-stream"))


class RenderingTests(Base):
    """IMs are forwarded rendered from the decided event, never as their sender wrote them."""

    def test_im_out_and_in_rendered_from_the_event(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(im_out(b"bob", b'<HTML><BODY><B>hi</B><script>steal()</script><IMG SRC="http://t.example/p">'
                                        b'</BODY></HTML>', ack=True))
        self.assertEqual(text_tlv(self.take(up)), (0, b"<b>hi</b>"))
        upstream.dataReceived(im_in(b"carol", b"<HTML><FONT ONCLICK='x()'>yo</FONT><!-- project-x --></HTML>"))
        self.assertEqual(text_tlv(self.take(client)), (0, b"<font>yo</font>"))
        self.assertEqual([e.text for e in self.core.archive.events("im")], ["hi", "yo"])

    def test_second_leg_of_an_im_between_two_proxied_clients(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(im_out(b"bob", b"<HTML>hi <script>x()</script>bob</HTML>"))
        self.take(up)
        bob, bob_client, bob_upstream, _ = self.bos(b"bob")
        # the upstream relays alice's IM as it got it, or as its sender wrote it: bob sees what was decided
        bob_upstream.dataReceived(im_in(b"alice", b"<HTML>hi <script>x()</script>bob</HTML>", cookie=b"12345678"))
        self.assertEqual(text_tlv(self.take(bob_client)), (0, b"<HTML><BODY>hi bob</BODY></HTML>"))
        self.assertEqual(len(self.core.archive.events("im")), 1)

    def test_a_client_that_reads_only_utf8_in_html_gets_it(self):
        leg, client = self.client()
        leg.dataReceived(flap(1, 1, codec.FLAP_VERSION + encode_tlvs([
            (1, b"bob"), (2, codec.roast(b"secret")), (3, b"AOL Instant Messenger (SM)"), (0x16, b"\x00\x01"),
            (0x17, b"\x00\x01"), (0x18, b"\x00\x00"), (0x1A, b"\x00\x01"), (9, b"\x00\x15")])))
        _, upstream, _ = self.upstreams[-1]
        upstream.dataReceived(flap(1, 100, codec.FLAP_VERSION) + flap(4, 101, encode_tlvs(
            [(1, b"bob"), (5, b"127.0.0.1:6001"), (6, b"A" * 32)])))
        bob, bob_client, bob_upstream, _ = self.sign_on(b"A" * 32, ("127.0.0.1", 6001))
        bob_upstream.dataReceived(im_in(b"carol", "\u00e9t\u00e9".encode("utf-8")))
        self.assertEqual(text_tlv(self.take(bob_client)), (0, "<HTML><BODY>\u00e9t\u00e9</BODY></HTML>".encode()))


class FailOpenTests(Base):
    options = {"fail_closed": False}

    def test_unknown_user_passes_and_what_can_be_is_archived(self):
        leg, client, upstream, up = self.stranger()
        leg.dataReceived(im_out(b"bob", b"who am i"))
        self.assertEqual(text_tlv(self.take(up)), (0, b"<HTML><BODY>who am i</BODY></HTML>"))
        ((event, status),) = [(e, s) for e, _, s in self.core.archive.rows.values()]
        self.assertEqual((event.sender, event.text, status), (UNKNOWN, "who am i", "delivered"))

    def test_what_it_cannot_read_passes_untouched(self):
        leg, client, upstream, up = self.bos()
        odd = flap(2, 3, snac(4, 6, b"short"))
        leg.dataReceived(odd)
        self.assertEqual(self.take(up), odd)
        garbage = b"\x00\x01garbage that is not FLAP" + flap(2, 4, b"")
        leg.dataReceived(garbage)
        self.assertEqual(self.take(up), garbage)
        upstream.dataReceived(b"\xffupstream junk")
        self.assertEqual(self.take(client), b"\xffupstream junk")
        self.assertFalse(client.disconnecting)
        self.assertEqual(self.refused(), [])

    def test_policy_still_stops_what_it_decides(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(im_out(b"mallory", b"psst", request_id=42))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 42, u16(adapter.ERR_REQUEST_DENIED)))


FILE_RULES = """
[[policy.rule]]
name = "no-files-to-mallory"
action = "deny"
to = ["aim:mallory"]
kinds = ["file"]

[[policy.rule]]
name = "no-chat-with-mallory"
action = "deny"
to = ["aim:mallory"]
kinds = ["chat"]
"""


class ChannelTwoTests(Base):
    """Rendezvous through the proxy: file and direct-IM offers are file events, chat invitations chat events."""

    rules = FILE_RULES

    def test_file_offer_out_is_decided_archived_and_re_rendered(self):
        leg, client, upstream, up = self.bos()
        self.hooks.suffix = None
        tlvs = file_tlvs(text=b"<HTML>the <B>plans</B></HTML>", extra=[(4, b"\x01\x02\x03\x04"), (6, b"http://evil")])
        leg.dataReceived(flap(2, 3, snac(4, 6, rendezvous_body(b"bob", tlvs=tlvs), request_id=21)))
        name, rdv, outer = sent_rendezvous(self.take(up))
        self.assertEqual((name, rdv.kind, rdv.cookie, rdv.capability, outer), (b"bob", 0, COOKIE, codec.CAP_SEND_FILE,
                                                                               [(3, b"")]))
        self.assertEqual(rdv.tlvs, PARAMS + [(0x0C, b"the plans"), (0x0D, b"us-ascii"),
                                             (0x2711, codec.encode_file_info(codec.FileInfo(1, 1, 1200, b"plans.txt")))])
        (event,) = self.core.archive.events("file")
        self.assertEqual((str(event.sender), str(event.recipient), event.name, event.size, event.text),
                         ("aim:alice", "aim:bob", "plans.txt", 1200, "the plans"))
        self.assertEqual(self.core.archive.status(event.id), "delivered")

    def test_denied_file_offer_out_is_an_icbm_error(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(4, 6, rendezvous_body(b"mallory", tlvs=file_tlvs()), request_id=22)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 22, u16(adapter.ERR_REQUEST_DENIED)))
        ((event, _, rule),) = self.refused()
        self.assertEqual((event.kind, event.name, rule), ("file", "plans.txt", "no-files-to-mallory"))

    def test_file_offer_in_and_what_follows_it(self):
        leg, client, upstream, up = self.bos()
        tlvs = PARAMS + [(4, b"\x0a\x00\x00\x07"), (0x2711, codec.encode_file_info(codec.FileInfo(1, 1, 5, b"a.txt")))]
        upstream.dataReceived(rdv_in(b"carol", codec.encode_rendezvous(0, COOKIE, codec.CAP_SEND_FILE, tlvs)))
        name, rdv, _ = sent_rendezvous(self.take(client))
        self.assertEqual((name, rdv.tlvs), (b"carol", tlvs))  # 0x0004 is the upstream server's to add: kept
        (event,) = self.core.archive.events("file")
        self.assertEqual((str(event.sender), str(event.recipient), event.name), ("aim:carol", "aim:alice", "a.txt"))
        # the client accepts: an answer to an offer the proxy let through
        accept = flap(2, 3, snac(4, 6, rendezvous_body(b"carol", kind=codec.RDV_ACCEPT, ack=False)))
        leg.dataReceived(accept)
        self.assertEqual(self.take(up), accept)
        # an answer to an offer the proxy never saw is withheld
        leg.dataReceived(flap(2, 4, snac(4, 6, rendezvous_body(b"carol", kind=codec.RDV_ACCEPT, cookie=b"XXXXXXXX",
                                                              ack=False), request_id=23)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.refused()[-1][2], "unattributed")

    def test_direct_im_offer(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(4, 6, rendezvous_body(b"bob", capability=codec.CAP_DIRECT_IM, tlvs=PARAMS))))
        _, rdv, _ = sent_rendezvous(self.take(up))
        self.assertEqual((rdv.capability, rdv.tlvs), (codec.CAP_DIRECT_IM, PARAMS))
        (event,) = self.core.archive.events("file")
        self.assertEqual((event.name, event.text), ("", "direct connection"))

    def test_chat_invitation_is_logged_and_decided(self):
        leg, client, upstream, up = self.bos()
        room = codec.encode_room_info(4, b"!aol://2719:10-4-lobby", 0)
        tlvs = [(0x0A, u16(1)), (0x0F, b""), (0x0C, b"come <B>in</B>"), (0x2711, room)]
        leg.dataReceived(flap(2, 3, snac(4, 6, rendezvous_body(b"bob", capability=codec.CAP_CHAT, tlvs=tlvs))))
        _, rdv, _ = sent_rendezvous(self.take(up))
        self.assertEqual(rdv.tlvs, [(0x0A, u16(1)), (0x0F, b""), (0x2711, room), (0x0C, b"come in"),
                                    (0x0D, b"us-ascii")])
        (event,) = self.core.archive.events("chat")
        self.assertEqual((str(event.recipient), event.room, event.action, event.text),
                         ("aim:bob", "lobby", "invite", "come in"))
        leg.dataReceived(flap(2, 4, snac(4, 6, rendezvous_body(b"mallory", capability=codec.CAP_CHAT, tlvs=tlvs),
                                         request_id=24)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 24, u16(adapter.ERR_REQUEST_DENIED)))

    def test_other_rendezvous_are_withheld_and_archived(self):
        leg, client, upstream, up = self.bos()
        icon = bytes.fromhex("094613464c7f11d18222444553540000")
        leg.dataReceived(flap(2, 3, snac(4, 6, rendezvous_body(b"bob", capability=icon, tlvs=[(0x2711, b"x")]),
                                         request_id=25)))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (4, 1, 25, u16(adapter.ERR_NOT_SUPPORTED)))
        ((event, _, rule),) = self.refused()
        self.assertEqual((event.kind, event.text, rule), ("file", "buddy icon", "rendezvous-unsupported"))


class ChatRoomTests(Base):
    """Messages in a chat room the client was redirected to through the proxy are logged, and decided."""

    rules = FILE_RULES

    def join(self):
        leg, client, upstream, up = self.bos()
        room = codec.encode_room_info(4, b"!aol://2719:10-4-lobby", 0)
        leg.dataReceived(flap(2, 5, snac(1, 4, u16(0x0E) + encode_tlvs([(1, room)]), request_id=0x31)))
        self.take(up)
        tlvs = [(0x0D, u16(0x0E)), (5, b"127.0.0.1:6020"), (6, b"chat-cookie")]
        upstream.dataReceived(flap(2, 501, snac(1, 5, encode_tlvs(tlvs), request_id=0x31)))
        self.take(client)
        return self.sign_on(b"chat-cookie", ("127.0.0.1", 6020))

    def chat_out(self, text, request_id=0x41):
        inner = encode_tlvs([(1, text), (2, b"us-ascii"), (3, b"en")])
        return flap(2, 2, snac(0x0E, 5, b"CHATCOOK" + u16(3) + encode_tlvs([(1, b""), (6, b""), (5, inner)]),
                               request_id))

    def test_messages_both_ways_are_archived_and_re_rendered(self):
        leg, client, upstream, up = self.join()
        self.assertEqual(leg.room, "lobby")
        leg.dataReceived(self.chat_out(b"<HTML>hello <script>x()</script>room</HTML>"))
        got = codec.parse_snac(codec.parse_flaps(self.take(up))[0][0].payload)
        self.assertEqual(got.body[:10], b"CHATCOOK" + u16(3))
        tlvs = codec.parse_tlvs(got.body[10:])
        inner = codec.parse_tlvs(codec.first_tlv(tlvs, 5))
        self.assertEqual(inner, [(1, b"<HTML><BODY>hello room</BODY></HTML>"), (2, b"us-ascii"), (3, b"en")])
        info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
        incoming = encode_tlvs([(3, info), (1, b""), (5, encode_tlvs([(1, b"hi all"), (2, b"us-ascii")]))])
        upstream.dataReceived(flap(2, 502, snac(0x0E, 6, b"CHATIN00" + u16(3) + incoming, 0x80000003)))
        self.assertIn(b"hi all", self.take(client))
        rows = [(str(e.sender), str(e.recipient), e.room, e.action, e.text, self.core.archive.status(e.id))
                for e in self.core.archive.events("chat")]
        self.assertEqual(rows, [("aim:alice", "aim:lobby@chat.oscar.invalid", "lobby", "message", "hello room",
                                 "delivered"),
                                ("aim:carol", "aim:alice", "lobby", "message", "hi all", "delivered")])

    def test_a_chat_message_policy_refuses_is_withheld(self):
        leg, client, upstream, up = self.join()
        self.hooks.verdicts.append(Verdict.deny("no", rule="test"))
        leg.dataReceived(self.chat_out(b"secret", request_id=0x42))
        self.assertEqual(self.take(up), b"")
        self.assertEqual(self.error_to_client(client), (0x0E, 1, 0x42, u16(adapter.ERR_REQUEST_DENIED)))


HIDE_BOB = """
[[policy.rule]]
name = "hide-bob-from-alice"
action = "deny"
from = ["aim:bob"]
to = ["aim:alice"]
kinds = ["presence", "info"]
"""


def arrival(name, user_class=0x0010, seq=501, subtype=0x0B):
    info = codec.encode_user_info(name, [(1, u16(user_class)), (3, b"\x00\x00\x00\x01")] if subtype == 0x0B else [])
    return flap(2, seq, snac(3, subtype, info, 0x80000010))


class DisclosureTests(Base):
    """What the upstream tells a proxied client about others (arrivals, departures, profiles) crosses the path."""

    rules = HIDE_BOB

    def test_arrival_and_departure_hidden_by_a_rule(self):
        leg, client, upstream, up = self.bos()
        upstream.dataReceived(arrival(b"bob") + arrival(b"carol", 0x0030, seq=502))
        got = [codec.parse_snac(f.payload) for f in codec.parse_flaps(self.take(client))[0]]
        self.assertEqual([(s.subtype, s.body[:6]) for s in got], [(0x0B, b"\x05carol")])  # bob's withheld
        upstream.dataReceived(arrival(b"bob", subtype=0x0C, seq=503) + arrival(b"carol", subtype=0x0C, seq=504))
        got = [codec.parse_snac(f.payload) for f in codec.parse_flaps(self.take(client))[0]]
        self.assertEqual([(s.subtype, s.body[:6]) for s in got], [(0x0C, b"\x05carol")])
        rows = [(str(e.sender), e.status.value, self.core.archive.status(e.id))
                for e in self.core.archive.events("presence")]
        self.assertEqual(rows, [("aim:bob", "available", "rejected"), ("aim:carol", "away", "delivered"),
                                ("aim:bob", "offline", "rejected"), ("aim:carol", "offline", "delivered")])

    def test_info_answer_hidden_by_a_rule_and_rendered_when_not(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(2, 5, u16(1) + b"\x03bob", request_id=0x51)))
        self.assertEqual(len(self.take(up)), 6 + 10 + 6)
        block = codec.encode_user_info(b"bob", [(1, u16(0x10))])
        answer = block + encode_tlvs([(1, b"text/aolrtf"), (2, b"<HTML>I am Bob</HTML>")])
        upstream.dataReceived(flap(2, 501, snac(2, 6, answer, 0x51)))
        self.assertEqual(self.error_to_client(client), (2, 1, 0x51, u16(adapter.ERR_NOT_LOGGED_IN)))
        leg.dataReceived(flap(2, 4, snac(2, 0x15, codec.u32(3) + b"\x05carol", request_id=0x52)))
        self.take(up)
        block = codec.encode_user_info(b"carol", [(1, u16(0x30))])
        answer = block + encode_tlvs([(1, b"text/aolrtf"), (2, b"<B>me</B><script>x()</script>"),
                                      (3, b"text/aolrtf"), (4, b"<HTML>out</HTML>")])
        upstream.dataReceived(flap(2, 502, snac(2, 6, answer, 0x52)))
        (frame,) = codec.parse_flaps(self.take(client))[0]
        got = codec.parse_snac(frame.payload)
        r = codec.Reader(got.body)
        self.assertEqual(codec.parse_user_info(r), (b"carol", 0, [(1, u16(0x30))]))
        self.assertEqual(r.tlvs(), [(1, adapter.RICH_MIME), (2, b"<HTML><BODY><b>me</b></BODY></HTML>"),
                                    (3, adapter.RICH_MIME), (4, b"<HTML><BODY>out</BODY></HTML>")])
        rows = [(str(e.sender), e.text, e.note, self.core.archive.status(e.id)) for e in self.core.archive.events("info")]
        self.assertEqual(rows, [("aim:carol", "me", "out", "delivered")])

    def test_unattributed_connection_sees_nobody(self):
        leg, client, upstream, up = self.stranger()
        upstream.dataReceived(arrival(b"carol"))
        self.assertEqual(self.take(client), b"")
        self.assertEqual(self.refused()[-1][2], "unattributed")


class AnyImBytesTests(Base):
    """Whatever an IM's body holds, the proxy forwards it only as a delivered event, or withholds and archives it."""

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60), st.sampled_from([1, 2, 3, 4]), st.booleans())
    def test_nothing_passes_unrecorded(self, tail, channel, to_client):
        self.core.archive.rows.clear()
        leg, client, upstream, up = getattr(self, "_legs", None) or self.bos()
        self._legs = (leg, client, upstream, up)
        if to_client:
            info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
            frame = flap(2, 600, snac(4, 7, b"ABCDEFGH" + u16(channel) + info + tail, 0x80000001))
            upstream.dataReceived(frame)
            out = codec.parse_flaps(self.take(client))[0]
        else:
            frame = flap(2, 9, snac(4, 6, b"12345678" + u16(channel) + b"\x03bob" + tail, 9))
            leg.dataReceived(frame)
            out = codec.parse_flaps(self.take(up))[0]
        relayed = [f for f in out if f.channel == 2 and intercept.snac_key(f.payload) in (IM_IN, IM_OUT)]
        statuses = sorted(s for _, _, s in self.core.archive.rows.values())
        self.assertIn(statuses, (["delivered"], ["rejected"]))
        self.assertEqual(len(relayed), 1 if statuses == ["delivered"] else 0)
        self.assertFalse(client.disconnecting)
