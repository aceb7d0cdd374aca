"""ONNX Runtime gives the vectors of the torch model (same weights), on the query path and on
ingestion's (the pooled embedding workers).

The ONNX graph is the one `make install` exports (tools/export_onnx.py) into the virtualenv;
the query service embeds every query with it and ingestion every chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.embeddings import ONNXRUNTIME, Embedder, bulk_runtime, count_tokens
from retrieval.onnx_embeddings import OnnxEmbedder, onnx_model_path, query_embedder

pytestmark = pytest.mark.slow

TEXTS = [
    "x",
    "What does work_mem limit?",
    "O_CLOEXEC",
    "How can a child process ask to get a signal when its parent dies?",
    "Ünïcödé, 日本語のテキスト, Ελληνικά and an emoji 🙂",
    "lone surrogate \ud800 in a query",
    "   leading and trailing whitespace   ",
    # Longer than the model's window: both runtimes must truncate it the same way.
    "The planner chooses the cheapest plan among sequential scans and index scans. " * 30,
]
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Embedder(pooled=False, runtime="torch").embed(TEXTS)


def test_the_export_is_installed() -> None:
    assert onnx_model_path().is_file(), "run `make install` (tools/export_onnx.py) to export it"
    assert isinstance(query_embedder(), OnnxEmbedder)


def test_over_long_text_really_exceeds_the_window() -> None:
    assert count_tokens(TEXTS[-1]) > 256


@pytest.mark.parametrize("batch_size", [1, 3, len(TEXTS)])
def test_vectors_equal_torch_vectors(torch_vectors: np.ndarray, batch_size: int) -> None:
    vectors = OnnxEmbedder(batch_size=batch_size).embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(TEXTS, cosines.tolist(), strict=True))


def test_ingestion_embeds_in_onnx_runtime_with_torch_vectors(torch_vectors: np.ndarray) -> None:
    """The pipeline's embedder (pooled, default runtime) runs ONNX Runtime when the export is
    installed, and its vectors are torch's: a mix of lengths, spread over the workers."""
    assert bulk_runtime() == ONNXRUNTIME
    embedder = Embedder()
    assert embedder.pooled and embedder.runtime == ONNXRUNTIME
    texts = TEXTS * 3  # more texts than one batch: several workers, several batches
    vectors = embedder.embed(texts)
    assert vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    cosines = (vectors * np.tile(torch_vectors, (3, 1))).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(texts, cosines.tolist(), strict=True))
    submitted = embedder.submit(TEXTS[:4]).result(timeout=60)
    assert ((submitted * torch_vectors[:4]).sum(axis=1)).min() >= MIN_COSINE


def test_rankings_equal_torch_rankings(torch_vectors: np.ndarray) -> None:
    """Nearest neighbours among the texts come out in the same order in both runtimes."""
    vectors = OnnxEmbedder().embed(TEXTS)
    torch_order = np.argsort(-(torch_vectors @ torch_vectors.T), axis=1)
    onnx_order = np.argsort(-(vectors @ vectors.T), axis=1)
    np.testing.assert_array_equal(onnx_order[:, :3], torch_order[:, :3])


def test_no_texts_and_single_strings() -> None:
    embedder = OnnxEmbedder()
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_a_missing_export_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from retrieval import onnx_embeddings

    missing = tmp_path / "absent.onnx"
    saved = onnx_embeddings._session
    onnx_embeddings._session = None
    try:
        with pytest.raises(onnx_embeddings.OnnxModelMissing, match="make install"):
            OnnxEmbedder(path=missing).embed(["a query"])
    finally:
        onnx_embeddings._session = saved
