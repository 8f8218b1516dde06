"""The Sametime server state machine on StringTransport and task.Clock, through a whole in-memory gateway."""

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.logger import capturedLogs
from twisted.trial import unittest

from gateway.config import ConfigError
from gateway.interfaces import DirectoryUnavailable
from gateway.model import Address, Contact, Message, Presence, PresenceStatus, Typing
from gateway.plugins import Plugins
from gateway.testing import MemoryConnector, MemoryDirectory, make_core

from gateway_sametime import codec, crypto
from gateway_sametime.connector import SametimePlugin, Settings
from gateway_sametime.protocol import ChannelGone

from tests.sametime.client import Client, seeded
from tests.sametime.test_codec import h


def gateway(options="", policy="", directory=None):
    """A core on a Clock with the sametime plugin (through its real hooks) and a memory connector."""
    clock = task.Clock()
    clock.advance(1_000_000)
    if directory is None:
        directory = MemoryDirectory()
    directory.add("alice", "sametime:alice", "aim:alice", display_name="Alice")
    directory.add("bob", "sametime:bob", "aim:bob", display_name="Bob")
    directory.add("carol", "mem:carol", display_name="Carol")
    plugins = Plugins()
    plugins.register(SametimePlugin(), "sametime")
    if "privacy_file" not in options:
        options += '\nprivacy_file = ""'
    config = f"[connectors.sametime]\nlisten = []\n{options}\n{policy}"
    core = make_core(config, clock=clock, directory=directory, plugins=plugins)
    core.start_plugins()
    memory = MemoryConnector(core.api)
    core.connectors["memory"] = memory
    core.router.forget_connectors()
    return core, core.connectors["sametime"], memory, clock


class Base(unittest.TestCase):
    options = ""
    policy = ""

    def setUp(self):
        self.core, self.connector, self.memory, self.clock = gateway(self.options, self.policy)
        self.archive = self.core.archive

    def client(self, user=None, seed=1, **kw):
        c = Client(self.connector, seed=seed)
        if user is not None:
            out = c.login(user, **kw)
            self.assertTrue(any(isinstance(m, codec.LoginAck) for m in out), repr(out))
            self.assertEqual(self.connector.sessions and len(self.core.sessions.sessions_of(user)), 1)
        return c

    def assertClosedWith(self, client, code):
        client.read()
        self.assertEqual(client.inbox[-1:], [codec.ChannelDestroy(code, channel=0)], client.inbox)
        self.assertTrue(client.transport.disconnecting)

    def carol(self):
        carol = self.core.directory.people["carol"]
        return self.successResultOf(self.memory.login(carol, Address("mem", "carol")))


class LoginTests(Base):
    def test_handshake_ack_carries_a_dh_key_wire_exact(self):
        c = self.client()
        c.send(codec.Handshake())
        rng = seeded(1)
        magic = rng(4)
        private = int.from_bytes(rng(64), "big") % (crypto.DH_PRIME - 2) + 1
        public = pow(3, private, crypto.DH_PRIME)
        key = public.to_bytes((public.bit_length() + 7) // 8, "big")
        body = h("8000 0000 00000000 001e 001d 00000000") + magic + codec.opaque(key)
        self.assertEqual(c.transport.value(), codec.u32(len(body)) + body)

    def test_rc2_128_login(self):
        c = self.client()
        c.login("alice")
        self.assertEqual(len(c.of(codec.HandshakeAck)[0].key), 64)
        session = self.core.sessions.sessions_of("alice")[0]
        self.assertEqual(session.address, Address("sametime", "alice"))
        self.assertIs(session.handler, c.protocol)

    def test_wrong_password(self):
        c = self.client()
        c.login("alice", "nope")
        self.assertClosedWith(c, codec.ERR_INCORRECT_LOGIN)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])

    def test_unknown_user(self):
        c = self.client()
        c.login("mallory")
        self.assertClosedWith(c, codec.ERR_INCORRECT_LOGIN)

    def test_plain_refused_by_default(self):
        c = self.client()
        c.login("alice", auth=codec.AUTH_PLAIN)
        self.assertClosedWith(c, codec.ERR_ENCRYPT_NO_SUPPORT)

    def test_weak_rc2_40_login_refused_by_default_and_archived(self):
        c = self.client()
        c.send(codec.Handshake())
        c.transport.clear()
        c.send(codec.Login(0x1700, "alice", crypto.compose_auth_rc2_40("secret", b"\xda\x1b\x98\x06\x67"),
                           codec.AUTH_RC2_40))
        self.assertClosedWith(c, codec.ERR_ENCRYPT_NO_SUPPORT)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        [failed] = [e for e in self.core.archive.events("access") if e.action == "login-failed"]
        self.assertIn("RC2/40 login is not allowed here", failed.text)

    def test_rc2_40_only_needs_an_explicit_yes(self):
        e = self.assertRaises(ConfigError, Settings.from_config, {"login_cipher": "rc2-40"})
        self.assertIn("allow_weak_login", str(e))

    def test_login_before_handshake(self):
        c = self.client()
        c.send(codec.Login(0x1700, "alice", b"", codec.AUTH_RC2_40))
        self.assertClosedWith(c, codec.ERR_NOT_LOGGED_IN)

    def test_directory_down_is_try_again_later(self):
        def down(address, password):
            return fail(DirectoryUnavailable("ldap is down"))

        self.core.directory.authenticate = down
        c = self.client()
        c.login("alice")
        self.assertClosedWith(c, codec.ERR_VERIFICATION_DOWN)

    def test_status_sent_while_the_session_registers(self):
        registered = []
        login = self.core.api.login

        def slow_login(*args, **kwargs):
            d = login(*args, **kwargs)
            held = Deferred()
            registered.append((d, held))
            return held

        self.core.api.login = slow_login
        c = self.client()
        c.login("alice")
        c.send(codec.SetUserStatus(codec.UserStatus(codec.STATUS_AWAY, 0, "brb")))
        self.assertEqual(c.read(), [codec.SetUserStatus(codec.UserStatus(codec.STATUS_AWAY, 0, "brb"))])
        self.assertEqual(self.core.sessions.presence_of("alice")[0], PresenceStatus.AVAILABLE)
        d, held = registered[0]
        held.callback(self.successResultOf(d))
        self.assertEqual(self.core.sessions.presence_of("alice"), (PresenceStatus.AWAY, "brb"))

    def test_logout_with_channel_destroy_on_channel_0(self):
        c = self.client("alice")
        c.send(codec.ChannelDestroy(0, channel=0))
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])

    def test_disconnect_logs_out(self):
        c = self.client("alice")
        c.protocol.connectionLost(None)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])

    def test_login_timeout(self):
        c = self.client()
        c.send(codec.Handshake())
        self.clock.advance(29)
        self.assertFalse(c.transport.disconnecting)
        self.clock.advance(1)
        self.assertClosedWith(c, codec.ERR_NOT_LOGGED_IN)


