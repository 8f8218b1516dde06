"""The embedded directory: people, handles, groups, contacts and aliases in SQL."""

import contextlib
import hmac
import re
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.cache import TTLCache
from gateway.directory.passwords import SCRYPT_N, hash_password, verify_password
from gateway.interfaces import IDirectory
from gateway.model import Address, Contact, Identity
from gateway.directory import secrets as derived
from gateway.schema import aliases, contacts, groups, handles, memberships, people, secrets

__all__ = [
    "GATEWAY_NETWORK",
    "DirectoryError",
    "DirectoryStore",
    "SQLDirectory",
    "ensure_demo_users",
]

# The gateway's own pseudo-network: ``gw:ID`` is the person ``ID`` itself.
GATEWAY_NETWORK = "gw"

_ALIAS_UNSAFE = re.compile(r"[^a-z0-9._%+-]")
_ALIAS_MAX = 240  # leaves room for "~N" in the 256 characters of aliases.user
_ALIAS_ATTEMPTS = 1000

_MISSING = object()


class DirectoryError(Exception):
    """A directory change that cannot be made; the message says why."""


def _address(value):
    return value if isinstance(value, Address) else Address.parse(value)


def _contact(value):
    return value if isinstance(value, Contact) else Contact(value)


def _person_id(value):
    identity_id = value.strip().lower() if isinstance(value, str) else ""
    if not identity_id:
        raise DirectoryError(f"a person id is non-empty text, not {value!r}")
    return identity_id


def _unique(values):
    return list(dict.fromkeys(values))


def _alias_user(address):
    user = f"{address.network}.{address.user}"
    if address.domain:
        user += f"%{address.domain}"
    return _ALIAS_UNSAFE.sub("_", user.lower())[:_ALIAS_MAX]


def _handle_key(address):
    return (
        (handles.c.network == address.network)
        & (handles.c.user == address.user)
        & (handles.c.domain == address.domain)
    )


def _alias_key(address):
    return (
        (aliases.c.network == address.network)
        & (aliases.c.user == address.user)
        & (aliases.c.domain == address.domain)
    )


