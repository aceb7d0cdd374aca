"""Retrieval variants (BM25 parameters, title terms, candidate depth, fusion) compared offline.

    .venv/bin/python tools/retrieval_lab.py [--held-back] [--only NAME ...] [--set NAME ...]
                                            [--bounds sentences|paragraphs|headings] [--titled]

Rebuilds, in one process and without the services, what a project of each question set of
bench/retrieval_sets holds: the ingest chunker's chunks, their embeddings (cached under var/ by
tools/corpus_cache.py), their keyword terms (retrieval.terms) weighted by BM25 as the index
weighs them at upsert (services.query.index.bm25, with Qdrant's IDF over the project's chunks).
Each variant ranks chunks by exact dense search, by BM25, or fuses both
(services.query.index.fusion), merges them into passages as the service does
(services.query.passages) and counts the questions whose answer string is in the first passage
and in the first five.

By default only the tuning halves are read: choose there, then confirm once with --held-back and
with bench/hybrid_retrieval.py through the service. Terms stay plaintext here: keyed hashing maps
terms one to one, so it changes no ranking.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "tools"))

from corpus_cache import (  # noqa: E402
    CorpusChunk,
    VectorCache,
    chunk_set,
    chunker_for,
    embedded_text,
)
from retrieval_sets import SET_NAMES, Question, load_set, squeeze  # noqa: E402

from retrieval.terms import term_frequencies  # noqa: E402
from services.query.index.bm25 import Bm25Params  # noqa: E402
from services.query.index.fusion import fuse  # noqa: E402
from services.query.index.types import ScoredId, StoredChunk  # noqa: E402
from services.query.passages import candidate_limit, plan_passages  # noqa: E402

TOP_K = 5


@dataclass(frozen=True, slots=True)
class Setup:
    """How chunks are indexed for keyword search."""

    k1: float = 1.2
    b: float = 0.75
    avg_doc_len: float = 256.0
    title_weight: float = 0.0  # count each title term this many times in every chunk
    query_stems: bool = True


@dataclass
class Corpus:
    name: str
    chunks: list[CorpusChunk]
    dense: np.ndarray  # (chunks, 384)
    questions: list[Question]
    query_vectors: np.ndarray  # (questions, 384)
    stored: list[StoredChunk] = field(default_factory=list)
    keyword_cache: dict[Setup, list[dict[str, float]]] = field(default_factory=dict)
    idf_cache: dict[Setup, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = dict.fromkeys(c.document for c in self.chunks)
        documents = {name: n for n, name in enumerate(names)}
        self.stored = [
            StoredChunk(
                chunk_id=str(i),
                project_id="p",
                document_id=str(documents[c.document]),
                chunk_index=c.index,
                encrypted_text=b"",
                encrypted_title=b"",
                encrypted_source=b"",
                source_type=0,
                start_offset=c.start,
                end_offset=c.end,
                document_created_at=0.0,
            )
            for i, c in enumerate(self.chunks)
        ]

    def weights(self, setup: Setup) -> tuple[list[dict[str, float]], dict[str, float]]:
        """Each chunk's BM25 term weights and the project's IDF of each term."""
        if setup not in self.keyword_cache:
            params = Bm25Params(setup.k1, setup.b, setup.avg_doc_len)
            titles: dict[str, dict[str, int]] = {}
            rows = []
            for c in self.chunks:
                tf: dict[str, float] = dict(term_frequencies(c.text))
                if setup.title_weight:
                    if c.title not in titles:
                        titles[c.title] = term_frequencies(c.title)
                    for term, count in titles[c.title].items():
                        tf[term] = tf.get(term, 0.0) + setup.title_weight * count
                terms = list(tf)
                weights = params.document_weights([tf[t] for t in terms])
                rows.append(dict(zip(terms, weights, strict=True)))
            n = len(rows)
            df = Counter(t for row in rows for t in row)
            self.keyword_cache[setup] = rows
            self.idf_cache[setup] = {
                t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()
            }
        return self.keyword_cache[setup], self.idf_cache[setup]


def load_corpus(name: str, bounds: str = "sentences", titled: bool = False) -> Corpus:
    qset = load_set(name)
    chunks = chunk_set(qset, chunker_for(bounds))
    cache = VectorCache(name)
    embedded = [embedded_text(c, titled) for c in chunks]
    cache.fill(embedded + [q.question for q in qset.questions])
    return Corpus(
        name,
        chunks,
        cache.matrix(embedded),
        qset.questions,
        cache.matrix([q.question for q in qset.questions]),
    )


# -- single rankings ----------------------------------------------------------------------


def dense_ranking(corpus: Corpus, q: int, depth: int) -> list[ScoredId]:
    scores = corpus.dense @ corpus.query_vectors[q]
    order = np.argsort(-scores, kind="stable")[:depth]
    return [ScoredId(str(i), float(scores[i])) for i in order]


def keyword_ranking(corpus: Corpus, q: int, depth: int, setup: Setup) -> list[ScoredId]:
    rows, idf = corpus.weights(setup)
    query = term_frequencies(corpus.questions[q].question)
    scores = []
    for i, row in enumerate(rows):
        s = sum(count * idf[t] * row[t] for t, count in query.items() if t in row)
        if s > 0:
            scores.append((s, i))
    scores.sort(key=lambda x: (-x[0], x[1]))
    return [ScoredId(str(i), s) for s, i in scores[:depth]]


# -- fusion variants ----------------------------------------------------------------------

Normalizer = Callable[[Sequence[float]], list[float]]


def _dbsf(values: Sequence[float], spread: float = 3.0) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    mean, std = float(v.mean()), float(v.std())
    if std == 0:
        return [0.5] * len(v)
    low, high = mean - spread * std, mean + spread * std
    return [float(np.clip((x - low) / (high - low), 0, 1)) for x in v]


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    return [(x - low) / (high - low) for x in values]


def _max_ratio(values: Sequence[float]) -> list[float]:
    high = max(values)
    return [x / high if high > 0 else 0.0 for x in values]


def _zscore(values: Sequence[float]) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std())
    if std == 0:
        return [0.0] * len(v)
    return [float(x) for x in (v - v.mean()) / std]


NORMALIZERS: dict[str, Normalizer] = {
    "dbsf": _dbsf,
    "dbsf2": lambda v: _dbsf(v, 2.0),
    "minmax": _minmax,
    "max": _max_ratio,
    "z": _zscore,
}


def score_fusion(
    rankings: Sequence[Sequence[ScoredId]], weights: Sequence[float], normalizer: Normalizer
) -> list[ScoredId]:
    scores: dict[str, float] = {}
    best: dict[str, int] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking or weight == 0:
            continue
        for rank, (hit, value) in enumerate(
            zip(ranking, normalizer([h.score for h in ranking]), strict=True), 1
        ):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight * value
            best[hit.chunk_id] = min(best.get(hit.chunk_id, rank), rank)
    order = sorted(scores, key=lambda c: (-scores[c], best[c], int(c)))
    return [ScoredId(c, scores[c]) for c in order]


IDENTIFIER = re.compile(r"[_%()]|[a-z][A-Z]|[A-Za-z]+\d|\d+[A-Za-z]|^[A-Z0-9_]{3,}$")
QUESTION_WORDS = {"what", "why", "how", "which", "who", "when", "where", "does", "do", "can"}


def looks_like_identifier(query: str) -> bool:
    words = query.split()
    if words and words[0].lower() in QUESTION_WORDS:
        return False
    return len(words) <= 4 and any(IDENTIFIER.search(w) for w in words)


def is_short(query: str) -> bool:
    """No question: a few words, as typed into a search box."""
    words = query.split()
    return bool(words) and words[0].lower() not in QUESTION_WORDS and not query.endswith("?")


@dataclass(frozen=True, slots=True)
class Variant:
    mode: str = "hybrid"  # dense | keyword | hybrid
    setup: Setup = Setup()
    depth: int = 60
    method: str = "dbsf"  # rrf | dbsf | dbsf2 | minmax | max | z
    weights: tuple[float, float] = (1.0, 1.5)
    rrf_k: int = 60
    # Keyword weight for queries that look like an identifier (None: same as the others).
    identifier_weight: float | None = None
    identifier_rule: str = "identifier"  # identifier | short
    fused_limit: int = candidate_limit(TOP_K)
    # Each single ranking's first `guard` chunks are moved into the fused top 5.
    guard: int = 0

    def rank(self, corpus: Corpus, q: int) -> list[ScoredId]:
        if self.mode == "dense":
            return dense_ranking(corpus, q, self.fused_limit)
        if self.mode == "keyword":
            return keyword_ranking(corpus, q, self.fused_limit, self.setup)
        lists = [
            dense_ranking(corpus, q, self.depth),
            keyword_ranking(corpus, q, self.depth, self.setup),
        ]
        weights = self.weights
        question = corpus.questions[q].question
        rule = looks_like_identifier if self.identifier_rule == "identifier" else is_short
        if self.identifier_weight is not None and rule(question):
            weights = (weights[0], self.identifier_weight)
        if not lists[1]:
            return lists[0][: self.fused_limit]
        if self.method == "rrf":
            fused = fuse(lists, weights, self.fused_limit, "rrf", self.rrf_k)
        else:
            fused = score_fusion(lists, weights, NORMALIZERS[self.method])[: self.fused_limit]
        return guarded(fused, lists, self.guard) if self.guard else fused


def guarded(fused: list[ScoredId], lists: list[list[ScoredId]], m: int) -> list[ScoredId]:
    """`fused` with each list's top `m` chunks moved into its first TOP_K places."""
    must = {s.chunk_id for ranking in lists for s in ranking[:m]}
    head = fused[:TOP_K]
    ids = {s.chunk_id for s in head}
    scores = {s.chunk_id: s.score for s in fused}
    for cid in [c for ranking in lists for c in (s.chunk_id for s in ranking[:m])]:
        if cid in ids:
            continue
        victims = [s for s in reversed(head) if s.chunk_id not in must]
        if not victims:
            break
        head.remove(victims[0])
        head.append(ScoredId(cid, min(scores.get(cid, 0.0), head[-1].score)))
        ids = {s.chunk_id for s in head}
    return head + [s for s in fused if s.chunk_id not in ids]


