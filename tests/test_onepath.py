"""The one path without exceptions: rich parts, transforms, disclosures, file offers, access and durability."""

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from gateway.path.content import normalize, sanitize, text_of, xhtml_of
from gateway.hookspecs import hookimpl
from gateway.model import Access, FileOffer, Message, Presence, PresenceStatus, Profile, Verdict
from tests.test_bus import CONFIG, BusTestCase, Redact, result_of


class SanitizerTests(unittest.TestCase):
    """Table-driven: what rich text a recipient may be shown, and the text derived from it."""

    cases = [
        # (markup, sanitized, text)
        ("plain", "plain", "plain"),
        ("<b>bold</b> and <i>it</i>", "<b>bold</b> and <i>it</i>", "bold and it"),
        ('<script>alert(1)</script>hi', "hi", "hi"),
        ('<img src="http://tracker.example/p.gif">x', "x", "x"),
        ('<a href="javascript:evil()">click</a>', "<a>click</a>", "click"),
        ('<a href="http://x.example/project-x">here</a>', '<a href="http://x.example/project-x">here</a>',
         "here (http://x.example/project-x)"),
        ('<a href="http://x.example/">http://x.example/</a>', '<a href="http://x.example/">http://x.example/</a>',
         "http://x.example/"),
        ('<font color="#ff0000" onclick="x()">red</font>', '<font color="#ff0000">red</font>', "red"),
        ('<span style="color:red;position:fixed">s</span>', '<span style="color:red">s</span>', "s"),
        ("a<br>b", "a<br>b", "a\nb"),
        ("<p>one</p><p>two</p>", "<p>one</p><p>two</p>", "one\ntwo"),
        ("<HTML><BODY BGCOLOR='#ffffff'><FONT FACE='Arial'>aim</FONT></BODY></HTML>",
         '<font face="Arial">aim</font>', "aim"),
        ("x &amp; y &lt;z&gt;", "x &amp; y &lt;z&gt;", "x & y <z>"),
        ("<!-- project-x -->visible", "visible", "visible"),
        ("<iframe src='http://x'></iframe><form><input value='v'></form>ok", "ok", "ok"),
        # A heading inside a heading: a parser reading the markup again would split them.
        ("<h5>a<h5>b</h5></h5>", "<h5>a</h5><h5>b</h5>", "a\nb"),
    ]

    def test_table(self):
        for markup, clean, text in self.cases:
            self.assertEqual(sanitize(markup), clean, markup)
            self.assertEqual(sanitize(clean), clean, markup)  # what is sanitized stays as it is
            self.assertEqual(text_of(clean), text, markup)

    def test_xhtml_is_the_same_content_as_xml(self):
        from xml.dom.minidom import parseString

        for markup, clean, text in self.cases:
            xhtml = xhtml_of(clean)
            parseString(f"<body>{xhtml}</body>".encode())  # well-formed XML, or this raises
            self.assertEqual(text_of(xhtml), text, markup)  # the same text, read back as HTML
            self.assertEqual(sanitize(xhtml), sanitize(xhtml_of(sanitize(xhtml))), markup)
        self.assertEqual(xhtml_of("a<br>b&nbsp;<b>c"), "a<br/>b\u00a0<b>c</b>")
        self.assertEqual(xhtml_of("bad\x01 control"), "bad control")

    def test_html_wins_over_a_disagreeing_body(self):
        self.assertEqual(normalize("hi", "project-x <b>plans</b>"), ("project-x plans", "project-x <b>plans</b>"))

    def test_nothing_visible_in_html_leaves_the_text(self):
        self.assertEqual(normalize("hi", '<img src="x">'), ("hi", None))
        self.assertEqual(normalize("hi", None), ("hi", None))


class DenyWord:
    """A DLP plugin that reads only ``event.text``, as a simple vendor's would."""

    @hookimpl
    def gateway_policy_check(self, event):
        if "project-x" in (getattr(event, "text", "") or "") or "project-x" in getattr(event, "name", ""):
            return Verdict.deny("mentions project-x", rule="dlp")
        return None


class RichHtmlTransform:
    @hookimpl
    def gateway_transform(self, event):
        if isinstance(event, Message) and event.html:
            return attrs.evolve(event, html=event.html + "<script>x()</script><i> (disclaimer)</i>")
        return None


