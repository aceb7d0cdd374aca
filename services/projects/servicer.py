"""ProjectService RPCs: each reads validate → authorize → do → audit → respond.

Passphrases pass through to CryptoService and are never stored or logged; the keyring
stored here holds wrapped keys only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from google.protobuf import duration_pb2

from contextcache.v1 import (
    crypto_pb2,
    ingest_pb2,
    projects_pb2,
    projects_pb2_grpc,
)
from runtime.clients import calling
from runtime.db import as_utc, utcnow
from runtime.errors import InvalidArgument
from runtime.paging import decode_cursor, encode_cursor, page_size
from runtime.protos import PROJECT_SERVICE, timestamp
from runtime.tokens import TOKEN_METADATA_KEY
from services.projects.models import ProjectRow
from services.projects.store import new_project_id

if TYPE_CHECKING:
    from services.projects.app import ProjectsApp

log = logging.getLogger(__name__)
NAME_MAX = 200
AUDIT_TOKEN_TTL = duration_pb2.Duration(seconds=60)
STATS_TIMEOUT = 2.0


def clean_name(name: str, field: str = "name") -> str:
    """Names are trimmed; the trimmed name must be 1–200 characters."""
    trimmed = name.strip()
    if not trimmed:
        raise InvalidArgument.for_field(field, "Project name cannot be empty", "project.name.blank")
    if len(trimmed) > NAME_MAX:
        raise InvalidArgument.for_field(
            field,
            f"Project name too long. Maximum length is {NAME_MAX} characters",
            "project.name.max_len",
        )
    return trimmed


def to_proto(
    row: ProjectRow, stats: ingest_pb2.ProjectIngestStats | None = None
) -> projects_pb2.Project:
    return projects_pb2.Project(
        id=row.id,
        name=row.name,
        description=row.description,
        salt=row.salt,
        public_key=row.public_key,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        document_count=(
            stats.documents_queued
            + stats.documents_processing
            + stats.documents_completed
            + stats.documents_failed
            if stats
            else 0
        ),
        fact_count=stats.fact_count if stats else 0,
        state=projects_pb2.Project.STATE_ACTIVE
        if row.state == "active"
        else projects_pb2.Project.STATE_DELETING,
    )


class ProjectServicer(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, app: ProjectsApp) -> None:
        self.app = app

    # -- helpers: each one step of an RPC's story --------------------------------------

    async def _audit(
        self,
        project_id: str,
        token: str,
        event: crypto_pb2.AuditEventType.ValueType,
        attributes: dict[str, str] | None = None,
    ) -> None:
        async with calling("crypto"):
            await self.app.crypto.AppendAuditEvent(
                crypto_pb2.AppendAuditEventRequest(
                    project_id=project_id,
                    type=event,
                    actor="token-holder",
                    attributes=attributes or {},
                ),
                metadata=((TOKEN_METADATA_KEY, token),),
            )

    async def _open(
        self, row: ProjectRow, passphrase: str, ttl: duration_pb2.Duration | None = None
    ) -> crypto_pb2.OpenKeyringResponse:
        keyring = crypto_pb2.Keyring.FromString(row.keyring)
        async with calling("crypto"):
            return await self.app.crypto.OpenKeyring(
                crypto_pb2.OpenKeyringRequest(
                    project_id=row.id, keyring=keyring, passphrase=passphrase, ttl=ttl
                )
            )

    async def _stats(self, project_ids: list[str]) -> dict[str, ingest_pb2.ProjectIngestStats]:
        """Counts from the ingest service; empty (zeros) while it cannot answer."""
        if not project_ids:
            return {}
        try:
            response = await self.app.ingest.GetIngestStats(
                ingest_pb2.GetIngestStatsRequest(project_ids=project_ids), timeout=STATS_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            log.warning("ingest stats unavailable: %s", error.code().name)
            return {}
        return {s.project_id: s for s in response.stats}

    # -- RPCs --------------------------------------------------------------------------

    async def CreateProject(self, request, context):
        name = clean_name(request.name)
        project_id = new_project_id()
        async with calling("crypto"):
            created = await self.app.crypto.CreateKeyring(
                crypto_pb2.CreateKeyringRequest(
                    project_id=project_id, passphrase=request.passphrase
                )
            )
        keyring = created.keyring
        now = utcnow()
        row = ProjectRow(
            id=project_id,
            name=name,
            description=request.description.strip(),
            state="active",
            created_at=now,
            updated_at=now,
            salt=keyring.salt,
            public_key=keyring.public_key,
            keyring=keyring.SerializeToString(),
            keyring_version=1,
        )
        opened = await self._open(row, request.passphrase, AUDIT_TOKEN_TTL)
        await self.app.store.insert(row)
        try:
            await self._audit(
                project_id, opened.unlock_token, crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_CREATED
            )
        except Exception:
            await self.app.store.remove(project_id)  # no project without its creation event
            raise
        return projects_pb2.CreateProjectResponse(project=to_proto(row))

    async def GetProject(self, request, context):
        row = await self.app.store.get(request.project_id, include_deleting=True)
        stats = await self._stats([row.id])
        return projects_pb2.GetProjectResponse(project=to_proto(row, stats.get(row.id)))

    async def ListProjects(self, request, context):
        cursor = decode_cursor(request.page_token, (str, str))
        page = await self.app.store.page(page_size(request), cursor)  # type: ignore[arg-type]
        stats = await self._stats([row.id for row in page.rows])
        next_token = ""
        if page.more and page.last is not None:
            next_token = encode_cursor(as_utc(page.last.created_at).isoformat(), page.last.id)
        return projects_pb2.ListProjectsResponse(
            projects=[to_proto(row, stats.get(row.id)) for row in page.rows],
            next_page_token=next_token,
        )

    async def UpdateProject(self, request, context):
        paths = list(dict.fromkeys(request.update_mask.paths))
        fields: dict[str, str] = {}
        if "name" in paths:
            fields["name"] = clean_name(request.project.name, "project.name")
        if "description" in paths:
            fields["description"] = request.project.description.strip()
        await self.app.store.get(request.project_id)
        token = await self.app.tokens.authorize(context, request.project_id)
        row = await self.app.store.update_fields(request.project_id, **fields)
        await self._audit(
            row.id,
            token,
            crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UPDATED,
            {"fields": ",".join(sorted(fields))},
        )
        stats = await self._stats([row.id])
        return projects_pb2.UpdateProjectResponse(project=to_proto(row, stats.get(row.id)))

    async def UnlockProject(self, request, context):
        row = await self.app.store.get(request.project_id)
        ttl = request.ttl if request.HasField("ttl") else None
        opened = await self._open(row, request.passphrase, ttl)
        await self._audit(row.id, opened.unlock_token, crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UNLOCKED)
        return projects_pb2.UnlockProjectResponse(
            unlock_token=opened.unlock_token, expires_at=opened.expires_at
        )

    async def ChangePassphrase(self, request, context):
        row = await self.app.store.get(request.project_id)
        async with calling("crypto"):
            rewrapped = await self.app.crypto.RewrapKeyring(
                crypto_pb2.RewrapKeyringRequest(
                    project_id=row.id,
                    keyring=crypto_pb2.Keyring.FromString(row.keyring),
                    old_passphrase=request.old_passphrase,
                    new_passphrase=request.new_passphrase,
                )
            )
        await self.app.store.replace_keyring(
            row.id, row.keyring_version, rewrapped.keyring.SerializeToString()
        )
        row = await self.app.store.get(row.id)
        opened = await self._open(row, request.new_passphrase, AUDIT_TOKEN_TTL)
        await self._audit(
            row.id, opened.unlock_token, crypto_pb2.AUDIT_EVENT_TYPE_PASSPHRASE_CHANGED
        )
        stats = await self._stats([row.id])
        return projects_pb2.ChangePassphraseResponse(project=to_proto(row, stats.get(row.id)))

    async def DeleteProject(self, request, context):
        project_id = request.project_id
        token = await self.app.tokens.authorize(context, project_id)
        recorded = await self.app.store.deletion(project_id)
        if recorded is None:
            await self.app.store.begin_deletion(project_id, token)
        completed = await self.app.deletion.carry_out(project_id)
        return projects_pb2.DeleteProjectResponse(completed=completed)

    async def GetProjectStats(self, request, context):
        row = await self.app.store.get(request.project_id, include_deleting=True)
        async with calling("ingest"):
            response = await self.app.ingest.GetIngestStats(
                ingest_pb2.GetIngestStatsRequest(project_ids=[row.id])
            )
        stats = response.stats[0] if response.stats else ingest_pb2.ProjectIngestStats()
        result = projects_pb2.ProjectStats(
            project_id=row.id,
            documents_queued=stats.documents_queued,
            documents_processing=stats.documents_processing,
            documents_completed=stats.documents_completed,
            documents_failed=stats.documents_failed,
            chunk_count=stats.chunk_count,
            fact_count=stats.fact_count,
            stored_bytes=stats.stored_bytes,
        )
        if stats.HasField("last_ingest_at"):
            result.last_ingest_at.CopyFrom(stats.last_ingest_at)
        return projects_pb2.GetProjectStatsResponse(stats=result)

    async def GetStatus(self, request, context):
        return projects_pb2.ProjectServiceGetStatusResponse(
            status=await self.app.readiness.service_status(PROJECT_SERVICE)
        )
