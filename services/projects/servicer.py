"""ProjectService RPCs: each reads validate → authorize → do → audit → respond.

Passphrases pass through to CryptoService and are never stored or logged; the keyring
stored here holds wrapped keys only.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as crypto_internal_pb2_grpc
from contextcache.internal.v1 import ingest_pb2, ingest_pb2_grpc
from contextcache.v1 import crypto_pb2, projects_pb2, projects_pb2_grpc
from runtime.callers import client_address
from runtime.clients import calling
from runtime.db import as_utc, utcnow
from runtime.errors import InvalidArgument, PermissionDenied, Unauthenticated
from runtime.health import Readiness
from runtime.outbox import AuditRelay
from runtime.paging import decode_cursor, encode_cursor, page_size
from runtime.protos import PROJECT_SERVICE, timestamp
from runtime.tokens import TOKEN_ENDED, TOKEN_METADATA_KEY, TokenVerifier, decode, read_claims
from services.projects.attempts import PassphraseAttempts
from services.projects.bundle import BundleReader
from services.projects.deletion import ProjectDeletion
from services.projects.models import ProjectRow, ProjectState
from services.projects.store import ProjectStore, new_project_id
from services.projects.transfer import (
    BundleSpool,
    ProjectExport,
    ProjectImport,
    imported_row,
    pieces,
    read_summary,
    receive,
)

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
        if row.state == ProjectState.ACTIVE
        else projects_pb2.Project.STATE_DELETING,
    )


def current_generation(row: ProjectRow, token: str) -> None:
    """Refuses a token issued before the project's latest passphrase change, offline: this
    service stores the keyring, whose generation is never behind crypto's registry (the new
    keyring is stored before it is opened), so no call to crypto is needed."""
    keyring = crypto_internal_pb2.Keyring.FromString(row.keyring)
    if read_claims(decode(token)).generation < keyring.generation:
        raise Unauthenticated(TOKEN_ENDED)


class ProjectServicer(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(
        self,
        store: ProjectStore,
        crypto: crypto_internal_pb2_grpc.CryptoInternalServiceStub,
        ingest: ingest_pb2_grpc.IngestInternalServiceStub,
        tokens: TokenVerifier,
        deletion: ProjectDeletion,
        attempts: PassphraseAttempts,
        readiness: Readiness,
        relay: AuditRelay,
        spool_dir: Path,
        import_max_bytes: int,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.ingest = ingest
        self.tokens = tokens
        self.deletion = deletion
        self.attempts = attempts
        self.readiness = readiness
        self.relay = relay
        self.exports = ProjectExport(store, crypto, ingest, relay)
        self.spool_dir = spool_dir
        self.import_max_bytes = import_max_bytes

    # -- helpers: each one step of an RPC's story --------------------------------------

    async def _issue_audit_grant(self, project_id: str, token: str) -> bytes:
        """A fresh audit grant (for a project whose latest unlock left none)."""
        async with calling("crypto", "IssueAuditGrant"):
            issued = await self.crypto.IssueAuditGrant(
                crypto_internal_pb2.IssueAuditGrantRequest(project_id=project_id),
                metadata=((TOKEN_METADATA_KEY, token),),
            )
        return issued.audit_grant

    async def _deliver_audit(self, project_id: str) -> None:
        """Delivers the events just recorded (durable already: a failure here only leaves
        them to the relay's loop, which retries until crypto takes them)."""
        try:
            await self.relay.flush(project_id)
        except Exception:  # noqa: BLE001 — the relay's loop delivers them later
            log.warning("audit events of project %s left to the relay", project_id)

    async def _open(
        self, row: ProjectRow, passphrase: str, ttl: duration_pb2.Duration | None = None
    ) -> crypto_internal_pb2.OpenKeyringResponse:
        keyring = crypto_internal_pb2.Keyring.FromString(row.keyring)
        async with calling("crypto", "OpenKeyring"):
            return await self.crypto.OpenKeyring(
                crypto_internal_pb2.OpenKeyringRequest(
                    project_id=row.id, keyring=keyring, passphrase=passphrase, ttl=ttl
                )
            )

    async def _guarded(self, context, row: ProjectRow, check):  # type: ignore[no-untyped-def]
        """Runs `check` (a passphrase check) as one limited attempt; a wrong passphrase is
        counted on the project, to be audited at the next unlock."""
        async with self.attempts.attempt(client_address(context), row.id):
            try:
                return await check()
            except PermissionDenied:
                await self.store.count_failed_attempt(row.id)
                raise

    async def _stats(self, project_ids: list[str]) -> dict[str, ingest_pb2.ProjectIngestStats]:
        """Counts from the ingest service; empty (zeros) while it cannot answer."""
        if not project_ids:
            return {}
        try:
            response = await self.ingest.GetIngestStats(
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
            created = await self.crypto.CreateKeyring(
                crypto_internal_pb2.CreateKeyringRequest(
                    project_id=project_id, passphrase=request.passphrase
                )
            )
        keyring = created.keyring
        now = utcnow()
        row = ProjectRow(
            id=project_id,
            name=name,
            description=request.description.strip(),
            state=ProjectState.ACTIVE,
            created_at=now,
            updated_at=now,
            salt=keyring.salt,
            public_key=keyring.public_key,
            keyring=keyring.SerializeToString(),
            keyring_version=1,
        )
        opened = await self._open(row, request.passphrase, AUDIT_TOKEN_TTL)
        row.audit_grant = opened.audit_grant
        await self.store.insert(row)  # with its creation event
        await self._deliver_audit(project_id)
        return projects_pb2.CreateProjectResponse(project=to_proto(row))

    async def GetProject(self, request, context):
        row = await self.store.get(request.project_id, include_deleting=True)
        stats = await self._stats([row.id])
        return projects_pb2.GetProjectResponse(project=to_proto(row, stats.get(row.id)))

    async def ListProjects(self, request, context):
        cursor = decode_cursor(request.page_token, "projects", (datetime, str))
        page = await self.store.page(page_size(request), cursor)  # type: ignore[arg-type]
        stats = await self._stats([row.id for row in page.rows])
        next_token = ""
        if page.more and page.last is not None:
            next_token = encode_cursor("projects", as_utc(page.last.created_at), page.last.id)
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
        await self.store.get(request.project_id)
        token = await self.tokens.authorize(context, request.project_id, fresh=True)
        row = await self.store.update_fields(
            request.project_id, await self._grant_if_missing(request.project_id, token), **fields
        )
        await self._deliver_audit(row.id)
        stats = await self._stats([row.id])
        return projects_pb2.UpdateProjectResponse(project=to_proto(row, stats.get(row.id)))

    async def UnlockProject(self, request, context):
        row = await self.store.get(request.project_id)
        ttl = request.ttl if request.HasField("ttl") else None
        opened = await self._guarded(context, row, lambda: self._open(row, request.passphrase, ttl))
        await self.store.record_unlock(
            row.id, opened.audit_grant, crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UNLOCKED
        )
        await self._deliver_audit(row.id)
        return projects_pb2.UnlockProjectResponse(
            unlock_token=opened.unlock_token, expires_at=opened.expires_at
        )

    async def ChangePassphrase(self, request, context):
        row = await self.store.get(request.project_id)

        async def rewrap() -> crypto_internal_pb2.RewrapKeyringResponse:
            async with calling("crypto"):
                return await self.crypto.RewrapKeyring(
                    crypto_internal_pb2.RewrapKeyringRequest(
                        project_id=row.id,
                        keyring=crypto_internal_pb2.Keyring.FromString(row.keyring),
                        old_passphrase=request.old_passphrase,
                        new_passphrase=request.new_passphrase,
                    )
                )

        rewrapped = await self._guarded(context, row, rewrap)
        await self.store.replace_keyring(
            row.id, row.keyring_version, rewrapped.keyring.SerializeToString()
        )
        row = await self.store.get(row.id)
        # Opening the new keyring makes it the project's current generation at crypto: every
        # token issued before this change is refused from here on.
        opened = await self._open(row, request.new_passphrase, AUDIT_TOKEN_TTL)
        await self.store.record_unlock(
            row.id, opened.audit_grant, crypto_pb2.AUDIT_EVENT_TYPE_PASSPHRASE_CHANGED
        )
        await self._deliver_audit(row.id)
        stats = await self._stats([row.id])
        return projects_pb2.ChangePassphraseResponse(project=to_proto(row, stats.get(row.id)))

    async def DeleteProject(self, request, context):
        project_id = request.project_id
        token = await self.tokens.authorize(context, project_id)
        recorded = await self.store.deletion(project_id)
        if recorded is None:
            row = await self.store.get(project_id)
            current_generation(row, token)
            # The deletion is recorded with its event, signed under the grant of the
            # project's latest unlock: with crypto away the event waits in the outbox.
            await self.store.begin_deletion(
                project_id, await self._grant_if_missing(project_id, token)
            )
            await self._deliver_audit(project_id)
        completed = await self.deletion.carry_out(project_id)
        return projects_pb2.DeleteProjectResponse(completed=completed)

    async def _grant_if_missing(self, project_id: str, token: str) -> bytes | None:
        """None when the project keeps an audit grant (from its latest unlock, which any live
        token postdates); else one from crypto (projects unlocked before grants existed)."""
        if (await self.store.get(project_id)).audit_grant:
            return None
        return await self._issue_audit_grant(project_id, token)

    async def GetProjectStats(self, request, context):
        row = await self.store.get(request.project_id, include_deleting=True)
        async with calling("ingest"):
            response = await self.ingest.GetIngestStats(
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

    async def ExportProject(self, request, context):
        row = await self.store.get(request.project_id)
        token = await self.tokens.authorize(context, row.id)
        current_generation(row, token)
        await self.exports.record(row.id, await self._grant_if_missing(row.id, token))
        async for data in self.exports.bundle(row, token):
            for piece in pieces(data):
                yield projects_pb2.ExportProjectResponse(data=piece)

    async def ImportProject(self, request_iterator, context):
        spool = BundleSpool(self.spool_dir, self.import_max_bytes)
        try:
            passphrase = await receive(request_iterator, spool)
            reader = BundleReader(spool.file)
            summary = await read_summary(reader)
            row = imported_row(summary.header, clean_name(summary.header.name))
            await self.store.claim_import(row)
            steps = ProjectImport(self.store, self.crypto, self.ingest, reader, summary)
            try:
                async with self.attempts.attempt(client_address(context), row.id):
                    keys = await steps.import_keys(passphrase)
                opened = await steps.open(passphrase)
                content = await steps.import_content()
                row = await self.store.finish_import(
                    row.id,
                    opened.audit_grant,
                    {
                        "documents": str(content.documents),
                        "chunks": str(content.chunks),
                        "facts": str(content.facts),
                        "source_events": str(keys.events_imported),
                    },
                )
            except BaseException:
                await steps.undo()
                raise
        finally:
            spool.close()
        await self._deliver_audit(row.id)
        indexed = await steps.index(opened.unlock_token)
        stats = await self._stats([row.id])
        return projects_pb2.ImportProjectResponse(
            project=to_proto(row, stats.get(row.id)),
            documents_imported=content.documents,
            chunks_imported=content.chunks,
            facts_imported=content.facts,
            audit_events_imported=keys.events_imported,
            chunks_indexed=indexed,
        )

    async def GetStatus(self, request, context):
        return projects_pb2.ProjectServiceGetStatusResponse(
            status=await self.readiness.service_status(PROJECT_SERVICE)
        )
