"""The transparent logging proxy, with the test playing the upstream service byte by byte."""

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from gateway.config import ConfigError
from gateway.hookspecs import hookimpl
from gateway.interfaces import IConnector
from gateway.model import Address, Verdict
from gateway.plugins import Plugins
from gateway.testing import MemoryDirectory, make_core

from gateway_oscar import adapter, codec
from gateway_oscar.codec import encode_tlvs, u16
from gateway_oscar.proxy import OscarProxyConnector, ProxyConnection, _target

from tests.oscar.wire import im_body, roasted_signon

PROXY = {"listen": [], "upstream": "127.0.0.1:5191", "bos_address": "127.0.0.1:5195"}


def flap(channel, seq, payload):
    return codec.encode_flap(channel, seq, payload)


def snac(family, subtype, body, request_id=7):
    return codec.encode_snac(family, subtype, body, 0, request_id)


HELLO = codec.FLAP_VERSION


def renumbered(frame, seq):
    """``frame`` (whole FLAP bytes) with another sequence number."""
    return frame[:2] + seq.to_bytes(2, "big") + frame[4:]


def rendered(frame, text, html=None):
    """An IM frame (04/06 or 04/07) as the proxy forwards it: its text rendered from the decided event."""
    (flap_, ), _ = codec.parse_flaps(frame)
    got = codec.parse_snac(flap_.payload)
    tlv2 = adapter.im_tlv2(text, html, adapter.ClientProfile())
    if got.subtype == 7:
        icbm = codec.parse_icbm_receive(got.body)
        head = icbm.cookie + u16(icbm.channel) + codec.encode_user_info(icbm.screen_name, icbm.user_tlvs, icbm.warning)
    else:
        icbm = codec.parse_icbm_send(got.body)
        head = icbm.cookie + u16(icbm.channel) + bytes((len(icbm.screen_name),)) + icbm.screen_name
    body = head + encode_tlvs([(t, tlv2 if t == 2 else v) for t, v in icbm.tlvs])
    return codec.encode_flap(flap_.channel, flap_.seq, codec.encode_snac(got.family, got.subtype, body, got.flags,
                                                                       got.request_id))


class Hooks:
    def __init__(self):
        self.verdicts = []
        self.suffix = None

    @hookimpl
    def gateway_policy_check(self, event):
        if self.verdicts:
            return self.verdicts.pop(0)
        return None

    @hookimpl
    def gateway_transform(self, event):
        if self.suffix and event.kind == "im":
            return attrs.evolve(event, text=event.text + self.suffix)
        return None


