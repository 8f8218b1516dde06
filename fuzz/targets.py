"""
The fuzz targets: each turns one input (bytes) into calls of a codec or of a
protocol state machine, and raises only when it finds a defect.

A *codec* target calls a parser with the input (its first byte picks which
one); the parser may refuse the input with its own error (``OscarCodecError``,
``SipError``, ``StreamViolation`` ...). Any other exception is a defect: a
connection would close with a traceback instead of a protocol error, or the
reactor would see an exception it does not expect.

A *machine* target is one connector on an in-memory core (``gateway.testing``,
a ``task.Clock``): each input is what one new connection sends. The first
byte picks the mode: bit 0 logs a client in first (the rest is what a
logged-in user sends, so the fuzzer reaches past authentication), the other
bits how the bytes are cut into ``dataReceived`` calls and how far the clock
moves while the connection is open (idle and login timeouts fire). Then the
connection is lost. A defect is then:

- an exception out of ``dataReceived``, ``connectionLost`` or a timer;
- an error logged (a failure, or a message at level error or critical):
  malformed input must end one connection with a protocol error, quietly;
- a session left behind once every connection is gone, or timers that pile
  up from one input to the next (what a long run would see as memory
  growth).

``TARGETS`` maps each name to a factory that builds the target once per
process and returns its one-input function; ``SEEDS`` holds a few inputs per
target (what real clients send, e.g. the dumps of shared protocol notes)
that the fuzzer starts from.
"""

from __future__ import annotations

import base64

TARGETS = {}
SEEDS = {}


class Defect(Exception):
    """What a target raises when the code under test misbehaved (not for a refused input)."""


def target(name, seeds=()):
    def register(factory):
        TARGETS[name] = factory
        SEEDS[name] = seeds
        return factory

    return register


def _pick(data, choices):
    """(the choice the first byte names, the rest of the input)."""
    return choices[data[0] % len(choices)], data[1:]


# -- codecs ------------------------------------------------------------------------------------


def _oscar_parsers():
    from gateway_oscar import codec, intercept

    return [
        lambda d: codec.split_flaps(d),
        codec.parse_snac,
        codec.parse_tlvs,
        codec.parse_icbm_send,
        codec.parse_im_send,
        codec.parse_icbm_receive,
        codec.parse_message_fragments,
        codec.text_fragments,
        codec.text_parts,
        codec.parse_ssi_items,
        lambda d: codec.parse_ssi_items(d, lenient=False),
        codec.parse_ssi_list,
        codec.parse_signon,
        codec.parse_rendezvous,
        codec.parse_rate_info,
        lambda d: codec.parse_user_info(codec.Reader(d)),
        intercept.parse_user_blocks,
        intercept.parse_info_answer,
        lambda d: intercept.parse_chat(d, True),
        lambda d: intercept.parse_chat(d, False),
        lambda d: intercept.parse_icbm(codec.Snac(4, 6, 0, 0, d), False),
        lambda d: intercept.parse_icbm(codec.Snac(4, 7, 0, 0, d), True),
    ]


@target("oscar-codec", seeds=[
    # A FLAP with a roasted sign-on, an ICBM to "bob" with a text fragment, an SSI list item.
    b"\x00*\x01\x00\x01\x00\x1a\x00\x00\x00\x01\x00\x01\x00\x05alice\x00\x02\x00\x03abc\x00\x03\x00\x01x",
    b"\x03" + b"12345678\x00\x01\x03bob\x00\x02\x00\x0d\x05\x01\x00\x01\x01\x01\x01\x00\x04\x00\x00\x00\x00hi",
    b"\x09" + b"\x00\x05Buddy\x00\x01\x00\x02\x00\x00\x00\x00",
    b"\x0d" + b"\x00\x00" + b"12345678" + b"\x09\x46\x13\x43\x4c\x7f\x11\xd1\x82\x22\x44\x45\x53\x54\x00\x00"
    + b"\x00\x0a\x00\x02\x00\x01",
])
def oscar_codec():
    from gateway_oscar.codec import OscarCodecError

    parsers = _oscar_parsers()

    def one(data):
        if not data:
            return
        parse, rest = _pick(data, parsers)
        try:
            parse(rest)
        except OscarCodecError:
            pass

    return one


