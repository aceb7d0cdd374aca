"""ProjectDeletion: removes a project from every service, durably and by retrying.

DeleteProject first records the deletion (and marks the project `deleting`) in the same
transaction, then carries out the steps — audit event, ingest purge (documents, chunks,
facts), index purge (vectors) — and finally removes the project row with its keyring.
A step that fails (a service down) is retried with backoff by a background loop until it
succeeds, so a deletion always completes; every step is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc

from contextcache.v1 import (
    crypto_pb2,
    crypto_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.background import Periodic
from runtime.tokens import TOKEN_METADATA_KEY
from services.projects.store import ProjectStore

log = logging.getLogger(__name__)
STEPS = ("audit", "ingest", "index")
MAX_BACKOFF = timedelta(minutes=5)


class ProjectDeletion:
    def __init__(
        self,
        store: ProjectStore,
        crypto: crypto_pb2_grpc.CryptoServiceStub,
        ingest: ingest_pb2_grpc.IngestServiceStub,
        query: query_pb2_grpc.QueryServiceStub,
        retry_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.ingest = ingest
        self.query = query
        self.retry_interval = retry_interval
        self._retries = Periodic("project-deletions", self.retry_pending, retry_interval)
        self._locks: dict[str, asyncio.Lock] = {}

    async def carry_out(self, project_id: str) -> bool:
        """Runs the remaining steps once; True when the deletion is complete."""
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            record = await self.store.deletion(project_id)
            if record is None:
                return False
            if record.completed_at is not None:
                return True
            done = set(record.steps_done.split(","))
            failed: list[str] = []
            for step in STEPS:  # independent steps: one service down does not hold the others
                if step in done:
                    continue
                try:
                    await self._run_step(step, project_id, record.sealed_token)
                except grpc.aio.AioRpcError as error:
                    failed.append(f"{step} ({error.code().name})")
                    continue
                await self.store.record_step(project_id, step)
            if failed:
                delay = min(MAX_BACKOFF, timedelta(seconds=2 ** min(record.attempts, 8)))
                log.warning(
                    "deletion of project %s: %s failed; retrying in %ss",
                    project_id,
                    ", ".join(failed),
                    delay.total_seconds(),
                )
                await self.store.postpone(project_id, delay)
                return False
            await self.store.finish_deletion(project_id)
            log.info("project %s deleted from every service", project_id)
            return True

    async def _run_step(self, step: str, project_id: str, sealed_token: str | None) -> None:
        if step == "audit":
            await self._audit(project_id, sealed_token)
        elif step == "ingest":
            await self.ingest.PurgeProject(
                ingest_pb2.PurgeProjectRequest(project_id=project_id), timeout=60
            )
        elif step == "index":
            await self.query.DeleteProjectIndex(
                query_pb2.DeleteProjectIndexRequest(project_id=project_id), timeout=60
            )

    async def _audit(self, project_id: str, sealed_token: str | None) -> None:
        if not sealed_token:
            return
        try:
            await self.crypto.AppendAuditEvent(
                crypto_pb2.AppendAuditEventRequest(
                    project_id=project_id,
                    type=crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_DELETED,
                    actor="token-holder",
                ),
                metadata=((TOKEN_METADATA_KEY, sealed_token),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            # The token expired while crypto was unreachable: the deletion still proceeds.
            log.warning(
                "deletion of project %s: audit event not recorded (token expired)", project_id
            )

    async def retry_pending(self) -> None:
        for record in await self.store.due_deletions():
            await self.carry_out(record.project_id)

    def start(self) -> None:
        self._retries.start(run_first=True)

    async def stop(self) -> None:
        await self._retries.stop()
