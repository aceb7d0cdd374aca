"""A public call that needs the database while PostgreSQL is away (restarting, unreachable)
answers UNAVAILABLE — a status a client may retry — with a message, never INTERNAL; once the
database is back, the same call answers. Found by the fault matrix (tests/faults/): during a
PostgreSQL restart, GetProject answered INTERNAL ("the database system is shutting down")."""

from __future__ import annotations

import grpc
import pytest

from contextcache.v1 import projects_pb2
from tests.conftest import TcpProxy, eventually, new_project, running_stack

pytestmark = pytest.mark.postgres


async def test_calls_while_the_database_is_away_are_unavailable_then_answer(
    make_settings, postgres_url, caplog
):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with running_stack(make_settings, database_url=url) as stack:
            project, _ = await new_project(stack)
            request = projects_pb2.GetProjectRequest(project_id=project.id)

            await proxy.stop()  # every pooled connection cut, new ones refused
            codes = []
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stack.projects.GetProject(request)
                codes.append(failed.value.code())
                assert "Internal error" not in failed.value.details()
            assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
            assert "unexpected error" not in caplog.text

            await proxy.start()

            async def answers():
                try:
                    return await stack.projects.GetProject(request)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    return None

            found = await eventually(answers, timeout=30, every=0.2)
            assert found.project.id == project.id
    finally:
        await proxy.stop()
