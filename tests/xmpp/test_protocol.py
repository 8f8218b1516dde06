"""The c2s stream on StringTransport and task.Clock: negotiation wire-exact, stanzas, limits, errors, conformance."""

import base64
import hashlib
import hmac
import os

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gateway.model import Address, Contact, Message
from gateway.testing import ConnectorConformanceMixin, MemoryDirectory, make_core

from gateway_xmpp.codec import StreamParser
from gateway_xmpp.connector import OPTIONS, XmppConnector, gateway_register_connectors
from gateway_xmpp.protocol import C2SStream
from gateway.config import ConfigError

HEADER = (b"<stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
SERVER_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='s1' version='1.0' xml:lang='en'>")
SASL = b"urn:ietf:params:xml:ns:xmpp-sasl"
POLICY = """
[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
"""


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def stanzas(data):
    """The first-level elements in server output (which starts with or continues a stream)."""
    found = []
    parser = StreamParser(lambda n, a: None, found.append, lambda: None)
    if not data.startswith(b"<?xml"):
        parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
    parser.feed(data)
    return found


class Harness:
    def __init__(self, config=None, core_config=""):
        self.clock = task.Clock()
        self.directory = MemoryDirectory()
        self.directory.add("alice", "xmpp:alice@localhost", "aim:alice", display_name="Alice A")
        self.directory.add("bob", "xmpp:bob@localhost", "aim:bob")
        self.directory.add("carol", "xmpp:carol@localhost")
        self.directory.set_contacts("alice", [Contact("aim:bob", name="Bob")])
        self.directory.set_contacts("bob", [Contact("aim:alice")])
        self.core = make_core(core_config, directory=self.directory, clock=self.clock)
        options = {"listen": [], "require_tls": False, "idle_timeout": 60, "login_timeout": 10,
                   "rate": 10, "burst": 5}
        options.update(config or {})
        self.connector = XmppConnector(self.core.api, options)
        self.core.connectors["xmpp"] = self.connector

    def connect(self, host="127.0.0.1"):
        stream = C2SStream(self.connector, self.connector.default_settings)
        stream.new_id = lambda: "s1"
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        stream.makeConnection(transport)
        return stream

    def connector_factory(self):
        """The factory the connector listens with (as its refusals come from it)."""
        from gateway_xmpp.connector import _StreamFactory

        factory = _StreamFactory()
        factory.api = self.core.api
        return factory

    @staticmethod
    def send(stream, data):
        stream.dataReceived(data)
        out = stream.transport.value()
        stream.transport.clear()
        return out

    def login(self, user, resource="home", available=True):
        return login(self.connector, user, resource, available)


def login(connector, user, resource="home", available=True):
    """A c2s stream on StringTransport logged in (PLAIN, bind, initial presence) as ``user``."""
    stream = C2SStream(connector, connector.default_settings)
    stream.new_id = lambda: "s1"
    stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
    send = Harness.send
    send(stream, HEADER)
    out = send(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                       f"{plain(user, 'secret')}</auth>".encode())
    assert out == b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>", out
    send(stream, HEADER)
    send(stream, f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 f"<resource>{resource}</resource></bind></iq>".encode())
    if available:
        send(stream, b"<presence/>")
    stream.transport.clear()
    return stream


class NegotiationTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness()

    def test_plain_login_and_bind_wire_exact(self):
        stream = self.h.connect()
        self.assertEqual(
            self.h.send(stream, HEADER),
            SERVER_HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>"
            b"</mechanisms></stream:features>",
        )
        self.assertEqual(
            self.h.send(stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                                + plain("alice", "secret").encode() + b"</auth>"),
            b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>",
        )
        self.assertEqual(
            self.h.send(stream, HEADER),
            SERVER_HEADER + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
            b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>",
        )
        self.assertEqual(
            self.h.send(stream, b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                b"<resource>home</resource></bind></iq>"),
            b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<jid>alice@localhost/home</jid></bind></iq>",
        )
        self.assertEqual(self.h.core.sessions.sessions_of("alice"), [])
        self.assertEqual(self.h.send(stream, b"<presence/>"),
                         b"<presence from='alice@localhost/home' to='alice@localhost/home'/>")
        session, = self.h.core.sessions.sessions_of("alice")
        self.assertEqual(session.address, Address("xmpp", "alice", "localhost"))

    def test_scram_sha_256_login(self):
        stream = self.h.connect()
        self.h.send(stream, HEADER)
        client_first_bare = "n=alice,r=clientnonce"
        out = self.h.send(stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
                                  + base64.b64encode(b"n,," + client_first_bare.encode()) + b"</auth>")
        challenge, = stanzas(out)
        server_first = base64.b64decode(str(challenge)).decode()
        fields = dict(p.split("=", 1) for p in server_first.split(","))
        self.assertTrue(fields["r"].startswith("clientnonce"))
        salted = hashlib.pbkdf2_hmac("sha256", b"secret", base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        out = self.h.send(stream, f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                                  f"{base64.b64encode(f'{without_proof},p={proof}'.encode()).decode()}</response>".encode())
        success, = stanzas(out)
        self.assertEqual(success.name, "success")
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        expected = base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())
        self.assertEqual(base64.b64decode(str(success)), b"v=" + expected)
        self.assertEqual(stream.address, Address("xmpp", "alice", "localhost"))

    def test_wrong_password_then_too_many(self):
        stream = self.h.connect()
        self.h.send(stream, HEADER)
        auth = f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain('alice', 'nope')}</auth>".encode()
        failure = (b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                   b"<text>wrong user name or password</text></failure>")
        self.assertEqual(self.h.send(stream, auth), failure)
        self.assertEqual(self.h.send(stream, auth), failure)
        self.assertEqual(
            self.h.send(stream, auth),
            failure + b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too many failed logins</text>"
            b"</stream:error></stream:stream>",
        )
        self.assertTrue(stream.transport.disconnecting)

    def scram_first(self, stream, user="alice"):
        self.h.send(stream, HEADER)
        out = self.h.send(stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
                          + base64.b64encode(f"n,,n={user},r=clientnonce".encode()) + b"</auth>")
        return stanzas(out)

    def test_scram_goes_through_the_gateway_throttle_with_its_address(self):
        for _ in range(5):
            stream = self.h.connect(host="198.51.100.7")
            challenge, = self.scram_first(stream)
            server_first = base64.b64decode(str(challenge)).decode()
            nonce = dict(p.split("=", 1) for p in server_first.split(","))["r"]
            bogus = base64.b64encode(f"c=biws,r={nonce},p={base64.b64encode(b'x' * 32).decode()}".encode())
            out = self.h.send(stream, b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" + bogus + b"</response>")
            self.assertIn(b"<not-authorized/>", out)
        # That address is refused for alice before any secret is looked at ...
        failure, = self.scram_first(self.h.connect(host="198.51.100.7"))
        self.assertEqual(failure.name, "failure")
        self.assertIn("temporary-auth-failure", failure.toXml())
        # ... while alice from her own address is asked for her proof as usual.
        challenge, = self.scram_first(self.h.connect(host="192.0.2.44"))
        self.assertEqual(challenge.name, "challenge")
        failed = [(e.source, e.text) for e in self.h.core.archive.events("access") if e.action == "login-failed"]
        self.assertEqual(len(failed), 6)
        self.assertEqual(failed[-1], ("198.51.100.7", "throttled"))

    def test_scram_exchanges_begun_together_get_only_the_limit_of_guesses(self):
        # Twenty exchanges all get their challenge before any proof comes:
        # the throttle is asked again when each proof arrives.
        exchanges = []
        for _ in range(20):
            stream = self.h.connect(host="198.51.100.9")
            challenge, = self.scram_first(stream)
            self.assertEqual(challenge.name, "challenge")
            exchanges.append((stream, challenge))
        answers = []
        for stream, challenge in exchanges:
            server_first = base64.b64decode(str(challenge)).decode()
            nonce = dict(p.split("=", 1) for p in server_first.split(","))["r"]
            bogus = base64.b64encode(f"c=biws,r={nonce},p={base64.b64encode(b'x' * 32).decode()}".encode())
            answers.append(self.h.send(stream, b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" + bogus
                                       + b"</response>"))
        self.assertEqual(sum(b"<not-authorized/>" in out for out in answers), 5)
        self.assertEqual(sum(b"<temporary-auth-failure/>" in out for out in answers), 15)

    def test_plain_throttled_is_a_temporary_failure_not_an_error(self):
        for _ in range(5):
            stream = self.h.connect(host="198.51.100.8")
            self.h.send(stream, HEADER)
            self.h.send(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                                f"{plain('alice', 'nope')}</auth>".encode())
        stream = self.h.connect(host="198.51.100.8")
        self.h.send(stream, HEADER)
        out = self.h.send(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                                  f"{plain('alice', 'secret')}</auth>".encode())
        self.assertIn(b"<temporary-auth-failure/>", out)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_stanza_before_auth(self):
        stream = self.h.connect()
        self.h.send(stream, HEADER)
        out = self.h.send(stream, b"<message to='bob@localhost'><body>x</body></message>")
        self.assertIn(b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", out)
        self.assertTrue(stream.transport.disconnecting)

    def test_bad_headers(self):
        for header, condition in (
            (HEADER.replace(b"to='localhost'", b"to='elsewhere'"), b"host-unknown"),
            (HEADER.replace(b"version='1.0'", b""), b"unsupported-version"),
            (b"<stream xmlns='jabber:client'>", b"invalid-namespace"),
            (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e 'x'>]>" + HEADER, b"restricted-xml"),
            (b"<>", b"not-well-formed"),
        ):
            stream = self.h.connect()
            out = self.h.send(stream, header)
            self.assertTrue(out.startswith(b"<?xml version='1.0'?><stream:stream"), out)
            self.assertIn(b"<stream:error><" + condition + b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", out)
            self.assertTrue(out.endswith(b"</stream:error></stream:stream>"))
            self.assertTrue(stream.transport.disconnecting)

    def test_starttls_required(self):
        from tests.xmpp.peers import make_certificate

        directory = self.mktemp()
        import os

        os.makedirs(directory)
        cert, key = make_certificate(directory)
        h = Harness({"tls_certificate": cert, "tls_key": key, "require_tls": True})
        stream = h.connect()
        started = []
        stream.transport.startTLS = started.append
        self.assertEqual(
            h.send(stream, HEADER),
            SERVER_HEADER + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
            b"</starttls></stream:features>",
        )
        out = h.send(stream, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                             + plain("alice", "secret").encode() + b"</auth>")
        self.assertIn(b"<encryption-required/>", out)
        self.assertIsNone(stream.address)
        self.assertEqual(h.send(stream, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
                         b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertTrue(stream.tls)
        self.assertEqual(started, [h.connector.default_settings.tls_options])
        # The stream restarts: a new header gets the mechanisms now.
        self.assertIn(b"<mechanism>PLAIN</mechanism>", h.send(stream, HEADER))

    def test_config_errors(self):
        h = Harness()
        for options, key in (
            ({"bogus": 1}, "bogus"),
            ({"require_tls": True}, "require_tls"),
            ({"require_tls": False, "rate": 0}, "rate"),
            ({"require_tls": False, "mechanisms": ["DIGEST-MD5"]}, "mechanisms"),
            ({"require_tls": False, "listen": [5]}, "listen"),
            ({"require_tls": False, "component": {"domain": "gw.x"}}, "component.secret"),
            ({"listen": ["tcp:5222"]}, "tls_certificate"),
        ):
            e = self.assertRaises(ConfigError, XmppConnector, h.core.api, options)
            self.assertIn(key, str(e))

    def test_mechanisms_follow_the_directory(self):
        h = Harness()
        self.assertEqual(h.connector.default_settings.mechanisms, ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"))
        # A directory that knows SCRAM keys only of people who logged in before (LDAP): PLAIN only,
        # unless the config says otherwise.
        h.directory.secrets_complete = False
        connector = XmppConnector(h.core.api, {"listen": [], "require_tls": False})
        self.assertEqual(connector.default_settings.mechanisms, ("PLAIN",))
        connector = XmppConnector(h.core.api, {"listen": [], "require_tls": False, "mechanisms": ["SCRAM-SHA-1", "PLAIN"]})
        self.assertEqual(connector.default_settings.mechanisms, ("SCRAM-SHA-1", "PLAIN"))

    def test_built_from_the_table_the_core_hands_over(self):
        """The core fills in every default (None: require_tls and mechanisms unset) before the connector reads it."""
        from gateway.plugin import read_options

        h = Harness()
        connector = XmppConnector(h.core.api, read_options("xmpp", {"listen": []}, OPTIONS))
        self.assertEqual(connector.default_settings.mechanisms, ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"))
        self.assertFalse(connector.default_settings.require_tls)
        e = self.assertRaises(ConfigError, XmppConnector, h.core.api,
                              read_options("xmpp", {"listen": ["tcp:5222"]}, OPTIONS))
        self.assertIn("tls_certificate", str(e))

    def test_entry_point_hook(self):
        registered = {}

        class Api:
            def register_connector(self, name, factory, options=None):
                registered[name] = factory, options

        gateway_register_connectors(Api())
        self.assertEqual(registered["xmpp"], (XmppConnector, OPTIONS))


class StanzaTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(core_config=POLICY)

    def test_message_both_ways_with_receipt(self):
        alice = self.h.login("alice")
        bob = self.h.login("bob", "phone")
        alice.transport.clear()
        out = self.h.send(alice, b"<message to='bob@localhost' type='chat' id='m1'><body>hi \xc3\xa9</body>"
                                 b"<request xmlns='urn:xmpp:receipts'/></message>")
        self.assertEqual(out, b"<message from='bob@localhost' to='alice@localhost/home'>"
                              b"<received xmlns='urn:xmpp:receipts' id='m1'/></message>")
        got, = stanzas(bob.transport.value())
        self.assertEqual((got["from"], got["to"], str(got.body)), ("alice@localhost", "bob@localhost/phone", "hi \u00e9"))
        event = self.h.core.archive.events("im")[0]
        self.assertEqual(got["id"], event.id)

    def test_a_drained_node_ends_one_stream_with_system_shutdown(self):
        alice, bob = self.h.login("alice"), self.h.login("bob")
        [session] = self.h.core.sessions.sessions_of("alice")
        self.h.connector.disconnect(session, "this node is being drained; connect again")
        out = alice.transport.value()
        self.assertIn(b"<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", out)
        self.assertIn(b"this node is being drained; connect again", out)
        self.assertTrue(alice.transport.disconnecting)
        alice.connectionLost(None)
        self.assertEqual(self.h.core.sessions.sessions_of("alice"), [])
        self.assertFalse(bob.transport.disconnecting)

    def test_a_less_loaded_node_of_the_cluster_takes_the_login(self):
        self.h.core.placement = lambda connector: "127.0.0.2:5223" if connector == "xmpp" else None
        stream = self.h.connect()
        out = self.h.send(stream, HEADER)
        self.assertIn(b"<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>127.0.0.2:5223"
                      b"</see-other-host>", out)
        self.assertNotIn(b"<stream:features>", out)
        self.assertTrue(stream.transport.disconnecting)
        # A node that refuses new connections (drained, full) sends them there too.
        factory = self.h.connector_factory()
        self.assertIn(b"<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>127.0.0.2:5223</see-other-host>",
                      factory.refusal("node-draining"))
        self.h.core.placement = lambda connector: None
        self.assertIn(b"<system-shutdown", factory.refusal("node-draining"))
        self.assertIn(b"<resource-constraint", factory.refusal("node-full"))
        self.assertIn(b"<features", b"".join([self.h.send(self.h.connect(), HEADER)]).replace(b"stream:", b""))

    def test_several_resources(self):
        laptop = self.h.login("alice", "laptop")
        phone = self.h.login("alice", "phone")
        again = self.h.login("alice", "phone")  # a taken resource gets a new one
        self.assertTrue(again.jid.startswith("alice@localhost/phone-"), again.jid)
        bob = self.h.login("bob")
        for stream in (laptop, phone, again):
            stream.transport.clear()
        self.h.send(bob, b"<message to='alice@localhost/phone' type='chat'><body>to all</body></message>")
        for stream in (laptop, phone, again):
            got = [s for s in stanzas(stream.transport.value()) if s.name == "message"]
            self.assertEqual([str(g.body) for g in got], ["to all"], stream.jid)
        self.assertEqual(len(self.h.core.sessions.sessions_of("alice")), 3)

    def test_chat_states_become_typing(self):
        alice = self.h.login("alice")
        bob = self.h.login("bob", "phone")
        bob.transport.clear()
        self.h.send(alice, b"<message to='bob@localhost' type='chat'>"
                           b"<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        got, = stanzas(bob.transport.value())
        self.assertEqual(got.firstChildElement().name, "composing")
        bob.transport.clear()
        self.h.send(alice, b"<message to='bob@localhost' type='chat'>"
                           b"<paused xmlns='http://jabber.org/protocol/chatstates'/></message>")
        got, = stanzas(bob.transport.value())
        self.assertEqual(got.firstChildElement().name, "paused")

    def test_errors_from_outcomes(self):
        bob = self.h.login("bob")
        out = self.h.send(bob, b"<message to='carol@localhost' id='x1'><body>psst</body></message>")
        error, = stanzas(out)
        self.assertEqual(error["type"], "error")
        self.assertEqual(error["from"], "carol@localhost")
        condition = [c.name for c in error.error.elements()]
        self.assertEqual(condition[0], "forbidden")
        out = self.h.send(bob, b"<message to='nobody@localhost' id='x2'><body>hey</body></message>")
        self.assertEqual(
            out,
            b"<message id='x2' to='bob@localhost/home' from='nobody@localhost' type='error'><body>hey</body>"
            b"<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no such user: xmpp:nobody@localhost</text>"
            b"</error></message>",
        )

    def test_offline_delivery_at_login(self):
        alice = self.h.login("alice")
        self.assertEqual(self.h.send(alice, b"<message to='carol@localhost' id='o1'><body>later</body></message>"), b"")
        self.h.clock.advance(30)
        carol = self.h.login("carol", available=False)
        out = self.h.send(carol, b"<presence/>")
        message = [s for s in stanzas(out) if s.name == "message"]
        self.assertEqual(len(message), 1)
        self.assertEqual(str(message[0].body), "later")
        self.assertEqual(message[0].delay["stamp"], "1970-01-01T00:00:00Z")

    def test_presence_and_roster(self):
        alice = self.h.login("alice")
        out = self.h.send(alice, b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        self.assertEqual(out, b"<iq type='result' id='r1' to='alice@localhost/home'><query xmlns='jabber:iq:roster'>"
                              b"<item jid='bob@localhost' name='Bob' subscription='both'><group>Buddies</group></item>"
                              b"</query></iq>")
        bob = self.h.login("bob")
        self.assertIn(b"<presence from='bob@localhost' to='alice@localhost/home'/>", alice.transport.value())
        alice.transport.clear()
        self.h.send(bob, b"<presence><show>away</show><status>lunch</status></presence>")
        self.assertEqual(alice.transport.value(),
                         b"<presence from='bob@localhost' to='alice@localhost/home'><show>away</show>"
                         b"<status>lunch</status></presence>")
        alice.transport.clear()
        bob.connectionLost(None)
        self.assertEqual(alice.transport.value(), b"<presence from='bob@localhost' to='alice@localhost/home' type='unavailable'/>")
        alice.transport.clear()
        # Roster set: stored in the directory (the list every network sees) and pushed.
        out = self.h.send(alice, b"<iq type='set' id='r2'><query xmlns='jabber:iq:roster'>"
                                 b"<item jid='carol@localhost' name='C'><group>Work</group></item></query></iq>")
        self.assertEqual(out, b"<iq type='set' id='push-" + out.split(b"push-")[1].split(b"'")[0] + b"' "
                              b"to='alice@localhost/home'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' "
                              b"name='C' subscription='both'><group>Work</group></item></query></iq>"
                              b"<iq type='result' id='r2' to='alice@localhost/home'/>")
        contacts = self.h.directory._contacts["alice"]
        self.assertIn(Contact("xmpp:carol@localhost", group="Work", name="C"), contacts)

    def test_subscription_through_policy(self):
        bob = self.h.login("bob")
        out = self.h.send(bob, b"<presence to='carol@localhost' type='subscribe'/>")
        self.assertEqual(out, b"<presence from='carol@localhost' to='bob@localhost' type='unsubscribed'/>")
        out = self.h.send(bob, b"<presence to='alice@localhost' type='subscribe'/>")
        self.assertIn(b"<presence from='alice@localhost' to='bob@localhost' type='subscribed'/>", out)

    def test_iq_services(self):
        alice = self.h.login("alice")
        out = self.h.send(alice, b"<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(out, b"<iq type='result' id='p1' to='alice@localhost/home' from='localhost'/>")
        out = self.h.send(alice, b"<iq type='get' id='v1' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertIn(b"<FN>Alice A</FN>", out)
        out = self.h.send(alice, b"<iq type='get' id='d1' to='localhost'>"
                                 b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        self.assertIn(b"<feature var='urn:xmpp:receipts'/>", out)
        out = self.h.send(alice, b"<iq type='get' id='u1'><unknown xmlns='urn:x'/></iq>")
        self.assertIn(b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>", out)
        self.assertFalse(alice.transport.disconnecting)


class LimitTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness({"max_stanza_size": 1000})

    def test_big_stanza_closes_only_that_stream(self):
        alice = self.h.login("alice")
        bob = self.h.login("bob")
        alice.transport.clear()
        out = self.h.send(alice, b"<message to='bob@localhost'><body>" + b"x" * 2000 + b"</body></message>")
        self.assertEqual(out, b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                              b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>stanza over the limit of 1000 bytes"
                              b"</text></stream:error></stream:stream>")
        self.assertTrue(alice.transport.disconnecting)
        alice.connectionLost(None)
        self.assertEqual(self.h.core.sessions.sessions_of("alice"), [])
        self.assertEqual(len(self.h.core.sessions.sessions_of("bob")), 1)
        self.assertFalse(bob.transport.disconnecting)
        self.assertEqual(bob.transport.value(), b"<presence from='alice@localhost' to='bob@localhost/home' type='unavailable'/>")
        bob.transport.clear()
        self.assertEqual(self.h.send(bob, b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"),
                         b"<iq type='result' id='p' to='bob@localhost/home'/>")

    def test_idle_and_login_timeouts(self):
        idle = self.h.login("alice")
        silent = self.h.connect()
        self.h.clock.advance(10)
        self.assertIn(b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", silent.transport.value())
        self.assertTrue(silent.transport.disconnecting)
        self.assertFalse(idle.transport.disconnecting)
        self.h.clock.advance(30)
        self.h.send(idle, b" ")  # a whitespace keepalive counts as activity
        self.h.clock.advance(40)
        self.assertFalse(idle.transport.disconnecting)
        self.h.clock.advance(25)
        self.assertIn(b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", idle.transport.value())
        self.assertTrue(idle.transport.disconnecting)

    def test_rate_pauses_reading(self):
        alice = self.h.login("alice")
        self.h.clock.advance(1)  # refill the bucket (burst 5, rate 10/s)
        ping = b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"
        self.h.send(alice, ping * 5)
        self.assertEqual(alice.transport.producerState, "producing")
        self.h.send(alice, ping * 3)
        self.assertEqual(alice.transport.producerState, "paused")
        self.h.clock.advance(0.31)
        self.assertEqual(alice.transport.producerState, "producing")


class XmppConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "xmpp"
    handles = ("xmpp:alice@localhost", "xmpp:bob@localhost")

    def setUp(self):
        self.clock = task.Clock()

    def make_connector(self, api):
        return XmppConnector(api, {"listen": [], "require_tls": False})

    def connect_client(self, connector, identity, address):
        # What the client is told from its login on counts (held messages come then).
        session, said = self.try_login(connector, address, "secret")
        self.assertIsNotNone(session, said)
        return session

    def client_received(self, connector, session):
        return [str(s.body) for s in stanzas(session.handler.transport.value())
                if s.name == "message" and s.body is not None]

    # An XMPP client, for the deeper conformance tests.

    def try_login(self, connector, address, password):
        stream = C2SStream(connector, connector.default_settings)
        stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.20", 40000)))
        Harness.send(stream, HEADER)
        out = Harness.send(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                                   f"{plain(address.user, password)}</auth>".encode())
        if b"<success" not in out:
            return None, out.decode()
        Harness.send(stream, HEADER)
        Harness.send(stream, b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                             b"<resource>r</resource></bind></iq>")
        stream.dataReceived(b"<presence/>")  # what comes from here on stays in the transport
        return stream.session, out.decode()

    def client_send(self, connector, session, recipient, text):
        to = connector.domains.address_to_jid(recipient) if recipient.network == "xmpp" else recipient.handle
        session.handler.dataReceived(f"<message type='chat' to='{to}'><body>{text}</body></message>".encode())

    def drop_client(self, connector, session):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        stream = session.handler
        stream.transport.loseConnection()
        stream.connectionLost(Failure(ConnectionLost()))

    garbage_samples = [HEADER + b"<message><body>x</body></message>", b"<?xml version='1.0'?><stream:stream>",
                       b"\xff\xfe" * 40]

    def garbage_client(self, connector, data):
        stream = C2SStream(connector, connector.default_settings)
        stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.21", 40000)))
        stream.dataReceived(data)

    def client_presence(self, connector, session):
        from gateway.model import Address

        seen = []
        for s in stanzas(session.handler.transport.value()):
            if s.name == "presence" and s.getAttribute("from"):
                jid = s["from"].split("/")[0]
                seen.append((Address.parse("xmpp:" + jid), s.getAttribute("type") or "available"))
        return seen


class ReachTests(unittest.TestCase):
    def test_component_domains(self):
        h = Harness({"component": {"domain": "gw.example.org", "secret": "x", "port": 5347}})
        self.assertTrue(h.connector.can_reach(Address("xmpp", "zoe", "example.org")))
        self.assertFalse(h.connector.can_reach(Address("xmpp", "zoe", "elsewhere.org")))
        self.assertFalse(h.connector.can_reach(Address("xmpp", "bob", "localhost")))
        self.assertFalse(h.connector.can_reach(Address("xmpp", "bob", "gw.example.org")))
        self.assertEqual(h.connector.domains.address_to_jid(Address("xmpp", "aim.bob", "localhost"), True),
                         "aim.bob@gw.example.org")
        self.assertEqual(h.connector.domains.address_to_jid(Address("xmpp", "j doe", "localhost")), "j\\20doe@localhost")
        from twisted.words.protocols.jabber.jid import JID

        self.assertEqual(h.connector.domains.jid_to_address(JID("j\\20doe@gw.example.org")),
                         Address("xmpp", "j doe", "localhost"))
        # Component deliveries while not attached fail (the bus then queues or rejects).
        self.assertRaises(ConnectionError, h.connector.deliver,
                          Message("xmpp:bob@localhost", "xmpp:zoe@example.org", "x"), None)


class RobustnessTests(unittest.TestCase):
    def test_a_failing_handler_answers_that_stanza_only(self):
        h = Harness()
        alice = h.login("alice")

        def broken(*args):
            raise ZeroDivisionError("bug")

        h.connector._iq_roster = broken
        out = h.send(alice, b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        self.assertEqual(
            out,
            b"<iq id='r1' to='alice@localhost/home' type='error'><error type='wait'>"
            b"<internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(alice.transport.disconnecting)
        self.assertEqual(h.send(alice, b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"),
                         b"<iq type='result' id='p' to='alice@localhost/home'/>")


class ComponentUnitTests(unittest.TestCase):
    """XEP-0114 on StringTransport: handshake wire-exact, stanzas both ways, subscriptions."""

    def setUp(self):
        from gateway_xmpp.component import ComponentStream

        self.h = Harness({"component": {"domain": "gw.example.org", "secret": "sekrit", "port": 5347}})
        self.link = self.h.connector.component
        self.stream = ComponentStream(self.link)
        self.transport = StringTransport()
        self.stream.makeConnection(self.transport)

    def test_handshake_and_traffic(self):
        self.assertEqual(self.transport.value(),
                         b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                         b"xmlns:stream='http://etherx.jabber.org/streams' to='gw.example.org'>")
        self.transport.clear()
        self.stream.dataReceived(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' from='gw.example.org' id='abc123'>")
        self.assertEqual(self.transport.value(),
                         b"<handshake>" + hashlib.sha1(b"abc123sekrit").hexdigest().encode() + b"</handshake>")
        self.transport.clear()
        self.stream.dataReceived(b"<handshake/>")
        self.assertIs(self.link.stream, self.stream)
        bob = self.h.login("bob")
        self.stream.dataReceived(b"<message from='zoe@example.org/x' to='bob@gw.example.org' type='chat' id='z1'>"
                                 b"<body>hi bob</body><request xmlns='urn:xmpp:receipts'/></message>")
        got, = stanzas(bob.transport.value())
        self.assertEqual((got["from"], str(got.body)), ("zoe@example.org", "hi bob"))
        self.assertEqual(self.transport.value(), b"<message from='bob@gw.example.org' to='zoe@example.org/x'>"
                                                 b"<received xmlns='urn:xmpp:receipts' id='z1'/></message>")
        self.transport.clear()
        self.h.send(bob, b"<message to='zoe@example.org' type='chat'><body>hi zoe</body></message>")
        out, = stanzas(self.transport.value())
        self.assertEqual((out["from"], out["to"], str(out.body)), ("bob@gw.example.org", "zoe@example.org", "hi zoe"))
        self.transport.clear()
        # Unknown gateway user: the remote sender gets item-not-found.
        self.stream.dataReceived(b"<message from='zoe@example.org/x' to='nobody@gw.example.org' id='z2'>"
                                 b"<body>?</body></message>")
        error, = stanzas(self.transport.value())
        self.assertEqual((error["type"], error["to"]), ("error", "zoe@example.org/x"))
        self.assertEqual(error.error.firstChildElement().name, "item-not-found")

    def test_a_file_offer_to_a_remote_user_is_sent_as_a_notice(self):
        self.stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' id='i'><handshake/>")
        self.transport.clear()
        offer = self.h.core.api.file_offer("xmpp:bob@localhost", "xmpp:zoe@example.org", "notes.txt", 42)
        outcome = self.successResultOf(self.h.core.bus.submit(offer))
        self.assertTrue(outcome.delivered)
        [got] = stanzas(self.transport.value())
        self.assertEqual((got.name, got["from"], got["to"]), ("message", "bob@gw.example.org", "zoe@example.org"))
        self.assertIn("notes.txt (42 bytes)", str(got.body))

    def test_remote_subscription_makes_a_foreign_watcher(self):
        self.stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' id='i'><handshake/>")
        self.transport.clear()
        bob = self.h.login("bob")
        self.stream.dataReceived(b"<presence from='zoe@example.org' to='bob@gw.example.org' type='subscribe'/>")
        self.assertEqual(self.transport.value(),
                         b"<presence from='bob@gw.example.org' to='zoe@example.org' type='subscribed'/>"
                         b"<presence from='bob@gw.example.org/gateway' to='zoe@example.org'/>")
        bob_identity = self.h.directory.people["bob"]
        self.assertEqual(self.h.connector.foreign_watchers(bob_identity), [Address("xmpp", "zoe", "example.org")])
        self.transport.clear()
        self.h.send(bob, b"<presence><show>dnd</show></presence>")
        self.assertEqual(self.transport.value(),
                         b"<presence from='bob@gw.example.org/gateway' to='zoe@example.org'><show>dnd</show></presence>")

    def test_file_offers_from_the_remote_server_are_decided(self):
        # The demo configuration's rule: no file offers from outside the company.
        self.h = Harness({"component": {"domain": "gw.example.org", "secret": "sekrit", "port": 5347}},
                         core_config='[[policy.rule]]\nname = "no-files-from-outside"\naction = "deny"\n'
                                     'direction = "inbound"\nkinds = ["file"]\n')
        from gateway_xmpp.component import ComponentStream

        self.link = self.h.connector.component
        self.stream = ComponentStream(self.link)
        self.stream.makeConnection(self.transport)
        self.stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' id='i'><handshake/>")
        self.transport.clear()
        self.stream.dataReceived(
            b"<message from='zoe@example.org/x' to='carol@gw.example.org' type='chat' id='o1'>"
            b"<body>see</body><x xmlns='jabber:x:oob'><url>https://files.example/a.zip</url></x></message>"
            b"<iq from='zoe@example.org/x' to='carol@gw.example.org/desk' type='set' id='s1'>"
            b"<si xmlns='http://jabber.org/protocol/si' id='s5' "
            b"profile='http://jabber.org/protocol/si/profile/file-transfer'>"
            b"<file xmlns='http://jabber.org/protocol/si/profile/file-transfer' name='b.zip' size='9'/></si></iq>")
        errors = stanzas(self.transport.value())
        self.assertEqual([(e.name, e["to"], e.error.firstChildElement().name) for e in errors],
                         [("message", "zoe@example.org/x", "forbidden"), ("iq", "zoe@example.org/x", "forbidden")])
        offers = self.h.core.archive.events("file")
        self.assertEqual([(str(o.sender), o.name) for o in offers],
                         [("xmpp:zoe@example.org", "a.zip"), ("xmpp:zoe@example.org", "b.zip")])
        self.assertTrue(all(self.h.core.archive.status(o.id) == "rejected" for o in offers))
        self.assertEqual(self.h.core.archive.events("im"), [])

    def test_jid_with_an_empty_domain_label_is_refused_quietly(self):
        # Found by fuzz/run.py (fuzz/regressions/xmpp-component): Twisted's
        # nameprep raised IndexError for "example..org", and the stream closed
        # with an internal error instead of refusing the one stanza.
        self.stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' id='i'><handshake/>")
        self.transport.clear()
        self.stream.dataReceived(b"<presence from='zoe@example..org' to='bob@gw.example.org' type='probe'/>")
        error, = stanzas(self.transport.value())
        self.assertEqual((error.name, error["type"]), ("presence", "error"))
        self.assertEqual(error.error.firstChildElement().name, "forbidden")
        self.assertFalse(self.transport.disconnecting)
        self.assertIs(self.link.stream, self.stream)

    def test_refused_before_handshake(self):
        self.stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                                 b"xmlns:stream='http://etherx.jabber.org/streams' id='i'>"
                                 b"<message from='a@b' to='bob@gw.example.org'><body>x</body></message>")
        self.assertIn(b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.link.stream)


class DialbackUnitTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness({"s2s": {"peers": {"example.org": "tcp:127.0.0.1:1"}, "secret": "db-secret", "listen": [],
                                  "tls": False}})
        self.link = self.h.connector.s2s

    def test_key_and_verify(self):
        from gateway_xmpp.s2s import InboundStream, dialback_key

        key = dialback_key("db-secret", "example.org", "localhost", "sid1")
        self.assertEqual(key, dialback_key("db-secret", "example.org", "localhost", "sid1"))
        self.assertNotEqual(key, dialback_key("db-secret", "example.org", "localhost", "sid2"))
        self.assertEqual(len(key), 64)
        stream = InboundStream(self.link)
        stream.stream_id = "in1"
        transport = StringTransport()
        stream.makeConnection(transport)
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                            b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        self.assertEqual(
            transport.value(),
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
            b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='in1' version='1.0'>"
            b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        )
        transport.clear()
        stream.dataReceived(f"<db:verify from='example.org' to='localhost' id='sid1'>{key}</db:verify>".encode())
        self.assertEqual(transport.value(),
                         b"<db:verify from='localhost' to='example.org' id='sid1' type='valid'/>")
        transport.clear()
        stream.dataReceived(b"<db:verify from='example.org' to='localhost' id='sid1'>forged</db:verify>")
        self.assertEqual(transport.value(),
                         b"<db:verify from='localhost' to='example.org' id='sid1' type='invalid'/>")
        # A key that is not ASCII (found by the fuzzer: it raised TypeError) is just invalid.
        transport.clear()
        stream.dataReceived("<db:verify from='example.org' to='localhost' id='sid1'>d\u0123k</db:verify>".encode())
        self.assertEqual(transport.value(),
                         b"<db:verify from='localhost' to='example.org' id='sid1' type='invalid'/>")
        # Stanzas from a domain not verified on this stream end it.
        transport.clear()
        stream.dataReceived(b"<message from='eve@example.org' to='bob@localhost'><body>x</body></message>")
        self.assertIn(b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_stanzas_waiting_for_dialback_are_bounded(self):
        class Connecting:
            ready = False

        self.link.max_queued = 2
        self.link.outbound["example.org"] = Connecting()
        self.link.send_to("example.org", b"<message/>")
        self.link.send_to("example.org", b"<message/>")
        e = self.assertRaises(ConnectionError, self.link.send_to, "example.org", b"<message/>")
        self.assertIn("2 stanzas already wait for the connection to example.org", str(e))
        self.assertEqual(len(self.link.queues["example.org"]), 2)

    def test_max_queued_is_checked(self):
        from gateway.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            Harness({"s2s": {"peers": {}, "listen": [], "max_queued": 0, "tls": False}})
        self.assertIn("connectors.xmpp.s2s.max_queued", str(caught.exception))

    def test_unknown_peer_refused(self):
        from gateway_xmpp.s2s import InboundStream

        stream = InboundStream(self.link)
        transport = StringTransport()
        stream.makeConnection(transport)
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                            b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        transport.clear()
        stream.dataReceived(b"<db:result from='evil.example' to='localhost'>k</db:result>")
        self.assertIn(b"type='error'", transport.value())
        self.assertIn(b"<item-not-found", transport.value())
        self.assertTrue(self.h.connector.can_reach(Address("xmpp", "zoe", "example.org")))
        self.assertFalse(self.h.connector.can_reach(Address("xmpp", "zoe", "evil.example")))


class S2STlsUnitTests(unittest.TestCase):
    """s2s runs over STARTTLS unless tls = false: offered and required inbound, required outbound."""

    def setUp(self):
        from tests.xmpp.peers import make_certificate

        folder = self.mktemp()
        os.makedirs(folder)
        self.cert, self.key = make_certificate(folder)
        self.h = Harness({"tls_certificate": self.cert, "tls_key": self.key, "require_tls": False,
                          "s2s": {"peers": {"example.org": "tcp:127.0.0.1:1"}, "secret": "db-secret", "listen": []}})
        self.link = self.h.connector.s2s

    def test_without_a_certificate_tls_is_a_config_error(self):
        from gateway.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            Harness({"s2s": {"peers": {}, "listen": []}})
        self.assertIn("connectors.xmpp.s2s.tls", str(caught.exception))

    def test_inbound_offers_starttls_and_refuses_dialback_before_it(self):
        from gateway_xmpp.s2s import InboundStream

        stream = InboundStream(self.link)
        transport = StringTransport()
        stream.makeConnection(transport)
        stream.dataReceived(b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                            b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        self.assertIn(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                      b"</stream:features>", transport.value())
        self.assertNotIn(b"dialback", transport.value().split(b"<stream:features>")[1])
        transport.clear()
        stream.dataReceived(b"<db:result from='example.org' to='localhost'>key</db:result>")
        self.assertIn(b"<policy-violation", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_inbound_starttls_proceeds_and_restarts(self):
        from gateway_xmpp.s2s import InboundStream

        class TlsTransport(StringTransport):
            started = None

            def startTLS(self, options):
                self.started = options

        stream = InboundStream(self.link)
        transport = TlsTransport()
        stream.makeConnection(transport)
        header = (b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                  b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        stream.dataReceived(header)
        transport.clear()
        stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertEqual(transport.value(), b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertIs(transport.started, self.link.server_tls)
        transport.clear()
        stream.dataReceived(header)  # the restarted stream, now encrypted: dialback is offered
        self.assertIn(b"<dialback xmlns='urn:xmpp:features:dialback'/>", transport.value())

    def test_outbound_insists_on_starttls(self):
        from gateway_xmpp.s2s import OutboundStream

        class TlsTransport(StringTransport):
            started = None

            def startTLS(self, options):
                self.started = options

        stream = OutboundStream(self.link, "example.org")
        transport = TlsTransport()
        stream.makeConnection(transport)
        transport.clear()
        server = (b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                  b"xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='x1' version='1.0'>")
        stream.dataReceived(server + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                                     b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        self.assertEqual(transport.value(), b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        transport.clear()
        stream.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.assertIsNotNone(transport.started)
        self.assertIn(b"to='example.org'", transport.value())  # the stream restarts over TLS
        transport.clear()
        stream.dataReceived(server.replace(b"x1", b"x2") + b"<stream:features>"
                            b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        self.assertIn(b"<db:result from='localhost' to='example.org'>", transport.value())
        # A peer that offers no STARTTLS is not federated with in clear.
        plain = OutboundStream(self.link, "example.org")
        plain_transport = TlsTransport()
        plain.makeConnection(plain_transport)
        plain.dataReceived(server + b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                                    b"</stream:features>")
        self.assertIn(b"<policy-violation", plain_transport.value())
        self.assertNotIn(b"db:result", plain_transport.value())
        self.assertIsNone(plain_transport.started)


HIDE_BOB = """
[[policy.rule]]
name = "hide-bob-from-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
kinds = ["presence"]
"""


class ProbeTests(unittest.TestCase):
    """A probe's answer is a disclosure: decided by policy and archived, on every network alike."""

    def setUp(self):
        self.h = Harness(core_config=HIDE_BOB)

    def probe(self, stream, jid):
        out = self.h.send(stream, f"<presence type='probe' to='{jid}'/>".encode())
        return [s for s in stanzas(out) if s.name == "presence"]

    def test_probe_hidden_by_a_presence_rule_and_archived(self):
        bob = self.h.login("bob")
        self.h.send(bob, b"<presence><show>away</show><status>lunch</status></presence>")
        carol = self.h.login("carol")
        [answer] = self.probe(carol, "bob@localhost")
        self.assertEqual(answer.getAttribute("type"), "unavailable")
        self.assertNotIn("lunch", answer.toXml())
        probes = [e for e in self.h.core.archive.events("presence")
                  if str(e.recipient) == "xmpp:carol@localhost" and str(e.sender) == "xmpp:bob@localhost"]
        self.assertTrue(probes)
        self.assertTrue(all(self.h.core.archive.status(e.id) == "rejected" for e in probes))

    def test_probe_allowed_shows_the_presence(self):
        bob = self.h.login("bob")
        self.h.send(bob, b"<presence><show>away</show><status>lunch</status></presence>")
        alice = self.h.login("alice")
        [answer] = self.probe(alice, "bob@localhost")
        self.assertIsNone(answer.getAttribute("type"))
        self.assertIn("lunch", answer.toXml())


NO_FILES = """
[[policy.rule]]
name = "no-files-for-carol"
action = "deny"
to = ["user:carol"]
kinds = ["file"]
"""


class FileAndRoomTests(unittest.TestCase):
    """Links to files are file offers on the path; room traffic is refused and archived, never dropped unseen."""

    def setUp(self):
        self.h = Harness(core_config=NO_FILES)

    def oob(self, to):
        return (f"<message type='chat' to='{to}' id='f1'><body>https://files.example/plans.pdf</body>"
                f"<x xmlns='jabber:x:oob'><url>https://files.example/plans.pdf</url><desc>the plans</desc></x>"
                f"</message>").encode()

    def test_a_file_link_is_a_file_offer_and_a_rule_refuses_it(self):
        alice = self.h.login("alice")
        out = self.h.send(alice, self.oob("carol@localhost"))
        [error] = stanzas(out)
        self.assertEqual(error["type"], "error")
        [offer] = self.h.core.archive.events("file")
        self.assertEqual((offer.name, offer.url, offer.text), ("plans.pdf", "https://files.example/plans.pdf",
                                                               "the plans"))
        self.assertEqual(self.h.core.archive.status(offer.id), "rejected")
        self.assertEqual(self.h.core.archive.events("im"), [])

    def test_an_allowed_file_link_reaches_the_recipient_with_its_link(self):
        alice, bob = self.h.login("alice"), self.h.login("bob")
        self.h.send(alice, self.oob("bob@localhost"))
        [got] = [s for s in stanzas(bob.transport.value()) if s.name == "message"]
        self.assertIn("plans.pdf", str(got.body))
        self.assertIn(b"<url>https://files.example/plans.pdf</url>", got.toXml().encode())

    def test_a_file_offer_from_another_network_is_shown_as_a_notice(self):
        bob = self.h.login("bob")
        offer = self.h.core.api.file_offer("aim:alice", "xmpp:bob@localhost", "notes.txt", 42)
        outcome = self.successResultOf(self.h.core.bus.submit(offer))
        self.assertTrue(outcome.delivered)
        [got] = [s for s in stanzas(bob.transport.value()) if s.name == "message"]
        self.assertIn("notes.txt", str(got.body))
        self.assertIn("cannot be transferred", str(got.body))

    def si(self, to, name="plans.pdf", size=4096):
        return (f"<iq type='set' id='si1' to='{to}/desk'><si xmlns='http://jabber.org/protocol/si' id='s5' "
                f"profile='http://jabber.org/protocol/si/profile/file-transfer'>"
                f"<file xmlns='http://jabber.org/protocol/si/profile/file-transfer' name='{name}' size='{size}'>"
                f"<desc>the plans</desc></file>"
                f"<feature xmlns='http://jabber.org/protocol/feature-neg'/></si></iq>").encode()

    def jingle(self, to, version=5):
        ns = f"urn:xmpp:jingle:apps:file-transfer:{version}"
        return (f"<iq type='set' id='j1' to='{to}/desk'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' "
                f"sid='sess1' initiator='alice@localhost/home'>"
                f"<content creator='initiator' name='a' senders='initiator'><description xmlns='{ns}'>"
                f"<file><name>one.txt</name><size>10</size></file></description></content>"
                f"<content creator='initiator' name='b' senders='initiator'><description xmlns='{ns}'>"
                f"<file><name>two.txt</name><size>32</size><desc>second</desc></file></description></content>"
                f"</jingle></iq>").encode()

    def test_a_stream_initiation_offer_is_a_file_offer_and_a_rule_refuses_it(self):
        alice = self.h.login("alice")
        [error] = stanzas(self.h.send(alice, self.si("carol@localhost")))
        self.assertEqual((error.name, error["type"], error["id"]), ("iq", "error", "si1"))
        self.assertEqual(error.error.firstChildElement().name, "forbidden")
        [offer] = self.h.core.archive.events("file")
        self.assertEqual((str(offer.sender), str(offer.recipient), offer.name, offer.size, offer.text),
                         ("xmpp:alice@localhost", "xmpp:carol@localhost", "plans.pdf", 4096, "the plans"))
        self.assertEqual(self.h.core.archive.status(offer.id), "rejected")

    def test_an_allowed_stream_initiation_offer_is_shown_and_the_sender_told_no_bytes_travel(self):
        alice, bob = self.h.login("alice"), self.h.login("bob")
        [answer] = [s for s in stanzas(self.h.send(alice, self.si("bob@localhost"))) if s.name == "iq"]
        self.assertEqual((answer["type"], answer.error.firstChildElement().name),
                         ("error", "feature-not-implemented"))
        [got] = [s for s in stanzas(bob.transport.value()) if s.name == "message"]
        self.assertIn("plans.pdf (4096 bytes) the plans", str(got.body))
        [offer] = self.h.core.archive.events("file")
        self.assertEqual(self.h.core.archive.status(offer.id), "delivered")

    def test_a_jingle_file_offer_names_every_file_and_a_rule_refuses_it(self):
        for version in (5, 3):
            alice = self.h.login("alice")
            [error] = stanzas(self.h.send(alice, self.jingle("carol@localhost", version)))
            self.assertEqual(error.error.firstChildElement().name, "forbidden")
        offers = self.h.core.archive.events("file")
        self.assertEqual([(o.name, o.size, o.text) for o in offers], [("one.txt, two.txt", 42, "second")] * 2)
        self.assertTrue(all(self.h.core.archive.status(o.id) == "rejected" for o in offers))

    def test_other_jingle_and_stream_iqs_to_users_are_refused_unrecorded(self):
        alice = self.h.login("alice")
        for iq in (b"<iq type='set' id='t1' to='bob@localhost/desk'><jingle xmlns='urn:xmpp:jingle:1' "
                   b"action='session-terminate' sid='x'/></iq>",
                   b"<iq type='set' id='t2' to='bob@localhost/desk'><si xmlns='http://jabber.org/protocol/si' "
                   b"id='y' profile='urn:example:other'/></iq>"):
            [error] = stanzas(self.h.send(alice, iq))
            self.assertEqual(error.error.firstChildElement().name, "service-unavailable")
        self.assertEqual(self.h.core.archive.events("file"), [])

    def test_groupchat_is_refused_and_archived(self):
        alice = self.h.login("alice")
        out = self.h.send(alice, b"<message type='groupchat' to='room@localhost'><body>hello room</body></message>")
        self.assertIn(b"not-allowed", out)
        [chat] = self.h.core.archive.events("chat")
        self.assertEqual((chat.text, self.h.core.archive.status(chat.id)), ("hello room", "rejected"))
