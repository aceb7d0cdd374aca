"""Worker processes for the CPU-heavy text steps, so that they never stall the serving process.

Extraction, normalization, chunking (with its tokenizer pass), keyword terms and facts hold
the GIL for as long as they run: CPython's regex engine, `unicodedata.normalize` and the
tokenizer's `encode` are single calls that never release it, and pypdf and trafilatura are
pure Python. Run on a thread of the serving process, a large or adversarial document made
every RPC on it wait, health checks and lease heartbeats included. Here they run in worker
processes made once per process (`text_workers()`) and shared by every request and job; the
serving process only pickles the text over and compact results back.

Every step is also linear in its input (see each module), so a worker is never held for long.

In a forked child (an RQ work horse: one short-lived process per job, which serves no RPCs)
the steps run on a thread instead: worker processes do not survive a fork, and spawning them
per job would cost more than it saves. Never logs text.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from retrieval.terms import term_frequencies
from runtime.errors import Unavailable
from services.ingest.pipeline.chunker import Chunk, Chunker
from services.ingest.pipeline.facts import Fact, extract_facts
from services.ingest.pipeline.prepare import Prepared, prepare, prepare_text

log = logging.getLogger(__name__)
T = TypeVar("T")

# The chunking window of all-MiniLM-L6-v2 and the overlap ingestion uses.
MAX_TOKENS = 256
OVERLAP_TOKENS = 32

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class ChunkTerms:
    """Keyword term frequencies of each chunk of a document, in a compact form: the document's
    distinct terms, and for chunk i the positions of its terms in that list and their counts,
    `terms[bounds[i]:bounds[i + 1]]` and `counts[...]`. It crosses the process boundary as a
    few buffers instead of a dict per chunk (millions of objects for a 10 MB text, unpickled
    in one GIL-holding call)."""

    vocabulary: list[str]
    bounds: np.ndarray  # int64, one more than there are chunks
    terms: np.ndarray  # uint32 positions in `vocabulary`
    counts: np.ndarray  # uint32

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def of(self, chunk: int) -> dict[str, int]:
        """Term frequencies of one chunk, as `retrieval.terms.term_frequencies` gives them."""
        low, high = self.bounds[chunk], self.bounds[chunk + 1]
        return {
            self.vocabulary[t]: int(c)
            for t, c in zip(self.terms[low:high], self.counts[low:high], strict=True)
        }

    @classmethod
    def of_texts(cls, texts: Sequence[str]) -> ChunkTerms:
        positions: dict[str, int] = {}
        bounds, terms, counts = array("q", [0]), array("I"), array("I")
        for text in texts:
            for term, count in term_frequencies(text).items():
                terms.append(positions.setdefault(term, len(positions)))
                counts.append(count)
            bounds.append(len(terms))
        return cls(
            list(positions),
            np.frombuffer(bounds, dtype=np.int64),
            np.frombuffer(terms, dtype=np.uint32),
            np.frombuffer(counts, dtype=np.uint32),
        )


# -- what runs in a worker (top-level functions: a spawned process imports them by name) ------

_chunkers: dict[tuple[int, int], Chunker] = {}


def _chunker(max_tokens: int, overlap_tokens: int) -> Chunker:
    key = (max_tokens, overlap_tokens)
    if key not in _chunkers:
        _chunkers[key] = Chunker(max_tokens, overlap_tokens=overlap_tokens)
    return _chunkers[key]


def chunk_spans(text: str, max_tokens: int, overlap_tokens: int) -> Spans:
    """[start, end) of each chunk of `text` (the texts themselves need not cross back)."""
    return [(c.start, c.end) for c in _chunker(max_tokens, overlap_tokens).split(text)]


def chunks_of(text: str, spans: Sequence[tuple[int, int]]) -> list[Chunk]:
    return [Chunk(i, text[start:end], start, end) for i, (start, end) in enumerate(spans)]


def terms_and_facts(text: str, spans: Spans) -> tuple[ChunkTerms, list[Fact]]:
    """Keyword term frequencies of each chunk, and the facts of the text."""
    chunks = chunks_of(text, spans)
    return ChunkTerms.of_texts([c.text for c in chunks]), extract_facts(text, chunks)


def _warm_up() -> None:
    """Loads the tokenizer and the extraction libraries once per worker."""
    chunk_spans("Ready.", MAX_TOKENS, OVERLAP_TOKENS)


# -- the serving side -------------------------------------------------------------------------


def _default_processes() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 2))


class TextWorkers:
    """Runs the text steps in `processes` worker processes (0: on a thread of this process).

    Workers are spawned, never forked (a fork of a process with gRPC and torch threads is not
    safe), on first use or by `start`. Each worker is a pool of one process: a step goes to
    the worker with the fewest steps waiting, except that a document's terms and facts go to
    the worker that chunked it, which still holds its sentences (see `sentences`). If a
    worker dies (killed, out of memory), it is made again and the steps that were running in
    it raise `Unavailable`, which ingestion treats as transient: the document is retried, then
    failed with a reason.
    """

    def __init__(self, processes: int | None = None) -> None:
        self.processes = _default_processes() if processes is None else processes
        self._pools: list[ProcessPoolExecutor | None] = [None] * self.processes
        self._waiting = [0] * self.processes
        # id() of a chunked text → the worker that chunked it (until its terms are asked for).
        self._chunked_by: dict[int, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Spawns the workers and loads what they need now rather than at the first document."""
        for worker in range(self.processes):
            self._executor(worker).submit(_warm_up)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, [None] * self.processes
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _executor(self, worker: int) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pools[worker]
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                self._pools[worker] = pool
            return pool

    def _least_busy(self) -> int:
        return min(range(self.processes), key=self._waiting.__getitem__)

    async def _run(self, function: Callable[..., T], *args: object, worker: int | None = None) -> T:
        if not self.processes:
            return await asyncio.to_thread(function, *args)
        worker = self._least_busy() if worker is None else worker
        pool = self._executor(worker)
        self._waiting[worker] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, partial(function, *args))
        except BrokenProcessPool:
            with self._lock:
                if self._pools[worker] is pool:
                    self._pools[worker] = None
            log.warning("a text worker process died; starting a new one")
            raise Unavailable("The text processing worker stopped; try again") from None
        finally:
            self._waiting[worker] -= 1

    async def prepare(
        self,
        content: bytes,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        fallback_title: str = "",
    ) -> Prepared:
        """extract → normalize → hash (see `prepare.prepare`)."""
        return await self._run(
            partial(
                prepare, filename=filename, content_type=content_type, fallback_title=fallback_title
            ),
            content,
        )

    async def prepare_text(self, text: str, title: str) -> Prepared:
        return await self._run(prepare_text, text, title)

    async def chunk(
        self, text: str, max_tokens: int = MAX_TOKENS, overlap_tokens: int = OVERLAP_TOKENS
    ) -> list[Chunk]:
        worker = self._least_busy() if self.processes else None
        spans = await self._run(chunk_spans, text, max_tokens, overlap_tokens, worker=worker)
        if worker is not None:
            if len(self._chunked_by) > 1000:  # texts whose terms were never asked for
                self._chunked_by.clear()
            self._chunked_by[id(text)] = worker
        return chunks_of(text, spans)

    async def terms_and_facts(
        self, text: str, chunks: Sequence[Chunk]
    ) -> tuple[ChunkTerms, list[Fact]]:
        worker = self._chunked_by.pop(id(text), None)
        return await self._run(
            terms_and_facts, text, [(c.start, c.end) for c in chunks], worker=worker
        )


_shared: TextWorkers | None = None
_shared_lock = threading.Lock()
_forked = False


def text_workers() -> TextWorkers:
    """The process's text workers, made at first use (on a thread in a forked child)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TextWorkers(0 if _forked else None)
        return _shared


def _after_fork_in_child() -> None:
    global _shared, _shared_lock, _forked
    _shared, _shared_lock, _forked = None, threading.Lock(), True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
