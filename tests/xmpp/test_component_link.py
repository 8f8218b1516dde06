"""The component link takes stanzas only from the server's remote domains: a forged local sender is refused."""

from twisted.internet import task
from twisted.trial import unittest
from twisted.words.xish import domish

from gateway.testing import MemoryConnector, MemoryDirectory, make_core
from gateway_xmpp.connector import XmppConnector


class FakeStream:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


def message(sender, to, body):
    element = domish.Element(("jabber:component:accept", "message"))
    element["from"], element["to"], element["type"], element["id"] = sender, to, "chat", "m1"
    element.addElement("body", content=body)
    return element


class ForgedSenderTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        directory = MemoryDirectory()
        self.bob = directory.add("bob", "xmpp:bob@localhost", "mem:bob")
        self.core = make_core(directory=directory, clock=self.clock)
        self.connector = XmppConnector(self.core.api, {
            "listen": [], "require_tls": False, "domain": "localhost",
            "component": {"domain": "gw.example.com", "secret": "s", "remote_domains": ["example.com"]},
        })
        self.memory = MemoryConnector(self.core.api, networks=("mem",))
        self.core.connectors.update(xmpp=self.connector, memory=self.memory)
        self.session = self.successResultOf(self.memory.login(self.bob, self.bob.handles[1]))
        self.link = self.connector.component
        self.link.stream = FakeStream()

    def test_a_remote_user_is_heard(self):
        self.link.handle_stanza(message("carol@example.com/pc", "bob@gw.example.com", "hello"))
        self.assertEqual([e.text for e in self.memory.received(self.session, "im")], ["hello"])

    def test_a_sender_claiming_a_local_address_is_refused(self):
        self.link.handle_stanza(message("alice@localhost/pc", "bob@gw.example.com", "I am alice, honest"))
        self.assertEqual(self.memory.received(self.session, "im"), [])
        self.assertEqual(self.core.archive.events("im"), [])
        [error] = self.link.stream.written
        self.assertIn(b"type='error'", error.replace(b'"', b"'"))
        self.assertIn(b"forbidden", error)

    def test_a_sender_of_another_domain_is_refused(self):
        self.link.handle_stanza(message("eve@elsewhere.example/pc", "bob@gw.example.com", "hi"))
        self.assertEqual(self.memory.received(self.session, "im"), [])
