"""The OSCAR server protocol and connector on StringTransport and task.Clock, wire-exact."""

import hashlib

from hypothesis import given, settings, strategies as st

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from gateway.config import ConfigError
from gateway.model import Address, Contact, Message, PresenceStatus
from gateway.testing import ConnectorConformanceMixin, MemoryConnector, MemoryDirectory, make_core

from gateway_oscar import adapter, codec
from gateway_oscar.codec import encode_tlvs, first_tlv, u16
from gateway_oscar.connector import OscarConnector

from tests.oscar.wire import Wire, im_body, login_roasted, online, received_ims, sign_on_bos


class Base(unittest.TestCase):
    options = {"listen": [], "bos_address": "127.0.0.1:5190"}

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.directory = MemoryDirectory()
        self.alice = self.directory.add("alice", "aim:alice", "icq:100001", "mem:alice")
        self.bob = self.directory.add("bob", "aim:bob", "icq:100002", "mem:bob")
        self.carol = self.directory.add("carol", "mem:carol")
        self.core = make_core(directory=self.directory, clock=self.clock)
        self.connector = OscarConnector(self.core.api, dict(self.options))
        self.memory = MemoryConnector(self.core.api, networks=("mem",))
        self.core.connectors["oscar"] = self.connector
        self.core.connectors["memory"] = self.memory


class ConfigTests(Base):
    def test_defaults(self):
        c = OscarConnector(self.core.api, {})
        self.assertEqual(c.listen, ["tcp:5190:interface=127.0.0.1"])
        self.assertEqual(c.bos_address, "127.0.0.1:5190")

    def test_bad_keys_and_values(self):
        for config, key in [
            ({"lisen": []}, "lisen"),
            ({"bos_address": "nohost"}, "bos_address"),
            ({"idle_timeout": 0}, "idle_timeout"),
            ({"max_frame": 70000}, "max_frame"),
            ({"rate_classes": [{"id": 1}]}, "rate_classes"),
            ({"listen": "tcp:5190"}, "listen"),
        ]:
            e = self.assertRaises(ConfigError, OscarConnector, self.core.api, config)
            self.assertIn(key, str(e))


def only_oscar_plugins():
    """The installed entry points with every other plugin disabled (they are not under test here)."""
    import importlib.metadata

    from gateway.plugins import Plugins

    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"oscar"}
    plugins = Plugins(disabled=others)
    plugins.load_entry_points()
    return plugins


class EntryPointTests(unittest.TestCase):
    def test_loaded_like_a_third_party_plugin(self):
        plugins = only_oscar_plugins()
        self.assertEqual(plugins.loaded["oscar"], "distribution gateway-oscar 0.1.0")
        core = make_core('[connectors.oscar]\nlisten = []\n[connectors.oscar-proxy]\nlisten = []\n'
                         'upstream = "127.0.0.1:5190"\n', plugins=plugins)
        connectors = core.start_plugins()
        self.assertEqual(sorted(c.name for c in connectors), ["oscar", "oscar-proxy"])

    def test_a_wrong_key_names_itself(self):
        plugins = only_oscar_plugins()
        core = make_core("[connectors.oscar]\nlisten = []\nidle_timout = 5\n", plugins=plugins)
        e = self.assertRaises(ConfigError, core.start_plugins)
        self.assertIn("idle_timout", str(e))
        self.assertIn("connectors.oscar", str(e))


