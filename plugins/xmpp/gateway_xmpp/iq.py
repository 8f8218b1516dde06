"""
The XMPP connector's answers to ``<iq/>`` from c2s clients: the roster
(RFC 6121), service discovery, ping, version and vCards, and the file
offers an iq opens; rooms' iqs go to `gateway_xmpp.muc`. A mix-in of
`gateway_xmpp.connector.XmppConnector`, kept apart as Twisted's jabber
package keeps its handlers apart from the stream.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from gateway_xmpp import adapter
from gateway_xmpp.adapter import parse_jid
from gateway_xmpp.codec import escape_attr, escape_text
from gateway_xmpp.protocol import NS_SESSION

NS_ROSTER = "jabber:iq:roster"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"
NS_VERSION = "jabber:iq:version"

SERVER_FEATURES = (
    NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VCARD, NS_ROSTER, NS_VERSION,
    adapter.NS_CHATSTATES, adapter.NS_RECEIPTS, adapter.NS_XHTML_IM,
)


class IqHandlers:
    """What `XmppConnector` answers to a client's iq (it provides ``api``, ``domains``, ``muc`` and the roster helpers)."""

    def _iq(self, stream, element):
        kind = element.getAttribute("type")
        if kind in ("result", "error"):
            return
        if kind not in ("get", "set") or element.getAttribute("id") is None:
            stream.write(adapter.stanza_error(element, "bad-request", "modify", "iq needs type get/set and an id"))
            return
        payload = next(iter(element.elements()), None)
        if payload is None:
            stream.write(adapter.stanza_error(element, "bad-request", "modify", "empty iq"))
            return
        to = element.getAttribute("to")
        jid = parse_jid(to) if to else None
        if to and jid is None:
            stream.write(adapter.stanza_error(element, "jid-malformed", "modify"))
            return
        if self.muc is not None and self.muc.handles(jid):
            return self.muc.iq(stream, element, payload, jid)
        to_server = jid is None or (not jid.user and self.domains.is_local(jid.host))
        to_self = jid is not None and jid.user and jid.userhost().lower() == stream.bare
        if kind == "set" and jid is not None and jid.user and not to_self:
            recipient = self.domains.jid_to_address(jid)
            offer = recipient and adapter.stream_offer_event(self.api, element, stream.address, recipient)
            if offer:
                adapter.capture_received(self.api, offer, element)
                return self.api.submit(offer, origin=self).addCallback(self._answer_offer, stream, element)
        key = (payload.uri, payload.name)
        handler = None
        if to_server or to_self:
            handler = {
                (NS_ROSTER, "query"): self._iq_roster,
                (NS_SESSION, "session"): self._iq_empty,
                (NS_PING, "ping"): self._iq_empty,
                (NS_DISCO_INFO, "query"): self._iq_disco_info,
                (NS_DISCO_ITEMS, "query"): self._iq_disco_items,
                (NS_VCARD, "vCard"): self._iq_vcard,
                (NS_VERSION, "query"): self._iq_version,
            }.get(key)
        elif jid.user and self.domains.is_local(jid.host) and kind == "get":
            handler = {
                (NS_VCARD, "vCard"): self._iq_vcard,
                (NS_DISCO_INFO, "query"): self._iq_disco_info,
                (NS_PING, "ping"): self._iq_empty,
            }.get(key)
        if handler is None:
            stream.write(adapter.stanza_error(element, "service-unavailable", "cancel"))
            return
        result = handler(stream, element, payload, jid)
        if hasattr(result, "addErrback"):
            result.addErrback(self._iq_failed, stream, element)

    def _answer_offer(self, outcome, stream, element):
        """A file transfer opened by an iq: refused as decided, else told that the bytes do not travel here."""
        if stream.state == "closed":
            return
        if element.getAttribute("from") is None:
            element["from"] = stream.jid
        stream.write(adapter.offer_answer(element, outcome))

    def _iq_failed(self, failure, stream, element):
        self.log.failure("xmpp: iq from {jid} failed", failure, jid=stream.jid)
        stream.write(adapter.stanza_error(element, "internal-server-error", "wait"))

    @staticmethod
    def _result(stream, element, inner="", sender=None):
        attrs = f" id='{escape_attr(element['id'])}' to='{escape_attr(stream.jid)}'"
        if sender:
            attrs += f" from='{escape_attr(sender)}'"
        body = f"<iq type='result'{attrs}>{inner}</iq>" if inner else f"<iq type='result'{attrs}/>"
        stream.write(body.encode("utf-8"))

    def _iq_empty(self, stream, element, payload, jid):
        self._result(stream, element, sender=element.getAttribute("to"))

    @inlineCallbacks
    def _iq_roster(self, stream, element, payload, jid):
        if element["type"] == "get":
            stream.wants_roster = True
            contacts = yield self.api.contacts(stream.identity.id)
            items = []
            for contact in contacts:
                contact_jid = yield self.contact_jid(contact.address)
                items.append(self._roster_item(contact_jid, contact))
            self._result(stream, element, f"<query xmlns='{NS_ROSTER}'>{''.join(items)}</query>")
            return
        items = list(payload.elements(NS_ROSTER, "item"))
        if len(items) != 1:
            stream.write(adapter.stanza_error(element, "bad-request", "modify", "one item per roster set"))
            return
        item = items[0]
        item_jid = parse_jid(item.getAttribute("jid"))
        address = self.domains.jid_to_address(item_jid) if item_jid is not None else None
        if address is None:
            stream.write(adapter.stanza_error(element, "bad-request", "modify", "the item needs a user JID"))
            return
        if item.getAttribute("subscription") == "remove":
            yield self._remove_contact(stream, address)
        else:
            groups = [str(g).strip() for g in item.elements(NS_ROSTER, "group")]
            yield self._add_contact(
                stream, address, self.domains.address_to_jid(address),
                name=item.getAttribute("name", ""), group=(groups[0] if groups and groups[0] else "Buddies"),
            )
        self._result(stream, element)

    def _iq_disco_info(self, stream, element, payload, jid):
        if element["type"] != "get":
            stream.write(adapter.stanza_error(element, "not-allowed", "cancel"))
            return
        if jid is not None and jid.user:
            inner = "<identity category='account' type='registered'/>"
            features = (NS_DISCO_INFO,)
        else:
            inner = "<identity category='server' type='im' name='gateway'/>"
            features = SERVER_FEATURES
        inner += "".join(f"<feature var='{f}'/>" for f in features)
        self._result(stream, element, f"<query xmlns='{NS_DISCO_INFO}'>{inner}</query>",
                     sender=element.getAttribute("to"))

    def _iq_disco_items(self, stream, element, payload, jid):
        items = ""
        if self.muc is not None and (jid is None or not jid.user):
            items = f"<item jid='{escape_attr(self.muc.domain)}' name='Rooms'/>"
        self._result(stream, element, f"<query xmlns='{NS_DISCO_ITEMS}'>{items}</query>",
                     sender=element.getAttribute("to"))

    def _iq_version(self, stream, element, payload, jid):
        self._result(stream, element,
                     f"<query xmlns='{NS_VERSION}'><name>gateway</name><version>0.1</version></query>",
                     sender=element.getAttribute("to"))

    @inlineCallbacks
    def _iq_vcard(self, stream, element, payload, jid):
        if element["type"] == "set":
            # vCards are not stored: names come from the directory.
            self._result(stream, element)
            return
        address = self.domains.jid_to_address(jid) if jid is not None and jid.user else stream.address
        identity = yield self.api.identity_for(address)
        if identity is None:
            original = yield self.api.resolve_alias(address)
            name = str(original) if original is not None else ""
            if not name:
                stream.write(adapter.stanza_error(element, "item-not-found", "cancel"))
                return
        else:
            name = identity.display_name or identity.id
        self._result(
            stream, element,
            f"<vCard xmlns='{NS_VCARD}'><FN>{escape_text(name)}</FN><NICKNAME>{escape_text(name)}</NICKNAME></vCard>",
            sender=element.getAttribute("to"),
        )