class Rc2FortyLoginTests(Base):
    options = 'login_cipher = "rc2-40"\nallow_weak_login = true\nallow_plain = true'

    def test_no_key_then_rc2_40_login_wire_exact(self):
        c = self.client()
        c.send(codec.Handshake())
        magic = seeded(1)(4)
        self.assertEqual(c.transport.value(), h("00000018 8000 0000 00000000 001e 001d 00000000") + magic + h("00000000"))
        c.transport.clear()
        c.send(codec.Login(0x1700, "alice", crypto.compose_auth_rc2_40("secret", b"\xda\x1b\x98\x06\x67"), codec.AUTH_RC2_40))
        self.assertEqual(
            c.transport.value(),
            h('00000038 8001 0000 00000000 000c "node1-000001" 1700 0005 "alice" 0005 "Alice" 0000 00 '
              "0000 01 00000000 0020 00000000 0000"),
        )
        self.assertEqual(len(self.core.sessions.sessions_of("alice")), 1)

    def test_libpurples_captured_login(self):
        # The exact LOGIN libpurple sent when the ack had no key (PROTOCOL-NOTES 1.2).
        c = self.client()
        c.send(codec.Handshake())
        c.protocol.dataReceived(
            h("0000002e 0001 0000 00000000 1700 0005 616c696365 00000015 00000005 da1b980667 "
              "00000008 b382b7cfe51ed516 0002 0000")
        )
        self.assertIsInstance(c.read()[-1], codec.LoginAck)

    def test_rc2_128_without_a_key_offered(self):
        c = self.client()
        c.send(codec.Handshake())
        c.read()
        auth = crypto.compose_auth_rc2_128("secret", 0, (5).to_bytes(64, "big"), c.keypair)
        c.send(codec.Login(0x1700, "alice", auth, codec.AUTH_RC2_128))
        self.assertClosedWith(c, codec.ERR_ENCRYPT_NO_SUPPORT)

    def test_plain_when_allowed(self):
        c = self.client("alice", auth=codec.AUTH_PLAIN)
        self.assertTrue(c.of(codec.LoginAck))


class RedirectTests(Base):
    options = 'redirect_host = "10.1.2.3"\nredirect_server_id = "node2"'

    def test_redirect_then_continue(self):
        c = self.client()
        out = c.login("alice")
        self.assertEqual(out[-1], codec.LoginRedirect("10.1.2.3", "node2"))
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        c.send(codec.LoginContinue())
        out = c.read()
        self.assertIsInstance(out[0], codec.HandshakeAck)
        self.assertIsInstance(out[1], codec.LoginAck)
        self.assertEqual(len(self.core.sessions.sessions_of("alice")), 1)

    def test_redirect_then_client_leaves(self):
        c = self.client()
        c.login("alice")
        c.protocol.connectionLost(None)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])


class PlacementTests(Base):
    """In a cluster, a login that another node should take is sent there with LOGIN_REDIRECT."""

    def here(self, client):
        return client.transport.getHost().port

    def test_a_login_goes_to_the_node_placement_names(self):
        c = self.client()
        self.core.placement = lambda connector: connector == "sametime" and f"127.0.0.2:{self.here(c)}" or None
        out = c.login("alice")
        self.assertEqual(out[-1], codec.LoginRedirect("127.0.0.2", ""))
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        c6 = self.client(seed=2)
        self.core.placement = lambda connector: f"[::2]:{self.here(c6)}"
        self.assertEqual(c6.login("bob")[-1], codec.LoginRedirect("::2", ""))

    def test_a_node_on_another_port_cannot_be_redirected_to_and_the_login_stays(self):
        self.core.placement = lambda connector: "127.0.0.2:9999"
        with capturedLogs() as events:
            self.client("alice")
            self.client("bob", seed=2)
        said = [e for e in events if e.get("target") == "127.0.0.2:9999" and "cannot send logins" in e["log_format"]]
        self.assertEqual(len(said), 1)  # once, not at every login

    def test_no_placement_logs_in_here(self):
        self.core.placement = lambda connector: None
        self.client("alice")

    def test_a_drained_node_admits_sametime_connections_only_when_it_can_send_them_on(self):
        from twisted.internet.address import IPv4Address

        from gateway.path.limits import LimitedFactory, ListenerLimits

        for reason in ("node-draining", "node-full"):
            limited = LimitedFactory(self.connector.factory(), ListenerLimits(), "sametime tcp:1533", self.clock,
                                     admission=lambda: (reason, "no new logins here"),
                                     placement=lambda: self.core.placement("sametime"))
            self.core.placement = lambda connector: "127.0.0.2:1533"
            built = limited.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
            self.assertEqual(type(built).__name__, "SametimeServerProtocol")
            self.core.placement = lambda connector: None
            self.assertNotEqual(type(limited.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40001))).__name__,
                                "SametimeServerProtocol")


