"""The LDAP directory: people, groups and passwords from an LDAP server, over ldaptor."""

from __future__ import annotations

import hashlib
import hmac
import os

from twisted.internet import endpoints, protocol, ssl
from twisted.internet.defer import fail, inlineCallbacks, returnValue, succeed
from twisted.logger import Logger
from zope.interface import implementer

from gateway.directory.cache import TTLCache
from gateway.directory import ldaphash
from gateway.directory.sql import GATEWAY_NETWORK, SQLDirectory, _address
from gateway.interfaces import DirectoryUnavailable, IDirectory
from gateway.model import Address, AddressError, Identity

try:
    from ldaptor.protocols import pureldap
    from ldaptor.protocols.ldap import ldaperrors
    from ldaptor.protocols.ldap.ldapclient import LDAPClient
    from ldaptor.protocols.ldap.ldapsyntax import LDAPEntry
except ImportError:  # pragma: no cover - a clear message at start-up instead
    LDAPClient = None


def escape(value: str) -> str:
    """A value made safe inside an LDAP search filter (RFC 4515)."""
    out = []
    for ch in value:
        if ch in "\\*()\x00":
            out.append("\\%02x" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_rdn_value(dn: str) -> str:
    """``cn=sales,ou=groups,dc=x`` -> ``sales``."""
    first = dn.split(",", 1)[0]
    return first.split("=", 1)[1].strip() if "=" in first else first


class _Verifier:
    """Remembers, in memory and salted, the last password that LDAP accepted for someone."""

    def __init__(self, password):
        self.salt = os.urandom(16)
        self.digest = self._hash(password)

    def _hash(self, password):
        return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), self.salt, 1000)

    def matches(self, password):
        return hmac.compare_digest(self.digest, self._hash(password))


class LDAPServer:
    """
    Talks to one LDAP server: a service connection kept open for searches
    (re-opened when it drops), and a fresh connection per password check.
    Every operation is bounded by ``timeout``; an unreachable server is a
    `DirectoryUnavailable`.
    """

    log = Logger()

    def __init__(self, config, reactor):
        if LDAPClient is None:
            raise RuntimeError("the LDAP directory needs ldaptor: pip install 'ldaptor>=21.2'")
        self.config = config
        self.reactor = reactor
        scheme, _, rest = config.url.partition("://")
        hostport = rest.split("/", 1)[0]
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        self.tls = scheme == "ldaps"
        self.host = host or "127.0.0.1"
        self.port = int(port) if port else (636 if self.tls else 389)
        self._service = None  # the open service connection, or a Deferred of one

    def _context(self):
        trust = None
        if self.config.ca_file:
            with open(self.config.ca_file, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(self.host, trustRoot=trust)

    @inlineCallbacks
    def _open(self):
        if self.tls:
            endpoint = endpoints.wrapClientTLS(
                self._context(), endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.config.timeout)
            )
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.config.timeout)
        client = yield endpoint.connect(protocol.Factory.forProtocol(LDAPClient))
        if self.config.starttls and not self.tls:
            yield self._timed(client.startTLS(self._context()))
        returnValue(client)

    def _timed(self, d):
        return d.addTimeout(self.config.timeout, self.reactor)

    def _unavailable(self, failure, what):
        if failure.check(ldaperrors.LDAPInvalidCredentials):
            return failure
        if failure.check(ldaperrors.LDAPException) and not failure.check(ldaperrors.LDAPUnavailable, ldaperrors.LDAPBusy):
            return failure
        self.log.warn(
            "LDAP server {url} unavailable while {what}: {why}",
            url=self.config.url, what=what, why=failure.getErrorMessage() or failure.type.__name__,
        )
        raise DirectoryUnavailable(f"the LDAP directory at {self.config.url} is unavailable: {failure.getErrorMessage()}")

    @inlineCallbacks
    def _service_client(self):
        client = self._service
        if client is not None and getattr(client, "connected", False):
            returnValue(client)
        self._service = None
        client = yield self._timed(self._open())
        if self.config.bind_dn:
            yield self._timed(client.bind(self.config.bind_dn, self.config.bind_password))
        self._service = client
        returnValue(client)

    def search(self, base, filter_text, attributes, scope=None):
        """Fire with [(dn, {attribute: [text]})] for ``filter_text`` under ``base`` (the whole subtree by default)."""

        @inlineCallbacks
        def go():
            client = yield self._service_client()
            entry = LDAPEntry(client, base)
            try:
                results = yield self._timed(entry.search(filterText=filter_text, attributes=attributes, scope=scope))
            except Exception:
                self._drop()
                raise
            found = []
            for result in results:
                values = {}
                for key in result.keys():
                    values[_text(key).lower()] = [_text(v) for v in result[key]]
                found.append((result.dn.getText(), values))
            returnValue(found)

        return go().addErrback(self._unavailable, "searching")

    def _drop(self):
        client, self._service = self._service, None
        if client is not None and getattr(client, "transport", None) is not None:
            client.transport.loseConnection()

    def check_password(self, dn, password):
        """Fire with True when binding as ``dn`` with ``password`` works, False when refused."""
        if not password:
            return succeed(False)  # an empty password would be an anonymous bind

        @inlineCallbacks
        def go():
            client = yield self._timed(self._open())
            try:
                yield self._timed(client.bind(dn, password))
            except ldaperrors.LDAPInvalidCredentials:
                returnValue(False)
            finally:
                client.transport.loseConnection()
            returnValue(True)

        return go().addErrback(self._unavailable, "checking a password")

    def compare_password(self, dn, attribute, password):
        """
        Fire with True when ``password`` matches a hashed value of
        ``attribute`` (e.g. userPassword) of ``dn``, read with the service
        account; False when it does not, or when no value can be checked.
        """
        if not password:
            return succeed(False)

        def check(found):
            values = found[0][1].get(attribute.lower(), []) if found else []
            unsupported = []
            for value in values:
                try:
                    if ldaphash.verify(value, password):
                        return True
                except ldaphash.UnsupportedScheme as e:
                    unsupported.append(str(e))
            if unsupported or not values:
                self.log.warn(
                    "LDAP: cannot compare the password of {dn}: {why}", dn=dn,
                    why="; ".join(unsupported) or f"no {attribute} the service account may read",
                )
            return False

        d = self.search(dn, "(objectClass=*)", [attribute], scope=pureldap.LDAP_SCOPE_baseObject)
        return d.addCallback(check)

    def close(self):
        self._drop()


