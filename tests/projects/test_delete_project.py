"""DeleteProject removes a project everywhere — also when a service it needs is down when
the call is made: the deletion is recorded first and completed by retrying. The deletion's
audit event is appended first, with the caller's token (no token is kept at rest), so with
crypto down the call is refused as UNAVAILABLE and nothing changes until it is back."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from contextcache.v1 import ingest_pb2, projects_pb2, query_pb2
from services.ingest.models import ChunkRow, DocumentRow, FactRow, UploadRow
from tests.conftest import eventually, new_project, running_stack

BODY = (
    "Basalt is an igneous rock formed from the rapid cooling of lava. "
    "Granite is an igneous rock that cools slowly underground. "
    "Sandstone is a sedimentary rock made of sand grains."
)


async def rows_of(stack, project_id: str) -> int:
    """Rows of the project left in the ingest service's tables, plus vectors in the index."""
    async with stack.app("ingest").store.sessions() as session:
        total = 0
        for model in (DocumentRow, ChunkRow, FactRow):
            total += await session.scalar(
                select(func.count()).select_from(model).where(model.project_id == project_id)
            )
        total += await session.scalar(select(func.count()).select_from(UploadRow))
    return total + await stack.app("query").index.count(project_id)


async def populated_project(stack):
    project, token = await new_project(stack)
    document = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id, text=ingest_pb2.TextSource(title="Rocks", body=BODY)
            ),
            metadata=token,
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED
    assert await rows_of(stack, project.id) > 0
    return project, token


async def gone(stack, project_id: str) -> bool:
    try:
        await stack.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project_id))
    except grpc.aio.AioRpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND
    return False


async def test_delete_with_crypto_down_changes_nothing_and_works_once_it_is_back(
    make_settings, database
):
    async with running_stack(make_settings, database_url=database) as stack:
        project, token = await populated_project(stack)
        await stack.stop_service("crypto")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.projects.DeleteProject(
                projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        still = (
            await stack.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        ).project
        assert still.state == projects_pb2.Project.STATE_ACTIVE
        await stack.start_service("crypto")

        async def deleted() -> bool:  # the caller retries, as UNAVAILABLE invites
            try:
                await stack.projects.DeleteProject(
                    projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return True

        await eventually(deleted, timeout=20, every=0.5)
        await eventually(lambda: gone(stack, project.id), timeout=20, every=0.5)


@pytest.mark.parametrize("down", ["ingest", "query"])
async def test_delete_completes_after_a_service_comes_back(make_settings, database, down):
    async with running_stack(make_settings, database_url=database) as stack:
        project, token = await populated_project(stack)
        await stack.stop_service(down)

        accepted = await stack.projects.DeleteProject(
            projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
        )
        assert not accepted.completed
        deleting = (
            await stack.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        ).project
        assert deleting.state == projects_pb2.Project.STATE_DELETING

        await stack.start_service(down)
        await eventually(lambda: gone(stack, project.id), timeout=40, every=0.5)
        assert await rows_of(stack, project.id) == 0
        again = await stack.projects.DeleteProject(
            projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
        )
        assert again.completed  # harmless the second time

        answer = await stack.query.Query(  # nothing readable afterwards, even with a live token
            query_pb2.QueryRequest(project_id=project.id, query="igneous rock"), metadata=token
        )
        assert list(answer.passages) == []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id, text=ingest_pb2.TextSource(title="x", body=BODY)
                ),
                metadata=token,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