class RoastedLoginTests(Base):
    def test_aim_login_reply_then_close(self):
        wire, tlvs = login_roasted(self.connector, "Alice")
        self.assertEqual([t for t, _ in tlvs], [1, 5, 6])  # TLV 1 first: Twisted's ICQ mode needs it
        self.assertEqual(first_tlv(tlvs, 1), b"Alice")
        self.assertEqual(first_tlv(tlvs, 5), b"127.0.0.1:5190")
        self.assertEqual(len(first_tlv(tlvs, 6)), 32)
        self.assertTrue(wire.closed)

    def test_icq_login(self):
        _, tlvs = login_roasted(self.connector, "100001")
        ticket = self.connector.take_cookie(first_tlv(tlvs, 6))
        self.assertEqual(ticket.address, Address("icq", "100001"))
        self.assertEqual(ticket.identity.id, "alice")

    def test_wrong_password_unknown_user_and_throttle(self):
        _, tlvs = login_roasted(self.connector, "alice", "nope")
        self.assertEqual(first_tlv(tlvs, 8), u16(adapter.LOGIN_BAD_PASSWORD))
        self.assertIsNotNone(first_tlv(tlvs, 4))  # Twisted 15.4 reads the URL of every error
        _, tlvs = login_roasted(self.connector, "nobody", "x")
        self.assertEqual(first_tlv(tlvs, 8), u16(adapter.LOGIN_INVALID_ACCOUNT))
        _, tlvs = login_roasted(self.connector, "999999", "x")
        self.assertEqual(first_tlv(tlvs, 8), u16(adapter.LOGIN_NO_SUCH_ICQ))
        for _ in range(4):
            login_roasted(self.connector, "alice", "nope")
        _, tlvs = login_roasted(self.connector, "alice", "secret")
        self.assertEqual(first_tlv(tlvs, 8), u16(adapter.LOGIN_TOO_FAST))
        self.clock.advance(301)
        _, tlvs = login_roasted(self.connector, "alice", "secret")
        self.assertIsNotNone(first_tlv(tlvs, 6))

    def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(self):
        for _ in range(5):
            login_roasted(self.connector, "alice", "nope", host="198.51.100.7")
        _, tlvs = login_roasted(self.connector, "alice", "secret", host="198.51.100.7")
        self.assertEqual(first_tlv(tlvs, 8), u16(adapter.LOGIN_TOO_FAST))
        _, tlvs = login_roasted(self.connector, "alice", "secret", host="192.0.2.44")
        self.assertIsNotNone(first_tlv(tlvs, 6))  # a cookie: logged in from her own address
        failed = [(e.source, e.text) for e in self.core.archive.events("access") if e.action == "login-failed"]
        self.assertEqual(failed[0], ("198.51.100.7", "wrong password or no such user"))
        self.assertIn(("198.51.100.7", "too many failed logins"), failed)

    def test_cookie_is_single_use_and_expires(self):
        _, tlvs = login_roasted(self.connector, "alice")
        cookie = first_tlv(tlvs, 6)
        self.assertIsNotNone(self.connector.take_cookie(cookie))
        self.assertIsNone(self.connector.take_cookie(cookie))
        _, tlvs = login_roasted(self.connector, "alice")
        self.clock.advance(121)
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION + encode_tlvs([(6, first_tlv(tlvs, 6))]))
        frames = wire.frames()
        self.assertEqual(frames[-1].channel, 4)
        self.assertTrue(wire.closed)


class PlacementTests(Base):
    """In a cluster: the login reply names another node's BOS, with a ticket that node takes once."""

    def test_a_login_placed_elsewhere_gets_that_bos_and_a_shared_ticket(self):
        self.core.placement = lambda connector: connector == "oscar" and "127.0.0.1:5290" or None
        _, tlvs = login_roasted(self.connector, "alice")
        self.assertEqual(first_tlv(tlvs, 5), b"127.0.0.1:5290")
        cookie = first_tlv(tlvs, 6)
        self.assertEqual(len(cookie), 32)
        self.assertIsNone(self.connector.take_cookie(cookie))  # not this node's own cookie
        # The node it names (here the same core stands in for it) signs the client on with it, once.
        wire = sign_on_bos(self.connector, cookie)
        wire.snac(1, 0x02, b"\x00\x01\x00\x03\x01\x10\x05\x9b")
        [session] = self.core.sessions.sessions_of("alice")
        self.assertEqual((session.address, session.connector), (Address("aim", "alice"), "oscar"))
        again = Wire(self.connector)
        again.frames()
        again.send(1, codec.FLAP_VERSION + encode_tlvs([(6, cookie)]))
        self.assertEqual(again.frames()[-1].channel, 4)
        self.assertTrue(again.closed)

    def test_no_placement_keeps_the_login_here(self):
        self.core.placement = lambda connector: None
        _, tlvs = login_roasted(self.connector, "alice")
        self.assertEqual(first_tlv(tlvs, 5), b"127.0.0.1:5190")
        self.assertIsNotNone(self.connector.take_cookie(first_tlv(tlvs, 6)))

    def test_a_ticket_that_cannot_be_shared_leaves_the_login_here(self):
        from twisted.internet import defer

        self.core.placement = lambda connector: "127.0.0.1:5290"
        self.core.tickets.share = lambda connector, data, ttl: defer.fail(ConnectionError("Redis is unreachable"))
        _, tlvs = login_roasted(self.connector, "alice")
        self.assertEqual(first_tlv(tlvs, 5), b"127.0.0.1:5190")
        self.assertIsNotNone(self.connector.take_cookie(first_tlv(tlvs, 6)))

    def test_a_ticket_whose_person_changed_is_refused(self):
        self.core.placement = lambda connector: "127.0.0.1:5290"
        _, tlvs = login_roasted(self.connector, "alice")
        self.directory.people.pop("alice")  # removed from the directory meanwhile
        self.directory.invalidate()
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION + encode_tlvs([(6, first_tlv(tlvs, 6))]))
        self.assertTrue(wire.closed)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])


