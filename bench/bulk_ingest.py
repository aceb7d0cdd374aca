"""Bulk background ingestion end to end against the bare model, in the same run.

    .venv/bin/python bench/bulk_ingest.py [--megabytes 2.5] [--files 50] [--modes embedded,rq]

Corpus: a folder of public text files assembled from this machine's Debian packages — the
packages' changelogs (/usr/share/doc/*/changelog*.gz, decompressed), taken in path order
among those of 30–70 KB until at least --files files and --megabytes MB. Every file is sent
at once as an IngestDocument upload (.txt) with background=true; the run ends when the last
document is completed. Modes:
- embedded: the embedded default in this process (SQLite, embedded index, no Redis: jobs run
  in the ingest service's process);
- rq: PostgreSQL, Redis and one RQ worker process (`python -m services.ingest.worker`) per
  core of this machine.
Prints for each mode: chunks/s end to end (first upload sent → last document completed), the
bare model's chunks/s (one Embedder.embed call, the runtime ingestion uses, of --bare-chunks of
the same chunks spread over the run, measured right before and right after, while the stack
idles) and the ratio to their mean (target: at least 90%), retries (attempts beyond the
first, transient failures: target zero), and, sent inline while the bulk runs, the 30 KB dot
text ("Intro " + 30,000 dots + "end") with its answer time, beside the ingest service's
health checks over the run (asked every 50 ms: p50, p99, slowest).

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from contextcache.v1 import ingest_pb2  # noqa: E402
from retrieval.embeddings import Embedder, bulk_runtime, load_runtime  # noqa: E402
from runtime.config import Settings  # noqa: E402
from services.ingest.ingestion import prepare_text  # noqa: E402
from services.ingest.pipeline.chunker import Chunker  # noqa: E402
from tests.conftest import (  # noqa: E402
    fresh_database,
    new_project,
    postgres_available,
    redis_available,
    running_stack,
)

DOCS = Path("/usr/share/doc")
DOT_TEXT = "Intro " + "." * 30000 + "end"
TERMINAL = (ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED)
HEALTH_EVERY = 0.05
RUN_TIMEOUT = 3600.0


def assemble(folder: Path, files: int, megabytes: float) -> list[Path]:
    """Writes the corpus into `folder` as .txt files; returns their paths."""
    written, total, seen = [], 0, set()
    for source in sorted(DOCS.glob("*/changelog*.gz")):
        try:
            text = gzip.decompress(source.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not 30_000 <= len(text.encode()) <= 70_000:
            continue
        # Packages built from one source share a changelog: a duplicate would be refused.
        digest = prepare_text(text, source.name).content_hash
        if digest in seen:
            continue
        seen.add(digest)
        target = folder / f"{source.parent.name}.{source.name.removesuffix('.gz')}.txt"
        target.write_text(text)
        written.append(target)
        total += len(text.encode())
        if len(written) >= files and total >= megabytes * 1_000_000:
            break
    return written


def chunk_texts(paths: list[Path]) -> list[str]:
    chunker = Chunker(Embedder.max_tokens, overlap_tokens=32)
    texts = []
    for path in paths:
        prepared = prepare_text(path.read_text(), path.name)
        texts.extend(chunk.text for chunk in chunker.split(prepared.text))
    return texts


def bare_model(texts: list[str]) -> float:
    started = time.perf_counter()
    Embedder().embed(texts)
    return len(texts) / (time.perf_counter() - started)


def sample(texts: list[str], count: int) -> list[str]:
    step = max(1, len(texts) // count)
    return texts[::step][:count]


@dataclass
class Outcome:
    mode: str
    documents: int
    chunks: int
    rate: float
    bare_before: float
    bare_after: float
    failed: int
    retries: int
    transient_failures: int
    dot_seconds: float
    health_ms: list[float]

    @property
    def ratio(self) -> float:
        return self.rate / ((self.bare_before + self.bare_after) / 2)


class HealthPoller:
    """Asks the ingest service's overall health every HEALTH_EVERY seconds; keeps latencies."""

    def __init__(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                await self.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            self.latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(HEALTH_EVERY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def documents_of(stack, project_id: str, token) -> list:  # type: ignore[no-untyped-def]
    found, page_token = [], ""
    while True:
        page = await stack.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(
                project_id=project_id, page_size=100, page_token=page_token
            ),
            metadata=token,
            timeout=30,
        )
        found.extend(page.documents)
        page_token = page.next_page_token
        if not page_token:
            return found


async def bulk_run(stack, mode: str, paths: list[Path], bare: list[str]) -> Outcome:  # type: ignore[no-untyped-def]
    project, token = await new_project(stack, name=f"bulk-{mode}-{uuid.uuid4().hex[:6]}")
    before = bare_model(bare)  # the stack idles meanwhile
    poller = HealthPoller(stack.channels["ingest"])
    poller.start()
    started = time.perf_counter()
    for path in paths:
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                file=ingest_pb2.FileSource(filename=path.name, content=path.read_bytes()),
                background=True,
            ),
            metadata=token,
            timeout=60,
        )
    # The dot text, inline, while the bulk runs (the stall the pathological inputs caused).
    dot_project, dot_token = await new_project(stack, name=f"dots-{mode}-{uuid.uuid4().hex[:6]}")
    dot_started = time.perf_counter()
    await stack.ingest.IngestDocument(
        ingest_pb2.IngestDocumentRequest(
            project_id=dot_project.id, text=ingest_pb2.TextSource(title="dots", body=DOT_TEXT)
        ),
        metadata=dot_token,
        timeout=120,
    )
    dot_seconds = time.perf_counter() - dot_started
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        documents = await documents_of(stack, project.id, token)
        if len(documents) == len(paths) and all(d.status in TERMINAL for d in documents):
            break
        await asyncio.sleep(0.25)
    elapsed = time.perf_counter() - started
    await poller.stop()
    after = bare_model(bare)
    chunks = sum(d.chunk_count for d in documents)
    return Outcome(
        mode=mode,
        documents=len(documents),
        chunks=chunks,
        rate=chunks / elapsed,
        bare_before=before,
        bare_after=after,
        failed=sum(d.status == ingest_pb2.DOCUMENT_STATUS_FAILED for d in documents),
        retries=sum(max(0, d.attempts - 1) for d in documents),
        transient_failures=sum(d.transient_failures for d in documents),
        dot_seconds=dot_seconds,
        health_ms=poller.latencies,
    )


