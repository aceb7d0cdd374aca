"""Embedding workers: one thread per CPU, each running single-threaded forward passes over
whatever texts are waiting, from any number of callers.

Why not one call at a time, each spread over the CPUs (the obvious design)? Measured on this
2-core machine while documents are ingested:
- Two single-threaded passes side by side embed 10-20% more per second than one pass on both
  cores, and they lose less when other work takes a core for a moment (a multi-threaded pass
  waits at every operation for its slowest thread).
- A call split into one batch per core ends when its slowest batch does; the other core idles
  meanwhile (about 6% of the model's time with 4 page-sized documents in flight). Here a free
  worker takes the next waiting texts at once, whoever submitted them.
- A batch of 8 texts runs about 10% faster per text than one of 32 (measured here, one
  thread per pass: its activations stay in the CPU's caches), and small batches cost no more
  per text, so nothing is gained by waiting for texts to gather.
- The model pads every text of a batch to the longest one. A page's last chunk is short; in a
  batch of full chunks it costs as much as a full one. So a batch is the oldest waiting text
  and the texts nearest to it in length among the next oldest (two batches' worth): full
  chunks go together, and a page's short last chunk waits until it is the oldest, then goes
  with other short ones.

Texts are served about in the order they came, so a document's first steps complete first
(its progress moves) and documents complete in about the order they arrived — except that
`urgent` texts (a caller waits on them: an inline ingestion) go before every other waiting
text, so a bulk of background ingestion never makes an interactive call wait for it.

Never logs texts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

import numpy as np

# forward(texts) → an (n, d) float32 array, one row per text, in order.
Forward = Callable[[list[str]], np.ndarray]
# A batch is chosen among the oldest WINDOW batches' worth of waiting texts.
WINDOW = 2


class _Request:
    __slots__ = ("batch_size", "count", "future", "remaining", "urgent", "vectors")

    def __init__(self, count: int, batch_size: int, urgent: bool = False) -> None:
        self.future: Future[np.ndarray] = Future()
        self.batch_size = batch_size
        self.urgent = urgent
        self.count = count
        self.remaining = count
        self.vectors: np.ndarray | None = None


class _Text:
    __slots__ = ("index", "request", "size", "text")

    def __init__(self, request: _Request, index: int, text: str) -> None:
        self.request = request
        self.index = index
        self.text = text
        self.size = len(text)


class EmbeddingWorkers:
    """Runs `forward` on `workers` threads over the texts submitted to it."""

    def __init__(
        self,
        forward: Forward,
        workers: int,
        *,
        setup: Callable[[], None] | None = None,
        name: str = "embedding",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be positive")
        self.forward = forward
        self.workers = workers
        self._setup = setup
        self._name = name
        self._waiting: list[_Text] = []
        self._changed = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._busy = 0  # workers in a forward pass

    def submit(
        self, texts: Sequence[str], batch_size: int, *, urgent: bool = False
    ) -> Future[np.ndarray]:
        """A future of the texts' vectors, one row per text in order. Cancelling it drops
        its texts that no worker has taken yet. `urgent` texts go before the others."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        request = _Request(len(texts), batch_size, urgent)
        if not texts:
            request.future.set_result(np.zeros((0, 0), dtype=np.float32))
            return request.future
        with self._changed:
            self._start()
            self._waiting.extend(_Text(request, i, text) for i, text in enumerate(texts))
            self._changed.notify(min(len(texts), self.workers))
        return request.future

    def _start(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            batch = self._take()
            try:
                vectors = self.forward([text.text for text in batch])
                finished = self._fill(batch, vectors)
            except BaseException as error:  # noqa: BLE001 — the batch's callers get it
                for request in {id(t.request): t.request for t in batch}.values():
                    _settle(request.future, error=error)
                continue
            finally:
                with self._changed:
                    self._busy -= 1
            for request in finished:
                _settle(request.future, result=request.vectors)

    def _take(self) -> list[_Text]:
        """The next batch: the oldest waiting text and the texts nearest to it in length
        among the next oldest; up to the batch size, and no more than an equal share of
        what is waiting per worker. So a lone page runs on every worker, and as a
        document's last texts are taken the batches shrink (half, a quarter, ...): the
        workers finish it at about the same time instead of one idling while the other
        runs a full last batch."""
        with self._changed:
            while True:
                self._waiting = [t for t in self._waiting if not t.request.future.done()]
                if self._waiting:
                    break
                self._changed.wait()
            urgent = [t for t in self._waiting if t.request.urgent]
            waiting = urgent or self._waiting
            share = -(-len(waiting) // self.workers)
            self._busy += 1
            seed = waiting[0]
            size = min(seed.request.batch_size, share)
            window = sorted(waiting[: size * WINDOW], key=lambda t: t.size, reverse=True)
            at = next(i for i, t in enumerate(window) if t is seed)
            start = max(0, min(at, len(window) - size))
            batch = window[start : start + size]
            taken = {id(t) for t in batch}
            self._waiting = [t for t in self._waiting if id(t) not in taken]
            return batch

    def _fill(self, batch: list[_Text], vectors: np.ndarray) -> list[_Request]:
        """Puts the batch's vectors in their callers' arrays; the callers now complete."""
        if vectors.shape[0] != len(batch):
            raise ValueError(f"the model gave {vectors.shape[0]} vectors for {len(batch)} texts")
        finished: list[_Request] = []
        with self._changed:
            for text, vector in zip(batch, vectors, strict=True):
                request = text.request
                if request.future.done():
                    continue
                if request.vectors is None:
                    request.vectors = np.empty((request.count, vectors.shape[1]), np.float32)
                request.vectors[text.index] = vector
                request.remaining -= 1
                if request.remaining == 0:
                    finished.append(request)
        return finished


def _settle(
    future: Future[np.ndarray],
    result: np.ndarray | None = None,
    error: BaseException | None = None,
) -> None:
    """Completes `future` unless its caller cancelled it (or it already failed)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled in between
        pass
