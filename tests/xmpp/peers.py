"""Helpers for the XMPP interop tests: a gateway process, a test certificate, slixmpp and BitlBee drivers."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import ssl
import subprocess
import tempfile
import time

from tests import gateway_process, irc
from tests.support import free_port


def wait_for_port(port, timeout=30, process=None, log=None):
    """Wait for a listener on ``port``; the log at path ``log`` tells why when ``process`` exits first."""
    gateway_process.wait_for_port(port, process, lambda: read(log), timeout)


def read(path, tail=6000):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        text = f.read()
    return text[-tail:] if tail else text


def make_certificate(directory, name="localhost", rsa=False):
    """
    A self-signed certificate and key (PEM files) for ``name``; returns
    their paths. EC P-256 by default; ``rsa`` for a peer whose default
    ciphers exclude ECDSA (Prosody's, when it is the TLS client).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import NameOID

    key = rsa_keys.generate_private_key(65537, 2048) if rsa else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class GatewayProcess(gateway_process.Gateway):
    """``twistd -n gateway --config`` in a temp dir; ``config`` is the TOML body, ``{dir}`` its folder."""

    def __init__(self, testcase, config, wait_ports=()):
        super().__init__(testcase, config, wait_ports, name="gw-xmpp")


def archive_rows(gateway_dir, text):
    """Rows of the gateway's SQLite archive whose stored event mentions ``text``."""
    import sqlite3

    for root, _, files in os.walk(gateway_dir):
        for name in files:
            if name.endswith((".db", ".sqlite", ".sqlite3")):
                con = sqlite3.connect(os.path.join(root, name))
                try:
                    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
                    rows = []
                    for table in tables:
                        for row in con.execute(f"select * from {table}"):
                            if any(isinstance(v, str) and text in v for v in row):
                                rows.append((table, row))
                    if rows:
                        return rows
                finally:
                    con.close()
    return []


# -- slixmpp ------------------------------------------------------------------------


def slixmpp_client(jid, password, port, *, tls=True, mech=None, host="127.0.0.1"):
    """A slixmpp ClientXMPP that records what it is shown (``messages``, ``presences``, ``errors``)."""
    import slixmpp

    client = slixmpp.ClientXMPP(jid, password, sasl_mech=mech,
                                plugin_config={"feature_mechanisms": {"unencrypted_plain": not tls,
                                                                      "unencrypted_scram": not tls}})
    client.enable_direct_tls = False
    client.enable_starttls = tls
    client.enable_plaintext = not tls
    client.use_ipv6 = False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client.ssl_context = context
    for plugin in ("xep_0030", "xep_0085", "xep_0184", "xep_0199", "xep_0054"):
        client.register_plugin(plugin)
    client["xep_0184"].auto_ack = False
    client["xep_0184"].auto_request = False
    client.messages, client.presences, client.errors, client.states, client.receipts = [], [], [], [], []
    client.started = asyncio.Event()
    client.failed = []
    client.add_event_handler("session_start", lambda _: client.started.set())
    client.add_event_handler("failed_auth", lambda _: client.failed.append("auth"))
    client.add_event_handler("message", lambda m: (client.messages if m["type"] != "error" else client.errors).append(m))
    for kind in ("available", "unavailable", "away", "chat", "dnd", "xa"):
        client.add_event_handler(f"presence_{kind}", client.presences.append)
    client.add_event_handler("chatstate", lambda m: client.states.append((str(m["from"].bare), m["chat_state"])))
    client.add_event_handler("receipt_received", lambda m: client.receipts.append(m["receipt"]))
    client.address = (host, port)
    return client


async def start(client, timeout=15, presence=True):
    client.connect(*client.address)
    await asyncio.wait_for(client.started.wait(), timeout)
    if presence:
        await client.get_roster()
        client.send_presence()


async def until(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def stop(*clients):
    for client in clients:
        try:
            client.disconnect()
            await asyncio.wait_for(client.disconnected, 5)
        except Exception:
            pass


def run(coroutine, timeout=60):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


# -- BitlBee (libpurple jabber) -------------------------------------------------------


BitlBee = irc.BitlBee


# -- Prosody ------------------------------------------------------------------------------

PROSODY_CONFIG = """
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
component_ports = {{ {component} }}
component_interface = "127.0.0.1"
http_ports = {{ }}
https_ports = {{ }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence", "dialback", "posix"{tls_module} }}
modules_disabled = {{ {modules_disabled} }}
c2s_require_encryption = false
s2s_require_encryption = {s2s_tls}
s2s_secure_auth = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
{extra}
VirtualHost "{host}"

Component "{component_domain}"
    component_secret = "{secret}"
"""


class Prosody:
    """A Prosody 0.12 on free loopback ports with its own config and data in a temp dir."""

    def __init__(self, testcase, host="prosody.localhost", component_domain="gw.prosody.localhost",
                 secret="s3cret", users=(), extra="", tls=False):
        """With ``tls``, Prosody has a certificate for ``host`` (``self.certificate``) and federates over
        STARTTLS only; else it speaks in clear."""
        if shutil.which("prosody") is None:
            raise AssertionError("prosody missing")
        self.dir = tempfile.mkdtemp(prefix="gw-prosody-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        os.mkdir(os.path.join(self.dir, "data"))
        self.host, self.component_domain, self.secret = host, component_domain, secret
        self.c2s, self.s2s, self.component = free_port(), free_port(), free_port()
        self.config = os.path.join(self.dir, "prosody.cfg.lua")
        self.certificate = None
        if tls:
            certs = os.path.join(self.dir, "certs")
            os.mkdir(certs)
            self.certificate, key = make_certificate(certs, host)
            extra = f'ssl = {{ certificate = "{self.certificate}", key = "{key}" }}\n' + extra
        with open(self.config, "w") as f:
            f.write(PROSODY_CONFIG.format(dir=self.dir, c2s=self.c2s, s2s=self.s2s, component=self.component,
                                          host=host, component_domain=component_domain, secret=secret,
                                          extra=extra, modules_disabled='"s2s_bidi"' if tls else '"tls", "s2s_bidi"',
                                          s2s_tls="true" if tls else "false", tls_module=', "tls"' if tls else ""))
        for user, password in users:
            subprocess.run(["prosodyctl", "--config", self.config, "register", user, host, password],
                           check=True, capture_output=True, timeout=30)
        self.log = os.path.join(self.dir, "prosody.log")
        self._out = open(os.path.join(self.dir, "stdout.log"), "w")
        testcase.addCleanup(self._out.close)
        self.process = subprocess.Popen(["prosody", "--config", self.config, "-F"],
                                        stdout=self._out, stderr=subprocess.STDOUT)
        testcase.addCleanup(self.stop)
        wait_for_port(self.c2s, process=self.process, log=self.log)
        wait_for_port(self.component, process=self.process, log=self.log)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def text(self, tail=0):
        return read(self.log, tail)
