"""Federation: Kamailio serves the SIP domain kam.test on 127.0.0.2; the gateway peers with it for localhost."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests.interop.test_sip import (
    BitlBee,
    Gateway,
    LineClient,
    free_port,
    need,
    read,
    sipp,
    stop_process,
    wait_for_open,
)

KAMAILIO_HOST = "127.0.0.2"  # its own loopback address: the gateway accepts kam.test only from there

KAMAILIO_CFG = """#!KAMAILIO
# kam.test: a registrar (no authentication) and stateful proxy; requests for
# the gateway's domain "localhost" go to the gateway, in-dialog requests to
# their Request-URI.
debug=2
log_stderror=yes
children=2
listen=udp:{host}:{port}
alias="kam.test"
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "xlog.so"
loadmodule "uac.so"

modparam("usrloc", "db_mode", 0)
# The gateway challenges every request of kam.test: signed with the shared secret (user and realm kam.test).
modparam("uac", "restore_mode", "none")
modparam("uac", "credential", "kam.test:kam.test:{secret}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    t_on_failure("SIGN");
    if (is_method("ACK") && !t_check_trans()) {{
        exit;
    }}
    if (is_method("REGISTER")) {{
        if ($rd == "kam.test") {{
            save("location");
            exit;
        }}
        sl_send_reply("403", "Not our domain");
        exit;
    }}
    # other.test is reached through the gateway too (as through an outbound proxy): the gateway
    # must refuse that transit.
    if ($rd == "localhost" || $rd == "other.test") {{
        $du = "sip:127.0.0.1:{gateway}";
        t_relay();
        exit;
    }}
    if ($rd == "kam.test") {{
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Found");
            exit;
        }}
        t_relay();
        exit;
    }}
    t_relay();
}}