def settings_factory(data_dir: Path, **fixed: object):  # type: ignore[no-untyped-def]
    def build(**overrides: object) -> Settings:
        return Settings(
            environment="test", data_dir=data_dir, log_level="WARNING", **fixed, **overrides
        )

    return build


async def embedded(data_dir: Path, paths: list[Path], bare: list[str]) -> Outcome:
    async with running_stack(settings_factory(data_dir)) as stack:
        return await bulk_run(stack, "embedded", paths, bare)


async def with_rq(data_dir: Path, paths: list[Path], bare: list[str], workers: int) -> Outcome:
    from tests.ingest.test_jobs import WorkerProcess, rq_queue_name

    redis_url = "redis://127.0.0.1:6379/0"
    with fresh_database() as database_url, rq_queue_name(redis_url) as queue:
        factory = settings_factory(
            data_dir, database_url=database_url, redis_url=redis_url, ingest_queue=queue
        )
        async with running_stack(factory) as stack:
            processes = [WorkerProcess(stack, data_dir / f"worker-{i}.log") for i in range(workers)]
            try:
                for process in processes:
                    await process.ready()
                return await bulk_run(stack, f"rq ({workers} workers)", paths, bare)
            finally:
                for process in processes:
                    process.kill()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=float, default=2.5)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--bare-chunks", type=int, default=320)
    parser.add_argument("--modes", default="embedded,rq", help="comma-separated")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if "rq" in modes and not (postgres_available() and redis_available()):
        print("the rq mode needs PostgreSQL and Redis on 127.0.0.1", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        paths = assemble(folder, args.files, args.megabytes)
        size = sum(p.stat().st_size for p in paths)
        texts = chunk_texts(paths)
        bare = sample(texts, args.bare_chunks)
        load_runtime()
        Embedder().embed(["warm up"] * 8)
        print(
            f"corpus: {len(paths)} Debian changelogs from {DOCS}, {size / 1e6:.2f} MB, "
            f"about {len(texts)} chunks; embedding runtime: {bulk_runtime()}"
        )
        outcomes = []
        for mode in modes:
            data_dir = Path(tmp) / mode
            data_dir.mkdir()
            if mode == "embedded":
                outcomes.append(asyncio.run(embedded(data_dir, paths, bare)))
            else:
                outcomes.append(asyncio.run(with_rq(data_dir, paths, bare, args.workers)))
    for o in outcomes:
        print(
            f"{o.mode}: {o.documents} documents, {o.chunks} chunks, pipeline {o.rate:.1f} "
            f"chunks/s, bare {o.bare_before:.1f}/{o.bare_after:.1f}; pipeline / bare: "
            f"{o.ratio:.0%} (target >= 90%); failed {o.failed}, retries {o.retries}, "
            f"transient failures {o.transient_failures}"
        )
        print(
            f"  30 KB dot text inline during the run: {o.dot_seconds:.2f} s; ingest health "
            f"({len(o.health_ms)} checks): p50 {statistics.median(o.health_ms or [0]):.0f} ms, "
            f"p99 {percentile(o.health_ms, 0.99):.0f} ms, slowest {max(o.health_ms or [0]):.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
