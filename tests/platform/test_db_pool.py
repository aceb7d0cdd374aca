"""Pooled PostgreSQL connections: a connection that died while it sat idle in the pool is
replaced before any statement runs on it; one that dies right after use fails a single
statement, after which the pool starts afresh."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from runtime import db
from tests.conftest import PG_ADMIN


def terminate_backends(url: str) -> int:
    """Kills every server process connected to the database of `url`, as a restart would."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(killed[0]) if killed else 0


async def backend_pid(engine, isolation: str | None = None) -> int:  # type: ignore[no-untyped-def]
    target = engine.execution_options(isolation_level=isolation) if isolation else engine
    async with target.connect() as connection:
        return int(await connection.scalar(text("SELECT pg_backend_pid()")))


@pytest.fixture
def async_url(postgres_url: str) -> str:
    return "postgresql+psycopg://" + postgres_url.split("://", 1)[1]


async def test_a_connection_killed_while_idle_is_replaced_before_use(async_url, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.2)
    engine = db.create_engine(async_url)
    try:
        first = await backend_pid(engine)
        assert terminate_backends(async_url) >= 1
        await asyncio.sleep(0.4)  # idle for longer than the ping threshold
        assert await backend_pid(engine) != first  # pinged, found dead, reconnected
        assert await backend_pid(engine, "AUTOCOMMIT") > 0
        async with engine.begin() as connection:  # transactions still work after a ping
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


async def test_a_connection_in_recent_use_is_not_pinged_and_recovers_after_one_failure(
    async_url, monkeypatch
):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 60.0)
    engine = db.create_engine(async_url)
    try:
        first = await backend_pid(engine)
        assert await backend_pid(engine) == first  # reused at once: no ping, same connection
        terminate_backends(async_url)
        with pytest.raises(DBAPIError) as failure:
            await backend_pid(engine)
        assert failure.value.connection_invalidated
        assert await backend_pid(engine) != first  # the pool was invalidated and reconnects
    finally:
        await engine.dispose()