def _sametime_parsers():
    from gateway_sametime import codec

    return [
        lambda d: codec.split_frames(d, 65536),
        codec.decode,
        codec.decode_im,
        codec.decode_aware_list,
        codec.decode_aware_snapshot,
        codec.decode_storage_load,
        codec.decode_storage_save,
        codec.decode_storage_loaded,
        codec.decode_resolve_request,
        codec.decode_resolve_reply,
        lambda d: codec.parse_buddy_list(d.decode("utf-8", "replace")),
    ]


@target("sametime-codec", seeds=[
    # A handshake as Meanwhile sends it (shared protocol notes), a whole frame, a buddy list.
    b"\x00\x00\x00\x00\x1a\x00\x00\x1e\x00\x1d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x01\x00\x00\x00\x1a\x00\x00\x1e\x00\x1d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x0a" + b"Version=3.1.3\nB alice alice,Alice\nG G1 Friends O\nU bob1:: bob,Bob\n",
    b"\x02" + b"\x00\x00\x00\x01\x00\x00\x00\x02hi",
])
def sametime_codec():
    from gateway_sametime.codec import CodecError

    parsers = _sametime_parsers()

    def one(data):
        if not data:
            return
        parse, rest = _pick(data, parsers)
        try:
            parse(rest)
        except CodecError:
            pass

    return one


def _sip_parsers():
    from gateway_sip import codec

    def request(d):
        message = codec.parse_message(d)
        if isinstance(message, codec.Request):
            codec.validate_request(message)
            for name in ("from", "to", "contact", "route", "record-route"):
                for value in message.headers.get_all(name):
                    codec.parse_name_addr(value, message)
            message.top_via()
            message.cseq()
            message.to_bytes()

    def text(parse):
        # Header values reach these parsers decoded from UTF-8 (parse_message refuses other bytes).
        return lambda d: parse(d.decode("utf-8", "replace"))

    return [
        request,
        lambda d: codec.split_stream(d),
        text(codec.parse_uri),
        text(codec.parse_name_addr),
        text(codec.parse_via),
        text(codec.split_commas),
        text(codec.unescape),
    ]


SIP_REGISTER = (
    b"REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bK1;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:alice@localhost>\r\n"
    b"Call-ID: c1@127.0.0.1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:40000;transport=tcp>\r\n"
    b"Expires: 300\r\nContent-Length: 0\r\n\r\n"
)
SIP_MESSAGE = (
    b"MESSAGE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bK2\r\n"
    b"Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@localhost>;tag=a2\r\nTo: <sip:bob@localhost>\r\n"
    b"Call-ID: c2@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
)


@target("sip-codec", seeds=[b"\x00" + SIP_REGISTER, b"\x00" + SIP_MESSAGE, b"\x01" + SIP_MESSAGE + SIP_REGISTER,
                            b"\x02sip:alice@localhost;transport=tcp?subject=x",
                            b"\x03\"Alice\" <sip:alice@localhost>;tag=1",
                            b"\x04SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK3;received=1.2.3.4;rport=5"])
def sip_codec():
    from gateway_sip.codec import SipError

    parsers = _sip_parsers()

    def one(data):
        if not data:
            return
        parse, rest = _pick(data, parsers)
        try:
            parse(rest)
        except SipError:
            pass

    return one


@target("pidf", seeds=[
    b"\x00<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:alice@localhost'>"
    b"<tuple id='t1'><status><basic>open</basic></status><note>at lunch</note></tuple></presence>",
    b"\x01<?xml version='1.0'?><isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'>"
    b"<state>active</state><refresh>60</refresh></isComposing>",
])
def pidf():
    from gateway_sip.pidf import PidfError, parse_composing, parse_pidf

    def one(data):
        if not data:
            return
        parse, rest = _pick(data, [parse_pidf, parse_composing])
        try:
            parse(rest)
        except PidfError:
            pass

    return one


XMPP_HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
               b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


@target("xmpp-stream", seeds=[
    b"\x00" + XMPP_HEADER + b"<message to='bob@localhost' type='chat'><body>hi &amp; bye</body>"
    b"<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>"
    b"<p>hi <b>bye</b></p></body></html></message></stream:stream>",
    b"\x07" + XMPP_HEADER + b"<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
])
def xmpp_stream():
    from gateway_xmpp.codec import StreamParser, StreamViolation, parse_one, unescape_node

    def one(data):
        if not data:
            return
        mode, rest = data[0], data[1:]
        if mode == 0xFF:
            try:
                parse_one(rest)
            except StreamViolation:
                pass
            unescape_node(rest.decode("utf-8", "replace"))
            return
        parser = StreamParser(lambda name, attributes: None, lambda element: element.toXml(), lambda: None)
        size = mode + 1
        try:
            for start in range(0, len(rest), size):
                parser.feed(rest[start:start + size])
        except StreamViolation:
            pass
        finally:
            parser.close()

    return one