class BadInputTests(Base):
    def test_each_closes_only_its_session(self):
        cases = {
            "unknown type": (h("00000008 0077 0000 00000000"), codec.ERR_REQUEST_INVALID),
            "malformed": (h("0000000a 0009 0000 00000000 0020"), codec.ERR_BAD_DATA),
            "oversized": (h("7fffffff 0009"), codec.ERR_FAT_MESSAGE),
            "second handshake": (codec.frame(codec.Handshake()), codec.ERR_REQUEST_INVALID),
            "accept out of state": (codec.frame(codec.ChannelAccept(0x11, 0x11, 1, channel=5)), None),
        }
        bob = self.client("bob", seed=2)
        for name, (data, code) in cases.items():
            alice = self.client("alice", seed=3)
            with capturedLogs() as events:
                alice.protocol.dataReceived(data)
            if code is None:  # only the channel is refused
                self.assertEqual(alice.read()[-1], codec.ChannelDestroy(codec.ERR_REQUEST_INVALID, channel=5))
                self.assertFalse(alice.transport.disconnecting)
                alice.protocol.connectionLost(None)
            else:
                self.assertClosedWith(alice, code)
                alice.protocol.connectionLost(None)
                self.assertTrue(any(e.get("code") == code and "why" in e for e in events), (name, events))
            self.assertEqual(self.core.sessions.sessions_of("alice"), [], name)
        cid = bob.open_im("alice")
        bob.say(cid, "still here")
        self.assertFalse(bob.transport.disconnecting)
        self.assertTrue(bob.channels[cid]["open"])
        self.assertEqual([e.text for e in self.archive.events("im")], ["still here"])

    def test_rate_limit(self):
        c = self.client("alice")
        for _ in range(45):
            c.send(codec.SenseService(codec.SERVICE_IM))
        self.assertFalse(c.transport.disconnecting)
        for _ in range(10):
            c.send(codec.SenseService(codec.SERVICE_IM))
        self.assertClosedWith(c, codec.ERR_STARVING)

    def test_rate_window_moves_on(self):
        c = self.client("alice")
        for _ in range(6):
            for _ in range(40):
                c.send(codec.SenseService(codec.SERVICE_IM))
            self.clock.advance(1)
        self.assertFalse(c.transport.disconnecting)

    def test_idle_timeout_and_keepalive(self):
        c = self.client("alice")
        self.clock.advance(599)
        c.protocol.dataReceived(b"\x80")
        self.clock.advance(599)
        self.assertFalse(c.transport.disconnecting)
        self.clock.advance(1)
        self.assertClosedWith(c, codec.ERR_USER_TOO_IDLE)
        c.protocol.connectionLost(None)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])

    def test_channel_errors_keep_the_session(self):
        c = self.client("alice")
        c.send(codec.ChannelSend(0x64, b"", channel=77))
        self.assertEqual(c.read()[-1], codec.ChannelDestroy(codec.ERR_REQUEST_INVALID, channel=77))
        cid = c.open_channel(0x80000022, 0, 5)
        self.assertEqual(c.inbox[-1], codec.ChannelDestroy(codec.ERR_SERVICE_NO_SUPPORT, channel=cid))
        cid = c.open_im("bob")
        c.channel_send(cid, codec.IM_MESSAGE, b"\x00\x00\x00\x07")
        self.assertEqual(c.inbox[-1], codec.ChannelDestroy(codec.ERR_BAD_DATA, channel=cid))
        c.send(codec.ChannelCreate(0x80000005, codec.IdBlock("bob"), codec.SERVICE_AWARE, 0x11, 0x30005))
        self.assertEqual(c.read()[-1], codec.ChannelDestroy(codec.ERR_CHANNEL_EXISTS, channel=0x80000005))
        cid = c.open_im("nobody-here")
        self.assertEqual(c.inbox[-1], codec.ChannelDestroy(codec.ERR_NO_USER, channel=cid))
        self.assertFalse(c.transport.disconnecting)

    def test_channel_limit(self):
        c = self.client("alice")
        for _ in range(64):
            c.open_channel(codec.SERVICE_RESOLVE, 0x15, 0)
            self.clock.advance(0.1)
        cid = c.open_channel(codec.SERVICE_RESOLVE, 0x15, 0)
        self.assertEqual(c.inbox[-1], codec.ChannelDestroy(codec.ERR_STARVING, channel=cid))
        self.assertEqual(len(c.protocol.channels), 64)

    def test_bad_ciphertext_closes_the_channel(self):
        c = self.client("alice")
        cid = c.open_im("bob", ciphers=(codec.CIPHER_RC2_128,))
        c.send(codec.ChannelSend(codec.IM_MESSAGE, b"\x01" * 16, True, channel=cid))
        self.assertEqual(c.read()[-1], codec.ChannelDestroy(codec.ERR_BAD_DATA, channel=cid))
        self.assertFalse(c.transport.disconnecting)