class BucpLoginTests(Base):
    def _start(self, name=b"alice"):
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION)
        wire.snac(0x17, 0x06, encode_tlvs([(1, name), (0x4B, b"")]), request_id=0)
        return wire

    def test_strong_md5_login(self):
        wire = self._start()
        (key_snac,) = wire.snacs()
        self.assertEqual((key_snac.family, key_snac.subtype, key_snac.request_id), (0x17, 0x07, 0))
        key = key_snac.body[2:]
        self.assertEqual(len(key), int.from_bytes(key_snac.body[:2], "big"))
        digest = codec.bucp_hash(key, hashlib.md5(b"secret").digest())
        wire.snac(0x17, 0x02, encode_tlvs([(1, b"alice"), (0x25, digest), (0x4C, b"")]), request_id=0)
        (reply,) = wire.snacs()
        self.assertEqual((reply.family, reply.subtype), (0x17, 0x03))
        tlvs = codec.parse_tlvs(reply.body)
        self.assertEqual(first_tlv(tlvs, 5), b"127.0.0.1:5190")
        self.assertIsNotNone(first_tlv(tlvs, 6))
        self.assertTrue(wire.closed)

    def test_wrong_hash_and_unknown_user(self):
        wire = self._start()
        wire.snacs()
        wire.snac(0x17, 0x02, encode_tlvs([(1, b"alice"), (0x25, b"\x00" * 16), (0x4C, b"")]))
        (reply,) = wire.snacs()
        self.assertEqual(first_tlv(codec.parse_tlvs(reply.body), 8), u16(adapter.LOGIN_BAD_PASSWORD))
        wire = self._start(b"nobody")
        (reply,) = wire.snacs()
        self.assertEqual((reply.subtype, first_tlv(codec.parse_tlvs(reply.body), 8)), (3, u16(1)))
        self.assertTrue(wire.closed)

    def test_no_secret_known_yet_fails_at_the_hash_not_at_the_key(self):
        # A person whose MD5 secret is unknown (e.g. LDAP, before any login that sent the password)
        # still gets a key, as clients expect one, and then the bad-password answer.
        self.directory.passwords["alice"] = None
        wire = self._start()
        (key_snac,) = wire.snacs()
        self.assertEqual((key_snac.family, key_snac.subtype), (0x17, 0x07))
        key = key_snac.body[2:]
        digest = codec.bucp_hash(key, hashlib.md5(b"secret").digest())
        wire.snac(0x17, 0x02, encode_tlvs([(1, b"alice"), (0x25, digest), (0x4C, b"")]), request_id=0)
        (reply,) = wire.snacs()
        self.assertEqual((reply.subtype, first_tlv(codec.parse_tlvs(reply.body), 8)),
                         (3, u16(adapter.LOGIN_BAD_PASSWORD)))
        self.assertTrue(wire.closed)

    def test_snac_out_of_state_closes(self):
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION)
        wire.snac(0x04, 0x06, b"")
        frames = wire.frames()
        self.assertEqual(frames[-1].channel, 4)
        self.assertIn(b"before login", first_tlv(codec.parse_tlvs(frames[-1].payload), 0x0B))
        self.assertTrue(wire.closed)


