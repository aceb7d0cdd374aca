"""The crypto service's tables: each project's audit chain head and its events."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    }
)

# One row per project with a chain: the public key recorded when the chain started (what
# signatures verify under) and the head. Appends lock this row, which serializes them.
audit_chains = Table(
    "audit_chains",
    metadata,
    Column("project_id", String(36), primary_key=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("head_seq", BigInteger, nullable=False),
    Column("head_hash", LargeBinary(32), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    # INTEGER in SQLite, where only that type auto-increments.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("event_type", Integer, nullable=False),
    Column("actor", String(200), nullable=False),
    # Microseconds since the Unix epoch, UTC: exact in every database, as hashed.
    Column("time_us", BigInteger, nullable=False),
    # JSON object with sorted keys; the canonical encoding, not this text, is what is hashed.
    Column("attributes", Text, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    # No two events of a project share a seq: a fork cannot be stored, whatever the locking.
    UniqueConstraint("project_id", "seq"),
)

# One row per project with a keyring: the public key its keyring was created with and the
# latest keyring generation seen (CreateKeyring registers; OpenKeyring raises it). A keyring
# with another public key or an older generation opens nothing; tokens of an older
# generation are refused.
keyrings = Table(
    "keyrings",
    metadata,
    Column("project_id", String(36), primary_key=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)