failure_route[SIGN] {{
    if (t_check_status("401|407")) {{
        if (uac_auth()) {{
            t_relay();
        }}
        exit;
    }}
}}
"""

# What the gateway and Kamailio share for kam.test's requests.
PEER_SECRET = "kam-secret-7f3a"


TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


def kamailio_cfg(host, port, gateway, tls=None):
    """The config above; with ``tls`` = (port, tls.cfg path, gateway's TLS port) it also listens on TLS
    and reaches the gateway over TLS."""
    text = KAMAILIO_CFG.format(host=host, port=port, gateway=gateway, secret=PEER_SECRET)
    if tls is not None:
        tls_port, tls_cfg, gateway_tls = tls
        text = text.replace(
            f"listen=udp:{host}:{port}\n",
            # tcp_source_ipv4: connections to the gateway come from Kamailio's own address (the
            # gateway accepts kam.test only from there), not the kernel's default 127.0.0.1.
            f"listen=udp:{host}:{port}\nenable_tls=yes\nlisten=tls:{host}:{tls_port}\ntcp_source_ipv4={host}\n",
        ).replace(
            'loadmodule "xlog.so"\n',
            f'loadmodule "xlog.so"\nloadmodule "tls.so"\nmodparam("tls", "config", "{tls_cfg}")\n',
        ).replace(
            f'$du = "sip:127.0.0.1:{gateway}";',
            f'$du = "sip:127.0.0.1:{gateway_tls};transport=tls";',
        )
    return text


def make_certificate(directory):
    """A self-signed certificate for kam.test / 127.0.0.1 / 127.0.0.2 (openssl); (key, cert) paths."""
    openssl = need("openssl")
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=kam.test", "-addext", "subjectAltName=DNS:kam.test,DNS:localhost,IP:127.0.0.1,IP:127.0.0.2"],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


class Kamailio:
    def __init__(self, testcase, port, gateway_port, tls=None):
        program = need("kamailio")
        modules = "/usr/lib/x86_64-linux-gnu/kamailio/modules/tm.so"
        if not os.path.exists(modules):
            raise unittest.SkipTest(f"Kamailio modules are not at {os.path.dirname(modules)}")
        self.dir = tempfile.mkdtemp(prefix="kamailio-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.port = port
        config = os.path.join(self.dir, "kamailio.cfg")
        with open(config, "w") as f:
            f.write(kamailio_cfg(KAMAILIO_HOST, self.port, gateway_port, tls))
        self.log = open(os.path.join(self.dir, "kamailio.log"), "w+")
        testcase.addCleanup(self.log.close)
        check = subprocess.run([program, "-c", "-f", config], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(f"kamailio -c refused the config:\n{check.stderr}")
        # Its own process group: Kamailio forks workers, and they must end with the test even when
        # the main process had to be killed (they would outlive it otherwise).
        self.process = subprocess.Popen(
            [program, "-DD", "-E", "-f", config, "-P", os.path.join(self.dir, "kamailio.pid"),
             "-Y", self.dir, "-w", self.dir],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        testcase.addCleanup(self._stop_workers)
        testcase.addCleanup(stop_process, self.process)
        deadline = time.monotonic() + 15
        while "INFO: <core>" not in self.output() or "Listening on" not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"kamailio exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)

    def _stop_workers(self):
        """After the main process: whatever is left of the group it started (its workers)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def address(self):
        return f"{KAMAILIO_HOST}:{self.port}"

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


class KamailioCase(unittest.TestCase):
    """A gateway peering with a Kamailio for kam.test (no tests of its own)."""

    more_config = ""

    def setUp(self):
        need("kamailio")
        need("sipp")
        self.kamailio_port = free_port()
        # The gateway must know Kamailio's port before Kamailio knows the gateway's: pick both first.
        self.gateway = Gateway(self, extra=(
            f'[connectors.sip.peers."kam.test"]\nhost = "{KAMAILIO_HOST}"\nport = {self.kamailio_port}\n'
            f'transport = "udp"\nsecret = "{PEER_SECRET}"\n'
            '[[policy.rule]]\nname = "no-kam-to-bob"\naction = "deny"\nfrom = ["domain:kam.test"]\n'
            'to = ["user:bob"]\nreason = "bob takes no messages from kam.test"\n' + self.more_config
        ))
        self.kamailio = Kamailio(self, self.kamailio_port, self.gateway.sip)


class KamailioFederationTests(KamailioCase):
    def test_messages_both_ways_with_a_kamailio_user(self):
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        self.addCleanup(alice.close)
        port = free_port()
        status, messages = sipp(self, self.kamailio.address, "register.xml", user="dave", domain="kam.test",
                                port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages + self.kamailio.output())
        uas, uas_messages = sipp(self, self.kamailio.address, "message_uas.xml", user="dave", domain="kam.test",
                                 port=port, keys=[("text", "hello alice, dave at kam.test here")],
                                 timeout=25, background=True)
        time.sleep(0.5)
        alice.send("MSG sip:dave@kam.test hi dave, this is alice behind the gateway")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered"), gateway.output())
        reply = alice.expect("FROM")
        self.assertEqual(reply, "FROM line:sip.dave%kam.test hello alice, dave at kam.test here")
        self.assertEqual(uas.wait(timeout=30), 0, read(uas_messages))
        self.assertIn("hi dave, this is alice behind the gateway", read(uas_messages))
        # The gateway's own log: the MESSAGE came in from Kamailio's address, the peer of kam.test.
        self.assertIn(f"SIP trace from udp:{KAMAILIO_HOST}:{self.kamailio.port}", gateway.output())
        self.assertEqual(
            gateway.archived("alice"),
            {("hi dave, this is alice behind the gateway", "delivered"),
             ("hello alice, dave at kam.test here", "delivered")},
        )

    def test_policy_sees_the_foreign_domain_and_offline_users(self):
        gateway = self.gateway
        bob = LineClient(gateway.line, "bob")
        self.addCleanup(bob.close)
        # A rule on domain:kam.test refuses; Kamailio relays the 403 with its Reason.
        status, messages = sipp(self, self.kamailio.address, "message_uac.xml", user="dave", domain="kam.test",
                                port=free_port(), keys=[("to", "bob@localhost"), ("text", "for bob")])
        self.assertEqual(status, 0, messages)
        self.assertIn('Reason: SIP;cause=403;text="bob takes no messages from kam.test (rule no-kam-to-bob)"',
                      messages)
        self.assertIn(("for bob", "rejected"), gateway.archived("bob"))
        # carol has no session: the message from kam.test is held for her (202).
        status, messages = sipp(self, self.kamailio.address, "message_uac.xml", user="dave", domain="kam.test",
                                port=free_port(), keys=[("to", "carol@localhost"), ("text", "for carol")])
        self.assertEqual(status, 0, messages)
        self.assertIn("SIP/2.0 202 Accepted", messages)
        self.assertIn(("for carol", "queued"), gateway.archived("carol"))

    def test_kam_test_traffic_only_from_kamailio(self):
        # A client on 127.0.0.1 claiming to be dave@kam.test, straight to the gateway.
        status, messages = sipp(self, self.gateway, "message_uac.xml", user="dave", domain="kam.test",
                                port=free_port(), keys=[("to", "alice@localhost"), ("text", "spoofed")])
        self.assertEqual(status, 0, messages)
        self.assertIn("SIP/2.0 403", messages)
        self.assertIn("must come from its peer", messages)

    def test_kamailio_address_without_the_secret_is_not_enough(self):
        # A sender on Kamailio's own address that does not know the shared secret (its digest answer
        # uses dave's password): challenged, then refused.
        status, messages = sipp(self, self.gateway, "message_uac.xml", user="dave", domain="kam.test",
                                port=free_port(), local_ip=KAMAILIO_HOST,
                                keys=[("to", "alice@localhost"), ("text", "spoofed from its address")])
        self.assertEqual(status, 0, messages)
        self.assertIn("SIP/2.0 407", messages)
        self.assertIn('realm="kam.test"', messages)
        self.assertIn("SIP/2.0 403 Forbidden (wrong peer credentials)", messages)
        self.assertNotIn("spoofed from its address", {text for text, _ in self.gateway.archived("alice")})

    def test_presence_to_a_kamailio_watcher(self):
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        port = free_port()
        status, messages = sipp(self, self.kamailio.address, "register.xml", user="dave", domain="kam.test",
                                port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        watcher, watcher_messages = sipp(self, self.kamailio.address, "subscribe.xml", user="dave",
                                         domain="kam.test", port=port, keys=[("to", "alice@localhost")],
                                         timeout=30, background=True)
        wait_for_open(self, watcher, watcher_messages)
        alice.send("QUIT")
        alice.close()
        self.assertEqual(watcher.wait(timeout=30), 0, read(watcher_messages))
        self.assertIn("<basic>closed</basic>", read(watcher_messages))


class KamailioPresenceTests(KamailioCase):
    """libpurple (BitlBee) watches a kam.test user: gateway <-> Kamailio <-> SIPp presentity."""

    def setUp(self):
        need("bitlbee")
        super().setUp()

    def test_libpurple_sees_a_kamailio_user_online(self):
        gateway = self.gateway
        port = free_port()
        status, messages = sipp(self, self.kamailio.address, "register.xml", user="dave", domain="kam.test",
                                port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        presentity, presentity_messages = sipp(self, self.kamailio.address, "presentity.xml", user="dave",
                                               domain="kam.test", port=port, timeout=30, background=True)
        irc = BitlBee(self)
        irc.simple_account("alice", gateway.sip, udp=False)
        irc.root("add simple sip:dave@kam.test")
        irc.wait(lambda line: line.startswith(":sipdave!") and "JOIN" in line, 25,
                 "dave (at Kamailio) shown online")
        self.assertEqual(presentity.wait(timeout=30), 0, read(presentity_messages))
        log = gateway.output()
        self.assertIn("SUBSCRIBE sip:dave@kam.test SIP/2.0", log)  # our subscription at the peer
        self.assertIn(f"SIP trace from udp:{KAMAILIO_HOST}:{self.kamailio.port}:\n\tNOTIFY", log)


class KamailioTlsFederationTests(unittest.TestCase):
    """The same federation over TLS both ways: the gateway's ssl: listener and its TLS client to the peer."""

    def setUp(self):
        need("kamailio")
        need("sipp")
        if not os.path.exists("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so"):
            raise unittest.SkipTest("Kamailio's tls module is not installed")
        self.dir = tempfile.mkdtemp(prefix="sip-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        key, cert = make_certificate(self.dir)
        self.kamailio_port, kamailio_tls, gateway_tls = free_port(), free_port(), free_port()
        self.gateway = Gateway(self, listeners=[
            f"ssl:{gateway_tls}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        ], extra=(
            f'[connectors.sip.peers."kam.test"]\nhost = "{KAMAILIO_HOST}"\nport = {kamailio_tls}\n'
            f'transport = "tls"\nca = "{cert}"\nsecret = "{PEER_SECRET}"\n'
        ))
        tls_cfg = os.path.join(self.dir, "tls.cfg")
        with open(tls_cfg, "w") as f:
            f.write(TLS_CFG.format(key=key, cert=cert))
        self.kamailio = Kamailio(self, self.kamailio_port, self.gateway.sip, tls=(kamailio_tls, tls_cfg, gateway_tls))

    def test_messages_both_ways_over_tls(self):
        gateway = self.gateway
        alice = LineClient(gateway.line, "alice")
        self.addCleanup(alice.close)
        port = free_port()
        status, messages = sipp(self, self.kamailio.address, "register.xml", user="dave", domain="kam.test",
                                port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        uas, uas_messages = sipp(self, self.kamailio.address, "message_uas.xml", user="dave", domain="kam.test",
                                 port=port, keys=[("text", "over TLS, alice")], timeout=25, background=True)
        time.sleep(0.5)
        alice.send("MSG sip:dave@kam.test hi dave, over TLS")
        self.assertTrue(alice.expect("OK ").startswith("OK delivered"), gateway.output()[-4000:])
        try:
            reply = alice.expect("FROM")
        except AssertionError as e:
            raise AssertionError(f"{e}\nKamailio:\n{self.kamailio.output()[-3000:]}\nGateway:\n"
                                 f"{gateway.output()[-3000:]}") from None
        self.assertEqual(reply, "FROM line:sip.dave%kam.test over TLS, alice")
        self.assertEqual(uas.wait(timeout=30), 0, read(uas_messages))
        log = gateway.output()
        self.assertIn("MESSAGE sip:dave@kam.test SIP/2.0\n\tVia: SIP/2.0/TLS", log)  # we sent over TLS
        self.assertIn(f"SIP trace from tls:{KAMAILIO_HOST}:", log)  # and Kamailio came to us over TLS


class KamailioPeerPresenceTests(KamailioCase):
    """Presence both ways with kam.test (SIPp at both ends), and no transit between peer domains."""

    # A second peer domain, where nothing answers: nothing may be relayed there from kam.test.
    more_config = ('[connectors.sip.peers."other.test"]\nhost = "127.0.0.3"\nport = 9\ntransport = "udp"\n'
                   'secret = "other-secret"\n')

    def test_gateway_user_without_registration_watches_a_kamailio_user(self):
        gateway = self.gateway
        port = free_port()
        status, messages = sipp(self, self.kamailio.address, "register.xml", user="dave", domain="kam.test",
                                port=port, keys=[("expires", "300")])
        self.assertEqual(status, 0, messages)
        presentity, presentity_messages = sipp(self, self.kamailio.address, "presentity_changes.xml", user="dave",
                                               domain="kam.test", port=port, timeout=40, background=True)
        time.sleep(0.5)  # SIPp binds its port
        # alice only SUBSCRIBEs (digest, no registration): the gateway subscribes at Kamailio for her
        # and relays dave's NOTIFYs, open and then closed.
        status, messages = sipp(self, gateway, "subscribe_digest.xml", user="alice", port=free_port(),
                                keys=[("to", "dave@kam.test")], timeout=30)
        self.assertEqual(status, 0, messages + gateway.output()[-3000:])
        self.assertIn("<basic>open</basic>", messages)
        self.assertIn("<basic>closed</basic>", messages)
        # Our subscription at the peer ended with hers.
        self.assertEqual(presentity.wait(timeout=30), 0, read(presentity_messages))
        self.assertIn("Expires: 0", read(presentity_messages))
        self.assertIn(f"SIP trace from udp:{KAMAILIO_HOST}:{self.kamailio.port}:\n\tNOTIFY", gateway.output())

    def test_no_transit_between_peer_domains(self):
        # Kamailio routes other.test (another peer domain of the gateway) through the gateway: the
        # gateway serves its own domains only, so it refuses, with the reason, and sends nothing on.
        for method, scenario in (("MESSAGE", "message_uac.xml"), ("SUBSCRIBE", "subscribe_digest.xml")):
            status, messages = sipp(self, self.kamailio.address, scenario, user="dave", domain="kam.test",
                                    port=free_port(), keys=[("to", "erin@other.test"), ("text", "relay me")],
                                    timeout=10)
            if method == "MESSAGE":
                self.assertEqual(status, 0, messages)
            self.assertIn("SIP/2.0 403 Forbidden (the gateway is no transit proxy", messages, method)
            self.assertIn('Warning: 399 gateway "the gateway is no transit proxy', messages, method)
        self.assertNotIn("sip:erin@other.test SIP/2.0\n\tVia: SIP/2.0/UDP 127.0.0.1", self.gateway.output())
