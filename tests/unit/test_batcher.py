"""EmbeddingBatcher: concurrent documents share model batches; each gets its own vectors."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from services.ingest.batcher import EmbeddingBatcher


class CountingEmbedder:
    """A stand-in model that records its batches: a vector encodes its text's number, and the
    first batch blocks until released, so that the next requests gather behind it."""

    dimension = 2

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail_on: str | None = None

    def embed(self, texts):
        self.batches.append(list(texts))
        if len(self.batches) == 1:
            self.release.wait(10)
        if self.fail_on in texts:
            raise RuntimeError("model failure")
        return np.array([[float(t.split("-")[1]), 1.0] for t in texts], dtype=np.float32)


def texts(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


async def test_requests_waiting_behind_a_batch_are_embedded_together_and_split_back():
    model = CountingEmbedder()
    batcher = EmbeddingBatcher(model, max_texts=10)
    first = asyncio.create_task(batcher.embed(texts("a", 3)))
    await asyncio.sleep(0.05)  # the first batch is in the model now
    waiting = [asyncio.create_task(batcher.embed(texts(p, 4))) for p in "bcd"]
    await asyncio.sleep(0.05)
    model.release.set()
    results = await asyncio.gather(first, *waiting)

    # b and c (8 texts) fit one batch of 10; d would overflow it and goes next.
    assert [len(b) for b in model.batches] == [3, 8, 4]
    for result, count in zip(results, (3, 4, 4, 4), strict=True):
        assert result.shape == (count, 2)
        assert result[:, 0].tolist() == list(range(count))


async def test_a_lone_request_is_embedded_at_once_and_an_oversized_one_whole():
    model = CountingEmbedder()
    model.release.set()
    batcher = EmbeddingBatcher(model, max_texts=4)
    vectors = await batcher.embed(texts("x", 9))
    assert vectors.shape == (9, 2)
    assert model.batches == [texts("x", 9)]
    assert (await batcher.embed([])).shape == (0, 2)


async def test_a_model_failure_reaches_only_the_documents_of_that_batch():
    model = CountingEmbedder()
    model.fail_on = "bad-0"
    batcher = EmbeddingBatcher(model, max_texts=4)
    first = asyncio.create_task(batcher.embed(texts("a", 2)))
    await asyncio.sleep(0.05)
    bad = asyncio.create_task(batcher.embed(texts("bad", 4)))
    good = asyncio.create_task(batcher.embed(texts("c", 4)))
    await asyncio.sleep(0.05)
    model.release.set()
    assert (await first).shape == (2, 2)
    with pytest.raises(RuntimeError, match="model failure"):
        await bad
    assert (await good).shape == (4, 2)


async def test_a_cancelled_document_is_skipped_and_stop_leaves_nothing_waiting():
    model = CountingEmbedder()
    batcher = EmbeddingBatcher(model, max_texts=10)
    first = asyncio.create_task(batcher.embed(texts("a", 1)))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.embed(texts("gone", 2)))
    kept = asyncio.create_task(batcher.embed(texts("kept", 2)))
    await asyncio.sleep(0.05)
    gone.cancel()
    model.release.set()
    await first
    assert (await kept).shape == (2, 2)
    assert texts("gone", 2)[0] not in [t for b in model.batches for t in b]

    model.release.clear()
    model.batches.clear()  # the next batch blocks again
    pending = asyncio.create_task(batcher.embed(texts("p", 1)))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.05)
    model.release.set()
    await stopping
    assert pending.cancelled() or pending.done()
