"""
Bad input does not raise the memory plateau: a real gateway is sent
thousands of mutated inputs on every listener (TCP connections and SIP
datagrams made from the fuzz seeds); after a warm-up, as many again must not
grow its resident memory by more than 5 %.
"""

import os
import random
import socket
import sys
import time

from twisted.trial import unittest

from tests.gateway_process import Gateway, have_example_plugin
from tests.support import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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

[connectors.xmpp]
domain = "localhost"
listen = ["tcp:%(xmpp)d:interface=127.0.0.1"]
require_tls = false

[connectors.sametime]
listen = ["tcp:%(sametime)d:interface=127.0.0.1"]

[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:%(sipudp)d"]
listen = ["tcp:%(sip)d:interface=127.0.0.1"]

[connectors.line]
listen = ["tcp:%(line)d:interface=127.0.0.1"]
"""

# Which fuzz target's seeds make the bytes for each listener.
SEEDS = {"oscar": "oscar", "xmpp": "xmpp-c2s", "sametime": "sametime", "sip": "sip-tcp", "line": "line"}


def mutate(rng, seed):
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        roll = rng.random()
        if roll < 0.6 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif roll < 0.8 and data:
            del data[rng.randrange(len(data)):rng.randrange(len(data)) + rng.randint(1, 16)]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(data)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class BadInputMemoryTests(unittest.TestCase):
    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        for name in ("gateway_oscar", "gateway_xmpp", "gateway_sametime", "gateway_sip"):
            try:
                __import__(name)
            except ImportError:
                raise unittest.SkipTest(f"{name} is not installed (see README.rst)")

    def test_mutated_input_does_not_raise_the_plateau(self):
        from fuzz import targets

        ports = {name: free_port() for name in ("oscar", "xmpp", "sametime", "sip", "line", "sipudp")}
        gateway = Gateway(self, CONFIG % ports, wait_ports=[ports[n] for n in SEEDS], name="gw-bad-input")
        seeds = {name: [s[1:] for s in targets.SEEDS[target]] for name, target in SEEDS.items()}
        datagrams = [s[1:] for s in targets.SEEDS["sip-udp"]]
        rng = random.Random(17)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(udp.close)

        def burst(rounds):
            for _ in range(rounds):
                for name in SEEDS:
                    with socket.create_connection(("127.0.0.1", ports[name]), timeout=5) as sock:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        try:
                            sock.sendall(mutate(rng, rng.choice(seeds[name])))
                        except OSError:
                            pass  # the gateway closed it already: what it should do with most of them
                udp.sendto(mutate(rng, rng.choice(datagrams)), ("127.0.0.1", ports["sipudp"]))

        def settled():
            time.sleep(2)  # what the last connections set off has run
            return rss_kb(gateway.process.pid)

        burst(400)  # warm-up: caches, pools and the allocator's arenas fill
        warm = settled()
        burst(1200)
        after = settled()
        self.assertEqual(gateway.tracebacks(), [])
        self.assertLessEqual(after, warm * 1.05 + 1024,
                             f"resident memory grew from {warm} KB to {after} KB over 6,000 more mutated connections")
        self.assertIsNone(gateway.process.poll())
