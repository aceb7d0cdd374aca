"""Tables owned by the project service: projects (with their keyring) and pending deletions.

The keyring is stored as CryptoService returned it (wrapped keys only); nothing here can
decrypt content without the passphrase.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.db import NAMING_CONVENTION
from runtime.outbox import audit_outbox_table


class ProjectState(enum.StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"  # DeleteProject accepted; its steps are being carried out
    # ImportProject holds the id while the other services take the bundle; invisible to
    # every read, removed if the import fails.
    IMPORTING = "importing"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=ProjectState.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The serialized contextcache.v1.Keyring (wrapped keys, KDF parameters).
    keyring: Mapped[bytes] = mapped_column(LargeBinary)
    keyring_version: Mapped[int] = mapped_column(Integer, default=1)
    # Wrong passphrases given since the last successful unlock: audited (as a count) then.
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The audit grant of the project's latest unlock (crypto-sealed signing key, usable only
    # by this service to append the project's audit events: runtime/outbox.py). It lets a
    # change be recorded with its event while crypto is away.
    audit_grant: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    __table_args__ = (Index("ix_projects_created_id", "created_at", "id"),)


class ProjectDeletionRow(Base):
    """A DeleteProject that was accepted and is being carried out in every service."""

    __tablename__ = "project_deletions"

    project_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Steps done so far, comma-separated: "ingest", "index" ("audit" in older rows).
    steps_done: Mapped[str] = mapped_column(String(200), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Unused since migration 0002 (always NULL): a token at rest could be reused by a reader.
    sealed_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# Audit events recorded with the changes they describe, waiting for the relay.
AUDIT_OUTBOX = audit_outbox_table(Base.metadata, "project_audit_outbox")
