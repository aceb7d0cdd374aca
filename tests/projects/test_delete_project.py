"""DeleteProject removes a project everywhere — also when a service it needs is down when
the call is made: the deletion is recorded first and completed by retrying. The deletion's
audit event is recorded with it (the projects service's outbox, signed under the audit grant
of the project's latest unlock: no token is kept at rest), so with crypto down the deletion
goes ahead and its event reaches the audit chain, in order, once crypto is back."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from contextcache.v1 import crypto_pb2, ingest_pb2, projects_pb2, query_pb2
from services.ingest.models import ChunkRow, DocumentRow, FactRow, UploadRow
from tests.conftest import PASSPHRASE, eventually, new_project, running_stack

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


async def audit_events(stack, project_id: str, token) -> list[crypto_pb2.AuditEvent]:
    return list(
        (
            await stack.crypto.ListAuditEvents(
                crypto_pb2.ListAuditEventsRequest(project_id=project_id, page_size=100),
                metadata=token,
            )
        ).events
    )


async def test_delete_with_crypto_down_completes_and_its_event_arrives_once_crypto_is_back(
    make_settings, database
):
    async with running_stack(make_settings, database_url=database) as stack:
        project, token = await populated_project(stack)
        before = [e.type for e in await audit_events(stack, project.id, token)]
        await stack.stop_service("crypto")
        accepted = await stack.projects.DeleteProject(
            projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
        )
        assert accepted.completed  # ingest and query need no crypto to purge
        assert await gone(stack, project.id)
        assert await rows_of(stack, project.id) == 0
        pending = stack.app("projects").store.outbox
        assert await pending.pending(stack.app("projects").engine, project.id) == 1

        await stack.start_service("crypto")

        async def delivered() -> bool:
            events = await audit_events(stack, project.id, token)
            return bool(events) and events[-1].type == crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_DELETED

        await eventually(delivered, timeout=30, every=0.5)
        events = await audit_events(stack, project.id, token)
        assert [e.type for e in events] == [*before, crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_DELETED]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        verified = await stack.crypto.VerifyAuditChain(
            crypto_pb2.VerifyAuditChainRequest(project_id=project.id, public_key=project.public_key)
        )
        assert verified.valid and verified.events_verified == len(events)
        assert await pending.pending(stack.app("projects").engine, project.id) == 0


async def test_a_token_ended_by_a_passphrase_change_cannot_delete_even_with_crypto_down(
    make_settings,
):
    async with running_stack(make_settings) as stack:
        project, token = await populated_project(stack)
        await stack.projects.ChangePassphrase(
            projects_pb2.ChangePassphraseRequest(
                project_id=project.id,
                old_passphrase=PASSPHRASE,
                new_passphrase="an entirely different passphrase 7",
            )
        )
        await stack.stop_service("crypto")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.projects.DeleteProject(
                projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        still = (
            await stack.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        ).project
        assert still.state == projects_pb2.Project.STATE_ACTIVE


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