class ProxyBase(unittest.TestCase):
    """A proxy on a fake upstream; the test plays both the clients and the upstream service."""

    rules = '[[policy.rule]]\nname = "no-mallory"\naction = "deny"\nkinds = ["im"]\nto = ["aim:mallory"]\n'
    options = {}

    def setUp(self):
        self.clock = task.Clock()
        self.hooks = Hooks()
        plugins = Plugins()
        plugins.register(self.hooks, "test-hooks")
        self.core = make_core(self.rules, clock=self.clock, directory=MemoryDirectory(), plugins=plugins)
        self.proxy = OscarProxyConnector(self.core.api, dict(PROXY, **self.options))
        self.core.connectors["oscar-proxy"] = self.proxy
        self.core.start_plugins()
        self.upstreams = []
        self.unreachable = set()
        self.proxy.connect = self.fake_connect
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def fake_connect(self, target, build):
        if target in self.unreachable:
            return fail(ConnectionRefusedError("no"))
        upstream = build()
        transport = StringTransport()
        self.upstreams.append((target, upstream, transport))
        upstream.makeConnection(transport)
        return succeed(upstream)

    def client(self):
        """A new client connection; checks the proxy's own hello and that nothing went upstream yet."""
        leg = ProxyConnection(self.proxy)
        transport = StringTransport()
        before = len(self.upstreams)
        leg.makeConnection(transport)
        self.assertEqual(self.take(transport), flap(1, 1, HELLO))
        self.assertEqual(len(self.upstreams), before)
        return leg, transport

    def take(self, transport):
        data = transport.value()
        transport.clear()
        return data

    def login(self, name=b"alice", bos=b"127.0.0.1:6001"):
        """Roasted login through the proxy; returns the rewritten ch4 TLVs the client saw."""
        leg, client = self.client()
        signon = flap(1, 1, roasted_signon(name.decode(), "secret"))
        leg.dataReceived(signon)
        target, upstream, up = self.upstreams[-1]
        self.assertEqual(target, ("127.0.0.1", 5191))
        self.assertEqual(self.take(up), signon)  # byte for byte
        upstream.dataReceived(flap(1, 100, HELLO))
        self.assertEqual(self.take(client), b"")  # the client had the proxy's hello
        reply = [(1, name), (5, bos), (6, b"C" * 32)]
        upstream.dataReceived(flap(4, 101, encode_tlvs(reply)))
        got = codec.parse_flaps(self.take(client))[0][0]
        self.assertEqual((got.channel, got.seq), (4, 2))  # numbered on from the proxy's hello
        return codec.parse_tlvs(got.payload)

    def sign_on(self, cookie, target):
        """A client's next connection presenting ``cookie``: relayed straight to ``target``."""
        leg, client = self.client()
        before = len(self.upstreams)
        signon = flap(1, 1, codec.FLAP_VERSION + encode_tlvs([(6, cookie)]))
        leg.dataReceived(signon)
        self.assertEqual(len(self.upstreams), before + 1)  # one connection, and not to the login service
        got_target, upstream, up = self.upstreams[-1]
        self.assertEqual(got_target, target)
        upstream.dataReceived(flap(1, 500, HELLO))  # its hello is not repeated to the client
        self.assertEqual(self.take(up), signon)
        self.assertEqual(self.take(client), b"")
        return leg, client, upstream, up

    def bos(self, name=b"alice"):
        tlvs = self.login(name)
        self.assertEqual(tlvs, [(1, name), (5, b"127.0.0.1:5195"), (6, b"C" * 32)])
        leg, client, upstream, up = self.sign_on(b"C" * 32, ("127.0.0.1", 6001))
        self.assertEqual(leg.screen_name, name.decode().lower())
        return leg, client, upstream, up


