"""Background loops stop between rounds, and nothing of them is left when stop() returns."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from runtime.background import Periodic, cancel_and_wait


async def test_stop_lets_the_round_in_progress_finish_and_starts_no_other():
    rounds: list[str] = []
    started = asyncio.Event()

    async def work() -> None:
        rounds.append("started")
        started.set()
        await asyncio.sleep(0.2)
        rounds.append("finished")

    loop = Periodic("test-loop", work, interval=0.01)
    loop.start(run_first=True)
    await started.wait()
    await loop.stop()
    assert rounds == ["started", "finished"]
    await asyncio.sleep(0.05)
    assert rounds == ["started", "finished"]


async def test_a_round_that_overruns_the_grace_is_cancelled():
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = Periodic("stuck-loop", work, interval=0.01)
    loop.start(run_first=True)
    await started.wait()
    await loop.stop(grace=0.1)
    assert cancelled.is_set()


async def test_a_failing_round_does_not_stop_the_loop():
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    loop = Periodic("failing-loop", work, interval=0.01)
    loop.start(run_first=True)
    for _ in range(100):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    await loop.stop()
    assert calls >= 3


async def test_database_loops_stopped_at_random_moments_leave_no_task_behind(tmp_path):
    """The shape that hung CI: a loop querying SQLite (aiosqlite) stopped mid-query, then its
    engine disposed. Every stop must return, and leave nothing for the event loop to cancel."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")

    async def query() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("select 1"))

    try:
        for _ in range(30):
            loop = Periodic("db-loop", query, interval=0)
            loop.start(run_first=True)
            await asyncio.sleep(random.uniform(0.001, 0.01))
            await asyncio.wait_for(loop.stop(grace=0.001), 5)
    finally:
        await engine.dispose()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, others


async def test_cancel_and_wait_never_swallows_its_callers_cancellation():
    inner = asyncio.create_task(asyncio.sleep(60))

    async def caller() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await cancel_and_wait(inner)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0)
    outer.cancel()
    done, _ = await asyncio.wait({outer}, timeout=5)
    assert done and outer.cancelled()
    assert inner.cancelled()
