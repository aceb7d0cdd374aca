"""The audit outbox: the one way a service appends to a project's audit log.

A service records an event in the same transaction as the change it describes
(`AuditOutbox.record`), in its own outbox table, with the audit grant that lets crypto
sign it (crypto seals the project's signing key for this workload; see
services/crypto/tokens.py). `AuditRelay` delivers pending events to crypto per project in the
order they were recorded and removes each one only once crypto has appended it; while crypto
is unreachable it retries with backoff, so an outage delays events and never drops them.
Every event carries an id that crypto appends at most once, so a delivery repeated after a
crash (appended, not yet removed here) changes nothing.

A change's RPC calls `flush(project_id)` after its commit, so in the common case the event is
in the chain when the RPC answers; the background loop delivers whatever that could not.
Several processes may share one outbox (ingest replicas, its workers): on PostgreSQL a
project's events are delivered under an advisory lock, so they never overtake each other.

Never logs attributes or grants; attributes carry ids and codes only (never content).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc
from runtime import metrics
from runtime.background import Periodic
from runtime.db import as_utc, utcnow

log = logging.getLogger(__name__)

BATCH = 100
MAX_BACKOFF = 60.0
APPEND_TIMEOUT = 10.0
# Codes that say crypto (or the path to it) is away for now: retried quietly with backoff.
# Any other refusal is logged as an error and retried too, more slowly: an event is never
# dropped, and the project's later events wait behind it to keep the order.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


def audit_outbox_table(metadata: MetaData, name: str) -> Table:
    """A service's outbox table `name`, in its own metadata (and its migrations); named per
    service, as services may share one PostgreSQL database."""
    return Table(
        name,
        metadata,
        # Recording order: the order a project's events are delivered in.
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("project_id", String(36), nullable=False, index=True),
        Column("event_type", Integer, nullable=False),
        Column("actor", String(200), nullable=False),
        Column("attributes", Text, nullable=False),  # JSON object: ids and codes only
        Column("audit_grant", LargeBinary, nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", String(200), nullable=False, default=""),
    )


@dataclass(frozen=True)
class AuditEvent:
    """An event to record: what happened to which project, by whom, with ids and codes."""

    project_id: str
    event_type: int
    actor: str
    audit_grant: bytes = field(repr=False)
    attributes: dict[str, str] = field(default_factory=dict)


class AuditOutbox:
    """Records events in a service's outbox table (inside the caller's transaction)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    async def record(self, connection: AsyncConnection, event: AuditEvent) -> str:
        """Adds `event` in `connection`'s transaction; its event id."""
        event_id = str(uuid.uuid4())
        await connection.execute(
            insert(self.table),
            {
                "event_id": event_id,
                "project_id": event.project_id,
                "event_type": event.event_type,
                "actor": event.actor,
                "attributes": json.dumps(event.attributes, sort_keys=True),
                "audit_grant": event.audit_grant,
                "recorded_at": utcnow(),
                "attempts": 0,
                "last_error": "",
            },
        )
        return event_id

    async def pending(self, engine: AsyncEngine, project_id: str | None = None) -> int:
        query = select(func.count()).select_from(self.table)
        if project_id is not None:
            query = query.where(self.table.c.project_id == project_id)
        async with engine.connect() as connection:
            return int(await connection.scalar(query) or 0)


