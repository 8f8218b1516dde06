"""Limits on every listener: connections per source and in all; slow clients closed at the login timeout."""

import socket
import time

from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from gateway.config import ConfigError
from gateway.path.limits import LimitedFactory, ListenerLimits, listener_limits
from gateway.ops.metrics import Metrics
from tests.gateway_process import Gateway, have_example_plugin
from tests.support import free_port


class Echo(protocol.Protocol):
    lost = False

    def connectionLost(self, reason):
        self.lost = True


class PoliteFactory(protocol.Factory):
    protocol = Echo

    def refusal(self, reason):
        return f"ERR {reason}\r\n".encode()


def connect(factory, host):
    proto = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class LimitedFactoryTests(unittest.TestCase):
    def setUp(self):
        self.metrics = Metrics()
        self.factory = LimitedFactory(PoliteFactory(), ListenerLimits(max_connections=5, max_connections_per_source=2),
                                      "line tcp:7777", task.Clock(), self.metrics)

    def test_per_source(self):
        a1, _ = connect(self.factory, "192.0.2.1")
        connect(self.factory, "192.0.2.1")
        refused, transport = connect(self.factory, "192.0.2.1")
        self.assertNotIsInstance(refused, Echo)
        self.assertEqual(transport.value(), b"ERR too-many-from-source\r\n")
        self.assertTrue(transport.disconnecting)
        other, _ = connect(self.factory, "192.0.2.2")
        self.assertIsInstance(other, Echo)
        # One closes: that address may connect again, and the protocol still hears of its loss.
        a1.connectionLost(Failure(ConnectionError()))
        self.assertTrue(a1.lost)
        again, _ = connect(self.factory, "192.0.2.1")
        self.assertIsInstance(again, Echo)
        self.assertIn('gateway_connections_refused_total{listener="line tcp:7777",reason="too-many-from-source"} 1.0',
                      self.metrics.render().decode())

    def test_in_all(self):
        for n in range(5):
            self.assertIsInstance(connect(self.factory, f"192.0.2.{n}")[0], Echo)
        refused, transport = connect(self.factory, "192.0.2.99")
        self.assertEqual(transport.value(), b"ERR too-many-connections\r\n")
        self.assertEqual(self.factory.open, 5)

    def test_a_node_taking_no_logins_refuses_unless_the_protocol_sends_the_client_on(self):
        state = {"refused": ("node-draining", "this node is being drained"), "placed": None}
        factory = PoliteFactory()
        self.factory.admission = lambda: state["refused"]
        self.factory.placement = lambda: state["placed"]
        refused, transport = connect(self.factory, "192.0.2.1")
        self.assertEqual(transport.value(), b"ERR node-draining\r\n")
        # A protocol that redirects after the login (Sametime) takes the connection while it can.
        factory.places_logins = True
        self.factory.factory = factory
        self.assertNotIsInstance(connect(self.factory, "192.0.2.1")[0], Echo)  # nowhere to send it
        state["placed"] = "127.0.0.2:7777"
        admitted, transport = connect(self.factory, "192.0.2.1")
        self.assertIsInstance(admitted, Echo)
        self.assertEqual(self.factory.open, 1)
        state["refused"] = ("too-many-connections", "full")
        self.assertNotIsInstance(connect(self.factory, "192.0.2.1")[0], Echo)

    def test_factory_without_refusal_just_closes(self):
        factory = LimitedFactory(protocol.Factory.forProtocol(Echo), ListenerLimits(1, 1), "x", task.Clock())
        connect(factory, "192.0.2.1")
        _, transport = connect(factory, "192.0.2.1")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_keys_checked(self):
        self.assertEqual(listener_limits("x", {"max_connections": 7}).max_connections, 7)
        for bad in (0, -1, "5", True):
            self.assertRaises(ConfigError, listener_limits, "x", {"max_connections_per_source": bad})

    def test_output_keys_checked(self):
        limits = listener_limits("x", {"max_output_buffer": 65536, "output_timeout": 2.5})
        self.assertEqual((limits.max_output_buffer, limits.output_timeout), (65536, 2.5))
        self.assertEqual(listener_limits("x", {}).max_output_buffer, 4 << 20)
        for bad in (0, "5", True):
            self.assertRaises(ConfigError, listener_limits, "x", {"output_timeout": bad})
        self.assertRaises(ConfigError, listener_limits, "x", {"max_output_buffer": 1.5})


class Buffering(StringTransport):
    """A transport holding ``dataBuffer`` for its peer, as Twisted's TCP transports do."""

    dataBuffer = b""
    offset = 0
    _tempDataLen = 0


class PeerNotReadingTests(unittest.TestCase):
    """A peer that does not read what is sent to it is closed, by bytes waiting or by time."""

    def setUp(self):
        self.clock = task.Clock()
        self.metrics = Metrics()
        self.factory = LimitedFactory(PoliteFactory(), ListenerLimits(max_output_buffer=100_000, output_timeout=30),
                                      "line tcp:7777", self.clock, self.metrics)
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        self.transport = Buffering()
        self.protocol.makeConnection(self.transport)

    def test_closed_when_too_much_waits(self):
        self.transport._tempDataLen = 100_000
        self.clock.advance(1)
        self.assertFalse(self.transport.disconnecting)
        self.transport._tempDataLen = 100_001
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn('reason="peer-not-reading"} 1.0', self.metrics.render().decode())

    def test_closed_when_more_than_its_buffer_waits_for_output_timeout(self):
        self.transport.dataBuffer, self.transport.offset = b"x" * 70_000, 1_000
        self.clock.advance(1)  # first seen waiting
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_a_peer_that_reads_again_is_left_alone(self):
        self.transport._tempDataLen = 70_000
        self.clock.advance(20)
        self.transport._tempDataLen = 10  # it read
        self.clock.advance(1)
        self.transport._tempDataLen = 70_000
        self.clock.advance(20)
        self.assertFalse(self.transport.disconnecting)
        # Gone: nothing is looked at any more, and no timer is left.
        self.protocol.connectionLost(Failure(ConnectionError()))
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory._live, {})