class BosTests(Base):
    def test_sign_on_sequence(self):
        _, tlvs = login_roasted(self.connector, "alice")
        wire = Wire(self.connector)
        (hello,) = wire.frames()
        self.assertEqual(hello.to_bytes()[:2], b"\x2a\x01")
        wire.send(1, codec.FLAP_VERSION + encode_tlvs([(6, first_tlv(tlvs, 6))]))
        (host_online,) = wire.snacs()
        self.assertEqual((host_online.family, host_online.subtype), (1, 3))
        self.assertEqual(host_online.body, bytes.fromhex("000100020003000400090013"))
        request = wire.snac(1, 0x17, bytes.fromhex("00010003001300030002000100990001"))
        (versions,) = wire.snacs()
        self.assertEqual((versions.subtype, versions.request_id), (0x18, request))
        self.assertEqual(versions.body, bytes.fromhex("000100040013000400020001"))
        wire.snac(1, 0x06)
        (rates,) = wire.snacs()
        classes = codec.parse_rate_info(rates.body, with_state=True)
        self.assertEqual([c.id for c in classes], [1, 2, 3])
        self.assertIn((4, 6), classes[1].pairs)
        for family, subtype, answer in [(1, 0x0E, 0x0F), (2, 2, 3), (3, 2, 3), (4, 4, 5), (9, 2, 3), (0x13, 2, 3)]:
            request = wire.snac(family, subtype)
            (reply,) = wire.snacs()
            self.assertEqual((reply.family, reply.subtype, reply.request_id), (family, answer, request))
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        wire.snac(1, 2)
        (session,) = self.core.sessions.sessions_of("alice")
        self.assertEqual(session.address, Address("aim", "alice"))

    def test_ssi_load_has_root_group_first_and_alias(self):
        self.directory.set_contacts("alice", [Contact("aim:bob", "Friends", "Bob B"), Contact("mem:carol")])
        wire = online(self.connector, "alice")
        wire.snacs()
        request = wire.snac(0x13, 0x05, b"\x00\x00\x00\x00\x00\x00")
        (reply,) = wire.snacs()
        self.assertEqual((reply.subtype, reply.request_id), (6, request))
        version, items, stamp = codec.parse_ssi_list(reply.body)
        self.assertNotEqual(stamp, 0)
        self.assertEqual([(i.name, i.gid, i.bid, i.kind) for i in items], [
            (b"", 0, 0, 1), (b"Friends", 1, 0, 1), (b"Buddies", 2, 0, 1),
            (b"bob", 1, 1, 0), (b"mem.carol", 2, 2, 0),  # carol has no AIM handle: a stable alias
        ])
        self.assertEqual(items[0].tlv(0xC8), bytes.fromhex("00010002"))
        self.assertEqual(items[3].tlv(0x131), b"Bob B")

    def test_long_ssi_list_comes_in_parts(self):
        self.directory.set_contacts("alice", [Contact(f"aim:buddy{i:03d}", name="x" * 60) for i in range(300)])
        wire = online(self.connector, "alice")
        wire.snacs()
        request = wire.snac(0x13, 0x04)
        replies = wire.snacs()
        self.assertGreater(len(replies), 1)
        items = []
        for i, reply in enumerate(replies):
            _, part, stamp = codec.parse_ssi_list(reply.body)
            last = i == len(replies) - 1
            self.assertEqual((reply.request_id, reply.flags & 1, stamp == 0), (request, 0 if last else 1, not last))
            self.assertLess(len(reply.body), 8000)
            items += part
        self.assertEqual(len([i for i in items if i.kind == 0]), 300)
        self.assertEqual((items[0].gid, items[0].kind), (0, 1))

    def test_ssi_add_updates_directory_and_tells_presence(self):
        bob = online(self.connector, "bob")
        wire = online(self.connector, "alice")
        wire.snacs()
        wire.snac(0x13, 0x05, b"\x00" * 6)
        wire.snacs()
        group = codec.encode_ssi_item(codec.SsiItem(b"Pals", 5, 0, 1, ((0xC8, b"\x00\x09"),)))
        buddy = codec.encode_ssi_item(codec.SsiItem(b"Bob", 5, 9, 0, ()))
        wire.snac(0x13, 0x11)
        r1 = wire.snac(0x13, 0x08, group)
        r2 = wire.snac(0x13, 0x08, buddy)
        wire.snac(0x13, 0x12)
        snacs = wire.snacs()
        acks = [(s.subtype, s.request_id, s.body) for s in snacs if s.family == 0x13]
        self.assertEqual(acks, [(0x0E, r1, b"\x00\x00"), (0x0E, r2, b"\x00\x00")])
        updates = [s for s in snacs if (s.family, s.subtype) == (3, 0x0B)]
        self.assertEqual(updates[0].body[:4], b"\x03bob")
        contacts = self.successResultOf(self.directory.contacts("alice"))
        self.assertIn(Contact("aim:bob", "Pals", ""), contacts)
        # delete it again
        wire.snac(0x13, 0x0A, buddy)
        self.assertEqual(wire.snacs()[0].body, b"\x00\x00")
        self.assertNotIn(Address("aim", "bob"), [c.address for c in self.successResultOf(self.directory.contacts("alice"))])
        self.assertFalse(bob.closed)

    def test_buddy_added_while_the_session_starts_gets_presence_once_it_has(self):
        bob = online(self.connector, "bob")
        real_login, held = self.core.api.login, []

        def slow_login(*args, **kwargs):
            # The core has set the session up (and looked at the contact list) before the connector hears of it.
            answer = Deferred()
            real_login(*args, **kwargs).addCallback(lambda session: held.append((answer, session)))
            return answer

        self.core.api.login = slow_login
        wire = online(self.connector, "alice")  # 01/02 sent: the session is being set up
        wire.snacs()
        r = wire.snac(0x13, 0x08, codec.encode_ssi_item(codec.SsiItem(b"Bob", 1, 9, 0, ())))
        self.assertEqual([(s.family, s.subtype, s.request_id) for s in wire.snacs()], [(0x13, 0x0E, r)])
        (answer, session), = held
        answer.callback(session)
        updates = [s for s in wire.snacs() if (s.family, s.subtype) == (3, 0x0B)]
        self.assertIn(b"\x03bob", [u.body[:4] for u in updates])
        self.assertFalse(bob.closed)

    def test_unknown_snac_gets_error_and_connection_stays(self):
        wire = online(self.connector, "alice")
        wire.snacs()
        request = wire.snac(0x0F, 0x02)
        (reply,) = wire.snacs()
        self.assertEqual((reply.family, reply.subtype, reply.request_id, reply.body), (0x0F, 1, request, u16(8)))
        self.assertFalse(wire.closed)

    def test_login_snac_on_bos_closes_only_this_connection(self):
        bob = online(self.connector, "bob")
        wire = online(self.connector, "alice")
        wire.snac(0x17, 0x06, b"")
        self.assertTrue(wire.closed)
        self.assertFalse(bob.closed)


