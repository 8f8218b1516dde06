"""The component link over TLS: attached when the server's certificate names it, never in the clear otherwise."""

import hashlib
import os
import tempfile

from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.trial import unittest

from gateway.testing import MemoryDirectory, make_core
from gateway_xmpp.connector import XmppConnector
from tests.xmpp.peers import make_certificate


class ComponentServer(protocol.Protocol):
    """The server side of an XEP-0114 handshake, as an XMPP server speaks it on its component port."""

    def connectionMade(self):
        self.buffer = b""
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.buffer += data
        self.factory.received.append(data)
        if b"<stream:stream" in self.buffer and not getattr(self, "opened", False):
            self.opened = True
            self.transport.write(b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
                                 b" xmlns='jabber:component:accept' from='gw.example.com' id='s3cr3tid'>")
        if b"</handshake>" in self.buffer and not getattr(self, "shaken", False):
            self.shaken = True
            proof = self.buffer.split(b"<handshake>")[1].split(b"</handshake>")[0]
            if proof == hashlib.sha1(b"s3cr3tid" + b"component-secret").hexdigest().encode():
                self.transport.write(b"<handshake/>")
                self.factory.attached.callback(self)


class ComponentTlsTests(unittest.TestCase):
    timeout = 30

    def serve(self, name):
        folder = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(folder, f)) for f in os.listdir(folder)])
        cert_path, key_path = make_certificate(folder, name)
        with open(cert_path, "rb") as c, open(key_path, "rb") as k:
            identity = ssl.PrivateCertificate.loadPEM(c.read() + k.read())
        factory = protocol.Factory.forProtocol(ComponentServer)
        factory.connections, factory.received, factory.attached = [], [], defer.Deferred()
        port = reactor.listenSSL(0, factory, identity.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, cert_path, factory

    def link(self, port, ca, **extra):
        core = make_core(directory=MemoryDirectory(), clock=task.Clock(), reactor=reactor)
        component = {"host": "127.0.0.1", "port": port, "domain": "gw.example.com", "secret": "component-secret",
                     "remote_domains": ["example.com"], "tls": True, "ca": ca, "reconnect": False}
        component.update(extra)
        connector = XmppConnector(core.api, {"listen": [], "require_tls": False, "domain": "localhost",
                                             "component": component})
        link = connector.component
        link.start()
        self.addCleanup(link.stop)
        return link

    @defer.inlineCallbacks
    def test_attached_over_tls_to_a_server_whose_certificate_names_it(self):
        port, cert, server = self.serve("example.com")
        link = self.link(port, cert)
        yield server.attached
        for _ in range(50):
            if link.stream is not None:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertIsNotNone(link.stream)
        self.assertTrue(link.tls)

    @defer.inlineCallbacks
    def test_a_certificate_for_another_name_gets_not_one_byte_of_the_handshake(self):
        port, cert, server = self.serve("impostor.example.net")
        link = self.link(port, cert)
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertIsNone(link.stream)
        self.assertFalse(server.attached.called)
        self.assertEqual(server.received, [])  # nothing decrypted on the server's side: no secret, no stanza
