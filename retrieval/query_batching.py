"""Concurrent queries share forward passes: one pass embeds every query waiting for it.

A query arriving while no pass runs is embedded at once, alone: a single client waits for
nothing. Queries arriving while a pass runs wait for it to end, then all go in the next pass,
up to `max_batch`. One pass of n short queries costs far less than n passes (the per-call
overhead dominates a short text), so under concurrency the model keeps up instead of queueing
one pass per query. Passes run one at a time on the executor given (one thread: the cores are
shared with crypto, Envoy and the other requests).

A row of a batch equals the text embedded alone up to float rounding (padding is masked out of
attention and pooling). Never logs queries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

DEFAULT_MAX_BATCH = 16


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class QueryBatcher:
    """Embeds single queries, batching those that arrive while a pass is running."""

    def __init__(
        self, embedder: TextEmbedder, executor: Executor, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self.embedder = embedder
        self.executor = executor
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.passes = 0  # forward passes run (for benchmarks)

    async def embed(self, text: str) -> np.ndarray:
        """The query's vector (384 float32 values, L2-normalized)."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = [(t, f) for t, f in self._waiting[: self.max_batch] if not f.cancelled()]
            del self._waiting[: self.max_batch]
            if not batch:
                continue
            texts = [text for text, _ in batch]
            try:
                vectors = await loop.run_in_executor(self.executor, self.embedder.embed, texts)
                self.passes += 1
                if len(vectors) != len(texts):
                    raise RuntimeError(f"{len(texts)} queries gave {len(vectors)} vectors")
            except Exception as error:  # noqa: BLE001 — every caller of the pass gets it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for row, (_, future) in zip(vectors, batch, strict=True):
                if not future.done():
                    future.set_result(row)
