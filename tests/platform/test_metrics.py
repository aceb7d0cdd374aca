"""Prometheus metrics through a real scrape: the RPC, ingestion, query, crypto and readiness
series move with calls made over the gRPC API, and no series carries a project id or name,
a title, a query text, a passphrase or a token.

The four services run in this process and share its registry; `/metrics` is read over HTTP
from the listener a server opens on METRICS_PORT.
"""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contextcache.v1 import ingest_pb2, projects_pb2, query_pb2
from runtime import metrics
from runtime.ports import free_port
from services.projects.app import ProjectsApp
from tests.conftest import PASSPHRASE, channel_to, eventually, new_project, running, running_stack

SECRET_TITLE = "Quarterly-merger-memo-7Q2"
SECRET_QUERY = "which lighthouse keeper trimmed the wick"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def raw(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def value(samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_a_server_serves_metrics_on_its_metrics_port(make_settings):
    port = free_port()
    settings = make_settings(metrics_port=port)
    async with running(ProjectsApp(settings)) as server:
        async with channel_to(server.port, settings) as channel:
            from contextcache.v1 import projects_pb2_grpc

            stub = projects_pb2_grpc.ProjectServiceStub(channel)
            await stub.ListProjects(projects_pb2.ListProjectsRequest())
        samples = await asyncio.to_thread(scrape, port)
        assert (
            value(
                samples,
                "grpc_server_handled_total",
                grpc_service="contextcache.v1.ProjectService",
                grpc_method="ListProjects",
                grpc_code="OK",
            )
            >= 1
        )
        assert value(samples, "contextcache_ready", service="projects") == 1
        assert value(samples, "contextcache_dependency_up", service="projects") >= 1
    # The listener closes with the server.
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape, port)


async def test_metrics_follow_the_api_and_carry_no_content(make_settings):
    port = free_port()
    listener = metrics.serve(port, "127.0.0.1")
    try:
        async with running_stack(make_settings, metrics_interval=0.2) as stack:
            before = await asyncio.to_thread(scrape, port)
            project, token = await new_project(stack, name="secret-project-name")

            # A wrong passphrase: PERMISSION_DENIED, counted once, nothing else recorded.
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stack.projects.UnlockProject(
                    projects_pb2.UnlockProjectRequest(
                        project_id=project.id, passphrase="not the passphrase at all, no"
                    )
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

            ingested = await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id,
                    text=ingest_pb2.TextSource(
                        title=SECRET_TITLE,
                        body="The keeper of the lighthouse trimmed the lamp wick every "
                        "evening so ships could pass the reef safely. "
                        "Comets grow bright tails of gas and dust that point away from the Sun.",
                    ),
                ),
                metadata=token,
            )
            document = ingested.document
            for mode in (query_pb2.RETRIEVAL_MODE_HYBRID, query_pb2.RETRIEVAL_MODE_KEYWORD):
                await stack.query.Query(
                    query_pb2.QueryRequest(project_id=project.id, query=SECRET_QUERY, mode=mode),
                    metadata=token,
                )

            async def settled():
                samples = await asyncio.to_thread(scrape, port)
                return (
                    samples
                    if value(samples, "contextcache_documents", status="completed") >= 1
                    and value(samples, "contextcache_index_points") >= 1
                    else None
                )

            after = await eventually(settled, timeout=20)
            text = await asyncio.to_thread(raw, port)

    finally:
        metrics.stop(listener)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    unlock = {"grpc_service": "contextcache.v1.ProjectService", "grpc_method": "UnlockProject"}
    assert delta("grpc_server_started_total", **unlock) == 2
    assert delta("grpc_server_handled_total", grpc_code="OK", **unlock) == 1
    assert delta("grpc_server_handled_total", grpc_code="PERMISSION_DENIED", **unlock) == 1
    assert delta("grpc_server_handling_seconds_count", **unlock) == 2
    # Internal RPCs are counted under their own service name.
    assert (
        delta(
            "grpc_server_handled_total",
            grpc_service="contextcache.internal.v1.CryptoInternalService",
            grpc_method="OpenKeyring",
            grpc_code="PERMISSION_DENIED",
        )
        == 1
    )
    assert delta("contextcache_crypto_passphrase_failures_total") == 1
    # Opened by CreateProject (for its audit event), UnlockProject, and the wrong passphrase.
    assert delta("contextcache_crypto_unlock_seconds_count") == 3

    assert document.chunk_count >= 1
    assert delta("contextcache_ingest_chunks_embedded_total") == document.chunk_count
    assert delta("contextcache_ingest_jobs_total", outcome="completed") == 1
    assert delta("contextcache_embedding_batch_size_count") >= 1
    assert delta("contextcache_embedding_batch_size_sum") >= document.chunk_count
    assert value(after, "contextcache_documents", status="completed") == 1
    assert value(after, "contextcache_documents", status="queued") == 0
    assert value(after, "contextcache_documents_oldest_age_seconds", status="queued") == 0
    assert value(after, "contextcache_ingest_queue_depth") == 0
    assert value(after, "contextcache_index_points") == document.chunk_count

    assert delta("contextcache_index_search_seconds_count", mode="hybrid") == 1
    assert delta("contextcache_index_search_seconds_count", mode="keyword") == 1
    for service in ("projects", "ingest", "query", "crypto"):
        assert value(after, "contextcache_ready", service=service) == 1

    # Nothing a user typed or holds appears anywhere in the exposition.
    for secret in (
        project.id,
        "secret-project-name",
        SECRET_TITLE,
        SECRET_QUERY,
        "lighthouse",
        PASSPHRASE,
        dict(token)["x-unlock-token"],
        document.id,
    ):
        assert secret not in text
