"""Embedding batches shared by the documents an ingest process works on at the same time.

The model embeds a batch of 64 chunks faster per chunk than eight documents' batches of 8
(measured here: 22 vs 20 chunks/s on the PostgreSQL manual), and only one inference runs at a
time anyway. So documents hand their chunks to one `EmbeddingBatcher`, which embeds whatever
is waiting — up to `max_texts` at once, whole requests only — while the next requests gather.
Nothing waits for a batch to fill: a lone document is embedded at once.

Never logs texts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.embeddings import Embedder
from runtime.background import cancel_and_wait


@dataclass
class _Request:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EmbeddingBatcher:
    """Coalesces concurrent `embed` calls into model batches of up to `max_texts` texts."""

    def __init__(self, embedder: Embedder, max_texts: int = 64) -> None:
        if max_texts < 1:
            raise ValueError("max_texts must be positive")
        self.embedder = embedder
        self.max_texts = max_texts
        self._waiting: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts`, as `Embedder.embed` gives them."""
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        request = _Request(list(texts))
        self._waiting.append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="embedding-batches")
        return await request.future

    def _next_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._waiting:
            request = self._waiting[0]
            if request.future.done():  # its document gave up (cancelled)
                self._waiting.popleft()
                continue
            if batch and size + len(request.texts) > self.max_texts:
                break
            batch.append(self._waiting.popleft())
            size += len(request.texts)
        return batch

    async def _run(self) -> None:
        while batch := self._next_batch():
            texts = [text for request in batch for text in request.texts]
            try:
                vectors = await asyncio.to_thread(self.embedder.embed, texts)
            except asyncio.CancelledError:
                for request in batch:
                    request.future.cancel()
                raise
            except Exception as error:  # noqa: BLE001 — each waiting document gets the error
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            start = 0
            for request in batch:
                end = start + len(request.texts)
                if not request.future.done():
                    request.future.set_result(vectors[start:end])
                start = end

    async def stop(self) -> None:
        await cancel_and_wait(self._worker)
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.cancel()
