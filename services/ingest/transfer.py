"""A project's content moved between deployments: read out for a bundle, stored from one.

Rows travel as stored — titles, sources, chunk text and facts encrypted under the project's
data key, bound by associated data to their project, document and chunk ids — so ids are
kept and nothing is decrypted here. Only completed documents travel (queued, processing and
failed ones hold uploads or errors, not content). An import is one transaction: the
content lands whole or not at all. Never logs content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from contextcache.internal.v1 import bundle_pb2
from runtime.db import as_utc, utcnow
from runtime.errors import AlreadyExists, InvalidArgument
from services.ingest.models import DocumentRow, FactRow
from services.ingest.status import DocumentStatus
from services.ingest.store import CHUNKS, DOCUMENTS, FACTS, DocumentStore

# A batch closes once it holds about this many bytes (the bundle's frames stay small).
BATCH_BYTES = 1024 * 1024
DOCUMENT_PAGE = 200


def _stamp(value) -> timestamp_pb2.Timestamp | None:  # type: ignore[no-untyped-def]
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(as_utc(value))
    return stamp


def _time(stamp: timestamp_pb2.Timestamp, present: bool):  # type: ignore[no-untyped-def]
    return stamp.ToDatetime(tzinfo=utcnow().tzinfo) if present else None


async def export_content(
    store: DocumentStore, project_id: str
) -> AsyncIterator[bundle_pb2.ContentBatch]:
    """The project's completed documents, then each one's chunks and facts, in batches."""
    batch, size = bundle_pb2.ContentBatch(), 0

    def full() -> bool:
        return size >= BATCH_BYTES

    after = ""
    while True:
        async with store.sessions() as session:
            documents = list(
                (
                    await session.scalars(
                        select(DocumentRow)
                        .where(
                            DocumentRow.project_id == project_id,
                            DocumentRow.status == DocumentStatus.COMPLETED,
                            DocumentRow.id > after,
                        )
                        .order_by(DocumentRow.id)
                        .limit(DOCUMENT_PAGE)
                    )
                ).all()
            )
        if not documents:
            break
        after = documents[-1].id
        for document in documents:
            batch.documents.append(
                bundle_pb2.BundleDocument(
                    id=document.id,
                    source_type=document.source_type,
                    title_ct=document.title_ct or b"",
                    source_ct=document.source_ct or b"",
                    content_hash=document.content_hash or "",
                    chunk_count=document.chunk_count,
                    fact_count=document.fact_count,
                    text_bytes=document.text_bytes,
                    stored_bytes=document.stored_bytes,
                    created_at=_stamp(document.created_at),
                    updated_at=_stamp(document.updated_at),
                    completed_at=_stamp(document.completed_at),
                )
            )
            size += len(document.title_ct or b"") + len(document.source_ct or b"") + 200
            async for chunks in store.chunks(project_id, document.id):
                for chunk in chunks:
                    batch.chunks.append(
                        bundle_pb2.BundleChunk(
                            id=chunk.id,
                            document_id=chunk.document_id,
                            chunk_index=chunk.chunk_index,
                            text_ct=chunk.text_ct,
                            text_hash=chunk.text_hash,
                            start_offset=chunk.start_offset,
                            end_offset=chunk.end_offset,
                            embedding=chunk.embedding,
                            sparse_indices=chunk.sparse_indices,
                            sparse_values=chunk.sparse_values,
                        )
                    )
                    size += len(chunk.text_ct) + len(chunk.embedding) + len(chunk.sparse_values) * 2
                    if full():
                        yield batch
                        batch, size = bundle_pb2.ContentBatch(), 0
            async with store.sessions() as session:
                facts = (
                    await session.scalars(
                        select(FactRow)
                        .where(FactRow.document_id == document.id)
                        .order_by(FactRow.fact_index)
                    )
                ).all()
            for fact in facts:
                batch.facts.append(
                    bundle_pb2.BundleFact(
                        document_id=fact.document_id,
                        chunk_index=fact.chunk_index,
                        fact_index=fact.fact_index,
                        start_offset=fact.start_offset,
                        end_offset=fact.end_offset,
                        statement_ct=fact.statement_ct,
                    )
                )
                size += len(fact.statement_ct) + 64
                if full():
                    yield batch
                    batch, size = bundle_pb2.ContentBatch(), 0
    if batch.documents or batch.chunks or batch.facts:
        yield batch


async def import_content(
    store: DocumentStore, project_id: str, batches: AsyncIterator[bundle_pb2.ContentBatch]
) -> tuple[int, int, int]:
    """Stores the batches' rows for `project_id` in one transaction; (documents, chunks,
    facts). Refused when the project holds anything here or was purged."""
    if await store.is_purged(project_id):
        raise AlreadyExists(f"Project {project_id} was deleted from this deployment")
    documents = chunks = facts = 0
    known: set[str] = set()
    try:
        async with store.engine.begin() as connection:
            held = await connection.scalar(
                select(func.count())
                .select_from(DOCUMENTS)
                .where(DOCUMENTS.c.project_id == project_id)
            )
            if held:
                raise AlreadyExists(f"Project {project_id} already holds documents here")
            now = utcnow()
            async for batch in batches:
                if batch.documents:
                    await connection.execute(
                        insert(DOCUMENTS),
                        [_document_row(project_id, document, now) for document in batch.documents],
                    )
                    known.update(document.id for document in batch.documents)
                    documents += len(batch.documents)
                if batch.chunks:
                    _check_owned(known, (chunk.document_id for chunk in batch.chunks), "chunks")
                    await connection.execute(
                        insert(CHUNKS), [_chunk_row(project_id, chunk) for chunk in batch.chunks]
                    )
                    chunks += len(batch.chunks)
                if batch.facts:
                    _check_owned(known, (fact.document_id for fact in batch.facts), "facts")
                    await connection.execute(
                        insert(FACTS), [_fact_row(project_id, fact) for fact in batch.facts]
                    )
                    facts += len(batch.facts)
    except IntegrityError:
        raise AlreadyExists(
            "A document or chunk of this bundle exists in this deployment already"
        ) from None
    return documents, chunks, facts


def _check_owned(known: set[str], document_ids, what: str) -> None:  # type: ignore[no-untyped-def]
    for document_id in document_ids:
        if document_id not in known:
            raise InvalidArgument.for_field(
                "batch", f"The bundle's {what} name a document it does not hold before them"
            )


def _document_row(project_id: str, document: bundle_pb2.BundleDocument, now) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": document.id,
        "project_id": project_id,
        "status": DocumentStatus.COMPLETED,
        "source_type": document.source_type,
        "title_ct": document.title_ct or None,
        "source_ct": document.source_ct or None,
        "content_hash": document.content_hash or None,
        "error": "",
        "chunk_count": document.chunk_count,
        "fact_count": document.fact_count,
        "chunks_embedded": document.chunk_count,
        "chunks_total": document.chunk_count,
        "text_bytes": document.text_bytes,
        "stored_bytes": document.stored_bytes,
        "attempts": 0,
        "transient_failures": 0,
        "background": 0,
        "job_grant": None,
        "audit_grant": None,
        "lease_expires_at": None,
        "created_at": _time(document.created_at, document.HasField("created_at")) or now,
        "updated_at": now,
        "completed_at": _time(document.completed_at, document.HasField("completed_at")) or now,
    }


def _chunk_row(project_id: str, chunk: bundle_pb2.BundleChunk) -> dict:
    return {
        "id": chunk.id,
        "project_id": project_id,
        "document_id": chunk.document_id,
        "chunk_index": chunk.chunk_index,
        "text_ct": chunk.text_ct,
        "text_hash": chunk.text_hash,
        "start_offset": chunk.start_offset,
        "end_offset": chunk.end_offset,
        "embedding": chunk.embedding,
        "sparse_indices": chunk.sparse_indices,
        "sparse_values": chunk.sparse_values,
    }


def _fact_row(project_id: str, fact: bundle_pb2.BundleFact) -> dict:
    return {
        "project_id": project_id,
        "document_id": fact.document_id,
        "chunk_index": fact.chunk_index,
        "fact_index": fact.fact_index,
        "start_offset": fact.start_offset,
        "end_offset": fact.end_offset,
        "statement_ct": fact.statement_ct,
    }