class AuditRelay:
    """Delivers a service's outbox to crypto, per project in recording order."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: AuditOutbox,
        crypto: crypto_pb2_grpc.CryptoInternalServiceStub,
        interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.table = outbox.table
        self.crypto = crypto
        self._postgres = engine.dialect.name == "postgresql"
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # project → (delay, next try)
        self._loop = Periodic("audit-relay", self.deliver_all, interval)

    def start(self) -> None:
        self._loop.start(run_first=True)

    async def stop(self) -> None:
        await self._loop.stop()

    async def deliver_all(self) -> int:
        """One round: every project with pending events whose backoff has passed."""
        async with self.engine.connect() as connection:
            projects = (
                await connection.execute(
                    select(self.table.c.project_id)
                    .group_by(self.table.c.project_id)
                    .order_by(func.min(self.table.c.id))
                )
            ).scalars()
            due = [p for p in projects if self._backoff.get(p, (0.0, 0.0))[1] <= time.monotonic()]
        delivered = 0
        for project_id in due:
            delivered += await self.flush(project_id)
        await self._measure()
        return delivered

    async def _measure(self) -> None:
        """The backlog, for metrics: events waiting and the age of the oldest."""
        async with self.engine.connect() as connection:
            count, oldest = (
                await connection.execute(
                    select(func.count(), func.min(self.table.c.recorded_at)).select_from(self.table)
                )
            ).one()
        metrics.AUDIT_OUTBOX_PENDING.set(count)
        oldest_at = oldest if isinstance(oldest, datetime) or oldest is None else None
        if oldest is not None and oldest_at is None:  # SQLite returns an aggregate as text
            oldest_at = datetime.fromisoformat(str(oldest))
        age = 0.0 if oldest_at is None else (utcnow() - as_utc(oldest_at)).total_seconds()
        metrics.AUDIT_OUTBOX_OLDEST_AGE.set(max(0.0, age))

    async def flush(self, project_id: str) -> int:
        """Delivers the project's pending events now, in order; stops at the first one crypto
        does not take (left for the background loop). The number delivered."""
        delivered = 0
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock, self._project_lock(project_id) as held:
            if not held:
                return 0  # another process is delivering this project's events
            while True:
                async with self.engine.connect() as connection:
                    rows = (
                        await connection.execute(
                            select(self.table)
                            .where(self.table.c.project_id == project_id)
                            .order_by(self.table.c.id)
                            .limit(BATCH)
                        )
                    ).all()
                for row in rows:
                    if not await self._deliver(row):
                        return delivered
                    delivered += 1
                if len(rows) < BATCH:
                    self._backoff.pop(project_id, None)
                    return delivered

    async def _deliver(self, row) -> bool:  # type: ignore[no-untyped-def]
        request = crypto_internal_pb2.AppendAuditEventRequest(
            project_id=row.project_id,
            type=row.event_type,
            actor=row.actor,
            attributes=json.loads(row.attributes),
            event_id=row.event_id,
            audit_grant=row.audit_grant,
        )
        try:
            await self.crypto.AppendAuditEvent(request, timeout=APPEND_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            await self._postpone(row, error.code())
            return False
        async with self.engine.begin() as connection:
            await connection.execute(delete(self.table).where(self.table.c.id == row.id))
        return True

    async def _postpone(self, row, code: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
        delay, _ = self._backoff.get(row.project_id, (0.5, 0.0))
        delay = min(MAX_BACKOFF, delay * 2)
        self._backoff[row.project_id] = (delay, time.monotonic() + delay)
        cause = f"crypto AppendAuditEvent {code.name}"
        report = log.warning if code in TRANSIENT else log.error
        report(
            "audit event %s of project %s not delivered yet (%s, attempt %d); retrying in %.0fs",
            row.event_id,
            row.project_id,
            cause,
            row.attempts + 1,
            delay,
        )
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    update(self.table)
                    .where(self.table.c.id == row.id)
                    .values(attempts=self.table.c.attempts + 1, last_error=cause[:200])
                )
        except Exception:  # noqa: BLE001 — only bookkeeping; the event itself stays
            log.warning("could not record the delivery attempt of audit event %s", row.event_id)

    @asynccontextmanager
    async def _project_lock(self, project_id: str) -> AsyncIterator[bool]:
        """On PostgreSQL, a session advisory lock per project (other processes skip it);
        elsewhere (SQLite: one process) the in-process lock is enough."""
        if not self._postgres:
            yield True
            return
        key = int.from_bytes(
            hashlib.sha256(f"{self.table.name}:{project_id}".encode()).digest()[:8],
            "big",
            signed=True,
        )
        async with self.engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            held = bool(
                await connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            )
            try:
                yield held
            finally:
                if held:
                    await connection.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
