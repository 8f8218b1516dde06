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

    def client_received(self, connector, session):
        return [text for _, text in self.clients[session].texts()]

    # What a Sametime client does, for the deeper conformance tests.

    def try_login(self, connector, address, password):
        client = Client(connector, seed=len(self.clients) + 7, port=41000 + len(self.clients), auto_accept=True)
        said = client.login(address.user, password)
        session = client.protocol.session
        if session is not None:
            self.clients[session] = client
        return session, repr(said)

    def client_send(self, connector, session, recipient, text):
        client = self.clients[session]
        cid = client.open_im(recipient.handle)
        return client.say(cid, text)

    def drop_client(self, connector, session):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        client = self.clients[session]
        client.transport.loseConnection()
        client.protocol.connectionLost(Failure(ConnectionLost()))

    def garbage_client(self, connector, data):
        Client(connector, seed=99).protocol.dataReceived(data)

    def client_presence(self, connector, session):
        from gateway.model import Address

        from gateway_sametime import codec

        client = self.clients[session]
        cid = getattr(client, "aware_cid", None)
        if cid is None:
            return []
        seen = []
        for send_type, data in client.payloads(cid):
            if send_type == codec.AWARE_SNAPSHOT:
                entries = codec.decode_aware_snapshot(data)
            elif send_type == codec.AWARE_UPDATE:
                entries = codec.decode_aware_snapshot(codec.u32(1) + data)
            else:
                continue
            seen += [(Address("sametime", e.id.user), "online" if e.online else "offline") for e in entries]
        return seen

    def connect_client(self, connector, identity, address):
        session, said = self.try_login(connector, address, "secret")
        self.assertIsNotNone(session, said)
        # Watch the contacts the directory lists, as a Sametime client's buddy list does.
        from gateway_sametime import codec

        client = self.clients[session]
        contacts = self.successResultOf(connector.api.contacts(identity.id))
        if contacts:
            client.aware_cid = client.open_channel(codec.SERVICE_AWARE, 0x11, 0x30005)
            client.channel_send(client.aware_cid, codec.AWARE_ADD, codec.encode_aware_list(
                [codec.AwareId(c.address.handle) for c in contacts if c.address.network == "sametime"]))
        return session