@target("content", seeds=[
    b"hi\x00<p>hi <b>project-x</b> <a href='http://example.com/x'>link</a></p>",
    b"\x00<script>alert(1)</script><img src=x onerror=alert(1)>",
    b"plain text only",
])
def content():
    """
    The sanitizer every message's rich part passes: never raises, its
    result is a fixed point, and its XHTML rendering is well-formed XML.
    """
    from xml.parsers.expat import ExpatError
    from xml.dom.minidom import parseString

    from gateway.path.content import normalize, xhtml_of

    def one(data):
        text, _, markup = data.decode("utf-8", "replace").partition("\0")
        first = normalize(text, markup or None)
        again = normalize(*first)
        if again != first:
            raise Defect(f"normalize is not idempotent: {first!r} -> {again!r}")
        if first[1] is not None:
            xhtml = xhtml_of(first[1])
            try:
                parseString(f"<body>{xhtml}</body>".encode("utf-8"))
            except ExpatError as e:
                raise Defect(f"xhtml_of wrote malformed XML ({e}): {xhtml!r}") from None

    return one


# -- state machines ------------------------------------------------------------------------------


class Machine:
    """
    One connector on an in-memory core. Subclasses say how to open a new
    connection (``fresh``) and how to open one that a real client logged in
    (``logged_in``); both return the protocol, on a ``StringTransport``.
    """

    #: how far the clock may move while a connection is open (the mode's bits pick one)
    pauses = (0.0, 0.0, 1.0, 31.0)

    def __init__(self):
        from twisted.logger import LogLevel, globalLogPublisher

        self.errors = []

        def observe(event):
            if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.setup()
        self.timers = len(self.clock.getDelayedCalls())

    def one(self, data):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        if not data:
            return
        mode, rest = data[0], data[1:]
        protocol = self.logged_in() if mode & 1 else self.fresh()
        size = (mode >> 3) * 8 or len(rest) or 1
        for start in range(0, len(rest), size):
            if protocol.transport.disconnecting:
                break
            self.feed(protocol, rest[start:start + size])
        pause = self.pauses[(mode >> 1) & 3]
        if pause:
            self.clock.advance(pause)
        protocol.transport.loseConnection()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.check(data)

    def feed(self, protocol, data):
        protocol.dataReceived(data)
        protocol.transport.clear()

    def check(self, data):
        # Throttles and short-lived state expire; whatever is due runs now.
        self.clock.advance(600)
        self.core.archive.rows.clear()
        self.core.archive.deliveries.clear()
        self.core.offline.held.clear()
        if self.errors:
            events, self.errors[:] = list(self.errors), []
            raise Defect("logged an error: " + "; ".join(_describe(e) for e in events))
        if len(self.core.sessions):
            left = self.core.sessions.all()
            for session in left:
                self.core.sessions.remove(session)
            raise Defect(f"sessions left once every connection is gone: {left!r}")
        timers = len(self.clock.getDelayedCalls())
        if timers > self.timers + 200:
            calls = self.clock.getDelayedCalls()
            raise Defect(f"{timers} timers pending (at start {self.timers}), e.g. {calls[-1]!r}")

    def make_core(self, config="", users=("alice", "bob")):
        from twisted.internet import task

        from gateway.testing import MemoryDirectory, MemoryOfflineStore, make_core

        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.directory = MemoryDirectory()
        for name in users:
            self.directory.add(name, *[f"{network}:{name}{domain}" for network, domain in self.handles])
        self.core = make_core(config, clock=self.clock, directory=self.directory, offline=MemoryOfflineStore(100))
        return self.core


def _describe(event):
    from twisted.logger import formatEvent

    failure = event.get("log_failure")
    text = formatEvent(event)
    return f"{text} [{failure.getTraceback()}]" if failure is not None else text


def machine(name, seeds=()):
    def register(cls):
        target(name, seeds)(cls)
        TARGETS[name] = lambda: cls().one
        return cls

    return register


