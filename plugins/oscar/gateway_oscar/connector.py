"""The OSCAR connector: the gateway's AIM/ICQ service (login, BOS, buddy lists) and its plugin hook."""

from __future__ import annotations

import collections
import os

from twisted.application import service
from twisted.internet import protocol as tprotocol
from twisted.internet import defer
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred, returnValue
from twisted.logger import Logger
from zope.interface import implementer

import attrs

from gateway.plugin import (
    LISTENER_OPTIONS,
    Address,
    AddressError,
    ConfigError,
    Contact,
    IConnector,
    Option,
    Presence,
    PresenceStatus,
    hookimpl,
    positive,
    read_options,
)

from gateway_oscar import adapter, codec
from gateway_oscar.bounded import BoundedMap
from gateway_oscar.codec import RateClassInfo
from gateway_oscar.protocol import QUIET, SIGNOFF_OTHER_LOCATION, SIGNOFF_SHUTDOWN, OscarServerProtocol
from gateway_oscar.proxy import NAME as PROXY_NAME, OPTIONS as PROXY_OPTIONS, OscarProxyConnector, host_port
from gateway_oscar.rendezvous import Rendezvous

NAME = "oscar"
NETWORKS = ("aim", "icq")

# AIM-like rate classes: 1 = everything else, 2 = IMs and typing, 3 = look-ups.
DEFAULT_RATE_CLASSES = (
    dict(id=1, window=80, clear=2500, alert=2000, limit=1500, disconnect=800, max=6000),
    dict(id=2, window=60, clear=1500, alert=1000, limit=700, disconnect=300, max=6000),
    dict(id=3, window=20, clear=5100, alert=5000, limit=4000, disconnect=3000, max=6000),
)
RATE_CLASS_OF = {
    (0x04, 0x06): 2,
    (0x04, 0x14): 2,
    (0x02, 0x05): 3,
    (0x02, 0x15): 3,
}
RATE_KEYS = ("id", "window", "clear", "alert", "limit", "disconnect", "max")


def _flap_payload(value):
    """An `Option` check: a frame size a FLAP header can carry."""
    return None if 0 < value <= 0xFFFF else "a number from 1 to 65535 (the most a FLAP payload holds)"


# The keys of [connectors.oscar]; the README's option reference is generated from them.
OPTIONS = (
    Option("listen", list, ["tcp:5190:interface=127.0.0.1"],
           "endpoint strings (ssl:... works the same)"),
    Option("bos_address", str, "127.0.0.1:5190", "host:port the login reply sends clients to", check=host_port),
    Option("idle_timeout", float, 600.0, "seconds without a frame (keepalives count) before a signed-on"
           " connection is closed", check=positive),
    Option("login_timeout", float, 60.0, "seconds a connection has to log in", check=positive),
    Option("cookie_ttl", float, 120.0, "seconds the one-time login cookie is good for", check=positive),
    Option("max_frame", int, 8192, "bytes of FLAP payload in one frame", check=_flap_payload),
    Option("max_message", int, 7987, "characters in one IM", check=positive),
    Option("max_profile", int, 4096, "bytes of a profile or away message", check=positive),
    Option("max_buddies", int, 500, "buddies in a buddy list", check=positive),
    Option("multiple_logins", str, "allow", "what a second sign-on of the same screen name does:"
           " \"kick\" signs older sessions off.", choices=("allow", "kick")),
    Option("rate_limits", bool, True, "pace clients with the rate classes"),
    Option("rate_classes", list, [dict(t) for t in DEFAULT_RATE_CLASSES],
           "tables with exactly the keys id, window, clear, alert, limit, disconnect, max (positive whole"
           " numbers, disconnect < limit <= alert <= clear <= max); the first also paces every SNAC no other names"),
    # Kept so that older configs still start: set, they are ignored with a warning.
    Option("login_attempts", int, 0, "no longer used (ignored with a warning): the gateway's [directory]"
           " login_failures and login_window throttle OSCAR logins"),
    Option("login_window", float, 0.0, "no longer used (ignored with a warning), like login_attempts"),
) + LISTENER_OPTIONS


