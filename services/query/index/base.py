"""The query service's vector index: one interface, its types, and what every backend shares.

A `VectorIndex` stores one point per chunk: a dense embedding ("dense", cosine), a sparse BM25
vector ("bm25", IDF applied by Qdrant at query time) and a payload that carries only
identifiers, numbers and ciphertext. Every search is confined to one project.

This module must never see plaintext and never store it: the index holds vectors, keyed term
ids (hashes under a per-project key, computed by the caller) and AEAD ciphertext. Payload bytes
are stored base64-encoded; nothing here decrypts, logs or inspects them.

BM25 weighting. Callers send raw term frequencies; at upsert each frequency becomes the BM25
term weight `tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avg_doc_len))`, where `dl` is the
chunk's total term count (see `Bm25Params`). Qdrant's IDF modifier multiplies in
`ln(1 + (N - n + 0.5) / (n + 0.5))` at query time, computed over the queried project only, so a
project's keyword scores never depend on another project's data. The query vector's values are
the query term weights (1.0 per distinct term is classic BM25).

Fusion. Hybrid search ranks candidates by dense and by keyword search in one batch, without
payloads, fuses the two rankings with `fuse` below, then reads the payloads of the winners
only. Fusing here rather than with Qdrant's own prefetch fusion makes both backends rank
identically whatever Qdrant version serves them (Qdrant's weighted RRF formula has changed
between versions): reciprocal rank fusion `sum(w_i / (k + rank_i))` with 1-based ranks and
k = 60, or distribution-based score fusion (each list's scores scaled by mean ± 3 standard
deviations).
"""

from __future__ import annotations

import abc
import base64
import math
import operator
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
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


# ---------------------------------------------------------------------------------------------
# Validation and payload encoding shared by the backends.


def _integer(value: object, what: str) -> int:
    try:
        return operator.index(value)  # ints and numpy integers; never floats
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def canonical_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{what} must be a UUID, got {value!r}") from None


def dense_array(vector: Sequence[float] | np.ndarray, dim: int, what: str) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"{what} must have {dim} dimensions, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if not np.any(array):
        raise ValueError(f"{what} is all zeros; cosine similarity is undefined for it")
    return array


def sparse_lists(
    indices: Sequence[int], values: Sequence[float], what: str
) -> tuple[list[int], list[float]]:
    """Checked copies of a sparse vector: equal lengths, distinct uint32 ids, values >= 0.

    Terms with a zero value carry no weight and are dropped.
    """
    ids = [_integer(i, f"{what}: term id") for i in indices]
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: term values must be numbers") from None
    if len(ids) != len(vals):
        raise ValueError(f"{what}: {len(ids)} indices but {len(vals)} values")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: term ids must be distinct")
    for i, v in zip(ids, vals, strict=True):
        if not 0 <= i <= MAX_SPARSE_INDEX:
            raise ValueError(f"{what}: term id {i} is outside the uint32 range")
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{what}: term values must be finite and >= 0")
    kept = [(i, v) for i, v in zip(ids, vals, strict=True) if v > 0]
    kept.sort()
    return [i for i, _ in kept], [v for _, v in kept]


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return limit


def _b64(data: bytes, what: str) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{what} must be bytes (ciphertext), got {type(data).__name__}")
    return base64.b64encode(bytes(data)).decode("ascii")


def prepare_point(point: IndexPoint, dim: int, bm25: Bm25Params) -> PreparedPoint:
    """Validates a point and turns it into the form both backends store."""
    point_id = canonical_uuid(point.chunk_id, "chunk_id")
    for name in ("project_id", "document_id"):
        value = getattr(point, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"chunk {point_id}: {name} must be a non-empty string")
    if not point.encrypted_text:
        raise ValueError(f"chunk {point_id}: encrypted_text must not be empty")
    text, title, source = (
        _b64(getattr(point, name), f"chunk {point_id}: {name}")
        for name in ("encrypted_text", "encrypted_title", "encrypted_source")
    )
    numbers = {
        name: _integer(getattr(point, name), f"chunk {point_id}: {name}")
        for name in ("chunk_index", "source_type", "start_offset", "end_offset")
    }
    if numbers["chunk_index"] < 0:
        raise ValueError(f"chunk {point_id}: chunk_index must be >= 0")
    try:
        created = float(point.document_created_at)
    except (TypeError, ValueError):
        created = math.nan
    if not math.isfinite(created):
        raise ValueError(f"chunk {point_id}: document_created_at must be finite epoch seconds")
    dense = dense_array(point.dense, dim, f"chunk {point_id}: dense vector")
    ids, freqs = sparse_lists(
        point.sparse_indices, point.sparse_values, f"chunk {point_id}: sparse vector"
    )
    payload = {
        "project_id": point.project_id,
        "document_id": point.document_id,
        "chunk_index": numbers["chunk_index"],
        "encrypted_text": text,
        "encrypted_title": title,
        "encrypted_source": source,
        "source_type": numbers["source_type"],
        "start_offset": numbers["start_offset"],
        "end_offset": numbers["end_offset"],
        "document_created_at": created,
    }
    return PreparedPoint(point_id, dense, ids, bm25.document_weights(freqs), payload)


