"""The vector index's vocabulary: names, limits, errors and the records that cross its API.

Nothing here touches a backend or plaintext: chunk content only ever appears as ciphertext.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
DENSE_DIM = 384
RRF_K = 60
MAX_LIMIT = 1000
MAX_SPARSE_INDEX = 2**32 - 1
# How many candidates each side of a hybrid search contributes, per requested result.
HYBRID_CANDIDATES_PER_RESULT = 4
HYBRID_MIN_CANDIDATES = 50

Fusion = Literal["rrf", "dbsf"]


class VectorIndexError(Exception):
    """The index refused or failed an operation; the message is safe to show an operator."""


class IndexLockedError(VectorIndexError):
    """Another process holds the embedded index."""


class IndexUnavailableError(VectorIndexError):
    """The index backend cannot be reached right now; retrying later may succeed."""


class SparseLike(Protocol):
    """Anything with parallel `indices` and `values` (our `SparseTerms`, the proto message)."""

    @property
    def indices(self) -> Sequence[int]: ...

    @property
    def values(self) -> Sequence[float]: ...


@dataclass(frozen=True, slots=True)
class SparseTerms:
    """A keyword query: keyed term ids and their weights."""

    indices: Sequence[int]
    values: Sequence[float]


@dataclass(eq=False, slots=True)
class IndexPoint:
    """One chunk as the index stores it: vectors in clear, content as ciphertext."""

    chunk_id: str
    project_id: str
    document_id: str
    chunk_index: int
    dense: Sequence[float] | np.ndarray
    sparse_indices: Sequence[int]
    sparse_values: Sequence[float]
    encrypted_text: bytes
    encrypted_title: bytes = b""
    encrypted_source: bytes = b""
    source_type: int = 0
    start_offset: int = 0
    end_offset: int = 0
    document_created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Which chunks a search may return. `project_id` is mandatory: searches never cross it.

    Empty `document_ids` / `source_types` mean "any". `created_after` is inclusive and
    `created_before` exclusive, both in epoch seconds of the document's creation.
    """

    project_id: str
    document_ids: Sequence[str] = ()
    source_types: Sequence[int] = ()
    created_after: float | None = None
    created_before: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.project_id, str) or not self.project_id:
            raise ValueError("a search filter needs a project_id")
        object.__setattr__(self, "document_ids", tuple(str(d) for d in self.document_ids))
        object.__setattr__(self, "source_types", tuple(int(s) for s in self.source_types))
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None:
                if not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number of epoch seconds")
                object.__setattr__(self, name, float(value))

    @classmethod
    def project(cls, project_id: str) -> SearchFilter:
        return cls(project_id=project_id)

    @property
    def project_only(self) -> SearchFilter:
        return SearchFilter(project_id=self.project_id)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk's payload as read back from the index (ciphertext stays ciphertext)."""

    chunk_id: str
    project_id: str
    document_id: str
    chunk_index: int
    encrypted_text: bytes
    encrypted_title: bytes
    encrypted_source: bytes
    source_type: int
    start_offset: int
    end_offset: int
    document_created_at: float


@dataclass(frozen=True, slots=True)
class Hit(StoredChunk):
    """A search result. Dense: cosine similarity; keyword: BM25; hybrid: the fused score."""

    score: float


@dataclass(frozen=True, slots=True)
class ScoredId:
    """A chunk id and a score: what ranking and fusion work on before payloads are read."""

    chunk_id: str
    score: float


class Ranked(Protocol):
    @property
    def chunk_id(self) -> str: ...

    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class PreparedPoint:
    """A validated point in the form both backends write: id, vectors, JSON payload."""

    point_id: str
    dense: np.ndarray
    sparse_indices: list[int]
    sparse_weights: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VectorQuery:
    """One ranked search against one named vector, in backend-neutral form."""

    using: str
    filter: SearchFilter
    limit: int
    dense: np.ndarray | None = None
    sparse_indices: list[int] = field(default_factory=list)
    sparse_values: list[float] = field(default_factory=list)
