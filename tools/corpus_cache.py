"""The question sets' corpora chunked and embedded as ingestion does, cached under var/.

    .venv/bin/python tools/corpus_cache.py [--set NAME ...] [--bounds sentences|paragraphs|headings]

For tools/retrieval_lab.py: each document of each set of bench/retrieval_sets is chunked by the
ingest chunker (256 word pieces, 32 overlapping) and each chunk embedded by the ingest embedder
(torch, the packaged all-MiniLM-L6-v2 weights). Vectors are cached by the SHA-256 of the chunk
text in `var/retrieval-cache/<set>.npz`, so changing a chunking rule re-embeds only the chunks
it changed, and every later evaluation starts in seconds instead of minutes.

The cache holds embeddings of public corpora only and lives under var/ (never committed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "tools"))

from retrieval_sets import SET_NAMES, QuestionSet, load_set  # noqa: E402

CACHE_DIR = REPO_ROOT / "var" / "retrieval-cache"
MAX_TOKENS = 256
OVERLAP_TOKENS = 32


@dataclass(frozen=True, slots=True)
class CorpusChunk:
    document: str  # the set's document name
    title: str
    index: int
    start: int
    end: int
    text: str


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class VectorCache:
    """Chunk vectors by text hash, one file per set; `save` writes only when something new
    was embedded."""

    def __init__(self, name: str) -> None:
        self.path = CACHE_DIR / f"{name}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.exists():
            with np.load(self.path) as data:
                self.vectors = dict(zip(data["hashes"].tolist(), data["vectors"], strict=True))

    def fill(self, texts: list[str], batch: int = 64) -> None:
        from retrieval.embeddings import Embedder

        missing = list(dict.fromkeys(t for t in texts if text_hash(t) not in self.vectors))
        if not missing:
            return
        embedder = Embedder()
        started = time.perf_counter()
        for begin in range(0, len(missing), batch):
            part = missing[begin : begin + batch]
            for text, vector in zip(part, embedder.embed(part), strict=True):
                self.vectors[text_hash(text)] = vector
            self.dirty = True
            done = begin + len(part)
            rate = done / (time.perf_counter() - started)
            print(f"  {self.path.stem}: embedded {done}/{len(missing)} ({rate:.1f}/s)", flush=True)
            if done % (batch * 8) == 0:
                self.save()
        self.save()

    def save(self) -> None:
        if not self.dirty:
            return
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        hashes = list(self.vectors)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, hashes=np.array(hashes), vectors=np.stack([self.vectors[h] for h in hashes]))
        tmp.replace(self.path)
        self.dirty = False

    def matrix(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[text_hash(t)] for t in texts]).astype(np.float32)


def chunk_set(qset: QuestionSet, chunker=None) -> list[CorpusChunk]:
    """Every chunk of the set's documents, as ingestion cuts them (or as `chunker` does)."""
    if chunker is None:
        from services.ingest.pipeline.chunker import Chunker

        chunker = Chunker(MAX_TOKENS, overlap_tokens=OVERLAP_TOKENS)
    out: list[CorpusChunk] = []
    for name, (title, text) in qset.documents.items():
        for c in chunker.split(text):
            out.append(CorpusChunk(name, title, c.index, c.start, c.end, c.text))
    return out


def embedded_text(chunk: CorpusChunk, titled: bool) -> str:
    """What the model embeds for a chunk: its text, or its document's title and its text
    (a contextual header; the model truncates past its window)."""
    return f"{chunk.title}\n\n{chunk.text}" if titled else chunk.text


def chunker_for(bounds: str):
    """The ingest chunker ("sentences"), or one of tools/heading_chunker.py's variants."""
    if bounds == "sentences":
        return None
    from heading_chunker import HeadingChunker

    return HeadingChunker(MAX_TOKENS, overlap_tokens=OVERLAP_TOKENS, prefer=bounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=SET_NAMES, help="default: all")
    parser.add_argument(
        "--bounds", default="sentences", choices=("sentences", "paragraphs", "headings")
    )
    parser.add_argument("--titled", action="store_true", help="embed title + text")
    args = parser.parse_args()
    for name in args.set or SET_NAMES:
        qset = load_set(name)
        chunks = chunk_set(qset, chunker_for(args.bounds))
        print(f"{name}: {len(qset.documents)} documents, {len(chunks)} chunks", flush=True)
        VectorCache(name).fill([embedded_text(c, args.titled) for c in chunks])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
