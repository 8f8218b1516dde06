"""What the SIP connector keeps: peers, registrations, subscriptions, publications."""

from __future__ import annotations

import attrs

from gateway.plugin import Address, PresenceStatus


class DeliveryError(Exception):
    """A request we sent got a failure response (or none)."""


@attrs.define(eq=False)
class Peer:
    """A federated SIP domain: where to send its traffic, and where its traffic may come from."""

    domain: str
    host: str
    port: int
    transport: str = "udp"
    sources: tuple = ()
    ca: str = ""  # PEM file of the certificate authority (or self-signed certificate) to trust, for tls
    secret: str = ""  # the digest secret its requests are signed with (user name and realm: its domain)
    trust: str = "digest"  # or "source": its address alone is believed (opt-out, logged at start)


@attrs.define(eq=False)
class Binding:
    """One registered contact of an address-of-record; its session is the client on the bus."""

    aor: Address
    contact: str
    flow: object
    identity: object
    expires_at: float
    timer: object = None
    session: object = None
    removed: bool = False

    @property
    def key(self):
        return (self.contact, self.flow.key)


@attrs.define(eq=False)
class Subscription:
    """A presence subscription (RFC 6665 dialog) of ``watcher`` to ``target``."""

    watcher: Address
    target: Address
    call_id: str
    remote_tag: str
    local_tag: str
    remote_contact: str
    flow: object
    expires_at: float
    timer: object = None
    cseq: int = 0
    last_state: tuple = None
    foreign: bool = False

    @property
    def key(self):
        return (self.call_id, self.remote_tag, self.local_tag)


@attrs.define(eq=False)
class Upstream:
    """Our own subscription at a peer domain, for local watchers of one of its users."""

    watcher: Address
    target: Address
    call_id: str
    local_tag: str
    remote_tag: str = None
    cseq: int = 0


class _Waiting:
    """A delivery waiting for the recipient's answer, bounded by ``delivery_timeout``."""

    __slots__ = ("result", "who")

    def __init__(self, result, who):
        self.result = result
        self.who = who


@attrs.define(eq=False)
class Publication:
    aor: Address
    etag: str
    status: PresenceStatus
    note: str
    timer: object = None
