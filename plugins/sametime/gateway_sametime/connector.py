"""The ``[connectors.sametime]`` connector service and the plugin that registers it."""

from __future__ import annotations

import collections
import json
import os

import attrs
from twisted.application import service
from twisted.internet import protocol, threads
from twisted.internet.defer import (
    DeferredList,
    DeferredLock,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    returnValue,
)
from twisted.logger import Logger
from zope.interface import implementer

from gateway.plugin import (
    LISTENER_OPTIONS,
    ConfigError,
    Contact,
    IConnector,
    Option,
    Presence,
    PresenceStatus,
    Verdict,
    hookimpl,
    positive,
    read_options,
)

from gateway_sametime import adapter, codec
from gateway_sametime.protocol import SametimeServerProtocol

NAME = "sametime"
LOGIN_CIPHERS = ("dh", "rc2-40")
CHANNEL_CIPHERS = {"rc2-128": codec.CIPHER_RC2_128, "rc2-40": codec.CIPHER_RC2_40}
PRESENCE_CACHE = 10000


def _texts(value):
    """An `Option` check: a list of text."""
    return None if all(isinstance(v, str) for v in value) else "a list of text"


def _ciphers(value):
    """An `Option` check: channel cipher names."""
    if all(isinstance(v, str) and v in CHANNEL_CIPHERS for v in value):
        return None
    return f"some of {', '.join(map(repr, CHANNEL_CIPHERS))}"


# The keys of [connectors.sametime]; the README's option reference is generated from them.
OPTIONS = (
    Option("listen", list, ["tcp:1533:interface=127.0.0.1"], "endpoint strings", check=_texts),
    Option("login_cipher", str, "dh", '"dh" offers a Diffie-Hellman key (clients log in with RC2/128);'
           ' "rc2-40" offers none (clients use RC2/40, which needs allow_weak_login).', choices=LOGIN_CIPHERS),
    Option("allow_plain", bool, False, "accept logins with the password in clear"),
    Option("allow_weak_login", bool, False, "accept the RC2/40 login, whose key travels with the ciphertext (in"
           " effect the password in clear)"),
    Option("channel_ciphers", list, list(CHANNEL_CIPHERS), "IM channel ciphers accepted and offered, preferred"
           " first; [] for none", check=_ciphers),
    Option("rich_text", bool, True, "HTML and MIME with clients that announce NotesBuddy features"),
    Option("community", str, "", "the community of the user ids the server sends (in login info and channel ids)"),
    Option("idle_timeout", float, 600.0, "seconds without a message before a session is closed", check=positive),
    Option("login_timeout", float, 30.0, "seconds a connection has to log in", check=positive),
    Option("accept_timeout", float, 30.0, "seconds a client has to accept a channel the server opened",
           check=positive),
    Option("rate", int, 50, "messages a second per connection", check=positive),
    Option("max_frame", int, 65536, "bytes per message", check=positive),
    Option("max_message", int, 32768, "bytes of text per IM (multipart included)", check=positive),
    Option("max_channels", int, 64, "channels per session", check=positive),
    Option("max_watched", int, 1000, "users per AWARE list, buddy list or look-up", check=positive),
    Option("redirect_host", str, "", "when set, every login is answered with LOGIN_REDIRECT to this host (in a cluster, "
           "without it: the logins another node should take, to that node)"),
    Option("redirect_server_id", str, "", "the server id sent with LOGIN_REDIRECT"),
    Option("trace", bool, False, "log every message in and out (debug level)"),
    Option("privacy_file", str, "sametime-privacy.json", "where privacy lists are kept, under the data folder"
           ' (or absolute); "" keeps them in memory'),
) + LISTENER_OPTIONS


@attrs.frozen
class Settings:
    """The validated ``[connectors.sametime]`` table (its keys, without the listener limits; see `OPTIONS`)."""

    listen: tuple
    login_cipher: str
    allow_plain: bool
    allow_weak_login: bool
    channel_ciphers: tuple
    rich_text: bool
    community: str
    idle_timeout: float
    login_timeout: float
    accept_timeout: float
    rate: int
    max_frame: int
    max_message: int
    max_channels: int
    max_watched: int
    redirect_host: str
    redirect_server_id: str
    trace: bool
    privacy_file: str

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        """The settings of a ``[connectors.sametime]`` table (checked by `read_options`; missing keys default)."""
        config = read_options(NAME, config, OPTIONS)
        if config["login_cipher"] == "rc2-40" and not config["allow_weak_login"]:
            raise ConfigError(
                "login_cipher 'rc2-40' leaves only the RC2/40 login, whose key travels with the password "
                "(in effect the password in clear); set allow_weak_login = true to accept that",
                key=f"connectors.{NAME}.login_cipher",
            )
        values = {field.name: config[field.name] for field in attrs.fields(cls)}
        values["listen"] = tuple(values["listen"])
        values["channel_ciphers"] = tuple(values["channel_ciphers"])
        return cls(**values)

    @property
    def cipher_ids(self) -> tuple:
        """The channel cipher ids accepted, preferred first."""
        return tuple(CHANNEL_CIPHERS[name] for name in self.channel_ciphers)

    @property
    def auth_types(self) -> frozenset:
        types = {codec.AUTH_RC2_40} if self.allow_weak_login else set()
        if self.login_cipher == "dh":
            types.add(codec.AUTH_RC2_128)
        if self.allow_plain:
            types.add(codec.AUTH_PLAIN)
        return frozenset(types)


