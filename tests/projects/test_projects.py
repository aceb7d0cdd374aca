"""ProjectService through the API: lifecycle, validation, salts, timestamps, pagination,
unlock, passphrase change and deletion — on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest
from google.protobuf import field_mask_pb2

from contextcache.v1 import crypto_pb2, projects_pb2, query_pb2
from runtime.errors import bad_request_of
from tests.conftest import PASSPHRASE, new_project, running_stack

NEW_PASSPHRASE = "an entirely different passphrase 7"


@pytest.fixture
async def services(make_settings, database):
    async with running_stack(make_settings, database_url=database) as stack:
        yield stack


async def code_of(awaitable) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return raised.value.code()


async def test_create_read_update_delete_list(services):
    project, token = await new_project(services, name="  Field notes  ")
    assert project.name == "Field notes"  # trimmed
    assert project.state == projects_pb2.Project.STATE_ACTIVE
    assert len(project.salt) == 16 and len(project.public_key) == 32

    got = (
        await services.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
    ).project
    assert (got.id, got.name, got.salt, got.created_at) == (
        project.id,
        project.name,
        project.salt,
        project.created_at,
    )

    await asyncio.sleep(0.01)
    updated = (
        await services.projects.UpdateProject(
            projects_pb2.UpdateProjectRequest(
                project_id=project.id,
                project=projects_pb2.ProjectUpdate(name="Renamed", description="about birds"),
                update_mask=field_mask_pb2.FieldMask(paths=["name", "description"]),
            ),
            metadata=token,
        )
    ).project
    assert (updated.name, updated.description) == ("Renamed", "about birds")
    assert updated.created_at == project.created_at
    assert updated.updated_at.ToDatetime() > project.updated_at.ToDatetime()

    listed = (await services.projects.ListProjects(projects_pb2.ListProjectsRequest())).projects
    assert [p.id for p in listed] == [project.id]

    deleted = await services.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
    )
    assert deleted.completed
    assert (
        await code_of(
            services.projects.GetProject(projects_pb2.GetProjectRequest(project_id=project.id))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    again = await services.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=token
    )
    assert again.completed  # deleting twice is harmless


async def test_update_only_touches_masked_fields_and_validates_them(services):
    project, token = await new_project(services)
    updated = (
        await services.projects.UpdateProject(
            projects_pb2.UpdateProjectRequest(
                project_id=project.id,
                project=projects_pb2.ProjectUpdate(name="ignored", description="new text"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=token,
        )
    ).project
    assert (updated.name, updated.description) == (project.name, "new text")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.projects.UpdateProject(
            projects_pb2.UpdateProjectRequest(
                project_id=project.id,
                project=projects_pb2.ProjectUpdate(name="   "),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=token,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Project name cannot be empty"
    assert [v.field for v in bad_request_of(raised.value).field_violations] == ["project.name"]

    for paths in (["salt"], []):
        assert (
            await code_of(
                services.projects.UpdateProject(
                    projects_pb2.UpdateProjectRequest(
                        project_id=project.id,
                        project=projects_pb2.ProjectUpdate(name="x"),
                        update_mask=field_mask_pb2.FieldMask(paths=paths),
                    ),
                    metadata=token,
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )

    assert (
        await code_of(  # writes need the unlock token
            services.projects.UpdateProject(
                projects_pb2.UpdateProjectRequest(
                    project_id=project.id,
                    project=projects_pb2.ProjectUpdate(name="x"),
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                )
            )
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_every_project_has_its_own_salt_and_keys(services):
    first, _ = await new_project(services, name="a")
    second, _ = await new_project(services, name="b")
    assert first.salt != second.salt
    assert first.public_key != second.public_key


async def test_unknown_and_malformed_ids(services):
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (
        await code_of(
            services.projects.GetProject(projects_pb2.GetProjectRequest(project_id=unknown))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(services.projects.GetProject(projects_pb2.GetProjectRequest(project_id="42")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(
            services.projects.UnlockProject(
                projects_pb2.UnlockProjectRequest(project_id=unknown, passphrase=PASSPHRASE)
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )


async def test_unlock_and_change_passphrase(services):
    project, _ = await new_project(services)
    wrong = services.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase="not the passphrase!!")
    )
    assert await code_of(wrong) == grpc.StatusCode.PERMISSION_DENIED

    unlocked = await services.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE)
    )
    assert unlocked.expires_at.ToDatetime(datetime.UTC) > datetime.datetime.now(datetime.UTC)

    await services.projects.ChangePassphrase(
        projects_pb2.ChangePassphraseRequest(
            project_id=project.id, old_passphrase=PASSPHRASE, new_passphrase=NEW_PASSPHRASE
        )
    )
    assert (
        await code_of(
            services.projects.UnlockProject(
                projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE)
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    renewed = await services.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=NEW_PASSPHRASE)
    )
    assert renewed.unlock_token

    # A token issued before the change opens nothing any more, wherever it is used.
    stale = (("x-unlock-token", unlocked.unlock_token),)
    for call in (
        services.crypto.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(project_id=project.id), metadata=stale
        ),
        services.query.Query(
            query_pb2.QueryRequest(project_id=project.id, query="anything"), metadata=stale
        ),
        services.projects.DeleteProject(
            projects_pb2.DeleteProjectRequest(project_id=project.id), metadata=stale
        ),
    ):
        assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED

    audit = await services.crypto.ListAuditEvents(
        crypto_pb2.ListAuditEventsRequest(project_id=project.id, page_size=100),
        metadata=(("x-unlock-token", renewed.unlock_token),),
    )
    types = [crypto_pb2.AuditEventType.Name(e.type) for e in audit.events]
    assert types[0] == "AUDIT_EVENT_TYPE_PROJECT_CREATED"
    assert "AUDIT_EVENT_TYPE_PASSPHRASE_CHANGED" in types
    # Two wrong passphrases (one before, one after the change) were audited as counts.
    failed = [e for e in audit.events if e.type == crypto_pb2.AUDIT_EVENT_TYPE_UNLOCK_FAILED]
    assert sum(int(e.attributes["count"]) for e in failed) == 2
    assert all(set(e.attributes) == {"count"} for e in failed)
    verified = await services.crypto.VerifyAuditChain(
        crypto_pb2.VerifyAuditChainRequest(project_id=project.id, public_key=project.public_key)
    )
    assert verified.valid and verified.events_verified == len(audit.events)


async def test_pagination_returns_each_project_once_while_others_are_created(services):
    created = {(await new_project(services, name=f"p{i}"))[0].id for i in range(7)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await services.projects.ListProjects(
            projects_pb2.ListProjectsRequest(page_size=3, page_token=token)
        )
        seen.extend(p.id for p in page.projects)
        pages += 1
        if pages == 1:  # newer projects appear before the cursor, never on later pages
            await new_project(services, name="late")
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert created <= set(seen)
    stamps = [
        (await services.projects.GetProject(projects_pb2.GetProjectRequest(project_id=i))).project
        for i in seen
    ]
    assert [p.created_at.ToNanoseconds() for p in stamps] == sorted(
        (p.created_at.ToNanoseconds() for p in stamps), reverse=True
    )


async def test_stats_are_zero_for_a_new_project(services):
    project, _ = await new_project(services)
    stats = (
        await services.projects.GetProjectStats(
            projects_pb2.GetProjectStatsRequest(project_id=project.id)
        )
    ).stats
    assert (stats.documents_completed, stats.chunk_count, stats.fact_count) == (0, 0, 0)
    assert not stats.HasField("last_ingest_at")


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_twenty_parallel_creates_get_distinct_ids(services):
    results = await asyncio.gather(*(new_project(services, name=f"n{i}") for i in range(20)))
    ids = {project.id for project, _ in results}
    assert len(ids) == 20
    listed = await services.projects.ListProjects(projects_pb2.ListProjectsRequest(page_size=100))
    assert {p.id for p in listed.projects} == ids