class ImTests(Base):
    def test_both_ways_with_a_server_created_channel(self):
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = alice.open_im("bob")
        accept = alice.inbox[-1]
        self.assertIsInstance(accept, codec.ChannelAccept)
        self.assertEqual(accept.acceptor.user_id, "bob")
        alice.say(cid, "hello bob \u00e9")
        create = bob.read()[-1]
        self.assertIsInstance(create, codec.ChannelCreate)
        self.assertEqual(create.id, 0x80000001)
        self.assertEqual((create.target.user, create.creator.user_id, create.service), ("bob", "alice", codec.SERVICE_IM))
        self.assertEqual(codec.ImAddtl.decode(create.addtl).features, codec.IM_CLIENT_PLAIN)
        self.assertEqual(bob.texts(), [])  # nothing before the client accepts
        bob.accept(create.id)
        self.assertEqual(bob.texts(), [("alice", "hello bob \u00e9")])
        bob.say(create.id, "hi alice")
        self.assertEqual(alice.texts(), [("bob", "hi alice")])
        rows = [e for e in self.archive.events("im")]
        self.assertEqual(sorted(e.text for e in rows), ["hello bob \u00e9", "hi alice"])

    def test_encrypted_channels(self):
        for cipher in (codec.CIPHER_RC2_128, codec.CIPHER_RC2_40):
            alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
            bob.accept_cipher = cipher
            cid = alice.open_im("bob", ciphers=(codec.CIPHER_RC2_40, codec.CIPHER_RC2_128))
            self.assertEqual(alice.of(codec.ChannelAccept)[-1].encrypt.item.cipher, codec.CIPHER_RC2_128)  # server prefers 128
            alice.say(cid, "secret plans")
            create = bob.read()[-1]
            self.assertEqual([i.cipher for i in create.encrypt.items], [codec.CIPHER_RC2_128, codec.CIPHER_RC2_40])
            bob.accept(create.id)
            sends = [m for m in bob.inbox if isinstance(m, codec.ChannelSend)]
            self.assertTrue(sends and all(m.encrypted for m in sends))
            self.assertNotIn(b"secret plans", b"".join(m.data for m in sends))
            self.assertEqual(bob.texts(), [("alice", "secret plans")])
            bob.say(create.id, "ok")
            self.assertEqual(alice.texts(), [("bob", "ok")])
            alice.protocol.connectionLost(None)
            bob.protocol.connectionLost(None)

    def test_rc2_40_only(self):
        self.connector.settings = Settings.from_config({"channel_ciphers": ["rc2-40"]})
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = alice.open_im("bob", ciphers=(codec.CIPHER_RC2_40, codec.CIPHER_RC2_128))
        self.assertEqual(alice.inbox[-1].encrypt.item.cipher, codec.CIPHER_RC2_40)
        alice.say(cid, "forty")
        bob.accept_cipher = codec.CIPHER_RC2_40
        bob.accept(bob.read()[-1].id)
        self.assertEqual(bob.texts(), [("alice", "forty")])

    def test_message_to_another_network_and_back(self):
        carol = self.carol()
        alice = self.client("alice")
        cid = alice.open_im("mem:carol")
        alice.say(cid, "hi carol")
        [event] = self.memory.received(carol, "im")
        # alice has no handle on "mem": carol sees her stable alias there
        self.assertEqual((event.sender, event.text), (Address("mem", "sametime.alice"), "hi carol"))
        outcome = self.successResultOf(self.core.api.submit(Message(carol.address, Address("sametime", "alice"), "hey")))
        self.assertTrue(outcome.delivered)
        self.assertEqual(alice.texts(), [("mem:carol", "hey")])  # on the channel alice opened

    def test_alias_for_a_foreign_sender(self):
        self.core.directory.people.pop("carol")
        alice = self.client("alice")
        d = self.core.api.submit(Message("mem:dave", "sametime:alice", "from dave"))
        create = alice.read()[-1]
        self.assertEqual(create.creator.user_id, "mem.dave")
        self.assertNoResult(d)  # until the client accepts the channel
        alice.accept(create.id)
        self.assertTrue(self.successResultOf(d).delivered)
        self.assertEqual(alice.texts(), [("mem.dave", "from dave")])
        alice.say(create.id, "who are you?")  # the reply to the alias reaches the foreign address
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NO_USER, channel=create.id))
        self.memory.reach.add(Address("mem", "dave"))
        alice.say(alice.open_im("mem.dave"), "who are you?")
        [event] = self.memory.remote
        self.assertEqual(
            (event.sender, event.recipient, event.text),
            (Address("mem", "sametime.alice"), Address("mem", "dave"), "who are you?"),
        )

    def test_not_accepted_in_time_is_held_offline(self):
        bob = self.client("bob", seed=3)
        d = self.core.api.submit(Message("sametime:alice", "sametime:bob", "are you there?"))
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertTrue(self.successResultOf(d).queued)
        self.assertEqual(bob.read()[-1].reason, codec.ERR_FAILURE)
        self.flushLoggedErrors(ChannelGone)

    def test_policy_rejection_is_a_channel_error_and_archived(self):
        self.core, self.connector, self.memory, self.clock = gateway(
            policy='[[policy.rule]]\nname = "no-alice-to-bob"\naction = "deny"\nfrom = ["user:alice"]\n'
                   'to = ["user:bob"]\nreason = "compliance says no"'
        )
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = alice.open_im("bob")
        alice.say(cid, "psst")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NOT_AUTHORIZED, channel=cid))
        [(event, verdict, status)] = [r for r in self.core.archive.rows.values() if r[0].kind == "im"]
        self.assertEqual((event.text, status, verdict.reason), ("psst", "rejected", "compliance says no"))
        self.assertEqual(bob.read(), [])

    def test_offline_recipient_gets_it_at_login(self):
        alice = self.client("alice", seed=2)
        cid = alice.open_im("bob")
        alice.say(cid, "while you were out")
        bob = self.client("bob", seed=3)
        create = [m for m in bob.inbox if isinstance(m, codec.ChannelCreate)][0]
        bob.accept(create.id)
        self.assertEqual(bob.texts(), [("alice", "while you were out")])

    def test_typing_both_ways(self):
        carol = self.carol()
        alice = self.client("alice")
        cid = alice.open_im("mem:carol")
        alice.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(codec.ImData(codec.IM_DATA_TYPING, 0)))
        alice.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(codec.ImData(codec.IM_DATA_TYPING, 1)))
        self.assertEqual([e.active for e in self.memory.received(carol, "typing")], [True, False])
        self.successResultOf(self.core.api.submit(Typing(carol.address, "sametime:alice", True)))
        [(_, data)] = alice.payloads(cid)[-1:]
        self.assertEqual(codec.decode_im(data), codec.ImData(codec.IM_DATA_TYPING, 0))


