"""Passage planning: ranked chunks of one document become distinct, non-repeating spans."""

from __future__ import annotations

import itertools
import uuid

from services.query.index.types import StoredChunk
from services.query.passages import (
    MAX_CHUNKS_PER_PASSAGE,
    candidate_limit,
    plan_passages,
)

TEXT = " ".join(f"w{n:03d}" for n in range(400))  # 1599 characters, words of 4


def chunk(index: int, start: int, end: int, document: str = "doc") -> StoredChunk:
    return StoredChunk(
        chunk_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{document}/{index}")),
        project_id="p",
        document_id=document,
        chunk_index=index,
        encrypted_text=b"x",
        encrypted_title=b"",
        encrypted_source=b"",
        source_type=0,
        start_offset=start,
        end_offset=end,
        document_created_at=0.0,
    )


# Chunks of 200 characters overlapping their neighbours by 40, as the chunker makes them.
CHUNKS = [chunk(i, i * 160, i * 160 + 199) for i in range(9)]
TEXTS = {c.chunk_id: TEXT[c.start_offset : c.end_offset] for c in CHUNKS}


def scores(ranked: list[StoredChunk]) -> dict[str, float]:
    return {c.chunk_id: 1.0 - n / 100 for n, c in enumerate(ranked)}


def test_overlapping_neighbours_become_one_passage_with_true_offsets() -> None:
    ranked = [CHUNKS[4], CHUNKS[5], CHUNKS[0]]
    plans = plan_passages(ranked, scores(ranked), top_k=5)
    assert [(p.start, p.end) for p in plans] == [(640, 999), (0, 199)]
    assert plans[0].text(TEXTS) == TEXT[640:999]
    assert plans[0].score == 1.0 and plans[0].first.chunk_index == 4


def test_k_passages_never_share_text_and_hold_every_candidate_span() -> None:
    ranked = [CHUNKS[i] for i in (3, 4, 2, 5, 6, 1, 7, 0, 8)]
    plans = plan_passages(ranked, scores(ranked), top_k=5)
    spans = sorted((p.start, p.end) for p in plans)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert all(len(p.members) <= MAX_CHUNKS_PER_PASSAGE for p in plans)
    for plan in plans:
        assert plan.text(TEXTS) == TEXT[plan.start : plan.end]
    assert spans[0][0] == 0 and spans[-1][1] == CHUNKS[-1].end_offset
    assert sum(end - start for start, end in spans) == CHUNKS[-1].end_offset


def test_at_most_k_passages_in_rank_order() -> None:
    ranked = [CHUNKS[8], CHUNKS[0], CHUNKS[4], CHUNKS[2], CHUNKS[6]]
    plans = plan_passages(ranked, scores(ranked), top_k=3)
    assert [p.first.chunk_index for p in plans] == [8, 0, 4]
    assert [p.score for p in plans] == sorted((p.score for p in plans), reverse=True)


def test_other_documents_and_chunks_without_offsets_are_never_merged() -> None:
    other = chunk(5, 800, 999, document="other")
    bare = [chunk(10, 0, 0), chunk(11, 0, 0)]
    ranked = [CHUNKS[4], other, *bare]
    plans = plan_passages(ranked, scores(ranked), top_k=5)
    assert [len(p.members) for p in plans] == [1, 1, 1, 1]


def test_candidates_cover_merging_within_bounds() -> None:
    assert candidate_limit(1) == 3 and candidate_limit(5) == 15 and candidate_limit(50) == 150