class RichContentTests(BusTestCase):
    hooks = (DenyWord(),)

    def test_forbidden_word_only_in_the_rich_part_is_denied_and_archived(self):
        self.login(self.left, self.bob, "aim:bob")
        outcome = self.submit("xmpp:alice@gw.example", "aim:bob", "hi", html="<b>project-x</b> secret plans")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "dlp")
        event, verdict, status = self.archive.rows[outcome.event_id]
        self.assertEqual((status, event.text), ("rejected", "project-x secret plans"))

    def test_recipient_gets_only_what_policy_saw(self):
        b = self.login(self.left, self.bob, "aim:bob")
        outcome = self.submit("xmpp:alice@gw.example", "aim:bob", "harmless", html="<b>real</b><script>x</script>")
        self.assertTrue(outcome.delivered)
        [got] = self.left.received(b, "im")
        self.assertEqual((got.text, got.html), ("real", "<b>real</b>"))
        self.assertEqual(self.archive.rows[outcome.event_id][0].text, "real")


class TransformRenderingTests(BusTestCase):
    hooks = (Redact(),)

    def test_redaction_of_the_text_reaches_the_rich_rendering(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.submit("aim:alice", "aim:bob", "x", html="the <b>secret</b> plan")
        [got] = self.left.received(b, "im")
        self.assertEqual(got.text, "the [redacted] plan")
        self.assertNotIn("secret", got.html)
        self.assertIn("[redacted]", got.html)


class HtmlTransformTests(BusTestCase):
    hooks = (RichHtmlTransform(),)

    def test_transformed_html_is_sanitized_and_the_text_follows_it(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.submit("aim:alice", "aim:bob", "x", html="<b>hello</b>")
        [got] = self.left.received(b, "im")
        self.assertEqual(got.html, "<b>hello</b><i> (disclaimer)</i>")
        self.assertEqual(got.text, "hello (disclaimer)")


PRESENCE_RULES = CONFIG + """
[[policy.rule]]
name = "hide-bob-from-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
kinds = ["presence", "info"]

[[policy.rule]]
name = "no-files-from-outside"
action = "deny"
direction = "inbound"
kinds = ["file"]
"""


class DisclosureTests(BusTestCase):
    config = PRESENCE_RULES

    def test_presence_answer_to_a_probe_is_decided_and_archived(self):
        outcome, event = result_of(self.core.api.disclose(
            Presence("aim:bob", PresenceStatus.AWAY, "lunch", recipient="xmpp:carol@gw.example")))
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "hide-bob-from-carol")
        self.assertEqual(self.archive.status(outcome.event_id), "rejected")

    def test_allowed_disclosure_comes_back_for_the_connector_to_render(self):
        outcome, event = result_of(self.core.api.disclose(
            Presence("aim:bob", PresenceStatus.AWAY, "lunch", recipient="aim:alice")))
        self.assertTrue(outcome.delivered)
        self.assertEqual((event.note, event.recipient), ("lunch", self.alice.handles[0]))
        self.assertEqual(self.archive.status(outcome.event_id), "delivered")

    def test_profile_query_is_kind_info(self):
        outcome, _ = result_of(self.core.api.disclose(
            self.core.api.profile("icq:100002", "xmpp:carol@gw.example", note="away", html="<b>me</b>")))
        self.assertTrue(outcome.rejected)
        outcome, event = result_of(self.core.api.disclose(
            self.core.api.profile("icq:100002", "aim:alice", html="<b>me</b><script>x</script>")))
        self.assertTrue(outcome.delivered)
        self.assertEqual((event.text, event.html), ("me", "<b>me</b>"))
        self.assertEqual(self.archive.rows[outcome.event_id][0].kind, "info")

    def test_file_offer_from_outside_is_denied(self):
        b = self.login(self.left, self.bob, "aim:bob")
        offer = self.core.api.file_offer("xmpp:dave@remote.example", "aim:bob", "plans.pdf", 1200)
        outcome = result_of(self.core.bus.submit(offer))
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "no-files-from-outside")
        self.assertEqual(self.left.received(b, "file"), [])
        event, _, status = self.archive.rows[outcome.event_id]
        self.assertEqual((event.kind, event.name, status), ("file", "plans.pdf", "rejected"))

    def test_file_offer_inside_is_delivered(self):
        b = self.login(self.left, self.bob, "aim:bob")
        outcome = result_of(self.core.bus.submit(self.core.api.file_offer("aim:alice", "aim:bob", "a.txt", 3)))
        self.assertTrue(outcome.delivered)
        [got] = self.left.received(b, "file")
        self.assertEqual((got.name, got.size), ("a.txt", 3))


