"""The RQ worker's long-lived ingestion: one event loop, one IngestApp, one embedding model.

RQ's default worker forks a work horse per job, and the horse can only use the cores its
forked runtime survives with (torch's thread pool does not survive a fork: it embedded on one
thread), besides paying for a new event loop, engine, channels and text workers per job.
The worker runs RQ's SimpleWorker instead (no fork) and hands each job to this runner: a
thread running one event loop for the life of the process, with the app (database engine,
gRPC channels, text worker processes) opened once and the model loaded once, embedding on
one worker thread per CPU it may run on.

A job waits in RQ's thread for its run on the loop, heart-beating for the worker meanwhile
(RQ's SimpleWorker does not heartbeat while a job runs, and the kubelet's liveness probe reads
those heartbeats); a job RQ abandons (its timeout) is cancelled on the loop. Never logs
document content.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from runtime.config import Settings

log = logging.getLogger(__name__)
# Seconds between the heartbeats a waiting job sends for its worker.
HEARTBEAT_INTERVAL = 10.0


class JobRunner:
    """Runs ingestion jobs on a long-lived event loop in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="ingest-jobs", daemon=True)
        self._app: Any = None

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        """Starts the loop and opens the app on it (engine, channels, text workers)."""
        self._thread.start()
        self._call(self._open()).result()

    async def _open(self) -> None:
        from services.ingest.app import IngestApp

        app = IngestApp(self.settings, worker=True)
        await app.open()
        app.pipeline().text.start()  # the text worker processes, once for every job
        self._app = app

    def _call(self, work: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def run(
        self,
        document_id: str,
        job_grant: str,
        trace_carrier: dict[str, str],
        heartbeat: Callable[[], None] | None = None,
    ) -> str:
        """Runs one document's job to its end; returns its outcome. Called from RQ's thread."""
        running = self._call(self._process(document_id, job_grant, trace_carrier))
        try:
            while True:
                try:
                    return running.result(timeout=HEARTBEAT_INTERVAL)
                except concurrent.futures.TimeoutError:
                    if heartbeat is not None:
                        try:
                            heartbeat()
                        except Exception as error:  # noqa: BLE001 — Redis away: try next time
                            log.warning("worker heartbeat failed: %s", type(error).__name__)
        except BaseException:
            running.cancel()  # RQ's job timeout, or the worker stopping: end the run
            raise

    async def _process(self, document_id: str, job_grant: str, carrier: dict[str, str]) -> str:
        token = otel_context.attach(propagate.extract(carrier))
        try:
            tracer = trace.get_tracer("contextcache.ingest.worker")
            with tracer.start_as_current_span("ingest.process_document"):
                result = await self._app.pipeline().process_granted(document_id, job_grant)
            log.info("document %s: %s", document_id, result.outcome.value)
            return str(result.outcome.value)
        finally:
            otel_context.detach(token)

    def stop(self, timeout: float = 10.0) -> None:
        """Closes the app and stops the loop (jobs still running are cancelled by then)."""
        if self._app is not None and self._thread.is_alive():
            try:
                self._call(self._close()).result(timeout=timeout)
            except Exception as error:  # noqa: BLE001 — stopping anyway
                log.warning("ingest jobs did not close cleanly: %s", type(error).__name__)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout)

    async def _close(self) -> None:
        self._app.pipeline().text.close()
        await self._app.close()