class RichTextTests(Base):
    def test_html_mime_and_multipart_in(self):
        carol = self.carol()
        alice = self.client("alice")
        cid = alice.open_im("mem:carol", features=codec.IM_CLIENT_NOTESBUDDY)
        self.assertEqual(codec.ImAddtl.decode(alice.inbox[-1].addtl).features, codec.IM_CLIENT_NOTESBUDDY)
        send = lambda payload: alice.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(payload))
        send(codec.ImData(codec.IM_DATA_HTML, 0, b"<b>bold</b> &amp; <i>more</i>"))
        mime = (
            b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain \xc3\xa9\r\n"
            b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>plain \xc3\xa9</p>\r\n--XX--\r\n"
        )
        send(codec.ImData(codec.IM_DATA_MULTI_START))
        send(codec.ImData(codec.IM_DATA_MIME, 0, mime[:50]))
        send(codec.ImData(codec.IM_DATA_MIME, 0, mime[50:]))
        send(codec.ImData(codec.IM_DATA_MULTI_STOP))
        events = self.memory.received(carol, "im")
        self.assertEqual([(e.text, e.html) for e in events], [
            ("bold & more", "<b>bold</b> &amp; <i>more</i>"),
            ("plain \u00e9", "<p>plain \u00e9</p>"),
        ])

    def test_html_out_in_segments(self):
        carol = self.carol()
        alice = self.client("alice")
        cid = alice.open_im("mem:carol", features=codec.IM_CLIENT_NOTESBUDDY)
        markup = "<p>" + "x" * 5000 + "</p>"
        self.successResultOf(self.core.api.submit(Message(carol.address, "sametime:alice", "x" * 5000, html=markup)))
        parts = [codec.decode_im(d) for _, d in alice.payloads(cid)]
        self.assertEqual(parts[0], codec.ImData(codec.IM_DATA_MULTI_START))
        self.assertEqual(parts[-1], codec.ImData(codec.IM_DATA_MULTI_STOP))
        self.assertEqual(b"".join(p.data for p in parts[1:-1]).decode(), markup)
        self.assertTrue(all(len(p.data) <= 2048 for p in parts))

    def test_multipart_over_the_limit_closes_the_channel(self):
        alice = self.client("alice")
        cid = alice.open_im("bob", features=codec.IM_CLIENT_NOTESBUDDY)
        alice.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(codec.ImData(codec.IM_DATA_MULTI_START)))
        for _ in range(20):
            alice.channel_send(cid, codec.IM_MESSAGE, codec.encode_im(codec.ImData(codec.IM_DATA_HTML, 0, b"y" * 2048)))
        self.assertIn(codec.ChannelDestroy(codec.ERR_BAD_DATA, channel=cid), alice.inbox)
        self.assertFalse(alice.transport.disconnecting)


class ServiceTests(Base):
    def aware(self, client):
        cid = client.open_channel(codec.SERVICE_AWARE, 0x11, 0x30005)
        self.assertIsInstance(client.inbox[-1], codec.ChannelAccept)
        return cid

    def test_awareness(self):
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = self.aware(alice)
        alice.channel_send(cid, codec.AWARE_ADD, codec.encode_aware_list([codec.AwareId("bob"), codec.AwareId("nobody")]))
        snapshot = codec.decode_aware_snapshot(alice.payloads(cid, codec.AWARE_SNAPSHOT)[-1][1])
        self.assertEqual(snapshot[0], codec.AwareEntry(codec.AwareId("bob"), codec.UserStatus(codec.STATUS_ACTIVE), "Bob"))
        self.assertFalse(snapshot[1].online)
        contacts = self.successResultOf(self.core.api.contacts("alice"))
        self.assertIn(Contact("sametime:bob"), contacts)
        bob.send(codec.SetUserStatus(codec.UserStatus(codec.STATUS_AWAY, 0, "lunch")))
        self.assertEqual(bob.read()[-1], codec.SetUserStatus(codec.UserStatus(codec.STATUS_AWAY, 0, "lunch")))
        update = codec.decode_aware_snapshot(codec.u32(1) + alice.payloads(cid, codec.AWARE_UPDATE)[-1][1])
        self.assertEqual(update[0].status, codec.UserStatus(codec.STATUS_AWAY, 0, "lunch"))
        bob.protocol.connectionLost(None)
        update = codec.decode_aware_snapshot(codec.u32(1) + alice.payloads(cid, codec.AWARE_UPDATE)[-1][1])
        self.assertFalse(update[0].online)

    def test_storage_keeps_the_list_in_the_directory(self):
        self.successResultOf(self.core.api.set_contacts("alice", [Contact("aim:bob", "Work"), Contact("mem:carol")]))
        alice = self.client("alice")
        cid = alice.open_channel(codec.SERVICE_STORAGE, 0x25, 1)
        alice.channel_send(cid, codec.STORAGE_LOAD, codec.encode_storage_load(1, [0]))
        request_id, result, [(key, data)] = codec.decode_storage_loaded(alice.payloads(cid, codec.STORAGE_LOADED)[-1][1])
        text = codec.Reader(data).string()
        self.assertEqual((request_id, result, key), (1, 0, 0))
        self.assertEqual(text, "Version=3.1.3\r\nG Work2 Work O\r\nU bob1:: ,\r\nG Buddies2 Buddies O\r\nU carol1:: ,\r\n".replace("carol", "mem.carol"))
        saved = "Version=3.1.3\r\nG Work2 Work O\r\nU bob1:: Bobby,\r\nG Friends2 Friends O\r\nU dave1:: ,\r\n"
        alice.channel_send(cid, codec.STORAGE_SAVE, codec.encode_storage_save(2, [(0, codec.string(saved))]))
        self.assertEqual(alice.payloads(cid, codec.STORAGE_SAVED)[-1][1], codec.encode_storage_saved(2, 0))
        contacts = self.successResultOf(self.core.api.contacts("alice"))
        # bob keeps his AIM address (the list is shared with the AIM client); carol was removed.
        self.assertEqual(contacts, [Contact("aim:bob", "Work", "Bobby"), Contact("sametime:dave", "Friends")])
        alice.channel_send(cid, codec.STORAGE_LOAD, codec.encode_storage_load(3, [0x50]))
        self.assertEqual(codec.decode_storage_loaded(alice.payloads(cid, codec.STORAGE_LOADED)[-1][1])[1], codec.ERR_NO_ELEMENT)

    def test_resolve(self):
        alice = self.client("alice")
        cid = alice.open_channel(codec.SERVICE_RESOLVE, 0x15, 0)
        alice.channel_send(cid, codec.RESOLVE_LOOKUP, codec.encode_resolve_request(9, ["bob", "nobody"]))
        search_id, code, results = codec.decode_resolve_reply(alice.payloads(cid)[-1][1])
        self.assertEqual((search_id, code), (9, codec.RESOLVE_PARTIAL))
        self.assertEqual(results[0], codec.ResolveResult("bob", 0, (codec.ResolveMatch("bob", "Bob", ""),)))
        self.assertEqual(results[1].matches, ())

    def test_announce_is_a_message_to_each(self):
        carol = self.carol()
        alice = self.client("alice")
        alice.send(codec.Announce("fire drill at 3", False, ("@U mem:carol", "@U nobody", "@G sales", "@U ")))
        self.assertEqual([e.text for e in self.memory.received(carol, "im")], ["fire drill at 3"])
        self.assertEqual(
            sorted((str(e.recipient), status) for e, _, status in self.archive.rows.values() if e.kind == "im"),
            [("mem:carol", "delivered"), ("sametime:nobody", "rejected")],
        )
        self.assertFalse(alice.transport.disconnecting)

    def test_sense_service(self):
        alice = self.client("alice")
        alice.send(codec.SenseService(codec.SERVICE_STORAGE))
        alice.send(codec.SenseService(codec.SERVICE_FILE))  # offers are decided: see FileOfferTests
        alice.send(codec.SenseService(codec.SERVICE_CONFERENCE))  # rooms: see ConferenceTests
        alice.send(codec.SenseService(codec.SERVICE_PLACE))  # not offered
        self.assertEqual(alice.read(), [codec.SenseService(codec.SERVICE_STORAGE), codec.SenseService(codec.SERVICE_FILE),
                                        codec.SenseService(codec.SERVICE_CONFERENCE)])

    def test_privacy_deny_list_is_policy(self):
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        bob.send(codec.SetPrivacyList(codec.PrivacyInfo(True, (codec.PrivacyUser("alice"),))))
        self.assertEqual(bob.read(), [codec.SetPrivacyList(codec.PrivacyInfo(True, (codec.PrivacyUser("alice"),)))])
        cid = alice.open_im("bob")
        alice.say(cid, "let me in")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NOT_AUTHORIZED, channel=cid))
        [(event, verdict, status)] = [r for r in self.archive.rows.values() if r[0].kind == "im"]
        self.assertEqual((verdict.rule, status), ("sametime-privacy", "rejected"))
        # ... the AIM handle of the same person is blocked as well, and bob's presence is hidden from alice
        outcome = self.successResultOf(self.core.api.submit(Message("aim:alice", "aim:bob", "via aim")))
        self.assertEqual(outcome.code, "policy")
        outcome = self.successResultOf(self.core.api.submit(Presence("sametime:bob", "away", recipient="sametime:alice")))
        self.assertEqual(outcome.code, "policy")
        # an allow list of one
        self.successResultOf(self.core.api.alias_for(Address("mem", "carol"), "sametime"))
        bob.send(codec.SetPrivacyList(codec.PrivacyInfo(False, (codec.PrivacyUser("mem.carol"),))))  # carol's alias
        d = self.core.api.submit(Message("mem:carol", "sametime:bob", "ok"))
        bob.accept(bob.read()[-1].id)
        self.assertTrue(self.successResultOf(d).delivered)
        # the next login gets the list back in its LOGIN_ACK
        bob.protocol.connectionLost(None)
        bob = self.client("bob", seed=4)
        self.assertEqual(bob.of(codec.LoginAck)[0].privacy, codec.PrivacyInfo(False, (codec.PrivacyUser("mem.carol"),)))
        self.assertEqual(self.successResultOf(self.core.api.submit(Message("aim:alice", "aim:bob", "x"))).code, "policy")