@implementer(IConnector)
class SametimeConnector(service.MultiService):
    """Sametime clients log in here as to their community server."""

    name = NAME
    networks = (adapter.NETWORK,)
    log = Logger(namespace="gateway.sametime")

    def __init__(self, api, config):
        super().__init__()
        self.api = api
        self.settings = Settings.from_config(config)
        self.listen_options = api.listener_options(NAME, config)
        self.sessions = set()
        self.ports = []
        self.privacy = {}  # identity id -> codec.PrivacyInfo, as the person's client last set it
        self._unreachable = set()  # cluster nodes LOGIN_REDIRECT cannot send clients to
        self._presence = collections.OrderedDict()  # address -> (status, note), for foreign people
        self._locks = {}
        self._privacy_rules = {}  # identity id -> (deny, addresses, identity ids) resolved from the list
        self._logins = 0

    # -- IConnector --------------------------------------------------------

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return False

    def deliver(self, event, session):
        if event.kind == "presence" and event.sender.network == adapter.NETWORK:
            self._remember(event)
        if session is None or session.handler is None:
            raise ConnectionError(f"no Sametime session for {event.recipient}")
        return session.handler.deliver(event)

    def _remember(self, event):
        self._presence[event.sender] = (event.status, event.note)
        self._presence.move_to_end(event.sender)
        while len(self._presence) > PRESENCE_CACHE:
            self._presence.popitem(last=False)

    # -- service -----------------------------------------------------------

    def factory(self):
        factory = protocol.Factory.forProtocol(lambda: SametimeServerProtocol(self))
        # A node of a cluster that takes no new logins still takes a connection another node can serve:
        # the login is sent there with LOGIN_REDIRECT, as Sametime clients expect.
        factory.places_logins = True
        return factory

    def startService(self):
        super().startService()
        self._load_privacy()
        factory = self.factory()
        for description in self.settings.listen:
            self.api.listen(description, factory, connector=NAME, options=self.listen_options).addCallbacks(
                self._listening, self._listen_failed, callbackArgs=(description,), errbackArgs=(description,)
            )

    def _listening(self, port, description):
        self.ports.append(port)
        self.log.info("sametime: listening on {where}", where=description)

    def _listen_failed(self, failure, description):
        self.log.error(
            "sametime: cannot listen on {where}: {why}", where=description, why=failure.getErrorMessage()
        )

    def cannot_redirect(self, target, port):
        """A less loaded node listens on another port: LOGIN_REDIRECT cannot send clients there (said once)."""
        if target not in self._unreachable:
            self._unreachable.add(target)
            self.log.warn("sametime: cannot send logins to {target} with LOGIN_REDIRECT (it names a host only, "
                          "and this node listens on {port}): give every node the same Sametime port",
                          target=target, port=port)

    def disconnect(self, session, reason):
        """End ``session`` (its node is drained): its channel closed as at a shutdown; the client logs in again."""
        handler = session.handler
        if handler is not None:
            handler.send(codec.ChannelDestroy(codec.ERR_CONNECTION_CLOSED, channel=0))
            handler.close()

    def stopService(self):
        super().stopService()
        sessions = list(self.sessions)
        self.sessions.clear()
        logouts = []
        for session in sessions:
            handler = session.handler
            handler.session = None
            handler.send(codec.ChannelDestroy(codec.ERR_CONNECTION_CLOSED, channel=0))
            handler.close()
            logouts.append(self.api.logout(session))
        ports, self.ports = self.ports, []
        return gatherResults([port.stopListening() for port in ports] + logouts)

    def new_login_id(self) -> str:
        """A login id unique on this node (clients key RC2/40 channels on its first five bytes)."""
        self._logins += 1
        return f"{self.api.node or 'gateway'}-{self._logins:06x}"

    # -- people --------------------------------------------------------------

    @inlineCallbacks
    def known(self, address):
        """Fire with the display text of who ``address`` reaches (a person or a foreign alias), or None."""
        identity = yield self.api.identity_for(address)
        if identity is not None:
            returnValue(identity.display_name or address.handle)
        foreign = yield self.api.resolve_alias(address)
        returnValue(str(foreign) if foreign is not None else None)

    @inlineCallbacks
    def presence_for(self, watcher, address, watcher_address=None):
        """
        Fire with ``(status, note, name)`` of ``address`` as ``watcher`` (an
        Identity, logged in as ``watcher_address``) may see it. Telling it is
        a disclosure: with ``watcher_address`` it crosses the path (policy,
        hooks, archive), and a refused one reads as offline.
        """
        if address is None:
            returnValue((PresenceStatus.OFFLINE, "", ""))
        identity = yield self.api.identity_for(address)
        if identity is None:
            status, note = self._presence.get(address, (PresenceStatus.OFFLINE, ""))
            foreign = yield self.api.resolve_alias(address)
            name = str(foreign) if foreign is not None else address.handle
        else:
            if watcher is not None and self._blocks(identity, watcher, address_seen=None):
                returnValue((PresenceStatus.OFFLINE, "", identity.display_name))
            status, note = self.api.presence_of(identity.id)
            name = identity.display_name or address.handle
        if watcher_address is not None:
            outcome, shown = yield self.api.disclose(Presence(address, status, note, recipient=watcher_address))
            if not outcome.delivered:
                returnValue((PresenceStatus.OFFLINE, "", name))
            status, note = shown.status, shown.note
        returnValue((status, note, name))

    @inlineCallbacks
    def shown_as(self, address):
        """How ``address`` (any network) appears in a Sametime buddy list."""
        if address.network == adapter.NETWORK:
            returnValue(address.handle)
        identity = yield self.api.identity_for(address)
        if identity is not None:
            handle = identity.handle_on(adapter.NETWORK)
            if handle is not None:
                returnValue(handle.handle)
        alias = yield self.api.alias_for(address, adapter.NETWORK, "")
        returnValue(alias.handle)

    @inlineCallbacks
    def _address(self, user_id):
        """The address to store for a user id of a Sametime list (an alias stands for its foreign address)."""
        address = adapter.address_of(user_id)
        if address.network == adapter.NETWORK:
            foreign = yield self.api.resolve_alias(address)
            if foreign is not None:
                returnValue(foreign)
        returnValue(address)

    @inlineCallbacks
    def _translated(self, identity_id):
        contacts = yield self.api.contacts(identity_id)
        ids = yield gatherResults([self.shown_as(c.address) for c in contacts])
        returnValue(list(zip(contacts, ids)))

    @inlineCallbacks
    def list_entries(self, identity_id):
        """Fire with ``[(group, user_id, name)]``: the person's contact list as a Sametime buddy list."""
        seen, out = set(), []
        for contact, user_id in (yield self._translated(identity_id)):
            if user_id.lower() not in seen:
                seen.add(user_id.lower())
                out.append((contact.group, user_id, contact.name))
        returnValue(out)

    def save_entries(self, identity_id, entries):
        """Replace the person's contacts with a saved Sametime buddy list (each contact keeps its own address)."""
        return self._locked(identity_id, self._save_entries, identity_id, entries)

    @inlineCallbacks
    def _save_entries(self, identity_id, entries):
        existing = {user_id.lower(): contact for contact, user_id in (yield self._translated(identity_id))}
        contacts, seen = [], set()
        for group, user_id, name in entries:
            key = user_id.lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                address = existing[key].address if key in existing else (yield self._address(user_id))
            except ValueError:
                self.log.info("sametime: skipping buddy {user!r}: not a user id", user=user_id)
                continue
            contacts.append(Contact(address, group or "Buddies", name or ""))
        yield self.api.set_contacts(identity_id, contacts)
        returnValue(contacts)

    def ensure_contacts(self, identity_id, user_ids):
        """Add the users a client watches to the person's contacts (so the bus tells them about changes)."""
        return self._locked(identity_id, self._ensure_contacts, identity_id, user_ids)

    @inlineCallbacks
    def _ensure_contacts(self, identity_id, user_ids):
        pairs = yield self._translated(identity_id)
        have = {user_id.lower() for _, user_id in pairs}
        added = []
        for user_id in user_ids:
            if user_id.lower() in have:
                continue
            have.add(user_id.lower())
            try:
                added.append(Contact((yield self._address(user_id))))
            except ValueError:
                continue
        if added:
            yield self.api.set_contacts(identity_id, [c for c, _ in pairs] + added)
        returnValue(added)

    def _locked(self, key, function, *args):
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()

        def release(result):
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
            return result

        return lock.run(function, *args).addBoth(release)

    # -- privacy lists -> policy ------------------------------------------------

    def _privacy_path(self):
        name = self.settings.privacy_file
        return (name if os.path.isabs(name) else self.api.data_path(name)) if name else None

    def _load_privacy(self):
        """Read the privacy lists kept from earlier runs (once, at start-up)."""
        path = self._privacy_path()
        if path is None or not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            for identity_id, entry in stored.items():
                users = tuple(codec.PrivacyUser(u[0], u[1], bool(u[2]), u[3]) for u in entry["users"])
                self.set_privacy(identity_id, codec.PrivacyInfo(bool(entry["deny"]), users), save=False)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            self.log.error("sametime: cannot read the privacy lists in {path}: {why}", path=path, why=str(e))

    def _save_privacy(self):
        path = self._privacy_path()
        if path is None:
            return None
        data = {
            identity_id: {"deny": info.deny, "users": [[u.id, u.community, u.full, u.name] for u in info.users]}
            for identity_id, info in self.privacy.items()
        }

        def write():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(path + ".tmp", path)

        def failed(failure):
            self.log.warn(
                "sametime: cannot save the privacy lists to {path}: {why}", path=path, why=failure.getErrorMessage()
            )

        reactor = self.api.reactor
        if hasattr(reactor, "getThreadPool"):
            d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), write)
        else:  # a test clock: write now
            d = maybeDeferred(write)
        return d.addErrback(failed)

    def set_privacy(self, identity_id, info, save=True):
        """Keep a person's privacy list (as their client set it) and the people and addresses it names."""
        info = codec.PrivacyInfo(info.deny, tuple(info.users[: self.settings.max_watched]))
        changed = self.privacy.get(identity_id) != info
        self.privacy[identity_id] = info
        if changed:
            self.log.info(
                "sametime: privacy list of {person}: {mode} {n} users",
                person=identity_id, mode="deny" if info.deny else "allow only", n=len(info.users),
            )
        if save and changed:
            self._save_privacy()

        def resolved(results):
            addresses, people = set(), set()
            for ok, value in results:
                if ok and value is not None:
                    address, identity = value
                    addresses.add(address)
                    if identity is not None:
                        people.add(identity.id)
            if self.privacy.get(identity_id) is info:
                self._privacy_rules[identity_id] = (info.deny, frozenset(addresses), frozenset(people))

        lookups = [self._privacy_entry(u.id) for u in info.users]
        return DeferredList(lookups, consumeErrors=True).addCallback(resolved)

    @inlineCallbacks
    def _privacy_entry(self, user_id):
        try:
            address = yield self._address(user_id)
        except ValueError:
            returnValue(None)
        identity = yield self.api.identity_for(address)
        returnValue((address, identity))

    def _blocks(self, owner, other, address_seen):
        """True when ``owner``'s privacy list keeps out ``other`` (an Identity or None) seen as ``address_seen``."""
        rule = self._privacy_rules.get(owner.id)
        if rule is None:
            return False
        deny, addresses, people = rule
        hit = (other is not None and other.id in people) or address_seen in addresses
        return hit if deny else not hit

    def privacy_verdict(self, event, sender, recipient):
        """A deny `Verdict` when a Sametime privacy list forbids ``event``, else None."""
        if event.kind == "presence":
            owner, other, seen = sender, recipient, event.recipient
        else:
            owner, other, seen = recipient, sender, event.sender
        if owner is None or owner.id not in self._privacy_rules or seen is None:
            return None
        if other is not None and other.id == owner.id:
            return None
        if self._blocks(owner, other, seen):
            return Verdict.deny(
                f"{owner.display_name or owner.id} does not accept this from {seen} (Sametime privacy list)",
                rule="sametime-privacy",
            )
        return None


class SametimePlugin:
    """The entry point ``sametime``: registers the connector and applies its users' privacy lists as policy."""

    def __init__(self):
        self.connectors = []

    @hookimpl
    def gateway_register_connectors(self, api):
        api.register_connector(NAME, self.build, options=OPTIONS)

    def build(self, api, config):
        connector = SametimeConnector(api, config)
        self.connectors.append(connector)
        return connector

    @hookimpl
    def gateway_policy_check(self, event, sender, recipient):
        for connector in self.connectors:
            verdict = connector.privacy_verdict(event, sender, recipient)
            if verdict is not None:
                return verdict
        return None