class RefuseTests(BusTestCase):
    def test_chat_a_connector_cannot_route_is_archived_as_rejected(self):
        from gateway.model import ChatEvent

        outcome = self.core.api.refuse(
            ChatEvent("aim:alice", "aim:bob", room="lobby", action="message", text="hello room"),
            "chat rooms are not supported", "chat-unsupported")
        self.assertTrue(outcome.rejected)
        event, verdict, status = self.archive.rows[outcome.event_id]
        self.assertEqual((event.text, status, verdict.reason), ("hello room", "rejected", "chat rooms are not supported"))


class AccessTests(BusTestCase):
    def access(self):
        return [(str(e.sender), e.action, e.source, e.text) for e in self.archive.events("access")]

    def test_login_and_logout_are_archived_with_source(self):
        session = result_of(self.core.api.login(
            self.bob, self.bob.handles[0], "left", source="192.0.2.7"))
        result_of(self.core.api.logout(session))
        self.assertEqual(self.access(), [("aim:bob", "login", "192.0.2.7", ""), ("aim:bob", "logout", "", "")])

    def test_failed_login_is_archived_with_source_and_reason(self):
        result_of(self.core.api.authenticate(self.bob.handles[0], "wrong", source="192.0.2.8"))
        [(who, action, source, reason)] = self.access()
        self.assertEqual((who, action, source), ("aim:bob", "login-failed", "192.0.2.8"))
        self.assertTrue(reason)

    def test_failure_counted_by_a_protocol_that_checks_secrets_itself(self):
        self.core.api.login_failed(self.bob.handles[0], "192.0.2.9", reason="bad digest")
        self.assertEqual(self.access(), [("aim:bob", "login-failed", "192.0.2.9", "bad digest")])


class HoldingArchive:
    """An archive whose waited-for records become durable when the test says so."""

    def __init__(self):
        self.pending = []
        self.rows = []

    def record(self, event, verdict, outcome=None, *, sender_identity=None, recipient_identity=None,
               wait=False, strict=True):
        self.rows.append((event.id, strict))
        if wait:
            d = Deferred()
            self.pending.append(d)
            return d
        return None

    def record_delivery(self, event_id, status, where):
        pass

    def queue_depth(self):
        return len(self.pending)


class DurableByDefaultTests(BusTestCase):
    def setUp(self):
        super().setUp()
        self.holding = HoldingArchive()
        self.core.bus.archive = self.holding

    def test_delivered_only_once_durable_and_not_strict(self):
        b = self.login(self.left, self.bob, "aim:bob")
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "keep me"))
        self.assertEqual(self.left.received(b, "im"), [])
        self.assertFalse(d.called)
        self.assertEqual(self.holding.rows[-1][1], False)  # the spool counts as durable
        self.holding.pending[-1].callback(None)
        self.assertTrue(result_of(d).delivered)
        self.assertEqual([e.text for e in self.left.received(b, "im")], ["keep me"])


class NotDurableTests(BusTestCase):
    config = CONFIG + "[archive]\ndurable = false\n"

    def test_opt_out_delivers_before_the_row_is_durable(self):
        holding = HoldingArchive()
        self.core.bus.archive = holding
        b = self.login(self.left, self.bob, "aim:bob")
        outcome = result_of(self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "fast")))
        self.assertTrue(outcome.delivered)
        self.assertEqual(holding.pending, [])
        self.assertEqual(len(self.left.received(b, "im")), 1)


class MaskCards:
    @hookimpl
    def gateway_transform(self, event):
        if isinstance(event, Message) and "4111" in event.text:
            return attrs.evolve(event, text=event.text.replace("4111 1111 1111 1111", "[card]"))
        return None


class Disclaimer:
    """A transform that asks a service of its own: answers with a Deferred."""

    def __init__(self):
        self.pending = []

    @hookimpl
    def gateway_transform(self, event):
        if not isinstance(event, Message):
            return None
        d = Deferred()
        self.pending.append((d, event))
        return d


