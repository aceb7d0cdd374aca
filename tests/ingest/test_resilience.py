"""Ingestion under faults, through the public API on the embedded job runner (in-process jobs)
and both databases:

- a short database outage mid-run: the heartbeat keeps the lease through it and the same run
  completes the document (no second attempt);
- fencing: a run whose lease lapsed while it was still embedding (its heartbeat could not
  reach the database, say) and whose document was queued again changes nothing once another
  run holds the document — the document ends completed once, with each chunk and each vector
  once, never completed without its vectors;
- transient failures: retried after seconds (not at the lease's expiry), each logged with its
  cause (service, RPC, code) and counted on the document (GetDocument);
- the audit outbox: crypto down while a document is being ingested delays its event, never
  drops it; the chain is valid and complete once crypto is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from sqlalchemy import func, select, update

from contextcache.v1 import crypto_pb2, ingest_pb2
from runtime.db import utcnow
from services.ingest.models import ChunkRow, DocumentRow
from tests.conftest import Stack, TcpProxy, eventually, new_project, running_stack


def large_text(paragraphs: int) -> str:
    """Distinct sentences, so no chunk's embedding is reused (10 sentences a paragraph)."""
    return "\n\n".join(
        " ".join(
            f"Entry {p}.{s}: the keeper of lighthouse {p * 31 + s} logged ship number "
            f"{(p * 17 + s) * 13} passing the northern reef at {s % 24} hours."
            for s in range(10)
        )
        for p in range(paragraphs)
    )


async def ingest_background(stack: Stack, project_id: str, token, body: str):
    return (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project_id,
                text=ingest_pb2.TextSource(title="Lighthouse log", body=body),
                background=True,
            ),
            metadata=token,
        )
    ).document


async def get_document(stack: Stack, project_id: str, document_id: str, token):
    return (
        await stack.ingest.GetDocument(
            ingest_pb2.GetDocumentRequest(project_id=project_id, document_id=document_id),
            metadata=token,
        )
    ).document


async def embedding_started(stack: Stack, project_id: str, document_id: str, token):
    async def check():
        document = await get_document(stack, project_id, document_id, token)
        assert document.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED, "finished too soon"
        running = document.status == ingest_pb2.DOCUMENT_STATUS_PROCESSING
        return document if running and document.chunks_embedded > 0 else None

    return await eventually(check, timeout=180, every=0.1)


async def stored_chunks(stack: Stack, document_id: str) -> tuple[int, int]:
    """(chunk rows, distinct chunk indexes) of the document in the ingest database."""
    async with stack.app("ingest").store.sessions() as session:
        rows, distinct = (
            await session.execute(
                select(func.count(), func.count(ChunkRow.chunk_index.distinct())).where(
                    ChunkRow.document_id == document_id
                )
            )
        ).one()
    return rows, distinct


async def vectors_of(stack: Stack, project_id: str, document_id: str) -> list[int]:
    """Chunk indexes of the document's points in the query service's index."""
    index = stack.app("query").index
    return [c.chunk_index async for c in index.scroll(project_id) if c.document_id == document_id]


async def audit_events(stack: Stack, project_id: str, token) -> list[crypto_pb2.AuditEvent]:
    return list(
        (
            await stack.crypto.ListAuditEvents(
                crypto_pb2.ListAuditEventsRequest(project_id=project_id, page_size=100),
                metadata=token,
            )
        ).events
    )


async def jobs_finished(stack: Stack) -> bool:
    return stack.app("ingest").queue.running == 0


async def test_a_lease_lost_mid_embedding_ends_completed_once_with_every_vector(
    make_settings, database
):
    # No reaper rounds of its own: the test runs the sweep at the moment it wants.
    async with running_stack(
        make_settings, database_url=database, ingest_reaper_interval=3600
    ) as stack:
        project, token = await new_project(stack)
        document = await ingest_background(stack, project.id, token, large_text(150))
        await embedding_started(stack, project.id, document.id, token)

        # The first run's lease lapses while it embeds (as if its heartbeat could not reach
        # the database for a whole lease) and the reaper queues the document again: a
        # second run starts while the first one still works.
        async with stack.app("ingest").store.sessions.begin() as session:
            await session.execute(
                update(DocumentRow)
                .where(DocumentRow.id == document.id)
                .values(lease_expires_at=utcnow())
            )
        assert await stack.app("ingest").reaper.sweep() == 1

        completed_without_vectors = []

        async def settled() -> bool:
            current = await get_document(stack, project.id, document.id, token)
            if current.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
                vectors = await vectors_of(stack, project.id, document.id)
                if len(vectors) != current.chunk_count:
                    completed_without_vectors.append((current.chunk_count, len(vectors)))
            return await jobs_finished(stack)  # both runs over, whatever they did

        await eventually(settled, timeout=300, every=0.2)
        final = await get_document(stack, project.id, document.id, token)
        assert final.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, final.error
        assert final.attempts == 2
        assert final.chunk_count > 64  # more than one embedding step
        assert await stored_chunks(stack, document.id) == (final.chunk_count, final.chunk_count)
        vectors = await vectors_of(stack, project.id, document.id)
        assert sorted(vectors) == list(range(final.chunk_count))
        assert completed_without_vectors == []

        events = await audit_events(stack, project.id, token)
        about_it = [e.type for e in events if e.attributes.get("document_id") == document.id]
        assert about_it == [crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED]


