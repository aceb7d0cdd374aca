"""QueryBatcher: concurrent queries share forward passes and get their own vectors back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval.onnx_embeddings import OnnxEmbedder
from retrieval.query_batching import QueryBatcher

pytestmark = pytest.mark.slow

QUERIES = [
    f"question number {n} about {topic}"
    for n, topic in enumerate(
        ["tides", "locks", "O_CLOEXEC", "vacuum", "Debian releases", "mmap"] * 3
    )
]


class GatedEmbedder:
    """The real ONNX embedder, each pass held until the test lets it go, passes recorded."""

    def __init__(self) -> None:
        self.inner = OnnxEmbedder()
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        self.batches.append(list(texts))
        return self.inner.embed(texts)


async def test_queries_waiting_for_a_pass_share_the_next_one() -> None:
    embedder = GatedEmbedder()
    with ThreadPoolExecutor(1) as executor:
        batcher = QueryBatcher(embedder, executor, max_batch=8)
        first = asyncio.ensure_future(batcher.embed(QUERIES[0]))
        await asyncio.sleep(0.05)  # the first pass has started, alone
        rest = [asyncio.ensure_future(batcher.embed(q)) for q in QUERIES[1:]]
        await asyncio.sleep(0.05)
        embedder.gate.set()
        vectors = [await first] + [await r for r in rest]
    assert [len(b) for b in embedder.batches] == [1, 8, 8, 1]
    assert batcher.passes == 4
    alone = OnnxEmbedder().embed(QUERIES)
    got = np.stack(vectors)
    assert got.shape == (len(QUERIES), 384)
    assert (got * alone).sum(axis=1).min() >= 0.9999  # each caller got its own query's vector


class Failing:
    def embed(self, texts):  # type: ignore[no-untyped-def]
        raise RuntimeError("model failed")


async def test_a_failed_pass_fails_its_callers_and_the_next_pass_runs() -> None:
    with ThreadPoolExecutor(1) as executor:
        batcher = QueryBatcher(Failing(), executor)
        results = await asyncio.gather(
            batcher.embed("a"), batcher.embed("b"), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        batcher.embedder = OnnxEmbedder()
        assert (await batcher.embed("c")).shape == (384,)


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    embedder = GatedEmbedder()
    with ThreadPoolExecutor(1) as executor:
        batcher = QueryBatcher(embedder, executor)
        first = asyncio.ensure_future(batcher.embed("first"))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.embed("gone"))
        kept = asyncio.ensure_future(batcher.embed("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        embedder.gate.set()
        await first
        assert (await kept).shape == (384,)
    assert embedder.batches[-1] == ["kept"]