def answer_rank(corpus: Corpus, q: int, ranking: list[ScoredId]) -> int | None:
    ranked = [corpus.stored[int(s.chunk_id)] for s in ranking[: candidate_limit(TOP_K)]]
    plans = plan_passages(ranked, {s.chunk_id: s.score for s in ranking}, TOP_K)
    texts = {c.chunk_id: corpus.chunks[int(c.chunk_id)].text for p in plans for c in p.members}
    wanted = squeeze(corpus.questions[q].answer)
    for n, plan in enumerate(plans, 1):
        if wanted in squeeze(plan.text(texts)):
            return n
    return None


def evaluate(corpus: Corpus, variant: Variant, held_back: bool) -> tuple[int, int, float]:
    """(hit@1, hit@5, sum of reciprocal ranks within the top 5) over one half."""
    h1 = h5 = 0
    rr = 0.0
    for q, question in enumerate(corpus.questions):
        if question.held_back != held_back:
            continue
        rank = answer_rank(corpus, q, variant.rank(corpus, q))
        h1 += rank == 1
        h5 += rank is not None
        rr += 1 / rank if rank else 0.0
    return h1, h5, rr


def variants() -> dict[str, Variant]:
    base = Setup()
    out: dict[str, Variant] = {
        "dense": Variant(mode="dense"),
        "keyword": Variant(mode="keyword"),
        "hybrid (service)": Variant(),
    }
    for k1 in (0.9, 1.2, 1.6, 2.0):
        for b in (0.3, 0.5, 0.75, 0.9):
            s = replace(base, k1=k1, b=b)
            if s != base:
                out[f"keyword k1={k1} b={b}"] = Variant(mode="keyword", setup=s)
                out[f"hybrid k1={k1} b={b}"] = Variant(setup=s)
    for tw in (0.5, 1.0, 2.0):
        s = replace(base, title_weight=tw)
        out[f"keyword title x{tw}"] = Variant(mode="keyword", setup=s)
        out[f"hybrid title x{tw}"] = Variant(setup=s)
    for depth in (15, 30, 100, 200):
        out[f"hybrid depth {depth}"] = Variant(depth=depth)
    for method in NORMALIZERS:
        for wk in (1.0, 1.5, 2.0):
            out[f"hybrid {method} 1:{wk}"] = Variant(method=method, weights=(1.0, wk))
    for k in (10, 30, 60):
        for wk in (1.0, 1.5, 2.0):
            out[f"hybrid rrf k={k} 1:{wk}"] = Variant(method="rrf", rrf_k=k, weights=(1.0, wk))
    for m in (1, 2):
        out[f"hybrid guard top{m}"] = Variant(guard=m)
        out[f"hybrid minmax 1:1.0 guard top{m}"] = Variant(
            method="minmax", weights=(1.0, 1.0), guard=m
        )
    for rule in ("identifier", "short"):
        for wk, wi in ((1.0, 2.0), (1.0, 3.0), (1.5, 3.0), (1.25, 2.5)):
            out[f"hybrid dbsf 1:{wk} {rule} 1:{wi}"] = Variant(
                weights=(1.0, wk), identifier_weight=wi, identifier_rule=rule
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-back", action="store_true", help="read the held-back halves")
    parser.add_argument("--only", nargs="*", help="substrings of the variant names to run")
    parser.add_argument("--set", action="append", choices=SET_NAMES, help="default: all")
    parser.add_argument(
        "--bounds",
        default="sentences",
        choices=("sentences", "paragraphs", "headings"),
        help="where chunks end (tools/heading_chunker.py); sentences: as ingestion does",
    )
    parser.add_argument("--titled", action="store_true", help="dense: embed title + text")
    args = parser.parse_args()
    corpora = [load_corpus(name, args.bounds, args.titled) for name in args.set or SET_NAMES]
    chosen = variants()
    if args.only:
        chosen = {
            n: v
            for n, v in chosen.items()
            if n in ("dense", "keyword", "hybrid (service)") or any(o in n for o in args.only)
        }
    half = "held-back" if args.held_back else "tuning"
    print(f"{half} halves; cells: hit@1/hit@5 MRR-sum of {', '.join(c.name for c in corpora)}")
    width = max(len(n) for n in chosen) + 2
    for name, variant in chosen.items():
        cells, t1, t5, trr = [], 0, 0, 0.0
        for corpus in corpora:
            h1, h5, rr = evaluate(corpus, variant, args.held_back)
            t1, t5, trr = t1 + h1, t5 + h5, trr + rr
            cells.append(f"{h1:>3}/{h5:<3}{rr:5.1f}")
        total = f"   total {t1:>3}/{t5:<3}{trr:6.1f}"
        print(f"{name:{width}}" + "  ".join(f"{c:>14}" for c in cells) + total, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
