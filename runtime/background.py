"""Background loops a service runs beside its RPCs (readiness, reapers, deletion retries).

A loop is stopped between rounds, never in the middle of one: a round cancelled inside a
database call makes SQLAlchemy terminate the connection it had checked out, and with
aiosqlite a second cancellation during that clean-up (the event loop closing, say) leaves a
task waiting forever on a worker thread that has already stopped. So `stop()` asks the loop to
finish its round and waits for it; only a round that overruns the grace is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STOP_GRACE = 5.0


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancels `task` and waits until it has finished unwinding."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: never swallow that


class Periodic:
    """Runs `work` every `interval` seconds in a task of its own until stopped.

    A failing round is logged and the loop goes on: one bad round never stops the service's
    housekeeping.
    """

    def __init__(self, name: str, work: Callable[[], Awaitable[object]], interval: float) -> None:
        self.name = name
        self.work = work
        self.interval = interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, *, run_first: bool = False) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(run_first), name=self.name)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def _loop(self, run_first: bool) -> None:
        if not run_first:
            await self._pause()
        while not self._stopping.is_set():
            try:
                await self.work()
            except Exception:
                log.exception("%s round failed", self.name)
            await self._pause()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Lets the current round finish (cancelled after `grace` seconds), then returns."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            log.warning("%s: round still running after %.1fs; cancelling it", self.name, grace)
            await cancel_and_wait(task)
