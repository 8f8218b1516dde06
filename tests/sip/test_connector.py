"""The SIP connector on a task.Clock with simulated clients: registrar, MESSAGE, presence, limits, federation."""

import os

from twisted.trial import unittest

from gateway.config import ConfigError
from gateway.model import Address, Message, PresenceStatus, Typing
from gateway.plugins import Plugins
from gateway.testing import ConnectorConformanceMixin
from gateway_sip import adapter
from gateway_sip.codec import parse_name_addr, parse_via
from gateway_sip.connector import DeliveryError, SipConnector
from gateway_sip.pidf import parse_pidf, render_composing, render_pidf

from tests.sip.clients import Setup, TcpClient, UdpClient

PIDF_AWAY = render_pidf("sip:alice@localhost", True, "away", "at lunch")


class Base(unittest.TestCase):
    config = None

    def setUp(self):
        self.s = Setup(self.config)
        self.addCleanup(self.s.stop)

    def registered(self, cls=TcpClient, user="alice", **kwargs):
        client = cls(self.s, user, **kwargs)
        response = client.register()
        self.assertEqual(response.status, 200, response.to_bytes())
        return client


class RegistrarTests(Base):
    def test_challenge_then_binding_and_session(self):
        client = TcpClient(self.s)
        contact = "<sip:alice@0.0.0.0:5060;transport=tcp>"
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost",
                                   headers=[("Contact", contact), ("Expires", "600")]))
        challenge = client.take_one()
        self.assertEqual((challenge.status, challenge.reason), (401, "Unauthorized"))
        offered = challenge.headers.get_all("www-authenticate")
        self.assertEqual([v.split("algorithm=")[1].split(",")[0] for v in offered], ["MD5", "SHA-256"])
        self.assertTrue(all('realm="localhost"' in v and 'qop="auth"' in v for v in offered))
        self.assertIsNotNone(parse_name_addr(challenge.headers.get("to")).tag)
        self.assertEqual(self.s.sessions("alice"), [])

        auth = client.authorization(offered[0], "REGISTER", "sip:localhost")
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost",
                                   headers=[("Contact", contact), ("Expires", "600"), auth]))
        ok = client.take_one()
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.headers.get_all("contact"), [f"{contact};expires=600"])
        via = parse_via(ok.headers.get("via"))
        self.assertEqual((via.param("received"), via.param("rport")), ("127.0.0.1", str(client.port)))
        [session] = self.s.sessions("alice")
        self.assertEqual(session.address, Address("sip", "alice", "localhost"))

    def test_sha256(self):
        self.assertEqual(TcpClient(self.s).register(algorithm="SHA-256").status, 200)

    def test_rfc2069_credentials_as_libpurple_sends_them(self):
        self.assertEqual(TcpClient(self.s).register(qop=False).status, 200)

    def test_wrong_password_and_unknown_user(self):
        response = TcpClient(self.s).register(password="wrong")
        self.assertEqual(response.status, 403)
        self.assertIn("wrong user name or password", response.reason)
        self.assertEqual(TcpClient(self.s, "mallory").register().status, 403)
        self.assertEqual(self.s.sessions("alice"), [])

    def test_stale_nonce(self):
        client = UdpClient(self.s)  # (an idle TCP connection would be closed by now)
        headers = [("Contact", "<sip:alice@h>"), ("Expires", "300")]
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers))
        challenge = client.take_one().headers.get("www-authenticate")
        self.s.clock.advance(301)
        auth = client.authorization(challenge, "REGISTER", "sip:localhost")
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers + [auth]))
        again = client.take_one()
        self.assertEqual(again.status, 401)
        self.assertIn("stale=true", again.headers.get("www-authenticate"))
        # A stale nonce with a wrong password is not "stale": no hint that the password was right.
        auth = client.authorization(challenge, "REGISTER", "sip:localhost", password="nope")
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers + [auth]))
        self.assertEqual(client.take_one().status, 403)

    def test_replayed_nonce_count(self):
        client = TcpClient(self.s)
        headers = [("Contact", "<sip:alice@h>"), ("Expires", "300")]
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers))
        challenge = client.take_one().headers.get("www-authenticate")
        auth = client.authorization(challenge, "REGISTER", "sip:localhost")
        client.send(client.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers + [auth]))
        self.assertEqual(client.take_one().status, 200)
        other = TcpClient(self.s)
        other.send(other.request("REGISTER", "sip:localhost", to="sip:alice@localhost", headers=headers + [auth]))
        self.assertEqual(other.take_one().status, 403)

    def test_expiry_and_refresh(self):
        client = TcpClient(self.s)
        self.assertEqual(client.register(expires=100).status, 200)
        self.s.clock.advance(90)
        self.assertEqual(client.register(expires=100).status, 200)  # refresh: same binding, same session
        [session] = self.s.sessions("alice")
        self.s.clock.advance(90)
        self.assertEqual(self.s.sessions("alice"), [session])
        self.s.clock.advance(10)
        self.assertEqual(self.s.sessions("alice"), [])

    def test_unregister_and_wildcard(self):
        client = TcpClient(self.s)
        client.register()
        self.assertEqual(client.register(expires=0).status, 200)
        self.assertEqual(self.s.sessions("alice"), [])
        client.register(contact="<sip:alice@one>")
        client.register(contact="<sip:alice@two>")
        self.assertEqual(len(self.s.sessions("alice")), 2)
        response = client.register(contact="*", expires=0)
        self.assertEqual((response.status, self.s.sessions("alice")), (200, []))

    def test_interval_too_brief(self):
        response = TcpClient(self.s).register(expires=10)
        self.assertEqual(response.status, 423)
        self.assertEqual(response.headers.get("min-expires"), "60")

    def test_long_expiry_is_capped(self):
        response = TcpClient(self.s).register(expires=999999)
        self.assertTrue(response.headers.get("contact").endswith(";expires=3600"))

    def test_connection_lost_logs_out(self):
        client = self.registered()
        self.assertEqual(len(self.s.sessions("alice")), 1)
        client.close()
        self.assertEqual(self.s.sessions("alice"), [])

    def test_idle_unregistered_connection_closes_registered_stays(self):
        idle = TcpClient(self.s)
        client = self.registered()
        self.s.clock.advance(self.s.sip.idle_timeout)
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(client.transport.disconnecting)

    def test_a_node_taking_no_logins_refuses_new_registrations_and_ends_its_own(self):
        alice = self.registered(UdpClient)
        [session] = self.s.sessions("alice")
        self.s.core.admission = lambda: ("node-draining", "this node is being drained")
        response = UdpClient(self.s, "bob").register()
        self.assertEqual((response.status, response.headers.get("retry-after")), (503, "60"))
        self.assertIn("this node is being drained", response.headers.get("warning"))
        self.assertEqual(self.s.sessions("bob"), [])
        # alice's registration still refreshes; ended by the drain, her next refresh is refused too.
        self.assertEqual(alice.register().status, 200)
        self.s.sip.disconnect(session, "this node is being drained")
        self.assertEqual(self.s.sessions("alice"), [])
        self.assertEqual(alice.register().status, 503)
        self.s.core.admission = lambda: None
        self.assertEqual(alice.register().status, 200)

    def test_register_for_another_domain(self):
        client = TcpClient(self.s)
        client.send(client.request("REGISTER", "sip:example.org", to="sip:alice@example.org",
                                   headers=[("Contact", "<sip:a@h>")]))
        self.assertEqual(client.take_one().status, 404)


