"""Where ingestion work runs: RQ jobs (with REDIS_URL) or tasks in this process (without).

Both run the same `IngestionPipeline.process`. The reaper makes sure no document stays
queued or processing forever: a document whose lease lapsed (a dead worker, a lost job, a
transient failure waiting for its retry) is queued again, or failed with a reason once it
has used up its attempts. Trace context travels with each job into the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate

from runtime.background import Periodic
from runtime.errors import Unavailable
from services.ingest.ingestion import IngestionPipeline, Result
from services.ingest.status import DocumentStatus
from services.ingest.store import DocumentStore

log = logging.getLogger(__name__)
JOB_FUNCTION = "services.ingest.worker.process_document"
JOB_TIMEOUT = 3600


class JobQueue:
    """Puts a document's processing somewhere it will run."""

    def __init__(
        self,
        pipeline: Callable[[], IngestionPipeline],
        redis_url: str | None,
        queue_name: str,
        in_process: int = 2,
    ) -> None:
        self._pipeline = pipeline
        self.redis_url = redis_url
        self.queue_name = queue_name
        self._queue: Any = None
        self._tasks: set[asyncio.Task[Result | None]] = set()
        # Without Redis: at most `in_process` jobs run at once; the others wait here, and
        # `waiting` tells the reaper so (a backlog, not a lost job).
        self._slots = asyncio.Semaphore(in_process)
        self._queued: set[tuple[str, int]] = set()

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None

    @property
    def running(self) -> int:
        """Jobs running in this process (without Redis)."""
        return len(self._tasks)

    def _rq(self) -> Any:
        if self._queue is None:
            from redis import Redis
            from rq import Queue

            connection = Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=3)
            self._queue = Queue(self.queue_name, connection=connection, default_timeout=JOB_TIMEOUT)
        return self._queue

    async def enqueue(self, document_id: str, job_grant: str, attempt: int) -> None:
        """Queues the job; raises Unavailable (nothing queued) when Redis cannot take it.

        The job carries the document's grant, never its token (see services/crypto/tokens.py).
        """
        if not self.uses_redis:
            task = asyncio.create_task(self._run_in_process(document_id, job_grant, attempt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            await asyncio.to_thread(
                self._rq().enqueue_call,
                JOB_FUNCTION,
                args=(document_id, job_grant),
                job_id=f"document-{document_id}-{attempt}",
                meta={"trace": carrier},
                timeout=JOB_TIMEOUT,
                result_ttl=3600,
                failure_ttl=86400,
            )
        except Exception as error:
            log.warning("could not queue document %s: %s", document_id, type(error).__name__)
            raise Unavailable(
                "Background ingestion needs the job queue (Redis), which is unreachable. "
                "Try again shortly, or ingest without background."
            ) from error

    async def _run_in_process(
        self, document_id: str, job_grant: str, attempt: int
    ) -> Result | None:
        self._queued.add((document_id, attempt))
        try:
            async with self._slots:
                self._queued.discard((document_id, attempt))
                return await self._pipeline().process_granted(document_id, job_grant)
        finally:
            self._queued.discard((document_id, attempt))

    async def waiting(self, document_id: str, attempt: int) -> bool:
        """Whether the document's job still waits for its turn (not lost): in RQ for a
        worker, or without Redis for one of this process's slots.

        False when the job is gone, has ended, or Redis cannot be asked."""
        if not self.uses_redis:
            return (document_id, attempt) in self._queued
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        def status() -> JobStatus | None:
            try:
                job = Job.fetch(f"document-{document_id}-{attempt}", self._rq().connection)
            except NoSuchJobError:
                return None
            return job.get_status(refresh=False)

        try:
            found = await asyncio.to_thread(status)
        except Exception as error:  # noqa: BLE001 — Redis down: the job cannot be requeued either
            log.warning("could not look up the job of document %s: %s", document_id, error)
            return False
        return found in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)

    async def depth(self) -> int:
        """Jobs waiting in RQ's queue (with Redis), else in-process jobs not yet finished."""
        if not self.uses_redis:
            return len(self._tasks)
        queue = self._rq()
        return int(await asyncio.to_thread(lambda: queue.count))

    async def ping(self) -> None:
        if self.uses_redis:
            await asyncio.to_thread(self._rq().connection.ping)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Reaper:
    """Requeues or fails documents whose lease lapsed; runs inside the ingest service."""

    def __init__(
        self,
        store: DocumentStore,
        queue: JobQueue,
        pipeline: Callable[[], IngestionPipeline],
        interval: float,
    ) -> None:
        self.store = store
        self.queue = queue
        self._pipeline = pipeline
        self.interval = interval
        self._sweeps = Periodic("ingest-reaper", self.sweep, interval)

    async def sweep(self) -> int:
        """Requeues or fails each active document whose lease lapsed. Every change is
        fenced by the attempt number read here: a document claimed, completed or failed
        since is left alone."""
        handled = 0
        pipeline = self._pipeline()
        for document in await self.store.stale():
            handled += 1
            attempt = document.attempts + 1
            if document.status == DocumentStatus.QUEUED and await self.queue.waiting(
                document.id, attempt
            ):
                # A backlog, not a lost job or an interruption: pushing it again would only
                # run it twice, failing it would fail a job that is about to run.
                await self.store.extend_queued_lease(document.id, pipeline.lease)
                continue
            if not document.job_grant or document.attempts >= pipeline.max_attempts:
                reason = (
                    f"Processing was interrupted {document.attempts} times. "
                    "Try again with RetryDocument."
                    if document.job_grant
                    else "Processing was interrupted. Try again with RetryDocument."
                )
                await pipeline.fail(document, reason, "interrupted", lapsed=True)
                continue
            if not await self.store.requeue_lapsed(document.id, document.attempts, pipeline.lease):
                continue
            try:
                await self.queue.enqueue(document.id, document.job_grant, attempt)
                log.info("document %s queued again (attempt %d)", document.id, attempt)
            except Unavailable:
                pass  # still queued with a lease: the next sweep tries again
        return handled

    def start(self) -> None:
        self._sweeps.start()

    async def stop(self) -> None:
        await self._sweeps.stop()