class PresenceAndImTests(Base):
    def setUp(self):
        super().setUp()
        self.directory.set_contacts("alice", [Contact("aim:bob")])
        self.directory.set_contacts("bob", [Contact("aim:alice")])

    def test_arrival_departure(self):
        alice = online(self.connector, "alice")
        alice.snacs()
        bob = online(self.connector, "bob")
        (arrival,) = [s for s in alice.snacs() if s.family == 3]
        self.assertEqual(arrival.subtype, 0x0B)
        self.assertTrue(arrival.request_id & 0x80000000)
        self.assertEqual(arrival.body[:8], b"\x03bob\x00\x00\x00\x02")  # name, warning, 2 TLVs
        tlvs = codec.Reader(arrival.body[8:]).tlvs()
        self.assertEqual(first_tlv(tlvs, 1), u16(adapter.CLASS_AIM))
        (alice_seen,) = [s for s in bob.snacs() if s.family == 3]  # bob is told alice is on at login
        self.assertEqual(alice_seen.body[:6], b"\x05alice")
        # away, then departure
        bob.snac(2, 4, encode_tlvs([(3, b"text/aolrtf"), (4, b"<HTML>lunch</HTML>")]))
        (away,) = [s for s in alice.snacs() if s.family == 3]
        tlvs = codec.Reader(away.body[8:]).tlvs()
        self.assertEqual(first_tlv(tlvs, 1), u16(adapter.CLASS_AIM | adapter.CLASS_AWAY))
        bob.protocol.connectionLost(None)
        (gone,) = [s for s in alice.snacs() if s.family == 3]
        self.assertEqual((gone.subtype, gone.body), (0x0C, b"\x03bob\x00\x00\x00\x00"))

    def test_icq_session_sees_uins_and_icq_status(self):
        alice = online(self.connector, "100001")
        alice.snacs()
        online(self.connector, "bob")
        (arrival,) = [s for s in alice.snacs() if s.family == 3]
        name, _, tlvs = codec.parse_user_info(codec.Reader(arrival.body))
        self.assertEqual(name, b"100002")
        self.assertEqual(first_tlv(tlvs, 6), b"\x00\x00\x00\x00")

    def test_im_both_ways_with_ack_and_non_ascii(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        alice.snacs(), bob.snacs()
        text = "h\u00e9llo \u4e16\u754c"
        request = alice.snac(4, 6, im_body(b"Bob", codec.TextPart(2, 0, text.encode("utf-16-be")), ack=True))
        (ack,) = alice.snacs()
        self.assertEqual((ack.subtype, ack.request_id), (0x0C, request))
        self.assertEqual(ack.body, b"12345678" + b"\x00\x01\x03Bob")
        ((sender, data, charset, tlvs),) = received_ims(bob.snacs())
        self.assertEqual((sender, charset), (b"alice", 2))
        self.assertEqual(data.decode("utf-16-be"), f"<HTML><BODY>{text}</BODY></HTML>")
        # Twisted 15.4 labels UTF-8 as UCS-2: read as UTF-8; Latin-1 goes out as charset 3.
        bob.snac(4, 6, im_body(b"alice", codec.TextPart(2, 0, "gr\u00fc\u00df dich \u2713".encode())))
        ((_, data, charset, _),) = received_ims(alice.snacs())
        self.assertEqual(data.decode("utf-16-be"), "<HTML><BODY>gr\u00fc\u00df dich \u2713</BODY></HTML>")
        bob.snac(4, 6, im_body(b"alice", codec.TextPart(3, 0, "caf\u00e9 1 < 2 & co".encode("latin-1"))))
        ((_, data, charset, _),) = received_ims(alice.snacs())
        self.assertEqual((charset, data), (3, "<HTML><BODY>caf\u00e9 1 &lt; 2 &amp; co</BODY></HTML>".encode("latin-1")))
        archived = [e.text for e in self.core.archive.events("im")]
        self.assertEqual(archived, [text, "gr\u00fc\u00df dich \u2713", "caf\u00e9 1 < 2 & co"])

    def test_html_in_plain_text_out(self):
        alice = online(self.connector, "alice")
        self.successResultOf(self.memory.login(self.carol, Address("mem", "carol")))
        session = self.memory.sessions[0]
        # carol has no AIM handle: AIM users know her by the alias the gateway showed them
        self.assertEqual(self.successResultOf(self.directory.alias_for(Address("mem", "carol"), "aim")),
                         Address("aim", "mem.carol"))
        alice.snac(4, 6, im_body(b"mem.carol", codec.TextPart(0, 0, b'<HTML><BODY><FONT LANG="0">hi &amp; bye<BR>x</FONT></BODY></HTML>')))
        (event,) = self.memory.received(session, "im")
        self.assertEqual(event.text, "hi & bye\nx")
        self.assertEqual(event.sender, Address("mem", "alice"))  # her own handle on carol's network
        # and back: carol's reply reaches alice under carol's alias
        self.successResultOf(self.core.bus.submit(Message("mem:carol", "aim:alice", "hey")))
        ((sender, data, _, _),) = received_ims(alice.snacs())
        self.assertEqual((sender, data), (b"mem.carol", b"<HTML><BODY>hey</BODY></HTML>"))

    def test_aimpyfly_profile_gets_utf8_inside_html(self):
        wire = Wire(self.connector)
        wire.frames()
        wire.send(1, codec.FLAP_VERSION + encode_tlvs([
            (1, b"bob"), (2, codec.roast(b"secret")), (3, b"AOL Instant Messenger (SM)"),
            (0x16, b"\x00\x01"), (0x17, b"\x00\x01"), (0x18, b"\x00\x00"), (0x1A, b"\x00\x01"), (9, b"\x00\x15")]))
        cookie = first_tlv(codec.parse_tlvs(wire.frames()[-1].payload), 6)
        bob = Wire(self.connector)
        bob.frames()
        bob.send(1, codec.FLAP_VERSION + encode_tlvs([(6, cookie)]))
        bob.snac(1, 6)
        bob.snac(1, 2, bytes.fromhex("00010003000200010013 0001".replace(" ", "")))
        bob.snacs()
        self.successResultOf(self.core.bus.submit(Message("aim:alice", "aim:bob", "\u00e9t\u00e9 \u2603")))
        ((_, data, charset, _),) = received_ims(bob.snacs())
        self.assertEqual((charset, data.decode("utf-8")), (0, "<HTML><BODY>\u00e9t\u00e9 \u2603</BODY></HTML>"))

    def test_icbm_errors(self):
        alice = online(self.connector, "alice")
        alice.snacs()
        request = alice.snac(4, 6, im_body(b"nobody", codec.TextPart(0, 0, b"hi")))
        (error,) = alice.snacs()
        self.assertEqual((error.family, error.subtype, error.request_id, error.body), (4, 1, request, u16(4)))
        self.core.policy.load(self.core.config.policy.__class__(rules=()))  # no rules: allowed
        from gateway.config import loads

        self.core.policy.load(loads('[[policy.rule]]\nname="x"\naction="deny"\nfrom=["user:alice"]\nto=["user:bob"]\n',
                                    "<t>", base_dir="/").policy)
        request = alice.snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"hi"), ack=True))
        (error,) = alice.snacs()
        self.assertEqual((error.subtype, error.request_id, error.body), (1, request, u16(adapter.ERR_REQUEST_DENIED)))
        self.assertEqual(self.core.archive.status(list(self.core.archive.rows)[-1]), "rejected")

    def test_offline_message_delivered_at_login_with_flag(self):
        alice = online(self.connector, "alice")
        request = alice.snac(4, 6, im_body(b"bob", codec.TextPart(0, 0, b"while you were out"), ack=True))
        self.assertEqual([(s.subtype, s.request_id) for s in alice.snacs() if s.family == 4], [(0x0C, request)])
        self.clock.advance(60)
        bob = online(self.connector, "bob")
        ((sender, data, _, tlvs),) = received_ims(bob.snacs())
        self.assertEqual(sender, b"alice")
        self.assertIn(b"while you were out", data)
        self.assertEqual(first_tlv(tlvs, 6), b"")
        bob.protocol.connectionLost(None)
        bob = online(self.connector, "bob")
        self.assertEqual(received_ims(bob.snacs()), [])  # exactly once

    def test_typing_both_ways(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        alice.snacs(), bob.snacs()
        alice.snac(4, 0x14, b"\x00" * 8 + u16(1) + b"\x03bob" + u16(2))
        (typing,) = bob.snacs()
        self.assertEqual((typing.family, typing.subtype), (4, 0x14))
        self.assertEqual(typing.body, b"\x00" * 8 + u16(1) + b"\x05alice" + u16(2))

    def test_info_query(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        bob.snac(2, 4, encode_tlvs([(1, b"text/aolrtf"), (2, b"I am Bob")]))
        alice.snacs()
        request = alice.snac(2, 5, u16(1) + b"\x03bob")
        (info,) = alice.snacs()
        self.assertEqual((info.subtype, info.request_id), (6, request))
        r = codec.Reader(info.body)
        codec.parse_user_info(r)
        self.assertEqual(first_tlv(r.tlvs(), 2), b"<HTML><BODY>I am Bob</BODY></HTML>")  # rendered from the event
        request = alice.snac(2, 5, u16(1) + b"\x06nobody")
        (error,) = alice.snacs()
        self.assertEqual((error.subtype, error.body), (1, u16(4)))

    def test_idle_status(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        alice.snacs()
        bob.snac(1, 0x11, b"\x00\x00\x02\x58")
        (idle,) = [s for s in alice.snacs() if s.family == 3]
        tlvs = codec.Reader(idle.body[8:]).tlvs()
        self.assertIsNotNone(first_tlv(tlvs, 4))
        self.assertEqual(self.core.sessions.presence_of("bob")[0], PresenceStatus.IDLE)


class LimitsTests(Base):
    def test_malformed_flap_closes_with_channel_4(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        alice.snacs()
        alice.send_raw(b"\x2b\x02\x00\x01\x00\x00")
        frames = alice.frames()
        self.assertEqual(frames[-1].channel, 4)
        tlvs = codec.parse_tlvs(frames[-1].payload)
        self.assertEqual(first_tlv(tlvs, 9), u16(3))
        self.assertIn(b"malformed FLAP", first_tlv(tlvs, 0x0B))
        self.assertTrue(alice.closed)
        self.assertFalse(bob.closed)
        alice.send_raw(b"more junk")  # after closing: ignored, nothing raised

    def test_frame_size_limit(self):
        wire = Wire(self.connector)
        wire.frames()
        wire.send_raw(b"\x2a\x02\x00\x01\x20\x01")  # 8193 bytes announced
        self.assertEqual(wire.frames()[-1].channel, 4)
        self.assertTrue(wire.closed)

    def test_bad_tlv_and_short_snac(self):
        for payload in (b"\x00\x00\x00\x01\x00\x01\x00\x09ab", b"\x00\x00\x00\x02"):
            wire = Wire(self.connector)
            wire.frames()
            wire.send(1, payload)
            self.assertEqual(wire.frames()[-1].channel, 4)
            self.assertTrue(wire.closed)
        alice = online(self.connector, "alice")
        alice.send(2, b"\x00\x04\x00")
        self.assertTrue(alice.closed)
        alice = online(self.connector, "alice")
        alice.snac(4, 6, b"short")
        self.assertTrue(alice.closed)
        self.assertEqual(self.core.sessions.sessions_of("alice")[0].address, Address("aim", "alice"))

    def test_login_and_idle_timeouts(self):
        wire = Wire(self.connector)
        self.clock.advance(59)
        self.assertFalse(wire.closed)
        self.clock.advance(1)
        self.assertTrue(wire.closed)
        alice = online(self.connector, "alice")
        self.clock.advance(599)
        alice.send(5)  # keepalive resets the timer
        self.clock.advance(599)
        self.assertFalse(alice.closed)
        self.clock.advance(1)
        frames = alice.frames()
        self.assertEqual(first_tlv(codec.parse_tlvs(frames[-1].payload), 9), u16(5))
        self.assertTrue(alice.closed)

    def test_rate_limit_warns_limits_then_disconnects(self):
        alice = online(self.connector, "alice")
        alice.snacs()
        seen = []
        for i in range(400):
            if alice.closed:
                break
            alice.snac(4, 6, im_body(b"nobody", codec.TextPart(0, 0, b"x")))
            for s in alice.snacs():
                if (s.family, s.subtype) == (1, 0x0A):
                    seen.append(("rate", int.from_bytes(s.body[:2], "big")))
                elif (s.family, s.subtype) == (4, 1):
                    seen.append(("err", int.from_bytes(s.body, "big")))
        kinds = [k for k in seen if k[0] == "rate"]
        self.assertEqual(kinds, [("rate", 2), ("rate", 3)])  # warning, then limited (once)
        self.assertIn(("err", adapter.ERR_RATE_TO_HOST), seen)
        self.assertTrue(alice.closed)
        self.assertLess(i, 400)

    def test_slow_sender_is_never_limited(self):
        alice = online(self.connector, "alice")
        for _ in range(200):
            self.clock.advance(2)
            alice.snac(4, 6, im_body(b"nobody", codec.TextPart(0, 0, b"x")))
        self.assertEqual({(s.family, s.subtype, s.body) for s in alice.snacs() if s.family in (1, 4)},
                         {(4, 1, u16(4))})

    def test_rate_limits_off(self):
        self.connector = OscarConnector(self.core.api, dict(self.options, rate_limits=False))
        alice = online(self.connector, "alice")
        for _ in range(500):
            alice.snac(4, 6, im_body(b"nobody", codec.TextPart(0, 0, b"x")))
        self.assertFalse(alice.closed)

    def test_multiple_logins(self):
        first = online(self.connector, "alice")
        second = online(self.connector, "alice")
        self.assertFalse(first.closed)  # allowed by default
        self.assertEqual(len(self.core.sessions.sessions_of("alice")), 2)
        self.connector.multiple_logins = "kick"
        third = online(self.connector, "alice")
        for old in (first, second):
            self.assertEqual(first_tlv(codec.parse_tlvs(old.frames()[-1].payload), 9), u16(1))
            self.assertTrue(old.closed)
            old.protocol.connectionLost(None)
        self.assertFalse(third.closed)
        self.assertEqual([s.handler for s in self.core.sessions.sessions_of("alice")], [third.protocol])

    def test_shutdown_signs_everyone_off(self):
        alice = online(self.connector, "alice")
        self.connector.startService()
        self.successResultOf(self.connector.stopService())
        self.assertEqual(first_tlv(codec.parse_tlvs(alice.frames()[-1].payload), 9), u16(6))
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])


    def test_a_drained_node_signs_one_session_off_as_at_a_shutdown(self):
        alice = online(self.connector, "alice")
        bob = online(self.connector, "bob")
        [session] = self.core.sessions.sessions_of("alice")
        self.connector.disconnect(session, "this node is being drained; connect again")
        self.assertEqual(first_tlv(codec.parse_tlvs(alice.frames()[-1].payload), 9), u16(6))
        self.assertTrue(alice.closed)
        alice.protocol.connectionLost(None)
        self.assertEqual(self.core.sessions.sessions_of("alice"), [])
        self.assertFalse(bob.closed)


class OscarConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "aim"
    handles = ("aim:alice", "aim:bob")

    def setUp(self):
        self.clock = task.Clock()

    def make_connector(self, api):
        return OscarConnector(api, {"listen": []})

    def connect_client(self, connector, identity, address):
        session, said = self.try_login(connector, address, "secret")
        self.assertIsNotNone(session, said)
        return session

    def _seen(self, session):
        """Every SNAC that client was sent, kept across calls."""
        wire = self.core.connectors["oscar"]._wires[session]
        wire.history = getattr(wire, "history", []) + wire.snacs()
        return wire.history

    def client_received(self, connector, session):
        texts = []
        for _, data, charset, _ in received_ims(self._seen(session)):
            texts.append(adapter.html_to_text(adapter.decode_text_part(codec.TextPart(charset, 0, data))))
        return texts

    # What an AIM client does, for the deeper conformance tests.

    def try_login(self, connector, address, password):
        _, tlvs = login_roasted(connector, address.user, password)
        cookie = first_tlv(tlvs, 6)
        if cookie is None:
            return None, repr(tlvs)
        wire = sign_on_bos(connector, cookie)
        wire.history = wire.snacs()
        wire.snac(1, 0x02, b"\x00\x01\x00\x03\x01\x10\x05\x9b")
        connector._wires = getattr(connector, "_wires", {})
        sessions = [s for s in self.core.sessions.sessions_of(self.directory._by_handle(address).id)
                    if s.handler is wire.protocol]
        if not sessions:
            return None, "no session"
        connector._wires[sessions[0]] = wire
        return sessions[0], ""

    def client_send(self, connector, session, recipient, text):
        wire = connector._wires[session]
        wire.snac(4, 6, im_body(recipient.user.encode(), codec.TextPart(0, 0, text.encode("ascii"))))

    def drop_client(self, connector, session):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        wire = connector._wires[session]
        wire.transport.loseConnection()
        wire.protocol.connectionLost(Failure(ConnectionLost()))

    def garbage_client(self, connector, data):
        Wire(connector).send_raw(data)

    def client_presence(self, connector, session):
        seen = []
        for snac in self._seen(session):
            if (snac.family, snac.subtype) in ((3, 0x0B), (3, 0x0C)):
                name = snac.body[1:1 + snac.body[0]].decode()
                seen.append((Address("aim", name), "online" if snac.subtype == 0x0B else "offline"))
        return seen


class AnyInputTests(Base):
    """Whatever bytes a client sends, dataReceived never raises and other sessions never notice."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=6))
    def test_any_bytes_before_login(self, chunks):
        wire = Wire(self.connector)
        for chunk in chunks:
            wire.send_raw(chunk)
        frames, _ = codec.parse_flaps(wire.transport.value())
        self.assertEqual(frames[0].channel, 1)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5]), st.binary(max_size=40)), max_size=5),
           st.sampled_from([(1, 2), (4, 6), (4, 0x14), (0x13, 8), (0x13, 5), (2, 5), (2, 4), (3, 4), (1, 0x11), (1, 0x1E)]))
    def test_any_frames_after_sign_on(self, frames, snac_type):
        bob = getattr(self, "_bob", None) or online(self.connector, "bob")
        self._bob = bob
        wire = online(self.connector, "alice")
        wire.snac(*snac_type, body=frames[0][1] if frames else b"")
        for channel, payload in frames:
            wire.send(channel, payload)
        self.assertFalse(bob.closed)
        if not wire.closed:
            wire.protocol.connectionLost(None)
