"""The XMPP codec: restricted parsing, limits, serialisation round-trips, XEP-0106 escaping."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from gateway.model import Message, Presence, PresenceStatus

from gateway_xmpp import adapter
from gateway_xmpp.codec import (
    Limits,
    StreamParser,
    StreamViolation,
    clean_text,
    element_to_bytes,
    escape_node,
    parse_one,
    unescape_node,
)

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")

SAMPLES = [
    b"<message to='bob@localhost' type='chat' id='a1'><body>hi &amp; &lt;there&gt;</body></message>",
    b"<presence><show>away</show><status>lunch \xc3\xa9\xe4\xb8\x96</status></presence>",
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    b"<message to='b@l'><body>x</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
    b"<body xmlns='http://www.w3.org/1999/xhtml'><p>x <b>bold</b></p></body></html></message>",
]


class Collector:
    def __init__(self, limits=Limits()):
        self.starts, self.stanzas, self.ends = [], [], 0
        self.parser = StreamParser(self.start, self.stanzas.append, self.end, limits)

    def start(self, name, attributes):
        self.starts.append((name, attributes))

    def end(self):
        self.ends += 1


def violation(data, limits=Limits(), header=HEADER):
    c = Collector(limits)
    try:
        c.parser.feed(header + data)
    except StreamViolation as e:
        return e.condition
    return None


class ParserTests(unittest.TestCase):
    def test_header_and_stanzas(self):
        c = Collector()
        c.parser.feed(HEADER + b"".join(SAMPLES) + b" \n</stream:stream>")
        (name, attributes), = c.starts
        self.assertEqual(name, ("http://etherx.jabber.org/streams", "stream"))
        self.assertEqual(attributes["to"], "localhost")
        self.assertEqual(attributes["version"], "1.0")
        self.assertEqual([e.name for e in c.stanzas], ["message", "presence", "iq", "message", "message"])
        self.assertEqual(str(c.stanzas[0].body), "hi & <there>")
        self.assertEqual(c.stanzas[0].uri, "jabber:client")
        self.assertEqual(c.ends, 1)

    def test_every_split(self):
        whole = HEADER + b"".join(SAMPLES)
        expected = [element_to_bytes(e) for e in (parse_one(s) for s in SAMPLES)]
        for offset in range(len(whole) + 1):
            c = Collector()
            c.parser.feed(whole[:offset])
            c.parser.feed(whole[offset:])
            self.assertEqual([element_to_bytes(e) for e in c.stanzas], expected, offset)

    def test_byte_at_a_time(self):
        c = Collector()
        for i in range(len(HEADER + SAMPLES[1])):
            c.parser.feed((HEADER + SAMPLES[1])[i:i + 1])
        self.assertEqual(str(c.stanzas[0].status), "lunch \u00e9\u4e16")

    def test_round_trip(self):
        for sample in SAMPLES:
            element = parse_one(sample)
            self.assertEqual(element_to_bytes(parse_one(element_to_bytes(element))), element_to_bytes(element))
        self.assertEqual(element_to_bytes(parse_one(SAMPLES[0])), SAMPLES[0])
        self.assertEqual(element_to_bytes(parse_one(SAMPLES[2])), SAMPLES[2])

    def test_restricted_xml(self):
        self.assertEqual(violation(b"", header=b"<!DOCTYPE s [<!ENTITY a 'b'>]>" + HEADER), "restricted-xml")
        self.assertEqual(violation(b"<!-- c -->"), "restricted-xml")
        self.assertEqual(violation(b"<?pi x?>"), "restricted-xml")
        self.assertEqual(violation(b"<message><body>&xxe;</body></message>"), "not-well-formed")
        laughs = (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
                  b"<!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>")
        self.assertEqual(violation(b"", header=laughs + HEADER), "restricted-xml")
        external = b"<?xml version='1.0'?><!DOCTYPE x SYSTEM 'file:///etc/passwd'>"
        self.assertEqual(violation(b"", header=external + HEADER), "restricted-xml")
        self.assertEqual(violation(b"<message><body>a</bod></message>"), "not-well-formed")
        self.assertEqual(violation(b"text at stream level"), "not-well-formed")
        self.assertEqual(violation(b"<x:message/>"), "not-well-formed")  # unbound prefix

    def test_limits(self):
        limits = Limits(stanza_size=200, depth=4, attributes=3, header_size=300)
        self.assertIsNone(violation(b"<message><body>" + b"a" * 150 + b"</body></message>", limits))
        self.assertEqual(violation(b"<message><body>" + b"a" * 250 + b"</body></message>", limits), "policy-violation")
        # An unfinished stanza that never ends is cut off at the limit too.
        self.assertEqual(violation(b"<message><body>" + b"a" * 250, limits), "policy-violation")
        self.assertIsNone(violation(b"<a><b><c><d/></c></b></a>", limits))
        self.assertEqual(violation(b"<a><b><c><d><e/></d></c></b></a>", limits), "policy-violation")
        self.assertIsNone(violation(b"<a x='1' y='2' z='3'/>", limits))
        self.assertEqual(violation(b"<a w='0' x='1' y='2' z='3'/>", limits), "policy-violation")
        self.assertEqual(violation(b"", limits, header=b"<stream:stream " + b" " * 400), "policy-violation")
        # Whitespace keepalives between stanzas are fine, within bounds.
        self.assertIsNone(violation(b" " * 150 + b"<a/>" + b" " * 150, limits))

    def test_closed_parser_ignores_the_rest(self):
        c = Collector()
        c.parser.on_stanza = lambda e: (c.stanzas.append(e), c.parser.close())
        c.parser.feed(HEADER + SAMPLES[0] + SAMPLES[1])
        self.assertEqual(len(c.stanzas), 1)
        c.parser.feed(b"garbage <<<")
        self.assertEqual(len(c.stanzas), 1)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_give_stanzas_or_a_clean_error(self, data):
        c = Collector(Limits(stanza_size=100, depth=5, attributes=4))
        try:
            c.parser.feed(HEADER + data)
        except StreamViolation as e:
            self.assertIn(e.condition, ("not-well-formed", "restricted-xml", "policy-violation"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(SAMPLES + [b"<", b">", b"'", b"&amp;", b"<a/>", b"</x>", b"\xff"]), max_size=12))
    def test_stanza_soup(self, pieces):
        c = Collector()
        try:
            c.parser.feed(HEADER + b"".join(pieces))
        except StreamViolation as e:
            self.assertIn(e.condition, ("not-well-formed", "restricted-xml", "policy-violation"))


class RenderTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.text(min_size=1, max_size=200))
    def test_message_text_survives(self, text):
        event = Message("xmpp:alice@localhost", "xmpp:bob@localhost", text)
        element = parse_one(adapter.render_message(event, "alice@localhost", "bob@localhost/r"))
        body, html, state, receipt, thread = adapter.message_parts(element)
        self.assertEqual(body, clean_text(text).replace("\r\n", "\n").replace("\r", "\n"))
        self.assertEqual(state, "active")

    def test_message_with_html(self):
        event = Message("xmpp:a@l", "xmpp:b@l", "hi", html="<p>hi <b>there</b></p>", id="e1")
        out = adapter.render_message(event, "a@l", "b@l/x")
        self.assertEqual(
            out,
            b"<message type='chat' from='a@l' to='b@l/x' id='e1'><body>hi</body>"
            b"<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>"
            b"<p>hi <b>there</b></p></body></html><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        _, html, _, _, _ = adapter.message_parts(parse_one(out))
        self.assertEqual(html, "<p>hi <b>there</b></p>")
        # HTML that is not XML (AIM's, or the sanitizer's <br> and &nbsp;) is written again as XML.
        for html, xhtml in [("<font color=red>hi", "<font color='red'>hi</font>"),
                            ("one<br>two&nbsp;<b>three", "one<br/>two\u00a0<b>three</b>")]:
            out = adapter.render_message(Message("xmpp:a@l", "xmpp:b@l", "hi", html=html, id="e2"), "a@l", "b@l")
            self.assertEqual(adapter.message_parts(parse_one(out))[1], xhtml)

    def test_presence(self):
        p = Presence("xmpp:a@l", PresenceStatus.BUSY, "in a meeting <3")
        out = adapter.render_presence(p, "a@l", "b@l/x")
        self.assertEqual(out, b"<presence from='a@l' to='b@l/x'><show>dnd</show><status>in a meeting &lt;3</status></presence>")
        self.assertEqual(adapter.presence_status(parse_one(out)), (PresenceStatus.BUSY, "in a meeting <3"))
        off = adapter.render_presence(Presence("xmpp:a@l", PresenceStatus.OFFLINE), "a@l", "b@l")
        self.assertEqual(off, b"<presence from='a@l' to='b@l' type='unavailable'/>")
        for show, status in (("away", PresenceStatus.AWAY), ("xa", PresenceStatus.IDLE), ("chat", PresenceStatus.AVAILABLE)):
            element = parse_one(f"<presence><show>{show}</show></presence>".encode())
            self.assertEqual(adapter.presence_status(element)[0], status)


class EscapingTests(unittest.TestCase):
    # XEP-0106 section 4.3 (examples of JID escaping).
    VECTORS = [
        ("space cadet", "space\\20cadet"),
        ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
        ("at&t guy", "at\\26t\\20guy"),
        ("d'artagnan", "d\\27artagnan"),
        ("/.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e"),
        ("user@host", "user\\40host"),
        ("c:\\net", "c\\3a\\net"),
        ("c:\\\\net", "c\\3a\\\\net"),
        ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
        ("c:\\5commas", "c\\3a\\5c5commas"),
    ]

    def test_vectors(self):
        for user, node in self.VECTORS:
            self.assertEqual(escape_node(user), node, user)
            self.assertEqual(unescape_node(node), user, node)

    @given(st.text(alphabet=st.sampled_from("ab \\\"&'/:<>@25cf03"), max_size=20))
    def test_round_trip(self, user):
        self.assertEqual(unescape_node(escape_node(user)), user)
