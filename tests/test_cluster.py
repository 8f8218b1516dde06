"""The cluster's registry: the Redis client's protocol, and nodes, heartbeats and sessions in a real Redis."""

import io
import json
import os
import shutil
import tempfile
import uuid

from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from gateway import cli
from gateway.cluster.redis import RedisError, RedisProtocol, RedisUnavailable, command, encode, parse_url
from gateway.cluster.registry import Keys, NodeRegistry, node_states
from gateway.cluster.streams import Relay
from gateway.config import ConfigError, loads
from gateway.model import Address, Identity, Typing
from gateway.path.sessions import Session
from gateway.plugins import Plugins
from gateway.testing import MemoryArchive, MemoryDirectory, MemoryOfflineStore, make_core
from tests.test_archive_writer import sleep, wait_for
from tests.test_bus import CONFIG as BUS_CONFIG, Connectors

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
# The in-process nodes' shared secret.
SECRET = b"0123456789abcdef" * 4


def on_redis(case, url=REDIS_URL, name="gwtest"):
    """
    For a test of a cluster on the Redis at ``url`` (SkipTest when there
    is none): a key prefix of its own, whose keys are removed after it,
    and a new cluster secret's file: ``(prefix, secret file)``.
    """
    try:
        command(url, ("PING",), timeout=2)
    except (OSError, RedisError, RedisUnavailable) as e:
        raise SkipTest(f"no Redis at {url} ({e}); .ci/run starts one")
    prefix = f"{name}{uuid.uuid4().hex[:10]}"

    def clean():
        [keys] = command(url, ("KEYS", f"{prefix}:*"))
        if keys:
            command(url, ("DEL", *keys))

    case.addCleanup(clean)
    return prefix, secret_file(case)


def secret_file(case):
    """A new cluster secret's file, as ``gatewayctl node secret`` makes it (removed after ``case``)."""
    folder = tempfile.mkdtemp(prefix="gw-cluster-")
    case.addCleanup(shutil.rmtree, folder, True)
    path = os.path.join(folder, "cluster.secret")
    out = io.StringIO()
    case.assertEqual(cli.main(["node", "secret", path], out=out), 0)
    return path