class MessageTests(Base):
    def message(self, client, to, text=b"hi", content_type="text/plain", **kwargs):
        client.send(client.request("MESSAGE", f"sip:{to}@localhost", headers=[("Content-Type", content_type)],
                                   body=text, **kwargs))
        return client.take_one()

    def test_delivered_to_another_network(self):
        bob = self.s.memory_login("bob")
        alice = self.registered()
        response = self.message(alice, "bob", "ça va? 世界".encode())
        self.assertEqual((response.status, response.reason), (200, "OK"))
        [event] = self.s.memory.received(bob, "im")
        self.assertEqual((str(event.sender), event.text, event.html), ("mem:alice", "ça va? 世界", None))

    def test_html(self):
        bob = self.s.memory_login("bob")
        alice = self.registered()
        self.message(alice, "bob", b"<b>bold</b><br>line &amp; more", "text/html; charset=utf-8")
        [event] = self.s.memory.received(bob, "im")
        self.assertEqual((event.text, event.html), ("bold\nline & more", "<b>bold</b><br>line &amp; more"))

    def test_is_composing(self):
        bob = self.s.memory_login("bob")
        alice = self.registered()
        response = self.message(alice, "bob", render_composing(True), "application/im-iscomposing+xml")
        self.assertEqual(response.status, 200)
        [event] = self.s.memory.received(bob, "typing")
        self.assertTrue(event.active)
        self.assertEqual(self.message(alice, "carol", render_composing(True), "application/im-iscomposing+xml").status, 200)

    def test_outcomes(self):
        alice = self.registered()
        queued = self.message(alice, "carol", b"later")
        self.assertEqual((queued.status, queued.reason), (202, "Accepted"))
        self.assertEqual(self.message(alice, "nobody").status, 404)
        bob = self.registered(user="bob")
        denied = self.message(bob, "carol", b"no", from_user="bob")
        self.assertEqual(denied.status, 403)
        self.assertEqual(denied.headers.get("reason"),
                         'SIP;cause=403;text="bob may not write to carol (rule no-bob-to-carol)"')
        self.assertEqual(denied.headers.get("warning"),
                         '399 gateway "bob may not write to carol (rule no-bob-to-carol)"')
        statuses = sorted(status for event, _, status in self.s.archived().values() if event.kind == "im")
        self.assertEqual(statuses, ["queued", "rejected", "rejected"])

    def test_size_and_type_limits(self):
        alice = self.registered()
        self.assertEqual(self.message(alice, "bob", b"x" * 9000).status, 413)
        response = self.message(alice, "bob", b"\x00", "application/octet-stream")
        self.assertEqual(response.status, 415)
        self.assertIn("text/plain", response.headers.get("accept"))
        self.assertEqual(self.message(alice, "bob", b"\xff\xfe").status, 400)

    def test_unregistered_flow_needs_digest(self):
        bob = self.s.memory_login("bob")
        client = UdpClient(self.s)
        request_uri = "sip:bob@localhost"
        client.send(client.request("MESSAGE", request_uri, headers=[("Content-Type", "text/plain")], body=b"hi"))
        challenge = client.take_one()
        self.assertEqual(challenge.status, 407)
        auth = client.authorization(challenge.headers.get("proxy-authenticate"), "MESSAGE", request_uri,
                                    header="Proxy-Authorization")
        client.send(client.request("MESSAGE", request_uri, headers=[("Content-Type", "text/plain"), auth],
                                   body=b"hi"))
        self.assertEqual(client.take_one().status, 200)
        self.assertEqual(len(self.s.memory.received(bob, "im")), 1)
        # alice's credentials do not make a request from carol.
        auth = client.authorization(challenge.headers.get("proxy-authenticate"), "MESSAGE", request_uri,
                                    header="Proxy-Authorization", nc=2)
        client.send(client.request("MESSAGE", request_uri, from_user="carol", headers=[auth], body=b"x"))
        response = client.take_one()
        self.assertEqual(response.status, 403)
        self.assertIn("not for this address", response.reason)

    def test_foreign_domain_sender_refused(self):
        client = UdpClient(self.s)
        raw = client.request("MESSAGE", "sip:bob@localhost", body=b"hi").replace(
            b"From: <sip:alice@localhost>", b"From: <sip:eve@evil.example>")
        client.send(raw)
        response = client.take_one()
        self.assertEqual(response.status, 403)
        self.assertIn("neither ours nor a federation peer", response.headers.get("warning"))

    def udp_authorized(self, client, uri, body, nc=1):
        """A MESSAGE over UDP the way a client answers the digest challenge: the raw request and its answer."""
        client.send(client.request("MESSAGE", uri, body=body))
        challenge = client.take_one()
        self.assertEqual(challenge.status, 407)
        offered = challenge.headers.get_all("proxy-authenticate")[0]
        auth = client.authorization(offered, "MESSAGE", uri, header="Proxy-Authorization", nc=nc)
        raw = client.request("MESSAGE", uri, body=body, headers=[auth])
        return raw, offered

    def test_a_registered_ip_and_port_proves_nothing_over_udp(self):
        bob = self.s.memory_login("bob")
        alice = self.registered(UdpClient)
        # Anyone can send from alice's address and port: without digest, nothing is delivered.
        alice.send(alice.request("MESSAGE", "sip:bob@localhost", body=b"forged?"))
        self.assertEqual(alice.take_one().status, 407)
        self.assertEqual(self.s.memory.received(bob, "im"), [])
        raw, _ = self.udp_authorized(alice, "sip:bob@localhost", b"really alice")
        alice.send(raw)
        self.assertEqual(alice.take_one().status, 200)
        self.assertEqual([e.text for e in self.s.memory.received(bob, "im")], ["really alice"])

    def test_a_replayed_authorization_is_refused(self):
        bob = self.s.memory_login("bob")
        alice = self.registered(UdpClient)
        raw, offered = self.udp_authorized(alice, "sip:bob@localhost", b"once only")
        alice.send(raw)
        self.assertEqual(alice.take_one().status, 200)
        # The same credentials (nonce and count) on a new request: a replay.
        auth = alice.authorization(offered, "MESSAGE", "sip:bob@localhost", header="Proxy-Authorization", nc=1)
        alice.send(alice.request("MESSAGE", "sip:bob@localhost", body=b"once only", headers=[auth]))
        self.assertIn(alice.take_one().status, (401, 403, 407))
        self.assertEqual(len(self.s.memory.received(bob, "im")), 1)

    def test_retransmission_is_delivered_once(self):
        bob = self.s.memory_login("bob")
        alice = self.registered(UdpClient)
        raw, _ = self.udp_authorized(alice, "sip:bob@localhost", b"once")
        alice.send(raw)
        alice.send(raw)
        first, second = alice.take()
        self.assertEqual(first.to_bytes(), second.to_bytes())
        self.assertEqual(len(self.s.memory.received(bob, "im")), 1)

    def test_to_a_registered_client_over_tcp(self):
        alice = self.registered()
        bob = self.s.memory_login("bob")
        outcomes = []
        self.s.core.api.submit(Message("mem:bob", "mem:alice", "hello alice ü")).addCallback(outcomes.append)
        message = alice.take_one()
        self.assertEqual((message.method, message.uri), ("MESSAGE", "sip:alice@0.0.0.0:5060;transport=tcp"))
        self.assertEqual(parse_name_addr(message.headers.get("from")).uri, "sip:bob@localhost")
        self.assertEqual(parse_name_addr(message.headers.get("to")).uri, "sip:alice@localhost")
        self.assertEqual(message.headers.get("content-type"), "text/plain;charset=UTF-8")
        self.assertEqual(message.body, "hello alice ü".encode())
        self.assertEqual(parse_via(message.headers.get("via")).transport, "TCP")
        self.assertEqual(outcomes, [])  # waits for the client's answer
        alice.send(alice.response(message, 200))
        self.assertTrue(outcomes[0].delivered)
        self.assertIsNotNone(bob)

    def test_client_refuses_so_message_is_held(self):
        alice = self.registered()
        outcomes = []
        self.s.core.api.submit(Message("mem:bob", "sip:alice@localhost", "x")).addCallback(outcomes.append)
        alice.send(alice.response(alice.take_one(), 480, "Temporarily Unavailable"))
        self.assertTrue(outcomes[0].queued)
        [logged] = self.flushLoggedErrors(DeliveryError)  # the bus logs each failed delivery
        self.assertIn("answered 480", logged.getErrorMessage())

    def test_typing_to_client(self):
        alice = self.registered()
        alice.auto_answer = True
        self.s.core.api.submit(Typing("mem:bob", "sip:alice@localhost", True))
        [request] = alice.answered
        self.assertEqual(request.headers.get("content-type"), "application/im-iscomposing+xml")
        self.assertIn(b"<state>active</state>", request.body)

    def test_udp_retransmits_then_gives_up_and_drops_the_binding(self):
        alice = self.registered(UdpClient)
        outcomes = []
        self.s.core.api.submit(Message("mem:bob", "sip:alice@localhost", "anyone?")).addCallback(outcomes.append)
        self.s.clock.pump([0.5, 1.0, 2.0])
        self.assertEqual(len(alice.take()), 4)  # sent, then Timer E at 0.5, 1.5, 3.5
        self.s.clock.advance(4.5)  # delivery_timeout (8 s): the sender hears it is held
        self.assertTrue(outcomes[0].queued)
        self.assertEqual(len(self.flushLoggedErrors(DeliveryError)), 1)
        self.assertEqual(len(self.s.sessions("alice")), 1)
        self.s.clock.pump([4] * 7)  # Timer F at 32 s: the contact is gone
        self.assertEqual(self.s.sessions("alice"), [])

    def test_held_messages_delivered_at_registration(self):
        self.s.core.api.submit(Message("mem:bob", "sip:alice@localhost", "while you were out"))
        alice = TcpClient(self.s)
        alice.auto_answer = True
        self.assertEqual(alice.register().status, 200)
        self.assertEqual([r.body for r in alice.answered if r.method == "MESSAGE"], [b"while you were out"])


