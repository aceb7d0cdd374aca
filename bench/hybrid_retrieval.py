"""Retrieval quality of dense, keyword and hybrid search on three public corpora.

    .venv/bin/python bench/hybrid_retrieval.py [--set NAME ...] [--rounds 1] [--misses]
                                               [--json out.json]

Starts the four services in this process on the embedded default (SQLite files and the
embedded Qdrant Edge index in a temporary directory, no Redis, so no query is served from a
cache). For each question set of bench/retrieval_sets (a technical manual, man pages, prose;
see its README-like docstring) it creates a project, ingests the set's documents through
IngestService.IngestDocument, then asks every question in each mode through QueryService.Query
over gRPC (top_k 5).

A question is answered when its answer string (whitespace-insensitive) appears in a returned
passage. Printed per set, mode and half (held-back, tuning): hit@1, hit@5, MRR@5 and hit@5 per
question kind; then the query latency seen by the client (p50/p99 over `--rounds` passes).
Variants are compared offline, on the tuning halves, by tools/retrieval_lab.py.

Hybrid weights come from HYBRID_DENSE_WEIGHT / HYBRID_KEYWORD_WEIGHT, as in the service.
Exit codes: 0 done, 2 a corpus is not installed or a question set is inconsistent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import grpc  # noqa: E402
from retrieval_sets import (  # noqa: E402
    SET_NAMES,
    MissingCorpus,
    Question,
    QuestionSet,
    load_set,
    squeeze,
)

from contextcache.v1 import (  # noqa: E402
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.config import Settings  # noqa: E402
from runtime.ports import free_port  # noqa: E402
from runtime.server import Server  # noqa: E402
from runtime.tls import workload_identity  # noqa: E402

MODES = {
    "dense": query_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": query_pb2.RETRIEVAL_MODE_KEYWORD,
    "hybrid": query_pb2.RETRIEVAL_MODE_HYBRID,
}
TOP_K = 5
PASSPHRASE = "retrieval benchmark passphrase, not a secret"
SERVICES = ("crypto", "query", "ingest", "projects")


@dataclass
class ModeResult:
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the answer
    latencies_ms: list[float] = field(default_factory=list)  # seen by the client
    embed_ms: list[float] = field(default_factory=list)  # server: embed and/or hash terms
    search_ms: list[float] = field(default_factory=list)  # server: index search (and fusion)

    def hit_at(self, k: int, only: list[bool]) -> float:
        ranks = self._select(only)
        return sum(1 for r in ranks if r is not None and r <= k) / max(1, len(ranks))

    def mrr(self, only: list[bool]) -> float:
        ranks = self._select(only)
        return sum(1 / r for r in ranks if r is not None and r <= TOP_K) / max(1, len(ranks))

    def _select(self, only: list[bool]) -> list[int | None]:
        return [r for r, keep in zip(self.ranks, only, strict=True) if keep]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def start_stack(data_dir: Path) -> tuple[dict[str, Server], dict[str, grpc.aio.Channel]]:
    from services.crypto.app import CryptoApp
    from services.ingest.app import IngestApp
    from services.projects.app import ProjectsApp
    from services.query.app import QueryApp

    ports = {name: free_port() for name in SERVICES}
    settings = Settings(
        environment="development",
        log_level="WARNING",
        data_dir=data_dir,
        redis_url=None,
        database_url=None,
        qdrant_url=None,
        qdrant_path=None,
        token_sealing_key=base64.b64encode(os.urandom(32)).decode(),
        **{f"{name}_addr": f"127.0.0.1:{port}" for name, port in ports.items()},
    )
    apps = {"crypto": CryptoApp, "query": QueryApp, "ingest": IngestApp, "projects": ProjectsApp}
    servers: dict[str, Server] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    # Mutual TLS, as the operator workload (the development CA issues its certificate).
    credentials = workload_identity(settings, "operator").channel_credentials()
    for name in SERVICES:
        servers[name] = Server(apps[name](settings))
        await servers[name].start(host="127.0.0.1", port=ports[name])
        channels[name] = grpc.aio.secure_channel(f"127.0.0.1:{ports[name]}", credentials)
    return servers, channels


async def stop_stack(servers: dict[str, Server], channels: dict[str, grpc.aio.Channel]) -> None:
    for channel in channels.values():
        await channel.close()
    for name in reversed(SERVICES):
        if name in servers:
            await servers[name].stop(grace=1.0)


async def ingest_set(
    channels: dict[str, grpc.aio.Channel], qset: QuestionSet
) -> tuple[str, str, int]:
    """A new project holding the set's documents: (project id, unlock token, chunks)."""
    projects = projects_pb2_grpc.ProjectServiceStub(channels["projects"])
    ingest = ingest_pb2_grpc.IngestServiceStub(channels["ingest"])
    created = await projects.CreateProject(
        projects_pb2.CreateProjectRequest(name=f"bench-{qset.name}", passphrase=PASSPHRASE)
    )
    project_id = created.project.id
    unlocked = await projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=PASSPHRASE)
    )
    metadata = (("x-unlock-token", unlocked.unlock_token),)
    chunks = 0
    for title, body in qset.documents.values():
        response = await ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project_id, text=ingest_pb2.TextSource(title=title, body=body)
            ),
            metadata=metadata,
            timeout=900,
        )
        document = response.document
        if document.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED:
            raise RuntimeError(f"{title} was not ingested: {document.error}")
        chunks += document.chunk_count
    return project_id, unlocked.unlock_token, chunks


