"""Simulated SIP clients over StringTransport and a fake UDP socket, and a gateway core on a task.Clock."""

import hashlib
import itertools

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.testing import MemoryConnector, MemoryDirectory, make_core
from gateway_sip.codec import Response, parse_auth, parse_message, split_stream
from gateway_sip.connector import SipConnector
from gateway_sip.protocol import SipDatagramProtocol, SipStreamProtocol

POLICY = """
[[policy.rule]]
name = "no-bob-to-carol"
action = "deny"
from = ["user:bob"]
to = ["user:carol"]
reason = "bob may not write to carol"
"""

START = 1_800_000_000.0


class FakeUdpTransport:
    """What a SipDatagramProtocol writes, per destination."""

    def __init__(self, setup):
        self.setup = setup
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))
        client = self.setup.udp_clients.get(addr)
        if client is not None:
            client.arrived(data)

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", 5060)


class Setup:
    """A core (memory directory, archive, offline store) with the SIP connector and a memory connector."""

    def __init__(self, config=None, policy=POLICY, users=("alice", "bob", "carol")):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.directory = MemoryDirectory()
        self.people = {
            name: self.directory.add(name, f"sip:{name}@localhost", f"mem:{name}") for name in users
        }
        self.core = make_core(policy, clock=self.clock, directory=self.directory)
        options = {"udp": [], "listen": []}
        options.update(config or {})
        self.sip = SipConnector(self.core.api, options)
        self.sip.udp_addresses = []  # no real sockets: the fake one below stands for the UDP listener
        self.memory = MemoryConnector(self.core.api, networks=("mem",))
        self.core.connectors["sip"] = self.sip
        self.core.connectors["memory"] = self.memory
        self.sip.startService()
        self.udp = SipDatagramProtocol(self.sip, self.sip.limiter, self.sip.max_datagram)
        self.udp_transport = FakeUdpTransport(self)
        self.udp.makeConnection(self.udp_transport)
        self.sip.udp_endpoints.append(self.udp)
        self.udp_clients = {}

    def memory_login(self, name):
        sessions = []
        self.memory.login(self.people[name], self.people[name].handle_on("mem")).addCallback(sessions.append)
        return sessions[0]

    def sessions(self, name):
        return [s for s in self.core.sessions.sessions_of(name) if s.connector == "sip"]

    def archived(self):
        return self.core.archive.rows

    def stop(self):
        return self.sip.stopService()


_ports = itertools.count(41000)


class Client:
    """A SIP user agent under test control: builds requests, reads what the gateway sent it."""

    transport_name = "UDP"
    auto_answer = False

    def __init__(self, setup, user="alice", port=None):
        self.setup = setup
        self.user = user
        self.port = port or next(_ports)
        self.inbox = []  # parsed messages the gateway sent, not yet taken
        self.answered = []  # requests the auto-answer replied to
        self.cseq = itertools.count(1)
        self.tag = f"tag{self.port}"
        self.call_id = f"call{self.port}@client"
        self.branches = itertools.count(1)

    # -- what arrives ---------------------------------------------------------

    def arrived(self, data):
        message = parse_message(data)
        if self.auto_answer and not isinstance(message, Response):
            self.answered.append(message)
            self.send(self.response(message, 200))
            return
        self.inbox.append(message)

    def take(self):
        taken, self.inbox = self.inbox, []
        return taken

    def take_one(self):
        taken = self.take()
        assert len(taken) == 1, taken
        return taken[0]

    # -- what it sends ------------------------------------------------------------

    def request(self, method, uri, to=None, headers=(), body=b"", cseq=None, call_id=None, branch=None,
                from_user=None, to_tag=None, tag=None):
        to = to or uri
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport_name} 0.0.0.0:5060;branch={branch or self.new_branch()};rport",
            f"From: <sip:{from_user or self.user}@localhost>;tag={tag or self.tag}",
            f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq or next(self.cseq)} {method}",
            "Max-Forwards: 70",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def new_branch(self):
        return f"z9hG4bK{self.port}x{next(self.branches)}"

    def response(self, request, status, reason="OK"):
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in request.headers.get_all(name) if name == "Via" else [request.headers.get(name)]:
                lines.append(f"{name}: {value}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def authorization(self, challenge, method, uri, user=None, password="secret", nc=1, header="Authorization",
                      qop=True):
        """Answer a challenge the way a client computes it (hashlib here, not the code under test)."""
        _, params = parse_auth(challenge)
        algorithm = params.get("algorithm", "MD5")
        h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
        user = user or self.user
        ha1 = h(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
        ha2 = h(f"{method}:{uri}".encode()).hexdigest()
        cnonce, count = "0a4f113b", f"{nc:08x}"
        if qop:
            response = h(f"{ha1}:{params['nonce']}:{count}:{cnonce}:auth:{ha2}".encode()).hexdigest()
            extra = f', qop=auth, nc={count}, cnonce="{cnonce}"'
        else:
            response = h(f"{ha1}:{params['nonce']}:{ha2}".encode()).hexdigest()
            extra = ""
        return (header, f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                        f'uri="{uri}", response="{response}", algorithm={algorithm}{extra}')

    def register(self, expires=300, password="secret", algorithm="MD5", contact=None, qop=True):
        """The 401 dance; returns the final response."""
        contact = contact or f"<sip:{self.user}@0.0.0.0:5060;transport={self.transport_name.lower()}>"
        uri = "sip:localhost"
        headers = [("Contact", contact), ("Expires", str(expires))]
        self.send(self.request("REGISTER", uri, to=f"sip:{self.user}@localhost", headers=headers))
        challenge = self.take_one()
        if challenge.status != 401:
            return challenge
        offered = [v for v in challenge.headers.get_all("www-authenticate") if f"algorithm={algorithm}" in v]
        auth = self.authorization(offered[0], "REGISTER", uri, password=password, qop=qop)
        self.send(self.request("REGISTER", uri, to=f"sip:{self.user}@localhost", headers=headers + [auth]))
        return self.take_one()


class UdpClient(Client):
    transport_name = "UDP"

    def __init__(self, setup, user="alice", port=None, host="127.0.0.1"):
        super().__init__(setup, user, port)
        self.addr = (host, self.port)
        setup.udp_clients[self.addr] = self

    def send(self, data):
        self.setup.udp.datagramReceived(data, self.addr)


class AnsweringTransport(StringTransport):
    def __init__(self, client, **kwargs):
        super().__init__(**kwargs)
        self.client = client
        self._buffer = b""

    def write(self, data):
        super().write(data)
        self._buffer += data
        while True:
            kind, frame, used = split_stream(self._buffer)
            if kind is None:
                return
            self._buffer = self._buffer[used:]
            if kind == "message":
                self.client.arrived(frame)


class TcpClient(Client):
    transport_name = "TCP"

    def __init__(self, setup, user="alice", port=None):
        super().__init__(setup, user, port)
        sip = setup.sip
        self.protocol = SipStreamProtocol(sip, sip.limiter, sip.max_datagram, sip.idle_timeout, setup.clock)
        self.transport = AnsweringTransport(
            self,
            peerAddress=IPv4Address("TCP", "127.0.0.1", self.port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 5060),
        )
        self.protocol.makeConnection(self.transport)

    def send(self, data):
        self.protocol.dataReceived(data)

    def close(self):
        self.transport.loseConnection()
        self.protocol.connectionLost(None)