class ProxyTests(ProxyBase):
    def test_config(self):
        self.assertTrue(verifyObject(IConnector, self.proxy))
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, {"listen": []})
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, upstream="nope"))
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, bogus=1))
        self.assertTrue(self.proxy.can_reach(Address("aim", "anyone")))
        self.assertFalse(self.proxy.can_reach(Address("aim", "x", "invalid.invalid")))

    def test_login_reply_rewritten_and_bos_routed(self):
        leg, client, upstream, up = self.bos()
        data = flap(2, 501, snac(1, 3, b"\x00\x01\x00\x04"))
        upstream.dataReceived(data)
        self.assertEqual(self.take(client), renumbered(data, 2))
        upstream.dataReceived(flap(2, 502, snac(1, 0x18, b"")))
        self.assertEqual(codec.parse_flaps(self.take(client))[0][0].seq, 3)

    def test_bos_address_without_port_is_on_the_login_port(self):
        tlvs = self.login(bos=b"127.0.0.1")  # old AOL style: the client keeps the port it logged in on
        self.assertEqual(codec.first_tlv(tlvs, 5), b"127.0.0.1:5195")
        self.sign_on(b"C" * 32, ("127.0.0.1", 5191))

    def test_addresses_the_upstream_may_send(self):
        self.assertEqual(_target("10.1.2.3:5191", 5190), ("10.1.2.3", 5191))
        self.assertEqual(_target("bos.example.net", 5190), ("bos.example.net", 5190))
        self.assertEqual(_target("[::1]:6000", 5190), ("::1", 6000))
        for bad in ("", ":5190", "host:port", "host:0", "host:70000"):
            self.assertIsNone(_target(bad, 5190), bad)

    def test_unusable_bos_address_goes_to_the_login_service(self):
        tlvs = self.login(bos=b"bos.example.net:http")
        self.assertEqual(codec.first_tlv(tlvs, 5), b"127.0.0.1:5195")
        self.sign_on(b"C" * 32, ("127.0.0.1", 5191))
        self.assertTrue(any("unusable BOS address" in formatEvent(e) for e in self.logged))

    def test_unknown_cookie_goes_to_the_login_service(self):
        self.sign_on(b"not ours", ("127.0.0.1", 5191))

    def test_bucp_reply_rewritten(self):
        leg, client = self.client()
        leg.dataReceived(flap(1, 1, codec.FLAP_VERSION) + flap(2, 2, snac(0x17, 6, encode_tlvs([(1, b"Bob")]), 0)))
        _, upstream, up = self.upstreams[-1]
        upstream.dataReceived(flap(1, 8, HELLO))
        upstream.dataReceived(flap(2, 9, snac(0x17, 3, encode_tlvs([(1, b"Bob"), (5, b"127.0.0.1:6002"), (6, b"K")]), 0)))
        (frame,) = codec.parse_flaps(self.take(client))[0]
        reply = codec.parse_snac(frame.payload)
        self.assertEqual((frame.seq, reply.family, reply.subtype, reply.request_id), (2, 0x17, 3, 0))
        self.assertEqual(codec.parse_tlvs(reply.body), [(1, b"Bob"), (5, b"127.0.0.1:5195"), (6, b"K")])
        route = self.proxy.routes[b"K"]
        self.assertEqual((route.target, route.name, route.service), (("127.0.0.1", 6002), b"Bob", None))
        self.assertEqual(leg.screen_name, "bob")

    def test_service_redirect_rewritten_and_relayed(self):
        leg, client, upstream, up = self.bos()
        request = flap(2, 5, snac(1, 4, u16(0x0D), request_id=0x21))
        leg.dataReceived(request)
        self.assertEqual(self.take(up), request)
        cookie = b"chat-nav-cookie"
        tlvs = [(0x0D, u16(0x0D)), (5, b"127.0.0.1:6010"), (6, cookie), (0x8D, b""), (0x8E, b"\x00")]
        upstream.dataReceived(flap(2, 501, snac(1, 5, encode_tlvs(tlvs), request_id=0x21)))
        expected = [(0x0D, u16(0x0D)), (5, b"127.0.0.1:5195"), (6, cookie), (0x8D, b""), (0x8E, b"\x00")]
        self.assertEqual(self.take(client), flap(2, 2, snac(1, 5, encode_tlvs(expected), request_id=0x21)))
        # the client's connection to the service comes back here and is relayed to the real address
        svc, svc_client, svc_upstream, svc_up = self.sign_on(cookie, ("127.0.0.1", 6010))
        self.assertEqual((svc.screen_name, svc.service), ("alice", 0x0D))
        hello = flap(2, 501, snac(1, 3, u16(1) + u16(0x0D)))
        svc_upstream.dataReceived(hello)
        self.assertEqual(self.take(svc_client), renumbered(hello, 2))
        versions = flap(2, 2, snac(1, 0x17, u16(1) + u16(4) + u16(0x0D) + u16(1)))
        svc.dataReceived(versions)
        self.assertEqual(self.take(svc_up), versions)
        self.assertTrue(any("redirected to the chat navigation service at 127.0.0.1:6010" in formatEvent(e)
                            for e in self.logged))

    def test_service_redirect_without_port(self):
        leg, client, upstream, up = self.bos()
        tlvs = [(0x0D, u16(0x10)), (5, b"127.0.0.1"), (6, b"icons")]
        upstream.dataReceived(flap(2, 501, snac(1, 5, encode_tlvs(tlvs), request_id=3)))
        got = codec.parse_snac(codec.parse_flaps(self.take(client))[0][0].payload)
        self.assertEqual(codec.parse_tlvs(got.body), [(0x0D, u16(0x10)), (5, b"127.0.0.1:5195"), (6, b"icons")])
        self.sign_on(b"icons", ("127.0.0.1", 5191))

    def test_upstream_unreachable(self):
        self.unreachable.add(("127.0.0.1", 5191))
        leg, client = self.client()
        leg.dataReceived(flap(1, 1, roasted_signon("alice", "secret")))
        (frame,) = codec.parse_flaps(self.take(client))[0]
        self.assertEqual((frame.channel, frame.seq), (4, 2))
        self.assertEqual(codec.first_tlv(codec.parse_tlvs(frame.payload), 8), u16(adapter.LOGIN_UNAVAILABLE))
        self.assertTrue(client.disconnecting)
        self.flushLoggedErrors()

    def test_im_out_allowed_is_forwarded_re_rendered_and_archived(self):
        leg, client, upstream, up = self.bos()
        data = flap(2, 3, snac(4, 6, im_body(b"Bob", codec.TextPart(0, 0, b"<HTML>hi bob</HTML>"), ack=True)))
        leg.dataReceived(data)
        self.assertEqual(self.take(up), rendered(data, "hi bob"))  # the other TLVs (ack wanted) as they came
        (event,) = self.core.archive.events("im")
        self.assertEqual((event.sender, event.recipient, event.text), (Address("aim", "alice"), Address("aim", "bob"), "hi bob"))
        self.assertEqual(self.core.archive.status(event.id), "delivered")
        # the same IM arriving at bob's proxied connection is not logged twice
        bob, bob_client, bob_up_proto, bob_up = self.bos(b"bob")
        info = codec.encode_user_info(b"alice", [(1, b"\x00\x10")])
        incoming = flap(2, 501, snac(4, 7, codec.encode_icbm_receive(b"12345678", 1, info, [(2, b"\x05\x01\x00\x01\x01")]), 0x80000001))
        bob_up_proto.dataReceived(incoming)
        self.assertEqual(self.take(bob_client), renumbered(rendered(incoming, "hi bob"), 2))  # shown as decided
        self.assertEqual(len(self.core.archive.events("im")), 1)

    def test_im_denied_gets_icbm_error_and_is_not_forwarded(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(4, 6, im_body(b"mallory", codec.TextPart(0, 0, b"psst")), request_id=42)))
        self.assertEqual(self.take(up), b"")
        (error,) = codec.parse_flaps(self.take(client))[0]
        got = codec.parse_snac(error.payload)
        self.assertEqual((error.seq, got.family, got.subtype, got.request_id, got.body), (2, 4, 1, 42, u16(0x0D)))
        (event,) = self.core.archive.events("im")
        self.assertEqual(self.core.archive.status(event.id), "rejected")
        # neither side sees a gap or a repeat: the error took the client's next number ...
        upstream.dataReceived(flap(2, 501, snac(1, 0x0F, b"")))
        self.assertEqual(codec.parse_flaps(self.take(client))[0][0].seq, 3)
        # ... and the upstream never saw the withheld frame's number
        after = flap(2, 4, snac(1, 0x11, b"\x00\x00\x00\x00"))
        leg.dataReceived(after)
        self.assertEqual(self.take(up), renumbered(after, 3))

    def test_im_in_is_logged_and_can_be_stopped(self):
        leg, client, upstream, up = self.bos()
        info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
        tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, b"hello alice")])
        incoming = flap(2, 501, snac(4, 7, codec.encode_icbm_receive(b"ABCDEFGH", 1, info, [(2, tlv2)])))
        upstream.dataReceived(incoming)
        self.assertEqual(self.take(client), renumbered(rendered(incoming, "hello alice"), 2))
        (event,) = self.core.archive.events("im")
        self.assertEqual((str(event.sender), str(event.recipient), event.text), ("aim:carol", "aim:alice", "hello alice"))
        self.assertEqual(self.core.archive.status(event.id), "delivered")

    def test_im_in_denied_is_withheld_archived_and_leaves_no_gap(self):
        leg, client, upstream, up = self.bos()
        info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
        tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, b"buy now")])
        self.hooks.verdicts.append(Verdict.deny("spam", rule="no-spam"))
        denied = flap(2, 501, snac(4, 7, codec.encode_icbm_receive(b"ZZZZZZZZ", 1, info, [(2, tlv2)])))
        presence = flap(2, 502, snac(3, 0x0B, info))
        upstream.dataReceived(denied + presence)
        # the IM is not delivered; what follows it is, numbered on without a gap
        self.assertEqual(self.take(client), renumbered(presence, 2))
        (event,) = self.core.archive.events("im")
        self.assertEqual((str(event.sender), str(event.recipient), event.text), ("aim:carol", "aim:alice", "buy now"))
        self.assertEqual(self.core.archive.status(event.id), "rejected")
        (warning,) = [e for e in self.logged if e.get("log_level") == LogLevel.warn and "withheld" in e["log_format"]]
        self.assertEqual((warning["sender"], warning["recipient"], warning["rule"]), ("aim:carol", "aim:alice", "no-spam"))
        # the client's side goes on: its frames still reach the upstream, and IMs still arrive
        ping = flap(2, 3, snac(1, 0x11, b"\x00\x00\x00\x00"))
        leg.dataReceived(ping)
        self.assertEqual(self.take(up), ping)
        later = flap(2, 503, snac(4, 7, codec.encode_icbm_receive(b"YYYYYYYY", 1, info, [(2, tlv2)])))
        upstream.dataReceived(later)
        self.assertEqual(self.take(client), renumbered(rendered(later, "buy now"), 3))
        self.assertFalse(client.disconnecting)

    def test_denied_while_waiting_keeps_the_order(self):
        leg, client, upstream, up = self.bos()
        answer = Deferred()
        self.hooks.verdicts.append(answer)
        info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
        tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, b"wait for it")])
        im = flap(2, 501, snac(4, 7, codec.encode_icbm_receive(b"WWWWWWWW", 1, info, [(2, tlv2)])))
        after = flap(2, 502, snac(3, 0x0C, codec.encode_user_info(b"carol", [])))
        upstream.dataReceived(im + after)
        self.assertEqual(self.take(client), b"")  # held behind the IM
        answer.callback(Verdict.deny("no", rule="test"))
        self.assertEqual(self.take(client), renumbered(after, 2))

    def test_order_is_kept_while_an_im_waits_for_policy(self):
        leg, client, upstream, up = self.bos()
        answer = Deferred()
        self.hooks.verdicts.append(answer)
        im = flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"first"))))
        after = flap(2, 4, snac(1, 0x11, b"\x00\x00\x00\x00"))
        leg.dataReceived(im + after)
        self.assertEqual(self.take(up), b"")
        answer.callback(None)
        self.assertEqual(self.take(up), rendered(im, "first") + after)

    def test_transform_rewrites_the_text(self):
        leg, client, upstream, up = self.bos()
        self.hooks.suffix = " [logged]"
        leg.dataReceived(flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"hi"), ack=True), request_id=5)))
        (frame,) = codec.parse_flaps(self.take(up))[0]
        got = codec.parse_snac(frame.payload)
        icbm = codec.parse_icbm_send(got.body)
        self.assertEqual((frame.seq, got.request_id, icbm.screen_name, icbm.tlv(3)), (3, 5, b"bob", b""))
        self.assertEqual(codec.text_parts(icbm.tlv(2))[0].data, b"<HTML><BODY>hi [logged]</BODY></HTML>")

    def test_split_frames_and_unknown_user(self):
        leg, client = self.client()
        im = flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"who am i"))))
        for i in range(len(im)):
            leg.dataReceived(im[i:i + 1])
        target, upstream, up = self.upstreams[-1]
        self.assertEqual(target, ("127.0.0.1", 5191))
        self.assertEqual(self.take(up), b"")  # nobody signed on here: withheld (tests/oscar/test_proxy_onepath.py)
        (event,) = self.core.archive.events("im")
        self.assertEqual((event.text, self.core.archive.status(event.id)), ("who am i", "rejected"))

    def test_client_gone_closes_upstream_and_back(self):
        leg, client, upstream, up = self.bos()
        leg.connectionLost(None)
        self.assertTrue(up.disconnecting)
        leg2, client2 = self.client()
        leg2.dataReceived(flap(1, 1, roasted_signon("carol", "secret")))
        _, upstream2, up2 = self.upstreams[-1]
        upstream2.connectionLost(None)
        self.assertTrue(client2.disconnecting)

    def test_client_gone_before_the_upstream_answers(self):
        leg, client = self.client()
        pending = Deferred()
        self.proxy.connect = lambda target, build: pending
        leg.dataReceived(flap(1, 1, roasted_signon("alice", "secret")))
        leg.connectionLost(None)
        upstream, transport = build_upstream(leg)
        self.assertTrue(transport.disconnecting)


