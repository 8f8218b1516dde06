"""The admin API: a token for everything but loopback /metrics, POST for changes, no cross-site requests, TLS."""

import datetime
import io
import os
import stat

from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from gateway import config as config_module
from gateway.ops.admin import admin_site, admin_token, loopback_listener
from gateway.testing import make_core

TOKEN = "s3cret-admin-token"


class FakeGateway:
    """What the admin site reads of a gateway service."""

    def __init__(self, config):
        self.config = config
        self.core = make_core(config, clock=reactor)
        self.archive = self.core.archive
        self.archive.state, self.archive.spooled = "healthy", lambda: 0
        self.started = reactor.seconds()
        self.refreshed = 0

    def directory_invalidate(self):
        self.refreshed += 1


@defer.inlineCallbacks
def serve_admin(case, gateway_class, listen="tcp:0:interface=127.0.0.1", extra=f'token = "{TOKEN}"\n'):
    """
    ``case``'s admin site on ``listen``, for a ``gateway_class`` made from a
    config with ``[admin] listen`` and ``extra``: sets ``case.gateway``,
    ``case.port`` (closed at the end of the test) and ``case.base``.
    """
    folder = os.path.abspath(case.mktemp())
    os.makedirs(folder)
    path = os.path.join(folder, "gateway.toml")
    with open(path, "w") as f:
        f.write(f'[gateway]\ndata_dir = "var"\n[admin]\nlisten = "{listen}"\n{extra}')
    case.gateway = gateway_class(config_module.load(path))
    case.port = yield endpoints.serverFromString(reactor, listen).listen(admin_site(case.gateway))
    case.addCleanup(case.port.stopListening)
    case.base = f"http://127.0.0.1:{case.port.getHost().port}"


class AdminApiTests(unittest.TestCase):
    listen = "tcp:0:interface=127.0.0.1"
    extra = f'token = "{TOKEN}"\n'

    @defer.inlineCallbacks
    def setUp(self):
        yield serve_admin(self, FakeGateway, self.listen, self.extra)
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def request(self, path, method=b"GET", token=TOKEN, **headers):
        h = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()})
        if token is not None:
            h.addRawHeader(b"authorization", f"Bearer {token}".encode())
        response = yield self.agent.request(method, (self.base + path).encode(), h)
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_every_endpoint_refuses_without_credentials(self):
        for path, method in (("/status", b"GET"), ("/directory/refresh", b"POST"), ("/nowhere", b"GET")):
            response, body = yield self.request(path, method, token=None)
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="gateway"'])
        self.assertEqual(self.gateway.refreshed, 0)
        metrics = self.gateway.core.metrics.render().decode()
        self.assertIn('gateway_admin_refused_total{reason="no-credentials"} 3.0', metrics)

    @defer.inlineCallbacks
    def test_a_wrong_token_is_refused(self):
        response, _ = yield self.request("/status", token="guess")
        self.assertEqual(response.code, 401)

    @defer.inlineCallbacks
    def test_the_right_token_is_accepted(self):
        response, body = yield self.request("/status")
        self.assertEqual(response.code, 200)
        self.assertIn(b'"node"', body)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        response, _ = yield self.request("/directory/refresh", b"POST")
        self.assertEqual((response.code, self.gateway.refreshed), (200, 1))

    @defer.inlineCallbacks
    def test_changes_by_post_only(self):
        response, _ = yield self.request("/directory/refresh", b"GET")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.gateway.refreshed, 0)

    @defer.inlineCallbacks
    def test_a_foreign_origin_is_refused_even_with_the_token(self):
        response, _ = yield self.request("/directory/refresh", b"POST", origin="https://evil.example")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.gateway.refreshed, 0)

    @defer.inlineCallbacks
    def test_metrics_open_on_loopback(self):
        response, body = yield self.request("/metrics", token=None)
        self.assertEqual(response.code, 200)
        self.assertIn(b"gateway_events", body)
        for gauge in (b"gateway_archive_queue_depth 0.0", b"gateway_archive_spool_rows 0.0",
                      b"gateway_archive_spool_bytes 0.0"):
            self.assertIn(gauge, body)


class NotLoopbackTests(unittest.TestCase):
    def test_which_listeners_are_loopback(self):
        for description, expected in [
            ("tcp:8080:interface=127.0.0.1", True), ("tcp6:8080:interface=\\:\\:1", True),
            ("tcp:8080", False), ("tcp:8080:interface=0.0.0.0", False), ("unix:/run/gw.sock", True),
            ("ssl:8443:interface=127.0.0.1:privateKey=k.pem", True), ("tcp6:8080:interface=\\:\\:", False),
        ]:
            self.assertEqual(loopback_listener(description), expected, description)


class TokenFileTests(unittest.TestCase):
    def config(self, text=""):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "gateway.toml")
        with open(path, "w") as f:
            f.write(f'[gateway]\ndata_dir = "var"\n{text}')
        return config_module.load(path)

    def test_made_once_private_and_kept(self):
        config = self.config()
        self.assertIsNone(admin_token(config, create=False))
        token = admin_token(config)
        self.assertGreaterEqual(len(token), 40)
        path = os.path.join(config.data_dir, "admin-token")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(admin_token(config), token)

    def test_token_file(self):
        config = self.config('[admin]\ntoken_file = "secrets/admin"\n')
        os.makedirs(os.path.join(config.base_dir, "secrets"))
        with open(os.path.join(config.base_dir, "secrets", "admin"), "w") as f:
            f.write("from-a-file\n")
        self.assertEqual(admin_token(config), "from-a-file")

    def test_gatewayctl_sends_the_token(self):
        from gateway.cli import main

        config = self.config('[admin]\ntoken = "abc"\n')
        seen = []
        import urllib.request

        class Response(io.BytesIO):
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        def urlopen(request, timeout):
            seen.append((request.get_method(), request.full_url, request.headers.get("Authorization")))
            return Response(b"{}")

        self.patch(urllib.request, "urlopen", urlopen)
        self.assertEqual(main(["--config", config.path, "directory", "refresh"], out=io.StringIO()), 0)
        self.assertEqual(seen, [("POST", "http://127.0.0.1:8080/directory/refresh", "Bearer abc")])


class TlsTests(AdminApiTests):
    """The same API over TLS: the listener is an ssl: endpoint string, nothing else changes."""

    def setUp(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        pem = os.path.join(folder, "admin.pem")
        with open(pem, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self.listen = f"ssl:0:interface=127.0.0.1:privateKey={pem}"
        d = super().setUp()

        def https(_):
            from twisted.internet.ssl import CertificateOptions
            from twisted.web.iweb import IPolicyForHTTPS
            from zope.interface import implementer

            @implementer(IPolicyForHTTPS)
            class TrustAnything:
                def creatorForNetloc(self, hostname, port):
                    return CertificateOptions(verify=False)

            self.base = self.base.replace("http://", "https://")
            self.agent = Agent(reactor, contextFactory=TrustAnything())

        return d.addCallback(https)