def _plain(user, password="secret"):
    return base64.b64encode(f"\0{user}\0{password}".encode())


def _xmpp_setup(machine, **options):
    """An XMPP connector without listeners on the machine's in-memory core (``options``: its table)."""
    from gateway_xmpp.connector import XmppConnector

    machine.make_core()
    machine.connector = XmppConnector(machine.core.api, {"listen": [], "require_tls": False, **options})
    machine.core.connectors["xmpp"] = machine.connector


# A client's login, step by step (each waits for the server's answer to the one before).
XMPP_LOGIN_STEPS = (
    XMPP_HEADER,
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + _plain("alice") + b"</auth>",
    XMPP_HEADER,
    b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    b"<presence/>",
)
XMPP_LOGIN = b"".join(XMPP_LOGIN_STEPS)
XMPP_STANZAS = (
    b"<message to='bob@localhost' type='chat' id='m1'><body>hi</body>"
    b"<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>"
    b"<p>hi <b>x</b></p></body></html></message>"
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    b"<presence to='bob@localhost' type='subscribe'/><presence to='bob@localhost' type='probe'/>"
    b"<message to='bob@localhost'><body>file</body><x xmlns='jabber:x:oob'><url>http://x/y</url></x></message>"
    b"<iq type='get' id='v1' to='bob@localhost/r'><vCard xmlns='vcard-temp'/></iq>"
    b"<message to='aim:bob@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    b"<presence><show>away</show><status>out</status></presence></stream:stream>"
)


@machine("xmpp-c2s", seeds=[b"\x00" + XMPP_LOGIN + XMPP_STANZAS, b"\x01" + XMPP_STANZAS,
                            b"\x09" + XMPP_STANZAS, b"\x10" + XMPP_LOGIN_STEPS[0] + XMPP_LOGIN_STEPS[1]])
class XmppClientStreams(Machine):
    handles = (("xmpp", "@localhost"), ("aim", ""))

    def setup(self):
        _xmpp_setup(self, idle_timeout=60, login_timeout=10)

    def fresh(self):
        from gateway_xmpp.protocol import C2SStream
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        stream = C2SStream(self.connector, self.connector.default_settings)
        stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000)))
        return stream

    def logged_in(self):
        stream = self.fresh()
        for step in XMPP_LOGIN_STEPS:
            stream.dataReceived(step)
        if stream.session is None:
            raise Defect(f"the harness could not log in: {stream.transport.value()!r}")
        stream.transport.clear()
        return stream


S2S_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' from='example.org' version='1.0'>")


@machine("xmpp-s2s", seeds=[
    b"\x00" + S2S_HEADER + b"<db:result from='example.org' to='localhost'>abcdef</db:result>"
    b"<db:verify from='example.org' to='localhost' id='sid1'>0123</db:verify>"
    b"<message from='zoe@example.org' to='alice@localhost'><body>hi</body></message>",
])
class XmppServerStreams(Machine):
    handles = (("xmpp", "@localhost"),)

    def setup(self):
        _xmpp_setup(self, s2s={"peers": {"example.org": "tcp:127.0.0.1:1"}, "secret": "db-secret", "listen": [],
                               "tls": False})

    def fresh(self):
        from gateway_xmpp.s2s import InboundStream
        from twisted.internet.testing import StringTransport

        stream = InboundStream(self.connector.s2s)
        stream.makeConnection(StringTransport())
        return stream

    def logged_in(self):
        # A stream on which example.org is verified: stanzas from it are taken.
        stream = self.fresh()
        stream.dataReceived(S2S_HEADER)
        stream.authorized.add("example.org")
        stream.transport.clear()
        return stream


COMPONENT_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                    b"xmlns:stream='http://etherx.jabber.org/streams' from='gw.example.org' id='abc123'>")