class ProtocolTests(TestCase):
    def connected(self):
        proto = RedisProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_commands_are_arrays_of_bulk_strings(self):
        self.assertEqual(encode(("SET", "k", "vé", 3)), b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\xc3\xa9\r\n$1\r\n3\r\n")

    def test_pipelined_replies_in_order_split_anywhere(self):
        replies = b"+OK\r\n:7\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n-ERR no such thing\r\n"
        for cut in range(len(replies) + 1):
            proto, transport = self.connected()
            results = []
            for args in [("SET", "a", 1), ("INCR", "n"), ("GET", "a"), ("GET", "b"), ("SMEMBERS", "s"), ("X",)]:
                proto.execute(*args).addBoth(results.append)
            self.assertTrue(transport.value().startswith(b"*3\r\n$3\r\nSET"))
            proto.dataReceived(replies[:cut])
            proto.dataReceived(replies[cut:])
            self.assertEqual(results[:5], [b"OK", 7, b"abc", None, [b"a", b"b"]], cut)
            self.assertIsInstance(results[5], Failure)
            self.assertIsInstance(results[5].value, RedisError)
            self.assertEqual(str(results[5].value), "ERR no such thing")

    def test_a_lost_connection_fails_what_waits(self):
        proto, _ = self.connected()
        d = proto.execute("GET", "a")
        proto.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ConnectionLost)

    def test_pushed_messages_go_to_the_subscriber(self):
        proto, transport = self.connected()
        got = []
        proto.on_message = lambda channel, data: got.append((channel, data))
        proto.dataReceived(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nalice\r\n")
        self.assertEqual(got, [(b"ch", b"alice")])

    def test_garbage_closes_the_connection(self):
        proto, transport = self.connected()
        d = proto.execute("GET", "a")
        proto.dataReceived(b"?what\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ConnectionLost)

    def test_urls(self):
        self.assertEqual(parse_url("redis://:pw@10.0.0.1:6380/2"),
                         {"host": "10.0.0.1", "port": 6380, "password": "pw", "username": None, "db": 2})
        self.assertEqual(parse_url("redis://127.0.0.1")["port"], 6379)
        for bad in ("http://x", "redis://h/x"):
            self.assertRaises(ValueError, parse_url, bad)

    def test_config(self):
        config = loads('[cluster]\nredis = "redis://127.0.0.1:6379/1"\nheartbeat = 2.5\nmax_sessions = 500\n'
                       'secret_file = "cluster.secret"\n')
        self.assertEqual((config.cluster.redis, config.cluster.heartbeat, config.cluster.max_sessions,
                          config.cluster.secret_file), ("redis://127.0.0.1:6379/1", 2.5, 500, "cluster.secret"))
        self.assertEqual(loads("").cluster.redis, "")
        for bad in ('redis = "tcp://x"', "heartbeat = 0", "max_sessions = -1"):
            self.assertRaises(ConfigError, loads, "[cluster]\n" + bad + "\n")
        # A cluster without its secret does not start: its nodes would deliver whatever Redis holds.
        e = self.assertRaises(ConfigError, loads, '[cluster]\nredis = "redis://127.0.0.1:6379/1"\n')
        self.assertIn("cluster.secret_file", str(e))

    def test_a_node_whose_secret_file_is_missing_does_not_start(self):
        from twisted.internet import reactor

        from gateway.service import GatewayService

        folder = self.mktemp()
        os.mkdir(folder)
        config = loads(f'[gateway]\ndata_dir = "{folder}"\n[admin]\nlisten = ""\n[cluster]\n'
                       f'redis = "redis://127.0.0.1:1/0"\nsecret_file = "{folder}/none"\n')
        e = self.assertRaises(ConfigError, GatewayService, config, reactor)
        self.assertIn("cluster.secret_file", str(e))
        self.assertIn("gatewayctl node secret", str(e))

    def test_secret_files(self):
        from gateway.cluster import secret

        folder = self.mktemp()
        os.mkdir(folder)
        path = os.path.join(folder, "cluster.secret")
        e = self.assertRaises(secret.SecretError, secret.load, path)
        self.assertIn("gatewayctl node secret", str(e))
        out = io.StringIO()
        self.assertEqual(cli.main(["node", "secret", path], out=out), 0)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        made = secret.load(path)
        self.assertEqual(len(made), 64)
        # Made once: a second time would cut the node that has it off from the others.
        self.assertNotEqual(cli.main(["node", "secret", path], out=out), 0)
        self.assertEqual(secret.load(path), made)
        with open(path, "w") as f:
            f.write("short\n")
        self.assertRaises(secret.SecretError, secret.load, path)
        self.assertNotEqual(secret.key_id(made), secret.key_id(b"another secret of at least 32 bytes!"))
        self.assertNotIn(secret.key_id(made), made.decode())


def session(person, address, connector="xmpp"):
    return Session(Identity(person, person.title(), (Address.parse(address),)), Address.parse(address), connector,
                   started=1.0)


class OnRedis:
    """Mixin: the real Redis, each test under a key prefix of its own (removed after)."""

    redis_url = REDIS_URL

    def setUp(self):
        self.prefix, self.secret_file = on_redis(self, self.redis_url)

    def states(self):
        return {n["name"]: n for n in node_states(self.redis_url, self.prefix)}


class RegistryTests(OnRedis, TestCase):
    """Two or three nodes in one process."""

    timeout = 30

    @defer.inlineCallbacks
    def node(self, name, heartbeat=0.3, capacity=0, clock=None, secret=SECRET):
        from twisted.internet import reactor

        registry = NodeRegistry(reactor, self.redis_url, name, heartbeat=heartbeat, capacity=capacity,
                                prefix=self.prefix, listeners=lambda: {"xmpp": ["tcp:5222"]}, clock=clock,
                                secret=secret)
        registry.startService()
        self.addCleanup(lambda: registry.running and registry.stopService())
        yield wait_for(lambda: registry.client.connected and registry.subscriber.connected)
        return registry

    @defer.inlineCallbacks
    def test_a_ticket_shared_by_one_node_is_taken_once_by_another_and_only_when_signed(self):
        a = yield self.node("a")
        b = yield self.node("b")
        data = {"identity": "alice", "address": "aim:alice", "profile": {"name": "test"}}
        key = yield a.share_ticket("oscar", data, 30)
        self.assertRegex(key, "^[0-9a-f]{64}$")
        self.assertEqual((yield b.claim_ticket("oscar", key)), data)
        self.assertIsNone((yield b.claim_ticket("oscar", key)))  # once
        self.assertIsNone((yield a.claim_ticket("oscar", key)))
        # For another connector's key space, or written to Redis by someone without the secret: nothing.
        key = yield a.share_ticket("oscar", data, 30)
        self.assertIsNone((yield b.claim_ticket("sametime", key)))
        forged = "0" * 64 + " " + json.dumps({"identity": "mallory", "address": "aim:alice"})
        command(self.redis_url, ("SET", a.keys.ticket("oscar", "f" * 64), forged))
        self.assertIsNone((yield b.claim_ticket("oscar", "f" * 64)))
        command(self.redis_url, ("SET", a.keys.ticket("oscar", "e" * 64), "\u00e9" * 64 + " {}"))
        self.assertIsNone((yield b.claim_ticket("oscar", "e" * 64)))
        other = yield self.node("c", secret=b"another cluster's secret, 32 bytes")
        key = yield other.share_ticket("oscar", data, 30)
        self.assertIsNone((yield b.claim_ticket("oscar", key)))
        # Expired: gone from Redis.
        key = yield a.share_ticket("oscar", data, 0.2)
        yield sleep(0.4)
        self.assertIsNone((yield b.claim_ticket("oscar", key)))
        # Redis unreachable: sharing fails (the login is served where it is), nothing is claimed.
        yield a.client.stop()
        yield self.assertFailure(a.share_ticket("oscar", data, 30), RedisUnavailable)
        self.assertIsNone((yield a.claim_ticket("oscar", key)))

    @defer.inlineCallbacks
    def test_nodes_register_and_show_in_node_list(self):
        a = yield self.node("a", capacity=100)
        b = yield self.node("b")
        yield a.beat()
        yield b.beat()
        a.gateway_session_changed(session("alice", "xmpp:alice@gw.example"), True)
        yield a.beat()
        states = self.states()
        self.assertEqual(sorted(states), ["a", "b"])
        self.assertEqual((states["a"]["state"], states["a"]["sessions"], states["a"]["capacity"],
                          states["a"]["load"]), ("up", 1, 100, 0.01))
        self.assertEqual(states["a"]["listeners"], {"xmpp": ["tcp:5222"]})
        self.assertLess(states["a"]["heartbeat_age"], 5)
        out = io.StringIO()
        self.assertEqual(cli.main(["node", "list", "--redis", self.redis_url, "--prefix", self.prefix], out=out), 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0].split(), ["NODE", "STATE", "SESSIONS", "CAPACITY", "LOAD", "HEARTBEAT"])
        self.assertEqual(lines[1].split()[:5], ["a", "up", "1", "100", "0.01"])
        self.assertEqual(lines[2].split()[:5], ["b", "up", "0", "-", "0.00"])
        out = io.StringIO()
        cli.main(["node", "list", "--json", "--redis", self.redis_url, "--prefix", self.prefix], out=out)
        self.assertEqual([json.loads(line)["name"] for line in out.getvalue().splitlines()], ["a", "b"])

    @defer.inlineCallbacks
    def test_where_a_person_is_online_across_nodes_and_the_cache_follows_changes(self):
        a = yield self.node("a")
        b = yield self.node("b")
        on_a = session("alice", "xmpp:alice@gw.example")
        a.gateway_session_changed(on_a, True)
        yield wait_for(lambda: command(self.redis_url, ("HLEN", a.keys.person("alice")))[0] == 1)
        found = yield b.where("alice")
        self.assertEqual([(s["node"], s["network"], s["address"], s["session"]) for s in found],
                         [("a", "xmpp", "xmpp:alice@gw.example", on_a.id)])
        # Cached on b now; a logout on a reaches it through the channel.
        self.assertIn("alice", b._cache)
        a.gateway_session_changed(on_a, False)
        yield wait_for(lambda: "alice" not in b._cache)
        self.assertEqual((yield b.where("alice")), [])
        on_b = session("alice", "aim:alice", connector="oscar")
        b.gateway_session_changed(on_b, True)
        yield wait_for(lambda: command(self.redis_url, ("HKEYS", a.keys.person("alice")))[0] == [on_b.id.encode()])
        found = yield b.where("alice")
        self.assertEqual([(s["node"], s["address"]) for s in found], [("b", "aim:alice")])
        self.assertEqual((yield a.where("nobody")), [])

    @defer.inlineCallbacks
    def test_a_node_that_stops_beating_is_reaped_by_another(self):
        a = yield self.node("a")
        b = yield self.node("b")
        c = yield self.node("c")
        for who in ("alice", "bob"):
            b.gateway_session_changed(session(who, f"xmpp:{who}@gw.example"), True)
        yield b.beat()
        # b is killed: no more beats, nothing withdrawn.
        b._beating.stop()
        yield b.client.stop()
        yield b.subscriber.stop()
        b.running = False
        self.assertEqual(self.states()["b"]["state"], "up")
        yield sleep(0.4)  # its alive key expires
        self.assertEqual(self.states()["b"]["state"], "down")  # seen by node list before anyone reaps
        yield wait_for(lambda: a.reaped or c.reaped)
        self.assertEqual(sorted(a.reaped + c.reaped), ["b"])  # one node did it, once
        self.assertEqual((yield a.where("alice")), [])
        self.assertEqual((yield c.where("bob")), [])
        self.assertEqual((self.states()["b"]["state"], self.states()["b"]["sessions"]), ("down", 0))

    @defer.inlineCallbacks
    def test_a_node_taken_for_dead_writes_its_sessions_again_at_its_next_beat(self):
        a = yield self.node("a")
        a.gateway_session_changed(session("alice", "xmpp:alice@gw.example"), True)
        yield a.beat()
        # Another node reaped it meanwhile (a stall longer than the heartbeat).
        command(self.redis_url, ("DEL", a.keys.person("alice")), ("HSET", a.keys.node("a"), "state", "down"))
        yield a.beat()
        self.assertEqual(command(self.redis_url, ("HLEN", a.keys.person("alice")))[0], 1)
        self.assertEqual(self.states()["a"]["state"], "up")

    @defer.inlineCallbacks
    def test_a_clean_stop_withdraws_the_node(self):
        a = yield self.node("a")
        b = yield self.node("b")
        b.gateway_session_changed(session("bob", "xmpp:bob@gw.example"), True)
        yield b.beat()
        yield b.stopService()
        self.assertEqual(self.states()["b"]["state"], "stopped")
        self.assertEqual((yield a.where("bob")), [])
        yield a.beat()
        self.assertEqual(a.reaped, [])

    @defer.inlineCallbacks
    def test_after_losing_redis_the_node_writes_its_state_again(self):
        a = yield self.node("a")
        a.gateway_session_changed(session("alice", "xmpp:alice@gw.example"), True)
        yield a.beat()
        # Meanwhile another node reaped it (as it would after a long outage).
        command(self.redis_url, ("DEL", a.keys.person("alice")), ("HSET", a.keys.node("a"), "state", "down"))
        a.client.protocol.transport.abortConnection()
        yield wait_for(lambda: not a.client.connected)
        self.assertFailure(a.client.execute("PING"), RedisUnavailable)
        yield wait_for(lambda: a.client.connected, timeout=10)
        yield wait_for(lambda: command(self.redis_url, ("HLEN", a.keys.person("alice")))[0] == 1)
        self.assertEqual(self.states()["a"]["state"], "up")

    @defer.inlineCallbacks
    def test_admission_full_and_draining_as_the_operator_asks(self):
        a = yield self.node("a", capacity=2)
        moved = []
        a.on_drain = lambda: moved.append(True) or 1
        self.assertIsNone(a.admission())
        for who in ("alice", "bob"):
            a.gateway_session_changed(session(who, f"xmpp:{who}@gw.example"), True)
        self.assertEqual(a.admission()[0], "node-full")
        command(self.redis_url, ("HSET", a.keys.node("a"), "wanted", "draining"))
        yield a.beat()
        self.assertEqual((a.state, a.admission()[0], moved), ("draining", "node-draining", [True]))
        yield a.beat()
        self.assertEqual(moved, [True])  # once
        self.assertEqual(self.states()["a"]["state"], "draining")
        command(self.redis_url, ("HSET", a.keys.node("a"), "wanted", "up"))
        yield a.beat()
        self.assertEqual((a.state, a.admission()[0]), ("up", "node-full"))

    @defer.inlineCallbacks
    def test_placement_on_the_least_loaded_node_with_room(self):
        from twisted.internet import reactor

        a = yield self.node("a", capacity=10)
        b = NodeRegistry(reactor, self.redis_url, "b", heartbeat=0.3, capacity=10, prefix=self.prefix,
                         listeners=lambda: {"xmpp": ["tcp:5322:interface=127.0.0.2"], "line": ["unix:/x"]})
        b.startService()
        self.addCleanup(lambda: b.running and b.stopService())
        c = NodeRegistry(reactor, self.redis_url, "c", heartbeat=0.3, prefix=self.prefix,
                         listeners=lambda: {"xmpp": ["tcp:5422"]}, advertise="gw-c.example.com")
        c.startService()
        self.addCleanup(lambda: c.running and c.stopService())
        yield wait_for(lambda: b.client.connected and c.client.connected)
        yield a.beat()
        self.assertEqual(sorted(a.peers), ["b", "c"])
        self.assertIsNone(a.placement("xmpp"))  # as loaded as the others: here
        for n in range(2):
            a.gateway_session_changed(session(f"user{n}", f"xmpp:user{n}@gw.example"), True)
        # Two sessions more than b and c: the least loaded takes it (b, by its load, then name).
        self.assertEqual(a.placement("xmpp"), "127.0.0.2:5322")
        self.assertIsNone(a.placement("oscar"))  # no other node listens for it
        self.assertIsNone(a.placement("line"))  # b's line listener is no TCP address
        b.gateway_session_changed(session("x", "xmpp:x@gw.example"), True)
        b.gateway_session_changed(session("y", "xmpp:y@gw.example"), True)
        yield b.beat()
        yield a.beat()
        # c has no capacity set (load 0) and says by which name it is reached.
        self.assertEqual(a.placement("xmpp"), "gw-c.example.com:5422")
        yield c.stopService()
        yield a.beat()
        self.assertIsNone(a.placement("xmpp"))  # b has as many sessions: here
        a.state = "draining"
        self.assertEqual(a.placement("xmpp"), "127.0.0.2:5322")  # draining: anywhere else with room

    @defer.inlineCallbacks
    def test_beats_follow_the_clock(self):
        clock = task.Clock()
        a = yield self.node("a", heartbeat=3.0, clock=clock)
        self.assertEqual(a.beats, 0)
        clock.advance(0.99)
        self.assertEqual(a.beats, 0)
        clock.advance(0.01)
        self.assertEqual(a.beats, 1)
        yield wait_for(lambda: a._in_flight is None)
        self.assertIn("a", self.states())
        for beats in (2, 3, 4):
            clock.advance(1.0)
            self.assertEqual(a.beats, beats)
            yield wait_for(lambda: a._in_flight is None)
        # A beat whose answers have not come yet: the next tick waits for it instead of beating twice.
        a._in_flight = defer.Deferred()
        clock.advance(1.0)
        self.assertEqual(a.beats, 4)


# A node of the tests' clusters, its connectors to add.
NODE_BASE = """
[gateway]
node = "{node}"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = "{admin}"

[cluster]
redis = "{redis}"
prefix = "{prefix}"
heartbeat = 1.0
max_sessions = 100
secret_file = "{secret}"
"""
NODE_CONFIG = NODE_BASE + """
[connectors.line]
listen = ["tcp:{line}:interface=127.0.0.1"]
"""


class NodeProcessTests(OnRedis, TestCase):
    """Two ``twistd gateway`` nodes on one Redis, as an operator runs them."""

    timeout = 90

    def start(self, node, admin=None):
        from tests.gateway_process import Gateway
        from tests.support import free_port

        line = free_port()
        text = NODE_CONFIG.format(node=node, redis=self.redis_url, prefix=self.prefix, line=line, secret=self.secret_file,
                                  admin=f"tcp:{admin}:interface=127.0.0.1" if admin else "")
        return Gateway(self, text, wait_ports=(line,) + ((admin,) if admin else ()), name=f"gw-{node}"), line

    def node_list(self, gateway):
        out = gateway.gatewayctl("node", "list", "--json")
        return {n["name"]: n for n in map(json.loads, out.splitlines())}

    @defer.inlineCallbacks
    def test_two_nodes_messages_across_them_a_kill_nothing_lost_and_a_clean_stop(self):
        from tests.gateway_process import LineClient

        a, a_line = self.start("node-a")
        b, b_line = self.start("node-b")
        alice, bob = LineClient(a_line), LineClient(b_line)
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        alice.send("LOGIN alice secret")
        alice.expect("OK LOGIN")
        bob.send("LOGIN bob secret")
        bob.expect("OK LOGIN")
        keys = Keys(self.prefix)
        yield wait_for(lambda: command(self.redis_url, ("HLEN", keys.person("bob")))[0] == 1)
        [[field]] = [command(self.redis_url, ("HVALS", keys.person("bob")))[0]]
        self.assertEqual((json.loads(field)["node"], json.loads(field)["address"]), ("node-b", "line:bob"))
        yield wait_for(lambda: {n: s["sessions"] for n, s in self.node_list(a).items()} == {"node-a": 1, "node-b": 1})
        nodes = self.node_list(a)
        self.assertEqual({n["state"] for n in nodes.values()}, {"up"})
        self.assertEqual(nodes["node-b"]["capacity"], 100)
        self.assertEqual(list(nodes["node-b"]["listeners"]), ["line"])
        # Across the nodes, both ways: decided on the sender's node, delivered by the recipient's.
        alice.send("MSG line:bob hello from node a")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello from node a")
        bob.send("MSG line:alice and hello from node b")
        self.assertTrue(bob.expect("OK ").startswith("OK delivered "))
        self.assertEqual(alice.expect("FROM"), "FROM line:bob and hello from node b")
        # kill -9 of node B; a message for bob right after it goes to B's stream (A does not know yet).
        b.kill()
        alice.send("MSG line:bob are you there?")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        # Node A finds B gone, removes bob's session and takes B's stream over: bob is nowhere, so it is held.
        yield wait_for(lambda: command(self.redis_url, ("HLEN", keys.person("bob")))[0] == 0, timeout=15)
        self.assertEqual(self.node_list(a)["node-b"]["state"], "down")
        a.wait_for_log("cluster: node node-b stopped beating; 1 of its sessions removed by node-a")
        yield wait_for(lambda: command(self.redis_url, ("XLEN", f"{self.prefix}:node:{{node-b}}:stream"))[0] == 0)
        alice.send("MSG line:bob after the kill")
        self.assertTrue(alice.expect("OK ").startswith("OK queued "))
        # bob's client reconnects, to node A: both messages, once each.
        bob.close()
        bob = LineClient(a_line)
        self.addCleanup(bob.close)
        # (Held messages may come before the login's answer.)
        bob.send("LOGIN bob secret")
        self.assertEqual(bob.expect("FROM"), "FROM line:alice are you there?")
        self.assertEqual(bob.expect("FROM"), "FROM line:alice after the kill")
        with self.assertRaises(AssertionError):
            bob.expect("FROM", timeout=1)
        # A clean stop withdraws node A itself.
        alice.close()
        a.stop()
        self.assertEqual(self.node_list(a)["node-a"]["state"], "stopped")
        self.assertEqual(command(self.redis_url, ("HLEN", keys.person("alice")))[0], 0)
        self.assertEqual(a.tracebacks(), [])


class TwoNodes(OnRedis):
    """Mixin: two nodes in one process (in-memory connectors, archives of their own, one offline store)."""

    timeout = 30

    def setUp(self):
        super().setUp()
        self.directory = MemoryDirectory()
        self.directory.add("alice", "aim:alice", "xmpp:alice@gw.example")
        self.directory.add("bob", "aim:bob", "xmpp:bob@gw.example")
        self.offline = MemoryOfflineStore()  # one database for the cluster

    @defer.inlineCallbacks
    def node(self, name):
        from twisted.internet import reactor

        plugins = Plugins()
        plugins.register(Connectors(()), "test-connectors")
        secret = getattr(self, "secrets", {}).get(name, SECRET)
        registry = NodeRegistry(reactor, self.redis_url, name, heartbeat=0.5, prefix=self.prefix, secret=secret)
        plugins.register(registry, "cluster-registry")
        core = make_core(f'[gateway]\nnode = "{name}"\n' + BUS_CONFIG, directory=self.directory, plugins=plugins, archive=MemoryArchive(),
                         offline=self.offline)
        core.start_plugins()
        relay = Relay(reactor, self.redis_url, registry, core.bus, secret, block=0.2, claim_idle=0.1)
        registry.take_over = relay.take_over
        registry.gone = relay.gone
        core.bus.cluster = relay
        registry.startService()
        relay.startService()
        self.addCleanup(lambda: registry.running and registry.stopService())
        self.addCleanup(lambda: relay.running and relay.stopService())
        yield wait_for(lambda: registry.client.connected and registry.subscriber.connected and relay.reader.connected)
        core.registry, core.relay = registry, relay
        return core

    @defer.inlineCallbacks
    def login(self, core, connector, person, handle):
        session = yield core.connectors[connector].login(self.directory.people[person], Address.parse(handle))
        keys = core.registry.keys
        yield wait_for(lambda: session.id.encode() in command(self.redis_url, ("HKEYS", keys.person(person)))[0])
        return session

    def kill(self, core):
        """As kill -9 would leave it: no more beats or reads, nothing withdrawn."""
        registry, relay = core.registry, core.relay
        registry._beating.stop()
        registry.running = relay.running = False
        return defer.gatherResults([registry.client.stop(), registry.subscriber.stop(), relay.reader.stop()])


class RelayTests(TwoNodes, TestCase):
    @defer.inlineCallbacks
    def test_messages_both_ways_across_nodes_decided_and_archived_once(self):
        a = yield self.node("a")
        b = yield self.node("b")
        alice = yield self.login(a, "left", "alice", "aim:alice")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "hello across"))
        self.assertTrue(outcome.delivered, outcome)
        yield wait_for(lambda: b.connectors["right"].received(bob, "im"))
        [got] = b.connectors["right"].received(bob, "im")
        self.assertEqual((got.id, got.text, got.sender, got.recipient),
                         (outcome.event_id, "hello across", Address.parse("xmpp:alice@gw.example"),
                          Address.parse("xmpp:bob@gw.example")))
        # Decided and recorded once, on the sender's node; the delivery noted by the node that delivered.
        self.assertEqual([e.id for e in a.archive.events("im")], [outcome.event_id])
        self.assertEqual(b.archive.events("im"), [])
        yield wait_for(lambda: b.archive.deliveries)
        self.assertEqual(b.archive.deliveries, [(outcome.event_id, "delivered", "b")])
        back = yield b.bus.submit(b.api.message("xmpp:bob@gw.example", "xmpp:alice@gw.example", "and back"))
        self.assertTrue(back.delivered)
        yield wait_for(lambda: a.connectors["left"].received(alice, "im"))
        self.assertEqual([e.text for e in a.connectors["left"].received(alice, "im")], ["and back"])
        self.assertEqual((a.relay.handed, b.relay.received, b.relay.handed, a.relay.received), (1, 1, 1, 1))

    @defer.inlineCallbacks
    def test_an_entry_delivered_twice_reaches_the_user_once(self):
        a = yield self.node("a")
        b = yield self.node("b")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        event = a.api.message("aim:alice", "aim:bob", "once")
        yield a.relay.handoff("b", event)
        yield wait_for(lambda: b.relay.received == 1)
        yield a.relay.handoff("b", event)
        yield wait_for(lambda: b.relay.duplicates == 1)
        self.assertEqual([e.text for e in b.connectors["right"].received(bob, "im")], ["once"])

    @defer.inlineCallbacks
    def test_entries_not_signed_by_the_cluster_are_refused_not_delivered(self):
        from gateway.cluster.secret import sign
        from gateway.model import event_to_dict

        a = yield self.node("a")
        b = yield self.node("b")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        stream = b.relay.stream
        now = b.relay.reactor.seconds()

        def entry(text, **fields):
            body = {"e": event_to_dict(a.api.message("aim:alice", "aim:bob", text)), "from": "a", "to": "b", "t": now}
            body.update(fields)
            return json.dumps(body).encode()

        # Written to Redis by someone without the secret: unsigned, signed with another key, or an
        # honest entry whose text was changed on the way.
        forged = entry("unsigned")
        command(self.redis_url, ("XADD", stream, "*", "m", forged))
        command(self.redis_url, ("XADD", stream, "*", "m", entry("other key"), "s", sign(b"x" * 32, entry("other key"))))
        honest = entry("honest")
        command(self.redis_url, ("XADD", stream, "*", "m", honest.replace(b"honest", b"edited"),
                                 "s", sign(SECRET, honest)))
        # Signed, but for another node's stream (copied here), or older than a delivery is remembered.
        misplaced = entry("meant for c", to="c")
        command(self.redis_url, ("XADD", stream, "*", "m", misplaced, "s", sign(SECRET, misplaced)))
        stale = entry("a day and more old", t=now - 90_000)
        command(self.redis_url, ("XADD", stream, "*", "m", stale, "s", sign(SECRET, stale)))
        # A signature that is not even ASCII.
        command(self.redis_url, ("XADD", stream, "*", "m", entry("garbled"), "s", "\u00e9" * 64))
        yield wait_for(lambda: b.relay.refused == 6)
        # Acknowledged and gone, none delivered; a signed entry still is.
        yield wait_for(lambda: command(self.redis_url, ("XLEN", stream))[0] == 0)
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "signed"))
        self.assertTrue(outcome.delivered)
        yield wait_for(lambda: b.connectors["right"].received(bob, "im"))
        self.assertEqual([e.text for e in b.connectors["right"].received(bob, "im")], ["signed"])
        self.assertEqual((b.relay.refused, b.relay.received), (6, 1))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_a_node_with_another_secret_is_named_and_its_entries_refused(self):
        self.secrets = {"b": b"another cluster's secret, 32 bytes"}
        logged = []
        from twisted.logger import globalLogPublisher

        def observe(event):
            if "signs with another secret" in event.get("log_format", ""):
                logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        a = yield self.node("a")
        b = yield self.node("b")
        yield b.registry.beat()
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        yield a.registry.beat()
        said = lambda: [e["peer"] for e in logged if e.get("log_source") is a.registry]  # noqa: E731
        self.assertEqual(said(), ["b"])
        yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "from the wrong cluster"))
        yield wait_for(lambda: b.relay.refused == 1)
        self.assertEqual(b.connectors["right"].received(bob, "im"), [])
        # Said once, not at every beat.
        yield a.registry.beat()
        self.assertEqual(said(), ["b"])

    @defer.inlineCallbacks
    def test_operators_see_every_nodes_sessions_and_broadcast_to_all(self):
        from twisted.internet import endpoints, reactor
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        from gateway.ops.admin import admin_site

        a = yield self.node("a")
        b = yield self.node("b")
        alice = yield self.login(a, "left", "alice", "aim:alice")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")

        class Gateway:  # what the admin site reads of node a's service
            config = loads('[admin]\nlisten = "tcp:0:interface=127.0.0.1"\ntoken = "t0ken"\n')
            core, archive, registry, started = a, a.archive, a.registry, 0.0

        port = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(admin_site(Gateway()))
        self.addCleanup(port.stopListening)

        @defer.inlineCallbacks
        def call(method, path, body=None):
            producer = None if body is None else FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
            response = yield Agent(reactor).request(
                method, f"http://127.0.0.1:{port.getHost().port}{path}".encode(),
                Headers({b"authorization": [b"Bearer t0ken"]}), producer)
            return response.code, json.loads((yield readBody(response)))

        code, answer = yield call(b"GET", "/sessions")
        self.assertEqual(code, 200)
        self.assertEqual(sorted((s["person"], s["node"], s["address"]) for s in answer["sessions"]),
                         [("alice", "a", "aim:alice"), ("bob", "b", "xmpp:bob@gw.example")])
        # Everyone online on every node gets a broadcast, through the path on node a.
        code, answer = yield call(b"POST", "/broadcast", {"text": "restart at noon"})
        self.assertEqual((code, answer["recipients"], answer["delivered"]), (200, 2, 2))
        yield wait_for(lambda: b.connectors["right"].received(bob, "im"))
        self.assertEqual([e.text for e in b.connectors["right"].received(bob, "im")], ["restart at noon"])
        self.assertEqual([e.text for e in a.connectors["left"].received(alice, "im")], ["restart at noon"])
        # A kick names the node of a session that is not here.
        code, answer = yield call(b"POST", "/sessions/kick", {"user": "bob"})
        self.assertEqual((answer["kicked"], answer["elsewhere"]), ([], [{"session": bob.id, "node": "b"}]))
        # Drain node b from node a's API: node b acts at its beat.
        code, answer = yield call(b"POST", "/node/drain", {"node": "b"})
        self.assertEqual((code, answer), (200, {"node": "b", "wanted": "draining"}))
        yield b.registry.beat()
        self.assertEqual(b.registry.state, "draining")
        code, answer = yield call(b"POST", "/node/drain", {"node": "nowhere"})
        self.assertEqual(code, 404)
        self.assertEqual([e.summary() for e in a.archive.events("admin")],
                         ["sessions.list", "broadcast: restart at noon", "sessions.kick bob", "node.drain b"])

    @defer.inlineCallbacks
    def test_an_entry_that_could_not_be_delivered_is_tried_again(self):
        a = yield self.node("a")
        b = yield self.node("b")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        real, calls = b.bus.deliver_decided, []

        def flaky(*args):
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("the directory hiccupped")
            return real(*args)

        b.bus.deliver_decided = flaky
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "second time lucky"))
        self.assertTrue(outcome.delivered)
        yield wait_for(lambda: b.connectors["right"].received(bob, "im"))
        self.assertEqual([e.text for e in b.connectors["right"].received(bob, "im")], ["second time lucky"])
        self.assertEqual(len(calls), 2)
        self.flushLoggedErrors(RuntimeError)
        yield wait_for(lambda: command(self.redis_url, ("XLEN", b.relay.stream))[0] == 0)

    @defer.inlineCallbacks
    def test_a_dead_nodes_stream_is_delivered_by_another_or_held(self):
        a = yield self.node("a")
        b = yield self.node("b")
        yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        yield b.registry.beat()
        # An entry node b read but never acknowledged before it died.
        read = a.api.message("aim:alice", "aim:bob", "read, not acknowledged")
        yield self.kill(b)
        yield a.relay.handoff("b", read)
        command(self.redis_url, ("XREADGROUP", "GROUP", "deliver", "b", "COUNT", 10, "STREAMS", a.relay.stream_of("b"), ">"))
        # Sent while a still thinks bob is on b.
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "sent to a dead node"))
        self.assertTrue(outcome.delivered)
        # b's heartbeat expires; a reaps it and takes its stream over: bob is nowhere, so both are held.
        yield wait_for(lambda: a.registry.reaped == ["b"])
        yield wait_for(lambda: len(self.offline.held.get("bob", {})) == 2)
        self.assertEqual(command(self.redis_url, ("XLEN", a.relay.stream_of("b")))[0], 0)
        # bob comes back, on a: each once.
        bob = yield self.login(a, "left", "bob", "aim:bob")
        yield wait_for(lambda: len(a.connectors["left"].received(bob, "im")) == 2)
        self.assertEqual(sorted(e.text for e in a.connectors["left"].received(bob, "im")),
                         ["read, not acknowledged", "sent to a dead node"])
        self.assertEqual(a.relay.claimed, 2)

    @defer.inlineCallbacks
    def test_back_on_another_node_before_the_dead_one_is_found_once_each(self):
        a = yield self.node("a")
        b = yield self.node("b")
        yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        yield self.kill(b)
        # bob's client is back at once, on a, while the registry still lists his session on b.
        bob = yield self.login(a, "left", "bob", "aim:bob")
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "only once"))
        self.assertTrue(outcome.delivered)
        self.assertEqual(a.relay.handed, 1)  # to b's stream too, naming bob's session here as served
        yield wait_for(lambda: a.registry.reaped == ["b"])
        yield wait_for(lambda: command(self.redis_url, ("XLEN", a.relay.stream_of("b")))[0] == 0)
        self.assertEqual(a.relay.claimed, 1)
        self.assertEqual([e.text for e in a.connectors["left"].received(bob, "im")], ["only once"])
        self.assertEqual(self.offline.held.get("bob", {}), {})

    @defer.inlineCallbacks
    def test_without_redis_a_message_for_another_node_is_held(self):
        a = yield self.node("a")
        b = yield self.node("b")
        yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        yield a.registry.client.stop()
        yield a.registry.subscriber.stop()
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "while Redis is away"))
        self.assertTrue(outcome.queued, outcome)
        self.assertEqual([e.text for e in self.offline.held["bob"].values()], ["while Redis is away"])

    @defer.inlineCallbacks
    def test_presence_and_typing_across_nodes(self):
        self.directory.set_contacts("alice", ["aim:bob"])
        a = yield self.node("a")
        b = yield self.node("b")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        # alice logs in on a: bob's presence on b is in her first snapshot.
        alice = yield self.login(a, "left", "alice", "aim:alice")
        left = a.connectors["left"]

        def seen():
            return [(str(e.sender), e.status.value) for e in left.received(alice, "presence")]

        yield wait_for(lambda: ("aim:bob", "available") in seen())
        # bob goes away, then logs out, on b: alice hears both on a, decided on b.
        yield b.api.set_presence(bob, "away", "lunch")
        yield wait_for(lambda: ("aim:bob", "away") in seen())
        self.assertIn("away", [s["status"] for s in (yield a.registry.where("bob"))])
        yield b.connectors["right"].logout(bob)
        yield wait_for(lambda: ("aim:bob", "offline") in seen())
        self.assertEqual(seen(), [("aim:bob", "available"), ("aim:bob", "away"), ("aim:bob", "offline")])
        presences = [e for e in b.archive.events("presence") if e.recipient is not None]
        self.assertEqual({(str(e.recipient), e.status.value) for e in presences},
                         {("aim:alice", "away"), ("aim:alice", "offline")})
        # Typing: decided on the sender's node, shown on the recipient's.
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        outcome = yield a.bus.submit(Typing("aim:alice", "aim:bob", True))
        self.assertTrue(outcome.delivered, outcome)
        yield wait_for(lambda: b.connectors["right"].received(bob, "typing"))
        # b dies: a reaps it and tells alice that bob is offline.
        yield wait_for(lambda: ("aim:bob", "available") in seen()[3:])
        yield self.kill(b)
        yield wait_for(lambda: a.registry.reaped == ["b"])
        yield wait_for(lambda: seen()[-1] == ("aim:bob", "offline"))
        self.assertEqual(seen()[3:], [("aim:bob", "available"), ("aim:bob", "offline")])