class MethodTests(Base):
    def test_invite_405_with_allow_and_timer_g_until_ack(self):
        client = UdpClient(self.s)
        invite = client.request("INVITE", "sip:bob@localhost", branch="z9hG4bKinv")
        client.send(invite)
        response = client.take_one()
        self.assertEqual(response.status, 405)
        self.assertIn("MESSAGE", response.headers.get("allow"))
        self.assertNotIn("INVITE", response.headers.get("allow"))
        self.s.clock.advance(0.5)
        self.assertEqual(len(client.take()), 1)  # retransmitted until ACK
        client.send(client.request("ACK", "sip:bob@localhost", branch="z9hG4bKinv", cseq=int(response.cseq()[0])))
        self.s.clock.advance(10)
        self.assertEqual(client.take(), [])

    SDP = ("v=0\r\no=alice 2890844526 2890844527 IN IP4 host.example\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           "m=message 7654 TCP/MSRP *\r\ni=the quarterly plans\r\na=sendonly\r\na=accept-types:message/cpim\r\n"
           'a=file-selector:name:"plans Q3.pdf" type:application/pdf size:32349 hash:sha-1:72:24:5F\r\n'
           "a=file-transfer-id:vBnG916bdberum2fFEABR1FR3ExZMUrd\r\n"
           "a=path:msrp://192.0.2.1:7654/jshA7weztas;tcp\r\n").encode()

    def offer(self, client, to, body=None):
        client.send(client.request("INVITE", f"sip:{to}@localhost", branch=client.new_branch(),
                                   headers=[("Content-Type", "application/sdp"),
                                            ("Contact", f"<sip:{client.user}@0.0.0.0:5060;transport=tcp>")],
                                   body=self.SDP if body is None else body))
        return client.take_one()

    def test_a_file_offer_invite_is_decided_refused_and_archived(self):
        bob = self.registered(user="bob")
        response = self.offer(bob, "carol")
        self.assertEqual(response.status, 403)
        self.assertIn("bob may not write to carol", response.headers.get("warning"))
        [offer] = self.s.core.archive.events("file")
        self.assertEqual((str(offer.sender), str(offer.recipient), offer.name, offer.size, offer.text),
                         ("sip:bob@localhost", "sip:carol@localhost", "plans Q3.pdf", 32349, "the quarterly plans"))
        self.assertEqual(self.s.core.archive.status(offer.id), "rejected")

    def test_an_allowed_file_offer_is_shown_and_answered_488(self):
        alice = self.registered()
        carol = self.s.memory_login("carol")
        response = self.offer(alice, "carol")
        self.assertEqual(response.status, 488)
        self.assertIn("carries no files", response.headers.get("warning"))
        [shown] = self.s.memory.received(carol, "file")
        self.assertEqual((shown.name, shown.size), ("plans Q3.pdf", 32349))

    def test_a_file_offer_over_udp_is_challenged_first(self):
        client = UdpClient(self.s, "bob")
        response = self.offer(client, "carol")
        self.assertEqual(response.status, 407)
        self.assertEqual(self.s.core.archive.events("file"), [])

    def test_a_pull_offer_asks_for_the_file(self):
        alice = self.registered()
        self.s.memory_login("carol")
        self.offer(alice, "carol", self.SDP.replace(b"a=sendonly", b"a=recvonly"))
        [offer] = self.s.core.archive.events("file")
        self.assertEqual(offer.text, "asks for plans Q3.pdf. the quarterly plans")

    def test_an_invite_for_a_session_is_405_and_unrecorded(self):
        alice = self.registered()
        audio = self.SDP.replace(b"m=message 7654 TCP/MSRP *", b"m=audio 49170 RTP/AVP 0")
        self.assertEqual(self.offer(alice, "carol", audio).status, 405)
        chat = b"\r\n".join(line for line in self.SDP.split(b"\r\n") if not line.startswith(b"a=file-selector"))
        self.assertEqual(self.offer(alice, "carol", chat).status, 405)
        self.assertEqual(self.s.core.archive.events("file"), [])

    def test_file_selector_parsing(self):
        from gateway_sip.codec import Headers

        headers = Headers()
        headers.set("content-type", "application/sdp")
        files = adapter.sdp_files(headers, self.SDP + b'm=message 9 TCP/MSRP *\r\na=file-selector:size:12 '
                                                      b'name:"a \\"quoted\\" name.txt"\r\na=recvonly\r\n')
        self.assertEqual(files, [adapter.SdpFile("plans Q3.pdf", 32349, "application/pdf", "the quarterly plans"),
                                 adapter.SdpFile('a "quoted" name.txt', 12, pull=True)])
        headers.set("content-type", "text/plain")
        self.assertEqual(adapter.sdp_files(headers, self.SDP), [])

    def test_unknown_method_501_and_options(self):
        client = UdpClient(self.s)
        client.send(client.request("FROBNICATE", "sip:bob@localhost"))
        self.assertEqual(client.take_one().status, 501)
        client.send(client.request("OPTIONS", "sip:localhost"))
        response = client.take_one()
        self.assertEqual(response.status, 200)
        self.assertIn("SUBSCRIBE", response.headers.get("allow"))

    def test_bye_and_cancel_481(self):
        client = UdpClient(self.s)
        for method in ("BYE", "CANCEL"):
            client.send(client.request(method, "sip:bob@localhost"))
            self.assertEqual(client.take_one().status, 481)


