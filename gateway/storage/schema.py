"""The SQL schema of the gateway's own database (archive, offline store, directory)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Names for constraints, so migrations are the same on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ADDRESS = 512

# -- archive ---------------------------------------------------------------

# One row per event that entered the gateway, with the decision made about it.
events = Table(
    "events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("sender", String(ADDRESS), nullable=False),
    Column("recipient", String(ADDRESS), nullable=True),
    Column("sender_identity", String(128), nullable=True),
    Column("recipient_identity", String(128), nullable=True),
    Column("text", Text, nullable=True),
    Column("html", Text, nullable=True),
    Column("thread", String(128), nullable=True),
    Column("allowed", Boolean, nullable=False),
    # delivered / queued / rejected / accepted (decided, not yet delivered)
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("rule", String(256), nullable=False, default=""),
    Column("code", String(32), nullable=False, default=""),
    Column("node", String(64), nullable=False, default=""),
    # The whole event as JSON (gateway.model.event_to_dict), for export and replay.
    Column("data", Text, nullable=False),
    Column("recorded", Float, nullable=False),
    # When transform hooks changed the event: the event as its sender sent
    # it (JSON, as ``data``), and the hooks that changed it, in order.
    Column("original", Text, nullable=True),
    Column("transforms", String(512), nullable=True),
    Index(None, "created"),
    Index(None, "sender", "created"),
    Index(None, "recipient", "created"),
    Index(None, "sender_identity", "created"),
    Index(None, "recipient_identity", "created"),
)

# What happened to an accepted event later: delivered (at login too) or queued.
deliveries = Table(
    "deliveries",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("where_", String(256), primary_key=True),
    Column("at", Float, nullable=False),
)

# With [archive] capture = "native": the bytes an event arrived as, and each
# rendering as sent to a network, with notes of what the translation lost.
captures = Table(
    "captures",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("direction", String(8), primary_key=True),  # received / sent
    Column("network", String(32), primary_key=True),
    Column("at", Float, nullable=False),
    Column("data", Text, nullable=False),  # base64 of the bytes
    Column("notes", Text, nullable=False, default=""),  # comma-separated, e.g. html-dropped
)

# The hash chain over every archive row, one per node, in the order written
# (`gateway.compliance.chain`): the row it names, the digest of its content,
# and the hash linking it to the entry before.
chain = Table(
    "chain",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),  # events / deliveries / captures
    Column("ref", String(400), nullable=False),  # the row's key
    Column("digest", String(64), nullable=False),
    Column("hash", String(64), nullable=False),  # at a block's last entry; "" before it
    Column("at", Float, nullable=False),
    Column("format", SmallInteger, nullable=False, server_default="1"),  # of the digest
)

# The chain as the writer writes it now: one row a block, its entries packed
# (`gateway.compliance.chain`); ``chain`` above keeps the entries written
# one row each before, which verify still reads.
chain_blocks = Table(
    "chain_blocks",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("last", BigInteger, primary_key=True, autoincrement=False),  # seq of its last entry
    Column("first", BigInteger, nullable=False),  # seq of its first entry
    Column("entries", Text, nullable=False),  # JSON: [[kind, ref, digest], ...], seq first, first + 1, ...
    Column("hash", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("format", SmallInteger, nullable=False),  # of the digests
)

# Signed heads of the chain (`gateway.compliance.keys`): node, entry, hash, time, key, signature.
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("head", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("key", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

# Legal holds (`gateway.compliance.retention`): a person's rows (with one
# peer, from a time) that no purge may remove while the hold is not released.
holds = Table(
    "holds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(128), nullable=False),  # the person (identity id)
    Column("peer", String(ADDRESS), nullable=True),  # an address or "user:ID"; None: everyone
    Column("since", Float, nullable=True),
    Column("reason", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("released", Float, nullable=True),
    Column("release_reason", Text, nullable=True),
)

# Purges of expired rows: when, under which retention rule, how many, and
# the digest of the list of rows removed (each row in ``purged``).
purges = Table(
    "purges",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("rules", Text, nullable=False),  # the retention rules applied, as JSON
    Column("count", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
)
purged = Table(
    "purged",
    metadata,
    Column("kind", String(16), primary_key=True),  # events / deliveries / captures
    Column("ref", String(400), primary_key=True),
    Column("purge_id", String(32), nullable=False),
    Index(None, "purge_id"),
)

# The operators of the admin API (`gateway.ops.operators`): each with a
# role and the SHA-256 of their bearer token (the token itself is shown
# once, when made); a revoked operator's row stays, for the record.
operators = Table(
    "operators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # operator / reviewer
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("revoked", Float, nullable=True),
)

# Rooms that outlive their members (made by an operator): `gateway.rooms.RoomStore`.
rooms = Table(
    "rooms",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("owner", String(255), nullable=False),  # a person's id, or an address when made for a foreign user
    Column("networks", String(255), nullable=False),  # comma-separated networks whose users may join; "" any
    Column("external", Boolean, nullable=False),  # whether people outside the directory may join
    Column("created", Float, nullable=False),
)

# Events held for an offline person until their next login.
offline = Table(
    "offline",
    metadata,
    Column("identity_id", String(128), primary_key=True),
    Column("event_id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    Column("data", Text, nullable=False),
    Index(None, "identity_id", "created"),
)

# -- directory -------------------------------------------------------------

people = Table(
    "people",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("display_name", String(256), nullable=False, default=""),
    # "scrypt$N$r$p$salt_hex$hash_hex", or "" for no password login
    Column("password_hash", String(512), nullable=False, default=""),
    Column("created", Float, nullable=False),
)

# Login secrets some protocols need instead of the password (gateway.directory.secrets).
secrets = Table(
    "secrets",
    metadata,
    Column(
        "identity_id",
        String(128),
        ForeignKey("people.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("scheme", String(300), primary_key=True),
    Column("value", Text, nullable=False),
    # When the secret was derived from a password LDAP accepted at a login;
    # NULL when it was derived from a password set here (it never ages).
    Column("learned", Float, nullable=True),
)

handles = Table(
    "handles",
    metadata,
    Column("network", String(32), primary_key=True),
    Column("user", String(256), primary_key=True),
    Column("domain", String(256), primary_key=True, default=""),
    Column(
        "identity_id",
        String(128),
        ForeignKey("people.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Index(None, "identity_id"),
)

groups = Table(
    "groups",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", String(512), nullable=False, default=""),
)

memberships = Table(
    "memberships",
    metadata,
    Column(
        "group_name",
        String(128),
        ForeignKey("groups.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "identity_id",
        String(128),
        ForeignKey("people.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

contacts = Table(
    "contacts",
    metadata,
    Column(
        "identity_id",
        String(128),
        ForeignKey("people.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("address", String(ADDRESS), primary_key=True),
    Column("position", Integer, nullable=False, default=0),
    Column("group_name", String(128), nullable=False, default="Buddies"),
    Column("name", String(256), nullable=False, default=""),
    Index(None, "address"),
)

# Stable names under which foreign addresses appear on each network.
aliases = Table(
    "aliases",
    metadata,
    Column("network", String(32), primary_key=True),
    Column("user", String(256), primary_key=True),
    Column("domain", String(256), primary_key=True, default=""),
    Column("target", String(ADDRESS), nullable=False),
    Column("created", Float, nullable=False),
    UniqueConstraint("network", "target"),
)
