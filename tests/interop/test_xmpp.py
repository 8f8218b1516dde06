"""XMPP against real peers: slixmpp and libpurple (BitlBee) clients on c2s; Prosody 0.12 as component host and s2s peer."""

import asyncio
import shutil
import socket
import tempfile
import time

from twisted.trial import unittest

from tests.xmpp import peers

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - CI installs it
    slixmpp = None

try:
    import gateway_xmpp  # noqa: F401  (the plugin under test must be installed)
except ImportError:  # pragma: no cover
    raise unittest.SkipTest("the xmpp plugin is not installed: pip install ./plugins/xmpp")

CONFIG = """
[gateway]
node = "xmpptest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]

[connectors.xmpp]
listen = ["tcp:{tls}:interface=127.0.0.1", {{endpoint = "tcp:{plain}:interface=127.0.0.1", require_tls = false}}]
tls_certificate = "{{dir}}/cert.pem"
tls_key = "{{dir}}/key.pem"
idle_timeout = 120
"""

LINE = """
[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


def have_line():
    try:
        import gateway_example  # noqa: F401
    except ImportError:
        return False
    return True


class GatewayCase(unittest.TestCase):
    line = False
    config_text = CONFIG

    def setUp(self):
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        self.tls, self.plain, self.line_port = peers.free_port(), peers.free_port(), peers.free_port()
        config = self.config_text.format(tls=self.tls, plain=self.plain, admin=peers.free_port())
        if self.line:
            config += LINE.format(line=self.line_port)
        import tempfile

        # The certificate must exist before the gateway reads its config.
        directory = tempfile.mkdtemp(prefix="gw-xmpp-")
        self.addCleanup(shutil.rmtree, directory, True)
        peers.make_certificate(directory)
        config = config.replace("{dir}", directory)
        ports = (self.tls, self.plain) + ((self.line_port,) if self.line else ())
        self.gateway = peers.GatewayProcess(self, config, wait_ports=ports)
        self.addCleanup(self.no_tracebacks)

    def no_tracebacks(self):
        self.gateway.stop()
        self.assertEqual(self.gateway.tracebacks(), [], self.gateway.text())

    def jid(self, who):
        return f"{who}@localhost"


class SlixmppTests(GatewayCase):
    def test_two_clients_chat_presence_receipts_states(self):
        async def scenario():
            alice = peers.slixmpp_client("alice@localhost/laptop", "secret", self.tls, mech="SCRAM-SHA-256")
            bob = peers.slixmpp_client("bob@localhost/phone", "secret", self.tls, mech="SCRAM-SHA-1")
            try:
                await peers.start(alice)
                roster = alice.client_roster
                self.assertIn("bob@localhost", list(roster.keys()))
                await peers.start(bob)
                await peers.until(lambda: any(str(p["from"].bare) == "bob@localhost" for p in alice.presences),
                                  what="alice sees bob online")
                await peers.until(lambda: any(str(p["from"].bare) == "alice@localhost" for p in bob.presences),
                                  what="bob sees alice online")
                # A message with a receipt request, both ways, non-ASCII.
                msg = alice.make_message("bob@localhost", "hello bob \u00e9\u4e16 <&>", mtype="chat")
                msg["request_receipt"] = True
                msg["id"] = "m1"
                msg.send()
                await peers.until(lambda: bob.messages, what="bob gets the message")
                self.assertEqual(bob.messages[0]["body"], "hello bob \u00e9\u4e16 <&>")
                self.assertEqual(str(bob.messages[0]["from"].bare), "alice@localhost")
                await peers.until(lambda: "m1" in alice.receipts, what="the delivery receipt")
                bob.send_message("alice@localhost", "hi alice", mtype="chat")
                await peers.until(lambda: alice.messages, what="alice gets the reply")
                self.assertEqual(alice.messages[0]["body"], "hi alice")
                # Chat state (XEP-0085) -> typing -> chat state.
                state = alice.make_message("bob@localhost", mtype="chat")
                state["chat_state"] = "composing"
                state.send()
                await peers.until(lambda: ("alice@localhost", "composing") in bob.states, what="composing")
                # Away with a note.
                bob.send_presence(pshow="away", pstatus="lunch")
                await peers.until(
                    lambda: any(p["show"] == "away" and p["status"] == "lunch" for p in alice.presences),
                    what="alice sees bob away")
                # Policy rejection: bob may not write to carol -> forbidden with the reason.
                bob.send_message("carol@localhost", "psst", mtype="chat")
                await peers.until(lambda: bob.errors, what="an error for bob")
                self.assertEqual(bob.errors[0]["error"]["condition"], "forbidden")
                self.assertTrue(bob.errors[0]["error"]["text"], "the error names the reason")
                # Unknown user -> item-not-found.
                alice.send_message("nobody@localhost", "anyone?", mtype="chat")
                await peers.until(lambda: alice.errors, what="an error for alice")
                self.assertEqual(alice.errors[0]["error"]["condition"], "item-not-found")
                # Disco and ping and vCard against the server.
                info = await alice["xep_0030"].get_info(jid="localhost", timeout=5)
                self.assertIn("urn:xmpp:ping", info["disco_info"]["features"])
                await alice["xep_0199"].ping(jid="localhost", timeout=5)
                vcard = await alice["xep_0054"].get_vcard("bob@localhost", timeout=5)
                self.assertEqual(vcard["vcard_temp"]["FN"], "Bob Demo")  # the directory display name
                # Bob leaves: alice sees him unavailable.
                await peers.stop(bob)
                await peers.until(lambda: any(p["type"] == "unavailable" and str(p["from"].bare) == "bob@localhost"
                                              for p in alice.presences), what="bob offline")
            finally:
                await peers.stop(alice, bob)

        peers.run(scenario())

    def test_stream_initiation_file_offers_are_decided(self):
        """slixmpp's XEP-0096 offers: denied by policy with forbidden; allowed, shown to the recipient and archived."""
        from slixmpp.exceptions import IqError
        from slixmpp.plugins.xep_0096.stanza import File

        async def scenario():
            alice = peers.slixmpp_client("alice@localhost/laptop", "secret", self.tls)
            bob = peers.slixmpp_client("bob@localhost/phone", "secret", self.tls)
            bob.register_plugin("xep_0096")
            try:
                await peers.start(alice)
                await peers.start(bob)
                conditions = []
                for to, name in (("carol@localhost/c", "to-carol.pdf"), ("alice@localhost/laptop", "to-alice.pdf")):
                    offer = File()
                    offer["name"], offer["size"], offer["desc"] = name, 2048, "plans"
                    try:
                        # xep_0095.offer as xep_0096.request_file_transfer calls it, with the stream
                        # methods as the form's option mappings (slixmpp 1.8+ passes bare strings there).
                        await bob["xep_0095"].offer(to, profile=File.namespace, payload=offer, timeout=5,
                                                    methods=[{"value": "http://jabber.org/protocol/ibb"}])
                    except IqError as e:
                        conditions.append(e.iq["error"]["condition"])
                self.assertEqual(conditions, ["forbidden", "feature-not-implemented"])
                await peers.until(lambda: alice.messages, what="alice is shown the allowed offer")
                self.assertIn("to-alice.pdf (2048 bytes) plans", alice.messages[0]["body"])
            finally:
                await peers.stop(alice, bob)

        peers.run(scenario())
        for name in ("to-carol.pdf", "to-alice.pdf"):
            deadline = time.monotonic() + 10
            while not peers.archive_rows(self.gateway.dir, name) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertTrue(peers.archive_rows(self.gateway.dir, name), f"the offer of {name} is archived")

    def test_offline_message_and_wrong_password(self):
        async def scenario():
            alice = peers.slixmpp_client("alice@localhost/a", "secret", self.plain, tls=False, mech="PLAIN")
            wrong = peers.slixmpp_client("carol@localhost/c", "not-it", self.tls, mech="SCRAM-SHA-256")
            carol = peers.slixmpp_client("carol@localhost/c", "secret", self.tls)
            try:
                await peers.start(alice)
                alice.send_message("carol@localhost", "while you were out", mtype="chat")
                await asyncio.sleep(0.5)
                self.assertEqual(alice.errors, [])
                wrong.connect(*wrong.address)
                await peers.until(lambda: wrong.failed, what="failed_auth for a wrong password")
                await peers.stop(wrong)
                await peers.start(carol)
                await peers.until(lambda: carol.messages, what="carol gets the held message")
                held = carol.messages[0]
                self.assertEqual(held["body"], "while you were out")
                self.assertEqual(str(held["from"].bare), "alice@localhost")
            finally:
                await peers.stop(alice, wrong, carol)

        peers.run(scenario())

    def test_starttls_with_alpn(self):
        """A client that offers ALPN xmpp-client (RFC 7590) after STARTTLS gets it, not a TLS internal error."""
        import ssl

        for offer, chosen in ((["xmpp-client"], "xmpp-client"), (None, None)):
            sock = socket.create_connection(("127.0.0.1", self.tls), timeout=5)
            try:
                sock.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                             b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
                data = b""
                while b"</stream:features>" not in data:
                    data += sock.recv(4096)
                sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                data = b""
                while b"<proceed" not in data:
                    data += sock.recv(4096)
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed here
                if offer:
                    context.set_alpn_protocols(offer)
                tls = context.wrap_socket(sock, server_hostname="localhost")
                self.assertEqual(tls.selected_alpn_protocol(), chosen)
                tls.close()
            finally:
                sock.close()

    def test_plain_refused_before_tls_on_tls_listener(self):
        """The TLS listener requires STARTTLS: a client that will not do TLS never gets mechanisms."""
        sock = socket.create_connection(("127.0.0.1", self.tls), timeout=5)
        try:
            sock.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                         b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
            data = b""
            while b"</stream:features>" not in data:
                data += sock.recv(4096)
            self.assertIn(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>", data)
            self.assertNotIn(b"<mechanisms", data)
            sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>")
            data = sock.recv(4096)
            self.assertIn(b"<encryption-required/>", data)
            # Bad XML closes this stream with a stream error; the listener stays up.
            sock.sendall(b"<!-- comments are not allowed in XMPP -->")
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.assertIn(b"<restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", data)
        finally:
            sock.close()
        peers.wait_for_port(self.tls)


class CrossNetworkTests(GatewayCase):
    line = True

    def setUp(self):
        if not have_line():
            raise unittest.SkipTest("the example plugin (line connector) is not installed: "
                                    "pip install ./examples/gateway-example-plugin")
        super().setUp()

    def test_xmpp_user_and_line_user(self):
        from tests.gateway_process import LineClient

        line = LineClient(self.line_port)
        try:
            line.send("LOGIN bob secret")
            line.expect("OK LOGIN")

            async def scenario():
                alice = peers.slixmpp_client("alice@localhost/x", "secret", self.tls)
                try:
                    await peers.start(alice)
                    await peers.until(lambda: any(str(p["from"].bare) == "bob@localhost" for p in alice.presences),
                                      what="alice sees bob (on the line network) online")
                    alice.send_message("bob@localhost", "from xmpp to line", mtype="chat")
                    got = await asyncio.get_running_loop().run_in_executor(None, line.expect, "FROM ")
                    # alice has a line handle too (demo users get one per network): the line client sees that one.
                    self.assertEqual(got, "FROM line:alice from xmpp to line")
                    line.send("MSG xmpp:alice@localhost back from line")
                    await peers.until(lambda: alice.messages, what="alice gets the line reply")
                    self.assertEqual(alice.messages[0]["body"], "back from line")
                    self.assertEqual(str(alice.messages[0]["from"].bare), "bob@localhost")
                finally:
                    await peers.stop(alice)

            peers.run(scenario())
        finally:
            line.close()
        self.gateway.stop()
        self.assertTrue(peers.archive_rows(self.gateway.dir, "from xmpp to line"), "archived")
        self.assertTrue(peers.archive_rows(self.gateway.dir, "back from line"), "archived")


def jabber_in_bitlbee(test, port, who="alice"):
    """BitlBee with ``who``'s jabber account (libpurple) logged in to a gateway's plain listener on ``port``."""
    bee = peers.BitlBee(test)
    bee.connect(who)
    bee.root(f"account add jabber {who}@localhost secret")
    bee.expect(lambda l: "Account successfully added" in l, what="account added")
    for setting in ("connect_server 127.0.0.1", f"port {port}",
                    "connection_security opportunistic_tls", "auth_plain_in_clear true"):
        bee.root(f"account jabber set {setting}")
    bee.root("account jabber on")
    # libpurple does STARTTLS (offered on this listener too) and asks about our self-signed certificate.
    bee.expect(lambda l: "Accept certificate for" in l, 20, "libpurple's certificate question")
    bee.root("yes")
    bee.expect(lambda l: "Logged in" in l, 30, "the jabber account logged in")
    return bee


class BitlBeeTests(GatewayCase):
    def setUp(self):
        if shutil.which("bitlbee") is None:
            raise unittest.SkipTest("bitlbee is not installed (Debian bitlbee-libpurple)")
        super().setUp()

    def test_libpurple_jabber_and_slixmpp(self):
        bee = jabber_in_bitlbee(self, self.plain)

        async def scenario():
            bob = peers.slixmpp_client("bob@localhost/slix", "secret", self.tls)
            try:
                await peers.start(bob)
                loop = asyncio.get_running_loop()
                # bob is in alice's contact list (demo directory): BitlBee shows him joining.
                await loop.run_in_executor(None, bee.expect, lambda l: " JOIN " in l and l.startswith(":bob!"), 20,
                                           "bob online in BitlBee")
                await peers.until(lambda: any(str(p["from"].bare) == "alice@localhost" for p in bob.presences),
                                  what="bob sees alice (libpurple) online")
                bob.send_message("alice@localhost", "hello libpurple", mtype="chat")
                line = await loop.run_in_executor(None, bee.expect, lambda l: "PRIVMSG" in l and "hello libpurple" in l,
                                                  15, "the message in BitlBee")
                self.assertTrue(line.startswith(":bob!"), line)
                bee.send("PRIVMSG bob :hello slixmpp")
                await peers.until(lambda: bob.messages, what="bob gets libpurple's message")
                self.assertEqual(bob.messages[0]["body"], "hello slixmpp")
                self.assertEqual(str(bob.messages[0]["from"].bare), "alice@localhost")
                bob.send_presence(pshow="dnd", pstatus="busy now")
                await loop.run_in_executor(None, bee.expect, lambda l: "MODE" in l and "-v bob" in l, 15,
                                           "bob away in BitlBee (voice taken)")
            finally:
                await peers.stop(bob)

        peers.run(scenario(), timeout=90)


# -- Prosody: XEP-0114 component and s2s ---------------------------------------------------

COMPONENT_CONFIG = """
[gateway]
node = "xmpptest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[connectors.xmpp]
listen = ["tcp:{c2s}:interface=127.0.0.1"]
require_tls = false
idle_timeout = 120

[connectors.xmpp.component]
host = "127.0.0.1"
port = {component}
domain = "gw.prosody.localhost"
secret = "{secret}"
remote_domains = ["prosody.localhost"]
"""

class ProsodyCase(unittest.TestCase):
    def no_tracebacks(self):
        self.gateway.stop()
        self.assertEqual(self.gateway.tracebacks(), [], self.gateway.text())


class ComponentTests(ProsodyCase):
    def setUp(self):
        if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
            raise unittest.SkipTest("prosody is not installed (Debian prosody)")
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        if not have_line():
            raise unittest.SkipTest("the example plugin (line connector) is not installed: "
                                    "pip install ./examples/gateway-example-plugin")
        self.prosody = peers.Prosody(self, users=[("zoe", "zoepass")])
        self.c2s, self.line_port = peers.free_port(), peers.free_port()
        config = COMPONENT_CONFIG.format(admin=peers.free_port(), c2s=self.c2s, component=self.prosody.component,
                               secret=self.prosody.secret) + LINE.format(line=self.line_port)
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.c2s, self.line_port))
        self.addCleanup(self.no_tracebacks)
        deadline = time.monotonic() + 15
        while "attached to 127.0.0.1" not in self.gateway.text():
            if time.monotonic() > deadline:
                raise AssertionError("the component never attached: " + self.gateway.text() + self.prosody.text())
            time.sleep(0.1)

    def test_prosody_user_and_gateway_users(self):
        from tests.gateway_process import LineClient

        line = LineClient(self.line_port)
        self.addCleanup(line.close)
        line.send("LOGIN carol secret")
        line.expect("OK LOGIN")

        async def scenario():
            zoe = peers.slixmpp_client("zoe@prosody.localhost/home", "zoepass", self.prosody.c2s, tls=False)
            bob = peers.slixmpp_client("bob@localhost/desk", "secret", self.c2s, tls=False)
            loop = asyncio.get_running_loop()
            try:
                await peers.start(bob)
                await peers.start(zoe)
                # zoe subscribes to bob through Prosody; the gateway approves (policy) and sends bob's presence.
                zoe.send_presence_subscription("bob@gw.prosody.localhost")
                await peers.until(lambda: any(str(p["from"].bare) == "bob@gw.prosody.localhost"
                                              for p in zoe.presences), what="zoe sees bob online")
                # bob subscribes to zoe; slixmpp (zoe) approves; Prosody sends zoe's presence to the component.
                bob.presences.clear()
                bob.send_presence_subscription("zoe@prosody.localhost")
                await peers.until(lambda: any(str(p["from"].bare) == "zoe@prosody.localhost" and p["type"] == "available"
                                              for p in bob.presences), what="bob sees zoe online")
                self.assertIn("zoe@prosody.localhost", list(bob.client_roster.keys()))
                # Messages both ways.
                zoe.send_message("bob@gw.prosody.localhost", "hello from prosody \u00e9", mtype="chat")
                await peers.until(lambda: bob.messages, what="bob gets zoe's message")
                self.assertEqual(bob.messages[0]["body"], "hello from prosody \u00e9")
                self.assertEqual(str(bob.messages[0]["from"].bare), "zoe@prosody.localhost")
                bob.send_message("zoe@prosody.localhost", "hello from the gateway", mtype="chat")
                await peers.until(lambda: zoe.messages, what="zoe gets bob's message")
                self.assertEqual(zoe.messages[0]["body"], "hello from the gateway")
                self.assertEqual(str(zoe.messages[0]["from"].bare), "bob@gw.prosody.localhost")
                # bob's status reaches the Prosody user (foreign watcher).
                bob.send_presence(pshow="away", pstatus="tea")
                await peers.until(lambda: any(p["show"] == "away" and str(p["from"].bare) == "bob@gw.prosody.localhost"
                                              for p in zoe.presences), what="zoe sees bob away")
                # Cross-network: zoe -> carol, who is only on the line network; carol replies to the alias.
                zoe.send_message("carol@gw.prosody.localhost", "prosody to line", mtype="chat")
                got = await loop.run_in_executor(None, line.expect, "FROM ")
                self.assertEqual(got, "FROM line:xmpp.zoe%prosody.localhost prosody to line")
                line.send("MSG line:xmpp.zoe%prosody.localhost line to prosody")
                await peers.until(lambda: len(zoe.messages) >= 2, what="zoe gets carol's reply")
                self.assertEqual(zoe.messages[1]["body"], "line to prosody")
                self.assertEqual(str(zoe.messages[1]["from"].bare), "carol@gw.prosody.localhost")
                # An unknown gateway user: Prosody's user gets an item-not-found error back.
                zoe.send_message("nobody@gw.prosody.localhost", "anyone?", mtype="chat")
                await peers.until(lambda: zoe.errors, what="the error for an unknown user")
                self.assertEqual(zoe.errors[0]["error"]["condition"], "item-not-found")
                # bob leaves: zoe sees him go.
                await peers.stop(bob)
                await peers.until(lambda: any(p["type"] == "unavailable" and str(p["from"].bare) == "bob@gw.prosody.localhost"
                                              for p in zoe.presences), what="zoe sees bob offline")
            finally:
                await peers.stop(zoe, bob)

        peers.run(scenario(), timeout=90)
        self.gateway.stop()
        self.assertTrue(peers.archive_rows(self.gateway.dir, "prosody to line"), "archived")
        self.assertTrue(peers.archive_rows(self.gateway.dir, "hello from prosody"), "archived")


