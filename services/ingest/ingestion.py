"""The ingestion pipeline: one code path for inline requests and background jobs.

fetch (URLs) → extract → normalize → hash → dedupe → chunk → embed (reusing the project's
existing embeddings of identical chunks) → keyword terms (keyed ids) → encrypt → store →
index → facts → completed, with progress persisted as chunks are embedded.

A document is claimed with a lease that a heartbeat extends while it is processed; if the
process dies, the lease lapses and the reaper (jobs.py) runs it again. Every step is
idempotent: chunk ids are deterministic and a re-run replaces what an earlier run stored.
This module never logs document text, titles or URLs.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from google.protobuf import timestamp_pb2

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc, query_pb2, query_pb2_grpc
from contextcache.v1 import crypto_pb2, ingest_pb2
from retrieval.cipher import ContentCipher
from retrieval.embeddings import Embedder
from retrieval.sealing import associated_data, chunk_id
from retrieval.terms import term_frequencies
from runtime import metrics
from runtime.background import cancel_and_wait
from runtime.clients import calling
from runtime.db import as_utc
from runtime.errors import AlreadyExists, ServiceError, Unauthenticated, Unavailable
from runtime.tokens import TOKEN_METADATA_KEY
from services.ingest.models import ChunkRow, DocumentRow, FactRow
from services.ingest.pipeline.chunker import Chunk, Chunker
from services.ingest.pipeline.errors import (
    AddressNotAllowed,
    BodyTooLarge,
    FetchFailed,
    IngestError,
    UnreadableDocument,
    UnsupportedContent,
)
from services.ingest.pipeline.extract import extract
from services.ingest.pipeline.facts import extract_facts
from services.ingest.pipeline.fetch import UrlFetcher
from services.ingest.pipeline.normalize import content_hash, has_readable_text, normalize_text
from services.ingest.store import DocumentStore

log = logging.getLogger(__name__)
# Chunks per progress step: the texts of one step are handed to the embedding workers
# together, and the document's progress is written as each step completes.
EMBED_STEP = 64
# Steps of one document waiting at the workers at a time: enough that the workers never wait
# for this document's next step, few enough that a long document neither holds every chunk
# text there nor makes the workers sort thousands of waiting texts.
EMBED_STEPS_AHEAD = 4
INDEX_BATCH = 256


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"  # terminal, with a reason the user can act on
    RETRY = "retry"  # a dependency was unavailable: run again later
    SKIPPED = "skipped"  # not claimable (done, deleted, or another run holds it)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reason: str = ""
    error: ServiceError | None = None
    document: DocumentRow | None = None  # as completed (COMPLETED only)


@dataclass(frozen=True)
class Prepared:
    """A document's text, ready to store: normalized, hashed and titled."""

    text: str
    content_hash: str
    title: str


def prepare(
    content: bytes,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    fallback_title: str = "",
) -> Prepared:
    """extract → normalize → hash. Raises IngestError for unusable content."""
    extracted = extract(content, content_type=content_type, filename=filename)
    return prepare_text(extracted.text, extracted.title or fallback_title)


def prepare_text(text: str, title: str) -> Prepared:
    normalized = normalize_text(text)
    if not has_readable_text(normalized):
        raise UnreadableDocument(
            "The document contains no readable text (letters or digits). Check that it is "
            "the right file."
        )
    return Prepared(normalized, content_hash(normalized), title.strip()[:500])


