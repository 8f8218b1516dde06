"""
Passwords and login secrets in the SQL directory.

`CredentialsMixin` sets and checks people's passwords (scrypt hashes, see
`gateway.directory.passwords`) and keeps the protocol login secrets derived
from them (see `gateway.directory.secrets`), including those learned from
logins another directory (LDAP) accepted. It works on the tables and
transactions of `gateway.directory.entries.DirectoryEntries`, with which it
makes `gateway.directory.sql.DirectoryStore`.
"""

import hmac

import sqlalchemy as sa

import gateway.directory.secrets as derived
from gateway.directory.entries import _address, _person_id
from gateway.directory.passwords import hash_password, verify_password
from gateway.storage.schema import people, secrets

__all__ = ["CredentialsMixin"]


class CredentialsMixin:
    """
    The password and login-secret half of
    `gateway.directory.sql.DirectoryStore`, for a class derived from
    `gateway.directory.entries.DirectoryEntries` (whose engine,
    transactions, clock and look-ups it uses).
    """

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
        identity = self.identity_for(address)
        if identity is None:
            return None, None
        return identity, self.own_secret(identity.id, scheme)

    def own_secret(self, identity_id, scheme):
        """
        The value of login secret ``scheme`` set here for person
        ``identity_id`` (not one learned), or None. Plain SQL: it runs for
        every digest-checked request, and building the statement cost more
        than the look-up.
        """
        with self.engine.connect() as conn:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            return conn.exec_driver_sql(
                f"SELECT value FROM secrets WHERE identity_id = {mark} AND scheme = {mark} AND learned IS NULL",
                (_person_id(identity_id), scheme),
            ).scalar()

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
