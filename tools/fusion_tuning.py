"""Fusion variants compared offline on the raw rankings that bench/hybrid_retrieval.py --dump wrote.

    .venv/bin/python tools/fusion_tuning.py DUMP_DIR [--held-back]

Each question's dense and keyword rankings (top 50 chunks, exactly what hybrid search fuses
for top_k 5) are fused by each variant, merged into passages as the service merges them, and
scored by whether a passage holding the answer is in the top 1 and top 5. By default only the
tuning halves are read: choose there, then confirm once with --held-back (and with
hybrid_retrieval.py through the service).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from services.query.index.fusion import fuse  # noqa: E402
from services.query.index.types import ScoredId, StoredChunk  # noqa: E402
from services.query.passages import candidate_limit, plan_passages  # noqa: E402

TOP_K = 5


@dataclass(frozen=True, slots=True)
class Row:
    question: str
    kind: str
    held_back: bool
    dense: list[dict]
    keyword: list[dict]


def load(directory: Path) -> dict[str, list[Row]]:
    return {
        path.stem: [Row(**row) for row in json.loads(path.read_text())]
        for path in sorted(directory.glob("*.json"))
    }


def stored(hit: dict) -> StoredChunk:
    return StoredChunk(
        chunk_id=hit["chunk_id"],
        project_id="p",
        document_id=hit["document_id"],
        chunk_index=hit["chunk_index"],
        encrypted_text=b"",
        encrypted_title=b"",
        encrypted_source=b"",
        source_type=0,
        start_offset=hit["start"],
        end_offset=hit["end"],
        document_created_at=0.0,
    )


def answer_rank(row: Row, fused: list[ScoredId]) -> int | None:
    hits = {h["chunk_id"]: h for h in row.dense + row.keyword}
    ranked = [stored(hits[f.chunk_id]) for f in fused[: candidate_limit(TOP_K)]]
    plans = plan_passages(ranked, {f.chunk_id: f.score for f in fused}, TOP_K)
    for n, plan in enumerate(plans, 1):
        if any(hits[m.chunk_id]["answer"] for m in plan.members):
            return n
    return None


Variant = Callable[[Row], list[ScoredId]]


def single(name: str) -> Variant:
    def rank(row: Row) -> list[ScoredId]:
        return [ScoredId(h["chunk_id"], h["score"]) for h in getattr(row, name)]

    return rank


def fused(
    method: str, weights: tuple[float, float] | Callable[[Row], tuple[float, float]], k: int = 60
) -> Variant:
    def rank(row: Row) -> list[ScoredId]:
        w = weights(row) if callable(weights) else weights
        lists = [single("dense")(row), single("keyword")(row)]
        if not lists[1]:
            return fuse(lists[:1], w[:1], 50, method, k) if w[0] else []
        return fuse(lists, w, 50, method, k)

    return rank


IDENTIFIER = re.compile(r"[_%()]|[a-z][A-Z]|[A-Za-z]+\\d|\\d+[A-Za-z]|^[A-Z0-9_]{3,}$")
QUESTION_WORDS = {"what", "why", "how", "which", "who", "when", "where", "does", "do", "can"}


def looks_like_identifier(query: str) -> bool:
    words = query.split()
    if words and words[0].lower() in QUESTION_WORDS:
        return False
    return len(words) <= 4 and any(IDENTIFIER.search(w) for w in words)


def identifier_weights(keyword: float, identifier_keyword: float):
    def weights(row: Row) -> tuple[float, float]:
        return (1.0, identifier_keyword if looks_like_identifier(row.question) else keyword)

    return weights


def guarded(variant: Variant, m: int) -> Variant:
    """The fused ranking, with each single list's top m chunks moved up into the top 5."""

    def rank(row: Row) -> list[ScoredId]:
        ranking = variant(row)
        must = [h["chunk_id"] for h in row.dense[:m]] + [h["chunk_id"] for h in row.keyword[:m]]
        head = [s for s in ranking[:TOP_K]]
        missing = [s for s in ranking if s.chunk_id in must and s not in head]
        for extra in missing:
            victims = [s for s in reversed(head) if s.chunk_id not in must]
            if not victims:
                break
            head.remove(victims[0])
            head.append(extra)
        rest = [s for s in ranking if s not in head]
        return head + rest

    return rank


def evaluate(rows: list[Row], variant: Variant) -> tuple[int, int]:
    ranks = [answer_rank(row, variant(row)) for row in rows]
    return sum(r == 1 for r in ranks), sum(r is not None for r in ranks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path)
    parser.add_argument("--held-back", action="store_true", help="read the held-back halves")
    parser.add_argument("--only", nargs="*", help="variant names to run")
    args = parser.parse_args()
    sets = {
        name: [r for r in rows if r.held_back == args.held_back]
        for name, rows in load(args.dump).items()
    }
    variants: dict[str, Variant] = {
        "dense": single("dense"),
        "keyword": single("keyword"),
    }
    for k in (60, 20, 5):
        for wk in (1.0, 1.5, 2.0, 3.0):
            variants[f"rrf k={k} 1:{wk}"] = fused("rrf", (1.0, wk), k)
    for wk in (1.0, 1.5, 2.0, 3.0):
        variants[f"dbsf 1:{wk}"] = fused("dbsf", (1.0, wk))
    for wk in (1.25, 1.5, 2.0):
        variants[f"dbsf 1:{wk} ident 1:3"] = fused("dbsf", identifier_weights(wk, 3.0))
        variants[f"rrf k=20 1:{wk} ident 1:3"] = fused("rrf", identifier_weights(wk, 3.0), 20)
    for m in (1, 2):
        variants[f"dbsf 1:1.5 +top{m}"] = guarded(fused("dbsf", (1.0, 1.5)), m)
        variants[f"rrf k=60 1:1 +top{m}"] = guarded(fused("rrf", (1.0, 1.0)), m)
    if args.only:
        variants = {
            n: v for n, v in variants.items() if n in args.only or n in ("dense", "keyword")
        }
    half = "held-back" if args.held_back else "tuning"
    names = list(sets)
    print(
        f"{half} halves; cells: hit@1 / hit@5 (questions: "
        + ", ".join(f"{n} {len(sets[n])}" for n in names)
        + ")"
    )
    print(f"{'variant':22}" + "".join(f"{n:>16}" for n in names) + f"{'total':>12}")
    for vname, variant in variants.items():
        cells, t1, t5 = [], 0, 0
        for n in names:
            h1, h5 = evaluate(sets[n], variant)
            t1, t5 = t1 + h1, t5 + h5
            cells.append(f"{h1:>7} / {h5:<6}")
        print(f"{vname:22}" + "".join(f"{c:>16}" for c in cells) + f"{t1:>6} / {t5:<4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