class IngestionPipeline:
    def __init__(
        self,
        store: DocumentStore,
        crypto: crypto_pb2_grpc.CryptoInternalServiceStub,
        query: query_pb2_grpc.QueryInternalServiceStub,
        fetcher: UrlFetcher,
        embedder: Embedder | None = None,
        chunker: Chunker | None = None,
        lease: timedelta = timedelta(seconds=60),
        max_attempts: int = 3,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.query = query
        self.fetcher = fetcher
        # Pooled: documents processed at the same time share model batches.
        self.embedder = embedder or Embedder()
        self._chunker = chunker
        self.lease = lease
        self.max_attempts = max_attempts

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self.embedder.max_tokens, overlap_tokens=32)
        return self._chunker

    async def redeem(self, job_grant: str) -> str:
        """The job token a stored grant stands for (crypto opens grants for ingest and its
        worker only)."""
        async with calling("crypto"):
            redeemed = await self.crypto.RedeemJobGrant(
                crypto_internal_pb2.RedeemJobGrantRequest(job_grant=base64.b64decode(job_grant)),
                timeout=10,
            )
        return redeemed.job_token

    async def redeem_quietly(self, job_grant: str | None) -> str | None:
        if not job_grant:
            return None
        try:
            return await self.redeem(job_grant)
        except Exception:  # noqa: BLE001 — expired, ended or crypto away: no token
            return None

    async def process_granted(self, document_id: str, job_grant: str) -> Result:
        """`process` for a queued job: redeems the job's grant first."""
        try:
            token = await self.redeem(job_grant)
        except Unauthenticated as error:
            document = await self.store.claim(document_id, self.lease)
            if document is None:
                return Result(Outcome.SKIPPED)
            reason = (
                "The document's job is no longer authorized (it expired or the passphrase "
                "changed). Retry it with RetryDocument."
            )
            await self.fail(document, None, reason, "unauthorized")
            metrics.INGEST_JOBS.labels(Outcome.FAILED.value).inc()
            return Result(Outcome.FAILED, reason, error)
        return await self.process(document_id, token)

    async def process(
        self,
        document_id: str,
        token: str,
        payload: str | None = None,
        claimed: DocumentRow | None = None,
    ) -> Result:
        """Runs the pipeline for one document; never raises for the document's own faults.

        `payload` is the document's upload in plaintext when the caller still holds it (an
        inline ingestion); otherwise the stored upload is read and decrypted. `claimed`: the
        document as stored already claimed (an inline ingestion inserts it so), else it is
        claimed here.
        """
        result = await self._process(document_id, token, payload, claimed)
        metrics.INGEST_JOBS.labels(result.outcome.value).inc()
        return result

    async def _process(
        self, document_id: str, token: str, payload: str | None, claimed: DocumentRow | None
    ) -> Result:
        document = claimed or await self.store.claim(document_id, self.lease)
        if document is None:
            return Result(Outcome.SKIPPED)
        heartbeat = asyncio.create_task(self._heartbeat(document_id))
        cipher = ContentCipher(self.crypto, document.project_id, token)
        try:
            stored = await self._run(document, cipher, payload)
        except IngestError as error:
            await self.fail(document, token, error.reason, failure_code(error))
            return Result(Outcome.FAILED, error.reason)
        except AlreadyExists as error:
            await self.fail(document, token, error.message, "duplicate")
            return Result(Outcome.FAILED, error.message, error)
        except Unavailable as error:
            return await self._transient(document, token, error)
        except ServiceError as error:  # e.g. the token expired or the project went away
            await self.fail(document, token, error.message, error.code.name.lower())
            return Result(Outcome.FAILED, error.message, error)
        finally:
            await cancel_and_wait(heartbeat)
        if stored is None:
            await self._unindex(document)  # deleted while it was being processed
            return Result(Outcome.SKIPPED)
        await self._audit(document, token, crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED)
        return Result(Outcome.COMPLETED, document=stored)

    async def _transient(self, document: DocumentRow, token: str, error: Unavailable) -> Result:
        if document.attempts >= self.max_attempts:
            reason = (
                "ContextCache could not process the document because a service was unavailable "
                f"{document.attempts} times. Try again later with RetryDocument."
            )
            await self.fail(document, token, reason, "unavailable")
            return Result(Outcome.FAILED, reason, error)
        await self.store.requeue(document.id, self.lease)
        return Result(Outcome.RETRY, error.message, error)

    async def _heartbeat(self, document_id: str) -> None:
        interval = max(0.5, self.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            await self.store.extend_lease(document_id, self.lease)

    # -- the steps ---------------------------------------------------------------------

    async def _run(
        self, document: DocumentRow, cipher: ContentCipher, payload: str | None
    ) -> DocumentRow | None:
        """The document as completed, or None if it was deleted while it was processed."""
        project, doc = document.project_id, document.id
        if payload is None:
            payload_ct = await self.store.upload(doc)
            if payload_ct is None:
                raise IngestError("The uploaded content is gone. Ingest the document again.")
            plain = await cipher.decrypt_one(payload_ct, associated_data("upload", project, doc))
            payload = plain.decode()
        if document.source_type == ingest_pb2.SOURCE_TYPE_URL:
            text = await self._fetch(document, cipher, payload)
        else:
            text = payload

        chunks = await asyncio.to_thread(self.chunker.split, text)
        hashes = [_sha256(c.text) for c in chunks]
        # The model embeds (in its thread, without the GIL) while this task does the rest of
        # the work that needs only the text: keyword terms, facts and encryption.
        embedding = asyncio.create_task(self._embed(document, [c.text for c in chunks], hashes))
        try:
            sparse = await self._sparse(cipher, chunks)
            facts = await asyncio.to_thread(extract_facts, text, chunks)
            sealed = await cipher.encrypt(
                [(c.text.encode(), associated_data("chunk", project, doc, c.index)) for c in chunks]
                + [
                    (
                        json.dumps(
                            {"subject": f.subject, "predicate": f.predicate, "object": f.object}
                        ).encode(),
                        associated_data("fact", project, doc, i),
                    )
                    for i, f in enumerate(facts)
                ]
            )
            embeddings = await embedding
        finally:
            await cancel_and_wait(embedding)  # only if a step above failed
            if embedding.done() and not embedding.cancelled():
                embedding.exception()  # retrieved: the step that failed first is reported
        chunk_rows = [
            ChunkRow(
                id=chunk_id(project, doc, c.index),
                project_id=project,
                document_id=doc,
                chunk_index=c.index,
                text_ct=sealed[i],
                text_hash=hashes[i],
                start_offset=c.start,
                end_offset=c.end,
                embedding=embeddings[i].astype("<f4").tobytes(),
                sparse_indices=np.asarray(sparse[i][0], dtype="<u4").tobytes(),
                sparse_values=np.asarray(sparse[i][1], dtype="<f4").tobytes(),
            )
            for i, c in enumerate(chunks)
        ]
        fact_rows = [
            FactRow(
                project_id=project,
                document_id=doc,
                chunk_index=f.chunk_index,
                fact_index=i,
                start_offset=f.start,
                end_offset=f.end,
                statement_ct=sealed[len(chunks) + i],
            )
            for i, f in enumerate(facts)
        ]
        refreshed = await self.store.store_chunks(doc, chunk_rows, fact_rows)
        if refreshed is None:
            return None
        await index_chunks(self.query, refreshed, chunk_rows, cipher.token)
        stored_bytes = sum(len(r.text_ct) for r in chunk_rows) + sum(
            len(r.statement_ct) for r in fact_rows
        )
        return await self.store.complete(doc, len(chunk_rows), len(fact_rows), stored_bytes)

    async def _fetch(self, document: DocumentRow, cipher: ContentCipher, url: str) -> str:
        fetched = await self.fetcher.fetch(url)
        prepared = await asyncio.to_thread(
            prepare,
            fetched.content,
            content_type=fetched.content_type,
            filename=fetched.final_url.rsplit("/", 1)[-1],
            fallback_title=url,
        )
        title_ct = await cipher.encrypt_one(
            prepared.title.encode(), associated_data("title", document.project_id, document.id)
        )
        await self.store.set_content(
            document, prepared.content_hash, title_ct, len(prepared.text.encode())
        )
        return prepared.text

    async def _embed(
        self, document: DocumentRow, texts: Sequence[str], hashes: Sequence[str]
    ) -> np.ndarray:
        """Embeddings of `texts` (SHA-256 `hashes`); identical chunks the project already
        embedded are reused."""
        total = len(texts)
        vectors = np.zeros((total, self.embedder.dimension), dtype=np.float32)
        # A document of one step goes from none embedded to completed (which records every
        # chunk as embedded): no progress is written for it, here or below.
        stepped = len(set(hashes)) > EMBED_STEP
        known = await self.store.start_embedding(document, hashes, total, record=stepped)
        todo: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            if h in known:
                vectors[i] = np.frombuffer(known[h], dtype="<f4")
            else:
                todo.setdefault(h, []).append(i)
        done = total - sum(len(v) for v in todo.values())
        metrics.CHUNKS_REUSED.inc(done)
        pending = list(todo.items())
        steps = [pending[i : i + EMBED_STEP] for i in range(0, len(pending), EMBED_STEP)]
        submitted: deque[asyncio.Future[np.ndarray]] = deque()
        try:
            for number, step in enumerate(steps):
                while len(submitted) < EMBED_STEPS_AHEAD and number + len(submitted) < len(steps):
                    ahead = steps[number + len(submitted)]
                    texts_ahead = [texts[positions[0]] for _, positions in ahead]
                    submitted.append(asyncio.wrap_future(self.embedder.submit(texts_ahead)))
                embedded = await submitted.popleft()
                metrics.CHUNKS_EMBEDDED.inc(len(step))
                for (_, positions), vector in zip(step, embedded, strict=True):
                    vectors[positions] = vector
                    done += len(positions)
                if len(steps) > 1:
                    await self.store.progress(document.id, done, total)
        finally:
            for future in submitted:  # only if this document gave up or failed
                future.cancel()
        return vectors

    async def _sparse(
        self, cipher: ContentCipher, chunks: Sequence[Chunk]
    ) -> list[tuple[list[int], list[float]]]:
        """Keyword vectors: keyed term ids → term frequencies (one crypto call for all)."""
        frequencies = [term_frequencies(c.text) for c in chunks]
        vocabulary = list(dict.fromkeys(t for f in frequencies for t in f))
        ids = await cipher.hash_terms(vocabulary) if vocabulary else {}
        vectors = []
        for counts in frequencies:
            merged: dict[int, float] = {}
            for term, count in counts.items():
                merged[ids[term]] = merged.get(ids[term], 0.0) + count
            ordered = sorted(merged)
            vectors.append((ordered, [merged[i] for i in ordered]))
        return vectors

    async def fail(self, document: DocumentRow, token: str | None, reason: str, code: str) -> None:
        """Fails the document with `reason` (for its owner, stored encrypted-at-rest free of
        content); the audit event carries only `code`, never a URL, host or title."""
        log.info("document %s failed (%s)", document.id, code)
        await self.store.fail(document.id, reason)
        await self._unindex(document)
        await self._audit(
            document, token, crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_FAILED, {"reason": code}
        )

    async def _unindex(self, document: DocumentRow) -> None:
        try:
            await self.query.DeleteDocumentChunks(
                query_pb2.DeleteDocumentChunksRequest(
                    project_id=document.project_id, document_id=document.id
                ),
                timeout=30,
            )
        except Exception:  # noqa: BLE001 — a failed clean-up is retried by the next run
            log.warning("could not remove vectors of document %s", document.id)

    async def _audit(
        self,
        document: DocumentRow,
        token: str | None,
        event: crypto_pb2.AuditEventType.ValueType,
        attributes: dict[str, str] | None = None,
    ) -> None:
        if token is None:
            log.warning("audit event for document %s not recorded (no token)", document.id)
            return
        try:
            await self.crypto.AppendAuditEvent(
                crypto_internal_pb2.AppendAuditEventRequest(
                    project_id=document.project_id,
                    type=event,
                    actor="ingest",
                    attributes={"document_id": document.id, **(attributes or {})},
                ),
                metadata=((TOKEN_METADATA_KEY, token),),
                timeout=10,
            )
        except Exception:  # noqa: BLE001 — the document's state is already durable
            log.warning("audit event for document %s not recorded", document.id)


def failure_code(error: IngestError) -> str:
    """What the audit log says of a failure: a code, never the reason's text (which can
    name a URL's host)."""
    for kind, code in (
        (AddressNotAllowed, "address_not_allowed"),
        (BodyTooLarge, "body_too_large"),
        (FetchFailed, "fetch_failed"),
        (UnsupportedContent, "unsupported_content"),
        (UnreadableDocument, "unreadable_document"),
    ):
        if isinstance(error, kind):
            return code
    return "invalid_document"


async def index_chunks(
    query: query_pb2_grpc.QueryInternalServiceStub,
    document: DocumentRow,
    rows: Sequence[ChunkRow],
    token: str,
) -> int:
    """Sends chunks (vectors and ciphertext, never plaintext) to the query service's index,
    under the document's job token (or the project's unlock token)."""
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(as_utc(document.created_at))
    sent = 0
    for start in range(0, len(rows), INDEX_BATCH):
        batch = rows[start : start + INDEX_BATCH]
        request = query_pb2.IndexChunksRequest(
            project_id=document.project_id,
            chunks=[
                query_pb2.IndexedChunk(
                    chunk_id=row.id,
                    document_id=row.document_id,
                    chunk_index=row.chunk_index,
                    dense=np.frombuffer(row.embedding, dtype="<f4").tolist(),
                    sparse=query_pb2.SparseVector(
                        indices=np.frombuffer(row.sparse_indices, dtype="<u4").tolist(),
                        values=np.frombuffer(row.sparse_values, dtype="<f4").tolist(),
                    ),
                    encrypted_text=row.text_ct,
                    encrypted_title=document.title_ct or b"",
                    encrypted_source=document.source_ct or b"",
                    source_type=document.source_type,
                    start_offset=row.start_offset,
                    end_offset=row.end_offset,
                    document_created_at=created,
                )
                for row in batch
            ],
        )
        async with calling("query"):
            await query.IndexChunks(request, metadata=((TOKEN_METADATA_KEY, token),), timeout=120)
        sent += len(batch)
    return sent


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
