"""The ingestion pipeline: one code path for inline requests and background jobs.

fetch (URLs) → extract → normalize → hash → dedupe → chunk → embed (reusing the project's
existing embeddings of identical chunks) → keyword terms (keyed ids) → encrypt → store →
index → facts → completed, with progress persisted as chunks are embedded.

A document is claimed with a lease that a heartbeat extends while it is processed; if the
process dies, the lease lapses and the reaper (jobs.py) runs it again. Each claim is a new
run with its own attempt number, and every write of a run is fenced by it (store.py): a run
whose lease lapsed — its heartbeat could not reach the database for a whole lease, say — and
whose document was requeued changes nothing and stops itself; it never fails, completes or
unindexes a document another run owns. Every step is idempotent: chunk ids are
deterministic and a re-run replaces what an earlier run stored.

A transient failure (a service or the database briefly unreachable) is logged with its cause
and counted on the document, and the run tries again after a backoff of seconds; after a few
it gives the document back to the queue (the reaper runs it again shortly) or, out of
attempts, fails it with a reason. Audit events are recorded in the transaction of the change
they describe (runtime/outbox.py). This module never logs document text, titles or URLs.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import enum
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from google.protobuf import timestamp_pb2
from sqlalchemy.exc import InterfaceError, OperationalError

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc, query_pb2, query_pb2_grpc
from contextcache.v1 import crypto_pb2, ingest_pb2
from retrieval.cipher import ContentCipher
from retrieval.embeddings import Embedder
from retrieval.sealing import associated_data, chunk_id
from runtime import metrics
from runtime.background import cancel_and_wait
from runtime.clients import calling
from runtime.db import as_utc
from runtime.errors import AlreadyExists, ServiceError, Unauthenticated, Unavailable
from runtime.outbox import AuditEvent, AuditRelay
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
from services.ingest.pipeline.facts import Fact
from services.ingest.pipeline.fetch import UrlFetcher
from services.ingest.pipeline.prepare import Prepared, prepare, prepare_text  # noqa: F401
from services.ingest.pipeline.text_workers import ChunkTerms, TextWorkers, text_workers
from services.ingest.status import DocumentStatus
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
# Backoff before each retry of a run after a transient failure; after the last one the
# document goes back to the queue (the reaper requeues it when RELEASE_BACKOFF has passed).
RETRY_BACKOFF = (1.0, 2.0, 4.0, 8.0)
INLINE_RETRY_BACKOFF = (0.5, 1.0)  # a caller waits on an inline run
RELEASE_BACKOFF = timedelta(seconds=15)
# Heartbeat: a failed extension is retried this often until the lease would have lapsed.
HEARTBEAT_RETRY = 0.5


# Set in an inline run's task: a caller waits on it.
_urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent", default=False)


class LeaseLost(Exception):
    """The run's document is no longer its own: its lease lapsed and it was requeued or
    claimed by another run, failed by the reaper, or deleted."""


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
        text: TextWorkers | None = None,
        relay: AuditRelay | None = None,
        retry_backoff: Sequence[float] = RETRY_BACKOFF,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.query = query
        self.fetcher = fetcher
        # Pooled: documents processed at the same time share model batches.
        self.embedder = embedder or Embedder()
        self._chunker = chunker
        # The CPU-heavy text steps run in worker processes (see text_workers).
        self.text = text or text_workers()
        self.lease = lease
        self.max_attempts = max_attempts
        # Delivers audit events right after their commit (None in a worker: the ingest
        # service's relay delivers them).
        self.relay = relay
        self.retry_backoff = tuple(retry_backoff)

    async def _chunk(self, text: str) -> list[Chunk]:
        if self._chunker is not None:  # a chunker of the caller's, run here
            return await asyncio.to_thread(self._chunker.split, text)
        return await self.text.chunk(text, self.embedder.max_tokens)

    async def redeem(self, job_grant: str) -> str:
        """The job token a stored grant stands for (crypto opens grants for ingest and its
        worker only)."""
        async with calling("crypto", "RedeemJobGrant"):
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
            await self.fail(document, reason, "unauthorized")
            metrics.INGEST_JOBS.labels(Outcome.FAILED.value).inc()
            return Result(Outcome.FAILED, reason, error)
        except Unavailable as error:
            # Nothing claimed: the document keeps its lease and the reaper queues it again.
            log.warning(
                "document %s: transient failure before its run (%s); the reaper retries it",
                document_id,
                error.cause or "crypto RedeemJobGrant",
            )
            return Result(Outcome.RETRY, error.message, error)
        return await self.process(document_id, token)

    async def process(
        self,
        document_id: str,
        token: str,
        payload: str | None = None,
        claimed: DocumentRow | None = None,
        *,
        inline: bool = False,
    ) -> Result:
        """Runs the pipeline for one document; never raises for the document's own faults.

        `payload` is the document's upload in plaintext when the caller still holds it (an
        inline ingestion); otherwise the stored upload is read and decrypted. `claimed`: the
        document as stored already claimed (an inline ingestion inserts it so), else it is
        claimed here. `inline`: a caller waits, so transient failures are retried briefly.
        """
        if inline:  # its embeddings go before background documents' (retrieval.batching)
            _urgent.set(True)
        result = await self._process(document_id, token, payload, claimed, inline)
        metrics.INGEST_JOBS.labels(result.outcome.value).inc()
        return result

    async def _process(
        self,
        document_id: str,
        token: str,
        payload: str | None,
        claimed: DocumentRow | None,
        inline: bool,
    ) -> Result:
        document = claimed or await self.store.claim(document_id, self.lease)
        if document is None:
            return Result(Outcome.SKIPPED)
        cipher = ContentCipher(self.crypto, document.project_id, token)
        backoff = INLINE_RETRY_BACKOFF if inline else self.retry_backoff
        try:
            return await self._fenced(document, self._tries(document, cipher, payload, backoff))
        except LeaseLost:
            log.info(
                "document %s: run %d lost its lease; it stopped and left the document to "
                "the run that holds it",
                document.id,
                document.attempts,
            )
            return Result(Outcome.SKIPPED)

    async def _tries(
        self,
        document: DocumentRow,
        cipher: ContentCipher,
        payload: str | None,
        backoff: Sequence[float],
    ) -> Result:
        """The run: the pipeline, tried again after each transient failure."""
        retry = 0
        while True:
            try:
                return await self._once(document, cipher, payload, replace=retry > 0)
            except (Unavailable, OperationalError, InterfaceError) as error:
                cause = transient_cause(error)
                try:
                    count = await self.store.count_transient(document.id, document.attempts)
                except (OperationalError, InterfaceError):
                    count = 0  # the database itself is away: counted on the next failure
                if count is None:
                    raise LeaseLost from error
                if retry < len(backoff):
                    log.warning(
                        "document %s: transient failure (%s), %d so far; retrying in %.1fs",
                        document.id,
                        cause,
                        count,
                        backoff[retry],
                    )
                    await asyncio.sleep(backoff[retry])
                    retry += 1
                    continue
                log.warning(
                    "document %s: transient failure (%s), %d so far; giving it back to the queue",
                    document.id,
                    cause,
                    count,
                )
                return await self._give_back(document, error, cause)

    async def _once(
        self,
        document: DocumentRow,
        cipher: ContentCipher,
        payload: str | None,
        *,
        replace: bool,
    ) -> Result:
        """One pass of the pipeline (`replace`: what an earlier pass of this run stored);
        raises for transient failures only."""
        try:
            stored = await self._run(document, cipher, payload, replace)
        except IngestError as error:
            await self.fail(document, error.reason, failure_code(error))
            return Result(Outcome.FAILED, error.reason)
        except AlreadyExists as error:
            await self.fail(document, error.message, "duplicate")
            return Result(Outcome.FAILED, error.message, error)
        except Unavailable:
            raise
        except ServiceError as error:  # e.g. the token expired or the project went away
            await self.fail(document, error.message, error.code.name.lower())
            return Result(Outcome.FAILED, error.message, error)
        await self._deliver_audit(document.project_id)
        return Result(Outcome.COMPLETED, document=stored)

    async def _give_back(self, document: DocumentRow, error: Exception, cause: str) -> Result:
        unavailable = (
            error
            if isinstance(error, Unavailable)
            else Unavailable("The database is unavailable. Try again shortly")
        )
        if document.attempts >= self.max_attempts:
            reason = (
                "ContextCache could not process the document because a service was unavailable "
                f"in each of its {document.attempts} attempts. Try again later with "
                "RetryDocument."
            )
            await self.fail(document, reason, "unavailable")
            return Result(Outcome.FAILED, reason, unavailable)
        if not await self.store.release(document.id, document.attempts, RELEASE_BACKOFF):
            raise LeaseLost
        return Result(Outcome.RETRY, unavailable.message, unavailable)

    async def _fenced(self, document: DocumentRow, work) -> Result:  # type: ignore[no-untyped-def]
        """Runs `work` while a heartbeat holds the run's lease; LeaseLost (and `work`
        cancelled) as soon as the heartbeat finds the lease gone."""
        task = asyncio.ensure_future(work)
        heartbeat = asyncio.create_task(self._heartbeat(document))
        try:
            await asyncio.wait({task, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            heartbeat.result()  # raises LeaseLost
            raise LeaseLost
        finally:
            await cancel_and_wait(heartbeat)
            await cancel_and_wait(task)

    async def _heartbeat(self, document: DocumentRow) -> None:
        """Extends the run's lease every third of it; retries through a short database
        outage; raises LeaseLost when the lease is another's, or when it could not be
        extended before it lapsed (another run may claim the document from then on)."""
        interval = max(0.5, self.lease.total_seconds() / 3)
        loop = asyncio.get_running_loop()
        expires = loop.time() + self.lease.total_seconds()
        while True:
            await asyncio.sleep(interval)
            while True:
                attempt_at = loop.time()
                try:
                    extended = await self.store.extend_lease(
                        document.id, document.attempts, self.lease
                    )
                except Exception as error:
                    if loop.time() + HEARTBEAT_RETRY >= expires:
                        log.warning(
                            "document %s: run %d could not extend its lease (%s) before it "
                            "lapsed; stopping",
                            document.id,
                            document.attempts,
                            type(error).__name__,
                        )
                        raise LeaseLost from error
                    await asyncio.sleep(HEARTBEAT_RETRY)
                    continue
                if not extended:
                    raise LeaseLost
                expires = attempt_at + self.lease.total_seconds()
                break

    # -- the steps ---------------------------------------------------------------------

    async def _run(
        self,
        document: DocumentRow,
        cipher: ContentCipher,
        payload: str | None,
        replace: bool = False,
    ) -> DocumentRow:
        """The document as completed; LeaseLost when the run lost it meanwhile."""
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

        chunks = await self._chunk(text)
        hashes = [_sha256(c.text) for c in chunks]
        # The model embeds (in its thread, without the GIL) while this task does the rest of
        # the work that needs only the text: keyword terms, facts and encryption.
        embedding = asyncio.create_task(self._embed(document, [c.text for c in chunks], hashes))
        try:
            chunk_terms, facts = await self.text.terms_and_facts(text, chunks)
            sparse = await self._sparse(cipher, chunk_terms)
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
        # Thousands of rows for a long document: built off the event loop.
        chunk_rows, fact_rows = await asyncio.to_thread(
            _rows, document, chunks, facts, sealed, hashes, embeddings, sparse
        )
        run = document.attempts
        refreshed = await self.store.store_chunks(doc, run, chunk_rows, fact_rows, replace=replace)
        if refreshed is None:
            raise LeaseLost  # nothing written: the document is another run's, or deleted
        await index_chunks(self.query, refreshed, chunk_rows, cipher.token)
        stored_bytes = sum(len(r.text_ct) for r in chunk_rows) + sum(
            len(r.statement_ct) for r in fact_rows
        )
        completed = await self.store.complete(
            doc,
            run,
            len(chunk_rows),
            len(fact_rows),
            stored_bytes,
            self._event(document, crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED),
        )
        if completed is None:
            await self._unindex_if_abandoned(document)
            raise LeaseLost
        return completed

    async def _fetch(self, document: DocumentRow, cipher: ContentCipher, url: str) -> str:
        fetched = await self.fetcher.fetch(url)
        prepared = await self.text.prepare(
            fetched.content,
            content_type=fetched.content_type,
            filename=fetched.final_url.rsplit("/", 1)[-1],
            fallback_title=url,
        )
        title_ct = await cipher.encrypt_one(
            prepared.title.encode(), associated_data("title", document.project_id, document.id)
        )
        if not await self.store.set_content(
            document, prepared.content_hash, title_ct, len(prepared.text.encode())
        ):
            raise LeaseLost
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
                    future = self.embedder.submit(texts_ahead, urgent=_urgent.get())
                    submitted.append(asyncio.wrap_future(future))
                embedded = await submitted.popleft()
                metrics.CHUNKS_EMBEDDED.inc(len(step))
                for (_, positions), vector in zip(step, embedded, strict=True):
                    vectors[positions] = vector
                    done += len(positions)
                if len(steps) > 1 and not await self.store.progress(
                    document.id, document.attempts, done, total
                ):
                    raise LeaseLost
        finally:
            for future in submitted:  # only if this document gave up or failed
                future.cancel()
        return vectors

    async def _sparse(
        self, cipher: ContentCipher, chunk_terms: ChunkTerms
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Keyword vectors: keyed term ids (ascending) → term frequencies, one crypto call for
        all. Vectorized, and yielding to the event loop now and then: a 10 MB document has
        thousands of chunks and millions of terms."""
        vocabulary = chunk_terms.vocabulary
        ids = await cipher.hash_terms(vocabulary) if vocabulary else {}
        id_of = np.fromiter((ids[t] for t in vocabulary), dtype=np.uint32, count=len(vocabulary))
        bounds, terms, counts = chunk_terms.bounds, chunk_terms.terms, chunk_terms.counts
        vectors = []
        for i in range(len(chunk_terms)):
            low, high = bounds[i], bounds[i + 1]
            # Two terms may share a keyed id: their counts add up.
            term_ids, inverse = np.unique(id_of[terms[low:high]], return_inverse=True)
            weights = np.bincount(inverse, weights=counts[low:high], minlength=len(term_ids))
            vectors.append((term_ids, weights.astype(np.float32)))
            if i % 256 == 255:
                await asyncio.sleep(0)
        return vectors

    async def fail(
        self, document: DocumentRow, reason: str, code: str, *, lapsed: bool = False
    ) -> bool:
        """Fails the run's document with `reason` (for its owner, free of content); the
        audit event carries only `code`, never a URL, host or title. `lapsed`: only if the
        run's lease ran out (the reaper). False, and nothing done, when the document is no
        longer that run's."""
        failed = await self.store.fail(
            document.id,
            document.attempts,
            reason,
            lapsed=lapsed,
            audit=self._event(
                document, crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_FAILED, {"reason": code}
            ),
        )
        if not failed:
            return False
        log.info("document %s failed (%s)", document.id, code)
        await self._unindex(document)
        await self._deliver_audit(document.project_id)
        return True

    async def _unindex_if_abandoned(self, document: DocumentRow) -> None:
        """After a run lost its document between indexing and completing: its vectors are
        removed only if nothing else will own them (the document was deleted or failed);
        a document another run holds or completed keeps them (the same ids, re-sent)."""
        current = await self.store.find(document.id)
        if current is None or current.status == DocumentStatus.FAILED:
            await self._unindex(document)

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

    def _event(
        self,
        document: DocumentRow,
        event: crypto_pb2.AuditEventType.ValueType,
        attributes: dict[str, str] | None = None,
    ) -> AuditEvent | None:
        if not document.audit_grant:
            # Queued before audit grants existed: there is nothing to sign its event with.
            log.warning("audit event for document %s not recorded (no audit grant)", document.id)
            return None
        return AuditEvent(
            document.project_id,
            event,
            "ingest",
            document.audit_grant,
            {"document_id": document.id, **(attributes or {})},
        )

    async def _deliver_audit(self, project_id: str) -> None:
        """Delivers the project's recorded events now if this process relays them (they
        are durable already: a failure here only leaves them to the relay's loop)."""
        if self.relay is None:
            return
        try:
            await self.relay.flush(project_id)
        except Exception:  # noqa: BLE001 — the relay's loop delivers them later
            log.warning("audit events of project %s left to the relay", project_id)


