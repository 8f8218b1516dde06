"""A test-side OSCAR client over StringTransport: sends frames to a server protocol and reads its answers."""

from twisted.internet.testing import StringTransport

from gateway_oscar import codec
from gateway_oscar.codec import encode_tlvs, first_tlv, u16


class Wire:
    """One connection to an `OscarServerProtocol`, driven by hand."""

    def __init__(self, connector, peer_port=40000, host="192.0.2.10"):
        from twisted.internet.address import IPv4Address

        from gateway_oscar.protocol import OscarServerProtocol

        self.protocol = OscarServerProtocol(connector)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, peer_port))
        self.protocol.makeConnection(self.transport)
        self.seq = 0
        self.request = 0
        self.pending = b""

    def send_raw(self, data):
        self.protocol.dataReceived(data)

    def send(self, channel, payload=b""):
        self.seq += 1
        self.send_raw(codec.encode_flap(channel, self.seq, payload))

    def snac(self, family, subtype, body=b"", request_id=None):
        if request_id is None:
            self.request += 1
            request_id = self.request
        self.send(2, codec.encode_snac(family, subtype, body, 0, request_id))
        return request_id

    def frames(self):
        """Every complete frame the server wrote since the last call."""
        self.pending += self.transport.value()
        self.transport.clear()
        frames, self.pending = codec.parse_flaps(self.pending)
        return frames

    def snacs(self):
        return [codec.parse_snac(f.payload) for f in self.frames() if f.channel == 2]

    @property
    def closed(self):
        return self.transport.disconnecting


def roasted_signon(name, password, extra=()):
    return codec.FLAP_VERSION + encode_tlvs(
        [(0x0001, name.encode()), (0x0002, codec.roast(password.encode())),
         (0x0003, b"test client"), *extra]
    )


def login_roasted(connector, name, password="secret", host="192.0.2.10"):
    """Roasted login on a fresh connection from ``host``: (wire, ch4 TLVs)."""
    wire = Wire(connector, host=host)
    hello = wire.frames()
    assert hello[0].channel == 1 and hello[0].payload == codec.FLAP_VERSION, hello
    wire.send(1, roasted_signon(name, password))
    frames = wire.frames()
    assert frames and frames[-1].channel == 4, frames
    return wire, codec.parse_tlvs(frames[-1].payload)


def sign_on_bos(connector, cookie, families=((1, 3), (0x13, 3), (2, 1), (3, 1), (4, 1))):
    """BOS sign-on with ``cookie`` up to the rate ack; returns the wire."""
    wire = Wire(connector)
    wire.frames()
    wire.send(1, codec.FLAP_VERSION + encode_tlvs([(0x0006, cookie)]))
    wire.snac(1, 0x17, b"".join(u16(f) + u16(v) for f, v in families))
    wire.snac(1, 0x06)
    wire.snac(1, 0x08, b"\x00\x01\x00\x02\x00\x03")
    wire.snacs()
    return wire


def online(connector, name, password="secret"):
    """A client signed on and online (01/02 sent); returns the BOS wire."""
    _, tlvs = login_roasted(connector, name, password)
    cookie = first_tlv(tlvs, 6)
    assert cookie is not None, tlvs
    wire = sign_on_bos(connector, cookie)
    wire.snac(1, 0x02, b"\x00\x01\x00\x03\x01\x10\x05\x9b")
    return wire


def im_body(to, text_part, cookie=b"12345678", ack=False):
    tlv2 = codec.encode_message_fragments([text_part])
    tlvs = [(0x0002, tlv2)] + ([(0x0003, b"")] if ack else [])
    return cookie + u16(1) + bytes((len(to),)) + to + encode_tlvs(tlvs)


def received_ims(snacs):
    """(sender, text bytes, charset, TLVs) of every 04/07 in ``snacs``."""
    out = []
    for s in snacs:
        if (s.family, s.subtype) == (4, 7):
            icbm = codec.parse_icbm_receive(s.body)
            parts = codec.text_parts(icbm.tlv(2))
            out.append((icbm.screen_name, parts[0].data, parts[0].charset, icbm.tlvs))
    return out
