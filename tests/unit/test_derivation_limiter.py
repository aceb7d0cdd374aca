"""The Argon2id admission limiter: first come first served within slots and a memory
budget, a bounded queue, RESOURCE_EXHAUSTED beyond it (deterministic, no timing)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.errors import ResourceExhausted
from services.crypto.kdf import DerivationLimiter


async def test_one_slot_four_waiting_and_the_sixth_is_refused_at_once():
    limiter = DerivationLimiter(max_concurrent=1, memory_budget_kib=65536, max_waiting=4)
    await limiter.acquire(65536)  # running
    waiting = [asyncio.create_task(limiter.acquire(65536)) for _ in range(4)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    with pytest.raises(ResourceExhausted, match="Too many key derivations"):
        await limiter.acquire(65536)
    for task in waiting:  # each release admits the next, in order
        limiter.release(65536)
        await asyncio.sleep(0)
        assert task.done()
    limiter.release(65536)
    with pytest.raises(ResourceExhausted, match="budget"):
        await limiter.acquire(65537)


async def test_a_waiter_that_gives_up_leaves_the_queue():
    limiter = DerivationLimiter(max_concurrent=1, memory_budget_kib=1024, max_waiting=1)
    await limiter.acquire(1024)
    gone = asyncio.create_task(limiter.acquire(1024))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    queued = asyncio.create_task(limiter.acquire(1024))  # the freed place in the queue
    await asyncio.sleep(0)
    limiter.release(1024)
    await asyncio.wait_for(queued, 1)
