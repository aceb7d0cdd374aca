"""The ingest service's gauges (runtime/metrics.py): documents of every project by status, the
age of the oldest one still queued or processing, and the depth of the job queue.

Read from the database and the queue every METRICS_INTERVAL seconds, so a scrape never waits
on either. Counts and ages only: no project, document or title becomes a label.
"""

from __future__ import annotations

from datetime import datetime

from runtime import metrics
from runtime.background import Periodic
from runtime.db import utcnow
from services.ingest.jobs import JobQueue
from services.ingest.store import ACTIVE, DocumentStore

STATUSES = ("queued", "processing", "completed", "failed")


class IngestGauges(Periodic):
    def __init__(self, store: DocumentStore, queue: JobQueue, interval: float) -> None:
        super().__init__("ingest gauges", self.refresh, interval)
        self.store = store
        self.queue = queue

    async def refresh(self) -> None:
        census = await self.store.census()
        now = utcnow()
        for status in STATUSES:
            count, oldest = census.get(status, (0, None))
            metrics.DOCUMENTS.labels(status).set(count)
            if status in ACTIVE:
                metrics.DOCUMENTS_OLDEST_AGE.labels(status).set(_age(oldest, now))
        metrics.INGEST_QUEUE_DEPTH.set(await self.queue.depth())


def _age(oldest: datetime | None, now: datetime) -> float:
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