class BadInputTests(Base):
    def test_malformed_datagram_gets_400_with_the_reason_others_unaffected(self):
        bob = self.s.memory_login("bob")
        alice = self.registered(UdpClient)
        bad = UdpClient(self.s, "mallory")
        bad.send(bad.request("MESSAGE", "sip:bob@localhost").replace(b"CSeq: 1 MESSAGE", b"CSeq: one MESSAGE"))
        response = bad.take_one()
        self.assertEqual(response.status, 400)
        self.assertIn("bad CSeq", response.reason)
        bad.send(bad.request("MESSAGE", "sip:bob@localhost").replace(b"Max-Forwards: 70", b"garbage line"))
        self.assertIn("not a header field", bad.take_one().headers.get("warning"))
        for garbage in (b"\x00\xff" * 50, b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
            bad.send(garbage)
        self.assertEqual(bad.take(), [])
        raw, _ = MessageTests.udp_authorized(self, alice, "sip:bob@localhost", b"still fine")
        alice.send(raw)
        self.assertEqual(alice.take_one().status, 200)
        self.assertEqual(len(self.s.memory.received(bob, "im")), 1)

    def test_oversized_datagram_413(self):
        self.s.udp.max_size = 2000
        client = UdpClient(self.s)
        client.send(client.request("MESSAGE", "sip:bob@localhost", body=b"x" * 3000))
        self.assertEqual(client.take_one().status, 413)

    def test_broken_tcp_framing_closes_only_that_connection(self):
        alice = self.registered()
        bad = TcpClient(self.s, "mallory")
        bad.send(b"MESSAGE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
        self.assertTrue(bad.transport.disconnecting)
        self.assertFalse(alice.transport.disconnecting)
        self.assertEqual(len(self.s.sessions("alice")), 1)

    def test_bad_message_on_tcp_answered_connection_stays(self):
        client = TcpClient(self.s)
        client.send(client.request("MESSAGE", "sip:bob@localhost").replace(b"From: <sip:alice@localhost>;tag",
                                                                            b"From: <sip:alice@localhost;tag"))
        self.assertEqual(client.take_one().status, 400)
        self.assertFalse(client.transport.disconnecting)

    def test_keepalive_ping_pong(self):
        client = TcpClient(self.s)
        client.send(b"\r\n\r\n")
        self.assertEqual(client.transport.value(), b"\r\n")

    def test_rate_limit_per_source(self):
        s = Setup({"rate": 5.0, "burst": 5.0})
        self.addCleanup(s.stop)
        flood, calm = UdpClient(s, "mallory"), UdpClient(s, "carol")
        for _ in range(8):
            flood.send(flood.request("OPTIONS", "sip:localhost"))
        statuses = [m.status for m in flood.take()]
        self.assertEqual(statuses, [200] * 5 + [503] * 3)
        calm.send(calm.request("OPTIONS", "sip:localhost"))
        self.assertEqual(calm.take_one().status, 200)
        s.clock.advance(1)
        flood.send(flood.request("OPTIONS", "sip:localhost"))
        self.assertEqual(flood.take_one().status, 200)


class PresenceTests(Base):
    def subscribe(self, client, target="bob", expires=600, event="presence"):
        client.send(client.request("SUBSCRIBE", f"sip:{target}@localhost", headers=[
            ("Event", event), ("Expires", str(expires)), ("Accept", "application/pidf+xml"),
            ("Contact", f"<sip:{client.user}@0.0.0.0:5060;transport=tcp>")]))
        return client.take()

    def answer_all(self, client):
        requests = client.take()
        for request in requests:
            client.send(client.response(request, 200))
        return requests

    def test_subscribe_notify_changes_and_expiry(self):
        bob = self.s.memory_login("bob")
        alice = self.registered()
        response, notify = self.subscribe(alice)
        self.assertEqual((response.status, response.headers.get("expires")), (200, "600"))
        self.assertEqual(notify.method, "NOTIFY")
        self.assertEqual(notify.uri, "sip:alice@0.0.0.0:5060;transport=tcp")
        self.assertEqual(notify.headers.get("subscription-state"), "active;expires=600")
        self.assertEqual(notify.call_id, alice.call_id)
        self.assertEqual(parse_name_addr(notify.headers.get("from")).tag, parse_name_addr(response.headers.get("to")).tag)
        self.assertTrue(parse_pidf(notify.body).open)
        alice.send(alice.response(notify, 200))

        self.s.core.api.set_presence(bob, PresenceStatus.AWAY, "at lunch")
        [change] = self.answer_all(alice)
        doc = parse_pidf(change.body)
        self.assertEqual((doc.open, doc.activity, doc.note), (True, "away", "at lunch"))
        self.s.memory.logout(bob)
        [gone] = self.answer_all(alice)
        self.assertFalse(parse_pidf(gone.body).open)

        self.s.clock.advance(600)
        [ended] = self.answer_all(alice)
        self.assertEqual(ended.headers.get("subscription-state"), "terminated;reason=timeout")
        self.assertEqual((self.s.sip.subscriptions, self.s.sip._by_pair, self.s.sip._by_target, self.s.sip._watching),
                         ({}, {}, {}, {}))

    def test_subscribe_adds_the_contact(self):
        alice = self.registered()
        self.subscribe(alice, "carol")
        contacts = []
        self.s.core.api.contacts("alice").addCallback(contacts.extend)
        self.assertEqual([str(c.address) for c in contacts], ["sip:carol@localhost"])

    def test_refresh_and_unsubscribe(self):
        self.s.memory_login("bob")
        alice = self.registered()
        response, notify = self.subscribe(alice)
        alice.send(alice.response(notify, 200))
        to_tag = parse_name_addr(response.headers.get("to")).tag
        alice.send(alice.request("SUBSCRIBE", "sip:bob@localhost", to_tag=to_tag, headers=[
            ("Event", "presence"), ("Expires", "0")]))
        ok, final = alice.take()
        self.assertEqual(ok.status, 200)
        self.assertEqual(final.headers.get("subscription-state"), "terminated;reason=timeout")
        alice.send(alice.request("SUBSCRIBE", "sip:bob@localhost", to_tag=to_tag, headers=[("Event", "presence")]))
        self.assertEqual(alice.take_one().status, 481)

    def test_policy_withholds_presence(self):
        s = Setup(policy='[[policy.rule]]\nname = "hide-bob"\naction = "deny"\nfrom = ["user:bob"]\n'
                         'to = ["user:alice"]\nkinds = ["presence"]\n')
        self.addCleanup(s.stop)
        s.memory_login("bob")
        alice = TcpClient(s)
        alice.register()
        _, notify = self.subscribe(alice)
        self.assertFalse(parse_pidf(notify.body).open)

    def test_bad_event_package(self):
        alice = self.registered()
        [response] = self.subscribe(alice, event="dialog")
        self.assertEqual((response.status, response.headers.get("allow-events")), (489, "presence"))

    def test_publish(self):
        bob = self.s.memory_login("bob")
        self.s.directory.set_contacts("bob", ["sip:alice@localhost"])
        alice = self.registered()
        self.s.memory.delivered.clear()
        alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("Expires", "600"), ("Content-Type", "application/pidf+xml")], body=PIDF_AWAY))
        response = alice.take_one()
        self.assertEqual((response.status, response.headers.get("expires")), (200, "600"))
        etag = response.headers.get("sip-etag")
        [seen] = self.s.memory.received(bob, "presence")
        self.assertEqual((str(seen.sender), seen.status, seen.note), ("mem:alice", PresenceStatus.AWAY, "at lunch"))

        alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("SIP-If-Match", etag), ("Expires", "600")]))
        self.assertEqual(alice.take_one().status, 200)
        alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("SIP-If-Match", "nope")]))
        self.assertEqual(alice.take_one().status, 412)
        alice.send(alice.request("PUBLISH", "sip:bob@localhost", headers=[
            ("Event", "presence"), ("Content-Type", "application/pidf+xml")], body=PIDF_AWAY))
        self.assertEqual(alice.take_one().status, 403)
        alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("Content-Type", "application/pidf+xml")], body=b"<presence"))
        self.assertEqual(alice.take_one().status, 400)
        alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("SIP-If-Match", etag), ("Expires", "100")]))
        self.assertEqual(alice.take_one().status, 200)
        self.s.clock.advance(100)  # the publication expired: back to available
        self.assertEqual(self.s.memory.received(bob, "presence")[-1].status, PresenceStatus.AVAILABLE)


