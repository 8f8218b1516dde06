"""A flood of wrong-password logins from one address neither locks out nor shuts out the real user elsewhere."""

import socket
import threading

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin
from tests.support import free_port

CONFIG = """
[gateway]
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.line]
listen = ["tcp:%(port)d:interface=127.0.0.1"]
"""


class LoginFloodTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")

    def test_real_user_logs_in_from_her_address_during_the_flood(self):
        port = free_port()
        gateway = Gateway(self, CONFIG % {"port": port}, wait_ports=(port,), name="gw-flood")
        done = threading.Event()

        def flood():
            for n in range(300):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
                    sock.sendall(f"LOGIN alice guess{n}\n".encode())
                    sock.close()
                except OSError:
                    pass
            done.set()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        try:
            # While the flood is under way (and after it), alice from 127.0.0.1 gets in.
            alice = LineClient(port, timeout=30)
            alice.send("LOGIN alice secret")
            self.assertEqual(alice.expect("OK LOGIN", timeout=30), "OK LOGIN line:alice")
            alice.close()
            done.wait(60)
            again = LineClient(port, timeout=30)
            again.send("LOGIN alice secret")
            self.assertEqual(again.expect("OK LOGIN", timeout=30), "OK LOGIN line:alice")
            again.close()
        finally:
            thread.join(60)
        # The flood's own address is refused for alice now.
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        flooder = LineClient.__new__(LineClient)
        flooder.sock, flooder.buffer, flooder.timeout = sock, b"", 30
        flooder.expect("HELLO")
        flooder.send("LOGIN alice secret")
        self.assertTrue(flooder.expect("ERR").startswith("ERR throttled"))
        flooder.close()
        self.assertEqual(gateway.tracebacks(), [])