@machine("xmpp-component", seeds=[
    b"\x00" + COMPONENT_HEADER + b"<handshake/>"
    b"<message from='zoe@example.org' to='bob@gw.example.org'><body>hi</body></message>",
    b"\x01<presence from='zoe@example.org' to='bob@gw.example.org' type='subscribe'/>"
    b"<presence from='zoe@example.org/r' to='bob@gw.example.org' type='probe'/>"
    b"<message from='zoe@example.org' to='alice@gw.example.org' type='chat'><body>x</body></message>",
])
class XmppComponentStreams(Machine):
    """What the XMPP server the gateway is a component of sends it (XEP-0114)."""

    handles = (("xmpp", "@localhost"),)

    def setup(self):
        _xmpp_setup(self, component={"domain": "gw.example.org", "secret": "sekrit", "port": 5347,
                                     "remote_domains": ["example.org"]})

    def fresh(self):
        from gateway_xmpp.component import ComponentStream
        from twisted.internet.testing import StringTransport

        stream = ComponentStream(self.connector.component)
        stream.makeConnection(StringTransport())
        return stream

    def logged_in(self):
        stream = self.fresh()
        stream.dataReceived(COMPONENT_HEADER + b"<handshake/>")
        if self.connector.component.stream is not stream:
            raise Defect("the harness could not attach the component")
        stream.transport.clear()
        return stream


def _oscar_login_frames():
    from gateway_oscar import codec

    signon = codec.FLAP_VERSION + codec.encode_tlvs(
        [(0x0001, b"alice"), (0x0002, codec.roast(b"secret")), (0x0003, b"fuzz client")])
    bucp = codec.encode_snac_flap(1, 0x17, 0x06, codec.encode_tlvs([(0x0001, b"alice")]))
    return codec.encode_flap(1, 1, signon), bucp


def _oscar_bos_frames():
    from gateway_oscar import codec

    im = b"12345678" + codec.u16(1) + b"\x03bob" + codec.encode_text_tlv(0, b"hi <b>there</b>")
    return b"".join([
        codec.encode_snac_flap(3, 1, 0x02, b"\x00\x01\x00\x03\x01\x10\x05\x9b"),
        codec.encode_snac_flap(4, 4, 0x06, im),
        codec.encode_snac_flap(5, 2, 0x05, b"\x00\x01\x00\x03bob"),
        codec.encode_snac_flap(6, 2, 0x15, b"\x00\x00\x00\x01\x03bob"),
        codec.encode_snac_flap(7, 0x13, 0x04),
        codec.encode_snac_flap(8, 3, 0x04, b"\x03bob"),
        codec.encode_snac_flap(9, 1, 0x1E, codec.encode_tlvs([(0x0006, b"\x00\x00\x00\x01")])),
    ])


def _oscar_seeds():
    from gateway_oscar import codec

    signon, bucp = _oscar_login_frames()
    return [b"\x00" + signon, b"\x00" + codec.encode_flap(1, 0, codec.FLAP_VERSION) + bucp,
            b"\x01" + _oscar_bos_frames(), b"\x19" + _oscar_bos_frames()]


class _LazySeeds:
    """Seeds computed when the runner asks (they need the plugins imported)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


@machine("oscar", seeds=_LazySeeds(_oscar_seeds))
class OscarConnections(Machine):
    """The OSCAR server: login (roasted and BUCP) on a fresh connection, BOS once logged in."""

    handles = (("aim", ""),)

    def setup(self):
        from gateway_oscar.connector import OscarConnector

        self.make_core()
        self.connector = OscarConnector(self.core.api, {"listen": []})
        self.core.connectors["oscar"] = self.connector

    def fresh(self, host="192.0.2.10"):
        from gateway_oscar.protocol import OscarServerProtocol
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = OscarServerProtocol(self.connector)
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 40000)))
        return protocol

    def logged_in(self):
        from gateway_oscar import codec
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        login = self.fresh()
        login.dataReceived(_oscar_login_frames()[0])
        frames, _ = codec.split_flaps(login.transport.value())
        login.connectionLost(Failure(ConnectionDone()))
        cookie = codec.first_tlv(codec.parse_tlvs(frames[-1][2]), 6) if frames else None
        if cookie is None:
            raise Defect(f"the harness could not log in: {frames!r}")
        bos = self.fresh()
        bos.dataReceived(codec.encode_flap(1, 1, codec.FLAP_VERSION + codec.encode_tlvs([(0x0006, cookie)]))
                         + codec.encode_snac_flap(2, 1, 0x17, b"\x00\x01\x00\x03\x00\x13\x00\x03\x00\x02\x00\x01"
                                                  b"\x00\x03\x00\x01\x00\x04\x00\x01")
                         + codec.encode_snac_flap(3, 1, 0x06) + codec.encode_snac_flap(4, 1, 0x08, b"\x00\x01"))
        bos.transport.clear()
        return bos


@machine("sametime", seeds=[])
class SametimeConnections(Machine):
    handles = (("sametime", ""),)

    def setup(self):
        from gateway_sametime.connector import SametimeConnector

        self.make_core()
        self.connector = SametimeConnector(self.core.api, {"listen": []})
        self.core.connectors["sametime"] = self.connector
        self.count = 0

    def _client(self):
        from tests.sametime.client import Client

        self.count += 1
        return Client(self.connector, seed=self.count)

    def fresh(self):
        return self._client().protocol

    def logged_in(self):
        client = self._client()
        client.login("alice")
        if client.protocol.session is None:
            raise Defect(f"the harness could not log in: {client.inbox!r}")
        client.transport.clear()
        return client.protocol


def _sametime_seeds():
    """What tests/sametime's libpurple-like client sends to log in and say hello."""
    from gateway_sametime import codec

    seeds = []
    for logged_in in (False, True):
        machine = SametimeConnections()
        client = machine._client()
        sent = []
        real = client.protocol.dataReceived

        def record(data, real=real):
            sent.append(data)
            return real(data)

        client.protocol.dataReceived = record
        if not logged_in:
            client.login("alice")
            sent_login = b"".join(sent)
            seeds.append(b"\x00" + sent_login)
            seeds.append(b"\x00" + codec.frame(codec.Handshake()))
        else:
            client.login("alice")
            del sent[:]
            client.auto_accept = True
            cid = client.open_im("bob")
            client.say(cid, "hi")
            seeds.append(b"\x01" + b"".join(sent))
    return seeds