class DrainTests(OnRedis, TestCase):
    timeout = 90

    start = NodeProcessTests.start
    node_list = NodeProcessTests.node_list

    @defer.inlineCallbacks
    def test_drain_moves_users_refuses_new_ones_and_reports_empty_then_undrain(self):
        import socket

        from tests.gateway_process import LineClient

        from tests.support import free_port

        a, a_line = self.start("node-a")
        b, b_line = self.start("node-b", admin=free_port())
        alice, bob = LineClient(a_line, "alice"), LineClient(b_line, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        yield wait_for(lambda: {n: s["sessions"] for n, s in self.node_list(a).items()} == {"node-a": 1, "node-b": 1})
        # Node B has an admin listener: the drain goes through its API, archived with the operator's name.
        out = b.gatewayctl("node", "drain", "node-b", "--wait", "--timeout", "30")
        self.assertIn("node node-b is empty: no sessions, nothing in its stream", out)
        [action] = json.loads(b.gatewayctl("archive", "search", "--kind", "admin", "--json"))
        self.assertEqual((action["sender"], action["text"]), ("operator:admin", "node.drain node-b"))
        self.assertEqual(bob.expect("ERR closed"), "ERR closed this node is being drained; connect again")
        self.assertRaises(AssertionError, bob.expect, "anything", timeout=2)  # closed
        self.assertEqual((self.node_list(a)["node-b"]["state"], self.node_list(a)["node-b"]["sessions"]),
                         ("draining", 0))
        # A new client of node B is refused, in the line protocol's words.
        with socket.create_connection(("127.0.0.1", b_line), timeout=5) as sock:
            self.assertEqual(sock.recv(200), b"ERR node-draining try again later\r\n")
        # bob connects to node A instead; alice reaches him there.
        bob = LineClient(a_line, "bob")
        self.addCleanup(bob.close)
        alice.send("MSG line:bob back with you")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice back with you")
        b.wait_for_log("cluster: node node-b is draining: new connections refused, 1 of 1 sessions asked to move")
        # Undrained, node B takes logins again.
        self.assertIn("asked to take new logins again", b.gatewayctl("node", "undrain", "node-b"))
        yield wait_for(lambda: self.node_list(a)["node-b"]["state"] == "up")
        LineClient(b_line, "carol").close()
        self.assertEqual(b.ctl("node", "drain", "node-x").returncode, 2)
        self.assertEqual(a.tracebacks() + b.tracebacks(), [])


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, to stop and start again."""

    def __init__(self, test):
        import shutil
        import subprocess

        from tests.support import free_port

        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed (.ci/run installs it)")
        self.subprocess = subprocess
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        test.addCleanup(self.stop)
        self.start()

    def start(self):
        import time

        self.process = self.subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.subprocess.DEVNULL, stderr=self.subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                command(self.url, ("PING",), timeout=1)
                return
            except (OSError, RedisUnavailable):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class RedisRestartTests(TwoNodes, TestCase):
    """Redis restarted (its data gone) while two nodes run: they write their state again; nothing is lost."""

    def setUp(self):
        self.redis = PrivateRedis(self)
        self.redis_url = self.redis.url
        super().setUp()

    @defer.inlineCallbacks
    def test_redis_restarted_mid_stream(self):
        a = yield self.node("a")
        b = yield self.node("b")
        alice = yield self.login(a, "left", "alice", "aim:alice")
        bob = yield self.login(b, "right", "bob", "xmpp:bob@gw.example")
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "before"))
        self.assertTrue(outcome.delivered)
        yield wait_for(lambda: len(b.connectors["right"].received(bob, "im")) == 1)
        self.redis.stop()
        yield wait_for(lambda: not a.registry.client.connected and not b.registry.client.connected)
        # Meanwhile: not handed over, held (delivered at bob's next login), never lost.
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "while Redis is down"))
        self.assertTrue(outcome.queued, outcome)
        self.assertEqual([e.text for e in self.offline.held["bob"].values()], ["while Redis is down"])
        # Redis comes back empty: both nodes write their nodes and sessions again, and messages cross again.
        self.redis.start()
        yield wait_for(lambda: all(n.registry.client.connected and n.registry.subscriber.connected
                                   and n.relay.reader.connected for n in (a, b)), timeout=15)
        yield wait_for(lambda: sorted(self.states()) == ["a", "b"])
        yield wait_for(lambda: command(self.redis_url, ("HLEN", b.registry.keys.person("bob")))[0] == 1)
        outcome = yield a.bus.submit(a.api.message("aim:alice", "aim:bob", "after"))
        self.assertTrue(outcome.delivered, outcome)
        yield wait_for(lambda: len(b.connectors["right"].received(bob, "im")) == 2)
        self.assertEqual([e.text for e in b.connectors["right"].received(bob, "im")], ["before", "after"])
        back = yield b.bus.submit(b.api.message("xmpp:bob@gw.example", "xmpp:alice@gw.example", "hi"))
        self.assertTrue(back.delivered, back)
        yield wait_for(lambda: a.connectors["left"].received(alice, "im"))


class SharedDatabaseTests(OnRedis, TestCase):
    """Two ``twistd gateway`` nodes on one PostgreSQL database: one archive, one offline store."""

    timeout = 120

    def start(self, node, url):
        from tests.gateway_process import Gateway
        from tests.support import free_port

        line = free_port()
        text = NODE_CONFIG.format(node=node, redis=self.redis_url, prefix=self.prefix, line=line, secret=self.secret_file,
                                  admin="")
        text += f'\n[database]\nurl = "{url}"\n'
        return Gateway(self, text, wait_ports=(line,), name=f"gw-{node}"), line

    @defer.inlineCallbacks
    def test_held_on_one_node_delivered_by_the_other_archived_once_and_verified(self):
        from tests.gateway_process import LineClient
        from tests.support import postgres_engine

        engine = postgres_engine(self)
        url = engine.url.render_as_string(hide_password=False)
        a, a_line = self.start("node-a", url)
        b, b_line = self.start("node-b", url)
        alice = LineClient(a_line, "alice")
        self.addCleanup(alice.close)
        alice.send("MSG line:bob while you were out")
        self.assertTrue(alice.expect("OK ").startswith("OK queued "))
        # bob logs in on node B: the message node A held is his there.
        bob = LineClient(b_line)
        self.addCleanup(bob.close)
        bob.send("LOGIN bob secret")
        self.assertEqual(bob.expect("FROM"), "FROM line:alice while you were out")
        yield wait_for(lambda: command(self.redis_url, ("HLEN", Keys(self.prefix).person("bob")))[0] == 1)
        alice.send("MSG line:bob and now across")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered "))
        self.assertEqual(bob.expect("FROM"), "FROM line:alice and now across")
        alice.close()
        bob.close()
        a.stop()
        b.stop()
        # One archive: each message once, with what became of it; both nodes' chains verify.
        rows = json.loads(a.gatewayctl("archive", "search", "--user", "alice", "--kind", "im", "--json"))
        self.assertEqual(sorted((r["text"], r["status"]) for r in rows),
                         [("and now across", "delivered"), ("while you were out", "delivered")])
        with engine.connect() as conn:
            nodes = sorted(r[0] for r in conn.exec_driver_sql("SELECT DISTINCT node FROM chain_blocks"))
            notes = sorted(tuple(r) for r in conn.exec_driver_sql(
                "SELECT d.status, d.where_ FROM deliveries d JOIN events e ON e.id = d.event_id "
                "WHERE e.kind = 'im'"))
        self.assertEqual(nodes, ["node-a", "node-b"])
        self.assertIn(("delivered", "node-b"), notes)
        report = json.loads(b.gatewayctl("archive", "verify"))
        self.assertEqual((report["ok"], report["problem_count"], report["events"] > 0), (True, 0, True))
