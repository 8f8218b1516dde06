"""Native capture: the bytes as received, each rendering as sent, and what translation lost."""

import json

from twisted.trial import unittest

from tests.gateway_process import Gateway, LineClient, have_example_plugin
from tests.support import free_port

CONFIG = """
[gateway]
node = "capture"
data_dir = "{dir}/var"

[directory]
demo_users = true

[admin]
listen = ""

[archive]
capture = "native"

[connectors.line]
listen = ["tcp:%(port)d:interface=127.0.0.1"]

[plugin.example-dlp]
disclaimer = "-- monitored"
"""


class NativeCaptureTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")

    def test_archive_show_prints_what_came_and_what_went(self):
        port = free_port()
        gateway = Gateway(self, CONFIG % {"port": port}, wait_ports=(port,), name="gw-capture")
        alice, bob = LineClient(port, "alice"), LineClient(port, "bob")
        alice.send("MSG line:bob kept as it came")
        event_id = alice.expect("OK ").split()[-1]
        self.assertEqual(bob.expect("FROM"), "FROM line:alice kept as it came -- monitored")
        alice.close()
        bob.close()
        gateway.stop()
        shown = json.loads(gateway.gatewayctl("archive", "show", event_id, "--json"))
        captures = {(c["direction"], c["network"]): c for c in shown["captures"]}
        import base64

        self.assertEqual(base64.b64decode(captures["received", "line"]["bytes"]), b"MSG line:bob kept as it came\n")
        self.assertEqual(base64.b64decode(captures["sent", "line"]["bytes"]),
                         b"FROM line:alice kept as it came -- monitored\r\n")
        self.assertEqual(captures["sent", "line"]["notes"], ["newlines-flattened"])
        # What the sender sent, what the recipient was shown, and which hook changed it.
        self.assertEqual(shown["original"]["text"], "kept as it came")
        self.assertEqual(shown["event"]["text"], "kept as it came\n-- monitored")
        self.assertEqual(shown["transforms"], ["example-dlp"])
        text = gateway.gatewayctl("archive", "show", event_id)
        self.assertIn("received from line", text)
        self.assertIn("sent to line", text)
        self.assertIn("transformed by: example-dlp", text)

    def test_unknown_event_is_an_error(self):
        port = free_port()
        gateway = Gateway(self, CONFIG % {"port": port}, wait_ports=(port,), name="gw-capture")
        gateway.stop()
        result = gateway.ctl("archive", "show", "0" * 32)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no archived event", result.stdout + result.stderr)
