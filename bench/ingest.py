"""Ingest benchmark: the whole pipeline against the bare embedding model, in the same run.

Text: the PostgreSQL manual (Debian's postgresql-doc-15), each HTML page reduced to its main
text by the project's extractor, taken in order until at least --megabytes of text. Prints:
- chunks/s of the bare model (Embedder.embed on the pipeline's own chunks, batched), measured
  before and after the pipeline runs: this machine's speed drifts between minutes, so the
  ratio is taken against the mean of the two;
- chunks/s of the whole pipeline: IngestDocument inline, one page per call, over gRPC to the
  in-process stack (crypto, query, ingest, projects; PostgreSQL when reachable, else SQLite),
  with 1, 4 and 8 calls in flight (--pages-in-flight), each into a project of its own;
- the ratio pipeline / bare for each (target: at least 90%). Within a document the model
  embeds while keyword terms, facts and encryption are done; with several documents in flight
  the ingest service embeds their chunks in shared batches while their other steps (crypto,
  storage, indexing) overlap with the model;
- documents/s for many small documents (short texts, a few calls in flight).
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
from pathlib import Path

from contextcache.v1 import ingest_pb2
from retrieval.embeddings import Embedder, load_model
from runtime.config import Settings
from services.ingest.ingestion import EMBED_BATCH, prepare_text
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


def bare_model(chunk_texts: list[str]) -> float:
    """Chunks/s of Embedder.embed alone, in the pipeline's batch size."""
    embedder = Embedder()
    started = time.perf_counter()
    for start in range(0, len(chunk_texts), EMBED_BATCH):
        embedder.embed(chunk_texts[start : start + EMBED_BATCH])
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


async def ingest_pages(stack, pages: list[tuple[str, str]], in_flight: int) -> tuple[int, float]:
    """(chunks stored, chunks/s) for the pages ingested inline, `in_flight` calls at a time,
    into a project of their own (nothing is deduplicated against another run)."""
    project, token = await new_project(stack, name=f"bench-{in_flight}")
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
    chunks = sum(await asyncio.gather(*(ingest(title, body) for title, body in pages)))
    return chunks, chunks / (time.perf_counter() - started)


async def pipeline(
    data_dir: Path,
    database_url: str | None,
    pages: list[tuple[str, str]],
    smalls: list[str],
    in_flight: list[int],
    concurrency: int,
) -> tuple[dict[int, tuple[int, float]], float]:
    """({pages in flight: (chunks stored, pipeline chunks/s)}, small documents/s)."""
    async with running_stack(settings_factory(data_dir, database_url)) as stack:
        rates = {n: await ingest_pages(stack, pages, n) for n in in_flight}

        small_project, small_token = await new_project(stack, name="bench-small")
        gate = asyncio.Semaphore(concurrency)

        async def ingest(body: str) -> None:
            async with gate:
                await stack.ingest.IngestDocument(
                    ingest_pb2.IngestDocumentRequest(
                        project_id=small_project.id, text=ingest_pb2.TextSource(body=body)
                    ),
                    metadata=small_token,
                    timeout=600,
                )

        started = time.perf_counter()
        await asyncio.gather(*(ingest(body) for body in smalls))
        document_rate = len(smalls) / (time.perf_counter() - started)
    return rates, document_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--html-dir", type=Path, default=MANUAL)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--small-documents", type=int, default=200)
    parser.add_argument(
        "--pages-in-flight",
        default="1,4,8",
        help="comma-separated: IngestDocument calls in flight for the pipeline runs",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="small documents in flight")
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if PostgreSQL is up")
    args = parser.parse_args()
    if not args.html_dir.is_dir() or not any(args.html_dir.glob("*.html")):
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    in_flight = [int(n) for n in args.pages_in_flight.split(",")]
    pages = load_pages(args.html_dir, args.megabytes)
    text_bytes = sum(len(text.encode()) for _, text in pages)
    smalls = small_texts(pages, args.small_documents)
    embedder = Embedder()
    load_model()
    embedder.embed(["warm up"] * 8)
    chunker = Chunker(embedder.max_tokens, overlap_tokens=32)
    chunk_texts = [chunk.text for _, text in pages for chunk in chunker.split(text)]
    print(
        f"text: {len(pages)} pages of {args.html_dir}, {text_bytes / 1e6:.2f} MB, "
        f"{len(chunk_texts)} chunks"
    )

    bare_before = bare_model(chunk_texts)
    print(f"bare model (Embedder.embed, batches of {EMBED_BATCH}): {bare_before:.1f} chunks/s")

    use_postgres = not args.sqlite and postgres_available()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        database_url = stack.enter_context(fresh_database()) if use_postgres else None
        rates, documents = asyncio.run(
            pipeline(Path(tmp), database_url, pages, smalls, in_flight, args.concurrency)
        )
    bare_after = bare_model(chunk_texts)
    bare = (bare_before + bare_after) / 2
    print(
        f"bare model again, after the pipeline runs: {bare_after:.1f} chunks/s "
        f"(mean {bare:.1f}, the baseline of the ratios below)"
    )
    store = "PostgreSQL" if use_postgres else "SQLite"
    for n, (chunks, rate) in rates.items():
        print(
            f"pipeline (IngestDocument inline per page over gRPC, {n} in flight, {store}): "
            f"{rate:.1f} chunks/s ({chunks} chunks); pipeline / bare: {rate / bare:.0%} "
            "(target >= 90%)"
        )
    print(
        f"small documents ({len(smalls)} texts of 200-600 bytes, {args.concurrency} in flight): "
        f"{documents:.1f} documents/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
