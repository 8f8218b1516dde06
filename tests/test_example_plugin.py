"""The example third-party distribution: loaded through its real entry points, and the conformance tests."""

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gateway.model import Message, Verdict
from gateway.plugins import Plugins
from gateway.testing import ConnectorConformanceMixin

try:
    from gateway_example.hooks import DataLossPrevention
    from gateway_example.line import LineConnector, LineError, LineProtocol, parse_command
except ImportError:  # pragma: no cover - the README's test command installs it
    raise unittest.SkipTest(
        "the example plugin distribution is not installed: "
        "pip install ./examples/gateway-example-plugin"
    )


class EntryPointTests(unittest.TestCase):
    def test_loaded_from_its_distribution(self):
        plugins = Plugins()
        plugins.load_entry_points()
        self.assertEqual(
            plugins.loaded["example-dlp"], "distribution gateway-example-plugin 0.1.0"
        )
        self.assertIn("example-line", plugins.loaded)
        names = [name for name, _, _ in plugins.implementations("gateway_policy_check")]
        self.assertIn("example-dlp", names)

    def test_disabled(self):
        plugins = Plugins(disabled=["example-dlp"])
        plugins.load_entry_points()
        self.assertNotIn("example-dlp", plugins.loaded)
        self.assertIn("example-line", plugins.loaded)


class DataLossPreventionTests(unittest.TestCase):
    def test_words_and_disclaimer(self):
        class Api:
            def plugin_config(self, name):
                return {"words": ["Project-X"], "disclaimer": "-- logged"}

        dlp = DataLossPrevention()
        dlp.gateway_startup(Api())
        bad = Message("aim:alice", "aim:bob", "about PROJECT-X")
        self.assertEqual(dlp.gateway_policy_check(bad), Verdict.deny("message mentions 'project-x'", rule="example-dlp"))
        self.assertIsNone(dlp.gateway_policy_check(Message("aim:alice", "aim:bob", "lunch?")))
        self.assertEqual(dlp.gateway_transform(Message("aim:alice", "aim:bob", "hi")).text, "hi\n-- logged")


class ParseTests(unittest.TestCase):
    def test_commands(self):
        self.assertEqual(parse_command(b"MSG aim:bob hello  there"), ("MSG", ["aim:bob", "hello  there"]))
        self.assertEqual(parse_command(b"login alice secret"), ("LOGIN", ["alice", "secret"]))
        self.assertEqual(parse_command(b"AWAY"), ("AWAY", []))
        self.assertEqual(parse_command(b"AWAY at lunch"), ("AWAY", ["at lunch"]))
        for bad in (b"MSG aim:bob", b"NOPE x", b"\xff\xfe", b"LOGIN alice"):
            self.assertRaises(LineError, parse_command, bad)


class LineConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "line"
    handles = ("line:alice", "line:bob")

    def setUp(self):
        self.clock = task.Clock()

    def make_connector(self, api):
        # No listeners: clients are driven over StringTransport.
        return LineConnector(api, {"listen": [], "idle_timeout": 30})

    def connect_client(self, connector, identity, address):
        protocol = LineProtocol(connector)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(f"LOGIN {address.user} secret\n".encode())
        self.assertIsNotNone(protocol.session, protocol.transport.value())
        return protocol.session

    def client_received(self, connector, session):
        lines = session.handler.transport.value().decode().splitlines()
        return [line.split(" ", 2)[2] for line in lines if line.startswith("FROM ")]

    # What a line client does, for the deeper conformance tests.

    def _client(self, connector):
        protocol = LineProtocol(connector)
        protocol.makeConnection(StringTransport())
        return protocol

    def try_login(self, connector, address, password):
        protocol = self._client(connector)
        protocol.dataReceived(f"LOGIN {address.user} {password}\n".encode())
        return protocol.session, protocol.transport.value().decode()

    def client_send(self, connector, session, recipient, text):
        session.handler.dataReceived(f"MSG {recipient} {text}\n".encode())
        return session.handler.transport.value().decode().splitlines()[-1]

    def drop_client(self, connector, session):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        session.handler.transport.loseConnection()
        session.handler.connectionLost(Failure(ConnectionLost()))

    def garbage_client(self, connector, data):
        self._client(connector).dataReceived(data)

    def client_presence(self, connector, session):
        from gateway.model import Address

        lines = session.handler.transport.value().decode().splitlines()
        return [(Address.parse(line.split()[1]), line.split()[2]) for line in lines if line.startswith("PRESENCE ")]


class LineProtocolTests(unittest.TestCase):
    """Limits and bad input on one connection, wire-exact."""

    def setUp(self):
        conformance = LineConformanceTests("test_provides_interfaces")
        conformance.setUp()
        self.connector = conformance._core()
        self.core = conformance.core
        self.clock = conformance.clock
        self.protocol = LineProtocol(self.connector)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.transport.clear()

    def send(self, data):
        self.protocol.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return out

    def test_must_log_in_first(self):
        self.assertEqual(self.send(b"MSG line:bob hi\n"), b"ERR not-logged-in LOGIN first\r\n")

    def test_wrong_password(self):
        self.assertEqual(self.send(b"LOGIN alice nope\n"), b"ERR auth-failed wrong user or password\r\n")

    def test_too_long_line_closes_only_this_connection(self):
        out = self.send(b"x" * 5000)
        self.assertEqual(out, b"ERR too-long lines are limited to 4096 bytes\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_idle_timeout(self):
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.transport.value(), b"ERR idle-timeout\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_rate_limit(self):
        self.send(b"LOGIN alice secret\n")
        answers = [self.send(b"MSG line:nobody x\n") for _ in range(25)]
        limited = [a for a in answers if a.startswith(b"ERR rate-limited")]
        self.assertEqual(len(limited), 25 - 19)  # the LOGIN line counted too
        self.clock.advance(1.0)
        self.assertTrue(self.send(b"MSG line:nobody x\n").startswith(b"ERR unknown-recipient"))

    def test_logout_on_disconnect(self):
        self.send(b"LOGIN alice secret\n")
        self.assertEqual(len(self.core.sessions.sessions_of("alice")), 1)
        self.protocol.connectionLost(None)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
