"""The embedding model in torch and in ONNX Runtime, side by side: queries and bulk batches.

    .venv/bin/python bench/embedding_runtimes.py [--queries 200] [--chunks 96]

Same weights, same tokenizer, one thread each (as the services run them). Prints:
- one query at a time (the query service's path): p50/p90 milliseconds per query, and the
  ratio torch / ONNX Runtime;
- concurrent queries (8 callers), ONNX Runtime on one executor thread: one pass per query
  against passes shared by the queries waiting together (retrieval.query_batching): q/s;
- bulk batches of full-window chunks (ingestion's path) in batches of 8 and 32: chunks/s.
Runs alternate between the runtimes, so drift in machine load hits both alike; figures from
a shared machine are noisy, the ratios within one run are what to read. Needs the ONNX export
that `make install` creates (tools/export_onnx.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from retrieval.embeddings import MAX_TOKENS, Embedder, load_tokenizer  # noqa: E402
from retrieval.onnx_embeddings import OnnxEmbedder  # noqa: E402
from retrieval.query_batching import QueryBatcher  # noqa: E402

QUERIES = [
    "What does work_mem limit?",
    "How do I make sure my call creates the file and fails if it is already there?",
    "O_CLOEXEC",
    "Which release first came on DVD?",
    "How can a child process ask to get a signal when its parent dies?",
    "pg_stat_statements track utility commands",
]
WORDS = (
    "the planner estimates the cost of each plan from table statistics gathered by analyze "
    "and chooses the cheapest one among sequential scans index scans and bitmap heap scans"
).split()


def full_window_chunks(count: int) -> list[str]:
    """`count` distinct texts of about the model's full window of word pieces."""
    tokenizer = load_tokenizer()
    chunks = []
    for i in range(count):
        words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(400)]
        text = " ".join(words)
        while len(tokenizer.encode(text, add_special_tokens=False).ids) > MAX_TOKENS - 2:
            words = words[:-5]
            text = " ".join(words)
        chunks.append(f"{i} {text}")
    return chunks


def per_query_ms(embed, queries: int) -> list[float]:
    times = []
    for i in range(queries):
        started = time.perf_counter()
        embed([QUERIES[i % len(QUERIES)]])
        times.append((time.perf_counter() - started) * 1000)
    return times


async def concurrent_queries(embedder, queries: int, rounds: int) -> dict[str, list[float]]:
    """Queries per second for 8 callers, each asking `queries / 8` queries in turn."""
    rates: dict[str, list[float]] = {"one pass each": [], "shared passes": []}
    with ThreadPoolExecutor(1) as executor:
        batcher = QueryBatcher(embedder, executor)
        loop = asyncio.get_running_loop()

        async def one_each(text: str) -> None:
            await loop.run_in_executor(executor, embedder.embed, [text])

        for _ in range(rounds):
            for name, embed in (("one pass each", one_each), ("shared passes", batcher.embed)):

                async def caller(n: int, embed=embed) -> None:
                    for i in range(queries // 8):
                        await embed(QUERIES[(n + i) % len(QUERIES)])

                started = time.perf_counter()
                await asyncio.gather(*(caller(n) for n in range(8)))
                rates[name].append(8 * (queries // 8) / (time.perf_counter() - started))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="queries per runtime")
    parser.add_argument("--chunks", type=int, default=96, help="full-window chunks per batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()
    runtimes = {"torch": Embedder(pooled=False, runtime="torch"), "onnxruntime": OnnxEmbedder()}
    for embedder in runtimes.values():
        embedder.embed(QUERIES)  # load and warm up
    check = runtimes["torch"].embed(QUERIES) * runtimes["onnxruntime"].embed(QUERIES)
    print(f"worst cosine between the runtimes on the queries: {check.sum(axis=1).min():.6f}")

    query_times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.rounds):
        for name, embedder in runtimes.items():
            query_times[name] += per_query_ms(embedder.embed, args.queries // args.rounds)
    print("\none query per call (the query service's path), one thread:")
    for name, times in query_times.items():
        q = statistics.quantiles(times, n=10)
        print(f"  {name:12} p50 {statistics.median(times):6.2f} ms   p90 {q[8]:6.2f} ms")
    ratio = statistics.median(query_times["torch"]) / statistics.median(query_times["onnxruntime"])
    print(f"  torch p50 / onnxruntime p50 = {ratio:.2f}")

    rates = asyncio.run(concurrent_queries(runtimes["onnxruntime"], args.queries, args.rounds))
    print("\n8 concurrent callers, ONNX Runtime on one executor thread:")
    for name, values in rates.items():
        print(f"  {name:22} {max(values):7.1f} queries/s")
    print(f"  shared / one each = {max(rates['shared passes']) / max(rates['one pass each']):.2f}")

    chunks = full_window_chunks(args.chunks)
    print(f"\nbulk: {len(chunks)} full-window chunks, one thread (one embedding worker's pass):")
    for batch_size in (8, 32):
        rates: dict[str, list[float]] = {name: [] for name in runtimes}
        for _ in range(args.rounds):
            for name in runtimes:
                embedder = (
                    Embedder(batch_size=batch_size, pooled=False, runtime="torch")
                    if name == "torch"
                    else OnnxEmbedder(batch_size=batch_size)
                )
                started = time.perf_counter()
                vectors = embedder.embed(chunks)
                rates[name].append(len(chunks) / (time.perf_counter() - started))
                assert vectors.shape == (len(chunks), 384) and np.all(np.isfinite(vectors))
        best = {name: max(r) for name, r in rates.items()}
        cells = "   ".join(f"{name} {rate:5.1f} chunks/s" for name, rate in best.items())
        print(
            f"  batch {batch_size:2}: {cells}   onnxruntime / torch = "
            f"{best['onnxruntime'] / best['torch']:.2f}"
        )
    print("(best of the rounds per runtime; the machine is shared, so read the ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
