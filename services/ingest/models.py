"""Tables owned by the ingest service.

Document titles and sources, uploads waiting to be processed, chunk text and facts are
stored encrypted (CryptoService, associated data from retrieval.sealing); embeddings and
keyword vectors are stored in clear so the index can be rebuilt without re-embedding.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.db import NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DocumentRow(Base):
    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    status: Mapped[str] = mapped_column(String(16))  # queued|processing|completed|failed
    source_type: Mapped[int] = mapped_column(Integer)
    title_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    source_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # SHA-256 of the normalized text; unique per project among documents that did not fail.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    fact_count: Mapped[int] = mapped_column(Integer, default=0)
    chunks_embedded: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    text_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stored_bytes: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    background: Mapped[int] = mapped_column(Integer, default=0)
    # The job's grant (base64), sealed by crypto: only ingest and its worker can redeem it
    # for the job token, so a reader of this table holds nothing usable. Cleared at the end.
    job_grant: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A queued or processing document whose lease ran out is picked up again (never stuck).
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_documents_project_created", "project_id", "created_at", "id"),
        Index(
            "uq_documents_project_content",
            "project_id",
            "content_hash",
            unique=True,
            sqlite_where=text("content_hash IS NOT NULL AND status != 'failed'"),
            postgresql_where=text("content_hash IS NOT NULL AND status != 'failed'"),
        ),
        Index("ix_documents_status_lease", "status", "lease_expires_at"),
    )


class UploadRow(Base):
    """What a queued document is made from, encrypted: extracted text, or the URL to fetch."""

    __tablename__ = "uploads"

    document_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    payload_ct: Mapped[bytes] = mapped_column(LargeBinary)


class ChunkRow(Base):
    __tablename__ = "chunks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36))
    document_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("documents.id", ondelete="CASCADE")
    )
    chunk_index: Mapped[int] = mapped_column(Integer)
    text_ct: Mapped[bytes] = mapped_column(LargeBinary)
    # SHA-256 of the chunk text: lets a project reuse an embedding instead of recomputing it.
    text_hash: Mapped[str] = mapped_column(String(64))
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian
    sparse_indices: Mapped[bytes] = mapped_column(LargeBinary)  # uint32 little-endian
    sparse_values: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian

    __table_args__ = (
        UniqueConstraint("document_id", "chunk_index"),
        Index("ix_chunks_project_hash", "project_id", "text_hash"),
    )


class FactRow(Base):
    __tablename__ = "facts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    document_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer)
    fact_index: Mapped[int] = mapped_column(Integer)
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    # JSON {"subject", "predicate", "object"}, encrypted.
    statement_ct: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("document_id", "fact_index"),)


class PurgedProjectRow(Base):
    """A deleted project: nothing may be ingested into it again."""

    __tablename__ = "purged_projects"

    project_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    purged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
