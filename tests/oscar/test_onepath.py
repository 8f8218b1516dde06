"""The OSCAR connector on the one path: disclosures, rich content, file offers, chat and logins, wire-exact."""

import attrs
from twisted.internet import task
from twisted.trial import unittest

from gateway.hookspecs import hookimpl
from gateway.model import FileOffer, Message, Profile, Verdict
from gateway.plugins import Plugins
from gateway.testing import MemoryConnector, MemoryDirectory, make_core

from gateway_oscar import adapter, codec
from gateway_oscar.codec import encode_tlvs, first_tlv, u16
from gateway_oscar.connector import OscarConnector

from tests.oscar.wire import im_body, online, received_ims

def hide(kinds):
    return f"""
[[policy.rule]]
name = "hide-bob-from-alice"
action = "deny"
from = ["user:bob"]
to = ["user:alice"]
kinds = {kinds!r}
""".replace("'", '"')


class Hooks:
    """A DLP plugin that reads only ``text``, and a transform that marks what it saw."""

    def __init__(self):
        self.marker = None

    @hookimpl
    def gateway_policy_check(self, event):
        seen = " ".join(str(getattr(event, f, "") or "") for f in ("text", "note", "name"))
        if "project-x" in seen:
            return Verdict.deny("mentions project-x", rule="dlp")
        return None

    @hookimpl
    def gateway_transform(self, event):
        if self.marker and isinstance(event, (Message, Profile, FileOffer)):
            return attrs.evolve(event, text=event.text + self.marker)
        return None


class Base(unittest.TestCase):
    config = ""
    options = {"listen": [], "bos_address": "127.0.0.1:5190"}

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.directory = MemoryDirectory()
        self.alice = self.directory.add("alice", "aim:alice", "icq:100001", "mem:alice")
        self.bob = self.directory.add("bob", "aim:bob", "icq:100002", "mem:bob")
        self.carol = self.directory.add("carol", "mem:carol")
        self.dave = self.directory.add("dave", "aim:dave")
        self.hooks = Hooks()
        plugins = Plugins()
        plugins.register(self.hooks, "test-hooks")
        self.core = make_core(self.config, directory=self.directory, clock=self.clock, plugins=plugins)
        self.core.start_plugins()
        self.connector = OscarConnector(self.core.api, dict(self.options))
        self.memory = MemoryConnector(self.core.api, networks=("mem",))
        self.core.connectors["oscar"] = self.connector
        self.core.connectors["memory"] = self.memory

    def rows(self, kind):
        return [(e, self.core.archive.status(e.id)) for e in self.core.archive.events(kind)]


def info_reply(snac):
    """``(screen name, user TLVs, answer TLVs)`` of a 02/06."""
    r = codec.Reader(snac.body)
    name, _, user_tlvs = codec.parse_user_info(r)
    return name, user_tlvs, r.tlvs()


