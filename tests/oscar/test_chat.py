"""OSCAR chat rooms (families 0x0D and 0x0E) on the gateway's rooms: wire-exact where it matters, and bad input."""

import struct

from twisted.trial import unittest

from gateway.model import Address

from gateway_oscar import chat, codec
from gateway_oscar.codec import encode_tlv, encode_tlvs, first_tlv, u16

from tests.oscar.test_protocol import Base
from tests.oscar.wire import Wire, online


def redirect_tlvs(body):
    """The TLVs of a 01/05, read as libpurple reads them (from the first byte)."""
    return codec.parse_tlvs(body)


def room_info(name, exchange=4):
    cookie = chat.room_cookie(name, exchange)
    return u16(exchange) + bytes((len(cookie),)) + cookie + u16(0)


def chat_message(text):
    inner = encode_tlvs([(0x0001, text.encode()), (0x0002, b"us-ascii"), (0x0003, b"en")])
    return b"F080D\x00c\x00" + u16(3) + encode_tlv(1, b"") + encode_tlv(6, b"") + encode_tlv(5, inner)


class ChatTestCase(Base):
    def service(self, bos, family, extra=b""):
        """Ask BOS for ``family``'s service; the connection it redirects to, signed on and ready, or the error SNAC."""
        request = bos.snac(1, 0x04, u16(family) + extra)
        [answer] = [s for s in bos.snacs() if s.request_id == request]
        if answer.subtype != 0x05:
            return answer
        tlvs = redirect_tlvs(answer.body)
        self.assertEqual(first_tlv(tlvs, 0x000D), u16(family))
        self.assertEqual(first_tlv(tlvs, 0x0005), b"127.0.0.1")  # OSCAR's own port is not named
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION + encode_tlvs([(0x0006, first_tlv(tlvs, 0x0006))]))
        [families] = wire.snacs()
        self.assertEqual((families.subtype, families.body), (0x03, u16(1) + u16(family)))
        wire.snac(1, 0x17, u16(1) + u16(3) + u16(family) + u16(1))
        wire.snac(1, 0x06)
        wire.snac(1, 0x08, b"\x00\x01")
        wire.snacs()
        return wire

    def join(self, bos, name):
        wire = self.service(bos, 0x0E, encode_tlv(1, room_info(name)))
        if isinstance(wire, Wire):
            wire.snac(1, 0x02, b"")
        return wire


class NavigationTests(ChatTestCase):
    def test_the_redirect_reads_the_same_from_the_first_or_the_third_byte(self):
        body = chat.encode_redirect(0x0E, "127.0.0.1:5190", b"c" * 32)
        for start in (0, 2):
            tlvs = codec.parse_tlvs(body[start:])
            self.assertEqual((first_tlv(tlvs, 0x0D), first_tlv(tlvs, 5), first_tlv(tlvs, 6)),
                             (u16(0x0E), b"127.0.0.1:5190", b"c" * 32))

    def test_create_and_look_up_a_room(self):
        bos = online(self.connector, "alice")
        nav = self.service(bos, 0x0D)
        rights = nav.snac(0x0D, 0x02)
        [answer] = nav.snacs()
        self.assertEqual((answer.subtype, answer.request_id), (0x09, rights))
        create = (u16(4) + b"\x06create" + u16(0xFFFF) + b"\x01" + u16(3)
                  + encode_tlvs([(0xD7, b"en"), (0xD6, b"us-ascii"), (0xD3, b"Team Room")]))
        nav.snac(0x0D, 0x08, create)
        [made] = nav.snacs()
        block = first_tlv(codec.parse_tlvs(made.body), 0x0004)
        exchange, length = struct.unpack("!HB", block[:3])
        self.assertEqual((exchange, block[3:3 + length]), (4, b"!aol://2719:10-4-Team Room"))  # as the client named it; the room is team-room
        nav.snac(0x0D, 0x04, room_info("team-room") + b"\x02")
        [info] = nav.snacs()
        self.assertEqual(info.subtype, 0x09)
        # A name that cannot name a room is refused.
        nav.snac(0x0D, 0x08, u16(4) + b"\x06create" + u16(0xFFFF) + b"\x01" + u16(1) + encode_tlvs([(0xD3, b"a/b")]))
        [error] = nav.snacs()
        self.assertEqual(error.subtype, 0x01)

    def test_a_service_cookie_opens_one_connection_once(self):
        bos = online(self.connector, "alice")
        request = bos.snac(1, 0x04, u16(0x0D))
        [answer] = [s for s in bos.snacs() if s.request_id == request]
        cookie = first_tlv(redirect_tlvs(answer.body), 6)
        first = Wire(self.connector)
        first.send(1, codec.FLAP_VERSION + encode_tlvs([(6, cookie)]))
        second = Wire(self.connector)
        second.send(1, codec.FLAP_VERSION + encode_tlvs([(6, cookie)]))
        self.assertFalse(first.closed)
        self.assertTrue(second.closed)


