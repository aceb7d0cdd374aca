"""ProjectDeletion: removes a project from every service, durably and by retrying.

DeleteProject appends the audit event with the caller's token, then records the deletion
(and marks the project `deleting`) in one transaction — no token is kept — then carries out
the steps — ingest purge (documents, chunks, facts), index purge (vectors) — and finally
removes the project row with its keyring.
A step that fails (a service down) is retried with backoff by a background loop until it
succeeds, so a deletion always completes; every step is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc

from contextcache.internal.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from runtime.background import Periodic
from services.projects.store import ProjectStore

log = logging.getLogger(__name__)
STEPS = ("ingest", "index")
MAX_BACKOFF = timedelta(minutes=5)


class ProjectDeletion:
    def __init__(
        self,
        store: ProjectStore,
        ingest: ingest_pb2_grpc.IngestInternalServiceStub,
        query: query_pb2_grpc.QueryInternalServiceStub,
        retry_interval: float = 2.0,
    ) -> None:
        self.store = store
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
                    await self._run_step(step, project_id)
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

    async def _run_step(self, step: str, project_id: str) -> None:
        if step == "ingest":
            await self.ingest.PurgeProject(
                ingest_pb2.PurgeProjectRequest(project_id=project_id), timeout=60
            )
        elif step == "index":
            await self.query.DeleteProjectIndex(
                query_pb2.DeleteProjectIndexRequest(project_id=project_id), timeout=60
            )

    async def retry_pending(self) -> None:
        for record in await self.store.due_deletions():
            await self.carry_out(record.project_id)

    def start(self) -> None:
        self._retries.start(run_first=True)

    async def stop(self) -> None:
        await self._retries.stop()