class UnregisteredWatcherTests(Base):
    """RFC 6665: a subscription is its own dialog; every change reaches it, registered or not, once."""

    def subscribe(self, client, target="bob", authenticate=True):
        uri = f"sip:{target}@localhost"
        headers = [("Event", "presence"), ("Expires", "600"), ("Accept", "application/pidf+xml"),
                   ("Contact", f"<sip:{client.user}@127.0.0.1:{client.port}>")]
        call_id = f"sub-{target}-{client.port}"
        client.send(client.request("SUBSCRIBE", uri, headers=headers, call_id=call_id))
        if authenticate:
            challenge = client.take_one()
            self.assertEqual(challenge.status, 407)
            auth = client.authorization(challenge.headers.get("proxy-authenticate"), "SUBSCRIBE", uri,
                                        header="Proxy-Authorization")
            client.send(client.request("SUBSCRIBE", uri, headers=headers + [auth], call_id=call_id))
        ok, notify = client.take()
        self.assertEqual((ok.status, notify.method), (200, "NOTIFY"))
        client.send(client.response(notify, 200))
        return notify

    def notifies(self, client):
        """The NOTIFYs that arrived (answered 200), as (open, activity)."""
        seen = []
        for request in client.take():
            self.assertEqual(request.method, "NOTIFY")
            client.send(client.response(request, 200))
            doc = parse_pidf(request.body)
            seen.append((doc.open, doc.activity))
        return seen

    def presence_rows(self, recipient):
        return [e for e in self.s.core.archive.events("presence") if e.recipient == Address.parse(recipient)]

    def test_watcher_without_registration_hears_every_change(self):
        bob = self.s.memory_login("bob")
        alice = UdpClient(self.s)  # never registers: a SUBSCRIBE with digest is all it does
        first = self.subscribe(alice)
        self.assertTrue(parse_pidf(first.body).open)
        self.s.core.api.set_presence(bob, PresenceStatus.AWAY, "at lunch")
        self.assertEqual(self.notifies(alice), [(True, "away")])
        self.s.core.api.set_presence(bob, PresenceStatus.AWAY, "at lunch")  # no change: no NOTIFY
        self.assertEqual(self.notifies(alice), [])
        self.s.memory.logout(bob)
        self.assertEqual(self.notifies(alice), [(False, "")])
        bob = self.s.memory_login("bob")
        self.assertEqual(self.notifies(alice), [(True, "")])
        # Each change went through the path: one archived presence per NOTIFY (and the first),
        # recorded as delivered (the NOTIFY went out), not as held for someone offline.
        rows = self.presence_rows("sip:alice@localhost")
        self.assertEqual(len(rows), 4)
        self.assertEqual({self.s.core.archive.status(e.id) for e in rows}, {"delivered"})

    def test_registered_watcher_with_the_contact_gets_each_change_once(self):
        bob = self.s.memory_login("bob")
        alice = self.registered()
        self.subscribe(alice, authenticate=False)  # from its registration's connection: no challenge
        self.s.core.api.set_presence(bob, PresenceStatus.BUSY, "")
        self.assertEqual(self.notifies(alice), [(True, "busy")])
        self.s.memory.logout(bob)
        self.assertEqual(self.notifies(alice), [(False, "")])
        self.assertEqual(len(self.presence_rows("sip:alice@localhost")), 3)

    def test_watcher_on_another_network_is_not_sent_what_it_did_not_ask_for(self):
        s = Setup({"subscribe_adds_contact": False})
        self.addCleanup(s.stop)
        self.s = s
        bob = s.memory_login("bob")
        alice_elsewhere = s.memory_login("alice")  # alice is online on the other network, not on SIP
        s.memory.delivered.clear()
        alice = UdpClient(s)
        self.subscribe(alice)
        s.core.api.set_presence(bob, PresenceStatus.AWAY, "")
        self.assertEqual(self.notifies(alice), [(True, "away")])
        self.assertEqual(s.memory.received(alice_elsewhere, "presence"), [])

    def test_registered_watcher_without_the_contact(self):
        s = Setup({"subscribe_adds_contact": False})
        self.addCleanup(s.stop)
        self.s = s
        bob = s.memory_login("bob")
        alice = TcpClient(s)
        self.assertEqual(alice.register().status, 200)
        self.subscribe(alice, authenticate=False)
        s.core.api.set_presence(bob, PresenceStatus.AWAY, "")
        self.assertEqual(self.notifies(alice), [(True, "away")])

    def test_policy_still_decides_for_unregistered_watchers(self):
        s = Setup(policy='[[policy.rule]]\nname = "hide-bob"\naction = "deny"\nfrom = ["user:bob"]\n'
                         'to = ["user:alice"]\nkinds = ["presence"]\n')
        self.addCleanup(s.stop)
        self.s = s
        bob = s.memory_login("bob")
        alice = UdpClient(s)
        self.assertFalse(parse_pidf(self.subscribe(alice).body).open)
        s.core.api.set_presence(bob, PresenceStatus.BUSY, "")
        self.assertEqual(self.notifies(alice), [])  # still closed: nothing new to say
        carol = UdpClient(s, "carol")
        self.assertTrue(parse_pidf(self.subscribe(carol).body).open)  # carol may see bob
        s.memory.logout(bob)
        self.assertEqual((self.notifies(alice), self.notifies(carol)), ([], [(False, "")]))

    def test_a_refresh_from_elsewhere_must_prove_it_is_the_subscriber(self):
        self.s.memory_login("bob")
        alice = UdpClient(self.s)
        local_tag = self.subscribe(alice).from_().tag
        uri = "sip:bob@localhost"
        headers = [("Event", "presence"), ("Expires", "300")]
        call_id = f"sub-bob-{alice.port}"

        def refresh(client, from_user="alice", auth=()):
            client.send(client.request("SUBSCRIBE", uri, headers=headers + list(auth), call_id=call_id,
                                       from_user=from_user, tag=alice.tag, to_tag=local_tag))
            return client.take()

        # The dialog's own flow: no credentials needed (and a NOTIFY follows the 200).
        self.assertEqual(refresh(alice)[0].status, 200)
        # Another port of the same host: prove it.
        other = UdpClient(self.s)
        (challenge,) = refresh(other)
        self.assertEqual(challenge.status, 407)
        auth = other.authorization(challenge.headers.get("proxy-authenticate"), "SUBSCRIBE", uri,
                                   header="Proxy-Authorization")
        self.assertEqual(refresh(other, auth=[auth])[0].status, 200)
        # Someone else, with their own good credentials, naming alice's dialog: refused.
        carol = UdpClient(self.s, "carol")
        (challenge,) = refresh(carol, "carol")
        auth = carol.authorization(challenge.headers.get("proxy-authenticate"), "SUBSCRIBE", uri,
                                   header="Proxy-Authorization")
        (refused,) = refresh(carol, "carol", [auth])
        self.assertEqual(refused.status, 403)

    def test_foreign_watchers_names_only_peer_watchers(self):
        self.s.memory_login("bob")
        self.subscribe(UdpClient(self.s))
        self.assertEqual(self.s.sip.foreign_watchers(self.s.people["bob"]), [])


# The federation tests below believe the peer's address (trust = "source"); PeerSecretTests signs its requests.
PEERS = {"peers": {"kam.test": {"host": "127.0.0.2", "port": 5070, "transport": "udp", "trust": "source"}},
         "udp": ["127.0.0.1:5060"]}


class PeerBase(Base):
    """dave@kam.test's traffic, as the peer at 127.0.0.2:5070 relays it."""

    config = PEERS

    def peer(self):
        return UdpClient(self.s, "dave", port=5070, host="127.0.0.2")

    def from_peer(self, client, method, uri, body=b"", headers=(), to=None):
        raw = client.request(method, uri, body=body, headers=headers, to=to)
        return raw.replace(b"From: <sip:dave@localhost>", b"From: <sip:dave@kam.test>")