class DrainTests(Base):
    def test_a_drained_node_closes_one_session_as_at_a_shutdown(self):
        alice, bob = self.client("alice"), self.client("bob", seed=2)
        [session] = self.core.sessions.sessions_of("alice")
        self.connector.disconnect(session, "this node is being drained; connect again")
        self.assertClosedWith(alice, codec.ERR_CONNECTION_CLOSED)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        self.assertFalse(bob.transport.disconnecting)


class PrivacyFileTests(unittest.TestCase):
    def test_lists_survive_a_restart(self):
        path = os.path.abspath(os.path.join(self.mktemp(), "privacy.json"))
        core, connector, memory, clock = gateway(f"privacy_file = {json.dumps(path)}")
        connector.startService()
        bob = Client(connector, seed=3)
        bob.login("bob")
        bob.send(codec.SetPrivacyList(codec.PrivacyInfo(True, (codec.PrivacyUser("alice"),))))
        self.successResultOf(connector.stopService())
        with open(path) as f:
            self.assertEqual(json.load(f), {"bob": {"deny": True, "users": [["alice", "", False, ""]]}})
        core, connector, memory, clock = gateway(f"privacy_file = {json.dumps(path)}")
        connector.startService()
        self.addCleanup(connector.stopService)
        outcome = self.successResultOf(core.api.submit(Message("aim:alice", "sametime:bob", "hello?")))
        self.assertEqual((outcome.code, outcome.rule), ("policy", "sametime-privacy"))

    def test_unreadable_file_is_logged_not_fatal(self):
        path = os.path.join(self.mktemp())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("{not json")
        core, connector, memory, clock = gateway(f"privacy_file = {json.dumps(os.path.abspath(path))}")
        with capturedLogs() as events:
            connector.startService()
        self.addCleanup(connector.stopService)
        self.assertTrue(any("cannot read the privacy lists" in e.get("log_format", "") for e in events))