class TransformChainTests(BusTestCase):
    def setUp(self):
        self.disclaimer = Disclaimer()
        # Registered last, called first (pluggy's order): the mask, then the disclaimer.
        self.hooks = (self.disclaimer, MaskCards())
        super().setUp()
        self.b = self.login(self.left, self.bob, "aim:bob")

    def test_archive_keeps_what_was_sent_and_which_hooks_changed_it(self):
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "card 4111 1111 1111 1111 ok"))
        answer, seen = self.disclaimer.pending.pop()
        self.assertEqual(seen.text, "card [card] ok")
        answer.callback(attrs.evolve(seen, text=seen.text + " (monitored)"))
        outcome = result_of(d)
        self.assertTrue(outcome.delivered)
        [got] = self.left.received(self.b, "im")
        self.assertEqual(got.text, "card [card] ok (monitored)")
        event, _, status = self.archive.rows[outcome.event_id]
        self.assertEqual((event.text, status), ("card [card] ok (monitored)", "delivered"))
        original, names = self.archive.changes[outcome.event_id]
        self.assertEqual(original.text, "card 4111 1111 1111 1111 ok")
        self.assertEqual(names, ("hook1", "hook0"))

    def test_unchanged_event_keeps_no_second_copy(self):
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "plain"))
        answer, seen = self.disclaimer.pending.pop()
        answer.callback(None)
        outcome = result_of(d)
        self.assertTrue(outcome.delivered)
        self.assertNotIn(outcome.event_id, self.archive.changes)

    def test_asynchronous_transform_that_times_out_rejects(self):
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "card 4111 1111 1111 1111"))
        self.clock.advance(self.core.bus.hook_timeout + 0.1)
        outcome = result_of(d)
        self.assertTrue(outcome.rejected)
        self.assertEqual((outcome.code, outcome.rule), ("transform", "plugin:hook0"))
        self.assertIn("did not transform within", outcome.reason)
        self.assertEqual(self.left.received(self.b, "im"), [])
        event, _, status = self.archive.rows[outcome.event_id]
        self.assertEqual((event.text, status), ("card 4111 1111 1111 1111", "rejected"))

    def test_asynchronous_transform_that_fails_rejects(self):
        d = self.core.bus.submit(self.core.api.message("aim:alice", "aim:bob", "hello"))
        answer, _ = self.disclaimer.pending.pop()
        answer.errback(RuntimeError("DLP service down"))
        outcome = result_of(d)
        self.assertTrue(outcome.rejected)
        self.assertIn("DLP service down", outcome.reason)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TransformRecordTests(unittest.TestCase):
    """The real archive row of a transformed event."""

    def test_row_keeps_the_original_and_the_hooks(self):
        import json

        from gateway.storage.archive.store import record_to_row

        sent = Message("aim:alice", "aim:bob", "card 4111 1111 1111 1111")
        shown = attrs.evolve(sent, text="card [card]")
        row = record_to_row(shown, Verdict.allow(), None, original=sent, transforms=("mask", "disclaimer"))
        self.assertEqual(row["text"], "card [card]")
        self.assertEqual(json.loads(row["original"])["text"], "card 4111 1111 1111 1111")
        self.assertEqual(row["transforms"], "mask,disclaimer")
        plain = record_to_row(sent, Verdict.allow(), None)
        self.assertEqual((plain["original"], plain["transforms"]), (None, None))


class BackPressureTests(BusTestCase):
    config = PRESENCE_RULES

    def test_refusals_wait_for_the_archive_while_it_is_behind(self):
        holding = HoldingArchive()
        holding.behind = lambda: len(holding.pending) >= 1
        self.core.bus.archive, self.core.bus._behind = holding, holding.behind
        self.login(self.left, self.bob, "aim:bob")
        first = self.core.bus.submit(self.core.api.file_offer("xmpp:dave@remote.example", "aim:bob", "a.pdf"))
        self.assertTrue(first.called)  # not behind yet: answered at once
        self.assertTrue(result_of(first).rejected)
        holding.pending.append(Deferred())  # the writer falls behind
        second = self.core.bus.submit(self.core.api.file_offer("xmpp:dave@remote.example", "aim:bob", "b.pdf"))
        self.assertFalse(second.called)
        holding.pending[-1].callback(None)
        self.assertTrue(result_of(second).rejected)


class GoneClientTests(BusTestCase):
    def test_a_client_gone_is_no_error_of_the_gateway(self):
        b = self.login(self.left, self.bob, "aim:bob")
        self.left.failing.add(b)  # its deliver raises ConnectionError, as a closed connection's does
        outcome = self.submit("aim:alice", "aim:bob", "you there?")
        self.assertTrue(outcome.queued)
        self.assertEqual(self.flushLoggedErrors(), [])