async def test_transient_failures_are_retried_in_seconds_counted_and_explained(
    make_settings, caplog
):
    lease = 60.0
    async with running_stack(make_settings, ingest_lease_seconds=lease) as stack:
        project, token = await new_project(stack)
        await stack.stop_service("query")  # indexing fails while the query service is down
        with caplog.at_level(logging.WARNING, logger="services.ingest.ingestion"):
            document = await ingest_background(stack, project.id, token, large_text(3))

            async def failed_once():
                current = await get_document(stack, project.id, document.id, token)
                return current if current.transient_failures >= 1 else None

            await eventually(failed_once, timeout=60, every=0.2)
        causes = [r.getMessage() for r in caplog.records if "transient failure" in r.getMessage()]
        assert causes and all("query IndexChunks UNAVAILABLE" in c for c in causes), causes

        await stack.start_service("query")
        back = time.monotonic()

        async def completed():
            current = await get_document(stack, project.id, document.id, token)
            assert current.status != ingest_pb2.DOCUMENT_STATUS_FAILED, current.error
            return current if current.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED else None

        final = await eventually(completed, timeout=lease, every=0.2)
        assert time.monotonic() - back < lease / 2  # a backoff of seconds, not the lease
        assert final.transient_failures >= 1
        assert sorted(await vectors_of(stack, project.id, document.id)) == list(
            range(final.chunk_count)
        )


async def test_crypto_down_during_ingestion_delays_its_audit_event_and_drops_nothing(
    make_settings, database
):
    async with running_stack(make_settings, database_url=database) as stack:
        project, token = await new_project(stack)
        document = await ingest_background(stack, project.id, token, large_text(100))
        await embedding_started(stack, project.id, document.id, token)
        # The run's crypto steps (terms, encryption) are done by now; it stores, indexes and
        # completes the document while crypto is away.
        await stack.stop_service("crypto")

        # GetDocument decrypts the title through crypto: read the row instead.
        async def completed_row() -> bool:
            row = await stack.app("ingest").store.find(document.id)
            return row is not None and row.status == "completed"

        await eventually(completed_row, timeout=300, every=0.2)
        ingest = stack.app("ingest")
        assert await ingest.store.outbox.pending(ingest.engine, project.id) == 1
        await asyncio.sleep(2)  # relay rounds while crypto is down: still pending, not dropped
        assert await ingest.store.outbox.pending(ingest.engine, project.id) == 1

        await stack.start_service("crypto")

        async def delivered() -> bool:
            return await ingest.store.outbox.pending(ingest.engine, project.id) == 0

        await eventually(delivered, timeout=60, every=0.5)
        final = await get_document(stack, project.id, document.id, token)
        assert final.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED
        events = await audit_events(stack, project.id, token)
        assert [e.type for e in events] == [
            crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_CREATED,
            crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UNLOCKED,
            crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED,
        ]
        assert events[-1].attributes["document_id"] == document.id
        verified = await stack.crypto.VerifyAuditChain(
            crypto_pb2.VerifyAuditChainRequest(project_id=project.id, public_key=project.public_key)
        )
        assert verified.valid and verified.events_verified == 3


async def test_a_short_database_outage_mid_run_is_ridden_out_by_the_same_run(
    make_settings, postgres_url
):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    lease = 4.0
    try:
        async with running_stack(
            make_settings, database_url=url, ingest_lease_seconds=lease
        ) as stack:
            project, token = await new_project(stack)
            document = await ingest_background(stack, project.id, token, large_text(150))
            await embedding_started(stack, project.id, document.id, token)
            await proxy.stop()  # PostgreSQL unreachable for half a lease (a restart, say)
            await asyncio.sleep(lease / 2)
            await proxy.start()

            async def completed():
                try:
                    current = await get_document(stack, project.id, document.id, token)
                except grpc.aio.AioRpcError as error:  # a pool still finding dead connections
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    return None
                assert current.status != ingest_pb2.DOCUMENT_STATUS_FAILED, current.error
                return current if current.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED else None

            final = await eventually(completed, timeout=300, every=0.3)
            assert final.attempts == 1  # the lease was kept: no other run was started
            await eventually(lambda: jobs_finished(stack), timeout=60)
            assert await stored_chunks(stack, document.id) == (final.chunk_count,) * 2
            assert sorted(await vectors_of(stack, project.id, document.id)) == list(
                range(final.chunk_count)
            )
    finally:
        await proxy.stop()
