"""EmbeddingWorkers: texts of concurrent callers share batches of similar lengths; each
caller gets its own vectors, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from retrieval.batching import EmbeddingWorkers


class RecordingModel:
    """A stand-in forward pass: a text's vector is (its number, its length). Batches are
    recorded; while `hold` is clear, passes wait for it (texts then gather behind them)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.started = threading.Semaphore(0)
        self.fail_on: str | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.started.release()
        assert self.hold.wait(10)
        if self.fail_on in texts:
            raise RuntimeError("model failure")
        rows = [[float(t.split("-")[1].rstrip(".")), len(t)] for t in texts]
        return np.array(rows, dtype=np.float32)

    def wait_started(self, passes: int = 1) -> None:
        for _ in range(passes):
            assert self.started.acquire(timeout=10)


def texts(prefix: str, count: int, pad: int = 0) -> list[str]:
    return [f"{prefix}-{i}" + "." * pad for i in range(count)]


def numbers(vectors: np.ndarray) -> list[int]:
    return [int(v) for v in vectors[:, 0]]


def test_callers_waiting_together_share_batches_and_get_their_own_vectors_back():
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(texts("a", 1), batch_size=8)
    model.wait_started()  # the worker is busy: the next texts gather
    waiting = [workers.submit(texts(p, 3), batch_size=8) for p in "bcd"]
    model.hold.set()
    assert numbers(first.result(10)) == [0]
    for future in waiting:
        assert numbers(future.result(10)) == [0, 1, 2]
    # 9 texts waiting, batches of at most 8.
    assert [len(b) for b in model.batches] == [1, 8, 1]


def test_one_caller_alone_is_spread_over_every_worker_in_shrinking_batches():
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 2)
    future = workers.submit(texts("a", 12), batch_size=32)
    model.wait_started(2)  # both workers hold a batch
    model.hold.set()
    assert numbers(future.result(10)) == list(range(12))
    # An equal share per worker of what is waiting: 6 of 12, 3 of 6, then 2, then 1, so the
    # workers finish within a text or two of each other.
    assert [len(b) for b in model.batches] == [6, 3, 2, 1]


def test_a_batch_is_the_oldest_text_and_those_nearest_to_it_in_length():
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(["x-0"], batch_size=2)
    model.wait_started()
    short_and_long = [
        workers.submit(batch, batch_size=2)
        for batch in (["s-0"], texts("l", 1, pad=50), ["s-1"], [texts("l", 2, pad=50)[1]])
    ]
    model.hold.set()
    first.result(10)
    for future in short_and_long:
        future.result(10)
    assert model.batches[1] == ["s-0", "s-1"]
    assert model.batches[2] == texts("l", 2, pad=50)


def test_longer_texts_submitted_later_do_not_jump_ahead():
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(["x-0"], batch_size=2)
    model.wait_started()
    in_order = [
        workers.submit(batch, batch_size=2)
        for batch in (texts("a", 2), texts("b", 2), texts("c", 2, pad=50))
    ]
    model.hold.set()
    first.result(10)
    for future in in_order:
        assert numbers(future.result(10)) == [0, 1]
    assert model.batches[1:] == [texts("a", 2), texts("b", 2), texts("c", 2, pad=50)]


def test_a_model_failure_reaches_only_the_callers_of_that_batch():
    model = RecordingModel()
    model.fail_on = texts("bad", 1, pad=9)[0]
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(texts("a", 1), batch_size=2)
    model.wait_started()
    bad = workers.submit(texts("bad", 2, pad=9), batch_size=2)
    good = workers.submit(texts("c", 2), batch_size=2)
    model.hold.set()
    assert numbers(first.result(10)) == [0]
    with pytest.raises(RuntimeError, match="model failure"):
        bad.result(10)
    assert numbers(good.result(10)) == [0, 1]


def test_texts_of_a_cancelled_caller_are_dropped():
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(texts("a", 1), batch_size=8)
    model.wait_started()
    gone = workers.submit(texts("gone", 2), batch_size=8)
    kept = workers.submit(texts("kept", 2), batch_size=8)
    assert gone.cancel()
    model.hold.set()
    first.result(10)
    assert numbers(kept.result(10)) == [0, 1]
    assert not any(t.startswith("gone") for batch in model.batches for t in batch)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        EmbeddingWorkers(RecordingModel(), 0)
    with pytest.raises(ValueError):
        EmbeddingWorkers(RecordingModel(), 1).submit(["a-0"], batch_size=0)


def test_a_wrong_number_of_vectors_fails_its_callers_and_the_worker_keeps_serving():
    calls: list[int] = []

    def forward(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        rows = len(texts) - 1 if len(calls) == 1 else len(texts)
        return np.ones((rows, 2), dtype=np.float32)

    workers = EmbeddingWorkers(forward, 1)
    with pytest.raises(ValueError, match="1 vectors for 2 texts"):
        workers.submit(texts("a", 2), batch_size=8).result(10)
    assert workers.submit(texts("b", 3), batch_size=8).result(10).shape == (3, 2)


def test_urgent_texts_go_before_every_waiting_bulk_text():
    """An inline ingestion's texts (urgent) are taken next, ahead of background texts that
    were waiting before them; the bulk then goes on in its order."""
    model = RecordingModel()
    workers = EmbeddingWorkers(model, 1)
    first = workers.submit(texts("a", 1), batch_size=8)
    model.wait_started()
    bulk = workers.submit(texts("b", 16), batch_size=8)
    urgent = workers.submit(texts("u", 3), batch_size=8, urgent=True)
    model.hold.set()
    assert numbers(urgent.result(10)) == [0, 1, 2]
    assert numbers(bulk.result(10)) == list(range(16))
    assert numbers(first.result(10)) == [0]
    assert [b[0].split("-")[0] for b in model.batches] == ["a", "u", "b", "b"]