def transient_cause(error: Exception) -> str:
    """What was unavailable, for the log: "<service> <RPC> <code>" or "database"."""
    if isinstance(error, Unavailable):
        return error.cause or "a service UNAVAILABLE"
    return f"database {type(error).__name__}"


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
        # Hundreds of vectors turned into lists: off the event loop.
        request = await asyncio.to_thread(_index_request, document, batch, created)
        async with calling("query", "IndexChunks"):
            await query.IndexChunks(request, metadata=((TOKEN_METADATA_KEY, token),), timeout=120)
        sent += len(batch)
    return sent


def _index_request(
    document: DocumentRow, batch: Sequence[ChunkRow], created: timestamp_pb2.Timestamp
) -> query_pb2.IndexChunksRequest:
    return query_pb2.IndexChunksRequest(
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


def _rows(
    document: DocumentRow,
    chunks: Sequence[Chunk],
    facts: Sequence[Fact],
    sealed: Sequence[bytes],
    hashes: Sequence[str],
    embeddings: np.ndarray,
    sparse: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[ChunkRow], list[FactRow]]:
    """The document's chunk and fact rows (`sealed`: the chunks' ciphertexts, then the
    facts')."""
    project, doc = document.project_id, document.id
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
    return chunk_rows, fact_rows


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def index_project(
    store: DocumentStore,
    query: query_pb2_grpc.QueryInternalServiceStub,
    project_id: str,
    token: str,
    seen: Callable[[str], object] = lambda document_id: None,
) -> int:
    """Sends every stored chunk of the project's completed documents to the index, from the
    stored vectors (nothing is re-embedded); `seen` is told each document id."""
    documents: dict[str, DocumentRow] = {}
    sent = 0
    async for batch in store.chunks(project_id):
        by_document: dict[str, list[ChunkRow]] = {}
        for row in batch:
            by_document.setdefault(row.document_id, []).append(row)
        for document_id, rows in by_document.items():
            if document_id not in documents:
                documents[document_id] = await store.get(project_id, document_id)
                seen(document_id)
            sent += await index_chunks(query, documents[document_id], rows, token)
    return sent
