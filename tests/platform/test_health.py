"""Health protocol: liveness stays SERVING; readiness follows the database and recovers."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import projects_pb2, projects_pb2_grpc
from runtime.protos import PROJECT_SERVICE
from services.ingest.app import IngestApp
from services.projects.app import ProjectsApp
from services.query.app import QueryApp
from tests.conftest import TcpProxy, channel_to, eventually, running

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status_of(stub: health_pb2_grpc.HealthStub, name: str) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=3)
    return response.status


async def test_every_service_name_is_serving(make_settings):
    for app_class in (ProjectsApp, IngestApp, QueryApp):
        app = app_class(make_settings())
        async with running(app) as server, channel_to(server.port, server.settings) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", "liveness", *app.service_names):
                assert await status_of(stub, name) == SERVING, (app_class.__name__, name)
            try:
                await status_of(stub, "contextcache.v1.NoSuchService")
                raise AssertionError("unknown service names must be NOT_FOUND")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_readiness_follows_the_database_and_recovers(make_settings, postgres_url):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app = ProjectsApp(make_settings(database_url=url))
    try:
        async with running(app) as server, channel_to(server.port, server.settings) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            projects = projects_pb2_grpc.ProjectServiceStub(channel)
            assert await status_of(health, PROJECT_SERVICE) == SERVING

            await proxy.stop()  # the database becomes unreachable
            await eventually(lambda: _is(health, PROJECT_SERVICE, NOT_SERVING))
            assert await status_of(health, "") == NOT_SERVING
            assert await status_of(health, "liveness") == SERVING
            status = (
                await projects.GetStatus(projects_pb2.ProjectServiceGetStatusRequest())
            ).status
            assert status.state == status.STATE_DEGRADED
            database = next(c for c in status.checks if c.name == "database")
            assert database.result == database.RESULT_FAILING
            assert database.type == "postgresql"
            assert "5432" not in str(status) and "Error" not in str(status)

            await proxy.start()  # it comes back: readiness recovers by itself
            await eventually(lambda: _is(health, PROJECT_SERVICE, SERVING), timeout=15)
            assert await status_of(health, "") == SERVING
    finally:
        await proxy.stop()


async def _is(stub: health_pb2_grpc.HealthStub, name: str, expected: int) -> bool:
    return await status_of(stub, name) == expected


async def test_watch_streams_status_changes(make_settings, postgres_url):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with running(ProjectsApp(make_settings(database_url=url))) as server:
            async with channel_to(server.port, server.settings) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=PROJECT_SERVICE))
                first = await watch.read()
                assert first.status == SERVING
                await proxy.stop()
                second = await asyncio.wait_for(watch.read(), 10)
                assert second.status == NOT_SERVING
                watch.cancel()
    finally:
        await proxy.stop()


import asyncio  # noqa: E402


async def test_the_probe_port_serves_health_in_plaintext_and_nothing_else(make_settings):
    """Kubernetes' gRPC probes cannot present a certificate: HEALTH_PORT answers them, and
    only them; the service port still refuses plaintext."""
    from runtime.ports import free_port

    probe_port = free_port()
    app = ProjectsApp(make_settings(health_port=probe_port))
    async with running(app) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{probe_port}") as plain:
            stub = health_pb2_grpc.HealthStub(plain)
            for name in ("liveness", PROJECT_SERVICE):
                assert await status_of(stub, name) == SERVING
            projects = projects_pb2_grpc.ProjectServiceStub(plain)
            try:
                await projects.ListProjects(projects_pb2.ListProjectsRequest(), timeout=3)
                raise AssertionError("the probe port must serve health only")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            try:
                await health_pb2_grpc.HealthStub(plain).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
                raise AssertionError("the service port must refuse plaintext")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