def build_upstream(leg):
    """An upstream connection that completes for ``leg`` only now."""
    from gateway_oscar.proxy import UpstreamProtocol

    upstream = UpstreamProtocol(leg)
    transport = StringTransport()
    upstream.makeConnection(transport)
    return upstream, transport


class BackPressureTests(ProxyBase):
    """What the proxy holds for one side is bounded: past it, that side is no longer read."""

    options = {"max_buffer": 65536}

    def test_pipe_pauses_its_source_behind_a_held_slot(self):
        from gateway_oscar.proxy import OrderedPipe

        written, calls = [], []
        pipe = OrderedPipe(written.append, limit=2048, pause=lambda: calls.append("pause"),
                           resume=lambda: calls.append("resume"))
        pipe.push(flap(2, 1, b"a" * 100))
        slot = pipe.hold()
        frames = [flap(2, n, bytes([n]) * 600) for n in range(3, 7)]
        for frame in frames:
            pipe.push(frame)
        self.assertEqual(calls, ["pause"])  # once past 2048 bytes held, not once per frame
        self.assertEqual(len(written), 1)
        pipe.release(slot, flap(2, 2, b"held"))
        self.assertEqual(calls, ["pause", "resume"])
        self.assertEqual(written[1:], [flap(2, 2, b"held")] + frames)
        self.assertEqual(pipe.held, 0)

    def test_client_bytes_before_the_upstream_connects_are_bounded(self):
        waiting = []

        def slow_connect(target, build):
            d = Deferred()
            waiting.append((d, build))
            return d

        self.proxy.connect = slow_connect
        leg, client = self.client()
        leg.dataReceived(flap(1, 1, roasted_signon("alice", "secret")))
        self.assertEqual(client.producerState, "producing")
        chunk = flap(2, 2, snac(1, 0x17, b"x" * 60000))
        leg.dataReceived(chunk)
        self.assertEqual(client.producerState, "producing")
        leg.dataReceived(chunk)
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(self.proxy.paused, 1)
        # The upstream connects: everything held goes there, in order, and the client is read again.
        d, build = waiting[0]
        upstream, transport = build(), StringTransport()
        upstream.makeConnection(transport)
        d.callback(upstream)
        self.assertEqual(transport.value(), flap(1, 1, roasted_signon("alice", "secret")) + chunk + chunk)
        self.assertEqual(client.producerState, "producing")

    def test_max_buffer_is_checked(self):
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, max_buffer=10))
