"""DocumentStore: the ingest service's rows (documents, uploads, chunks, facts).

Duplicate detection relies on the unique index over (project_id, content_hash) of documents
that did not fail — a race between two ingestions of the same text ends with one of them
getting ALREADY_EXISTS, never two copies.

The steps every ingested document goes through (insert, claim, start of embedding, store,
complete) are Core statements built once at import (SQLAlchemy then skips building and
cache-keying them per call), with RETURNING where the caller needs the row back, and as few
transactions as the step allows: on a page-sized document they are a large share of the
pipeline's own CPU, which competes with the embedding model for the same cores. Rarer paths
use the ORM session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert

from runtime.db import as_utc, utcnow
from runtime.errors import AlreadyExists, NotFound
from runtime.outbox import AuditEvent, AuditOutbox
from services.ingest.models import (
    AUDIT_OUTBOX,
    ChunkRow,
    DocumentRow,
    FactRow,
    PurgedProjectRow,
    UploadRow,
)
from services.ingest.status import ACTIVE, DocumentStatus
from services.ingest.watch import DocumentChanges

QUEUED, PROCESSING = DocumentStatus.QUEUED, DocumentStatus.PROCESSING
COMPLETED, FAILED = DocumentStatus.COMPLETED, DocumentStatus.FAILED
DOCUMENTS = DocumentRow.__table__
CHUNK_COLUMNS = [column.key for column in ChunkRow.__table__.columns]
FACT_COLUMNS = [column.key for column in FactRow.__table__.columns if column.key != "id"]
DOCUMENT_COLUMNS = [column.key for column in DOCUMENTS.columns]
CHUNKS = ChunkRow.__table__
FACTS = FactRow.__table__
UPLOADS = UploadRow.__table__
PURGED = PurgedProjectRow.__table__

# Rows per INSERT statement when a document's chunks and facts are stored.
INSERT_BATCH = 200

# The hot statements, built once (bind parameter names must differ from column names).
_IS_PURGED = select(PURGED.c.project_id).where(PURGED.c.project_id == bindparam("p_project"))
_INSERT_DOCUMENT = insert(DOCUMENTS)
_INSERT_UPLOAD = insert(UPLOADS)
_INSERT_CHUNKS = insert(CHUNKS)
_INSERT_FACTS = insert(FACTS)
_FIND = select(DOCUMENTS).where(DOCUMENTS.c.id == bindparam("p_id"))
# A run's fence: its document is still processing under the attempt number the run claimed.
# Every write of a run carries it, so a run that lost its lease (and whose document another
# run claimed, or the reaper requeued or failed) changes nothing.
_OWN_RUN = (
    (DOCUMENTS.c.id == bindparam("p_id"))
    & (DOCUMENTS.c.status == PROCESSING)
    & (DOCUMENTS.c.attempts == bindparam("p_run"))
)
_CLAIM = (
    update(DOCUMENTS)
    .where(
        DOCUMENTS.c.id == bindparam("p_id"),
        (DOCUMENTS.c.status == QUEUED)
        | (
            (DOCUMENTS.c.status == PROCESSING) & (DOCUMENTS.c.lease_expires_at < bindparam("p_now"))
        ),
    )
    .values(
        status=PROCESSING,
        attempts=DOCUMENTS.c.attempts + 1,
        lease_expires_at=bindparam("p_lease"),
        updated_at=bindparam("p_now"),
        error="",
    )
    .returning(DOCUMENTS)
)
_PROGRESS = (
    update(DOCUMENTS)
    .where(_OWN_RUN)
    .values(
        chunks_embedded=bindparam("p_embedded"),
        chunks_total=bindparam("p_total"),
        updated_at=bindparam("p_now"),
    )
)
_KNOWN = select(CHUNKS.c.text_hash, CHUNKS.c.embedding).where(
    CHUNKS.c.project_id == bindparam("p_project"),
    CHUNKS.c.text_hash.in_(bindparam("p_hashes", expanding=True)),
)
_LOCK = select(DOCUMENTS).where(DOCUMENTS.c.id == bindparam("p_id")).with_for_update()
_EXTEND = update(DOCUMENTS).where(_OWN_RUN).values(lease_expires_at=bindparam("p_lease"))
_DELETE_FACTS = delete(FACTS).where(FACTS.c.document_id == bindparam("p_id"))
_DELETE_CHUNKS = delete(CHUNKS).where(CHUNKS.c.document_id == bindparam("p_id"))
_DELETE_UPLOAD = delete(UPLOADS).where(UPLOADS.c.document_id == bindparam("p_id"))
_COMPLETE = (
    update(DOCUMENTS)
    .where(_OWN_RUN)
    .values(
        status=COMPLETED,
        chunk_count=bindparam("p_chunks"),
        fact_count=bindparam("p_facts"),
        chunks_embedded=bindparam("p_chunks"),
        chunks_total=bindparam("p_chunks"),
        stored_bytes=bindparam("p_bytes"),
        error="",
        job_grant=None,
        lease_expires_at=None,
        completed_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
    .returning(DOCUMENTS)
)


@dataclass(frozen=True)
class ProjectCounts:
    by_status: dict[str, int]
    chunks: int
    facts: int
    stored_bytes: int
    last_completed_at: datetime | None


class DocumentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Single-statement reads run in autocommit: no BEGIN and COMMIT (or ROLLBACK) around
        # them, about 0.25 ms of this process's CPU each, and the database's too.
        self.reads = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.outbox = AuditOutbox(AUDIT_OUTBOX)
        # Wakes this process's WatchDocument streams after each committed change.
        self.changes = DocumentChanges()

    # -- documents ---------------------------------------------------------------------

    async def is_purged(self, project_id: str) -> bool:
        async with self.reads.connect() as connection:
            found = await connection.scalar(_IS_PURGED, {"p_project": project_id})
        return found is not None

    async def insert(self, document: DocumentRow, payload_ct: bytes) -> DocumentRow:
        """Stores a new document with its encrypted upload, in the state `document` is in
        (queued, or already claimed by an inline run). NOT_FOUND if the project was deleted;
        ALREADY_EXISTS on the same content."""
        values = {column: getattr(document, column) for column in DOCUMENT_COLUMNS}
        try:
            async with self.engine.begin() as connection:
                if await connection.scalar(_IS_PURGED, {"p_project": document.project_id}):
                    raise NotFound(f"Project {document.project_id} was deleted")
                await connection.execute(_INSERT_DOCUMENT, values)
                await connection.execute(
                    _INSERT_UPLOAD, {"document_id": document.id, "payload_ct": payload_ct}
                )
        except IntegrityError:
            raise await self._duplicate_error(document.project_id, document.content_hash) from None
        return document

    async def _duplicate_error(self, project_id: str, content_hash: str | None) -> Exception:
        async with self.sessions() as session:
            existing = await session.scalar(
                select(DocumentRow.id).where(
                    DocumentRow.project_id == project_id,
                    DocumentRow.content_hash == content_hash,
                    DocumentRow.status != FAILED,
                )
            )
        if existing is None:  # the other one failed meanwhile: a retry will succeed
            return AlreadyExists("The same content is being ingested right now. Try again")
        return AlreadyExists(
            f"This content is already in the project as document {existing}",
        )

    async def get(self, project_id: str, document_id: str) -> DocumentRow:
        row = await self.find(document_id)
        if row is None or row.project_id != project_id:
            raise NotFound(f"Document {document_id} not found in project {project_id}")
        return row

    async def find(self, document_id: str) -> DocumentRow | None:
        async with self.reads.connect() as connection:
            return _document((await connection.execute(_FIND, {"p_id": document_id})).first())

    async def page(
        self,
        project_id: str,
        status: DocumentStatus | None,
        size: int,
        after: tuple[datetime, str] | None,
    ) -> tuple[list[DocumentRow], bool]:
        """Newest first; `after` is the (created_at, id) of the last document seen."""
        query = select(DocumentRow).where(DocumentRow.project_id == project_id)
        if status:
            query = query.where(DocumentRow.status == status)
        if after is not None:
            created_at, last_id = after
            query = query.where(
                (DocumentRow.created_at < created_at)
                | ((DocumentRow.created_at == created_at) & (DocumentRow.id < last_id))
            )
        query = query.order_by(DocumentRow.created_at.desc(), DocumentRow.id.desc())
        async with self.sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        return rows[:size], len(rows) > size

    async def upload(self, document_id: str) -> bytes | None:
        async with self.reads.connect() as connection:
            return await connection.scalar(
                select(UploadRow.payload_ct).where(UploadRow.document_id == document_id)
            )

    # -- the status machine ------------------------------------------------------------

    async def claim(self, document_id: str, lease: timedelta) -> DocumentRow | None:
        """queued (or processing with a lapsed lease) → processing under the next attempt
        number, which is the run's fence; None if not claimable."""
        now = utcnow()
        async with self.engine.begin() as connection:
            claimed = _document(
                (
                    await connection.execute(
                        _CLAIM, {"p_id": document_id, "p_now": now, "p_lease": now + lease}
                    )
                ).first()
            )
        self.changes.changed(document_id)
        return claimed

    async def extend_lease(self, document_id: str, run: int, lease: timedelta) -> bool:
        """Extends run `run`'s lease; False when the document is no longer that run's."""
        async with self.engine.begin() as connection:
            extended = await connection.execute(
                _EXTEND, {"p_id": document_id, "p_run": run, "p_lease": utcnow() + lease}
            )
            return extended.rowcount == 1

    async def extend_queued_lease(self, document_id: str, lease: timedelta) -> None:
        """A queued document whose job still waits for a worker keeps its place."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(DocumentRow)
                .where(DocumentRow.id == document_id, DocumentRow.status == QUEUED)
                .values(lease_expires_at=utcnow() + lease)
            )

    async def set_content(
        self, document: DocumentRow, content_hash: str, title_ct: bytes, text_bytes: int
    ) -> bool:
        """Records a fetched document's content hash (run `document.attempts`); False when
        the run lost the document, ALREADY_EXISTS if the project has the content."""
        try:
            async with self.engine.begin() as connection:
                updated = await connection.execute(
                    update(DOCUMENTS)
                    .where(_OWN_RUN)
                    .values(
                        content_hash=content_hash,
                        title_ct=title_ct,
                        text_bytes=text_bytes,
                        updated_at=utcnow(),
                    ),
                    {"p_id": document.id, "p_run": document.attempts},
                )
        except IntegrityError:
            raise await self._duplicate_error(document.project_id, content_hash) from None
        self.changes.changed(document.id)
        return updated.rowcount == 1

    async def progress(self, document_id: str, run: int, embedded: int, total: int) -> bool:
        async with self.engine.begin() as connection:
            updated = await connection.execute(
                _PROGRESS, _progress(document_id, run, embedded, total)
            )
        self.changes.changed(document_id)
        return updated.rowcount == 1

    async def start_embedding(
        self, document: DocumentRow, hashes: Sequence[str], total: int, *, record: bool = True
    ) -> dict[str, bytes]:
        """Embeddings the project already has for these chunk texts (no re-embedding), and,
        if `record`, the document's progress set to them out of `total`, in one transaction
        (without: one read, for a document whose progress goes straight to completed)."""
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(hashes))
        project = document.project_id
        async with self.engine.begin() if record else self.reads.connect() as connection:
            for start in range(0, len(unique), 500):
                batch = unique[start : start + 500]
                rows = await connection.execute(_KNOWN, {"p_project": project, "p_hashes": batch})
                found.update({h: e for h, e in rows.all()})
            if record:
                embedded = sum(1 for h in hashes if h in found)
                await connection.execute(
                    _PROGRESS, _progress(document.id, document.attempts, embedded, total)
                )
        if record:
            self.changes.changed(document.id)
        return found

    async def store_chunks(
        self,
        document_id: str,
        run: int,
        chunks: Sequence[ChunkRow],
        facts: Sequence[FactRow],
        *,
        replace: bool = False,
    ) -> DocumentRow | None:
        """Replaces the document's chunks and facts in one transaction (re-runs never
        duplicate); the document as it is now. None if the document is no longer run
        `run`'s (deleted, or requeued and claimed by another run): nothing is written."""
        async with self.engine.begin() as connection:
            document = _document((await connection.execute(_LOCK, {"p_id": document_id})).first())
            if document is None or document.status != PROCESSING or document.attempts != run:
                return None
            if replace or document.attempts > 1:  # an earlier pass may have stored some
                await connection.execute(_DELETE_FACTS, {"p_id": document_id})
                await connection.execute(_DELETE_CHUNKS, {"p_id": document_id})
            await _insert_in_batches(connection, _INSERT_CHUNKS, chunks, CHUNK_COLUMNS)
            await _insert_in_batches(connection, _INSERT_FACTS, facts, FACT_COLUMNS)
        return document

    async def complete(
        self,
        document_id: str,
        run: int,
        chunk_count: int,
        fact_count: int,
        stored_bytes: int,
        audit: AuditEvent | None = None,
    ) -> DocumentRow | None:
        """processing → completed, with its audit event in the same transaction; the
        completed document, or None if it is no longer run `run`'s."""
        parameters = {
            "p_id": document_id,
            "p_run": run,
            "p_chunks": chunk_count,
            "p_facts": fact_count,
            "p_bytes": stored_bytes,
            "p_now": utcnow(),
        }
        async with self.engine.begin() as connection:
            document = _document((await connection.execute(_COMPLETE, parameters)).first())
            if document is None:
                return None
            await connection.execute(_DELETE_UPLOAD, {"p_id": document_id})
            if audit is not None:
                await self.outbox.record(connection, audit)
        self.changes.changed(document_id)
        return document

    async def fail(
        self,
        document_id: str,
        run: int,
        reason: str,
        *,
        lapsed: bool = False,
        audit: AuditEvent | None = None,
    ) -> bool:
        """Run `run`'s document → failed with a reason (the upload stays so RetryDocument can
        run it again) and its chunks and facts removed, with its audit event, in one
        transaction. `lapsed`: only if the run's lease ran out (the reaper). False, and
        nothing changed, when the document is no longer that run's: a completed document
        (or another run's) keeps its chunks."""
        conditions = [
            DOCUMENTS.c.id == document_id,
            DOCUMENTS.c.status.in_(ACTIVE),
            DOCUMENTS.c.attempts == run,
        ]
        if lapsed:
            conditions.append(DOCUMENTS.c.lease_expires_at < utcnow())
        async with self.engine.begin() as connection:
            failed = await connection.execute(
                update(DOCUMENTS)
                .where(*conditions)
                .values(
                    status=FAILED,
                    error=reason,
                    job_grant=None,
                    lease_expires_at=None,
                    chunk_count=0,
                    fact_count=0,
                    updated_at=utcnow(),
                )
            )
            if failed.rowcount != 1:
                return False
            await connection.execute(_DELETE_FACTS, {"p_id": document_id})
            await connection.execute(_DELETE_CHUNKS, {"p_id": document_id})
            if audit is not None:
                await self.outbox.record(connection, audit)
        self.changes.changed(document_id)
        return True

    async def release(self, document_id: str, run: int, backoff: timedelta) -> bool:
        """Run `run` gives its document back after transient failures: queued again, due
        for the reaper after `backoff`. False when it was no longer the run's."""
        now = utcnow()
        async with self.engine.begin() as connection:
            released = await connection.execute(
                update(DOCUMENTS)
                .where(_OWN_RUN)
                .values(status=QUEUED, lease_expires_at=now + backoff, updated_at=now),
                {"p_id": document_id, "p_run": run},
            )
        self.changes.changed(document_id)
        return released.rowcount == 1

    async def count_transient(self, document_id: str, run: int) -> int | None:
        """Counts one transient failure of run `run` on its document; the document's count,
        or None when it is no longer the run's."""
        async with self.engine.begin() as connection:
            counted = await connection.execute(
                update(DOCUMENTS)
                .where(_OWN_RUN)
                .values(transient_failures=DOCUMENTS.c.transient_failures + 1, updated_at=utcnow())
                .returning(DOCUMENTS.c.transient_failures),
                {"p_id": document_id, "p_run": run},
            )
            count = counted.scalar()
        self.changes.changed(document_id)
        return count

    async def requeue_lapsed(self, document_id: str, run: int, lease: timedelta) -> bool:
        """The reaper's requeue: only a document still active under attempt `run` whose
        lease ran out is queued again (a live run, or a finished one, is left alone)."""
        now = utcnow()
        values: dict[str, object] = {
            "status": QUEUED,
            "error": "",
            "lease_expires_at": now + lease,
            "updated_at": now,
            "chunks_embedded": 0,
        }
        async with self.engine.begin() as connection:
            document = _document((await connection.execute(_LOCK, {"p_id": document_id})).first())
            if (
                document is None
                or document.status not in ACTIVE
                or document.attempts != run
                or document.lease_expires_at is None
                or as_utc(document.lease_expires_at) >= now
            ):
                return False
            if document.source_type == 1:  # URL: the hash is known again after the fetch
                values["content_hash"] = None
            await connection.execute(
                update(DOCUMENTS).where(DOCUMENTS.c.id == document_id).values(**values)
            )
        self.changes.changed(document_id)
        return True

    async def retry(
        self, document_id: str, lease: timedelta, job_grant: str, audit_grant: bytes
    ) -> DocumentRow | None:
        """failed → queued (RetryDocument). None if it is not failed or its upload is gone."""
        now = utcnow()
        async with self.sessions.begin() as session:
            document = await session.get(DocumentRow, document_id, with_for_update=True)
            if document is None or document.status != FAILED:
                return None
            if await session.get(UploadRow, document_id) is None:
                return None
            document.status = QUEUED
            document.error = ""
            document.lease_expires_at = now + lease
            document.updated_at = now
            document.chunks_embedded = 0
            document.job_grant = job_grant
            document.audit_grant = audit_grant
            if document.source_type == 1:  # URL: the hash is known again after the fetch
                document.content_hash = None
        self.changes.changed(document_id)
        return document

    async def stale(self, limit: int = 50) -> list[DocumentRow]:
        """Queued or processing documents whose lease ran out (a lost job or a dead worker)."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(DocumentRow)
                .where(DocumentRow.status.in_(ACTIVE), DocumentRow.lease_expires_at < utcnow())
                .limit(limit)
            )
            return list(rows.all())

    async def delete_document(
        self, project_id: str, document_id: str, audit: AuditEvent | None = None
    ) -> None:
        """Deletes the document and its rows, with its audit event, in one transaction."""
        async with self.sessions.begin() as session:
            document = await session.get(DocumentRow, document_id, with_for_update=True)
            if document is None or document.project_id != project_id:
                raise NotFound(f"Document {document_id} not found in project {project_id}")
            await _delete_documents(session, [document_id])
            if audit is not None:
                await self.outbox.record(await session.connection(), audit)
        self.changes.changed(document_id)

    async def purge(self, project_id: str) -> int:
        async with self.sessions.begin() as session:
            if await session.get(PurgedProjectRow, project_id) is None:
                session.add(PurgedProjectRow(project_id=project_id, purged_at=utcnow()))
            ids = list(
                (
                    await session.scalars(
                        select(DocumentRow.id).where(DocumentRow.project_id == project_id)
                    )
                ).all()
            )
            await _delete_documents(session, ids)
        self.changes.changed(*ids)
        return len(ids)

    async def discard(self, project_id: str) -> int:
        """Removes a project's documents and their rows without marking it purged: what an
        import that did not finish stored (services/ingest/transfer.py)."""
        async with self.sessions.begin() as session:
            ids = list(
                (
                    await session.scalars(
                        select(DocumentRow.id).where(DocumentRow.project_id == project_id)
                    )
                ).all()
            )
            await _delete_documents(session, ids)
        return len(ids)

    # -- reading chunks back -----------------------------------------------------------

    async def chunks(
        self, project_id: str, document_id: str | None = None
    ) -> AsyncIterator[list[ChunkRow]]:
        """A project's (or one document's) chunks of completed documents, in batches."""
        query = (
            select(ChunkRow)
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(ChunkRow.project_id == project_id, DocumentRow.status == COMPLETED)
            .order_by(ChunkRow.document_id, ChunkRow.chunk_index)
        )
        if document_id is not None:
            query = query.where(ChunkRow.document_id == document_id)
        async with self.sessions() as session:
            result = await session.stream_scalars(query.execution_options(yield_per=500))
            async for batch in result.partitions(500):
                yield list(batch)

    async def counts(self, project_ids: Sequence[str]) -> dict[str, ProjectCounts]:
        async with self.sessions() as session:
            statuses = await session.execute(
                select(DocumentRow.project_id, DocumentRow.status, func.count())
                .where(DocumentRow.project_id.in_(project_ids))
                .group_by(DocumentRow.project_id, DocumentRow.status)
            )
            sums = await session.execute(
                select(
                    DocumentRow.project_id,
                    func.coalesce(func.sum(DocumentRow.chunk_count), 0),
                    func.coalesce(func.sum(DocumentRow.fact_count), 0),
                    func.coalesce(func.sum(DocumentRow.stored_bytes), 0),
                    func.max(DocumentRow.completed_at),
                )
                .where(DocumentRow.project_id.in_(project_ids))
                .group_by(DocumentRow.project_id)
            )
            by_status: dict[str, dict[str, int]] = {}
            for project_id, status, count in statuses.all():
                by_status.setdefault(project_id, {})[status] = count
            result = {}
            for project_id, chunks, facts, stored, last in sums.all():
                result[project_id] = ProjectCounts(
                    by_status.get(project_id, {}),
                    int(chunks),
                    int(facts),
                    int(stored),
                    as_utc(last) if isinstance(last, datetime) else _parse(last),
                )
        return result

    async def census(self) -> dict[str, tuple[int, datetime | None]]:
        """Documents of every project together, by status: (count, oldest creation time).
        For metrics: no project, document or title leaves this method."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(DocumentRow.status, func.count(), func.min(DocumentRow.created_at)).group_by(
                    DocumentRow.status
                )
            )
            return {status: (int(count), _time(oldest)) for status, count, oldest in rows.all()}