def answer_rank(answer: str, texts: list[str]) -> int | None:
    wanted = squeeze(answer)
    return next((i for i, text in enumerate(texts, 1) if wanted in squeeze(text)), None)


async def ask(
    query: query_pb2_grpc.QueryServiceStub,
    project_id: str,
    token: str,
    question: Question,
    mode: int,
) -> tuple[int | None, float, query_pb2.QueryResponse]:
    started = time.perf_counter()
    response = await query.Query(
        query_pb2.QueryRequest(
            project_id=project_id, query=question.question, top_k=TOP_K, mode=mode
        ),
        metadata=(("x-unlock-token", token),),
        timeout=60,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.mode != mode:
        raise RuntimeError(f"asked for mode {mode}, the service used {response.mode}")
    rank = answer_rank(question.answer, [p.text for p in response.passages])
    return rank, elapsed_ms, response


async def evaluate_set(
    servers: dict[str, Server],
    channels: dict[str, grpc.aio.Channel],
    qset: QuestionSet,
    rounds: int,
    show_misses: bool,
) -> dict:
    started = time.perf_counter()
    project_id, token, chunks = await ingest_set(channels, qset)
    ingest_s = time.perf_counter() - started
    index = servers["query"].app.index
    if hasattr(index, "optimize"):
        await index.optimize()  # build the HNSW graphs now, not during measurement
    kinds = sorted({q.kind for q in qset.questions})
    print(
        f"\n== {qset.name} ({qset.kind}): {len(qset.documents)} documents, {chunks} chunks, "
        f"ingested in {ingest_s:.0f} s. {len(qset.questions)} questions "
        f"({', '.join(f'{sum(q.kind == k for q in qset.questions)} {k}' for k in kinds)}), "
        f"{sum(q.held_back for q in qset.questions)} held back. Source: {qset.source}."
    )
    query = query_pb2_grpc.QueryServiceStub(channels["query"])
    results = {name: ModeResult() for name in MODES}
    misses: dict[str, list[tuple[Question, list[str]]]] = {name: [] for name in MODES}
    for round_number in range(rounds):
        # Modes interleaved per question, so drift in machine load hits all alike.
        for question in qset.questions:
            for name, mode in MODES.items():
                rank, ms, response = await ask(query, project_id, token, question, mode)
                results[name].latencies_ms.append(ms)
                results[name].embed_ms.append(response.timings.embed_ms)
                results[name].search_ms.append(response.timings.search_ms)
                if round_number == 0:
                    results[name].ranks.append(rank)
                    if rank is None:
                        titles = [p.document_title for p in response.passages]
                        misses[name].append((question, titles))
    figures = summary(results, qset.questions, kinds)
    print_table(figures, kinds)
    if show_misses:
        for name in MODES:
            print(f"\nMissed in {name} mode (top {TOP_K} titles):")
            for question, titles in misses[name]:
                half = "held" if question.held_back else "tune"
                print(
                    f"  [{half} {question.kind}] {question.question!r} ({question.document})"
                    f" -> {titles}"
                )
    return figures


HALVES = {"held-back": True, "tuning": False}


def summary(results: dict[str, ModeResult], questions: list[Question], kinds: list[str]) -> dict:
    out: dict = {}
    for half, held in HALVES.items():
        out[half] = {}
        for name, result in results.items():
            only = [q.held_back == held for q in questions]
            out[half][name] = {
                "questions": sum(only),
                "hit@1": result.hit_at(1, only),
                "hit@5": result.hit_at(5, only),
                "mrr@5": result.mrr(only),
                "by_kind": {
                    kind: result.hit_at(
                        5, [o and q.kind == kind for o, q in zip(only, questions, strict=True)]
                    )
                    for kind in kinds
                },
            }
    out["latency"] = {
        name: {
            "p50_ms": percentile(result.latencies_ms, 0.50),
            "p99_ms": percentile(result.latencies_ms, 0.99),
            "server_embed_p50_ms": percentile(result.embed_ms, 0.50),
            "server_search_p50_ms": percentile(result.search_ms, 0.50),
        }
        for name, result in results.items()
    }
    return out


def print_table(figures: dict, kinds: list[str]) -> None:
    header = ["half", "mode", "hit@1", "hit@5", "MRR@5", *(f"{k} hit@5" for k in kinds)]
    rows = []
    for half in HALVES:
        for name, f in figures[half].items():
            rows.append(
                [
                    f"{half} ({f['questions']})",
                    name,
                    f"{f['hit@1']:.3f}",
                    f"{f['hit@5']:.3f}",
                    f"{f['mrr@5']:.3f}",
                    *(f"{f['by_kind'][kind]:.3f}" for kind in kinds),
                ]
            )
    latency = [["mode", "p50 ms", "p99 ms", "embed p50", "search p50"]]
    for name, f in figures["latency"].items():
        latency.append(
            [
                name,
                *(
                    f"{f[key]:.1f}"
                    for key in ("p50_ms", "p99_ms", "server_embed_p50_ms", "server_search_p50_ms")
                ),
            ]
        )
    for table in (rows and [header, *rows], latency):
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        print()
        for row in table:
            cells = zip(row, widths, strict=True)
            print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    held = figures["held-back"]
    best = max(held["dense"]["hit@5"], held["keyword"]["hit@5"])
    best_1 = max(held["dense"]["hit@1"], held["keyword"]["hit@1"])
    n = held["hybrid"]["questions"]
    gain = (held["hybrid"]["hit@5"] - best) * 100
    print(
        f"\nheld-back: hybrid hit@5 {gain:+.1f} points against the better single mode "
        f"(target >= +2; one question is {100 / n:.1f} points); hybrid hit@1 "
        f"{'>=' if held['hybrid']['hit@1'] >= best_1 else '<'} the better single mode's."
    )


async def run(sets: list[QuestionSet], rounds: int, show_misses: bool) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory(prefix="cc-retrieval-") as tmp:
        servers, channels = await start_stack(Path(tmp))
        try:
            for qset in sets:
                figures[qset.name] = await evaluate_set(
                    servers, channels, qset, rounds, show_misses
                )
        finally:
            await stop_stack(servers, channels)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=SET_NAMES, help="default: all")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the questions")
    parser.add_argument("--misses", action="store_true", help="list the questions each mode missed")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    try:
        sets = [load_set(name) for name in args.set or SET_NAMES]
    except (MissingCorpus, ValueError) as problem:
        print(problem, file=sys.stderr)
        return 2
    figures = asyncio.run(run(sets, args.rounds, args.misses))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
