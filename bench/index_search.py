"""Vector index benchmark: upsert throughput and filtered search latency. Prints figures only.

Builds a synthetic multi-tenant corpus (random unit 384-d vectors, Zipf-distributed keyword
term ids) in the embedded Qdrant Edge index in a temporary directory: 100k points by default,
one large project holding half of them, mid-size and small projects sharing the rest. It
prints upsert throughput, the HNSW build time, and p50/p95/p99 latency of tenant-filtered
dense, keyword and hybrid searches, measured through the `VectorIndex` API the query service
uses (so including the trip to the index's host process).

Baseline, same run: the same workload at 10k points on the embedded index and on
qdrant-client's local mode (the `ServerVectorIndex` code on an in-process brute-force
engine), with their ratio.

    .venv/bin/python bench/index_search.py [--points 100000] [--baseline-points 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.query.index import DENSE_DIM, IndexPoint, SearchFilter, SparseTerms, VectorIndex
from services.query.index.edge import EdgeVectorIndex
from services.query.index.server import ServerVectorIndex

VOCABULARY = 30_000
TERMS_PER_CHUNK = 60
UPSERT_BATCH = 1000
MODES = ("dense", "sparse", "hybrid")


@dataclass(frozen=True)
class Project:
    name: str
    project_id: str
    size: int


def tenants(total: int) -> list[Project]:
    """Half the points in one large project, 40% in 5 mid-size ones, 10% in 10 small ones."""
    layout = [("large", 1, 0.5), ("mid", 5, 0.4), ("small", 10, 0.1)]
    projects = []
    for name, count, share in layout:
        for i in range(count):
            size = int(total * share / count)
            projects.append(Project(f"{name}{i}", str(uuid.uuid4()), size))
    return projects


class Corpus:
    """Deterministic synthetic chunks and queries."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        # Keyed term ids look random over uint32; frequencies follow Zipf's law.
        self.term_ids = self.rng.choice(2**32, size=VOCABULARY, replace=False)
        ranks = np.arange(1, VOCABULARY + 1)
        self.term_p = (1.0 / ranks) / np.sum(1.0 / ranks)

    def vectors(self, n: int) -> np.ndarray:
        v = self.rng.standard_normal((n, DENSE_DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def terms(self, n: int) -> tuple[list[int], list[float]]:
        picked = np.unique(self.rng.choice(VOCABULARY, size=n, p=self.term_p))
        freqs = self.rng.integers(1, 6, size=len(picked)).astype(float)
        return self.term_ids[picked].tolist(), freqs.tolist()

    def points(self, project: Project) -> list[IndexPoint]:
        vectors = self.vectors(project.size)
        documents = [str(uuid.uuid4()) for _ in range(max(1, project.size // 20))]
        points = []
        for i in range(project.size):
            indices, values = self.terms(TERMS_PER_CHUNK)
            points.append(
                IndexPoint(
                    chunk_id=str(uuid.uuid4()),
                    project_id=project.project_id,
                    document_id=documents[i % len(documents)],
                    chunk_index=i // len(documents),
                    dense=vectors[i],
                    sparse_indices=indices,
                    sparse_values=values,
                    encrypted_text=self.rng.bytes(600),
                    encrypted_title=self.rng.bytes(60),
                    encrypted_source=self.rng.bytes(80),
                    source_type=int(self.rng.integers(1, 5)),
                    start_offset=0,
                    end_offset=1000,
                    document_created_at=1.7e9 + float(self.rng.integers(0, 10**7)),
                )
            )
        return points

    def queries(self, n: int) -> list[tuple[np.ndarray, SparseTerms]]:
        vectors = self.vectors(n)
        out = []
        for v in vectors:
            indices, _ = self.terms(int(self.rng.integers(3, 7)))
            out.append((v, SparseTerms(indices, [1.0] * len(indices))))
        return out


async def fill(index: VectorIndex, corpus: Corpus, projects: list[Project]) -> float:
    """Upserts every project's points; returns points per second (generation excluded)."""
    spent, total = 0.0, 0
    for project in projects:
        points = corpus.points(project)
        for start in range(0, len(points), UPSERT_BATCH):
            batch = points[start : start + UPSERT_BATCH]
            began = time.perf_counter()
            await index.upsert(batch)
            spent += time.perf_counter() - began
            total += len(batch)
    return total / spent


def search_call(
    index: VectorIndex, mode: str, where: SearchFilter
) -> Callable[[np.ndarray, SparseTerms], Awaitable[object]]:
    if mode == "dense":
        return lambda v, s: index.search_dense(v, where, 10)
    if mode == "sparse":
        return lambda v, s: index.search_sparse(s.indices, s.values, where, 10)
    return lambda v, s: index.search_hybrid(v, s, where, 10)


async def latencies(
    index: VectorIndex,
    mode: str,
    where: SearchFilter,
    queries: list[tuple[np.ndarray, SparseTerms]],
) -> np.ndarray:
    call = search_call(index, mode, where)
    await call(*queries[0])  # warm-up
    samples = []
    for vector, sparse in queries:
        began = time.perf_counter()
        await call(vector, sparse)
        samples.append((time.perf_counter() - began) * 1000)
    return np.array(samples)


def row(label: str, samples: np.ndarray) -> str:
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return f"  {label:<34} {p50:9.2f} {p95:9.2f} {p99:9.2f}"


def filters(projects: list[Project]) -> dict[str, SearchFilter]:
    large = next(p for p in projects if p.name.startswith("large"))
    mid = next(p for p in projects if p.name.startswith("mid"))
    small = next(p for p in projects if p.name.startswith("small"))
    return {
        f"large ({large.size} pts)": SearchFilter(large.project_id),
        "large, created in 30% of range": SearchFilter(
            large.project_id, created_after=1.7e9, created_before=1.7e9 + 3e6
        ),
        f"mid ({mid.size} pts)": SearchFilter(mid.project_id),
        f"small ({small.size} pts)": SearchFilter(small.project_id),
    }


async def bench_edge(points: int, queries: int, seed: int) -> None:
    corpus = Corpus(seed)
    projects = tenants(points)
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        # The optimiser is deferred while loading, so upsert and HNSW build are timed apart.
        index = await EdgeVectorIndex.open(
            Path(tmp) / "qdrant", optimize_idle_seconds=3600, optimize_max_delay_seconds=3600
        )
        try:
            rate = await fill(index, corpus, projects)
            qs = corpus.queries(queries)
            where = filters(projects)
            cold = await latencies(index, "dense", where[next(iter(where))], qs)
            began = time.perf_counter()
            await index.optimize()
            built = time.perf_counter() - began
            stats = await index.stats()
            print(f"\nQdrant Edge, {stats['points']} points in {len(projects)} projects")
            print(f"  upsert: {rate:,.0f} points/s (batches of {UPSERT_BATCH})")
            print(
                f"  optimize (HNSW per large tenant): {built:.1f} s, {stats['segments']} segments"
            )
            print(f"  {'filtered search, ms':<34} {'p50':>9} {'p95':>9} {'p99':>9}")
            print(row("dense, large, before optimize", cold))
            for label, narrowed in where.items():
                for mode in MODES:
                    print(row(f"{mode}, {label}", await latencies(index, mode, narrowed, qs)))
        finally:
            await index.close()


async def bench_baseline(points: int, queries: int, seed: int) -> None:
    projects = tenants(points)
    results: dict[str, dict[str, np.ndarray]] = {}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        for name in ("edge", "local"):
            corpus = Corpus(seed)
            if name == "edge":
                index: VectorIndex = await EdgeVectorIndex.open(
                    Path(tmp) / "qdrant",
                    optimize_idle_seconds=3600,
                    optimize_max_delay_seconds=3600,
                )
            else:
                index = await ServerVectorIndex.open(location=":memory:")
            try:
                rates[name] = await fill(index, corpus, projects)
                if isinstance(index, EdgeVectorIndex):
                    await index.optimize()
                qs = corpus.queries(queries)
                where = filters(projects)
                results[name] = {
                    f"{mode}, {label}": await latencies(index, mode, where[label], qs)
                    for label in list(where)[::3]
                    for mode in MODES
                }
            finally:
                await index.close()
    print(
        f"\nBaseline at {sum(p.size for p in projects)} points: Qdrant Edge vs qdrant-client local"
    )
    print(
        f"  upsert points/s: edge {rates['edge']:,.0f}, local {rates['local']:,.0f} "
        f"(edge {rates['edge'] / rates['local']:.1f}x)"
    )
    print(f"  {'p50 latency, ms':<34} {'edge':>9} {'local':>9} {'local/edge':>11}")
    for label in results["edge"]:
        edge = float(np.percentile(results["edge"][label], 50))
        local = float(np.percentile(results["local"][label], 50))
        print(f"  {label:<34} {edge:9.2f} {local:9.2f} {local / edge:10.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--baseline-points", type=int, default=10_000, help="0 skips it")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    asyncio.run(bench_edge(args.points, args.queries, args.seed))
    if args.baseline_points:
        asyncio.run(bench_baseline(args.baseline_points, args.baseline_queries, args.seed))


if __name__ == "__main__":
    main()