SEEDS["sametime"] = _LazySeeds(_sametime_seeds)


class _Sip(Machine):
    handles = (("sip", "@localhost"),)

    def setup(self):
        from tests.sip.clients import Setup

        self.sip_setup = Setup(users=("alice", "bob"))
        self.core = self.sip_setup.core
        self.clock = self.sip_setup.clock
        self.count = 0


@machine("sip-tcp", seeds=[b"\x00" + SIP_REGISTER + SIP_MESSAGE, b"\x01" + SIP_MESSAGE,
                           b"\x01" + SIP_MESSAGE.replace(b"MESSAGE", b"SUBSCRIBE", 1)])
class SipStreams(_Sip):
    def _client(self, user="nobody"):
        from tests.sip.clients import TcpClient

        self.count += 1
        return TcpClient(self.sip_setup, user, port=20000 + self.count % 20000)

    def fresh(self):
        return self._client().protocol

    def logged_in(self):
        client = self._client("alice")
        response = client.register(password="secret")
        if response.status != 200:
            raise Defect(f"the harness could not register: {response!r}")
        client.transport.clear()
        return client.protocol


@target("sip-udp", seeds=[b"\x00" + SIP_REGISTER.replace(b"TCP", b"UDP"),
                          b"\x01" + SIP_MESSAGE.replace(b"TCP", b"UDP")])
def sip_udp():
    machine = _Sip()

    def one(data):
        if not data:
            return
        port = 30000 + data[0]
        for datagram in data[1:].split(b"\0\0\0\0"):
            machine.sip_setup.udp.datagramReceived(datagram, ("127.0.0.1", port))
        machine.sip_setup.udp_transport.written.clear()
        machine.check(data)

    return one


@machine("line", seeds=[b"\x00LOGIN alice secret\nMSG line:bob hi\nPRESENCE away\nQUIT\n",
                        b"\x01MSG line:bob hello\nMSG xmpp:bob@localhost hi\n\n\n"])
class LineConnections(Machine):
    """The example plugin's line protocol, the one third parties copy."""

    handles = (("line", ""),)

    def setup(self):
        from gateway_example.line import LineConnector

        self.make_core()
        self.connector = LineConnector(self.core.api, {"listen": [], "idle_timeout": 30})
        self.core.connectors[self.connector.name] = self.connector

    def fresh(self):
        from gateway_example.line import LineProtocol
        from twisted.internet.testing import StringTransport

        protocol = LineProtocol(self.connector)
        protocol.makeConnection(StringTransport())
        return protocol

    def logged_in(self):
        protocol = self.fresh()
        protocol.dataReceived(b"LOGIN alice secret\n")
        if protocol.session is None:
            raise Defect(f"the harness could not log in: {protocol.transport.value()!r}")
        protocol.transport.clear()
        return protocol

