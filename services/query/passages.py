"""Top k means k distinct passages: ranked chunks become passages that never repeat text.

Chunks overlap by design (the chunker carries up to 32 word pieces over), so the best chunks
for a query are often neighbours: returned as they are, a caller filling a model's context pays
for the same sentence twice. Here, in rank order, a chunk that overlaps or neighbours (next
chunk index) a passage already chosen from its document joins that passage, up to
`MAX_CHUNKS_PER_PASSAGE` chunks; past that, only its text not already covered starts a new
passage, and a chunk with nothing new is dropped. The search asks for `candidate_limit(top_k)`
chunks so that merging still leaves `top_k` passages where the project has them.

A passage's offsets are its true span in the document's extracted text (from its first
chunk's start to its last chunk's end); its text is that span, built from the chunks' own
texts (chunk text is the document's text between the chunk's offsets; whitespace between two
neighbouring chunks that do not overlap is given as one space). Its score is its best chunk's,
its chunk index and id are its first chunk's.

Scores, per mode (higher is more relevant): dense — the cosine similarity of the query and the
chunk (at most 1); keyword — the BM25 score over the project's chunks (unbounded, comparable
only within one project and query); hybrid — the fused score as a share of the best possible
(1.0: ranked first by every search that found anything; see services.query.index.fusion).

This module sees plaintext only as the decrypted texts the servicer hands it; it never logs
or stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.query.index.types import StoredChunk

MAX_CHUNKS_PER_PASSAGE = 3
# Candidates asked of the index per passage wanted, and at most in all.
CANDIDATES_PER_PASSAGE = 3
MAX_CANDIDATES = 150


def candidate_limit(top_k: int) -> int:
    """How many ranked chunks to ask for so that `top_k` distinct passages usually remain."""
    return max(top_k, min(top_k * CANDIDATES_PER_PASSAGE, MAX_CANDIDATES))


@dataclass(frozen=True, slots=True)
class Piece:
    """The part of one chunk, [start, end) in document offsets, that a passage shows."""

    chunk: StoredChunk
    start: int
    end: int


@dataclass(slots=True)
class PassagePlan:
    """One passage: chunks of one document, in document order, and its score."""

    score: float
    members: list[StoredChunk] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)

    @property
    def document_id(self) -> str:
        return self.members[0].document_id

    @property
    def first(self) -> StoredChunk:
        return self.pieces[0].chunk

    @property
    def start(self) -> int:
        return self.pieces[0].start

    @property
    def end(self) -> int:
        return self.pieces[-1].end

    def touches(self, chunk: StoredChunk) -> bool:
        if chunk.document_id != self.document_id or not _has_span(chunk):
            return False
        if not all(_has_span(m) for m in self.members):
            return False
        indices = [m.chunk_index for m in self.members]
        if min(indices) - 1 <= chunk.chunk_index <= max(indices) + 1:
            return True
        return chunk.start_offset <= max(m.end_offset for m in self.members) and (
            chunk.end_offset >= min(m.start_offset for m in self.members)
        )

    def text(self, texts: Mapping[str, str]) -> str:
        """The passage's text from its chunks' decrypted texts (by chunk id)."""
        out: list[str] = []
        previous_end: int | None = None
        for piece in self.pieces:
            chunk = piece.chunk
            text = texts[chunk.chunk_id]
            if len(text) == chunk.end_offset - chunk.start_offset:
                text = text[piece.start - chunk.start_offset : piece.end - chunk.start_offset]
            if out and piece.start != previous_end:
                out.append(" ")
            out.append(text)
            previous_end = piece.end
        return "".join(out)


def _has_span(chunk: StoredChunk) -> bool:
    return chunk.end_offset > chunk.start_offset >= 0


def plan_passages(
    ranked: Sequence[StoredChunk], scores: Mapping[str, float], top_k: int
) -> list[PassagePlan]:
    """At most `top_k` passages from chunks in rank order (best first), in rank order."""
    plans: list[PassagePlan] = []
    for chunk in ranked:
        home = next(
            (p for p in plans if len(p.members) < MAX_CHUNKS_PER_PASSAGE and p.touches(chunk)),
            None,
        )
        if home is not None:
            home.members.append(chunk)
            continue
        if len(plans) == top_k:
            break
        plans.append(PassagePlan(score=scores[chunk.chunk_id], members=[chunk]))
    covered: dict[str, list[tuple[int, int]]] = {}
    kept: list[PassagePlan] = []
    for plan in plans:
        spans = covered.setdefault(plan.document_id, [])
        plan.pieces = _pieces(plan.members, spans)
        if plan.pieces:
            spans.extend((p.start, p.end) for p in plan.pieces if _has_span(p.chunk))
            kept.append(plan)
    return kept


def _pieces(members: list[StoredChunk], covered: list[tuple[int, int]]) -> list[Piece]:
    """The members' pieces in document order: each starts where the one before ended and
    leaves out what earlier passages of the document already show."""
    if not all(_has_span(m) for m in members):  # no offsets to merge by: shown whole
        return [Piece(m, m.start_offset, m.end_offset) for m in members]
    pieces: list[Piece] = []
    for chunk in sorted(members, key=lambda m: (m.start_offset, m.chunk_index)):
        start = max(chunk.start_offset, pieces[-1].end if pieces else chunk.start_offset)
        end = chunk.end_offset
        for low, high in covered:
            if low <= start < high:
                start = high
            if low < end <= high:
                end = low
        if start < end:
            pieces.append(Piece(chunk, start, end))
    return pieces