class InfoQueryTests(Base):
    """02/05 and 02/15: what a profile or away-message query discloses is decided and archived."""

    config = hide(["info"])

    def test_denied_info_query_is_answered_as_for_someone_offline(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        bob.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"), (2, b"I am Bob"), (3, b"text/aolrtf"), (4, b"at lunch")]))
        alice.snacs()
        for body in (u16(1) + b"\x03bob", u16(3) + b"\x03bob", codec.u32(3) + b"\x03bob"):
            request = alice.snac(2, 5 if len(body) == 6 else 0x15, body)
            (reply,) = alice.snacs()
            # exactly what a query for someone offline gets
            self.assertEqual((reply.family, reply.subtype, reply.request_id, reply.body), (2, 1, request, u16(4)))
        rows = self.rows("info")
        self.assertEqual(len(rows), 3)
        for event, status in rows:
            self.assertEqual((str(event.sender), str(event.recipient), status), ("aim:bob", "aim:alice", "rejected"))
        self.assertFalse(alice.closed)

    def test_the_other_way_is_not_hidden(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        alice.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"), (2, b"I am Alice")]))
        bob.snacs()
        request = bob.snac(2, 5, u16(1) + b"\x05alice")
        (reply,) = bob.snacs()
        self.assertEqual((reply.subtype, reply.request_id), (6, request))
        name, _, tlvs = info_reply(reply)
        self.assertEqual(name, b"alice")
        self.assertIn(b"I am Alice", first_tlv(tlvs, 2))
        ((event, status),) = self.rows("info")
        self.assertEqual((str(event.sender), str(event.recipient), event.text, status),
                         ("aim:alice", "aim:bob", "I am Alice", "delivered"))


class PresenceHidesInfoTests(Base):
    """The answer shows whether someone is online and away: a rule that hides presence hides it too."""

    config = hide(["presence"])

    def test_presence_rule_hides_the_info_answer(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        bob.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"), (2, b"I am Bob")]))
        self.assertEqual([s for s in alice.snacs() if s.family == 3], [])  # no arrival either
        request = alice.snac(2, 5, u16(1) + b"\x03bob")
        (reply,) = alice.snacs()
        self.assertEqual((reply.subtype, reply.request_id, reply.body), (1, request, u16(4)))
        answers = [(str(e.sender), str(e.recipient), s) for e, s in self.rows("presence") if e.recipient is not None]
        self.assertIn(("aim:bob", "aim:alice", "rejected"), answers)
        self.assertEqual(self.rows("info"), [])  # nothing more was disclosed


class InfoRenderingTests(Base):
    def test_answer_is_rendered_from_the_decided_event(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        profile = b'<HTML><BODY><B>I am Bob</B><script>steal()</script><img src="http://t.example/p.gif"></BODY></HTML>'
        bob.snac(2, 4, encode_tlvs([(1, b'text/aolrtf; charset="us-ascii"'), (2, profile),
                                   (3, b"text/aolrtf"), (4, b"<HTML>gone <I>fishing</I></HTML>")]))
        alice.snacs()
        self.hooks.marker = " [checked]"
        alice.snac(2, 0x15, codec.u32(3) + b"\x03bob")
        (reply,) = alice.snacs()
        name, user_tlvs, tlvs = info_reply(reply)
        self.assertEqual(first_tlv(user_tlvs, 1), u16(adapter.CLASS_AIM | adapter.CLASS_AWAY))
        self.assertEqual(first_tlv(tlvs, 1), b'text/aolrtf; charset="utf-8"')
        shown = first_tlv(tlvs, 2)
        self.assertNotIn(b"script", shown.lower())
        self.assertNotIn(b"steal", shown)
        self.assertNotIn(b"t.example", shown)
        self.assertIn(b"I am Bob [checked]", shown)  # a transform reaches what the asker is shown
        self.assertEqual(first_tlv(tlvs, 4), b"<HTML><BODY>gone fishing</BODY></HTML>")
        ((event, status),) = self.rows("info")
        self.assertEqual((event.text, event.note, status), ("I am Bob [checked]", "gone fishing", "delivered"))

    def test_only_what_was_asked_is_disclosed(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        bob.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"), (2, b"I am Bob"), (3, b"text/aolrtf"), (4, b"away")]))
        alice.snacs()
        alice.snac(2, 5, u16(3) + b"\x03bob")  # the away message only
        (reply,) = alice.snacs()
        _, _, tlvs = info_reply(reply)
        self.assertIsNone(first_tlv(tlvs, 2))
        self.assertEqual(first_tlv(tlvs, 4), b"<HTML><BODY>away</BODY></HTML>")
        ((event, _),) = self.rows("info")
        self.assertEqual((event.text, event.html, event.note), ("", None, "away"))

    def test_forbidden_word_in_a_profile_is_not_disclosed(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        bob.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"),
                                   (2, b'<HTML>see <A HREF="http://x.example/project-x">my page</A></HTML>')]))
        alice.snacs()
        alice.snac(2, 5, u16(1) + b"\x03bob")
        (reply,) = alice.snacs()
        self.assertEqual((reply.subtype, reply.body), (1, u16(4)))
        ((event, status),) = self.rows("info")
        self.assertEqual((event.text, status), ("see my page (http://x.example/project-x)", "rejected"))

    def test_someone_on_another_network(self):
        alice = online(self.connector, "alice")
        self.successResultOf(self.memory.login(self.carol, self.carol.handles[0]))
        self.successResultOf(self.directory.alias_for(self.carol.handles[0], "aim"))  # as alice was shown her
        alice.snacs()
        alice.snac(2, 5, u16(1) + b"\x09mem.carol")
        (reply,) = alice.snacs()
        self.assertEqual(reply.subtype, 6)
        ((event, status),) = self.rows("info")
        self.assertEqual((str(event.sender), str(event.recipient), status), ("mem:carol", "aim:alice", "delivered"))


def html_im(to, markup, ack=False):
    return im_body(to, codec.TextPart(0, 0, markup), ack=ack)


class RichContentTests(Base):
    """What is checked is what is delivered: the recipient's HTML is rendered from the normalized event."""

    def setUp(self):
        super().setUp()
        self.alice_wire = online(self.connector, "alice")
        self.alice_wire.snacs()

    def test_forbidden_word_only_in_the_html_is_denied_and_archived(self):
        bob = online(self.connector, "bob")
        bob.snacs()
        request = self.alice_wire.snac(4, 6, html_im(
            b"bob", b'<HTML><BODY>see <A HREF="http://x.example/project-x">this</A><!-- project-x --></BODY></HTML>'))
        (error,) = self.alice_wire.snacs()
        self.assertEqual((error.family, error.subtype, error.request_id, error.body),
                         (4, 1, request, u16(adapter.ERR_REQUEST_DENIED)))
        self.assertEqual(received_ims(bob.snacs()), [])
        ((event, status),) = self.rows("im")
        self.assertEqual((event.text, status), ("see this (http://x.example/project-x)", "rejected"))

    def test_recipient_gets_the_sanitized_html_and_the_transform(self):
        bob = online(self.connector, "bob")
        bob.snacs()
        self.hooks.marker = " [logged]"
        self.alice_wire.snac(4, 6, html_im(
            b"bob", b'<HTML><BODY><B>hi</B><script>steal()</script><IMG SRC="http://t.example/p.gif"></BODY></HTML>'))
        ((_, data, charset, _),) = received_ims(bob.snacs())
        self.assertEqual((charset, data), (0, b"<HTML><BODY>hi [logged]</BODY></HTML>"))
        ((event, status),) = self.rows("im")
        self.assertEqual((event.text, status), ("hi [logged]", "delivered"))

    def test_sanitized_html_is_kept(self):
        bob = online(self.connector, "bob")
        bob.snacs()
        self.alice_wire.snac(4, 6, html_im(b"bob", b'<HTML><BODY><B>bold</B> <FONT COLOR="#ff0000" ONCLICK="x()">red'
                                                 b'</FONT><script>steal()</script></BODY></HTML>'))
        ((_, data, _, _),) = received_ims(bob.snacs())
        self.assertEqual(data, b'<b>bold</b> <font color="#ff0000">red</font>')

    def test_offline_message_is_rendered_from_the_event_too(self):
        self.alice_wire.snac(4, 6, html_im(b"bob", b'<HTML><I>later</I><script>steal()</script></HTML>', ack=True))
        self.assertEqual([s.subtype for s in self.alice_wire.snacs()], [0x0C])
        self.clock.advance(60)
        bob = online(self.connector, "bob")
        ((_, data, _, tlvs),) = received_ims(bob.snacs())
        self.assertEqual(data, b"<i>later</i>")
        self.assertEqual(first_tlv(tlvs, 6), b"")

    def test_html_from_another_network(self):
        self.successResultOf(self.core.bus.submit(Message(
            "mem:carol", "aim:alice", "plain body", html='<p onclick="x()">rich</p><script>steal()</script>')))
        ((sender, data, _, _),) = received_ims(self.alice_wire.snacs())
        self.assertEqual((sender, data), (b"mem.carol", b"<p>rich</p>"))


COOKIE = bytes.fromhex("c0ffee0012345678")
PARAMS = [(2, bytes.fromhex("c0000201")), (3, bytes.fromhex("c0000201")), (5, u16(4433)), (0x0A, u16(1)), (0x0F, b"")]
VERIFIED = (4, bytes.fromhex("c000020a"))  # the sender's address as the server saw it (Wire's 192.0.2.10)


def rendezvous_body(to, kind=codec.RDV_PROPOSE, capability=codec.CAP_SEND_FILE, tlvs=(), cookie=COOKIE, ack=True):
    """A client's channel-2 04/06 body, laid out as libpurple sends one."""
    block = codec.encode_rendezvous(kind, cookie, capability, list(tlvs))
    return cookie + u16(2) + bytes((len(to),)) + to + encode_tlvs([(3, b"")] if ack else []) + codec.encode_tlv(5, block)


def file_tlvs(name=b"plans.txt", size=1200, text=None, extra=()):
    tlvs = list(PARAMS) + list(extra)
    if text is not None:
        tlvs.append((0x0C, text))
    return tlvs + [(0x2711, codec.encode_file_info(codec.FileInfo(1, 1, size, name)))]


def rendezvous_received(snacs):
    """``(sender, Rendezvous, ICBM cookie)`` of every channel-2 04/07."""
    out = []
    for s in snacs:
        if (s.family, s.subtype) == (4, 7):
            icbm = codec.parse_icbm_receive(s.body)
            if icbm.channel == 2:
                out.append((icbm.screen_name, codec.parse_rendezvous(icbm.tlv(5)), icbm.cookie))
    return out


class FileOfferTests(Base):
    """ICBM channel 2: file and direct-connection offers are file events; what follows is relayed by cookie."""

    config = """
[[policy.rule]]
name = "no-files-from-dave"
action = "deny"
from = ["user:dave"]
kinds = ["file"]
reason = "dave may not send files"
"""

    def setUp(self):
        super().setUp()
        self.a = online(self.connector, "alice")
        self.b = online(self.connector, "bob")
        self.a.snacs(), self.b.snacs()

    def test_offer_is_decided_archived_and_relayed_re_rendered(self):
        self.hooks.marker = " [logged]"
        request = self.a.snac(4, 6, rendezvous_body(b"Bob", tlvs=file_tlvs(
            text=b"the plans", extra=[(6, b"http://download.example/evil.exe"), (0x0E, b"en")])))
        (ack,) = self.a.snacs()
        self.assertEqual((ack.subtype, ack.request_id, ack.body), (0x0C, request, COOKIE + u16(2) + b"\x03Bob"))
        ((sender, rdv, cookie),) = rendezvous_received(self.b.snacs())
        self.assertEqual((sender, cookie, rdv.kind, rdv.cookie, rdv.capability),
                         (b"alice", COOKIE, codec.RDV_PROPOSE, COOKIE, codec.CAP_SEND_FILE))
        # the transfer parameters as sent, the server's view of the sender's address, then what policy saw
        self.assertEqual(rdv.tlvs, PARAMS + [VERIFIED, (0x0C, b"the plans [logged]"), (0x0D, b"us-ascii"),
                                             (0x2711, codec.encode_file_info(codec.FileInfo(1, 1, 1200, b"plans.txt")))])
        ((event, status),) = self.rows("file")
        self.assertEqual((str(event.sender), str(event.recipient), event.name, event.size, event.text, status),
                         ("aim:alice", "aim:bob", "plans.txt", 1200, "the plans [logged]", "delivered"))
        self.assertEqual(event.transfer, "oscar:" + COOKIE.hex())

    def test_denied_offer_is_an_icbm_error_and_reaches_nobody(self):
        dave = online(self.connector, "dave")
        dave.snacs()
        request = dave.snac(4, 6, rendezvous_body(b"bob", tlvs=file_tlvs()))
        (error,) = dave.snacs()
        self.assertEqual((error.family, error.subtype, error.request_id, error.body),
                         (4, 1, request, u16(adapter.ERR_REQUEST_DENIED)))
        self.assertEqual(rendezvous_received(self.b.snacs()), [])
        ((event, status),) = self.rows("file")
        self.assertEqual((event.name, status), ("plans.txt", "rejected"))
        # what would follow it is not relayed either
        self.b.snac(4, 6, rendezvous_body(b"dave", kind=codec.RDV_ACCEPT, ack=False))
        self.assertEqual(rendezvous_received(dave.snacs()), [])

    def test_forbidden_word_in_the_file_name(self):
        request = self.a.snac(4, 6, rendezvous_body(b"bob", tlvs=file_tlvs(name=b"project-x.pdf")))
        (error,) = self.a.snacs()
        self.assertEqual((error.subtype, error.request_id, error.body), (1, request, u16(adapter.ERR_REQUEST_DENIED)))
        self.assertEqual(rendezvous_received(self.b.snacs()), [])

    def test_accept_and_cancel_are_relayed_between_the_two_only(self):
        self.a.snac(4, 6, rendezvous_body(b"bob", tlvs=file_tlvs()))
        self.a.snacs(), self.b.snacs()
        self.b.snac(4, 6, rendezvous_body(b"alice", kind=codec.RDV_ACCEPT, ack=False))
        ((sender, rdv, _),) = rendezvous_received(self.a.snacs())
        self.assertEqual((sender, rdv.kind, rdv.cookie, rdv.tlvs), (b"bob", codec.RDV_ACCEPT, COOKIE, []))
        # a stage-2 proposal from the recipient (through a proxy) carries the decided file, not its own
        self.b.snac(4, 6, rendezvous_body(b"alice", ack=False, tlvs=[(2, b"\x7f\x00\x00\x01"), (5, u16(5190)),
                                                                     (0x0A, u16(2)), (0x10, b""),
                                                                     (0x2711, b"\x00\x01\x00\x01\x00\x00\x00\x01x\x00")]))
        ((_, rdv, _),) = rendezvous_received(self.a.snacs())
        self.assertEqual(rdv.tlvs, [(2, b"\x7f\x00\x00\x01"), (5, u16(5190)), (0x0A, u16(2)), (0x10, b""),
                                    (0x2711, codec.encode_file_info(codec.FileInfo(1, 1, 1200, b"plans.txt")))])
        # someone else cannot take part with the same cookie
        dave = online(self.connector, "dave")
        dave.snac(4, 6, rendezvous_body(b"alice", kind=codec.RDV_ACCEPT, ack=False))
        self.assertEqual(rendezvous_received(self.a.snacs()), [])
        self.a.snac(4, 6, rendezvous_body(b"bob", kind=codec.RDV_CANCEL, tlvs=[(0x0B, u16(1))], ack=False))
        ((sender, rdv, _),) = rendezvous_received(self.b.snacs())
        self.assertEqual((sender, rdv.kind, rdv.tlvs), (b"alice", codec.RDV_CANCEL, [(0x0B, u16(1))]))
        self.assertEqual(len(self.rows("file")), 1)  # one offer, one decision

    def test_follow_up_for_an_unknown_cookie_goes_nowhere(self):
        self.b.snac(4, 6, rendezvous_body(b"alice", kind=codec.RDV_ACCEPT, ack=False))
        self.assertEqual(rendezvous_received(self.a.snacs()), [])
        self.assertEqual(self.b.snacs(), [])
        self.assertFalse(self.b.closed)

    def test_direct_im_offer(self):
        self.a.snac(4, 6, rendezvous_body(b"bob", capability=codec.CAP_DIRECT_IM, tlvs=PARAMS))
        ((sender, rdv, _),) = rendezvous_received(self.b.snacs())
        self.assertEqual((rdv.capability, rdv.tlvs), (codec.CAP_DIRECT_IM, PARAMS + [VERIFIED]))
        ((event, status),) = self.rows("file")
        self.assertEqual((event.name, event.size, event.text, status), ("", 0, "direct connection", "delivered"))

    def test_offer_to_another_network_is_a_file_event_there(self):
        self.successResultOf(self.memory.login(self.carol, self.carol.handles[0]))
        self.successResultOf(self.directory.alias_for(self.carol.handles[0], "aim"))
        session = self.memory.sessions[0]
        self.a.snac(4, 6, rendezvous_body(b"mem.carol", tlvs=file_tlvs(text=b"for you")))
        (got,) = self.memory.received(session, "file")
        self.assertEqual((str(got.sender), got.name, got.size, got.text), ("mem:alice", "plans.txt", 1200, "for you"))

    def test_offer_from_another_network_is_a_notice(self):
        self.successResultOf(self.core.bus.submit(self.core.api.file_offer(
            "mem:carol", "aim:bob", "a.pdf", 3, text="see", url="http://files.example/a.pdf", transfer="x")))
        self.assertEqual(rendezvous_received(self.b.snacs()), [])
        self.successResultOf(self.core.bus.submit(self.core.api.file_offer("mem:carol", "aim:alice", "b.pdf", 4)))
        ((sender, data, _, _),) = received_ims(self.a.snacs())
        self.assertEqual((sender, data), (b"mem.carol", b"<HTML><BODY>File offer: b.pdf (4 bytes)</BODY></HTML>"))

    def test_other_rendezvous_are_refused_and_archived(self):
        icon = bytes.fromhex("094613464c7f11d18222444553540000")
        request = self.a.snac(4, 6, rendezvous_body(b"bob", capability=icon, tlvs=[(0x2711, b"icon bytes")]))
        (error,) = self.a.snacs()
        self.assertEqual((error.subtype, error.request_id, error.body), (1, request, u16(adapter.ERR_NOT_SUPPORTED)))
        self.assertEqual(rendezvous_received(self.b.snacs()), [])
        ((event, status),) = self.rows("file")
        self.assertEqual((event.text, status), ("buddy icon", "rejected"))

    def test_malformed_rendezvous_is_a_bad_format_error(self):
        request = self.a.snac(4, 6, COOKIE + u16(2) + b"\x03bob" + codec.encode_tlv(5, b"short"))
        (error,) = self.a.snacs()
        self.assertEqual((error.subtype, error.request_id, error.body), (1, request, u16(adapter.ERR_BAD_FORMAT)))
        self.assertFalse(self.a.closed)


class ChatTests(Base):
    """Chat traffic on BOS: the services are redirects (rooms: test_chat.py); what BOS cannot carry is refused and archived."""

    def setUp(self):
        super().setUp()
        self.a = online(self.connector, "alice")
        self.b = online(self.connector, "bob")
        self.a.snacs(), self.b.snacs()

    def test_chat_invitation_from_outside_the_room_is_refused_and_archived(self):
        room = codec.encode_room_info(4, b"!aol://2719:10-4-lobby", 0)
        request = self.a.snac(4, 6, rendezvous_body(b"bob", capability=codec.CAP_CHAT,
                                                    tlvs=[(0x0A, u16(1)), (0x0C, b"join us"), (0x2711, room)]))
        (error,) = self.a.snacs()
        self.assertEqual((error.subtype, error.request_id, error.body),
                         (1, request, u16(adapter.icbm_error_for("not-member"))))
        self.assertEqual(rendezvous_received(self.b.snacs()), [])
        ((event, status),) = self.rows("chat")
        self.assertEqual((str(event.sender), str(event.recipient), event.room, event.action, event.text, status),
                         ("aim:alice", "aim:bob", "lobby", "invite", "join us", "rejected"))

    def test_chat_services_are_redirects_and_chat_on_bos_is_refused(self):
        # (Rooms themselves: tests/oscar/test_chat.py.)
        request = self.a.snac(1, 4, u16(0x0E) + encode_tlvs([(1, codec.encode_room_info(4, b"!aol://2719:10-4-lobby", 0))]))
        request2 = self.a.snac(1, 4, u16(0x0D))
        self.assertEqual([(s.family, s.subtype, s.request_id) for s in self.a.snacs()], [(1, 5, request), (1, 5, request2)])
        request3 = self.a.snac(0x0E, 5, b"\x00" * 8 + u16(3))
        (error,) = self.a.snacs()
        self.assertEqual((error.family, error.subtype, error.request_id, error.body), (0x0E, 1, request3, u16(8)))
        rows = [(e.room, e.action, s) for e, s in self.rows("chat")]
        self.assertEqual(rows, [("lobby", "join", "delivered"), ("", "message", "rejected")])
        self.assertFalse(self.a.closed)

    def test_chat_from_another_network_is_a_notice(self):
        from gateway.model import ChatEvent

        self.successResultOf(self.core.bus.submit(ChatEvent("mem:carol", "aim:alice", room="lobby", action="invite",
                                                            text="come in")))
        ((sender, data, _, _),) = received_ims(self.a.snacs())
        self.assertEqual((sender, data), (b"mem.carol", b"<HTML><BODY>Chat invitation to lobby: come in</BODY></HTML>"))

    def test_other_service_requests_are_not_chat(self):
        request = self.a.snac(1, 4, u16(0x10))  # buddy icons
        self.assertEqual([(s.subtype, s.request_id) for s in self.a.snacs()], [(1, request)])
        self.assertEqual(self.rows("chat"), [])


class AccessTests(Base):
    """Every login path through the gateway's throttle with the client's address; logins and failures archived."""

    def bucp(self, name=b"alice", password=b"secret", host="192.0.2.10"):
        import hashlib

        from tests.oscar.wire import Wire

        wire = Wire(self.connector, host=host)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION)
        wire.snac(0x17, 0x06, encode_tlvs([(1, name), (0x4B, b"")]), request_id=0)
        (key,) = wire.snacs()
        if key.subtype != 7:
            return codec.parse_tlvs(key.body)
        digest = codec.bucp_hash(key.body[2:], hashlib.md5(password).digest())
        wire.snac(0x17, 0x02, encode_tlvs([(1, name), (0x25, digest), (0x4C, b"")]), request_id=0)
        (reply,) = wire.snacs()
        return codec.parse_tlvs(reply.body)

    def access(self):
        return [(str(e.sender), e.action, e.source, e.text) for e in self.core.archive.events("access")]

    def test_bucp_failures_count_per_address_before_any_hash_check(self):
        for _ in range(5):
            self.assertEqual(first_tlv(self.bucp(password=b"nope", host="198.51.100.7"), 8), u16(adapter.LOGIN_BAD_PASSWORD))
        # from that address even the right password is not checked any more; the user is not locked out elsewhere
        self.assertEqual(first_tlv(self.bucp(host="198.51.100.7"), 8), u16(adapter.LOGIN_TOO_FAST))
        self.assertIsNotNone(first_tlv(self.bucp(host="192.0.2.44"), 6))
        records = self.access()
        self.assertEqual(records[0], ("aim:alice", "login-failed", "198.51.100.7", "wrong password"))
        self.assertIn(("aim:alice", "login-failed", "198.51.100.7", "too many failed logins"), records)

    def test_unknown_user_and_login_and_logout_are_archived_with_the_source(self):
        self.bucp(b"nobody", host="198.51.100.8")
        wire = online(self.connector, "bob")
        wire.protocol.connectionLost(None)
        records = self.access()
        self.assertEqual(records[0], ("aim:nobody", "login-failed", "198.51.100.8", "unknown user"))
        self.assertIn(("aim:bob", "login", "192.0.2.10", ""), records)
        self.assertEqual(records[-1][:2], ("aim:bob", "logout"))
