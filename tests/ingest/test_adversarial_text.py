"""Adversarial text over the real API: answered promptly, and the ingest service stays
responsive (its health checks keep answering) while it works.

The servers run in this process, so a step that held the GIL would delay the health probes of
this test as it delays the kubelet's. Bounds are generous (a loaded CI machine); the code this
replaced took about half a minute on the dot text and its health checks waited as long.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import ingest_pb2
from tests.conftest import new_project
from tests.ingest.test_documents import failure, file_request, text_request
from tests.unit.test_extract import build_pdf

DOTS = "Intro " + "." * 30_000 + "end"


class HealthProbe:
    """Checks the ingest service's health every 20 ms and records how long each answer took."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._health = health_pb2_grpc.HealthStub(channel)
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            self.latencies.append(time.perf_counter() - started)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> HealthProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def test_the_30_kb_dot_text_is_answered_at_once_with_health_unaffected(stack):
    project, token = await new_project(stack)
    # Loads the model and starts the text workers: what is measured next is the dot text only.
    warm = await stack.ingest.IngestDocument(
        text_request(project.id, "The harbour master reads the log of every ship."), metadata=token
    )
    assert warm.document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED

    async with HealthProbe(stack.channels["ingest"]) as probe:
        started = time.perf_counter()
        reply = await stack.ingest.IngestDocument(
            text_request(project.id, DOTS, "Dots"), metadata=token, timeout=20
        )
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.1)  # at least one probe after it, too

    assert reply.document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, reply.document.error
    assert reply.document.chunk_count > 1
    print(f"dot text: {elapsed:.2f}s, health max {max(probe.latencies) * 1000:.0f} ms")
    assert elapsed < 5, f"the 30 KB dot text took {elapsed:.1f}s"
    assert len(probe.latencies) >= 3 and max(probe.latencies) < 0.5, probe.latencies


async def test_a_pdf_compression_bomb_is_refused_naming_the_field(stack):
    project, token = await new_project(stack)
    bomb = build_pdf([b"BT /F1 1 Tf (x) Tj ET\n" * 3_000_000], compress=True)
    async with HealthProbe(stack.channels["ingest"]) as probe:
        error = await failure(
            stack.ingest.IngestDocument(file_request(project.id, "bomb.pdf", bomb), metadata=token)
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "compression bomb" in error.details()
    assert max(probe.latencies) < 0.5, probe.latencies