CONFIG = """
[gateway]
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.oscar]
listen = ["tcp:%(oscar)d:interface=127.0.0.1"]
bos_address = "127.0.0.1:%(oscar)d"
max_connections_per_source = 3
login_timeout = %(timeout)d

[connectors.xmpp]
domain = "localhost"
listen = ["tcp:%(xmpp)d:interface=127.0.0.1"]
max_connections_per_source = 3
login_timeout = %(timeout)d

[connectors.sametime]
listen = ["tcp:%(sametime)d:interface=127.0.0.1"]
max_connections_per_source = 3
login_timeout = %(timeout)d

[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:%(sipudp)d"]
listen = ["tcp:%(sip)d:interface=127.0.0.1"]
max_connections_per_source = 3
idle_timeout = %(timeout)d

[connectors.line]
listen = ["tcp:%(line)d:interface=127.0.0.1"]
max_connections_per_source = 3
idle_timeout = %(timeout)d
"""


def closed_within(sock, seconds):
    """True when the peer closes ``sock`` within ``seconds`` (reading and dropping what it says)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


class EveryListenerTests(unittest.TestCase):
    """A flood from one address and a slowloris, against each connector of a real gateway."""

    timeout = 180

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        for name in ("gateway_oscar", "gateway_xmpp", "gateway_sametime", "gateway_sip"):
            try:
                __import__(name)
            except ImportError:
                raise unittest.SkipTest(f"{name} is not installed (see README.rst)")

    def start(self, timeout):
        """The gateway, with ``timeout`` seconds to log in (or of idleness) on every listener."""
        self.ports = {name: free_port() for name in ("oscar", "xmpp", "sametime", "sip", "line")}
        self.ports["sipudp"] = free_port()
        listeners = [self.ports[n] for n in ("oscar", "xmpp", "sametime", "sip", "line")]
        self.gateway = Gateway(self, CONFIG % dict(self.ports, timeout=timeout), wait_ports=listeners,
                               name="gw-limits")
        time.sleep(0.5)  # the harness's own probe connections are closed and counted out

    def test_connection_flood_from_one_address(self):
        # Login time long enough that only the limit can close the 4th connection.
        self.start(timeout=60)
        for name in ("oscar", "xmpp", "sametime", "sip", "line"):
            port = self.ports[name]
            held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
            time.sleep(0.2)
            fourth = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.assertTrue(closed_within(fourth, 10), f"{name}: a 4th connection from one address stayed open")
            fourth.close()
            # The three first are still served (not closed yet: their login time is not up).
            for sock in held:
                sock.setblocking(False)
                try:
                    self.assertNotEqual(sock.recv(65536, socket.MSG_PEEK), b"", f"{name}: a held connection closed")
                except BlockingIOError:
                    pass
                sock.close()
            time.sleep(0.3)  # the gateway saw them close
        self.assertEqual(self.gateway.tracebacks(), [])

    def test_slowloris_is_closed_at_the_login_timeout(self):
        self.start(timeout=2)
        for name in ("oscar", "xmpp", "sametime", "sip", "line"):
            sock = socket.create_connection(("127.0.0.1", self.ports[name]), timeout=5)
            sock.sendall(b"<")  # one byte of something, then nothing more
            self.assertTrue(closed_within(sock, 10), f"{name}: a connection that never logs in stayed open")
            sock.close()
        self.assertEqual(self.gateway.tracebacks(), [])


NOT_READING = """
[gateway]
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[archive]
presence = false

[connectors.line]
listen = ["tcp:%(line)d:interface=127.0.0.1"]
rate = 100000
max_output_buffer = 262144
output_timeout = 60
"""


class PeerNotReadingProcessTests(unittest.TestCase):
    """A real gateway closes a logged-in client that stops reading while messages pile up for it."""

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")

    def test_client_that_does_not_read_is_closed(self):
        port = free_port()
        gateway = Gateway(self, NOT_READING % {"line": port}, wait_ports=[port], name="gw-not-reading")

        def login(user):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"LOGIN {user} secret\n".encode())
            said = b""
            while b"OK" not in said:
                said += sock.recv(4096)
            return sock

        alice = login("alice")  # and never reads again
        bob = login("bob")
        reader = _Drain(bob)
        text = "x" * 4000
        line = f"MSG line:alice {text}\n".encode()
        closed = False
        deadline = time.monotonic() + 60
        sent = 0
        while time.monotonic() < deadline and not closed:
            try:
                bob.sendall(line * 50)
            except socket.timeout:
                continue  # the gateway is not reading bob just now (the archive is behind)
            sent += 50
            time.sleep(0.01)
            closed = "does not read what is sent" in gateway.text()
        reader.stop()
        self.assertTrue(closed, f"alice was never closed after {sent} messages of 4 KB")
        self.assertTrue(closed_within(alice, 20), "the gateway logged closing alice, but her connection is open")
        self.assertEqual(gateway.tracebacks(), [])
        alice.close()
        bob.close()


class _Drain:
    """Reads a socket in a thread (so the gateway can always write to it); keeps the last 64 KB seen."""

    def __init__(self, sock):
        import threading

        self.sock, self.seen, self.running = sock, b"", True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.seen = (self.seen + data)[-65536:]

    def stop(self):
        self.running = False
        self.thread.join(2)
