"""Across networks and servers: a Prosody user and a SIP user (SIPp) talk through the gateway's component, archived."""

import shutil
import time

from twisted.trial import unittest

from tests.interop.test_sip import read, sipp
from tests.xmpp import peers

CONFIG = """
[gateway]
node = "crosstest"
data_dir = "var"

[directory]
demo_users = true

[admin]
listen = ""

[connectors.xmpp]
listen = ["tcp:{c2s}:interface=127.0.0.1"]
require_tls = false

[connectors.xmpp.component]
host = "127.0.0.1"
port = {component}
domain = "gw.prosody.localhost"
secret = "{secret}"
remote_domains = ["prosody.localhost"]

[connectors.sip]
domains = ["localhost"]
udp = ["127.0.0.1:{sip}"]
listen = ["tcp:{sip}:interface=127.0.0.1"]
"""


class ProsodyToSipTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        for program in ("prosody", "prosodyctl", "sipp"):
            if shutil.which(program) is None:
                raise unittest.SkipTest(f"{program} is not installed")
        try:
            import gateway_sip  # noqa: F401
            import gateway_xmpp  # noqa: F401
            import slixmpp  # noqa: F401
        except ImportError as e:
            raise unittest.SkipTest(f"needs the sip and xmpp plugins and slixmpp: {e}")
        self.prosody = peers.Prosody(self, users=[("zoe", "zoepass")])
        self.c2s, self.sip = peers.free_port(), peers.free_port()
        config = CONFIG.format(c2s=self.c2s, sip=self.sip, component=self.prosody.component, secret=self.prosody.secret)
        self.gateway = peers.GatewayProcess(self, config, wait_ports=(self.c2s, self.sip))
        deadline = time.monotonic() + 15
        while "attached to 127.0.0.1" not in self.gateway.text():
            if time.monotonic() > deadline:
                raise AssertionError("the component never attached: " + self.gateway.text() + self.prosody.text())
            time.sleep(0.1)

    def test_prosody_user_and_sipp_user(self):
        port = peers.free_port()
        server = f"127.0.0.1:{self.sip}"
        status, messages = sipp(self, server, "register.xml", user="bob", port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        uas, uas_messages = sipp(self, server, "message_uas.xml", user="bob", port=port,
                                 keys=[("text", "bob on SIP answers")], timeout=30, background=True)
        time.sleep(0.5)  # SIPp binds its port

        async def scenario():
            zoe = peers.slixmpp_client("zoe@prosody.localhost/home", "zoepass", self.prosody.c2s, tls=False)
            try:
                await peers.start(zoe)
                zoe.send_message("bob@gw.prosody.localhost", "zoe on Prosody asks", mtype="chat")
                await peers.until(lambda: zoe.messages, timeout=20, what="bob's answer from SIPp reaches zoe")
                self.assertEqual(zoe.messages[0]["body"], "bob on SIP answers")
                self.assertEqual(str(zoe.messages[0]["from"].bare), "bob@gw.prosody.localhost")
            finally:
                await peers.stop(zoe)

        peers.run(scenario(), timeout=60)
        self.assertEqual(uas.wait(timeout=30), 0, read(uas_messages))
        self.assertIn("zoe on Prosody asks", read(uas_messages))
        self.gateway.stop()
        self.assertTrue(peers.archive_rows(self.gateway.dir, "zoe on Prosody asks"), "archived")
        self.assertTrue(peers.archive_rows(self.gateway.dir, "bob on SIP answers"), "archived")