class FederationTests(PeerBase):

    def test_can_reach_peer_domains_only(self):
        self.assertTrue(self.s.sip.can_reach(Address("sip", "x", "kam.test")))
        self.assertFalse(self.s.sip.can_reach(Address("sip", "x", "other.test")))

    def test_message_from_the_peer_accepted_from_its_address_only(self):
        bob = self.s.memory_login("bob")
        peer = self.peer()
        peer.send(self.from_peer(peer, "MESSAGE", "sip:bob@localhost", b"from kamailio"))
        self.assertEqual(peer.take_one().status, 200)
        [event] = self.s.memory.received(bob, "im")
        self.assertEqual((event.text, str(event.sender)), ("from kamailio", "mem:sip.dave%kam.test"))
        resolved = []
        self.s.core.api.resolve_alias(event.sender).addCallback(resolved.append)
        self.assertEqual(resolved, [Address("sip", "dave", "kam.test")])
        impostor = UdpClient(self.s, "dave", port=5070, host="127.0.0.9")
        impostor.send(self.from_peer(impostor, "MESSAGE", "sip:bob@localhost", b"spoofed"))
        response = impostor.take_one()
        self.assertEqual(response.status, 403)
        self.assertIn("must come from its peer", response.headers.get("warning"))

    def test_policy_sees_the_foreign_domain(self):
        s = Setup(PEERS, policy='[[policy.rule]]\nname = "no-kam"\naction = "deny"\nfrom = ["domain:kam.test"]\n'
                                 'reason = "kam.test is blocked"\n')
        self.addCleanup(s.stop)
        s.memory_login("bob")
        peer = UdpClient(s, "dave", port=5070, host="127.0.0.2")
        peer.send(self.from_peer(peer, "MESSAGE", "sip:bob@localhost", b"hi"))
        response = peer.take_one()
        self.assertEqual(response.status, 403)
        self.assertIn("kam.test is blocked", response.headers.get("reason"))

    def test_message_to_the_peer(self):
        alice = self.registered()
        peer = self.peer()
        outcomes = []
        self.s.core.api.submit(Message("sip:alice@localhost", "sip:dave@kam.test", "to kamailio")).addCallback(outcomes.append)
        message = peer.take_one()
        self.assertEqual(message.uri, "sip:dave@kam.test")
        self.assertEqual(parse_name_addr(message.headers.get("from")).uri, "sip:alice@localhost")
        self.assertEqual(parse_via(message.headers.get("via")).sent_by, "127.0.0.1:5060")
        peer.send(peer.response(message, 202, "Accepted"))
        self.assertTrue(outcomes[0].delivered)
        # A local client writes to the peer domain: the core routes it to us for the peer.
        alice.send(alice.request("MESSAGE", "sip:dave@kam.test", body=b"via the gateway"))
        forwarded = peer.take_one()
        self.assertEqual(forwarded.body, b"via the gateway")
        peer.send(peer.response(forwarded, 200))
        self.assertEqual(alice.take_one().status, 200)

    def test_a_file_offer_to_the_peer_is_shown_as_a_notice_not_dropped(self):
        peer = self.peer()
        outcomes = []
        offer = self.s.core.api.file_offer("mem:alice", "sip:dave@kam.test", "notes.txt", 42)
        self.s.core.api.submit(offer).addCallback(outcomes.append)
        message = peer.take_one()
        self.assertIn(b"notes.txt (42 bytes)", message.body)
        self.assertEqual(outcomes, [])  # delivered only once the peer says so
        peer.send(peer.response(message, 200))
        self.assertTrue(outcomes[0].delivered)

    def test_peer_failure_is_a_failed_delivery(self):
        peer = self.peer()
        outcomes = []
        self.s.core.api.submit(Message("mem:alice", "sip:dave@kam.test", "x")).addCallback(outcomes.append)
        peer.send(peer.response(peer.take_one(), 404, "Not Found"))
        self.assertEqual((outcomes[0].rejected, outcomes[0].code), (True, "delivery-failed"))

    def test_foreign_watcher_gets_notified(self):
        alice = self.s.memory_login("alice")
        peer = self.peer()
        peer.send(self.from_peer(peer, "SUBSCRIBE", "sip:alice@localhost", headers=[
            ("Event", "presence"), ("Expires", "600"), ("Contact", "<sip:dave@127.0.0.2:5070>")]))
        ok, notify = peer.take()
        self.assertEqual(ok.status, 200)
        self.assertEqual(notify.uri, "sip:dave@127.0.0.2:5070")
        self.assertTrue(parse_pidf(notify.body).open)
        peer.send(peer.response(notify, 200))
        self.assertEqual(self.s.sip.foreign_watchers(self.s.people["alice"]), [Address("sip", "dave", "kam.test")])
        self.s.core.api.set_presence(alice, PresenceStatus.BUSY, "")
        [change] = peer.take()
        self.assertEqual(parse_pidf(change.body).activity, "busy")

    def test_watching_a_peer_user(self):
        """A local watcher of dave@kam.test: the gateway subscribes at the peer and relays its NOTIFYs."""
        alice = self.registered()
        peer = self.peer()
        alice.send(alice.request("SUBSCRIBE", "sip:dave@kam.test", headers=[
            ("Event", "presence"), ("Expires", "600"), ("Contact", "<sip:alice@0.0.0.0:5060;transport=tcp>")]))
        ok, initial = alice.take()
        self.assertEqual(ok.status, 200)
        self.assertFalse(parse_pidf(initial.body).open)  # nothing known yet
        alice.send(alice.response(initial, 200))
        upstream = peer.take_one()
        self.assertEqual((upstream.method, upstream.uri), ("SUBSCRIBE", "sip:dave@kam.test"))
        self.assertEqual(parse_name_addr(upstream.headers.get("from")).uri, "sip:alice@localhost")
        self.assertEqual(upstream.headers.get("expires"), "600")
        contact = parse_name_addr(upstream.headers.get("contact")).uri
        answer = peer.response(upstream, 200).replace(b"To: <sip:dave@kam.test>", b"To: <sip:dave@kam.test>;tag=d1")
        peer.send(answer)

        their_tag = parse_name_addr(upstream.headers.get("from")).tag
        notify = (self.from_peer(peer, "NOTIFY", contact, render_pidf("sip:dave@kam.test", True), headers=[
            ("Event", "presence"), ("Subscription-State", "active;expires=600"),
            ("Content-Type", "application/pidf+xml")])
            .replace(f"Call-ID: {peer.call_id}".encode(), f"Call-ID: {upstream.call_id}".encode())
            .replace(b"To: <" + contact.encode() + b">", f"To: <sip:alice@localhost>;tag={their_tag}".encode())
            .replace(b"From: <sip:dave@kam.test>;tag=" + peer.tag.encode(), b"From: <sip:dave@kam.test>;tag=d1"))
        peer.send(notify)
        self.assertEqual(peer.take_one().status, 200)
        [relayed] = alice.take()
        self.assertEqual(parse_name_addr(relayed.headers.get("from")).uri, "sip:dave@kam.test")
        self.assertTrue(parse_pidf(relayed.body).open)
        alice.send(alice.response(relayed, 200))

        # A NOTIFY for no subscription of ours is refused.
        peer.send(self.from_peer(peer, "NOTIFY", contact, render_pidf("sip:dave@kam.test", True), headers=[
            ("Event", "presence"), ("Subscription-State", "active")], to="sip:bob@localhost"))
        self.assertEqual(peer.take_one().status, 481)

        # The last local watcher leaves: so does our subscription at the peer.
        alice.send(alice.request("SUBSCRIBE", "sip:dave@kam.test", to_tag=parse_name_addr(ok.headers.get("to")).tag,
                                 headers=[("Event", "presence"), ("Expires", "0")]))
        alice.take()
        bye = peer.take_one()
        self.assertEqual((bye.method, bye.headers.get("expires"), bye.call_id), ("SUBSCRIBE", "0", upstream.call_id))
        self.assertEqual(parse_name_addr(bye.headers.get("to")).tag, "d1")
        self.assertEqual(self.s.sip.upstreams, {})


class PeerSecretTests(Base):
    """A peer domain signs its requests with the shared secret; its address alone proves nothing."""

    config = {"peers": {"kam.test": {"host": "127.0.0.2", "port": 5070, "transport": "udp", "secret": "peer-pw"}},
              "udp": ["127.0.0.1:5060"]}

    def signed(self, peer, challenge, password="peer-pw", nc=1, user="kam.test", body=b"from kamailio"):
        auth = peer.authorization(challenge, "MESSAGE", "sip:bob@localhost", user=user, password=password, nc=nc,
                                  header="Proxy-Authorization")
        raw = peer.request("MESSAGE", "sip:bob@localhost", body=body, headers=[auth])
        return raw.replace(b"From: <sip:dave@localhost>", b"From: <sip:dave@kam.test>")

    def unsigned(self, peer):
        raw = peer.request("MESSAGE", "sip:bob@localhost", body=b"from kamailio")
        return raw.replace(b"From: <sip:dave@localhost>", b"From: <sip:dave@kam.test>")

    def challenge(self, peer):
        peer.send(self.unsigned(peer))
        response = peer.take_one()
        self.assertEqual(response.status, 407)
        challenges = response.headers.get_all("proxy-authenticate")
        self.assertTrue(all('realm="kam.test"' in c for c in challenges), challenges)
        return challenges[0]

    def test_unsigned_request_from_the_peer_address_is_challenged_then_signed_one_taken(self):
        bob = self.s.memory_login("bob")
        peer = UdpClient(self.s, "dave", port=5070, host="127.0.0.2")
        challenge = self.challenge(peer)
        self.assertEqual(self.s.memory.received(bob, "im"), [])
        peer.send(self.signed(peer, challenge))
        self.assertEqual(peer.take_one().status, 200)
        [event] = self.s.memory.received(bob, "im")
        self.assertEqual((event.text, str(event.sender)), ("from kamailio", "mem:sip.dave%kam.test"))

    def test_wrong_secret_replay_and_wrong_user_are_refused(self):
        bob = self.s.memory_login("bob")
        peer = UdpClient(self.s, "dave", port=5070, host="127.0.0.2")
        challenge = self.challenge(peer)
        peer.send(self.signed(peer, challenge, password="guess"))
        self.assertEqual(peer.take_one().status, 403)
        peer.send(self.signed(peer, self.challenge(peer), user="dave"))
        self.assertEqual(peer.take_one().status, 403)
        challenge = self.challenge(peer)
        peer.send(self.signed(peer, challenge, body=b"once"))
        self.assertEqual(peer.take_one().status, 200)
        peer.send(self.signed(peer, challenge, body=b"once"))  # the same nonce-count again: a replay
        self.assertEqual(peer.take_one().status, 403)
        self.assertEqual([e.text for e in self.s.memory.received(bob, "im")], ["once"])

    def test_signed_request_from_another_address_is_refused(self):
        peer = UdpClient(self.s, "dave", port=5070, host="127.0.0.2")
        challenge = self.challenge(peer)
        impostor = UdpClient(self.s, "dave", port=5070, host="127.0.0.9")
        impostor.send(self.signed(impostor, challenge))
        self.assertEqual(impostor.take_one().status, 403)

    def test_secret_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-a-file\n")
        connector = SipConnector(self.s.core.api, {"udp": ["127.0.0.1:5061"], "listen": [], "peers": {
            "kam.test": {"host": "127.0.0.2", "secret_file": os.path.abspath(path)}}})
        self.assertEqual(connector.peers["kam.test"].secret, "from-a-file")


TWO_PEERS = {"peers": {"kam.test": {"host": "127.0.0.2", "port": 5070, "transport": "udp", "trust": "source"},
                       "other.test": {"host": "127.0.0.3", "port": 5080, "transport": "udp", "trust": "source"}},
             "udp": ["127.0.0.1:5060"]}