@attrs.frozen(slots=True)
class Ticket:
    """What a login cookie stands for until the client brings it to BOS."""

    identity: object
    address: Address
    screen_name: bytes
    profile: adapter.ClientProfile
    expires: float


@attrs.frozen(slots=True)
class UserInfo:
    """What the connector knows of someone a locate query (02/05, 02/15) asks about, before the path decides."""

    address: Address  # the subject (an alias resolved to whom it stands for)
    status: PresenceStatus
    note: str  # the away message as text
    text: str  # the profile's text
    html: object  # the profile's HTML as the client set it, or None
    online_since: int


def _rate_classes(name, tables):
    """The `RateClassInfo` of each table of ``rate_classes`` (a list, as `read_options` checked it)."""
    if not tables:
        raise ConfigError("expected a non-empty list of tables", key=f"connectors.{name}.rate_classes")
    classes = []
    for i, table in enumerate(tables):
        where = f"connectors.{name}.rate_classes[{i}]"
        if not isinstance(table, dict) or set(table) - set(RATE_KEYS) or set(RATE_KEYS) - set(table):
            raise ConfigError(f"each rate class is a table with exactly the keys {', '.join(RATE_KEYS)}", key=where)
        if not all(isinstance(table[k], int) and not isinstance(table[k], bool) and table[k] > 0 for k in RATE_KEYS):
            raise ConfigError("rate class values are positive integers", key=where)
        if not (table["disconnect"] < table["limit"] <= table["alert"] <= table["clear"] <= table["max"]):
            raise ConfigError("expected disconnect < limit <= alert <= clear <= max", key=where)
        classes.append(table)
    pairs = collections.defaultdict(list)
    for fam_sub, class_id in RATE_CLASS_OF.items():
        pairs[class_id].append(fam_sub)
    # Every other SNAC the server knows is in the first class, so clients can pace themselves.
    known = sorted(set(OscarServerProtocol.HANDLERS) | QUIET)
    pairs[classes[0]["id"]].extend(k for k in known if k not in RATE_CLASS_OF)
    return [
        RateClassInfo(t["id"], t["window"], t["clear"], t["alert"], t["limit"], t["disconnect"], t["max"], t["max"],
                      tuple(pairs.get(t["id"], ())))
        for t in classes
    ]


