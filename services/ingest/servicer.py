"""IngestService RPCs: validate → authorize → do → audit → respond.

Every content RPC needs the project's unlock token (metadata x-unlock-token). Bad input is
refused before anything is stored; the work itself is IngestionPipeline's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

from google.protobuf import duration_pb2

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as crypto_internal_pb2_grpc
from contextcache.internal.v1 import ingest_pb2 as ingest_internal_pb2
from contextcache.internal.v1 import ingest_pb2_grpc as ingest_internal_pb2_grpc
from contextcache.internal.v1 import query_pb2, query_pb2_grpc
from contextcache.v1 import crypto_pb2, ingest_pb2, ingest_pb2_grpc
from retrieval.cipher import ContentCipher
from retrieval.sealing import associated_data
from runtime.clients import calling
from runtime.db import as_utc, utcnow
from runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from runtime.health import Readiness
from runtime.interceptors import validate
from runtime.outbox import AuditEvent, AuditRelay
from runtime.paging import decode_cursor, encode_cursor, page_size
from runtime.protos import INGEST_SERVICE, timestamp
from runtime.tokens import TOKEN_METADATA_KEY, TokenVerifier
from services.ingest.ingestion import IngestionPipeline, Outcome, Prepared, index_project
from services.ingest.jobs import JobQueue
from services.ingest.models import DocumentRow
from services.ingest.pipeline.errors import IngestError
from services.ingest.pipeline.fetch import AddressPolicy, resolve_host
from services.ingest.status import DocumentStatus
from services.ingest.store import DocumentStore
from services.ingest.transfer import export_content, import_content
from services.ingest.watch import StreamSlots

log = logging.getLogger(__name__)
JOB_TOKEN_TTL = duration_pb2.Duration(seconds=24 * 3600)
WATCH_FALLBACK = 2.0


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        store: DocumentStore,
        crypto: crypto_internal_pb2_grpc.CryptoInternalServiceStub,
        query: query_pb2_grpc.QueryInternalServiceStub,
        tokens: TokenVerifier,
        pipeline: Callable[[], IngestionPipeline],
        queue: JobQueue,
        address_policy: AddressPolicy,
        readiness: Readiness,
        relay: AuditRelay,
        watch_slots: StreamSlots,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.query = query
        self.tokens = tokens
        self.pipeline = pipeline
        self.queue = queue
        self.address_policy = address_policy
        self.readiness = readiness
        self.relay = relay
        self.watch_slots = watch_slots

    # -- steps -------------------------------------------------------------------------

    async def _authorize(self, context, project_id: str, fresh: bool = False) -> str:  # type: ignore[no-untyped-def]
        token = await self.tokens.authorize(context, project_id, fresh=fresh)
        if await self.store.is_purged(project_id):
            raise NotFound(f"Project {project_id} was deleted")
        return token

    async def _describe(
        self, cipher: ContentCipher, rows: list[DocumentRow]
    ) -> list[ingest_pb2.Document]:
        """Documents as the token holder sees them (titles and sources decrypted)."""
        sealed: list[tuple[bytes, bytes]] = []
        slots: list[tuple[int, str]] = []
        for i, row in enumerate(rows):
            for purpose, value in (("title", row.title_ct), ("source", row.source_ct)):
                if value:
                    slots.append((i, purpose))
                    sealed.append((value, associated_data(purpose, row.project_id, row.id)))
        plain = await cipher.decrypt(sealed) if sealed else []
        texts: dict[tuple[int, str], str] = {
            slot: value.decode() for slot, value in zip(slots, plain, strict=True)
        }
        return [
            _message(row, texts.get((i, "title"), ""), texts.get((i, "source"), ""))
            for i, row in enumerate(rows)
        ]

    async def _one(self, cipher: ContentCipher, row: DocumentRow) -> ingest_pb2.Document:
        return (await self._describe(cipher, [row]))[0]

    async def _prepare(self, request) -> tuple[int, Prepared | None, str, str]:  # type: ignore[no-untyped-def]
        """(source type, prepared text or None for URLs, source, upload payload)."""
        which = request.WhichOneof("source")
        if which == "file":
            name = request.file.filename
            is_pdf = name.lower().endswith(".pdf")
            if not is_pdf:
                try:
                    request.file.content.decode("utf-8", errors="strict")
                except UnicodeDecodeError as error:
                    raise InvalidArgument.for_field(
                        "file.content",
                        f"The .txt file is not valid UTF-8 (invalid byte at position "
                        f"{error.start}). Save it as UTF-8 and upload it again",
                        "file.content.utf8",
                    ) from None
            try:
                # In a worker process: extraction and normalization are CPU-heavy.
                prepared = await self.pipeline().text.prepare(
                    request.file.content, filename=name, fallback_title=name
                )
            except IngestError as error:
                raise InvalidArgument.for_field("file.content", error.reason) from None
            source_type = ingest_pb2.SOURCE_TYPE_PDF if is_pdf else ingest_pb2.SOURCE_TYPE_TEXT_FILE
            return source_type, prepared, name, prepared.text
        if which == "text":
            body = request.text.body
            # The first line, read from a bounded prefix (the body may be 10 MB on one line).
            first_line = (body.lstrip()[:1000].splitlines() or [""])[0]
            title = request.text.title.strip() or first_line.strip()[:80]
            try:
                prepared = await self.pipeline().text.prepare_text(body, title)
            except IngestError as error:
                raise InvalidArgument.for_field("text.body", error.reason) from None
            return ingest_pb2.SOURCE_TYPE_TEXT, prepared, "", prepared.text
        url = request.url.url
        await self._check_address(url)
        return ingest_pb2.SOURCE_TYPE_URL, None, url, url

    async def _check_address(self, url: str) -> None:
        """Refuses URLs whose host resolves to an address we must not fetch (SSRF guard;
        the fetcher checks every redirect hop again)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            addresses = await resolve_host(host, port)
        except OSError:
            addresses = []
        if not addresses:
            raise InvalidArgument.for_field(
                "url.url", f"The URL's host {host!r} could not be resolved", "url.host"
            )
        for address in addresses:
            refusal = self.address_policy.refusal(address)
            if refusal:
                raise InvalidArgument.for_field(
                    "url.url",
                    f"The URL points to a {refusal} address, which ContextCache does not fetch",
                    "url.address",
                )

    async def _issue_job_token(
        self, project_id: str, document_id: str, token: str
    ) -> tuple[str, str, bytes]:
        """(job token for this run, job grant to store, audit grant to store) for one
        document's job."""
        async with calling("crypto", "IssueJobToken"):
            issued = await self.crypto.IssueJobToken(
                crypto_internal_pb2.IssueJobTokenRequest(
                    project_id=project_id, document_id=document_id, ttl=JOB_TOKEN_TTL
                ),
                metadata=((TOKEN_METADATA_KEY, token),),
            )
        return issued.job_token, base64.b64encode(issued.job_grant).decode(), issued.audit_grant

    async def _issue_audit_grant(self, project_id: str, token: str) -> bytes:
        """An audit grant for this service; also proves the token is of the project's current
        keyring generation (a passphrase change ends older tokens)."""
        async with calling("crypto", "IssueAuditGrant"):
            issued = await self.crypto.IssueAuditGrant(
                crypto_internal_pb2.IssueAuditGrantRequest(project_id=project_id),
                metadata=((TOKEN_METADATA_KEY, token),),
            )
        return issued.audit_grant

    async def _run_inline(
        self,
        cipher: ContentCipher,
        document: DocumentRow,
        job_token: str,
        known: tuple[str, str, str] | None = None,
    ) -> ingest_pb2.Document:
        """Processes the document now. `known`: its (upload, title, source) in plaintext, when
        the caller has them (then nothing is read back and decrypted)."""
        payload = known[0] if known else None
        claimed = document if document.status == DocumentStatus.PROCESSING else None
        result = await self.pipeline().process(
            document.id, job_token, payload, claimed, inline=True
        )
        if result.outcome is Outcome.FAILED and result.error is not None:
            if isinstance(result.error, AlreadyExists):
                await self.store.delete_document(document.project_id, document.id)
            raise result.error
        if result.outcome is Outcome.FAILED:
            raise FailedPrecondition(result.reason)
        if result.outcome is Outcome.RETRY:
            raise Unavailable(
                f"{result.reason}. Document {document.id} is queued and will be processed "
                "when the service is back"
            )
        completed = result.document
        if completed is None:  # deleted while it was processed
            completed = await self.store.get(document.project_id, document.id)
        if known and completed.source_type != ingest_pb2.SOURCE_TYPE_URL:
            return _message(completed, known[1], known[2])
        return await self._one(cipher, completed)  # a fetched page's title is new

    # -- RPCs --------------------------------------------------------------------------

    async def IngestDocument(self, request, context):
        project_id = request.project_id
        # The insert checks, in its transaction, that the project was not deleted.
        token = await self.tokens.authorize(context, project_id)
        source_type, prepared, source, payload = await self._prepare(request)
        cipher = ContentCipher(self.crypto, project_id, token)
        document_id = str(uuid.uuid4())
        title = prepared.title if prepared else ""
        upload_ct, title_ct, source_ct = await cipher.encrypt(
            [
                (payload.encode(), associated_data("upload", project_id, document_id)),
                (title.encode(), associated_data("title", project_id, document_id)),
                (source.encode(), associated_data("source", project_id, document_id)),
            ]
        )
        job_token, job_grant, audit_grant = await self._issue_job_token(
            project_id, document_id, token
        )
        now = utcnow()
        # An inline run stores the document claimed (processing, first attempt), so the
        # pipeline need not claim it in a transaction of its own.
        document = DocumentRow(
            id=document_id,
            project_id=project_id,
            status=DocumentStatus.QUEUED if request.background else DocumentStatus.PROCESSING,
            source_type=source_type,
            title_ct=title_ct if title else None,
            source_ct=source_ct if source else None,
            content_hash=prepared.content_hash if prepared else None,
            text_bytes=len(prepared.text.encode()) if prepared else 0,
            error="",
            background=int(request.background),
            job_grant=job_grant,
            audit_grant=audit_grant,
            transient_failures=0,
            lease_expires_at=now + self.pipeline().lease,
            created_at=now,
            updated_at=now,
            attempts=0 if request.background else 1,
            chunk_count=0,
            fact_count=0,
            chunks_embedded=0,
            chunks_total=0,
            stored_bytes=0,
        )
        await self.store.insert(document, upload_ct)
        if request.background:
            try:
                await self.queue.enqueue(document_id, job_grant, 1)
            except Unavailable:
                await self.store.delete_document(project_id, document_id)
                raise
            return ingest_pb2.IngestDocumentResponse(document=await self._one(cipher, document))
        return ingest_pb2.IngestDocumentResponse(
            document=await self._run_inline(cipher, document, job_token, (payload, title, source))
        )

    async def GetDocument(self, request, context):
        token = await self._authorize(context, request.project_id)
        row = await self.store.get(request.project_id, request.document_id)
        cipher = ContentCipher(self.crypto, request.project_id, token)
        return ingest_pb2.GetDocumentResponse(document=await self._one(cipher, row))

    async def ListDocuments(self, request, context):
        token = await self._authorize(context, request.project_id)
        cursor = decode_cursor(request.page_token, "documents", (datetime, str))
        rows, more = await self.store.page(
            request.project_id,
            DocumentStatus.from_proto(request.status),
            page_size(request),
            cursor,  # type: ignore[arg-type]
        )
        cipher = ContentCipher(self.crypto, request.project_id, token)
        next_token = ""
        if more and rows:
            next_token = encode_cursor("documents", as_utc(rows[-1].created_at), rows[-1].id)
        return ingest_pb2.ListDocumentsResponse(
            documents=await self._describe(cipher, rows), next_page_token=next_token
        )

    async def DeleteDocument(self, request, context):
        token = await self._authorize(context, request.project_id)
        await self.store.get(request.project_id, request.document_id)
        # Also checks the token is of the current keyring (no key is used below). With crypto
        # away the call is refused before anything changes.
        audit_grant = await self._issue_audit_grant(request.project_id, token)
        async with calling("query", "DeleteDocumentChunks"):
            # Vectors first: never leave them without their rows.
            await self.query.DeleteDocumentChunks(
                query_pb2.DeleteDocumentChunksRequest(
                    project_id=request.project_id, document_id=request.document_id
                )
            )
        await self.store.delete_document(
            request.project_id,
            request.document_id,
            AuditEvent(
                request.project_id,
                crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_DELETED,
                "token-holder",
                audit_grant,
                {"document_id": request.document_id},
            ),
        )
        await self._deliver_audit(request.project_id)
        return ingest_pb2.DeleteDocumentResponse()

    async def _deliver_audit(self, project_id: str) -> None:
        try:
            await self.relay.flush(project_id)
        except Exception:  # noqa: BLE001 — recorded already; the relay's loop delivers it
            log.warning("audit events of project %s left to the relay", project_id)

    async def WatchDocument(self, request, context):
        token = await self._authorize(context, request.project_id)
        with (
            self.watch_slots.hold(token),
            self.store.changes.watching(request.document_id) as changed,
        ):
            cipher = ContentCipher(self.crypto, request.project_id, token)
            # Changes made in this process wake the stream; a worker's (another process)
            # are read every WATCH_FALLBACK seconds, and only when jobs run elsewhere.
            fallback = WATCH_FALLBACK if self.queue.uses_redis else None
            last = None
            while True:
                changed.clear()
                row = await self.store.get(request.project_id, request.document_id)
                state = (
                    row.status,
                    row.chunks_embedded,
                    row.chunks_total,
                    row.error,
                    row.transient_failures,
                )
                if state != last:
                    last = state
                    yield ingest_pb2.WatchDocumentResponse(document=await self._one(cipher, row))
                if DocumentStatus(row.status).is_terminal:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), fallback)

    async def RetryDocument(self, request, context):
        token = await self._authorize(context, request.project_id)
        row = await self.store.get(request.project_id, request.document_id)
        if row.status != DocumentStatus.FAILED:
            raise FailedPrecondition(
                f"Only failed documents can be retried; document {row.id} is {row.status}"
            )
        job_token, job_grant, audit_grant = await self._issue_job_token(
            request.project_id, row.id, token
        )
        requeued = await self.store.retry(row.id, self.pipeline().lease, job_grant, audit_grant)
        if requeued is None:
            raise FailedPrecondition(
                f"Document {row.id} cannot be retried: it is no longer failed, or its upload "
                "is gone (then ingest it again)"
            )
        cipher = ContentCipher(self.crypto, request.project_id, token)
        if request.background:
            await self.queue.enqueue(row.id, job_grant, requeued.attempts + 1)
            return ingest_pb2.RetryDocumentResponse(document=await self._one(cipher, requeued))
        return ingest_pb2.RetryDocumentResponse(
            document=await self._run_inline(cipher, requeued, job_token)
        )

    async def ReindexProject(self, request, context):
        token = await self._authorize(context, request.project_id)
        documents: set[str] = set()
        chunks = await index_project(
            self.store, self.query, request.project_id, token, documents.add
        )
        return ingest_pb2.ReindexProjectResponse(
            documents_reindexed=len(documents), chunks_reindexed=chunks
        )

    async def GetStatus(self, request, context):
        return ingest_pb2.IngestServiceGetStatusResponse(
            status=await self.readiness.service_status(INGEST_SERVICE)
        )