class DirectoryStore:
    """
    The directory's tables, read and written synchronously: the CLI calls it
    directly, `SQLDirectory` from its database thread. Values in and out are
    `gateway.model` objects. Person ids, like addresses, are compared
    case-insensitively and stored lower-cased. Changes that cannot be made
    raise `DirectoryError`.
    """

    def __init__(self, engine, clock_seconds=time.time, password_n=SCRYPT_N):
        self.engine = engine
        self._now = clock_seconds
        self._password_n = password_n
        self._dummy_hash = None

    @contextlib.contextmanager
    def _transaction(self):
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError as e:
            raise DirectoryError(
                f"the directory changed at the same time, try again ({e.orig})"
            ) from None

    def _hash(self, password):
        return hash_password(password, self._password_n) if password else ""

    # -- checks inside a transaction ---------------------------------------

    def _require_person(self, conn, identity_id):
        query = sa.select(people.c.id).where(people.c.id == identity_id)
        if conn.execute(query).first() is None:
            raise DirectoryError(f"no person {identity_id!r} in the directory")

    def _require_group(self, conn, name):
        query = sa.select(groups.c.name).where(groups.c.name == name)
        if conn.execute(query).first() is None:
            raise DirectoryError(f"no group {name!r} in the directory")

    def _check_handles(self, conn, identity_id, addresses):
        for address in addresses:
            if address.network == GATEWAY_NETWORK:
                raise DirectoryError(
                    f"{address}: the network {GATEWAY_NETWORK!r} is reserved for "
                    "person ids and holds no handles"
                )
            query = sa.select(handles.c.identity_id).where(_handle_key(address))
            owner = conn.execute(query).scalar()
            if owner is not None and owner != identity_id:
                raise DirectoryError(f"handle {address} already belongs to {owner!r}")

    def _identities(self, conn, ids=None):
        """A dict id -> `Identity` of everyone, or of ``ids``."""
        person_q = sa.select(people.c.id, people.c.display_name).order_by(people.c.id)
        handle_q = sa.select(
            handles.c.identity_id, handles.c.network, handles.c.user, handles.c.domain
        ).order_by(handles.c.network, handles.c.user, handles.c.domain)
        member_q = sa.select(memberships.c.identity_id, memberships.c.group_name)
        if ids is not None:
            person_q = person_q.where(people.c.id.in_(ids))
            handle_q = handle_q.where(handles.c.identity_id.in_(ids))
            member_q = member_q.where(memberships.c.identity_id.in_(ids))
        found = {
            row.id: ([], set(), row.display_name) for row in conn.execute(person_q)
        }
        for row in conn.execute(handle_q):
            if row.identity_id in found:
                found[row.identity_id][0].append(
                    Address(row.network, row.user, row.domain)
                )
        for row in conn.execute(member_q):
            if row.identity_id in found:
                found[row.identity_id][1].add(row.group_name)
        return {
            identity_id: Identity(identity_id, name, tuple(hs), frozenset(gs))
            for identity_id, (hs, gs, name) in found.items()
        }

    def _identity(self, conn, identity_id):
        if identity_id is None:
            return None
        return self._identities(conn, [identity_id]).get(identity_id)

    def _owner(self, conn, address):
        """The id of the person ``address`` (handle or ``gw:ID``) names, or None."""
        if address.network == GATEWAY_NETWORK:
            return address.user
        query = sa.select(handles.c.identity_id).where(_handle_key(address))
        return conn.execute(query).scalar()

    # -- people -------------------------------------------------------------

    def add_person(
        self, identity_id, password=None, handles=(), display_name="", groups=()
    ):
        """Add a person with handles (addresses) and groups; return their `Identity`."""
        identity_id = _person_id(identity_id)
        addresses = _unique(_address(h) for h in handles)
        group_names = _unique(groups)
        password_hash = self._hash(password)
        with self._transaction() as conn:
            query = sa.select(people.c.id).where(people.c.id == identity_id)
            if conn.execute(query).first() is not None:
                raise DirectoryError(f"person {identity_id!r} already exists")
            self._check_handles(conn, identity_id, addresses)
            for name in group_names:
                self._require_group(conn, name)
            conn.execute(
                people.insert().values(
                    id=identity_id,
                    display_name=display_name,
                    password_hash=password_hash,
                    created=self._now(),
                )
            )
            self._insert_handles(conn, identity_id, addresses)
            self._store_secrets(conn, identity_id, password, addresses)
            if group_names:
                conn.execute(
                    memberships.insert(),
                    [
                        {"group_name": g, "identity_id": identity_id}
                        for g in group_names
                    ],
                )
            return self._identity(conn, identity_id)

    def remove_person(self, identity_id):
        """Remove a person with their handles, memberships and contact list."""
        identity_id = _person_id(identity_id)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            for table in (handles, memberships, contacts, secrets):
                conn.execute(table.delete().where(table.c.identity_id == identity_id))
            conn.execute(people.delete().where(people.c.id == identity_id))

    def set_password(self, identity_id, password):
        """Set a person's password; None or "" turns password login off."""
        identity_id = _person_id(identity_id)
        password_hash = self._hash(password)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            conn.execute(
                people.update()
                .where(people.c.id == identity_id)
                .values(password_hash=password_hash)
            )
            self._store_secrets(conn, identity_id, password, self._identity(conn, identity_id).handles)

    def _store_secrets(self, conn, identity_id, password, addresses):
        """Replace the protocol login secrets derived from ``password`` (none without one)."""
        conn.execute(secrets.delete().where(secrets.c.identity_id == identity_id))
        if password:
            conn.execute(
                secrets.insert(),
                [
                    {"identity_id": identity_id, "scheme": scheme, "value": value}
                    for scheme, value in derived.derive(password, addresses).items()
                ],
            )

    def secret(self, address, scheme):
        """
        ``(identity, value)``: the login secret ``scheme`` (see
        `gateway.directory.secrets`) of the person owning ``address``;
        ``(identity, None)`` when they have none, ``(None, None)`` for nobody.
        Secrets learned from another directory's logins do not count here.
        """
        address = _address(address)
        with self.engine.connect() as conn:
            identity = self._identity(conn, self._owner(conn, address))
            if identity is None:
                return None, None
            query = sa.select(secrets.c.value).where(
                (secrets.c.identity_id == identity.id)
                & (secrets.c.scheme == scheme)
                & secrets.c.learned.is_(None)
            )
            return identity, conn.execute(query).scalar()

    def secret_of(self, identity_id, scheme, learned_since):
        """
        The value of login secret ``scheme`` of person ``identity_id``, or
        None. A learned secret (see `learn_secrets`) counts only if it was
        learned at or after ``learned_since`` (seconds since the epoch).
        """
        query = sa.select(secrets.c.value, secrets.c.learned).where(
            (secrets.c.identity_id == _person_id(identity_id)) & (secrets.c.scheme == scheme)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or (row.learned is not None and row.learned < learned_since):
            return None
        return row.value

    def learn_secrets(self, identity, password):
        """
        Keep the login secrets of ``identity`` (a person whose password lives
        elsewhere, e.g. LDAP) derived from ``password``, which that place has
        just accepted, marked as learned now. Returns what happened:
        ``"own"`` (the person has a password here, whose secrets stay),
        ``"refreshed"`` (same password and handles: only the time changes) or
        ``"learned"`` (derived anew).
        """
        identity_id = _person_id(identity.id)
        wanted = derived.scheme_names(identity.handles)
        md5 = derived.md5_hex(password)
        with self._transaction() as conn:
            if self._known_person(conn, identity_id, identity.display_name):
                return "own"
            current = {
                row.scheme: row.value
                for row in conn.execute(
                    sa.select(secrets.c.scheme, secrets.c.value).where(secrets.c.identity_id == identity_id)
                )
            }
            now = self._now()
            if current.get("md5") == md5 and set(current) == wanted:
                conn.execute(secrets.update().where(secrets.c.identity_id == identity_id).values(learned=now))
                return "refreshed"
            conn.execute(secrets.delete().where(secrets.c.identity_id == identity_id))
            conn.execute(
                secrets.insert(),
                [
                    {"identity_id": identity_id, "scheme": scheme, "value": value, "learned": now}
                    for scheme, value in derived.derive(password, identity.handles).items()
                ],
            )
            return "learned"

    def forget_learned_secrets(self, identity_id, password):
        """
        ``password`` was just refused elsewhere (LDAP). If the learned
        secrets of ``identity_id`` were derived from it, the password was
        changed there: drop them, so the old password stops working on
        protocols that check a secret. True when they were dropped.
        """
        identity_id = _person_id(identity_id)
        learned = (secrets.c.identity_id == identity_id) & secrets.c.learned.is_not(None)
        with self._transaction() as conn:
            md5 = conn.execute(sa.select(secrets.c.value).where(learned & (secrets.c.scheme == "md5"))).scalar()
            if md5 is None or not hmac.compare_digest(md5, derived.md5_hex(password)):
                return False
            conn.execute(secrets.delete().where(learned))
            return True

    def _insert_handles(self, conn, identity_id, addresses):
        if addresses:
            conn.execute(
                handles.insert(),
                [
                    {
                        "network": a.network,
                        "user": a.user,
                        "domain": a.domain,
                        "identity_id": identity_id,
                    }
                    for a in addresses
                ],
            )

    def set_handles(self, identity_id, addresses):
        """Replace a person's handles with ``addresses``."""
        identity_id = _person_id(identity_id)
        addresses = _unique(_address(a) for a in addresses)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            self._check_handles(conn, identity_id, addresses)
            conn.execute(handles.delete().where(handles.c.identity_id == identity_id))
            self._insert_handles(conn, identity_id, addresses)

    def add_handle(self, identity_id, address):
        """Give a person one more handle (nothing happens if they have it)."""
        identity_id = _person_id(identity_id)
        address = _address(address)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            self._check_handles(conn, identity_id, [address])
            if self._owner(conn, address) is None:
                self._insert_handles(conn, identity_id, [address])

    def remove_handle(self, identity_id, address):
        """Take a handle away from a person."""
        identity_id = _person_id(identity_id)
        address = _address(address)
        with self._transaction() as conn:
            deleted = conn.execute(
                handles.delete().where(
                    _handle_key(address) & (handles.c.identity_id == identity_id)
                )
            )
            if deleted.rowcount == 0:
                raise DirectoryError(f"{address} is not a handle of {identity_id!r}")

    def list_people(self):
        """Everyone, as `Identity` values ordered by id."""
        with self.engine.connect() as conn:
            return list(self._identities(conn).values())

    def get_identity(self, identity_id):
        """The `Identity` of that id, or None."""
        if not isinstance(identity_id, str) or not identity_id.strip():
            return None
        with self.engine.connect() as conn:
            return self._identity(conn, identity_id.strip().lower())

    def identity_for(self, address):
        """The `Identity` owning handle ``address`` (or named by ``gw:ID``), or None."""
        address = _address(address)
        with self.engine.connect() as conn:
            return self._identity(conn, self._owner(conn, address))

    def credentials(self, address):
        """``(identity, password_hash)`` of login ``address``, or ``(None, "")``."""
        address = _address(address)
        with self.engine.connect() as conn:
            identity = self._identity(conn, self._owner(conn, address))
            if identity is None:
                return None, ""
            query = sa.select(people.c.password_hash).where(people.c.id == identity.id)
            return identity, conn.execute(query).scalar() or ""

    def check_password(self, credentials, password):
        """
        The identity of ``credentials`` (from `credentials`) when ``password``
        matches, else None. An unknown person costs the same hashing work, so
        timing does not tell who exists.
        """
        identity, stored = credentials
        if identity is None:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password("", self._password_n)
            verify_password(password or "", self._dummy_hash)
            return None
        return identity if verify_password(password, stored) else None

    def authenticate(self, address, password):
        """The `Identity` named by ``address`` if ``password`` fits, else None."""
        return self.check_password(self.credentials(address), password)

    def is_empty(self):
        """True when nobody is in the directory."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(people.c.id).limit(1)).first() is None

    # -- groups -------------------------------------------------------------

    def add_group(self, name, description=""):
        """Create an empty group."""
        if not isinstance(name, str) or not name.strip():
            raise DirectoryError(f"a group name is non-empty text, not {name!r}")
        with self._transaction() as conn:
            query = sa.select(groups.c.name).where(groups.c.name == name)
            if conn.execute(query).first() is not None:
                raise DirectoryError(f"group {name!r} already exists")
            conn.execute(groups.insert().values(name=name, description=description))

    def remove_group(self, name):
        """Remove a group (its members stay in the directory)."""
        with self._transaction() as conn:
            self._require_group(conn, name)
            conn.execute(memberships.delete().where(memberships.c.group_name == name))
            conn.execute(groups.delete().where(groups.c.name == name))

    def list_groups(self):
        """Every group as ``(name, description, member_ids)``, ordered by name."""
        with self.engine.connect() as conn:
            members = {}
            query = sa.select(memberships.c.group_name, memberships.c.identity_id)
            for row in conn.execute(query.order_by(memberships.c.identity_id)):
                members.setdefault(row.group_name, []).append(row.identity_id)
            query = sa.select(groups.c.name, groups.c.description)
            return [
                (row.name, row.description, tuple(members.get(row.name, ())))
                for row in conn.execute(query.order_by(groups.c.name))
            ]

    def add_member(self, group, identity_id):
        """Put a person into a group (nothing happens if they are in it)."""
        identity_id = _person_id(identity_id)
        with self._transaction() as conn:
            self._require_group(conn, group)
            self._require_person(conn, identity_id)
            query = sa.select(memberships.c.group_name).where(
                (memberships.c.group_name == group)
                & (memberships.c.identity_id == identity_id)
            )
            if conn.execute(query).first() is None:
                conn.execute(
                    memberships.insert().values(
                        group_name=group, identity_id=identity_id
                    )
                )

    def remove_member(self, group, identity_id):
        """Take a person out of a group."""
        identity_id = _person_id(identity_id)
        with self._transaction() as conn:
            deleted = conn.execute(
                memberships.delete().where(
                    (memberships.c.group_name == group)
                    & (memberships.c.identity_id == identity_id)
                )
            )
            if deleted.rowcount == 0:
                raise DirectoryError(f"{identity_id!r} is not in group {group!r}")

    # -- contact lists ------------------------------------------------------

    def contacts(self, identity_id):
        """A person's contact list: `Contact` values in their order."""
        identity_id = _person_id(identity_id)
        query = (
            sa.select(contacts.c.address, contacts.c.group_name, contacts.c.name)
            .where(contacts.c.identity_id == identity_id)
            .order_by(contacts.c.position, contacts.c.address)
        )
        with self.engine.connect() as conn:
            return [
                Contact(Address.parse(row.address), row.group_name, row.name)
                for row in conn.execute(query)
            ]

    def set_contacts(self, identity_id, new_contacts):
        """Replace a person's contact list (the first entry for an address wins)."""
        identity_id = _person_id(identity_id)
        entries = {}
        for contact in map(_contact, new_contacts):
            entries.setdefault(str(contact.address), contact)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            conn.execute(contacts.delete().where(contacts.c.identity_id == identity_id))
            if entries:
                conn.execute(
                    contacts.insert(),
                    [
                        {
                            "identity_id": identity_id,
                            "address": address,
                            "position": position,
                            "group_name": contact.group,
                            "name": contact.name,
                        }
                        for position, (address, contact) in enumerate(entries.items())
                    ],
                )

    def add_contact(self, identity_id, contact):
        """Append ``contact``, or update its group and name if its address is listed."""
        identity_id = _person_id(identity_id)
        contact = _contact(contact)
        address = str(contact.address)
        with self._transaction() as conn:
            self._require_person(conn, identity_id)
            mine = contacts.c.identity_id == identity_id
            updated = conn.execute(
                contacts.update()
                .where(mine & (contacts.c.address == address))
                .values(group_name=contact.group, name=contact.name)
            )
            if updated.rowcount == 0:
                last = conn.execute(
                    sa.select(sa.func.max(contacts.c.position)).where(mine)
                ).scalar()
                conn.execute(
                    contacts.insert().values(
                        identity_id=identity_id,
                        address=address,
                        position=0 if last is None else last + 1,
                        group_name=contact.group,
                        name=contact.name,
                    )
                )

    def remove_contact(self, identity_id, address):
        """Take ``address`` off a person's contact list."""
        identity_id = _person_id(identity_id)
        address = _address(address)
        with self._transaction() as conn:
            deleted = conn.execute(
                contacts.delete().where(
                    (contacts.c.identity_id == identity_id)
                    & (contacts.c.address == str(address))
                )
            )
            if deleted.rowcount == 0:
                raise DirectoryError(f"{address} is not a contact of {identity_id!r}")

    def watchers_of(self, identity_id):
        """Ids of those whose contacts hold a handle (or gw:ID) of ``identity_id``."""
        identity_id = _person_id(identity_id)
        with self.engine.connect() as conn:
            query = sa.select(handles.c.network, handles.c.user, handles.c.domain)
            names = [
                Address(row.network, row.user, row.domain)
                for row in conn.execute(
                    query.where(handles.c.identity_id == identity_id)
                )
            ]
            return self._watchers(conn, identity_id, names)

    def watchers_of_handles(self, identity_id, addresses):
        """Like `watchers_of` for a person whose handles live elsewhere (LDAP)."""
        with self.engine.connect() as conn:
            return self._watchers(conn, _person_id(identity_id), [_address(a) for a in addresses])

    def ensure_person(self, identity_id, display_name=""):
        """A row for a person known elsewhere (LDAP), so their contact list can be kept here."""
        with self._transaction() as conn:
            self._known_person(conn, _person_id(identity_id), display_name)

    def _known_person(self, conn, identity_id, display_name):
        """The person's password hash here ("" for none), after making a row for them if they had none."""
        row = conn.execute(sa.select(people.c.password_hash).where(people.c.id == identity_id)).first()
        if row is not None:
            return row.password_hash
        conn.execute(
            people.insert().values(id=identity_id, display_name=display_name, password_hash="", created=self._now())
        )
        return ""

    def _watchers(self, conn, identity_id, addresses):
        names = [str(a) for a in addresses]
        names.append(f"{GATEWAY_NETWORK}:{identity_id}")
        query = (
            sa.select(contacts.c.identity_id)
            .where(contacts.c.address.in_(names))
            .distinct()
            .order_by(contacts.c.identity_id)
        )
        return list(conn.execute(query).scalars())

    # -- aliases ------------------------------------------------------------

    def alias_for(self, address, network, domain=""):
        """
        The stable alias `Address` on ``network`` (and ``domain``) of foreign
        ``address``: made and stored on first use, the same ever after, also
        when several threads or processes ask at once.
        """
        address = _address(address)
        target = str(address)
        base = _alias_user(address)
        for attempt in range(1, _ALIAS_ATTEMPTS + 1):
            user = base if attempt == 1 else f"{base}~{attempt}"
            candidate = Address(network, user, domain)
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(
                        sa.select(aliases.c.user, aliases.c.domain).where(
                            (aliases.c.network == candidate.network)
                            & (aliases.c.target == target)
                        )
                    ).first()
                    if row is not None:
                        return Address(candidate.network, row.user, row.domain)
                    taken = (
                        conn.execute(
                            sa.select(aliases.c.target).where(_alias_key(candidate))
                        ).first()
                        or conn.execute(
                            sa.select(handles.c.identity_id).where(
                                _handle_key(candidate)
                            )
                        ).first()
                    )
                    if taken:
                        continue
                    conn.execute(
                        aliases.insert().values(
                            network=candidate.network,
                            user=candidate.user,
                            domain=candidate.domain,
                            target=target,
                            created=self._now(),
                        )
                    )
                return candidate
            except IntegrityError:
                # Someone else took this name, or aliased ``address``, meanwhile.
                continue
        raise DirectoryError(
            f"no free alias for {address} on {network}: {base}~2 to "
            f"{base}~{_ALIAS_ATTEMPTS} are all taken"
        )

    def resolve_alias(self, address):
        """The foreign `Address` that alias ``address`` stands for, or None."""
        address = _address(address)
        query = sa.select(aliases.c.target).where(_alias_key(address))
        with self.engine.connect() as conn:
            target = conn.execute(query).scalar()
        return None if target is None else Address.parse(target)


_DEMO_PEOPLE = (
    ("alice", "Alice Demo", "100001"),
    ("bob", "Bob Demo", "100002"),
    ("carol", "Carol Demo", "100003"),
)


def ensure_demo_users(store, domains):
    """
    Fill an empty directory with alice, bob and carol (password "secret"),
    each with a handle on every network in ``domains`` (network -> domain or
    ""; ICQ handles are UINs), all in group "demo", alice and bob in each
    other's contact list. Return the ids created (none when anyone exists).
    """
    if not store.is_empty():
        return []
    if "demo" not in {name for name, _, _ in store.list_groups()}:
        store.add_group("demo", "Demo users")
    created = {}
    for identity_id, display_name, uin in _DEMO_PEOPLE:
        created[identity_id] = store.add_person(
            identity_id,
            password="secret",
            handles=[
                Address(network, uin if network == "icq" else identity_id, domain)
                for network, domain in domains.items()
            ],
            display_name=display_name,
            groups=["demo"],
        )
    network = "aim" if "aim" in domains else next(iter(domains), None)
    if network is not None:
        alice, bob = created["alice"], created["bob"]
        store.set_contacts(
            "alice", [Contact(bob.handle_on(network), name=bob.display_name)]
        )
        store.set_contacts(
            "bob", [Contact(alice.handle_on(network), name=alice.display_name)]
        )
    return list(created)


@implementer(IDirectory)
class SQLDirectory:
    """
    `IDirectory` over a `DirectoryStore`: each call runs in ``dbthread`` (a
    `gateway.dbthread.DatabaseThread`) and fires on the reactor.

    Look-ups of identities, aliases, contact lists and watchers go through
    bounded LRU caches that expire on ``clock`` (an ``IReactorTime``) after
    ``cache_ttl`` seconds; "not found" is cached too, for at most 5 seconds.
    Concurrent misses for the same key share one database call.
    ``set_contacts`` drops the cached contact lists and watchers;
    `invalidate` drops everything (after changes made elsewhere, e.g. by the
    CLI). Password checks run in ``password_thread`` when one is given (a
    second `DatabaseThread`), so scrypt does not hold up other look-ups;
    with a ``hash_queue`` (a `gateway.hashqueue.HashQueue`), each check
    (its look-up and its hash) waits there for its turn by the client's
    address, ``authenticate(address, password, source=...)``, and a full
    queue refuses it at once with `LoginThrottled`.
    """

    secrets_complete = True

    def __init__(
        self,
        store,
        dbthread,
        clock,
        cache_size=10000,
        cache_ttl=60.0,
        password_thread=None,
        hash_queue=None,
    ):
        self.store = store
        self._db = dbthread
        self._password_thread = password_thread
        self._hash_queue = hash_queue
        # Tells the gateway's facade to pass ``source`` rather than queue the whole call itself.
        self.queues_password_checks = hash_queue is not None
        # Keys: an Address (who owns that handle), a person id (their Identity),
        # ("alias", Address) and ("alias-for", ...); bare keys for the two that
        # every session holds, as a tuple per entry costs 56 bytes.
        self._lookups = TTLCache(clock, cache_size, cache_ttl)
        self._lists = TTLCache(clock, cache_size, cache_ttl)
        self._negative_ttl = min(cache_ttl, 5.0)
        self._inflight = {}  # cache key -> Deferreds waiting for the one call
        self._generation = 0  # bumped by invalidation; older results are not cached

    @property
    def hits(self):
        return self._lookups.hits + self._lists.hits

    @property
    def misses(self):
        return self._lookups.misses + self._lists.misses

    def start(self):
        """Start the database thread(s)."""
        self._db.start()
        if self._password_thread is not None:
            self._password_thread.start()

    def stop(self):
        """Finish queued calls and stop the thread(s); a Deferred."""
        threads = [self._db]
        if self._password_thread is not None:
            threads.append(self._password_thread)
        d = gatherResults([thread.stop() for thread in threads])
        return d.addCallback(lambda _: None)

    def invalidate(self):
        """Forget everything cached."""
        self._forget(self._lookups)
        self._forget(self._lists)

    def _forget(self, cache):
        cache.invalidate()
        self._generation += 1
        self._inflight.clear()

    def _cached(self, cache, key, fn, *args, remember=None, call=None):
        """
        ``cache[key]``, or the result of ``fn(*args)`` run in the database
        thread (or of ``call(*args)``, a function returning a Deferred).
        """
        value = cache.get(key, _MISSING)
        if value is not _MISSING:
            return succeed(value)
        d = Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._inflight[key] = [d]
        pending = call(*args) if call is not None else self._db.call(fn, *args)
        pending.addBoth(
            self._landed, cache, key, waiting, self._generation, remember
        )
        return d

    def _landed(self, result, cache, key, waiting, generation, remember):
        if self._inflight.get(key) is waiting:
            del self._inflight[key]
        if isinstance(result, Failure):
            for d in waiting:
                d.errback(result)
            return None
        if generation == self._generation:
            if result is None:
                cache.put(key, None, self._negative_ttl)
            else:
                cache.put(key, result)
                if remember is not None:
                    remember(result)
        for d in waiting:
            d.callback(result)
        return None

    def _remember_identity(self, identity):
        self._lookups.put(identity.id, identity)

    def cached_identity_for(self, address):
        """
        ``(True, identity_or_None)`` when the cache knows who owns
        ``address``, else ``(False, None)``; never touches the database and
        makes no Deferred, for the hot path.
        """
        value = self._lookups.get(address, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value

    def identity_for(self, address):
        address = _address(address)
        return self._cached(
            self._lookups,
            address,
            self.store.identity_for,
            address,
            remember=self._remember_identity,
        )

    def get_identity(self, identity_id):
        return self._cached(
            self._lookups, identity_id, self.store.get_identity, identity_id
        )

    def authenticate(self, address, password, source=None):
        """
        The `Identity` if ``password`` fits ``address``, else None;
        ``source`` (the client's address) is the queue's turn to wait in.
        """
        address = _address(address)

        def check():
            checker = self._password_thread or self._db
            d = self._db.call(self.store.credentials, address)
            return d.addCallback(lambda credentials: checker.call(self.store.check_password, credentials, password))

        if self._hash_queue is None:
            return check()
        return self._hash_queue.run(source, check)

    def secret(self, address, scheme):
        return self._db.call(self.store.secret, _address(address), scheme)

    def contacts(self, identity_id):
        d = self._cached(
            self._lists, ("contacts", identity_id), self._contacts_tuple, identity_id
        )
        return d.addCallback(list)

    def _contacts_tuple(self, identity_id):
        return tuple(self.store.contacts(identity_id))

    def set_contacts(self, identity_id, new_contacts):
        # Forget before (later reads queue behind the write) and after (reads
        # that were queued before it must not leave their answer cached).
        self._forget(self._lists)
        d = self._db.call(self.store.set_contacts, identity_id, list(new_contacts))

        def written(result):
            self._forget(self._lists)
            return result

        return d.addBoth(written)

    def watchers_of(self, identity_id):
        d = self._cached(
            self._lists, ("watchers", identity_id), self._watchers_tuple, identity_id
        )
        return d.addCallback(list)

    def _watchers_tuple(self, identity_id):
        return tuple(self.store.watchers_of(identity_id))

    def alias_for(self, address, network, domain=""):
        address = _address(address)

        def remember(alias):
            self._lookups.put(("alias", alias), address)

        return self._cached(
            self._lookups,
            ("alias-for", address, network, domain),
            self.store.alias_for,
            address,
            network,
            domain,
            remember=remember,
        )

    def resolve_alias(self, address):
        address = _address(address)
        return self._cached(
            self._lookups, ("alias", address), self.store.resolve_alias, address
        )
