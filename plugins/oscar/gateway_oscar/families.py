"""The BOS SNAC family handlers other than ICBM: generic service, location, buddy list, permit/deny and SSI."""

from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks

from gateway.plugin import AddressError, PresenceStatus

from gateway_oscar import adapter, codec
from gateway_oscar.codec import Reader, encode_tlvs, first_tlv, u16
from gateway_oscar.common import CHAT_FAMILIES, FAMILY_VERSIONS

# Bytes of feedbag items per 13/06 reply.
SSI_CHUNK = 7000


class BosFamilies:
    """The `OscarServerProtocol`'s handlers of families 1, 2, 3, 9 and 0x13 (a mixin: its state is the protocol's)."""

    # -- family 1: generic service ----------------------------------------------------

    def on_versions(self, snac):
        r = Reader(snac.body, "01/17")
        pairs = []
        while r.remaining >= 4:
            family, version = r.u16(), r.u16()
            self.family_versions[family] = version
            if family in FAMILY_VERSIONS:
                pairs.append(u16(family) + u16(FAMILY_VERSIONS[family]))
        self.send_snac(0x01, 0x18, b"".join(pairs), snac.request_id)

    def on_rate_request(self, snac):
        with_state = self.family_versions.get(0x0001, 0) >= 3
        body = codec.encode_rate_info(self.connector.rate_classes, with_state=with_state)
        self.send_snac(0x01, 0x07, body, snac.request_id)

    def on_self_info(self, snac):
        self.send_snac(0x01, 0x0F, self._self_info(), snac.request_id)

    def _self_info(self):
        status = self._status()[0]
        tlvs = adapter.user_info_tlvs(status, self.address.network, self.signed_on_at)
        return codec.encode_user_info(self.ticket.screen_name, tlvs)

    def on_service_request(self, snac):
        r = Reader(snac.body, "01/04")
        family = r.u16() if r.remaining >= 2 else 0
        if family in CHAT_FAMILIES:
            return self.request_chat_service(family, snac, r.tlvs())  # gateway_oscar.chat
        self.send_error(0x01, snac.request_id, adapter.ERR_SERVICE_UNAVAILABLE)

    def on_idle(self, snac):
        seconds = Reader(snac.body, "01/11").u32()
        self.idle = seconds > 0
        self._presence_changed()

    def on_icq_status(self, snac):
        value = first_tlv(codec.parse_tlvs(snac.body), 0x0006)
        if value is not None:
            self.icq_status = adapter.status_from_icq(value)
            self._presence_changed()

    def on_client_online(self, snac):
        if self.session is not None or self.logging_in:
            return
        status, note = self._status()
        self.connector.start_session(self, status, note)

    def logged_in(self):
        """A Deferred that fires (with None) once the session login under way has ended, either way."""
        d = Deferred()
        self.login_waiters.append(d)
        return d

    def login_ended(self):
        waiters, self.login_waiters = self.login_waiters, []
        for d in waiters:
            d.callback(None)

    def _status(self):
        if self.away_html:
            return PresenceStatus.AWAY, adapter.html_to_text(adapter.decode_rich(self.away_html, self.away_mime))
        if self.icq_status is not None and self.icq_status is not PresenceStatus.AVAILABLE:
            return self.icq_status, ""
        if self.idle:
            return PresenceStatus.IDLE, ""
        return PresenceStatus.AVAILABLE, ""

    def _presence_changed(self):
        if self.session is not None:
            status, note = self._status()
            if (status, note) != (self.session.status, self.session.note):
                self.api.set_presence(self.session, status, note)

    # -- family 2: location ---------------------------------------------------------------

    def on_location_rights(self, snac):
        self.send_snac(0x02, 0x03, encode_tlvs([(0x0001, u16(4096)), (0x0002, u16(32)), (0x0005, u16(32))]),
                       snac.request_id)

    def on_set_info(self, snac):
        tlvs = codec.parse_tlvs(snac.body)
        profile = first_tlv(tlvs, 0x0002)
        if profile is not None:
            self.profile_text = profile[: self.connector.max_profile]
            self.profile_mime = first_tlv(tlvs, 0x0001)
        away = first_tlv(tlvs, 0x0004)
        if away is not None:
            self.away_html = away[: self.connector.max_profile]
            self.away_mime = first_tlv(tlvs, 0x0003)
            self._presence_changed()

    @inlineCallbacks
    def on_get_info(self, snac):
        r = Reader(snac.body, "02/05")
        if snac.subtype == 0x0005:
            kind = r.u16()
            want_profile, want_away = kind == 0x0001, kind == 0x0003
        else:  # 02/15: u32 flags (1 profile, 2 away)
            flags = r.u32()
            want_profile, want_away = bool(flags & 1), bool(flags & 2)
        name = r.bytes8()
        try:
            target = adapter.address_for(name, self.address.network)
        except AddressError:
            self.send_error(0x02, snac.request_id, adapter.ERR_BAD_FORMAT)
            return
        info = yield self.connector.user_info(target, self.address.network)
        event = None
        if info is not None and self.state == "bos":
            # Rendered from the event as the path decided it (sanitized, transformed), or not at all.
            event = yield self.connector.disclose_info(self.address, info, want_profile, want_away)
        if self.state != "bos":
            return
        if event is None:
            # Offline, unknown, or not to be disclosed to this asker: the same answer for all three.
            self.send_error(0x02, snac.request_id, adapter.ERR_NOT_LOGGED_IN)
            return
        tlvs = []
        if want_profile:
            tlvs += [(0x0001, adapter.RICH_MIME), (0x0002, adapter.render_rich(event.text, event.html))]
        if want_away:
            tlvs += [(0x0003, adapter.RICH_MIME), (0x0004, adapter.render_rich(event.note, None))]
        block = codec.encode_user_info(name, adapter.user_info_tlvs(event.status, self.address.network,
                                                                    info.online_since))
        self.send_snac(0x02, 0x06, block + encode_tlvs(tlvs), snac.request_id)

    # -- family 3: buddy list (client-side lists) ------------------------------------------

    def on_buddy_rights(self, snac):
        limit = self.connector.max_buddies
        self.send_snac(0x03, 0x03, encode_tlvs([(0x0001, u16(limit)), (0x0002, u16(limit * 3)), (0x0004, u16(160))]),
                       snac.request_id)

    def on_buddy_add(self, snac):
        names = self._names(snac.body)
        self.connector.change_contacts(self, add=names)

    def on_buddy_remove(self, snac):
        names = self._names(snac.body)
        self.connector.change_contacts(self, remove=names)

    def _names(self, body):
        r = Reader(body, "buddy names")
        out = []
        while r.remaining:
            try:
                out.append(adapter.address_for(r.bytes8(), self.address.network))
            except AddressError:
                continue
        return out

    # -- family 9: permit/deny ----------------------------------------------------------------

    def on_bos_rights(self, snac):
        self.send_snac(0x09, 0x03, encode_tlvs([(0x0001, u16(200)), (0x0002, u16(200))]), snac.request_id)

    # -- family 0x13: feedbag (SSI) ------------------------------------------------------------

    def on_ssi_rights(self, snac):
        limits = [self.connector.max_buddies, 50, 200, 200, 1, 1] + [0] * 14
        self.send_snac(0x13, 0x03, encode_tlvs([(0x0004, b"".join(u16(n) for n in limits))]), snac.request_id)

    @inlineCallbacks
    def on_ssi_request(self, snac):
        if self.feedbag is None:
            self.feedbag = yield self.connector.load_feedbag(self)
        if self.state != "bos":
            return
        # A long list goes in several 13/06 replies; all but the last have time 0 and SNAC flag 1 ("more follow").
        chunks, chunk, size = [], [], 0
        for item in self.feedbag.ordered():
            length = len(codec.encode_ssi_item(item))
            if chunk and size + length > SSI_CHUNK:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += length
        chunks.append(chunk)
        for i, items in enumerate(chunks):
            last = i == len(chunks) - 1
            body = codec.encode_ssi_list(items, self.feedbag.last_modified if last else 0)
            self.send_snac(0x13, 0x06, body, snac.request_id, flags=0 if last else 0x0001)

    def on_ssi_activate(self, snac):
        self.ssi_active = True

    @inlineCallbacks
    def on_ssi_change(self, snac):
        action = {0x08: "add", 0x09: "modify", 0x0A: "delete"}[snac.subtype]
        items = codec.parse_ssi_items(snac.body)
        if len(items) > self.connector.max_buddies:
            self.send_error(0x13, snac.request_id, adapter.ERR_BAD_FORMAT)
            return
        if self.feedbag is None:
            self.feedbag = yield self.connector.load_feedbag(self)
        codes = [self.feedbag.apply(action, item) for item in items]
        self.send_snac(0x13, 0x0E, adapter.ssi_status_body(codes), snac.request_id)
        if any(item.kind == codec.SSI_BUDDY for item, code in zip(items, codes) if code == 0):
            added = [item for item, code in zip(items, codes) if code == 0 and item.kind == codec.SSI_BUDDY
                     and action == "add"]
            yield self.connector.store_feedbag(self, added)
