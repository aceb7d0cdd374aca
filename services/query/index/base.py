"""The vector index's interface: what every backend offers and how its input is checked.

A `VectorIndex` stores one point per chunk: a dense embedding ("dense", cosine), a sparse BM25
vector ("bm25", see `bm25`) and a payload that carries only identifiers, numbers and
ciphertext (see `codec`). Every search is confined to one project; hybrid search fuses the
dense and keyword rankings (see `fusion`).

This module must never see plaintext and never store it: the index holds vectors, keyed term
ids (hashes under a per-project key, computed by the caller) and AEAD ciphertext.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence

import numpy as np

from services.query.index.bm25 import Bm25Params
from services.query.index.codec import (
    canonical_uuid,
    check_limit,
    dense_array,
    prepare_point,
    sparse_lists,
)
from services.query.index.fusion import check_fusion, fused_ceiling
from services.query.index.types import (
    DENSE_DIM,
    DENSE_VECTOR,
    HYBRID_CANDIDATES_PER_RESULT,
    HYBRID_MIN_CANDIDATES,
    MAX_LIMIT,
    SPARSE_VECTOR,
    Fusion,
    Hit,
    IndexPoint,
    IndexUnavailableError,
    PreparedPoint,
    SearchFilter,
    SparseLike,
    StoredChunk,
    VectorQuery,
)


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
        """Dense and keyword rankings fused (weights: dense, keyword); scores are the fused
        scores divided by `fused_ceiling`, so in [0, 1]."""
        check_limit(limit)
        check_fusion(fusion, weights, 2)
        depth = min(max(limit * HYBRID_CANDIDATES_PER_RESULT, HYBRID_MIN_CANDIDATES), MAX_LIMIT)
        queries = [self._dense_query(vector, filter, depth)]
        keyword = self._sparse_query(sparse.indices, sparse.values, filter, depth)
        if keyword.sparse_indices:
            queries.append(keyword)
        hits = await self._hybrid(queries, weights, fusion, limit)
        # As a share of the best possible fused score of the searches made, so that a score
        # reads the same whatever the weights: 1.0 is the top of every list.
        ceiling = fused_ceiling(fusion, weights[: len(queries)])
        if ceiling <= 0:
            return hits
        return [dataclasses.replace(h, score=h.score / ceiling) for h in hits]

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