class IngestInternalServicer(ingest_internal_pb2_grpc.IngestInternalServiceServicer):
    """Ingestion figures and purges, for the projects service only (runtime/callers.py)."""

    def __init__(
        self,
        store: DocumentStore,
        tokens: TokenVerifier,
        query: query_pb2_grpc.QueryInternalServiceStub,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.query = query

    async def GetIngestStats(self, request, context):
        counts = await self.store.counts(list(request.project_ids))
        stats = []
        for project_id in request.project_ids:
            found = counts.get(project_id)
            entry = ingest_internal_pb2.ProjectIngestStats(project_id=project_id)
            if found is not None:
                entry.documents_queued = found.by_status.get(DocumentStatus.QUEUED, 0)
                entry.documents_processing = found.by_status.get(DocumentStatus.PROCESSING, 0)
                entry.documents_completed = found.by_status.get(DocumentStatus.COMPLETED, 0)
                entry.documents_failed = found.by_status.get(DocumentStatus.FAILED, 0)
                entry.chunk_count = found.chunks
                entry.fact_count = found.facts
                entry.stored_bytes = found.stored_bytes
                if found.last_completed_at is not None:
                    entry.last_ingest_at.CopyFrom(timestamp(found.last_completed_at))
            stats.append(entry)
        return ingest_internal_pb2.GetIngestStatsResponse(stats=stats)

    async def PurgeProject(self, request, context):
        deleted = await self.store.purge(request.project_id)
        return ingest_internal_pb2.PurgeProjectResponse(documents_deleted=deleted)

    # Project bundles (ProjectService.ExportProject / ImportProject: services/ingest/transfer.py)

    async def ExportContent(self, request, context):
        await self.tokens.authorize(context, request.project_id)
        async for batch in export_content(self.store, request.project_id):
            yield ingest_internal_pb2.ExportContentResponse(batch=batch)

    async def ImportContent(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "project_id":
            raise InvalidArgument.for_field("project_id", "The first message must name the project")
        validate(first)

        async def batches():  # type: ignore[no-untyped-def]
            async for message in request_iterator:
                if message.WhichOneof("part") != "batch":
                    raise InvalidArgument.for_field("batch", "Only batches may follow the project")
                yield message.batch

        documents, chunks, facts = await import_content(self.store, first.project_id, batches())
        return ingest_internal_pb2.ImportContentResponse(
            documents=documents, chunks=chunks, facts=facts
        )

    async def DiscardImportedContent(self, request, context):
        await self.store.discard(request.project_id)
        return ingest_internal_pb2.DiscardImportedContentResponse()

    async def IndexProject(self, request, context):
        token = await self.tokens.authorize(context, request.project_id)
        indexed = await index_project(self.store, self.query, request.project_id, token)
        return ingest_internal_pb2.IndexProjectResponse(chunks_indexed=indexed)


def _message(row: DocumentRow, title: str, source: str) -> ingest_pb2.Document:
    """A document as the token holder sees it, given its title and source in plaintext."""
    return ingest_pb2.Document(
        id=row.id,
        project_id=row.project_id,
        status=DocumentStatus(row.status).to_proto(),
        source_type=row.source_type,
        title=title,
        source=source,
        content_hash=row.content_hash or "",
        chunk_count=row.chunk_count,
        fact_count=row.fact_count,
        chunks_embedded=row.chunks_embedded,
        chunks_total=row.chunks_total,
        error=row.error,
        text_bytes=row.text_bytes,
        attempts=row.attempts,
        transient_failures=row.transient_failures or 0,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        completed_at=timestamp(row.completed_at),
    )
