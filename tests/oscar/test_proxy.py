"""The transparent logging proxy, with the test playing the upstream service byte by byte."""

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from gateway.config import ConfigError
from gateway.hookspecs import hookimpl
from gateway.interfaces import IConnector
from gateway.model import Address, Verdict
from gateway.plugins import Plugins
from gateway.testing import MemoryDirectory, make_core

from gateway_oscar import codec
from gateway_oscar.codec import encode_tlvs, u16
from gateway_oscar.proxy import OscarProxyConnector, ProxyConnection

from tests.oscar.wire import im_body, roasted_signon

PROXY = {"listen": [], "upstream": "127.0.0.1:5191", "bos_address": "127.0.0.1:5195"}


def flap(channel, seq, payload):
    return codec.encode_flap(channel, seq, payload)


def snac(family, subtype, body, request_id=7):
    return codec.encode_snac(family, subtype, body, 0, request_id)


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


class ProxyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.hooks = Hooks()
        plugins = Plugins()
        plugins.register(self.hooks, "test-hooks")
        rules = '[[policy.rule]]\nname = "no-mallory"\naction = "deny"\nkinds = ["im"]\nto = ["aim:mallory"]\n'
        self.core = make_core(rules, clock=self.clock, directory=MemoryDirectory(), plugins=plugins)
        self.proxy = OscarProxyConnector(self.core.api, dict(PROXY))
        self.core.connectors["oscar-proxy"] = self.proxy
        self.core.start_plugins()
        self.upstreams = []
        self.proxy.connect = self.fake_connect

    def fake_connect(self, target, build):
        upstream = build()
        transport = StringTransport()
        self.upstreams.append((target, upstream, transport))
        upstream.makeConnection(transport)
        return succeed(upstream)

    def client(self):
        leg = ProxyConnection(self.proxy)
        transport = StringTransport()
        leg.makeConnection(transport)
        return leg, transport

    def take(self, transport):
        data = transport.value()
        transport.clear()
        return data

    def test_config(self):
        self.assertTrue(verifyObject(IConnector, self.proxy))
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, {"listen": []})
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, upstream="nope"))
        self.assertRaises(ConfigError, OscarProxyConnector, self.core.api, dict(PROXY, bogus=1))
        self.assertTrue(self.proxy.can_reach(Address("aim", "anyone")))
        self.assertFalse(self.proxy.can_reach(Address("aim", "x", "invalid.invalid")))

    def login(self, name=b"alice"):
        """Roasted login through the proxy; returns the rewritten ch4 TLVs the client saw."""
        leg, client = self.client()
        target, upstream, up = self.upstreams[-1]
        self.assertEqual(target, ("127.0.0.1", 5191))
        hello = flap(1, 100, codec.FLAP_VERSION)
        upstream.dataReceived(hello)
        self.assertEqual(self.take(client), hello)  # byte for byte
        signon = flap(1, 1, roasted_signon(name.decode(), "secret"))
        leg.dataReceived(signon)
        self.assertEqual(self.take(up), signon)
        reply = [(1, name), (5, b"127.0.0.1:6001"), (6, b"C" * 32)]
        upstream.dataReceived(flap(4, 101, encode_tlvs(reply)))
        got = codec.parse_flaps(self.take(client))[0][0]
        self.assertEqual((got.channel, got.seq), (4, 101))
        return codec.parse_tlvs(got.payload)

    def bos(self, name=b"alice"):
        tlvs = self.login(name)
        self.assertEqual(tlvs, [(1, name), (5, b"127.0.0.1:5195"), (6, b"C" * 32)])
        leg, client = self.client()
        login_upstream = self.upstreams[-1]
        signon = flap(1, 1, codec.FLAP_VERSION + encode_tlvs([(6, b"C" * 32)]))
        leg.dataReceived(signon)
        target, upstream, up = self.upstreams[-1]
        self.assertEqual(target, ("127.0.0.1", 6001))  # the real BOS, from the remembered route
        self.assertTrue(login_upstream[2].disconnecting)
        login_upstream[1].dataReceived(b"late bytes from the dropped upstream")
        login_upstream[1].connectionLost(None)  # ignored: that upstream is no longer this client's
        self.assertFalse(client.disconnecting)
        upstream.dataReceived(flap(1, 500, codec.FLAP_VERSION))  # its hello is swallowed
        self.assertEqual(self.take(up), signon)
        self.assertEqual(self.take(client), b"")
        self.assertEqual(leg.screen_name, name.decode().lower())
        return leg, client, upstream, up

    def test_login_reply_rewritten_and_bos_routed(self):
        leg, client, upstream, up = self.bos()
        data = flap(2, 501, snac(1, 3, b"\x00\x01\x00\x04"))
        upstream.dataReceived(data)
        self.assertEqual(self.take(client), data)

    def test_bucp_reply_rewritten(self):
        leg, client = self.client()
        _, upstream, up = self.upstreams[-1]
        leg.dataReceived(flap(1, 1, codec.FLAP_VERSION) + flap(2, 2, snac(0x17, 6, encode_tlvs([(1, b"Bob")]), 0)))
        upstream.dataReceived(flap(2, 9, snac(0x17, 3, encode_tlvs([(1, b"Bob"), (5, b"127.0.0.1:6002"), (6, b"K")]), 0)))
        reply = codec.parse_snac(codec.parse_flaps(self.take(client))[0][0].payload)
        self.assertEqual((reply.family, reply.subtype, reply.request_id), (0x17, 3, 0))
        self.assertEqual(codec.parse_tlvs(reply.body), [(1, b"Bob"), (5, b"127.0.0.1:5195"), (6, b"K")])
        self.assertEqual(self.proxy.routes[b"K"], (("127.0.0.1", 6002), b"Bob"))
        self.assertEqual(leg.screen_name, "bob")

    def test_im_out_allowed_is_forwarded_unchanged_and_archived(self):
        leg, client, upstream, up = self.bos()
        data = flap(2, 3, snac(4, 6, im_body(b"Bob", codec.TextPart(0, 0, b"<HTML>hi bob</HTML>"), ack=True)))
        leg.dataReceived(data)
        self.assertEqual(self.take(up), data)
        (event,) = self.core.archive.events("im")
        self.assertEqual((event.sender, event.recipient, event.text), (Address("aim", "alice"), Address("aim", "bob"), "hi bob"))
        self.assertEqual(self.core.archive.status(event.id), "delivered")
        # the same IM arriving at bob's proxied connection is not logged twice
        bob, bob_client, bob_up_proto, bob_up = self.bos(b"bob")
        info = codec.encode_user_info(b"alice", [(1, b"\x00\x10")])
        incoming = flap(2, 9, snac(4, 7, codec.encode_icbm_receive(b"12345678", 1, info, [(2, b"\x05\x01\x00\x01\x01")]), 0x80000001))
        bob_up_proto.dataReceived(incoming)
        self.assertEqual(self.take(bob_client), incoming)
        self.assertEqual(len(self.core.archive.events("im")), 1)

    def test_im_denied_gets_icbm_error_and_is_not_forwarded(self):
        leg, client, upstream, up = self.bos()
        leg.dataReceived(flap(2, 3, snac(4, 6, im_body(b"mallory", codec.TextPart(0, 0, b"psst")), request_id=42)))
        self.assertEqual(self.take(up), b"")
        (error,) = codec.parse_flaps(self.take(client))[0]
        got = codec.parse_snac(error.payload)
        self.assertEqual((got.family, got.subtype, got.request_id, got.body), (4, 1, 42, u16(0x0D)))
        (event,) = self.core.archive.events("im")
        self.assertEqual(self.core.archive.status(event.id), "rejected")

    def test_im_in_is_logged_and_can_be_stopped(self):
        leg, client, upstream, up = self.bos()
        info = codec.encode_user_info(b"carol", [(1, b"\x00\x10")])
        tlv2 = codec.encode_message_fragments([codec.TextPart(0, 0, b"hello alice")])
        incoming = flap(2, 9, snac(4, 7, codec.encode_icbm_receive(b"ABCDEFGH", 1, info, [(2, tlv2)])))
        upstream.dataReceived(incoming)
        self.assertEqual(self.take(client), incoming)
        (event,) = self.core.archive.events("im")
        self.assertEqual((str(event.sender), str(event.recipient), event.text), ("aim:carol", "aim:alice", "hello alice"))
        self.hooks.verdicts.append(Verdict.deny("no", rule="test"))
        upstream.dataReceived(flap(2, 10, snac(4, 7, codec.encode_icbm_receive(b"ZZZZZZZZ", 1, info, [(2, tlv2)]))))
        self.assertEqual(self.take(client), b"")

    def test_order_is_kept_while_an_im_waits_for_policy(self):
        leg, client, upstream, up = self.bos()
        answer = Deferred()
        self.hooks.verdicts.append(answer)
        im = flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"first"))))
        after = flap(2, 4, snac(1, 0x11, b"\x00\x00\x00\x00"))
        leg.dataReceived(im + after)
        self.assertEqual(self.take(up), b"")
        answer.callback(None)
        self.assertEqual(self.take(up), im + after)

    def test_transform_rewrites_the_text(self):
        leg, client, upstream, up = self.bos()
        self.hooks.suffix = " [logged]"
        leg.dataReceived(flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"hi"), ack=True), request_id=5)))
        (frame,) = codec.parse_flaps(self.take(up))[0]
        got = codec.parse_snac(frame.payload)
        icbm = codec.parse_icbm_send(got.body)
        self.assertEqual((got.request_id, icbm.screen_name, icbm.tlv(3)), (5, b"bob", b""))
        self.assertEqual(codec.text_parts(icbm.tlv(2))[0].data, b"<HTML><BODY>hi [logged]</BODY></HTML>")

    def test_what_it_does_not_understand_passes_untouched(self):
        leg, client, upstream, up = self.bos()
        odd = flap(2, 3, snac(4, 6, b"short"))  # not a parsable IM
        leg.dataReceived(odd)
        self.assertEqual(self.take(up), odd)
        garbage = b"\x00\x01garbage that is not FLAP" + flap(2, 4, b"")
        leg.dataReceived(garbage)
        self.assertEqual(self.take(up), garbage)
        leg.dataReceived(b"more")
        self.assertEqual(self.take(up), b"more")
        upstream.dataReceived(b"\xffupstream junk")
        self.assertEqual(self.take(client), b"\xffupstream junk")
        self.assertFalse(client.disconnecting)

    def test_split_frames_and_unknown_user(self):
        leg, client = self.client()
        _, upstream, up = self.upstreams[-1]
        im = flap(2, 3, snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"who am i"))))
        for i in range(len(im)):
            leg.dataReceived(im[i:i + 1])
        self.assertEqual(self.take(up), im)  # nobody signed on here: passed on unlogged
        self.assertEqual(self.core.archive.events("im"), [])

    def test_client_gone_closes_upstream_and_back(self):
        leg, client, upstream, up = self.bos()
        leg.connectionLost(None)
        self.assertTrue(up.disconnecting)
        leg2, client2 = self.client()
        _, upstream2, up2 = self.upstreams[-1]
        upstream2.connectionLost(None)
        self.assertTrue(client2.disconnecting)