S2S_CONFIG = """
[gateway]
node = "xmpptest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "tcp:{admin}:interface=127.0.0.1"

[connectors.xmpp]
listen = ["tcp:{c2s}:interface=127.0.0.1"]
require_tls = false
# The certificate s2s offers for localhost (STARTTLS both ways).
tls_certificate = "{cert}"
tls_key = "{key}"

[connectors.xmpp.s2s]
# Prosody finds "localhost" on the standard s2s port (there is no DNS here to say otherwise).
listen = ["tcp:{s2s}:interface=127.0.0.1"]
peers = {{ "prosody.localhost" = "tcp:127.0.0.1:{prosody_s2s}" }}
secret = "dialback-secret"
# Prosody's certificate for prosody.localhost is self-signed: trust it by name.
ca = "{prosody_ca}"
"""


class ServerToServerTests(ProsodyCase):
    """The gateway's own domain (localhost) federated over s2s + dialback with Prosody's prosody.localhost."""

    S2S_PORT = 5269

    def setUp(self):
        if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
            raise unittest.SkipTest("prosody is not installed (Debian prosody)")
        if slixmpp is None:
            raise unittest.SkipTest("slixmpp is not installed (pip install slixmpp)")
        import socket

        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listeners do
            try:
                s.bind(("127.0.0.1", self.S2S_PORT))
            except OSError:
                self.fail(f"port {self.S2S_PORT} is taken: Prosody dials back to localhost on that port")
        self.prosody = peers.Prosody(self, users=[("zoe", "zoepass")], tls=True)
        self.c2s = peers.free_port()
        certs = tempfile.mkdtemp(prefix="gw-s2s-certs-")
        self.addCleanup(shutil.rmtree, certs, True)
        cert, key = peers.make_certificate(certs, "localhost", rsa=True)  # Prosody's client ciphers exclude ECDSA
        config = S2S_CONFIG.format(admin=peers.free_port(), c2s=self.c2s, s2s=self.S2S_PORT,
                                   prosody_s2s=self.prosody.s2s, cert=cert, key=key,
                                   prosody_ca=self.prosody.certificate)
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.c2s, self.S2S_PORT))
        self.addCleanup(self.no_tracebacks)

    def test_messages_and_presence_over_s2s(self):
        async def scenario():
            zoe = peers.slixmpp_client("zoe@prosody.localhost/home", "zoepass", self.prosody.c2s, tls=False)
            bob = peers.slixmpp_client("bob@localhost/desk", "secret", self.c2s, tls=False)
            try:
                await peers.start(bob)
                await peers.start(zoe)
                bob.send_message("zoe@prosody.localhost", "over s2s from the gateway", mtype="chat")
                await peers.until(lambda: zoe.messages, timeout=20, what="zoe gets bob's message over s2s")
                self.assertEqual(zoe.messages[0]["body"], "over s2s from the gateway")
                self.assertEqual(str(zoe.messages[0]["from"].bare), "bob@localhost")
                zoe.send_message("bob@localhost", "over s2s from prosody", mtype="chat")
                await peers.until(lambda: bob.messages, timeout=20, what="bob gets zoe's message over s2s")
                self.assertEqual(bob.messages[0]["body"], "over s2s from prosody")
                self.assertEqual(str(bob.messages[0]["from"].bare), "zoe@prosody.localhost")
                zoe.send_presence_subscription("bob@localhost")
                await peers.until(lambda: any(str(p["from"].bare) == "bob@localhost" for p in zoe.presences),
                                  timeout=20, what="zoe sees bob online")
                bob.presences.clear()
                bob.send_presence_subscription("zoe@prosody.localhost")
                await peers.until(lambda: any(str(p["from"].bare) == "zoe@prosody.localhost" and p["type"] == "available"
                                              for p in bob.presences), timeout=20, what="bob sees zoe online")
            finally:
                await peers.stop(zoe, bob)

        peers.run(scenario(), timeout=90)
        # Both directions were authenticated by dialback (XEP-0220), as each side logged it.
        log = self.gateway.text()
        self.assertIn("prosody.localhost accepted us by dialback", log)
        self.assertIn("prosody.localhost verified by dialback", log)
        prosody_log = self.prosody.text()
        self.assertIn("connection localhost->prosody.localhost is now authenticated for localhost", prosody_log)
        # Both directions ran over TLS (Prosody requires it here, and so does the gateway).
        self.assertIn("TLS", prosody_log)
        self.assertNotIn("federates over TLS only", log)
        self.assertRegex(prosody_log, r"prosody\.localhost->localhost.*(complete|authenticated)")