class ConfigTests(unittest.TestCase):
    def test_defaults(self):
        settings = Settings.from_config({})
        self.assertEqual(settings.listen, ("tcp:1533:interface=127.0.0.1",))
        self.assertEqual(settings.auth_types, {codec.AUTH_RC2_128})

    def test_errors_name_the_key(self):
        for config, key in (
            ({"lisen": []}, "connectors.sametime.lisen"),
            ({"listen": "tcp:1"}, "connectors.sametime.listen"),
            ({"login_cipher": "des"}, "connectors.sametime.login_cipher"),
            ({"channel_ciphers": ["aes"]}, "connectors.sametime.channel_ciphers"),
            ({"max_channels": 0}, "connectors.sametime.max_channels"),
            ({"rate": True}, "connectors.sametime.rate"),
        ):
            with self.assertRaises(ConfigError) as e:
                Settings.from_config(config)
            self.assertEqual(e.exception.key, key, config)

    def test_unknown_key_through_the_core(self):
        plugins = Plugins()
        plugins.register(SametimePlugin(), "sametime")
        core = make_core("[connectors.sametime]\nport = 5\n", plugins=plugins)
        self.assertRaises(ConfigError, core.start_plugins)

    def test_stop_logs_everyone_out(self):
        core, connector, memory, clock = gateway()
        connector.startService()
        c = Client(connector)
        c.login("alice")
        self.assertEqual(len(core.sessions.sessions_of("alice")), 1)
        self.successResultOf(connector.stopService())
        self.assertEqual(core.sessions.sessions_of("alice"), [])
        self.assertEqual(c.read()[-1], codec.ChannelDestroy(codec.ERR_CONNECTION_CLOSED, channel=0))


class StreamTests(unittest.TestCase):
    """The protocol fed libpurple's bytes cut at every offset, and fed garbage."""

    def test_login_split_at_every_offset(self):
        from tests.sametime.test_codec import HANDSHAKE, LOGIN_RC2_40, SET_STATUS, SET_PRIVACY

        stream = HANDSHAKE + b"\x80" + LOGIN_RC2_40 + SET_STATUS + b"\x80" + SET_PRIVACY
        core, connector, memory, clock = gateway('login_cipher = "rc2-40"\nallow_weak_login = true')
        for cut in range(len(stream) + 1):
            c = Client(connector, seed=cut)
            c.protocol.dataReceived(stream[:cut])
            c.protocol.dataReceived(stream[cut:])
            kinds = [type(m) for m in c.read()]
            self.assertEqual(
                kinds, [codec.HandshakeAck, codec.LoginAck, codec.SetUserStatus, codec.SetPrivacyList], cut
            )
            c.protocol.connectionLost(None)
        self.assertEqual(core.sessions.sessions_of("alice"), [])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.builds(
                lambda kind, options, channel, body: codec.opaque(
                    codec.u16(kind) + codec.u16(options) + codec.u32(channel) + body
                ),
                st.sampled_from(sorted(codec.MESSAGE_TYPES) + [0x77]),
                st.sampled_from([0, codec.OPT_ENCRYPTED, codec.OPT_ATTRIBS]),
                st.sampled_from([0, 1, 2, 3, 0x80000001]),
                st.binary(max_size=80),
            ),
        ),
        max_size=8,
    ))
    def test_garbage_after_login_never_escapes(self, chunks):
        core, connector, memory, clock = gateway()
        bystander = Client(connector, seed=9)
        bystander.login("bob")
        c = Client(connector, seed=1)
        c.login("alice")
        c.open_channel(codec.SERVICE_AWARE, 0x11, 0x30005)
        c.open_channel(codec.SERVICE_STORAGE, 0x25, 1)
        c.open_channel(codec.SERVICE_RESOLVE, 0x15, 0)
        for chunk in chunks:
            c.protocol.dataReceived(chunk)  # must not raise
        self.assertIn(c.protocol.state, ("active", "closed"))
        if c.protocol.state == "closed":
            self.assertEqual(core.sessions.sessions_of("alice"), [])
        self.assertEqual(bystander.protocol.state, "active")
        self.assertEqual(len(core.sessions.sessions_of("bob")), 1)


class AwarenessDisclosureTests(Base):
    """The awareness snapshot is a disclosure on the path: a presence rule hides bob from alice on every network."""

    policy = """
[[policy.rule]]
name = "hide-bob-from-alice"
action = "deny"
from = ["user:bob"]
to = ["user:alice"]
kinds = ["presence"]
"""

    aware = ServiceTests.aware

    def test_snapshot_and_updates_hidden(self):
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = self.aware(alice)
        alice.channel_send(cid, codec.AWARE_ADD, codec.encode_aware_list([codec.AwareId("bob")]))
        [entry] = codec.decode_aware_snapshot(alice.payloads(cid, codec.AWARE_SNAPSHOT)[-1][1])
        self.assertFalse(entry.online)
        told = [e for e in self.archive.events("presence")
                if str(e.sender) == "sametime:bob" and str(e.recipient) == "sametime:alice"]
        self.assertTrue(told)
        self.assertTrue(all(self.archive.status(e.id) == "rejected" for e in told))
        # Later changes are decided the same way: still hidden.
        bob.send(codec.SetUserStatus(codec.UserStatus(codec.STATUS_AWAY, 0, "lunch")))
        self.assertEqual(alice.payloads(cid, codec.AWARE_UPDATE), [])


class OfferNoticeTests(Base):
    def test_a_file_offer_from_another_network_is_shown_as_a_notice(self):
        alice = self.client("alice")
        alice.auto_accept = True
        offer = self.core.api.file_offer("mem:carol", "sametime:alice", "notes.txt", 42)
        outcome = self.successResultOf(self.core.bus.submit(offer))
        self.assertTrue(outcome.delivered)
        alice.answer()
        texts = [text for _, text in alice.texts()]
        self.assertTrue(any("notes.txt" in t and "cannot be transferred" in t for t in texts), texts)


NO_FILES_FOR_BOB = """
[[policy.rule]]
name = "no-files-for-bob"
action = "deny"
to = ["user:bob"]
kinds = ["file"]
"""