@implementer(IDirectory)
class LDAPDirectory(SQLDirectory):
    """
    People, handles, groups and passwords from LDAP; contact lists, aliases,
    login secrets and people LDAP does not know from the SQL directory
    underneath. Look-ups are cached (size and age from ``[directory]``,
    "no such person" for ``negative_ttl``); while LDAP is unreachable the
    cache keeps serving until entries expire, and a password LDAP accepted
    before is still accepted for as long (kept only as a salted hash in
    memory); past that, logins fail with `DirectoryUnavailable`.

    Protocols that never send the password (OSCAR MD5, SIP digest, XMPP
    SCRAM) need secrets derived from it, which LDAP does not hold. With
    ``learn_secrets``, a login that sent a password LDAP accepted (XMPP
    PLAIN, OSCAR roasted, Sametime, ...) derives them and keeps them in the
    SQL directory, usable for ``learned_secrets_max_age`` after the last
    such login. A login LDAP refuses with the very password they were
    derived from means it changed there: they are dropped.
    """

    log = Logger()
    secrets_complete = False

    def __init__(self, config, store, dbthread, clock, server, cache_size=10000, cache_ttl=60.0, password_thread=None,
                 hash_queue=None):
        super().__init__(store, dbthread, clock, cache_size, cache_ttl, password_thread, hash_queue)
        self.config = config
        self._clock = clock
        self.server = server
        self._negative_ttl = min(cache_ttl, config.negative_ttl)
        self._entries = TTLCache(clock, cache_size, cache_ttl)  # identity id -> DN
        self._verifiers = TTLCache(clock, cache_size, cache_ttl)  # identity id -> _Verifier
        self._attributes = sorted(
            {config.id_attribute, config.name_attribute, *config.handles.values()}
            | ({"memberOf"} if config.membership == "memberOf" else set())
        )

    def stop(self):
        self.server.close()
        return super().stop()

    # -- LDAP look-ups ---------------------------------------------------------

    def _people_filter(self, attribute, value):
        return f"(&{self.config.people_filter}({attribute}={escape(value)}))"

    @inlineCallbacks
    def _find(self, attribute, value):
        """The `Identity` of the one person whose ``attribute`` is ``value`` in LDAP, or None."""
        found = yield self.server.search(self.config.people_base, self._people_filter(attribute, value), self._attributes)
        if len(found) != 1:
            if len(found) > 1:
                self.log.warn("LDAP: {n} people have {attribute}={value}; ignoring them", n=len(found), attribute=attribute, value=value)
            returnValue(None)
        dn, values = found[0]
        identity = yield self._identity(dn, values)
        returnValue(identity)

    @inlineCallbacks
    def _identity(self, dn, values):
        config = self.config
        ids = values.get(config.id_attribute.lower())
        if not ids:
            returnValue(None)
        identity_id = ids[0].strip().lower()
        handles = []
        for network, attribute in config.handles.items():
            for value in values.get(attribute.lower(), ()):
                try:
                    handles.append(Address.parse(f"{network}:{value}"))
                except AddressError:
                    self.log.warn("LDAP: {dn} has an unusable {network} handle {value!r}", dn=dn, network=network, value=value)
        groups = yield self._groups(dn, identity_id, values)
        names = values.get(config.name_attribute.lower()) or [identity_id]
        self._entries.put(identity_id, dn)
        returnValue(Identity(identity_id, names[0], tuple(handles), frozenset(groups)))

    @inlineCallbacks
    def _groups(self, dn, identity_id, values):
        config = self.config
        if config.membership == "memberOf":
            returnValue([_first_rdn_value(group_dn) for group_dn in values.get("memberof", ())])
        if not config.groups_base:
            returnValue([])
        member = identity_id if config.membership == "memberUid" else dn
        query = f"(&{config.groups_filter}({config.membership}={escape(member)}))"
        found = yield self.server.search(config.groups_base, query, [config.group_name_attribute])
        names = []
        for _, group_values in found:
            names.extend(group_values.get(config.group_name_attribute.lower(), ())[:1])
        returnValue(names)

    def _ldap_identity_for(self, address):
        if address.network == GATEWAY_NETWORK:
            attribute, value = self.config.id_attribute, address.user
        else:
            attribute = self.config.handles.get(address.network)
            value = address.handle
        if attribute is None:
            return self._db.call(self.store.identity_for, address)
        d = self._find(attribute, value)
        return d.addCallback(self._or_sql, self.store.identity_for, address)

    def _ldap_get_identity(self, identity_id):
        d = self._find(self.config.id_attribute, identity_id)
        return d.addCallback(self._or_sql, self.store.get_identity, identity_id)

    def _or_sql(self, identity, fn, *args):
        """LDAP wins; people only the SQL directory knows (local accounts) still count."""
        if identity is not None:
            return identity
        return self._db.call(fn, *args)

    # -- IDirectory ----------------------------------------------------------------

    def identity_for(self, address):
        address = _address(address)
        return self._cached(
            self._lookups, address, None, address,
            remember=self._remember_identity, call=self._ldap_identity_for,
        )

    def get_identity(self, identity_id):
        identity_id = identity_id.strip().lower()
        return self._cached(self._lookups, identity_id, None, identity_id, call=self._ldap_get_identity)

    def authenticate(self, address, password, source=None):
        """
        Bind as the person (or compare, with ``password_attribute``): the
        LDAP server does the hashing, so binds wait in no queue here (the
        gateway's throttle bounds those in flight per account and address,
        and per address). Local (SQL) accounts are checked as
        `SQLDirectory` does, in its queue by ``source``.
        """
        address = _address(address)
        d = self.identity_for(address)
        d.addCallback(self._check, address, password, source)
        return d

    def _check(self, identity, address, password, source=None):
        if identity is None:
            return None
        dn = self._entries.get(identity.id)
        if dn is None:
            # A local (SQL) account, or an LDAP entry whose cached DN expired before the identity.
            return super().authenticate(address, password, source=source).addCallback(
                lambda local: local if local is not None else self._recheck(identity, address, password)
            )
        d = self._verify(dn, password)
        d.addCallbacks(self._checked, self._offline_check, callbackArgs=(identity, password), errbackArgs=(identity, password))
        return d

    def _verify(self, dn, password):
        """Bind as ``dn``, or compare with its ``password_attribute`` when one is configured."""
        if self.config.password_attribute:
            return self.server.compare_password(dn, self.config.password_attribute, password)
        return self.server.check_password(dn, password)

    def _recheck(self, identity, address, password):
        self._lookups.invalidate(address)
        d = self._ldap_identity_for(address)

        def found(fresh):
            dn = None if fresh is None else self._entries.get(fresh.id)
            if dn is None:
                return None
            return self._verify(dn, password).addCallback(self._checked, fresh, password)

        return d.addCallback(found)

    def _checked(self, ok, identity, password):
        if not ok:
            if not self.config.learn_secrets:
                return None
            d = self._db.call(self.store.forget_learned_secrets, identity.id, password)
            d.addCallback(self._forgot, identity)
            d.addErrback(lambda f: self.log.failure("LDAP: could not check the learned secrets of {who}", f,
                                                    who=identity.id))
            return d.addCallback(lambda _: None)
        self._verifiers.put(identity.id, _Verifier(password))
        if not self.config.learn_secrets:
            return identity
        # Derived in the password thread: SCRAM's PBKDF2 must not hold up look-ups.
        d = (self._password_thread or self._db).call(self.store.learn_secrets, identity, password)
        d.addCallback(self._learned, identity)
        d.addErrback(lambda f: self.log.failure("LDAP: could not keep the login secrets of {who}", f, who=identity.id))
        return d.addCallback(lambda _: identity)

    def _learned(self, what, identity):
        if what == "learned":
            self.log.info("LDAP: login secrets of {who} derived from the password LDAP accepted", who=identity.id)

    def _forgot(self, dropped, identity):
        if dropped:
            self.log.info(
                "LDAP refused the password the learned login secrets of {who} came from: dropped them",
                who=identity.id,
            )

    def secret(self, address, scheme):
        """
        ``(identity, value)`` from the secrets learned at logins that sent a
        password LDAP accepted (or set here, for people only SQL knows);
        ``(identity, None)`` when there is none yet or it is too old.
        """
        if self.config.learn_secrets:
            oldest = self._clock.seconds() - self.config.learned_secrets_max_age
        else:
            oldest = float("inf")  # learned ones do not count; people only SQL knows keep theirs

        def found(identity):
            if identity is None:
                return None, None
            d = self._db.call(self.store.secret_of, identity.id, scheme, oldest)
            return d.addCallback(lambda value: (identity, value))

        return self.identity_for(address).addCallback(found)

    def _offline_check(self, failure, identity, password):
        failure.trap(DirectoryUnavailable)
        verifier = self._verifiers.get(identity.id)
        if verifier is None:
            return failure
        self.log.info("LDAP unavailable: {who} logs in with a cached password check", who=identity.id)
        return identity if verifier.matches(password) else None

    def set_contacts(self, identity_id, new_contacts):
        d = self.get_identity(identity_id)

        def write(identity):
            if identity is None:
                return fail(KeyError(f"no person {identity_id!r}"))
            return self._db.call(self.store.ensure_person, identity.id, identity.display_name).addCallback(
                lambda _: SQLDirectory.set_contacts(self, identity.id, new_contacts)
            )

        return d.addCallback(write)

    def watchers_of(self, identity_id):
        d = self._cached(self._lists, ("watchers", identity_id), None, identity_id, call=self._ldap_watchers)
        return d.addCallback(list)

    def _ldap_watchers(self, identity_id):
        d = self.get_identity(identity_id)
        return d.addCallback(
            lambda identity: succeed(())
            if identity is None
            else self._db.call(self.store.watchers_of_handles, identity.id, identity.handles).addCallback(tuple)
        )

    def list_people(self):
        """Fire with every person LDAP lists under ``people_base`` (for gatewayctl)."""
        d = self.server.search(self.config.people_base, self.config.people_filter, self._attributes)

        @inlineCallbacks
        def build(found):
            people = []
            for dn, values in found:
                identity = yield self._identity(dn, values)
                if identity is not None:
                    people.append(identity)
            returnValue(sorted(people, key=lambda p: p.id))

        return d.addCallback(build)

    def invalidate(self):
        super().invalidate()
        self._entries.invalidate()
