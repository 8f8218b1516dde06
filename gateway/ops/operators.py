"""
The admin API's operators: who may use it, in which role, and the record
of what they did.

Each operator has a name, a role and a bearer token. The database keeps
the SHA-256 of the token, never the token (it is shown once, when made or
replaced; a token is 256 random bits, so a fast hash is as good as a slow
one against guessing, and a look-up by hash takes no time that depends on
how much of a guess was right). Roles:

``operator``
    runs the gateway: status, metrics, sessions (list, kick), broadcast,
    policy reload, directory refresh, nodes (drain, undrain).
``reviewer``
    reads the archive (search); nothing else.

Neither sees the other's tools. The token of ``[admin] token`` /
``token_file`` (``DATA_DIR/admin-token`` by default) is the operator
``admin`` with the role ``operator``, so that a gateway works from its
first start.

Every action through the API is an archived `gateway.model.AdminAction`
with the operator's name, role and address, written before the action
takes effect; when the archive cannot take it, the action is refused.
Operators are added, replaced and revoked with ``gatewayctl operator``,
which archives that too (in the records chain, as holds are).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import NamedTuple, Optional

import sqlalchemy as sa

from gateway.storage.schema import operators

__all__ = ["Operator", "OperatorStore", "ROLES", "ADMIN", "OPERATOR", "REVIEWER", "token_hash", "OperatorError"]

OPERATOR, REVIEWER = "operator", "reviewer"
ROLES = (OPERATOR, REVIEWER)
# The name of the configured token's holder.
ADMIN = "admin"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Operator(NamedTuple):
    name: str
    role: str


class OperatorError(Exception):
    """A name or role that cannot be used, or no such operator."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "gwop_" + secrets.token_urlsafe(32)


class OperatorStore:
    """The ``operators`` table (blocking calls: the gateway runs `find` in a database thread)."""

    def __init__(self, engine, clock=time.time):
        self.engine = engine
        self.clock = clock

    def add(self, name: str, role: str) -> str:
        """A new operator; their token (shown once)."""
        name = name.lower()
        if not _NAME.match(name) or name == ADMIN:
            raise OperatorError(f"{name!r} cannot name an operator: 1-64 of a-z 0-9 . _ -, not starting with a "
                                f"sign, and not {ADMIN!r} (the configured token's)")
        if role not in ROLES:
            raise OperatorError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        token = new_token()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(operators.c.name).where(operators.c.name == name)).first() is not None:
                raise OperatorError(f"operator {name!r} exists (its name stays with its record even when revoked)")
            conn.execute(sa.insert(operators), [{"name": name, "role": role, "token_hash": token_hash(token),
                                                 "created": self.clock(), "revoked": None}])
        return token

    def replace_token(self, name: str) -> str:
        """A new token for ``name`` (the old one stops working at once); the new token."""
        token = new_token()
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(operators).where(operators.c.name == name.lower(),
                                                           operators.c.revoked.is_(None))
                                .values(token_hash=token_hash(token)))
        if not done.rowcount:
            raise OperatorError(f"no operator {name!r} (or revoked)")
        return token

    def revoke(self, name: str) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(operators).where(operators.c.name == name.lower(),
                                                           operators.c.revoked.is_(None))
                                .values(revoked=self.clock()))
        if not done.rowcount:
            raise OperatorError(f"no operator {name!r} (or revoked already)")

    def list(self) -> list:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(operators.c.name, operators.c.role, operators.c.created,
                                          operators.c.revoked).order_by(operators.c.name)).mappings()
            return [dict(row) for row in rows]

    def find(self, token: str) -> Optional[Operator]:
        """The operator whose token this is (None: nobody's, or revoked)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(operators.c.name, operators.c.role).where(
                operators.c.token_hash == token_hash(token), operators.c.revoked.is_(None))).first()
        return None if row is None else Operator(row.name, row.role)