class TransitTests(PeerBase):
    """The gateway serves its own domains; it is no transit proxy between two peer domains."""

    config = TWO_PEERS

    def other(self):
        return UdpClient(self.s, "eve", port=5080, host="127.0.0.3")

    def test_message_between_peer_domains_is_refused(self):
        peer, other = self.peer(), self.other()
        for uri in ("sip:eve@other.test", "sip:erin@kam.test"):
            peer.send(self.from_peer(peer, "MESSAGE", uri, b"through you?"))
            response = peer.take_one()
            self.assertEqual(response.status, 403, uri)
            self.assertIn("no transit proxy", response.reason)
            self.assertIn("is not relayed", response.headers.get("warning"))
        self.assertEqual(other.take(), [])
        peer.send(self.from_peer(peer, "MESSAGE", "sip:eve@nowhere.test", b"x"))
        response = peer.take_one()
        self.assertEqual(response.status, 404)
        self.assertIn("no route to domain nowhere.test", response.headers.get("warning"))

    def test_message_between_peer_domains_through_an_alias_is_not_relayed(self):
        # eve@other.test wrote to a user of ours once, so she has an alias here.
        self.s.memory_login("bob")
        other = self.other()
        raw = other.request("MESSAGE", "sip:bob@localhost", body=b"hello bob").replace(
            b"From: <sip:eve@localhost>", b"From: <sip:eve@other.test>")
        other.send(raw)
        self.assertEqual(other.take_one().status, 200)
        alias = []
        self.s.core.api.alias_for(Address("sip", "eve", "other.test"), "sip", "localhost").addCallback(alias.append)
        peer = self.peer()
        peer.send(self.from_peer(peer, "MESSAGE", adapter.uri_of(alias[0]), b"to eve, through an alias"))
        response = peer.take_one()
        self.assertNotEqual(response.status // 100, 2)
        self.assertIn("no transit proxy", response.headers.get("warning"))
        self.assertEqual(other.take(), [])
        self.flushLoggedErrors(DeliveryError)

    def test_presence_between_peer_domains_is_refused(self):
        peer, other = self.peer(), self.other()
        peer.send(self.from_peer(peer, "SUBSCRIBE", "sip:eve@other.test", headers=[
            ("Event", "presence"), ("Contact", "<sip:dave@127.0.0.2:5070>")]))
        response = peer.take_one()
        self.assertEqual(response.status, 403)
        self.assertIn("no transit proxy", response.reason)
        self.assertEqual(other.take(), [])
        self.assertEqual((self.s.sip.subscriptions, self.s.sip.upstreams), ({}, {}))


class PeerPresenceTests(PeerBase):
    """Presence with a peer domain, for watchers with no registration here."""

    def test_unregistered_watcher_of_a_peer_user_gets_the_peers_notifies(self):
        alice = UdpClient(self.s)
        peer = self.peer()
        uri = "sip:dave@kam.test"
        headers = [("Event", "presence"), ("Expires", "600"), ("Contact", f"<sip:alice@127.0.0.1:{alice.port}>")]
        alice.send(alice.request("SUBSCRIBE", uri, headers=headers))
        challenge = alice.take_one()
        auth = alice.authorization(challenge.headers.get("proxy-authenticate"), "SUBSCRIBE", uri,
                                   header="Proxy-Authorization")
        alice.send(alice.request("SUBSCRIBE", uri, headers=headers + [auth]))
        ok, initial = alice.take()
        self.assertEqual(ok.status, 200)
        self.assertFalse(parse_pidf(initial.body).open)  # nothing known yet
        alice.send(alice.response(initial, 200))
        upstream = peer.take_one()
        self.assertEqual((upstream.method, parse_name_addr(upstream.headers.get("from")).uri),
                         ("SUBSCRIBE", "sip:alice@localhost"))
        peer.send(peer.response(upstream, 200).replace(b"To: <sip:dave@kam.test>", b"To: <sip:dave@kam.test>;tag=d1"))
        contact = parse_name_addr(upstream.headers.get("contact")).uri
        their_tag = parse_name_addr(upstream.headers.get("from")).tag

        def notify(is_open, cseq):
            raw = (self.from_peer(peer, "NOTIFY", contact, render_pidf("sip:dave@kam.test", is_open), headers=[
                ("Event", "presence"), ("Subscription-State", "active;expires=600"),
                ("Content-Type", "application/pidf+xml")])
                .replace(f"Call-ID: {peer.call_id}".encode(), f"Call-ID: {upstream.call_id}".encode())
                .replace(b"To: <" + contact.encode() + b">", f"To: <sip:alice@localhost>;tag={their_tag}".encode()))
            peer.send(raw)
            self.assertEqual(peer.take_one().status, 200)
            [relayed] = alice.take()
            alice.send(alice.response(relayed, 200))
            self.assertEqual(parse_name_addr(relayed.headers.get("from")).uri, "sip:dave@kam.test")
            return parse_pidf(relayed.body).open

        self.assertTrue(notify(True, 1))
        self.assertFalse(notify(False, 2))
        self.assertTrue(notify(True, 3))
        presence = [e for e in self.s.core.archive.events("presence") if str(e.recipient) == "sip:alice@localhost"]
        self.assertEqual(len(presence), 4)  # the first NOTIFY and each relayed one went through the path

    def test_peer_watcher_hears_every_change(self):
        bob = self.s.memory_login("bob")
        peer = self.peer()
        peer.send(self.from_peer(peer, "SUBSCRIBE", "sip:bob@localhost", headers=[
            ("Event", "presence"), ("Expires", "600"), ("Contact", "<sip:dave@127.0.0.2:5070>")]))
        ok, first = peer.take()
        peer.send(peer.response(first, 200))
        changes = []
        for status in (PresenceStatus.AWAY, PresenceStatus.BUSY):
            self.s.core.api.set_presence(bob, status, "")
            [change] = peer.take()
            peer.send(peer.response(change, 200))
            changes.append(parse_pidf(change.body).activity)
        self.s.memory.logout(bob)
        [gone] = peer.take()
        self.assertEqual((changes, parse_pidf(gone.body).open), (["away", "busy"], False))


class ConfigTests(unittest.TestCase):
    def build(self, **options):
        return SipConnector(Setup().core.api, options)

    def test_errors_name_the_key(self):
        for options, key in (
            ({"bogus": 1}, "connectors.sip.bogus"),
            ({"udp": ["nonsense"]}, "connectors.sip.udp"),
            ({"domains": []}, "connectors.sip.domains"),
            ({"rate": "fast"}, "connectors.sip.rate"),
            ({"algorithms": ["SHA-512"]}, "connectors.sip.algorithms"),
            ({"peers": {"x.test": {"port": 1}}}, "connectors.sip.peers.x.test.host"),
            ({"peers": {"x.test": {"host": "h", "transport": "sctp"}}}, "connectors.sip.peers.x.test.transport"),
            ({"peers": {"x.test": {"host": "127.0.0.1", "sources": ["name"]}}}, "connectors.sip.peers.x.test.sources"),
            ({"peers": {"localhost": {"host": "127.0.0.1", "secret": "s"}}}, "connectors.sip.peers"),
            ({"udp": [], "peers": {"x.test": {"host": "127.0.0.1", "secret": "s"}}}, "connectors.sip.udp"),
            ({"peers": {"x.test": {"host": "127.0.0.1"}}}, "connectors.sip.peers.x.test"),
            ({"peers": {"x.test": {"host": "127.0.0.1", "trust": "ip"}}}, "connectors.sip.peers.x.test.trust"),
            ({"peers": {"x.test": {"host": "127.0.0.1", "secret_file": "/nonexistent/s"}}},
             "connectors.sip.peers.x.test.secret_file"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.build(**options)
            self.assertIn(key, str(caught.exception), options)

    def test_defaults(self):
        connector = self.build()
        self.assertEqual((connector.domains, connector.udp, connector.listen),
                         (["localhost"], ["127.0.0.1:5060"], ["tcp:5060:interface=127.0.0.1"]))
        self.assertEqual(connector.domain_for("sip"), "localhost")

    def test_built_from_the_table_the_core_hands_over(self):
        from gateway.plugin import read_options

        from gateway_sip.connector import OPTIONS

        connector = SipConnector(Setup().core.api, read_options("sip", {"udp": [], "listen": []}, OPTIONS))
        self.assertEqual((connector.domains, connector.algorithms, connector.advertise),
                         (["localhost"], ["MD5", "SHA-256"], None))


class EntryPointTests(unittest.TestCase):
    def test_loaded_from_its_distribution(self):
        plugins = Plugins()
        plugins.load_entry_points()
        self.assertTrue(plugins.loaded["sip"].startswith("distribution gateway-sip "), plugins.loaded)


class SipConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "sip"
    handles = ("sip:alice@localhost", "sip:bob@localhost")

    def setUp(self):
        from twisted.internet import task

        self.clock = task.Clock()
        self.clients = {}

    def make_connector(self, api):
        return SipConnector(api, {"udp": [], "listen": []})

    def connect_client(self, connector, identity, address):
        session, said = self.try_login(connector, address, "secret")
        self.assertIsNotNone(session, said)
        # As a SIP client does once registered: subscribe to each buddy's presence.
        client = self.clients[session]
        contacts = self.successResultOf(connector.api.contacts(identity.id))
        for contact in contacts:
            client.send(client.request("SUBSCRIBE", f"sip:{contact.address.handle}", headers=[
                ("Event", "presence"), ("Expires", "600"), ("Accept", "application/pidf+xml"),
                ("Contact", f"<sip:{client.user}@0.0.0.0:5060;transport=tcp>")]))
            response = client.take_one()
            self.assertEqual(response.status, 200, f"SUBSCRIBE to {contact.address}: {response.status}")
        return session

    def client_received(self, connector, session):
        return [r.body.decode() for r in self.clients[session].answered if r.method == "MESSAGE"]

    def client_presence(self, connector, session):
        from gateway_sip.pidf import parse_pidf

        shown = []
        for request in self.clients[session].answered:
            if request.method == "NOTIFY" and request.body:
                doc = parse_pidf(request.body)
                shown.append((Address.parse(doc.entity.replace("pres:", "sip:", 1)), "open" if doc.open else
                              "closed"))
        return shown

    # What a SIP user agent does, for the deeper conformance tests.

    def try_login(self, connector, address, password):
        setup = _ConformanceSetup(connector, self.clock)
        client = TcpClient(setup, address.user)
        client.auto_answer = True
        response = client.register(password=password)
        if response.status != 200:
            return None, f"{response.status} {response.reason}"
        [binding] = connector.bindings[address].values()
        self.clients[binding.session] = client
        return binding.session, ""

    def client_send(self, connector, session, recipient, text):
        client = self.clients[session]
        client.send(client.request("MESSAGE", f"sip:{recipient.handle}", headers=[("Content-Type", "text/plain")],
                                   body=text.encode()))
        return client.take()

    def drop_client(self, connector, session):
        self.clients[session].close()

    def garbage_client(self, connector, data):
        TcpClient(_ConformanceSetup(connector, self.clock), "nobody").send(data)


class _ConformanceSetup:
    """Just what the simulated clients need from a Setup."""

    def __init__(self, connector, clock):
        self.sip = connector
        self.clock = clock


class WireTests(Base):
    """A few exact bytes, as a client sees them."""

    def test_response_to_libpurple_register_challenge(self):
        client = TcpClient(self.s)
        client.send(
            b"REGISTER sip:localhost SIP/2.0\r\n"
            b"Via: SIP/2.0/TCP 0.0.0.0:5060;branch=z9hG4bK1EFB41F2D7AB58BA7CCD\r\n"
            b"From: <sip:alice@localhost>;tag=5767043491;epid=1234567890\r\n"
            b"To: <sip:alice@localhost>\r\n"
            b"Max-Forwards: 10\r\n"
            b"CSeq: 1 REGISTER\r\n"
            b"User-Agent: Purple/2.14.12\r\n"
            b"Call-ID: 1F29g58ECa944Ai5CFFmDC51t4873b9869x23C6x\r\n"
            b'Contact: <sip:alice@0.0.0.0:5060;transport=tcp>;methods="MESSAGE, SUBSCRIBE, NOTIFY"\r\n'
            b"Expires: 900\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        value = client.transport.value().decode()
        nonce = value.split('nonce="')[1].split('"')[0]
        self.assertEqual(self.s.sip.nonces.state(nonce), "fresh")
        tag = _tag_of(client)
        self.assertRegex(tag, "^[0-9a-f]{12}$")
        self.assertEqual(
            client.transport.value().decode(),
            "SIP/2.0 401 Unauthorized\r\n"
            "Via: SIP/2.0/TCP 0.0.0.0:5060;branch=z9hG4bK1EFB41F2D7AB58BA7CCD;received=127.0.0.1\r\n"
            "From: <sip:alice@localhost>;tag=5767043491;epid=1234567890\r\n"
            f"To: <sip:alice@localhost>;tag={tag}\r\n"
            "Call-ID: 1F29g58ECa944Ai5CFFmDC51t4873b9869x23C6x\r\n"
            "CSeq: 1 REGISTER\r\n"
            f'WWW-Authenticate: Digest realm="localhost", nonce="{nonce}", algorithm=MD5, qop="auth"\r\n'
            f'WWW-Authenticate: Digest realm="localhost", nonce="{nonce}", algorithm=SHA-256, qop="auth"\r\n'
            "Server: gateway-sip/0.1\r\n"
            "Content-Length: 0\r\n\r\n",
        )


class ViaBackTests(Base):
    """The top Via of a response: the request's, with rport filled in where it was and received added."""

    def test_rport_filled_in_place_and_received(self):
        client = UdpClient(self.s)
        client.send(client.request("OPTIONS", "sip:localhost", branch="z9hG4bKv1"))
        self.assertEqual(client.take_one().headers.get("via"),
                         f"SIP/2.0/UDP 0.0.0.0:5060;branch=z9hG4bKv1;rport={client.port};received=127.0.0.1")

    def test_same_host_and_no_rport_unchanged(self):
        client = UdpClient(self.s)
        raw = client.request("OPTIONS", "sip:localhost", branch="z9hG4bKv2").replace(
            b"Via: SIP/2.0/UDP 0.0.0.0:5060;branch=z9hG4bKv2;rport",
            f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKv2".encode())
        client.send(raw)
        self.assertEqual(client.take_one().headers.get("via"), f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKv2")

    def test_rport_with_a_value_and_an_odd_spelling(self):
        client = UdpClient(self.s)
        raw = client.request("OPTIONS", "sip:localhost", branch="z9hG4bKv3").replace(
            b";branch=z9hG4bKv3;rport", b";branch=z9hG4bKv3;RPORT=1")
        client.send(raw)
        via = parse_via(client.take_one().headers.get("via"))
        self.assertEqual((via.param("rport"), via.param("received")), (str(client.port), "127.0.0.1"))


def _tag_of(client):
    value = client.transport.value().decode()
    return value.split("To: <sip:alice@localhost>;tag=")[1].split("\r\n")[0]


class ThrottleTests(Base):
    def test_failed_logins_are_throttled(self):
        for _ in range(5):
            self.assertEqual(TcpClient(self.s).register(password="guess").status, 403)
        response = TcpClient(self.s).register()  # even the right password, for a while
        self.assertEqual(response.status, 403)
        self.assertIn("too many failed logins", response.reason)
        self.assertEqual(response.headers.get("retry-after"), "300")
        self.assertEqual(self.s.sessions("alice"), [])

    def test_directory_unavailable_is_503(self):
        from gateway.interfaces import DirectoryUnavailable
        from twisted.internet.defer import fail

        self.s.directory.secret = lambda address, scheme: fail(DirectoryUnavailable("LDAP is down"))
        response = TcpClient(self.s).register()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.headers.get("retry-after"), "5")


class BoundsTests(Base):
    config = {"max_bindings": 2, "max_subscriptions": 2}

    def test_bindings_per_address(self):
        client = TcpClient(self.s)
        self.assertEqual(client.register(contact="<sip:alice@one>").status, 200)
        self.assertEqual(client.register(contact="<sip:alice@two>").status, 200)
        response = client.register(contact="<sip:alice@three>")
        self.assertEqual(response.status, 403)
        self.assertIn("at most 2 registered contacts", response.reason)
        self.assertEqual(client.register(contact="<sip:alice@two>").status, 200)  # a refresh is fine

    def test_subscriptions_per_watcher(self):
        alice = self.registered()
        alice.auto_answer = True
        for target in ("bob", "carol"):
            alice.send(alice.request("SUBSCRIBE", f"sip:{target}@localhost", call_id=f"s-{target}",
                                     headers=[("Event", "presence")]))
        alice.send(alice.request("SUBSCRIBE", "sip:dave@localhost", call_id="s-dave", headers=[("Event", "presence")]))
        self.assertEqual(len(self.s.sip.subscriptions), 2)
        self.assertEqual(alice.answered[-1].headers.get("subscription-state"), "terminated;reason=rejected")

    def test_publications_per_person(self):
        alice = self.registered()
        for _ in range(8):
            alice.send(alice.request("PUBLISH", "sip:alice@localhost", headers=[
                ("Event", "presence"), ("Content-Type", "application/pidf+xml")], body=PIDF_AWAY))
        self.assertEqual(len(self.s.sip.publications), 5)


class OfferNoticeTests(unittest.TestCase):
    def test_a_file_offer_is_shown_as_a_notice(self):
        from gateway.model import FileOffer
        from gateway_sip.adapter import event_body

        content_type, body = event_body(FileOffer("aim:alice", "sip:bob@localhost", "notes.txt", 42))
        self.assertEqual(content_type, "text/plain;charset=UTF-8")
        self.assertIn(b"notes.txt (42 bytes)", body)
        self.assertIn(b"cannot be transferred", body)
