"""Embedded `VectorIndex`: a Qdrant Edge shard on local disk (the default without QDRANT_URL).

All projects share one shard under `path` (`<path>/shard`, HNSW and payload on disk). The
shard lives in a child process, `services.query.index.edge_host`, that this class starts and
talks to over pipes: qdrant-edge-py holds the GIL for the whole of each call, and index
optimisation takes seconds, so in-process it would stall the query service's event loop,
its health checks included. The child holds an exclusive lock on `<path>/LOCK`; a second
opener (another process, or a second index in this one) gets `IndexLockedError`.

If the child dies, the next call starts a new one (the shard's write-ahead log keeps every
acknowledged update) and retries once: every operation here is idempotent.

Never logs payloads or vectors, and never receives plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.query.index.base import (
    VectorIndex,
)
from services.query.index.bm25 import (
    Bm25Params,
)
from services.query.index.framing import encode, read_frame
from services.query.index.types import (
    DENSE_DIM,
    Fusion,
    Hit,
    IndexLockedError,
    IndexUnavailableError,
    PreparedPoint,
    SearchFilter,
    StoredChunk,
    VectorIndexError,
    VectorQuery,
)

log = logging.getLogger(__name__)

HOST_MODULE = "services.query.index.edge_host"
REPO_ROOT = Path(__file__).resolve().parents[3]
CLOSE_TIMEOUT = 60.0


def _error(kind_and_message: tuple[str, str]) -> VectorIndexError:
    kind, message = kind_and_message
    if kind == "locked":
        return IndexLockedError(message)
    return VectorIndexError(message)


class _Host:
    """One running host process and the requests waiting for its answers."""

    _ids = itertools.count(1)

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.create_task(self._read_replies())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    async def call(self, op: str, args: tuple[Any, ...]) -> Any:
        if not self.alive:
            raise IndexUnavailableError("the embedded index process is not running")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.stdin.write(encode((request_id, op, args)))
            await self.stdin.drain()
        except (ConnectionError, RuntimeError) as error:
            self.pending.pop(request_id, None)
            raise IndexUnavailableError("the embedded index process stopped") from error
        try:
            return await future
        finally:
            self.pending.pop(request_id, None)

    async def _read_replies(self) -> None:
        try:
            while True:
                request_id, ok, result = await read_frame(self.stdout)
                future = self.pending.get(request_id)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(_error(result))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(
                        IndexUnavailableError("the embedded index process stopped")
                    )

    async def stop(self, grace: float) -> None:
        """Asks the host to flush, close the shard and exit; kills it if it does not."""
        if self.alive:
            with contextlib.suppress(VectorIndexError, TimeoutError):
                await asyncio.wait_for(self.call("close", ()), grace)
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("embedded index process %s did not exit; killing it", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self.reader, return_exceptions=True)


class EdgeVectorIndex(VectorIndex):
    """The embedded index. Create with `await EdgeVectorIndex.open(path)`; close when done."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dim: int = DENSE_DIM,
        bm25: Bm25Params | None = None,
        lock_wait_seconds: float = 5.0,
        optimize_idle_seconds: float = 2.0,
        optimize_max_delay_seconds: float = 60.0,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(dim=dim, bm25=bm25)
        self.path = Path(path).absolute()
        self.lock_wait_seconds = lock_wait_seconds
        self.optimize_idle_seconds = optimize_idle_seconds
        self.optimize_max_delay_seconds = optimize_max_delay_seconds
        self.start_timeout = start_timeout
        self._host: _Host | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int = DENSE_DIM,
        bm25: Bm25Params | None = None,
        lock_wait_seconds: float = 5.0,
        optimize_idle_seconds: float = 2.0,
        optimize_max_delay_seconds: float = 60.0,
        start_timeout: float = 60.0,
    ) -> EdgeVectorIndex:
        """Opens (creating if needed) the index at `path`.

        Raises `IndexLockedError` if another process holds it after `lock_wait_seconds`
        (a host that is still shutting down releases it within moments) and
        `VectorIndexError` if the data there was created with another configuration.
        HNSW graphs are (re)built after updates once no request has come for
        `optimize_idle_seconds`, or after `optimize_max_delay_seconds` under steady traffic;
        index calls wait while that runs.
        """
        index = cls(
            path,
            dim=dim,
            bm25=bm25,
            lock_wait_seconds=lock_wait_seconds,
            optimize_idle_seconds=optimize_idle_seconds,
            optimize_max_delay_seconds=optimize_max_delay_seconds,
            start_timeout=start_timeout,
        )
        await index._ensure_host()
        return index

    @property
    def host_pid(self) -> int | None:
        """Process id of the process that holds the shard, while it runs."""
        return self._host.proc.pid if self._host and self._host.alive else None

    async def optimize(self) -> bool:
        """Builds pending HNSW graphs now (blocks other index calls while it runs)."""
        return bool(await self._call("optimize"))

    async def stats(self) -> dict[str, Any]:
        """Points, segments, payload indexes and optimiser runs of the shard."""
        return dict(await self._call("stats"))

    async def points(self) -> int | None:
        return int((await self.stats())["points"])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._start_lock:
            if self._host is not None:
                await self._host.stop(CLOSE_TIMEOUT)
                self._host = None

    async def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            await self._ensure_host()
        except VectorIndexError:
            return False
        return True

    # Backend operations -------------------------------------------------------------------

    async def _upsert(self, points: list[PreparedPoint]) -> None:
        await self._call("upsert", points)

    async def _search(self, queries: list[VectorQuery]) -> list[list[Hit]]:
        return await self._call("search", queries)

    async def _hybrid(
        self, queries: list[VectorQuery], weights: Sequence[float], fusion: Fusion, limit: int
    ) -> list[Hit]:
        return await self._call("hybrid", queries, list(weights), fusion, limit)

    async def _retrieve(self, chunk_ids: list[str]) -> list[StoredChunk]:
        return await self._call("retrieve", chunk_ids)

    async def _delete(self, where: SearchFilter) -> None:
        await self._call("delete", where)

    async def _count(self, where: SearchFilter) -> int:
        return int(await self._call("count", where))

    async def _scroll_page(
        self, where: SearchFilter, offset: str | None, limit: int
    ) -> tuple[list[StoredChunk], str | None]:
        return await self._call("scroll", where, offset, limit)

    # The host process ---------------------------------------------------------------------

    async def _call(self, op: str, *args: Any) -> Any:
        for attempt in (1, 2):
            host = await self._ensure_host()
            try:
                return await host.call(op, args)
            except IndexUnavailableError:
                if attempt == 2 or self._closed:
                    raise
                log.warning("embedded index process stopped during %s; restarting it", op)
        raise AssertionError("unreachable")

    async def _ensure_host(self) -> _Host:
        if self._closed:
            raise VectorIndexError("the vector index is closed")
        host = self._host
        if host is not None and host.alive:
            return host
        async with self._start_lock:
            if self._closed:
                raise VectorIndexError("the vector index is closed")
            if self._host is not None and self._host.alive:
                return self._host
            if self._host is not None:
                await self._host.stop(grace=5.0)
                self._host = None
            self._host = await self._spawn()
            return self._host

    async def _spawn(self) -> _Host:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            HOST_MODULE,
            "--path",
            str(self.path),
            "--dim",
            str(self.dim),
            "--lock-wait",
            str(self.lock_wait_seconds),
            "--optimize-idle",
            str(self.optimize_idle_seconds),
            "--optimize-max-delay",
            str(self.optimize_max_delay_seconds),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            _, ok, problem = await asyncio.wait_for(read_frame(proc.stdout), self.start_timeout)
        except (asyncio.IncompleteReadError, TimeoutError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise VectorIndexError(
                f"the embedded index process for {self.path} did not start (exit code {code}); "
                "see its error output above"
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if not ok:
            await proc.wait()
            raise _error(problem)
        return _Host(proc)
