"""
The SQL directory's entries: people, their handles, groups, contact lists
and aliases, read and written synchronously.

`DirectoryEntries` holds the engine, the transactions and the checks every
change makes, and the look-ups that turn rows into `gateway.model` values;
passwords and login secrets are added on top of it by
`gateway.directory.credentials.CredentialsMixin`, and the two make
`gateway.directory.sql.DirectoryStore`. Also here: `DirectoryError`, the
gateway's own pseudo-network `GATEWAY_NETWORK`, and the small helpers that
turn text into addresses, contacts and person ids.
"""

import contextlib
import re
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway.directory.passwords import SCRYPT_N, hash_password
from gateway.model import Address, Contact, Identity
from gateway.storage.schema import aliases, contacts, groups, handles, memberships, people, secrets

__all__ = [
    "GATEWAY_NETWORK",
    "DirectoryEntries",
    "DirectoryError",
]

# The gateway's own pseudo-network: ``gw:ID`` is the person ``ID`` itself.
GATEWAY_NETWORK = "gw"

_ALIAS_UNSAFE = re.compile(r"[^a-z0-9._%+-]")
_ALIAS_MAX = 240  # leaves room for "~N" in the 256 characters of aliases.user
_ALIAS_ATTEMPTS = 1000


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


class DirectoryEntries:
    """
    People, handles, groups, contact lists and aliases in the directory's
    tables, read and written synchronously. Values in and out are
    `gateway.model` objects. Person ids, like addresses, are compared
    case-insensitively and stored lower-cased. Changes that cannot be made
    raise `DirectoryError`.

    A person's password and login secrets are written with them
    (`add_person`, `remove_person`) but handled by
    `gateway.directory.credentials.CredentialsMixin`, which this class is
    combined with into `gateway.directory.sql.DirectoryStore`.
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

