"""BM25 term weights of a chunk, computed once at upsert.

Callers send raw term frequencies; at upsert each frequency becomes the BM25 term weight
`tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avg_doc_len))`, where `dl` is the chunk's total
term count. Qdrant's IDF modifier multiplies in `ln(1 + (N - n + 0.5) / (n + 0.5))` at query
time, computed over the queried project only, so a project's keyword scores never depend on
another project's data. The query vector's values are the query term weights (1.0 per
distinct term is classic BM25).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bm25Params:
    """BM25 term-frequency saturation (k1) and length normalisation (b) applied at upsert.

    `avg_doc_len` stands in for the corpus' mean chunk length in terms: chunks are capped at
    256 word pieces, and 256 is also Qdrant's own BM25 default.
    """

    k1: float = 1.2
    b: float = 0.75
    avg_doc_len: float = 256.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError("BM25 k1 must be a finite number >= 0")
        if not (0.0 <= self.b <= 1.0):
            raise ValueError("BM25 b must be between 0 and 1")
        if not (math.isfinite(self.avg_doc_len) and self.avg_doc_len > 0):
            raise ValueError("BM25 avg_doc_len must be a finite number > 0")

    def document_weights(self, frequencies: Sequence[float]) -> list[float]:
        """BM25 term weights of one chunk from its raw term frequencies."""
        doc_len = float(sum(frequencies))
        norm = self.k1 * (1.0 - self.b + self.b * doc_len / self.avg_doc_len)
        return [tf * (self.k1 + 1.0) / (tf + norm) for tf in frequencies]
