"""ICBM channel 2 on the OSCAR service: file and direct-connection offers on the path, chat invitations refused."""

from __future__ import annotations

import ipaddress
from typing import Optional

import attrs
from twisted.logger import Logger

from gateway.plugin import Address, AddressError, ChatEvent

from gateway_oscar import adapter, codec
from gateway_oscar.bounded import BoundedMap
from gateway_oscar.codec import OscarCodecError, u16

# How offers are named in FileOffer.transfer (never shown to anyone): this connector's prefix and the cookie.
TRANSFER_PREFIX = "oscar:"

# Where a refused chat room is addressed (an AIM handle never has a domain, so this is nobody's).
ROOM_DOMAIN = "chat.oscar.invalid"


def room_address(network: str, room: str) -> Address:
    return Address(network, room or "unknown", ROOM_DOMAIN)


@attrs.define(eq=False)
class Transfer:
    """An offer that crossed the path, kept by cookie so that what follows it reaches its two parties only."""

    cookie: bytes
    capability: bytes
    event_id: str
    sender: object  # the OscarServerProtocol that proposed it
    peer: Address  # whom the sender proposed it to
    peer_name: bytes  # ... as the sender named them
    files: Optional[codec.FileInfo]
    params: list = attrs.Factory(list)  # the proposal's transfer parameters as relayed
    offer: object = None  # the FileOffer as the path delivered it
    receivers: list = attrs.Factory(list)  # OscarServerProtocols it was shown on


