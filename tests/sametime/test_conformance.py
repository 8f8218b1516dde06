"""The core's connector conformance tests, run against the Sametime connector."""

from twisted.internet import task
from twisted.trial import unittest

from gateway.testing import ConnectorConformanceMixin

from gateway_sametime.connector import SametimeConnector

from tests.sametime.client import Client


class SametimeConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "sametime"
    handles = ("sametime:alice", "sametime:bob")

    def setUp(self):
        self.clock = task.Clock()
        self.clients = {}

    def make_connector(self, api):
        # No listeners: clients are driven over StringTransport.
        return SametimeConnector(api, {"listen": []})

    def connect_client(self, connector, identity, address):
        client = Client(connector, seed=len(self.clients) + 1, auto_accept=True)
        out = client.login(address.user)
        session = client.protocol.session
        self.assertIsNotNone(session, out)
        self.clients[session] = client
        return session

    def client_received(self, connector, session):
        return [text for _, text in self.clients[session].texts()]
