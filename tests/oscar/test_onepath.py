"""The OSCAR connector on the one path: disclosures, rich content, file offers, chat and logins, wire-exact."""

import attrs
from twisted.internet import task
from twisted.trial import unittest

from gateway.hookspecs import hookimpl
from gateway.model import Contact, Message, Profile, Verdict
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
        if self.marker and isinstance(event, (Message, Profile)):
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