class Rendezvous:
    """
    What a client sends on ICBM channel 2 (04/06 with a rendezvous block in
    TLV 5), for the OSCAR service:

    - a send-file or direct-IM proposal with a new cookie becomes a
      `FileOffer` (a direct connection: no name, size 0, text "direct
      connection") submitted down the path. Refused, the sender gets an ICBM
      error; delivered to an OSCAR session, the recipient gets a proposal
      rendered from the event (name, size, invitation) with the transfer
      parameters as sent and the sender's address as this server saw it;
      to another network, the other connector renders the offer;
    - what follows an offer that was delivered (accepts, cancels, further
      proposals through a proxy) is relayed by cookie between the two
      parties only, its content again rendered from the decided offer;
    - chat invitations and other rendezvous are refused and archived.
    """

    log = Logger(namespace="gateway.oscar")

    def __init__(self, connector, limit=10000):
        self.connector = connector
        self.api = connector.api
        self.transfers = BoundedMap(limit)  # cookie -> Transfer

    # -- from a client ----------------------------------------------------------------------

    def received(self, proto, icbm, request_id, want_ack):
        """A channel-2 04/06 from ``proto`` (an `codec.IcbmSend`)."""
        try:
            peer = self.connector.address_for(icbm.screen_name, proto.address.network)
            rdv = codec.parse_rendezvous(icbm.tlv(0x0005))
            if rdv.cookie != icbm.cookie:
                raise OscarCodecError("the rendezvous cookie is not the ICBM's")
        except (AddressError, OscarCodecError) as e:
            self.log.info("oscar: bad rendezvous from {who}: {why}", who=str(proto.address), why=str(e))
            proto.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        if rdv.capability == codec.CAP_CHAT:
            self.invite(proto, peer, rdv, request_id)
        elif rdv.capability in (codec.CAP_SEND_FILE, codec.CAP_DIRECT_IM):
            transfer = self.transfers.get(rdv.cookie)
            if transfer is not None and transfer.capability == rdv.capability:
                self.follow_up(proto, transfer, peer, rdv, request_id, want_ack)
            elif rdv.kind == codec.RDV_PROPOSE:
                self.offer(proto, peer, icbm.screen_name, rdv, request_id, want_ack)
            else:
                self.log.info("oscar: {who} answered a rendezvous this server did not relay; dropped",
                              who=str(proto.address))
        else:
            what = adapter.capability_name(rdv.capability)
            offer = self.api.file_offer(proto.address, peer, "", text=what)
            self.api.refuse(offer, f"{what} is not supported on this gateway", "rendezvous-unsupported")
            proto.send_error(0x04, request_id, adapter.ERR_NOT_SUPPORTED)

    def offer(self, proto, peer, peer_name, rdv, request_id, want_ack):
        try:
            content = adapter.offer_content(rdv)
        except OscarCodecError as e:
            self.log.info("oscar: bad file offer from {who}: {why}", who=str(proto.address), why=str(e))
            proto.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        offer = self.api.file_offer(proto.address, peer, content.name, content.size, content.text,
                                    transfer=TRANSFER_PREFIX + rdv.cookie.hex())
        transfer = Transfer(rdv.cookie, rdv.capability, offer.id, proto, peer, peer_name, content.files)
        self.transfers[rdv.cookie] = transfer
        transfer.params = self.params(proto, rdv)
        self.api.submit(offer, origin=self.connector).addCallback(
            self._offered, transfer, proto, peer_name, request_id, want_ack)

    def _offered(self, outcome, transfer, proto, peer_name, request_id, want_ack):
        try:
            if outcome.rejected:
                if self.transfers.get(transfer.cookie) is transfer:
                    del self.transfers[transfer.cookie]
                if proto.state == "closed":
                    return
                self.log.info("oscar: file offer from {who} to {to} refused: {code} {reason}", who=str(proto.address),
                              to=str(transfer.peer), code=outcome.code, reason=outcome.reason)
                proto.send_error(0x04, request_id, adapter.icbm_error_for(outcome.code))
            elif want_ack and proto.state != "closed":
                proto.send_snac(0x04, 0x0C, transfer.cookie + u16(2) + bytes((len(peer_name),)) + peer_name, request_id)
        except Exception:
            self.log.failure("oscar: file offer outcome handling failed")

    def params(self, proto, rdv) -> list:
        """The transfer parameters of a proposal as relayed: as sent, plus the sender's address as seen here."""
        params = adapter.transfer_params(rdv)
        if rdv.kind == codec.RDV_PROPOSE and rdv.tlv(0x0003) is not None:
            try:
                seen = ipaddress.ip_address(proto.host or "")
            except ValueError:
                seen = None
            if seen is not None and seen.version == 4:
                params.append((0x0004, seen.packed))
        return params

    def follow_up(self, proto, transfer, peer, rdv, request_id, want_ack):
        """An accept, cancel or further proposal for a relayed offer: to the other party, and nobody else."""
        if proto is transfer.sender and peer == transfer.peer:
            targets = [p for p in transfer.receivers if p.state == "bos"]
            shown = transfer.offer.sender if transfer.offer is not None else None
        elif proto in transfer.receivers and transfer.offer is not None and peer == transfer.offer.sender:
            targets = [transfer.sender] if transfer.sender.state == "bos" else []
            shown = transfer.peer
        else:
            self.log.info("oscar: {who} is not a party to the rendezvous it answered; dropped", who=str(proto.address))
            return
        tlvs = self.params(proto, rdv)
        if rdv.kind == codec.RDV_PROPOSE and transfer.offer is not None:
            offer = transfer.offer
            tlvs += adapter.offer_tlvs(transfer.capability, offer.name, offer.size, offer.text, transfer.files,
                                       with_text=rdv.tlv(0x000C) is not None, with_files=rdv.tlv(0x2711) is not None)
        block = codec.encode_rendezvous(rdv.kind, transfer.cookie, transfer.capability, tlvs)
        for target in targets:
            target.send_rendezvous(shown, transfer.cookie, block)
        if rdv.kind == codec.RDV_CANCEL:
            self.transfers.pop(transfer.cookie, None)
        if want_ack:
            proto.send_snac(0x04, 0x0C, transfer.cookie + u16(2) + bytes((len(transfer.peer_name),))
                            + transfer.peer_name, request_id)

    # -- to a client --------------------------------------------------------------------------

    def deliver(self, proto, offer):
        """A `FileOffer` for ``proto``'s client: a proposal when it is one of ours that can still be answered."""
        transfer = None
        if offer.transfer.startswith(TRANSFER_PREFIX):
            try:
                cookie = bytes.fromhex(offer.transfer[len(TRANSFER_PREFIX):])
            except ValueError:
                cookie = b""
            transfer = self.transfers.get(cookie)
        if transfer is None or transfer.event_id != offer.id or transfer.sender.state != "bos":
            proto.deliver_notice(offer.sender, adapter.offer_notice(offer), offer)
            return
        transfer.offer = offer
        transfer.receivers.append(proto)
        tlvs = transfer.params + adapter.offer_tlvs(transfer.capability, offer.name, offer.size, offer.text,
                                                    transfer.files)
        block = codec.encode_rendezvous(codec.RDV_PROPOSE, transfer.cookie, transfer.capability, tlvs)
        proto.send_rendezvous(offer.sender, transfer.cookie, block)

    # -- chat -----------------------------------------------------------------------------------

    def invite(self, proto, peer, rdv, request_id):
        """A chat invitation: to one of the gateway's rooms, which only a member of it may give (on the path)."""
        try:
            room = codec.room_name(codec.parse_room_info(rdv.tlv(0x2711))[1])
        except OscarCodecError:
            event = ChatEvent(proto.address, peer, room="", action="invite", text=adapter.invitation_text(rdv),
                              created=self.api.clock.seconds())
            self.api.refuse(event, "a chat invitation without its room", "invalid")
            proto.send_error(0x04, request_id, adapter.ERR_BAD_FORMAT)
            return
        from gateway_oscar.chat import room_key

        if proto.session is None:
            proto.send_error(0x04, request_id, adapter.ERR_NOT_LOGGED_IN)
            return
        d = self.api.room_invite(proto.session, room_key(room), peer, adapter.invitation_text(rdv))
        d.addCallback(self._invited, proto, request_id)

    def _invited(self, outcome, proto, request_id):
        if outcome.rejected and proto.state == "bos":
            proto.send_error(0x04, request_id, adapter.icbm_error_for(outcome.code))

    def refuse_chat(self, proto, room="", action="join"):
        """A chat service asked for (01/04 for 0x0D or 0x0E) or a chat SNAC: archived as refused."""
        event = ChatEvent(proto.address, room_address(proto.address.network, room), room=room, action=action,
                          created=self.api.clock.seconds())
        self.api.refuse(event, "chat rooms are not supported on this gateway", "chat-unsupported")
