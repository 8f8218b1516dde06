"""
The SIP connector's way to other SIP domains (``[connectors.sip.peers]``):
a peer's flow (its UDP address, or a TCP or TLS connection made once and
shared) and the MESSAGEs delivered over it. A mix-in of
`gateway_sip.connector.SipConnector`, whose ``peers``, listeners and
request helpers it uses.
"""

from __future__ import annotations

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed

from gateway.plugin import ChatEvent, FileOffer, Message, Typing

from gateway_sip import adapter
from gateway_sip.protocol import SipStreamFactory, StreamFlow
from gateway_sip.records import DeliveryError


class Federation:
    """Delivery to the users of peer domains (a mixin of `SipConnector`)."""

    def _deliver_to_peer(self, event):
        peer = self.peers.get(event.recipient.domain)
        if peer is None:
            return fail(DeliveryError(f"{event.recipient.domain} is not a peer domain"))
        if not isinstance(event, (Message, Typing, FileOffer, ChatEvent)):
            return fail(DeliveryError(f"a SIP peer cannot be shown a {event.kind} event"))
        if event.sender.network == adapter.NETWORK and event.sender.domain in self.peers:
            # Reached through an alias of ours: still one peer domain to another.
            return fail(DeliveryError(f"the gateway is no transit proxy: {event.sender.domain} to "
                                      f"{event.recipient.domain} is not relayed"))
        d = self._peer_flow(peer)
        return d.addCallback(lambda flow: self._send_message(event, adapter.uri_of(event.recipient), flow))

    def _peer_flow(self, peer) -> Deferred:
        if peer.transport == "udp":
            if not self.udp_endpoints:
                return fail(DeliveryError("no UDP listener to reach peers from"))
            return succeed(self.udp_endpoints[0].flow_for((peer.host, peer.port)))
        existing = self.peer_flows.get(peer.domain)
        if isinstance(existing, StreamFlow) and existing.alive:
            return succeed(existing)
        if isinstance(existing, list):
            waiting = Deferred()
            existing.append(waiting)
            return waiting
        waiters = []
        self.peer_flows[peer.domain] = waiters
        endpoint = endpoints.HostnameEndpoint(self.api.reactor, peer.host, peer.port)
        if peer.transport == "tls":
            endpoint = endpoints.wrapClientTLS(_tls_options(peer), endpoint)
        factory = SipStreamFactory(self, self.limiter, self.max_datagram, 0, self.clock, tls=peer.transport == "tls")
        d = endpoint.connect(factory)

        def connected(stream):
            flow = stream.flow
            self.peer_flows[peer.domain] = flow
            for waiter in waiters:
                waiter.callback(flow)
            return flow

        def failed(failure):
            self.peer_flows.pop(peer.domain, None)
            for waiter in waiters:
                waiter.errback(DeliveryError(f"cannot connect to peer {peer.domain}: {failure.getErrorMessage()}"))
            raise DeliveryError(f"cannot connect to peer {peer.domain}: {failure.getErrorMessage()}")

        return d.addCallbacks(connected, failed)


def _tls_options(peer):
    """Client TLS toward a peer: its certificate must be valid for its host, from ``ca`` or the system's roots."""
    from twisted.internet import ssl

    if peer.ca:
        with open(peer.ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(peer.host, trustRoot=trust)
    return ssl.optionsForClientTLS(peer.host)
