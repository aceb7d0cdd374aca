"""Retrieval quality of dense, keyword and hybrid search on the PostgreSQL manual.

    .venv/bin/python bench/hybrid_retrieval.py [--rounds 3] [--misses] [--json out.json]

Starts the four services in this process on the embedded default (SQLite files and the
embedded Qdrant Edge index in a temporary directory, no Redis, so no query is served from a
cache), creates a project, ingests the pages listed in bench/hybrid_retrieval_questions.json from
Debian's postgresql-doc-15 through IngestService.IngestDocument, then asks every question in
each mode through QueryService.Query over gRPC (top_k 5).

A question is answered when its answer string (whitespace-insensitive) appears in a returned
passage. Printed per mode: hit@1, hit@5, MRR@5 (overall and per question kind), and the query
latency seen by the client (p50/p99 over `--rounds` passes over the questions).

Hybrid weights come from HYBRID_DENSE_WEIGHT / HYBRID_KEYWORD_WEIGHT, as in the service.
Exit codes: 0 done, 2 the manual is not installed or the question set is inconsistent.
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

import grpc  # noqa: E402

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
from services.ingest.pipeline.extract import extract_html  # noqa: E402
from services.ingest.pipeline.normalize import normalize_text  # noqa: E402

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
QUESTIONS = Path(__file__).with_name("hybrid_retrieval_questions.json")
MODES = {
    "dense": query_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": query_pb2.RETRIEVAL_MODE_KEYWORD,
    "hybrid": query_pb2.RETRIEVAL_MODE_HYBRID,
}
TOP_K = 5
PASSPHRASE = "retrieval benchmark passphrase, not a secret"
SERVICES = ("crypto", "query", "ingest", "projects")


@dataclass(frozen=True, slots=True)
class Question:
    page: str
    kind: str
    question: str
    answer: str


@dataclass
class ModeResult:
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the answer
    latencies_ms: list[float] = field(default_factory=list)  # seen by the client
    embed_ms: list[float] = field(default_factory=list)  # server: embed and/or hash terms
    search_ms: list[float] = field(default_factory=list)  # server: index search (and fusion)

    def hit_at(self, k: int, only: list[bool] | None = None) -> float:
        ranks = self._select(only)
        return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)

    def mrr(self, only: list[bool] | None = None) -> float:
        ranks = self._select(only)
        return sum(1 / r for r in ranks if r is not None and r <= TOP_K) / len(ranks)

    def _select(self, only: list[bool] | None) -> list[int | None]:
        if only is None:
            return self.ranks
        return [r for r, keep in zip(self.ranks, only, strict=True) if keep]


def squeeze(text: str) -> str:
    return " ".join(text.split())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load_evaluation() -> tuple[list[str], list[Question], dict[str, tuple[str, str]]]:
    """The pages (title, normalized text) and questions; checks each answer is on its page."""
    spec = json.loads(QUESTIONS.read_text())
    pages: list[str] = spec["pages"]
    questions = [Question(**q) for q in spec["questions"]]
    texts: dict[str, tuple[str, str]] = {}
    for page in pages:
        extracted = extract_html((MANUAL / page).read_bytes())
        texts[page] = (extracted.title or page, normalize_text(extracted.text))
    problems = [
        f"{q.page}: answer {q.answer!r} is not on the page"
        for q in questions
        if q.page not in texts or squeeze(q.answer) not in squeeze(texts[q.page][1])
    ]
    if len(pages) != len(set(pages)):
        problems.append("a page is listed twice")
    if problems:
        print("Inconsistent question set:\n  " + "\n  ".join(problems), file=sys.stderr)
        raise SystemExit(2)
    return pages, questions, texts


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
    for name in SERVICES:
        servers[name] = Server(apps[name](settings))
        await servers[name].start(host="127.0.0.1", port=ports[name])
        channels[name] = grpc.aio.insecure_channel(f"127.0.0.1:{ports[name]}")
    return servers, channels


async def stop_stack(servers: dict[str, Server], channels: dict[str, grpc.aio.Channel]) -> None:
    for channel in channels.values():
        await channel.close()
    for name in reversed(SERVICES):
        if name in servers:
            await servers[name].stop(grace=1.0)


async def ingest_pages(
    channels: dict[str, grpc.aio.Channel], pages: list[str], texts: dict[str, tuple[str, str]]
) -> tuple[str, tuple[tuple[str, str], ...], int]:
    projects = projects_pb2_grpc.ProjectServiceStub(channels["projects"])
    ingest = ingest_pb2_grpc.IngestServiceStub(channels["ingest"])
    created = await projects.CreateProject(
        projects_pb2.CreateProjectRequest(name="postgresql-manual", passphrase=PASSPHRASE)
    )
    project_id = created.project.id
    unlocked = await projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=PASSPHRASE)
    )
    metadata = (("x-unlock-token", unlocked.unlock_token),)
    chunks = 0
    for page in pages:
        title, body = texts[page]
        response = await ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project_id, text=ingest_pb2.TextSource(title=title, body=body)
            ),
            metadata=metadata,
            timeout=600,
        )
        document = response.document
        if document.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED:
            raise RuntimeError(f"{page} was not ingested: {document.error}")
        chunks += document.chunk_count
    return project_id, metadata, chunks


async def ask(
    query: query_pb2_grpc.QueryServiceStub,
    project_id: str,
    metadata: tuple[tuple[str, str], ...],
    question: Question,
    mode: int,
) -> tuple[int | None, float, query_pb2.QueryResponse]:
    started = time.perf_counter()
    response = await query.Query(
        query_pb2.QueryRequest(
            project_id=project_id, query=question.question, top_k=TOP_K, mode=mode
        ),
        metadata=metadata,
        timeout=60,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.mode != mode:
        raise RuntimeError(f"asked for mode {mode}, the service used {response.mode}")
    wanted = squeeze(question.answer)
    rank = next((i for i, p in enumerate(response.passages, 1) if wanted in squeeze(p.text)), None)
    return rank, elapsed_ms, response


async def run(
    pages: list[str],
    questions: list[Question],
    texts: dict[str, tuple[str, str]],
    rounds: int,
    show_misses: bool,
) -> dict:
    kinds = sorted({q.kind for q in questions})
    with tempfile.TemporaryDirectory(prefix="cc-retrieval-") as tmp:
        servers, channels = await start_stack(Path(tmp))
        try:
            started = time.perf_counter()
            project_id, metadata, chunks = await ingest_pages(channels, pages, texts)
            ingest_s = time.perf_counter() - started
            print(
                f"Ingested {len(pages)} pages of the PostgreSQL 15 manual: {chunks} chunks "
                f"in {ingest_s:.1f} s. {len(questions)} questions "
                f"({', '.join(f'{sum(q.kind == k for q in questions)} {k}' for k in kinds)}), "
                f"top_k={TOP_K}, {rounds} latency round(s)."
            )
            index = servers["query"].app.index
            if hasattr(index, "optimize"):
                await index.optimize()  # build the HNSW graphs now, not during measurement
            query = query_pb2_grpc.QueryServiceStub(channels["query"])
            results = {name: ModeResult() for name in MODES}
            misses: dict[str, list[tuple[Question, list[str]]]] = {name: [] for name in MODES}
            for round_number in range(rounds):
                # Modes interleaved per question, so drift in machine load hits all alike.
                for question in questions:
                    for name, mode in MODES.items():
                        rank, ms, response = await ask(query, project_id, metadata, question, mode)
                        results[name].latencies_ms.append(ms)
                        results[name].embed_ms.append(response.timings.embed_ms)
                        results[name].search_ms.append(response.timings.search_ms)
                        titles = [p.document_title for p in response.passages]
                        if round_number == 0:
                            results[name].ranks.append(rank)
                            if rank is None:
                                misses[name].append((question, titles))
        finally:
            await stop_stack(servers, channels)

    print_table(results, questions, kinds)
    if show_misses:
        for name in MODES:
            print(f"\nMissed in {name} mode (top {TOP_K} titles):")
            for question, titles in misses[name]:
                print(f"  [{question.kind}] {question.question!r} ({question.page}) -> {titles}")
    return summary(results, questions, kinds)


def summary(results: dict[str, ModeResult], questions: list[Question], kinds: list[str]) -> dict:
    out = {}
    for name, result in results.items():
        out[name] = {
            "hit@1": result.hit_at(1),
            "hit@5": result.hit_at(5),
            "mrr@5": result.mrr(),
            "p50_ms": percentile(result.latencies_ms, 0.50),
            "p99_ms": percentile(result.latencies_ms, 0.99),
            "server_embed_p50_ms": percentile(result.embed_ms, 0.50),
            "server_search_p50_ms": percentile(result.search_ms, 0.50),
            "by_kind": {
                kind: {
                    "hit@5": result.hit_at(5, [q.kind == kind for q in questions]),
                    "mrr@5": result.mrr([q.kind == kind for q in questions]),
                }
                for kind in kinds
            },
        }
    return out


def print_table(results: dict[str, ModeResult], questions: list[Question], kinds: list[str]):
    figures = summary(results, questions, kinds)
    kind_columns = [f"{kind} hit@5" for kind in kinds]
    header = [
        "mode", "hit@1", "hit@5", "MRR@5", *kind_columns,
        "p50 ms", "p99 ms", "embed p50", "search p50",
    ]  # fmt: skip
    rows = []
    for name, f in figures.items():
        rows.append(
            [
                name,
                f"{f['hit@1']:.3f}",
                f"{f['hit@5']:.3f}",
                f"{f['mrr@5']:.3f}",
                *(f"{f['by_kind'][kind]['hit@5']:.3f}" for kind in kinds),
                f"{f['p50_ms']:.1f}",
                f"{f['p99_ms']:.1f}",
                f"{f['server_embed_p50_ms']:.1f}",
                f"{f['server_search_p50_ms']:.1f}",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    print(
        "(p50/p99: client-side query latency; embed/search p50: the server's own timings of "
        "embedding + term hashing and of the index search)"
    )
    best_single = max(figures["dense"]["hit@5"], figures["keyword"]["hit@5"])
    verdict = "beats" if figures["hybrid"]["hit@5"] > best_single else "does NOT beat"
    print(f"\nhybrid {verdict} both single modes on hit@5.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the questions")
    parser.add_argument("--misses", action="store_true", help="list the questions each mode missed")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not MANUAL.is_dir():
        print(
            f"The PostgreSQL manual is not installed at {MANUAL}. Install it with:\n"
            "  apt-get install postgresql-doc-15",
            file=sys.stderr,
        )
        return 2
    pages, questions, texts = load_evaluation()
    figures = asyncio.run(run(pages, questions, texts, args.rounds, args.misses))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
