"""Text workers: the text steps give the same results in a worker process as in this one, a
document's error crosses back as itself, and a worker that dies is replaced."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from retrieval.terms import term_frequencies
from runtime.errors import Unavailable
from services.ingest.pipeline.chunker import Chunker
from services.ingest.pipeline.errors import UnreadableDocument
from services.ingest.pipeline.facts import extract_facts
from services.ingest.pipeline.prepare import prepare, prepare_text
from services.ingest.pipeline.text_workers import TextWorkers

DATA = Path(__file__).resolve().parent.parent / "data"
SPEECH = (DATA / "gettysburg.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def workers():
    pool = TextWorkers(processes=1)
    yield pool
    pool.close()


async def test_worker_results_equal_those_of_this_process(workers: TextWorkers) -> None:
    body = "\n\n".join([SPEECH] * 6) + "\nThe harbour is a port. Ships use the harbour."
    prepared = await workers.prepare_text(body, " Speech ")
    assert prepared == prepare_text(body, " Speech ")
    text = prepared.text
    chunks = await workers.chunk(text)
    assert chunks == Chunker(256, overlap_tokens=32).split(text)
    chunk_terms, facts = await workers.terms_and_facts(text, chunks)
    assert len(chunk_terms) == len(chunks)
    assert [chunk_terms.of(i) for i in range(len(chunks))] == [
        term_frequencies(c.text) for c in chunks
    ]
    assert facts == extract_facts(text, chunks) and facts
    assert await workers.prepare(body.encode(), filename="s.txt") == prepare(
        body.encode(), filename="s.txt"
    )


async def test_a_document_error_crosses_back_as_itself(workers: TextWorkers) -> None:
    with pytest.raises(UnreadableDocument, match="no readable text"):
        await workers.prepare_text(" ... — ", "title")


async def test_a_dead_worker_fails_its_step_as_unavailable_and_is_replaced(
    workers: TextWorkers,
) -> None:
    with pytest.raises(Unavailable):
        await workers._run(os._exit, 1)
    assert (await workers.prepare_text("Back again.", "t")).text == "Back again."


async def test_the_event_loop_keeps_running_while_a_worker_is_busy(workers: TextWorkers) -> None:
    """The point of the pool: a long text step does not hold this process's GIL."""
    await workers.chunk("Warm.")
    text = "word another. " * 300_000  # a tokenizer pass of seconds, in one call
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await workers.chunk(text)
    elapsed = time.perf_counter() - started
    ticker.cancel()
    # Ticks kept coming throughout: the longest gap is a small part of the step's duration.
    assert len(gaps) > 10 and max(gaps) < max(0.25, elapsed / 4), (max(gaps), elapsed)