@implementer(IConnector)
class OscarConnector(service.MultiService):
    """``[connectors.oscar]``: the AIM/ICQ service. Its keys are declared in `OPTIONS`."""

    name = NAME
    networks = NETWORKS
    log = Logger(namespace="gateway.oscar")

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        config = read_options(NAME, config, OPTIONS)  # as the gateway did already; for a connector built directly
        self.listen = config["listen"]
        self.listen_options = api.listener_options(NAME, config)
        self.bos_address = config["bos_address"]
        self.idle_timeout = config["idle_timeout"]
        self.login_timeout = config["login_timeout"]
        self.cookie_ttl = config["cookie_ttl"]
        self.max_frame = config["max_frame"]
        self.max_message = config["max_message"]
        self.max_profile = config["max_profile"]
        self.max_buddies = config["max_buddies"]
        self.multiple_logins = config["multiple_logins"]
        for key in ("login_attempts", "login_window"):
            if config[key]:
                # The gateway's [directory] login_* keys throttle every connector alike now.
                self.log.warn("[connectors.oscar] {key} is no longer used: the gateway's [directory] login_failures"
                              " and login_window throttle OSCAR logins too", key=key)
        rate_limits = config["rate_limits"]
        self.rate_classes = _rate_classes(NAME, config["rate_classes"])
        self.rate_class_of = {k: v for k, v in RATE_CLASS_OF.items() if v in {c.id for c in self.rate_classes}}
        self.default_rate_class = self.rate_classes[0].id if rate_limits else None
        if not rate_limits:
            self.rate_class_of = {}
        self.connections = set()
        self.sessions = set()
        self.by_address = collections.defaultdict(set)  # Address -> protocols with a session
        self.cookies = {}
        # Service cookie -> gateway_oscar.chat.ServiceTicket: a chat navigation or room connection to open.
        self.service_tickets = {}
        # event id -> ICBM cookie of an IM on its way, so the recipient sees the sender's (a proxy can match
        # them); the protocol bounds it (an OrderedDict, to forget the oldest first).
        self.icbm_cookies = collections.OrderedDict()
        self.addresses = BoundedMap(10000)  # (screen name bytes, network) -> Address
        self.sender_blocks = BoundedMap(10000)  # (Address, network) -> user info block of an IM sender
        self.ports = []
        self.metrics_bad_input = 0
        self.rendezvous = Rendezvous(self)

    # -- IConnector ------------------------------------------------------------------------

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return False

    def deliver(self, event, session):
        if session is None or session.handler is None:
            raise ConnectionError(f"no OSCAR session for {event.recipient}")
        session.handler.deliver(event)

    # -- service ------------------------------------------------------------------------------

    def factory(self):
        factory = tprotocol.Factory.forProtocol(lambda: OscarServerProtocol(self))
        # A node of a cluster that takes no new logins still takes a login another node can serve:
        # the login reply sends the client to that node's BOS.
        factory.places_logins = True
        return factory

    def startService(self):
        super().startService()
        factory = self.factory()
        for description in self.listen:
            self.api.listen(description, factory, connector=NAME, options=self.listen_options).addCallbacks(
                self.ports.append, self._listen_failed, errbackArgs=(description,))

    def _listen_failed(self, failure, description):
        self.log.error("oscar connector cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage())

    def disconnect(self, session, reason):
        """End ``session`` (its node is drained): signed off as at a shutdown, the client signs on again."""
        if session.handler is not None:
            session.handler.kick(SIGNOFF_SHUTDOWN, reason)

    def stopService(self):
        super().stopService()
        for proto in list(self.connections):
            proto.kick(SIGNOFF_SHUTDOWN, "the gateway is shutting down")
        sessions = [(p, p.session) for p in list(self.sessions)]
        logouts = [self._forget(p, s) for p, s in sessions if s is not None]
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports] + logouts, consumeErrors=True)

    # -- login -------------------------------------------------------------------------------

    def login_allowed(self, address, source=None) -> bool:
        """The gateway's throttle, per account and address (kept for callers of an older version)."""
        return self.api.login_allowed(address, source)

    def login_failure(self, address, source=None):
        """Count a failed login with the gateway's throttle (kept for callers of an older version)."""
        self.api.login_failed(address, source)

    def issue_cookie(self, identity, address, screen_name, profile):
        now = self.api.clock.seconds()
        if len(self.cookies) >= 10000:
            for key in [k for k, t in self.cookies.items() if t.expires <= now]:
                del self.cookies[key]
            if len(self.cookies) >= 10000:
                return None
        cookie = os.urandom(32)
        self.cookies[cookie] = Ticket(identity, address, screen_name, profile, now + self.cookie_ttl)
        return cookie

    def take_service_ticket(self, cookie):
        """The `gateway_oscar.chat.ServiceTicket` of a service cookie, once; None when unknown or expired."""
        tickets = self.service_tickets
        if len(tickets) > 10000:
            now = self.api.clock.seconds()
            for key in [k for k, t in tickets.items() if t.expires <= now]:
                del tickets[key]
        ticket = tickets.pop(cookie, None)
        if ticket is None or ticket.expires <= self.api.clock.seconds():
            return None
        return ticket

    def take_cookie(self, cookie):
        """The ticket of a login cookie, once; None when unknown or expired."""
        ticket = self.cookies.pop(cookie, None)
        if ticket is None or ticket.expires <= self.api.clock.seconds():
            return None
        return ticket

    # A login another node of a cluster should serve: its login reply names that node's BOS, and the
    # cookie is a ticket every node can take once (`api.share_ticket`), not one of this node's own.

    def placed_cookie(self, identity, address, screen_name, profile):
        """
        Fire with ``(cookie, BOS address)`` for a login that another node
        of the cluster should serve, or None to serve it here.
        """
        target = self.api.placement(NAME)
        if target is None:
            return defer.succeed(None)
        data = {"identity": identity.id, "address": str(address), "screen_name": screen_name.decode("latin-1"),
                "profile": {"name": profile.name, "version": list(profile.version), "html_utf8": profile.html_utf8,
                            "multi_login": profile.multi_login}}
        d = self.api.share_ticket(NAME, data, self.cookie_ttl)

        def here(failure):
            self.log.warn("oscar: the login of {who} is served here, not at {target}: {error}", who=str(address),
                          target=target, error=failure.getErrorMessage())
            return None

        return d.addCallbacks(lambda key: (bytes.fromhex(key), target), here)

    def claim_cookie(self, cookie):
        """Fire with the `Ticket` another node left for this cookie, or None."""
        d = self.api.claim_ticket(NAME, cookie.hex())

        def found(data):
            if data is None:
                return None
            address = Address.parse(data["address"])
            profile = adapter.ClientProfile(data["profile"]["name"], tuple(data["profile"]["version"]),
                                            data["profile"]["html_utf8"], data["profile"]["multi_login"])

            def ticket(identity):
                if identity is None or identity.id != data["identity"]:
                    return None  # the person is gone, or the address is someone else's now
                return Ticket(identity, address, data["screen_name"].encode("latin-1"), profile,
                              self.api.clock.seconds() + self.cookie_ttl)

            return self.api.identity_for(address).addCallback(ticket)

        return d.addCallback(found)

    # -- sessions ------------------------------------------------------------------------------

    def start_session(self, proto, status, note):
        proto.logging_in = True
        ticket = proto.ticket
        kick = ticket.profile.multi_login == 3 or (self.multiple_logins == "kick" and ticket.profile.multi_login != 1)
        if kick:
            for other in list(self.by_address.get(ticket.address, ())):
                other.kick(SIGNOFF_OTHER_LOCATION, "signed on from another location")
        d = self.api.login(ticket.identity, ticket.address, self.name, handler=proto, status=status, note=note,
                           source=proto.host)

        def logged_in(session):
            proto.logging_in = False
            if proto.state == "closed":
                proto.login_ended()
                return self.api.logout(session)
            proto.session = session
            self.sessions.add(proto)
            self.by_address[session.address].add(proto)
            self.log.info("oscar: {who} online ({client})", who=str(session.address), client=proto.profile.name)
            # The client may have changed its status while the login was under way.
            proto._presence_changed()
            proto.login_ended()
            return session

        def failed(failure):
            proto.logging_in = False
            self.log.failure("oscar: login of {who} failed", failure, who=str(ticket.address))
            proto.kick(0x0003, "login failed")
            proto.login_ended()

        return d.addCallbacks(logged_in, failed)

    def session_gone(self, proto, session):
        if proto in self.sessions:
            self._forget(proto, session)

    def _forget(self, proto, session):
        self.sessions.discard(proto)
        peers = self.by_address.get(session.address)
        if peers is not None:
            peers.discard(proto)
            if not peers:
                del self.by_address[session.address]
        self.log.info("oscar: {who} offline", who=str(session.address))
        return self.api.logout(session)

    # -- IMs ---------------------------------------------------------------------------------------

    def address_for(self, screen_name, network):
        """`adapter.address_for`, remembered (it is on every IM's path)."""
        key = (screen_name, network)
        address = self.addresses.get(key)
        if address is None:
            address = self.addresses[key] = adapter.address_for(screen_name, network)
        return address

    def sender_block(self, address, network):
        """The user info block an IM from ``address`` carries to a client on ``network``."""
        key = (address, network)
        block = self.sender_blocks.get(key)
        if block is None:
            user_class = adapter.CLASS_ICQ if network == "icq" else adapter.CLASS_AIM
            block = codec.encode_user_info(adapter.screen_name_of(address)[:255], [(0x0001, codec.u16(user_class))])
            self.sender_blocks[key] = block
        return block

    # -- buddy lists ---------------------------------------------------------------------------------

    @inlineCallbacks
    def shown_as(self, address, network):
        """How ``address`` appears to a client on ``network``: as the bus presents senders."""
        identity = yield self.api.identity_for(address)
        if identity is not None:
            handle = identity.handle_on(network)
            if handle is not None:
                returnValue(handle)
        if address.network == network:
            returnValue(address)
        alias = yield self.api.alias_for(address, network, self.domain_for(network))
        returnValue(alias)

    @inlineCallbacks
    def load_feedbag(self, proto):
        contacts = yield self.api.contacts(proto.ticket.identity.id)
        network = proto.address.network
        shown = []
        for contact in contacts[: self.max_buddies]:
            address = yield self.shown_as(contact.address, network)
            shown.append((contact, adapter.screen_name_of(address)[:255]))
        returnValue(adapter.Feedbag.from_contacts(shown, self.api.clock.seconds()))

    @inlineCallbacks
    def store_feedbag(self, proto, added=()):
        contacts = proto.feedbag.contacts(proto.address.network)
        yield self.api.set_contacts(proto.ticket.identity.id, contacts)
        for item in added:
            try:
                address = adapter.address_for(item.name, proto.address.network)
            except AddressError:
                continue
            yield self.tell_presence(proto, address)

    @inlineCallbacks
    def change_contacts(self, proto, add=(), remove=()):
        """03/04 and 03/05: a client-side buddy list changes the person's contact list too."""
        person = proto.ticket.identity.id
        contacts = yield self.api.contacts(person)
        have = {c.address for c in contacts}
        gone = set(remove)
        contacts = [c for c in contacts if c.address not in gone]
        fresh = [a for a in add if a not in have]
        contacts += [Contact(a) for a in fresh]
        if fresh or gone:
            yield self.api.set_contacts(person, contacts[: self.max_buddies])
        for address in fresh:
            yield self.tell_presence(proto, address)

    @inlineCallbacks
    def tell_presence(self, proto, address):
        """A buddy was just added: if they are online, send their presence through the path."""
        identity = yield self.api.identity_for(address)
        if identity is None:
            original = yield self.api.resolve_alias(address)
            if original is not None:
                identity = yield self.api.identity_for(original)
        if identity is not None and proto.session is None and proto.logging_in:
            # Added while the session was still being set up (the client sends 01/02 and the add together).
            yield proto.logged_in()
        if identity is None or proto.session is None:
            return
        status, note = self.api.presence_of(identity.id)
        if status is not PresenceStatus.OFFLINE:
            yield self.api.submit(Presence(sender=address, status=status, note=note, recipient=proto.address))

    @inlineCallbacks
    def user_info(self, target, network):
        """What a locate query could tell about ``target`` (a `UserInfo`), or None when offline or unknown."""
        for proto in self.by_address.get(target, ()):
            status, note = proto._status()
            text, html = adapter.rich_parts(adapter.decode_rich(proto.profile_text, proto.profile_mime))
            returnValue(UserInfo(target, status, note, text, html, proto.signed_on_at))
        subject = target
        identity = yield self.api.identity_for(target)
        if identity is None:
            original = yield self.api.resolve_alias(target)
            if original is not None:
                subject = original
                identity = yield self.api.identity_for(original)
        if identity is None:
            returnValue(None)
        status, note = self.api.presence_of(identity.id)
        if status is PresenceStatus.OFFLINE:
            returnValue(None)
        started = min((s.started for s in self.api.sessions_of(identity.id)), default=0)
        returnValue(UserInfo(subject, status, note, "", None, int(started)))

    @inlineCallbacks
    def disclose_info(self, asker, info, want_profile, want_away):
        """
        The answer to a locate query as the path decided it: the `Profile` to
        render, or None to answer as for someone offline. The answer shows
        whether the subject is online and away, so their presence is
        disclosed first (a rule hiding presence hides the answer); then the
        profile and away message that were asked for, as kind ``info``.
        """
        presence = Presence(sender=info.address, status=info.status, recipient=asker,
                            created=self.api.clock.seconds())
        outcome, _ = yield self.api.disclose(presence)
        if not outcome.delivered:
            returnValue(None)
        profile = self.api.profile(
            info.address, asker, status=info.status, note=info.note if want_away else "",
            text=info.text if want_profile else "", html=info.html if want_profile else None,
        )
        outcome, event = yield self.api.disclose(profile)
        returnValue(event if outcome.delivered else None)


@hookimpl
def gateway_register_connectors(api):
    api.register_connector(NAME, OscarConnector, options=OPTIONS)
    api.register_connector(PROXY_NAME, OscarProxyConnector, options=PROXY_OPTIONS)