def stored_chunk(point_id: object, payload: dict[str, Any]) -> StoredChunk:
    return StoredChunk(**_chunk_fields(point_id, payload))


def hit(point_id: object, score: float, payload: dict[str, Any]) -> Hit:
    return Hit(**_chunk_fields(point_id, payload), score=float(score))


def _chunk_fields(point_id: object, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "chunk_id": str(point_id),
        "project_id": payload["project_id"],
        "document_id": payload["document_id"],
        "chunk_index": int(payload["chunk_index"]),
        "encrypted_text": base64.b64decode(payload["encrypted_text"]),
        "encrypted_title": base64.b64decode(payload["encrypted_title"]),
        "encrypted_source": base64.b64decode(payload["encrypted_source"]),
        "source_type": int(payload["source_type"]),
        "start_offset": int(payload["start_offset"]),
        "end_offset": int(payload["end_offset"]),
        "document_created_at": float(payload["document_created_at"]),
    }


# ---------------------------------------------------------------------------------------------
# Fusion.


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


# ---------------------------------------------------------------------------------------------
# The interface.


class VectorIndex(abc.ABC):
    """Chunk vectors of every project, searchable one project at a time.

    Public methods validate their input (bad input raises `ValueError` and stores nothing)
    and are safe to call concurrently from one event loop. Backends implement the
    underscore methods.
    """

    def __init__(self, *, dim: int = DENSE_DIM, bm25: Bm25Params | None = None) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self.bm25 = bm25 or Bm25Params()

    # Backend operations -------------------------------------------------------------------

    @abc.abstractmethod
    async def _upsert(self, points: list[PreparedPoint]) -> None: ...

    @abc.abstractmethod
    async def _search(self, queries: list[VectorQuery]) -> list[list[Hit]]:
        """Runs the queries (ideally in one round trip); one ranking per query."""

    @abc.abstractmethod
    async def _hybrid(
        self, queries: list[VectorQuery], weights: Sequence[float], fusion: Fusion, limit: int
    ) -> list[Hit]:
        """Ranks each query without payloads, fuses (`fuse`), reads the winners' payloads.

        `queries` is the dense query, then the keyword one when there is one.
        """

    @abc.abstractmethod
    async def _retrieve(self, chunk_ids: list[str]) -> list[StoredChunk]:
        """The stored chunks among `chunk_ids`, in any order, whatever their project."""

    @abc.abstractmethod
    async def _delete(self, where: SearchFilter) -> None: ...

    @abc.abstractmethod
    async def _count(self, where: SearchFilter) -> int: ...

    @abc.abstractmethod
    async def _scroll_page(
        self, where: SearchFilter, offset: str | None, limit: int
    ) -> tuple[list[StoredChunk], str | None]: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the backend; later calls fail. Idempotent."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True while the index can serve; never raises, returns quickly."""

    async def points(self) -> int | None:
        """Points in the whole index, every project together (for metrics); None where the
        backend cannot tell cheaply."""
        return None

    # Public API ---------------------------------------------------------------------------

    async def upsert(self, points: Iterable[IndexPoint]) -> int:
        """Inserts or replaces points (id = chunk_id). Returns how many were written."""
        prepared = [prepare_point(p, self.dim, self.bm25) for p in points]
        if len({p.point_id for p in prepared}) != len(prepared):
            raise ValueError("a batch must not contain the same chunk_id twice")
        if prepared:
            await self._upsert(prepared)
        return len(prepared)

    async def search_dense(
        self, vector: Sequence[float] | np.ndarray, filter: SearchFilter, limit: int = 10
    ) -> list[Hit]:
        """Nearest chunks by cosine similarity."""
        (hits,) = await self._search([self._dense_query(vector, filter, limit)])
        return hits

    async def search_sparse(
        self,
        indices: Sequence[int],
        values: Sequence[float],
        filter: SearchFilter,
        limit: int = 10,
    ) -> list[Hit]:
        """Chunks ranked by BM25 over the project's corpus; chunks sharing no term are absent."""
        query = self._sparse_query(indices, values, filter, limit)
        if not query.sparse_indices:
            return []
        (hits,) = await self._search([query])
        return hits

    async def search_hybrid(
        self,
        vector: Sequence[float] | np.ndarray,
        sparse: SparseLike,
        filter: SearchFilter,
        limit: int = 10,
        fusion: Fusion = "rrf",
        weights: tuple[float, float] = (1.0, 1.0),
    ) -> list[Hit]:
        """Dense and keyword rankings fused (weights: dense, keyword)."""
        check_limit(limit)
        check_fusion(fusion, weights, 2)
        depth = min(max(limit * HYBRID_CANDIDATES_PER_RESULT, HYBRID_MIN_CANDIDATES), MAX_LIMIT)
        queries = [self._dense_query(vector, filter, depth)]
        keyword = self._sparse_query(sparse.indices, sparse.values, filter, depth)
        if keyword.sparse_indices:
            queries.append(keyword)
        return await self._hybrid(queries, weights, fusion, limit)

    async def retrieve(self, project_id: str, chunk_ids: Sequence[str]) -> list[StoredChunk]:
        """The project's chunks with these ids, in the order asked; unknown ids, and ids of
        other projects' chunks, are left out."""
        SearchFilter.project(project_id)
        wanted = [canonical_uuid(c, "chunk_id") for c in chunk_ids]
        if len(wanted) > MAX_LIMIT:
            raise ValueError(f"retrieve at most {MAX_LIMIT} chunks at a time")
        if not wanted:
            return []
        found = {
            c.chunk_id: c
            for c in await self._retrieve(list(dict.fromkeys(wanted)))
            if c.project_id == project_id
        }
        return [found[c] for c in wanted if c in found]

    async def delete_document(self, project_id: str, document_id: str) -> None:
        """Removes every chunk of one document of one project."""
        if not document_id:
            raise ValueError("document_id must not be empty")
        await self._delete(SearchFilter(project_id=project_id, document_ids=(document_id,)))

    async def delete_project(self, project_id: str) -> None:
        """Removes every chunk of a project."""
        await self._delete(SearchFilter.project(project_id))

    async def count(self, project_id: str) -> int:
        """Exact number of chunks stored for a project."""
        return await self._count(SearchFilter.project(project_id))

    async def scroll(self, project_id: str, *, batch_size: int = 256) -> AsyncIterator[StoredChunk]:
        """Every stored chunk of a project (payload only), in id order."""
        check_limit(batch_size)
        where = SearchFilter.project(project_id)
        offset: str | None = None
        while True:
            chunks, offset = await self._scroll_page(where, offset, batch_size)
            for chunk in chunks:
                yield chunk
            if offset is None:
                return

    async def probe(self) -> None:
        """For readiness checks: raises `IndexUnavailableError` unless the index can serve."""
        if not await self.healthy():
            raise IndexUnavailableError("the vector index is not available")

    async def __aenter__(self) -> VectorIndex:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Helpers ------------------------------------------------------------------------------

    def _dense_query(
        self, vector: Sequence[float] | np.ndarray, filter: SearchFilter, limit: int
    ) -> VectorQuery:
        return VectorQuery(
            using=DENSE_VECTOR,
            filter=_check_filter(filter),
            limit=check_limit(limit),
            dense=dense_array(vector, self.dim, "query vector"),
        )

    def _sparse_query(
        self, indices: Sequence[int], values: Sequence[float], filter: SearchFilter, limit: int
    ) -> VectorQuery:
        ids, vals = sparse_lists(indices, values, "sparse query")
        return VectorQuery(
            using=SPARSE_VECTOR,
            filter=_check_filter(filter),
            limit=check_limit(limit),
            sparse_indices=ids,
            sparse_values=vals,
        )


def _check_filter(where: SearchFilter) -> SearchFilter:
    if not isinstance(where, SearchFilter):
        raise ValueError("searches need a SearchFilter naming the project")
    return where
