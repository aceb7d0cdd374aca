"""Fusion of ranked lists of chunks into one ranking.

Hybrid search ranks candidates by dense and by keyword search without payloads, fuses the two
rankings here, then reads the payloads of the winners only. Fusing here rather than with
Qdrant's own prefetch fusion makes both backends rank identically whatever Qdrant version
serves them (Qdrant's weighted RRF formula has changed between versions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from services.query.index.types import (
    RRF_K,
    Fusion,
    Hit,
    Ranked,
    ScoredId,
    StoredChunk,
)

# What the query service fuses with. Chosen on the tuning halves of bench/retrieval_sets (three
# corpora; tools/retrieval_lab.py compares the variants, bench/hybrid_retrieval.py prints the
# held-back figures): score-based fusion ranks the answer first more often than reciprocal
# rank, whose ranks forget by how much the best candidate led; keyword search, the stronger
# single mode on identifiers, weighs 1.5 against dense's 1 (HYBRID_KEYWORD_WEIGHT).
HYBRID_FUSION: Fusion = "dbsf"


def fuse(
    rankings: Sequence[Sequence[Ranked]],
    weights: Sequence[float],
    limit: int,
    method: Fusion = "rrf",
    k: int = RRF_K,
) -> list[ScoredId]:
    """Merges ranked lists of chunks into one ranking of at most `limit` chunks.

    rrf: score = sum over lists of weight / (k + rank), ranks from 1; a hit absent from a
    list gets nothing from it, and a list weighted 0 is ignored. dbsf: each list's scores
    are scaled to [0, 1] over mean ± 3 standard deviations, then summed with the weights.
    Ties go to the hit with the better best rank, then to the smaller chunk id, so results
    are deterministic.
    """
    check_fusion(method, weights, len(rankings))
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if weight == 0:
            continue
        contributions = (
            _rrf_contributions(ranking, k) if method == "rrf" else _dbsf_contributions(ranking)
        )
        for rank, (h, contribution) in enumerate(zip(ranking, contributions, strict=True), 1):
            cid = h.chunk_id
            scores[cid] = scores.get(cid, 0.0) + weight * contribution
            best_rank[cid] = min(best_rank.get(cid, rank), rank)
    order = sorted(scores, key=lambda cid: (-scores[cid], best_rank[cid], cid))
    return [ScoredId(cid, scores[cid]) for cid in order[:limit]]


def fused_ceiling(method: Fusion, weights: Sequence[float], k: int = RRF_K) -> float:
    """The fused score of a chunk at the top of every list: rrf gives it sum(w) / (k + 1),
    dbsf at most sum(w) (a list's top score scales to 1 only when it lies 3 standard
    deviations above the list's mean). Dividing by it puts fused scores in [0, 1]."""
    total = float(sum(weights))
    return total / (k + 1) if method == "rrf" else total


def check_fusion(method: str, weights: Sequence[float], lists: int) -> None:
    if method not in ("rrf", "dbsf"):
        raise ValueError(f"unknown fusion {method!r}; use 'rrf' or 'dbsf'")
    if len(weights) != lists:
        raise ValueError(f"{lists} rankings need {lists} weights")
    for w in weights:
        if not (math.isfinite(w) and w >= 0):
            raise ValueError("fusion weights must be finite and >= 0")
    if not any(weights):
        raise ValueError("at least one fusion weight must be positive")


def _rrf_contributions(ranking: Sequence[Ranked], k: int) -> list[float]:
    return [1.0 / (k + rank) for rank in range(1, len(ranking) + 1)]


def _dbsf_contributions(ranking: Sequence[Ranked]) -> list[float]:
    if not ranking:
        return []
    values = np.array([h.score for h in ranking], dtype=np.float64)
    mean, std = float(values.mean()), float(values.std())
    if std == 0.0:
        return [0.5] * len(ranking)
    low, high = mean - 3 * std, mean + 3 * std
    return [float(np.clip((v - low) / (high - low), 0.0, 1.0)) for v in values]


def hits_in_order(fused: Sequence[ScoredId], chunks: dict[str, StoredChunk]) -> list[Hit]:
    """The fused ranking with its payloads; chunks deleted meanwhile are left out."""
    out = []
    for ranked in fused:
        chunk = chunks.get(ranked.chunk_id)
        if chunk is not None:
            fields = {name: getattr(chunk, name) for name in StoredChunk.__dataclass_fields__}
            out.append(Hit(**fields, score=ranked.score))
    return out