class RoomTests(ChatTestCase):
    def test_two_aim_users_and_a_line_of_another_network_share_a_room(self):
        alice, bob = online(self.connector, "alice"), online(self.connector, "bob")
        room_a = self.join(alice, "lobby")
        shown = room_a.snacs()
        self.assertEqual([(s.family, s.subtype) for s in shown], [(0x0E, 0x03), (0x0E, 0x02)])
        self.assertEqual(codec.parse_user_info(codec.Reader(shown[0].body, "t"))[0], b"alice")
        room_b = self.join(bob, "lobby")
        members = room_b.snacs()[0]
        r = codec.Reader(members.body, "t")
        self.assertEqual([codec.parse_user_info(r)[0] for _ in range(2)], [b"alice", b"bob"])
        [arrived] = room_a.snacs()
        self.assertEqual((arrived.subtype, codec.parse_user_info(codec.Reader(arrived.body, "t"))[0]),
                         (0x03, b"bob"))
        # Someone on another network joins through the facade: both AIM users see them come.
        session = self.successResultOf(self.memory.login(self.carol, Address.parse("mem:carol")))
        self.successResultOf(self.core.api.join_room(session, "lobby", "carol"))
        for wire in (room_a, room_b):
            self.assertEqual([s.subtype for s in wire.snacs()], [0x03])

        room_a.snac(0x0E, 0x05, chat_message("hello room"))
        for wire in (room_a, room_b):
            [said] = wire.snacs()
            self.assertEqual(said.subtype, 0x06)
            # As Twisted 15.4 reads it: the sender after 14 bytes, the text's TLVs 8 bytes after that.
            self.assertEqual(codec.parse_user_info(codec.Reader(said.body[14:], "t"))[0], b"alice")
            self.assertIn(b"hello room", said.body)
        [message] = [e for e in self.core.archive.events("chat") if e.action == "message"]
        self.assertEqual((str(message.sender), message.nick, message.members),
                         ("aim:alice", "alice", ("aim:alice", "aim:bob", "mem:carol")))
        got = [e for e in self.memory.received(session) if e.kind == "chat" and e.action == "message"]
        self.assertEqual([e.text for e in got], ["hello room"])

        # Closing the room's connection leaves the room; the others see it.
        room_b.protocol.connectionLost(None)
        [left] = room_a.snacs()
        self.assertEqual((left.subtype, codec.parse_user_info(codec.Reader(left.body, "t"))[0]), (0x04, b"bob"))
        self.assertEqual([m["nick"] for m in self.core.api.room("lobby")["members"]], ["alice", "carol"])
        # Signing off BOS ends the room's connection and leaves the room.
        alice.protocol.connectionLost(None)
        self.assertTrue(room_a.closed)
        self.assertEqual([m["nick"] for m in self.core.api.room("lobby")["members"]], ["carol"])

    def test_a_refused_join_is_the_service_error_and_archived(self):
        self.core.rooms.config = self.core.config.rooms.__class__(ad_hoc=False)
        alice = online(self.connector, "alice")
        error = self.join(alice, "nowhere")
        self.assertEqual((error.family, error.subtype), (0x01, 0x01))
        [join] = self.core.archive.events("chat")
        self.assertEqual((join.action, self.core.archive.status(join.id)), ("join", "rejected"))

    def test_a_message_outside_a_room_connection_closes_that_connection(self):
        alice = online(self.connector, "alice")
        nav = self.service(alice, 0x0D)
        nav.snac(0x0E, 0x05, chat_message("sneaky"))
        self.assertTrue(nav.closed)
        self.assertEqual(self.core.archive.events("chat"), [])

    def test_a_join_whose_connection_never_comes_is_left(self):
        alice = online(self.connector, "alice")
        request = alice.snac(1, 0x04, u16(0x0E) + encode_tlv(1, room_info("lobby")))
        [answer] = [s for s in alice.snacs() if s.request_id == request]
        self.assertEqual(answer.subtype, 0x05)
        self.assertEqual(len(self.core.api.room("lobby")["members"]), 1)
        self.clock.advance(chat.CONNECT_TIMEOUT)
        self.assertIsNone(self.core.api.room("lobby"))


class CodecTests(unittest.TestCase):
    def test_a_redirect_names_a_port_only_when_it_is_not_5190(self):
        self.assertEqual(chat.redirect_host("10.0.0.1:5190"), "10.0.0.1")
        self.assertEqual(chat.redirect_host("10.0.0.1:5191"), "10.0.0.1:5191")

    def test_room_block_as_twisted_reads_it(self):
        block = chat.encode_room_block("Team Room", 1_700_000_000)
        exchange, length = struct.unpack("!HB", block[:3])
        full = block[3:3 + length]
        instance = struct.unpack("!H", block[3 + length:5 + length])[0]
        tlvs = codec.parse_tlvs(block[8 + length:])
        self.assertEqual((exchange, full, instance, first_tlv(tlvs, 0x6A), first_tlv(tlvs, 0xD3)),
                         (4, b"!aol://2719:10-4-Team Room", 0, b"Team Room", b"Team Room"))

    def test_room_keys(self):
        self.assertEqual(chat.room_key("  Team  Room "), "team-room")

    def test_room_request_split_at_every_byte_is_refused_not_crashed(self):
        data = room_info("lobby") + b"\x02"
        for cut in range(len(data)):
            try:
                chat.parse_room_request(data[:cut])
            except codec.OscarCodecError:
                pass
