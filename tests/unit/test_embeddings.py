"""Embedder: the bundled all-MiniLM-L6-v2, loaded once, offline, giving normalized 384-d vectors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from retrieval import embeddings
from retrieval.embeddings import Embedder, count_tokens, count_tokens_batch, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_vectors_are_384_dimensional_float32_and_normalized(embedder: Embedder) -> None:
    vectors = embedder.embed(["Privacy-first context store.", "Another sentence.", "x"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_no_texts_give_an_empty_matrix(embedder: Embedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_a_single_string_is_rejected(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_the_model_is_loaded_once_and_shared(embedder: Embedder) -> None:
    first = embedder.model
    assert Embedder().model is first
    assert load_model() is first
    embedder.embed(["warm"])
    assert Embedder(batch_size=4).model is first


def test_concurrent_first_use_loads_a_single_model() -> None:
    """Eight threads racing on a fresh process all get the same model object."""
    script = textwrap.dedent(
        """
        import threading
        from retrieval.embeddings import load_model
        barrier = threading.Barrier(8)
        seen = []
        def worker():
            barrier.wait()
            seen.append(id(load_model()))
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(seen), len(set(seen)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.split() == ["8", "1"]


def test_loading_is_offline() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert embeddings.MODEL_NAME == "sentence-transformers/all-MiniLM-L6-v2"


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    cat, kitten, revenue = embedder.embed(
        [
            "The cat sits on the mat.",
            "A kitten is resting on a rug.",
            "Quarterly revenue grew by five percent.",
        ]
    )
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def test_batching_does_not_change_vectors(embedder: Embedder) -> None:
    texts = [f"Sentence number {i} about topic {i % 7}." for i in range(40)]
    batched = Embedder(batch_size=8).embed(texts)
    one_by_one = np.vstack([embedder.embed([t]) for t in texts[:5]])
    np.testing.assert_allclose(batched[:5], one_by_one, atol=1e-5)


def test_batches_embedded_side_by_side_equal_the_models_own_encode(embedder: Embedder) -> None:
    """Inputs of several batches run as parallel single-threaded passes: same vectors, same
    order as SentenceTransformer.encode gives."""
    texts = [f"Sentence {i}: " + "word " * (i * 7 % 60) for i in range(70)]
    parallel = Embedder(batch_size=8).embed(texts)  # 9 batches over the CPUs
    expected = embedder.model.encode(
        texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=True
    )
    np.testing.assert_allclose(parallel, expected, atol=1e-5)


def test_token_counts_match_the_models_own_tokenizer(embedder: Embedder) -> None:
    samples = [
        "Hello, world!",
        "pbkdf2_hmac(password, salt, 600_000) derives keys.",
        "東京は日本の首都です。 Ünïcödé naïve café 😀",
        "a" * 150,
        "",
    ]
    model_tokenizer = embedder.model.tokenizer
    for text in samples:
        expected = len(model_tokenizer(text, add_special_tokens=False)["input_ids"])
        assert count_tokens(text) == expected == embedder.count_tokens(text)
    assert count_tokens_batch(samples) == [count_tokens(t) for t in samples]


def test_window_is_256_word_pieces_including_specials(embedder: Embedder) -> None:
    assert embedder.max_tokens == 256 == embedder.model.max_seq_length
    with_specials = embedder.model.tokenizer("one two three")["input_ids"]
    assert len(with_specials) == count_tokens("one two three") + embedder.special_tokens


def test_text_with_lone_surrogates_is_embedded(embedder: Embedder) -> None:
    vectors = embedder.embed(["broken \ud800 text"])
    assert vectors.shape == (1, 384)
    assert count_tokens("broken \ud800 text") == count_tokens("broken text")


def test_a_forked_child_of_a_process_that_embedded_can_embed() -> None:
    """RQ work horses are forked from a worker that has the model; without care, torch's
    thread pool deadlocks the child's first forward pass."""
    script = textwrap.dedent(
        """
        import os
        import numpy as np
        from retrieval.embeddings import Embedder
        embedder = Embedder(batch_size=4)
        embedder.embed([f"text {i}" for i in range(16)])  # batches side by side (a pool)
        parent = embedder.embed(["same text"])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            embedder.embed([f"text {i}" for i in range(16)])
            child = embedder.embed(["same text"])
            os.write(write, child.tobytes())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.waitpid(pid, 0)
        child = np.frombuffer(data, dtype=np.float32).reshape(1, -1)
        print(float(np.abs(child - parent).max()))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        pytest.fail("the forked child deadlocked in its first forward pass")
    assert process.returncode == 0, err
    assert float(out.strip()) < 1e-5


def test_queries_embed_in_the_calling_thread_and_ingestion_on_one_worker_per_cpu() -> None:
    """The query service's embedder (not pooled) starts no worker; the pooled one runs one
    single-threaded worker per CPU; both give the same vectors."""
    script = textwrap.dedent(
        """
        import threading
        from retrieval import embeddings
        from retrieval.embeddings import Embedder, _cpu_count
        texts = [f"Text {i}: " + "word " * (i * 5 % 40) for i in range(12)]
        query = Embedder(pooled=False).embed(texts)
        none_yet = not embeddings._workers
        pooled = Embedder(batch_size=4).embed(texts)
        workers = [t for t in threading.enumerate() if t.name.startswith("embedding-")]
        print(none_yet, len(workers), _cpu_count(), float(abs(query - pooled).max()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    none_yet, workers, cpus, difference = result.stdout.split()
    assert none_yet == "True"
    assert workers == cpus
    assert float(difference) < 1e-5