class FileOfferTests(Base):
    """A file-transfer channel (service 0x38) is a file offer on the path: refused or shown, never carried."""

    policy = NO_FILES_FOR_BOB

    def offer(self, client, peer, name="plans.pdf", message="the plans", size=4096):
        addtl = codec.FileAddtl(name, message, size).encode()
        return client.open_channel(codec.SERVICE_FILE, 0, 1, peer, addtl, codec.EncryptOffer())

    def test_the_addtl_block_round_trips_in_the_layout_meanwhile_writes(self):
        raw = h("00000000 0009 706c616e732e706466 0003 686921 00001000 00000000 0000")
        self.assertEqual(codec.FileAddtl.decode(raw), codec.FileAddtl("plans.pdf", "hi!", 4096))
        self.assertEqual(codec.FileAddtl("plans.pdf", "hi!", 4096).encode(), raw)
        with self.assertRaises(codec.CodecError):
            codec.FileAddtl.decode(raw[:9])

    def test_a_refused_offer_closes_the_channel_and_is_archived(self):
        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        cid = self.offer(alice, "bob")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NOT_AUTHORIZED, channel=cid))
        self.assertNotIn(cid, alice.protocol.channels)
        [offer] = self.archive.events("file")
        self.assertEqual((str(offer.sender), str(offer.recipient), offer.name, offer.size, offer.text),
                         ("sametime:alice", "sametime:bob", "plans.pdf", 4096, "the plans"))
        self.assertEqual(self.archive.status(offer.id), "rejected")
        self.assertFalse([m for m in bob.read() if isinstance(m, codec.ChannelCreate)])

    def test_an_allowed_offer_is_shown_and_the_sender_told_it_is_not_carried(self):
        alice = self.client("alice", seed=2)
        carol = self.carol()
        cid = self.offer(alice, "mem:carol")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_SERVICE_NO_SUPPORT, channel=cid))
        [shown] = self.memory.received(carol, "file")
        self.assertEqual((shown.name, shown.size, shown.text), ("plans.pdf", 4096, "the plans"))
        [offer] = self.archive.events("file")
        self.assertEqual(self.archive.status(offer.id), "delivered")

    def test_bad_offers_close_only_their_channel(self):
        alice = self.client("alice", seed=2)
        cid = alice.open_channel(codec.SERVICE_FILE, 0, 1, "bob", b"\0\0", codec.EncryptOffer())
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_BAD_DATA, channel=cid))
        cid = self.offer(alice, "nobody")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NO_USER, channel=cid))
        self.assertFalse(alice.transport.disconnecting)
        self.assertEqual(self.archive.events("file"), [])


class ConferenceTests(Base):
    """Conferences (service 0x80000010): opened by title, a room of the gateway's."""

    def open_conference(self, client, title, name="alice(0001,0002)"):
        from gateway_sametime import conference

        return client.open_channel(codec.SERVICE_CONFERENCE, conference.PROTO_TYPE, conference.PROTO_VER,
                                   addtl=codec.string(name) + codec.string(title) + codec.u32(0))

    def test_two_clients_and_another_network_in_one_room(self):
        from gateway_sametime import conference

        alice, bob = self.client("alice", seed=2), self.client("bob", seed=3)
        carol = self.carol()
        self.successResultOf(self.core.api.join_room(carol, "trading-desk", "carol"))
        cid = self.open_conference(alice, "Trading Desk")
        self.assertIsInstance(alice.inbox[-2], codec.ChannelAccept)
        [(_, welcome)] = alice.payloads(cid, conference.WELCOME)
        r = codec.Reader(welcome)
        self.assertEqual((r.string(), r.string(), r.u16(), r.u32(), r.u32()),
                         ("alice(0001,0002)", "Trading Desk", 0, 0, 2))
        members = []
        for _ in range(2):
            member_id = r.u16()
            members.append((member_id, codec.LoginInfo.read(r).user_id))
        self.assertEqual([user for _, user in members], ["carol", "alice"])
        ids = dict((user, member_id) for member_id, user in members)
        bcid = self.open_conference(bob, "trading desk", name="bob(1,2)")
        [(_, joined)] = alice.payloads(cid, conference.JOIN)
        bob_id = codec.Reader(joined).u16()
        alice.channel_send(cid, conference.MESSAGE, codec.u32(1) + codec.string("buying at 42"))
        for client, channel, expected_id in ((alice, cid, ids["alice"]), (bob, bcid, None)):
            [(_, said)] = client.payloads(channel, conference.MESSAGE)
            r = codec.Reader(said)
            member_id, _, one, text = r.u16(), r.u32(), r.u32(), r.string()
            self.assertEqual((one, text), (1, "buying at 42"))
            if expected_id is not None:
                self.assertEqual(member_id, expected_id)  # its own line, reflected under its own id
        said = [e for e in self.memory.received(carol, "chat") if e.action == "message"]
        self.assertEqual([(str(e.sender), e.text) for e in said], [("sametime:alice", "buying at 42")])
        # Closing the channel leaves the room: the others see the member part.
        bob.send(codec.ChannelDestroy(codec.ERR_SUCCESS, b"Leaving", channel=bcid))
        [(_, part)] = alice.payloads(cid, conference.PART)
        self.assertEqual(codec.Reader(part).u16(), bob_id)
        self.assertEqual([m["nick"] for m in self.core.api.room("trading-desk")["members"]], ["carol", "alice"])

    def test_a_refused_join_closes_the_channel_and_is_archived(self):
        self.core.rooms.config = self.core.config.rooms.__class__(ad_hoc=False)
        alice = self.client("alice")
        cid = self.open_conference(alice, "nowhere")
        self.assertEqual(alice.inbox[-1], codec.ChannelDestroy(codec.ERR_NO_ELEMENT, channel=cid))
        [join] = self.archive.events("chat")
        self.assertEqual((join.room, self.archive.status(join.id)), ("nowhere", "rejected"))

    def test_bad_conference_parameters_close_only_that_channel(self):
        from gateway_sametime import conference

        alice = self.client("alice")
        cid = alice.open_channel(codec.SERVICE_CONFERENCE, conference.PROTO_TYPE, conference.PROTO_VER,
                                 addtl=b"\x00\x09abc")
        self.assertEqual(alice.inbox[-1].reason, codec.ERR_BAD_DATA)
        self.assertEqual(alice.inbox[-1].channel, cid)
        self.assertFalse(alice.transport.disconnecting)
