"""Ingest benchmark: the whole pipeline against the bare embedding model, in the same run.

Text: the PostgreSQL manual (Debian's postgresql-doc-15), each HTML page reduced to its main
text by the project's extractor, taken in order until at least --megabytes of text. It is
ingested twice, each time into a project of its own:
- as pages: one document per page (about 5 KB each), with 1, 4 and 8 IngestDocument calls in
  flight (--pages-in-flight);
- as long documents: consecutive pages joined into documents of about --document-kb KB (the
  size of a manual's chapter or a long PDF), with 1 and 2 in flight (--documents-in-flight).

Each pipeline run is IngestDocument inline over gRPC to the in-process stack (crypto, query,
ingest, projects; PostgreSQL when reachable, else SQLite). Prints for each run its chunks/s
and the ratio to the bare model (target: at least 97%). The bare model (one Embedder.embed
call: the workers and batches the pipeline uses, kept busy to the end, nothing else running)
embeds a sample of the same run's chunks right before and right after each pipeline run, and
the ratio is taken against the mean of the two: this machine's speed drifts by 10% from one
minute to the next, so a baseline measured once would decide the ratio more than the
pipeline does. Then documents/s for many small documents (short
texts, a few calls in flight).

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from contextcache.v1 import ingest_pb2
from retrieval.embeddings import Embedder, bulk_runtime, load_runtime
from runtime.config import Settings
from services.ingest.ingestion import prepare_text
from services.ingest.pipeline.chunker import Chunker
from services.ingest.pipeline.errors import IngestError
from services.ingest.pipeline.extract import extract_html
from tests.conftest import fresh_database, new_project, postgres_available, running_stack

MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
INSTALL_HINT = (
    f"The PostgreSQL manual is not installed at {MANUAL}.\n"
    "Install it with:  sudo apt-get install postgresql-doc-15\n"
    "(or pass --html-dir with a directory of HTML pages)"
)


def load_pages(html_dir: Path, megabytes: float) -> list[tuple[str, str]]:
    """(title, main text) of pages, in file-name order, until `megabytes` of distinct text."""
    pages, seen, total = [], set(), 0
    for path in sorted(html_dir.glob("*.html")):
        try:
            extracted = extract_html(path.read_bytes())
            prepared = prepare_text(extracted.text, extracted.title or path.stem)
        except IngestError:
            continue  # a page without main text (an index of links)
        if prepared.content_hash in seen:
            continue
        seen.add(prepared.content_hash)
        pages.append((prepared.title, prepared.text))
        total += len(prepared.text.encode())
        if total >= megabytes * 1_000_000:
            break
    return pages


def small_texts(pages: list[tuple[str, str]], count: int) -> list[str]:
    """`count` distinct short documents: single paragraphs of the manual, 200–600 bytes."""
    texts, seen = [], set()
    for _, text in reversed(pages):
        for paragraph in text.split("\n\n"):
            size = len(paragraph.encode())
            digest = hashlib.sha256(paragraph.encode()).digest()
            if 200 <= size <= 600 and digest not in seen:
                seen.add(digest)
                texts.append(paragraph)
                if len(texts) == count:
                    return texts
    return texts


def join_pages(pages: list[tuple[str, str]], kilobytes: float) -> list[tuple[str, str]]:
    """Consecutive pages joined into documents of at least `kilobytes` KB (the last one may
    be shorter), titled after their first page."""
    documents, title, parts, size = [], "", [], 0
    for page_title, text in pages:
        title = title or page_title
        parts.append(text)
        size += len(text.encode())
        if size >= kilobytes * 1000:
            documents.append((title, "\n\n".join(parts)))
            title, parts, size = "", [], 0
    if parts:
        documents.append((title, "\n\n".join(parts)))
    return documents


def sample(chunk_texts: list[str], count: int) -> list[str]:
    """`count` chunks spread evenly over the run (its mix of lengths)."""
    step = max(1, len(chunk_texts) // count)
    return chunk_texts[::step][:count]


def bare_model(chunk_texts: list[str]) -> float:
    """Chunks/s of the model at its best: one Embedder.embed call of all the texts (the
    embedding workers then keep every CPU busy until the last batch, on batches of similar
    lengths), nothing else running."""
    started = time.perf_counter()
    Embedder().embed(chunk_texts)
    return len(chunk_texts) / (time.perf_counter() - started)


def settings_factory(data_dir: Path, database_url: str | None):
    def build(**overrides: object) -> Settings:
        return Settings(
            environment="test",
            data_dir=data_dir,
            database_url=database_url,
            log_level="WARNING",
            **overrides,
        )

    return build


async def ingest_documents(
    stack, documents: list[tuple[str, str]], in_flight: int, name: str
) -> tuple[int, float]:
    """(chunks stored, chunks/s) for the documents ingested inline, `in_flight` calls at a
    time, into a project of their own (nothing is deduplicated against another run)."""
    project, token = await new_project(stack, name=name)
    gate = asyncio.Semaphore(in_flight)

    async def ingest(title: str, body: str) -> int:
        async with gate:
            response = await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id, text=ingest_pb2.TextSource(title=title, body=body)
                ),
                metadata=token,
                timeout=600,
            )
            return response.document.chunk_count

    started = time.perf_counter()
    chunks = sum(await asyncio.gather(*(ingest(title, body) for title, body in documents)))
    return chunks, chunks / (time.perf_counter() - started)


@dataclass
class Run:
    label: str
    chunks: int
    rate: float
    bare_before: float
    bare_after: float

    @property
    def ratio(self) -> float:
        return self.rate / ((self.bare_before + self.bare_after) / 2)


async def runs(
    stack, corpora: list[tuple[str, list[tuple[str, str]], list[int]]], bare_chunks: int
) -> list[Run]:
    """Each corpus at each number of calls in flight, between two bare-model measurements."""
    chunker = Chunker(Embedder.max_tokens, overlap_tokens=32)
    done = []
    for label, documents, in_flight in corpora:
        texts = sample([c.text for _, t in documents for c in chunker.split(t)], bare_chunks)
        bare = bare_model(texts)  # the stack is idle meanwhile
        for n in in_flight:
            chunks, rate = await ingest_documents(stack, documents, n, f"bench-{label}-{n}")
            after = bare_model(texts)
            done.append(Run(f"{len(documents)} {label}, {n} in flight", chunks, rate, bare, after))
            bare = after
    return done


async def small_documents(stack, smalls: list[str], concurrency: int) -> float:
    """Documents/s for short texts ingested inline, `concurrency` calls at a time."""
    project, token = await new_project(stack, name="bench-small")
    gate = asyncio.Semaphore(concurrency)

    async def ingest(body: str) -> None:
        async with gate:
            await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id, text=ingest_pb2.TextSource(body=body)
                ),
                metadata=token,
                timeout=600,
            )

    started = time.perf_counter()
    await asyncio.gather(*(ingest(body) for body in smalls))
    return len(smalls) / (time.perf_counter() - started)


async def measure(
    data_dir: Path, database_url: str | None, corpora, bare_chunks: int, smalls, concurrency
) -> tuple[list[Run], float]:
    async with running_stack(settings_factory(data_dir, database_url)) as stack:
        measured = await runs(stack, corpora, bare_chunks)
        return measured, await small_documents(stack, smalls, concurrency)


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--html-dir", type=Path, default=MANUAL)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--pages-in-flight", default="1,4,8", help="comma-separated")
    parser.add_argument("--document-kb", type=float, default=128)
    parser.add_argument("--documents-in-flight", default="1,2", help="comma-separated")
    parser.add_argument(
        "--bare-chunks", type=int, default=320, help="chunks per bare-model measurement"
    )
    parser.add_argument("--small-documents", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="small documents in flight")
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if PostgreSQL is up")
    args = parser.parse_args()
    if not args.html_dir.is_dir() or not any(args.html_dir.glob("*.html")):
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    pages = load_pages(args.html_dir, args.megabytes)
    text_bytes = sum(len(text.encode()) for _, text in pages)
    corpora = [
        ("pages", pages, numbers(args.pages_in_flight)),
        (
            f"documents of ~{args.document_kb:g} KB",
            join_pages(pages, args.document_kb),
            numbers(args.documents_in_flight),
        ),
    ]
    smalls = small_texts(pages, args.small_documents)
    load_runtime()
    Embedder().embed(["warm up"] * 8)
    print(f"text: {len(pages)} pages of {args.html_dir}, {text_bytes / 1e6:.2f} MB")

    use_postgres = not args.sqlite and postgres_available()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        database_url = stack.enter_context(fresh_database()) if use_postgres else None
        measured, documents = asyncio.run(
            measure(Path(tmp), database_url, corpora, args.bare_chunks, smalls, args.concurrency)
        )
    store = "PostgreSQL" if use_postgres else "SQLite"
    print(
        f"pipeline: IngestDocument inline over gRPC, {store}; bare model: one Embedder.embed "
        f"call of {args.bare_chunks} of the run's chunks, before and after; embedding runtime "
        f"(both): {bulk_runtime()} (EMBEDDING_RUNTIME=torch for the other)"
    )
    for run in measured:
        print(
            f"{run.label}: pipeline {run.rate:.1f} chunks/s ({run.chunks} chunks), "
            f"bare {run.bare_before:.1f}/{run.bare_after:.1f}; "
            f"pipeline / bare: {run.ratio:.0%} (target >= 97%)"
        )
    print(
        f"small documents ({len(smalls)} texts of 200-600 bytes, {args.concurrency} in flight): "
        f"{documents:.1f} documents/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