def _document(row: Row | None) -> DocumentRow | None:
    """A documents row read with Core, as a (detached) DocumentRow."""
    return None if row is None else DocumentRow(**row._mapping)


def _progress(document_id: str, run: int, embedded: int, total: int) -> dict[str, object]:
    return {
        "p_id": document_id,
        "p_run": run,
        "p_embedded": embedded,
        "p_total": total,
        "p_now": utcnow(),
    }


def _values(rows: Sequence[ChunkRow] | Sequence[FactRow], columns: list[str]) -> list[dict]:
    return [{column: getattr(row, column) for column in columns} for row in rows]


async def _insert_in_batches(
    connection: AsyncConnection,
    statement: Insert,
    rows: Sequence[ChunkRow] | Sequence[FactRow],
    columns: list[str],
) -> None:
    """Inserts `rows` INSERT_BATCH at a time, yielding to the event loop between batches: the
    statement's parameters are processed on the loop's thread, and a long document's
    thousands of rows in one statement held every other call of the service (health checks
    included) for seconds."""
    for start in range(0, len(rows), INSERT_BATCH):
        if start:
            await asyncio.sleep(0)
        await connection.execute(statement, _values(rows[start : start + INSERT_BATCH], columns))


def _time(value: object) -> datetime | None:
    """A timestamp as PostgreSQL (datetime) or SQLite (text, from an aggregate) returns it."""
    return as_utc(value) if isinstance(value, datetime) else _parse(value)


def _parse(value: object) -> datetime | None:
    if value is None:
        return None
    return as_utc(datetime.fromisoformat(str(value)))


async def _delete_documents(session: AsyncSession, ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        await session.execute(delete(FactRow).where(FactRow.document_id.in_(batch)))
        await session.execute(delete(ChunkRow).where(ChunkRow.document_id.in_(batch)))
        await session.execute(delete(UploadRow).where(UploadRow.document_id.in_(batch)))
        await session.execute(delete(DocumentRow).where(DocumentRow.id.in_(batch)))
