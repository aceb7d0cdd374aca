"""Bounded resources: a server runs at most MAX_CONCURRENT_RPCS calls at once (the next is
refused with RESOURCE_EXHAUSTED at once, not queued), and one token holds at most
WATCH_STREAMS_PER_TOKEN WatchDocument streams open."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import ingest_pb2, projects_pb2
from services.projects.app import ProjectsApp
from tests.conftest import PASSPHRASE, channel_to, eventually, new_project, running, running_stack
from tests.ingest.test_resilience import ingest_background, large_text


async def test_a_server_refuses_calls_beyond_its_concurrency_limit(make_settings):
    app = ProjectsApp(make_settings(max_concurrent_rpcs=2))
    async with running(app) as server, channel_to(server.port, server.settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        streams = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
        for stream in streams:  # both open and answered: two calls in progress
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        streams.pop().cancel()

        async def served() -> bool:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await eventually(served, timeout=10)
        streams.pop().cancel()


async def test_one_token_holds_a_bounded_number_of_watch_streams(make_settings):
    async with running_stack(make_settings, watch_streams_per_token=2) as stack:
        project, token = await new_project(stack)
        document = await ingest_background(stack, project.id, token, large_text(150))
        request = ingest_pb2.WatchDocumentRequest(project_id=project.id, document_id=document.id)
        streams = [stack.ingest.WatchDocument(request, metadata=token) for _ in range(2)]
        for stream in streams:
            assert (await stream.read()).document.id == document.id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            third = stack.ingest.WatchDocument(request, metadata=token)
            await third.read()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "WatchDocument streams" in raised.value.details()

        # Another token of the same project has its own allowance.
        unlocked = await stack.projects.UnlockProject(
            projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE)
        )
        other = stack.ingest.WatchDocument(
            request, metadata=(("x-unlock-token", unlocked.unlock_token),)
        )
        assert (await other.read()).document.id == document.id

        # Streams end with the document; the slots come back.
        async def drained(stream) -> ingest_pb2.Document:
            last = None
            while (update := await stream.read()) != grpc.aio.EOF:
                last = update.document
            return last

        finals = await asyncio.wait_for(
            asyncio.gather(*(drained(s) for s in (*streams, other))), timeout=300
        )
        assert all(f.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED for f in finals)
        again = stack.ingest.WatchDocument(request, metadata=token)
        assert (await again.read()).document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED
