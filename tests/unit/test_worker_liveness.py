"""The worker's liveness verdict: alive while RQ's loop heartbeats, not once it is silent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.ingest.worker import worker_alive


@dataclass
class FakeWorker:  # only the two attributes RQ's Worker exposes and the verdict reads
    last_heartbeat: datetime | None
    worker_ttl: int = 60


def test_a_worker_is_alive_until_its_loop_is_silent_for_two_ttls():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert worker_alive(FakeWorker(None), now)  # still loading the model
    assert worker_alive(FakeWorker(now - timedelta(seconds=100)), now)
    assert not worker_alive(FakeWorker(now - timedelta(seconds=121)), now)
    naive = (now - timedelta(seconds=10)).replace(tzinfo=None)  # RQ may parse naive UTC
    assert worker_alive(FakeWorker(naive), now)
