"""`VectorIndex` on qdrant-client: a Qdrant server (QDRANT_URL) or qdrant-client's local mode.

Production uses a Qdrant server or cluster through `AsyncQdrantClient(url=...)`. The same
class runs on qdrant-client's local mode (`location=":memory:"` or `path=...`), which is an
exact, brute-force engine in Python: right for tests, far too slow for users. The server
must be Qdrant 1.19 or newer (per-tenant IDF statistics).

One collection holds every project: named vectors "dense" (cosine) and "bm25" (sparse, IDF
modifier), HNSW built per tenant (m=0, payload_m=16, Qdrant's multitenancy layout, since no
search spans projects), and payload indexes on project_id (keyword, is_tenant), document_id,
source_type and document_created_at.

A server that cannot be reached when the service starts is not fatal: the index reports
unhealthy and raises `IndexUnavailableError` until the server answers, then creates its
collection and carries on. Never logs payloads or vectors, and never receives plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.query.index.base import (
    VectorIndex,
)
from services.query.index.bm25 import (
    Bm25Params,
)
from services.query.index.codec import (
    hit,
    stored_chunk,
)
from services.query.index.fusion import (
    fuse,
    hits_in_order,
)
from services.query.index.types import (
    DENSE_DIM,
    DENSE_VECTOR,
    SPARSE_VECTOR,
    Fusion,
    Hit,
    IndexUnavailableError,
    PreparedPoint,
    ScoredId,
    SearchFilter,
    StoredChunk,
    VectorIndexError,
    VectorQuery,
)

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "contextcache_chunks"
UPSERT_BATCH = 256
HEALTH_TIMEOUT = 2.0
HNSW_PAYLOAD_M = 16


def server_filter(where: SearchFilter) -> models.Filter:
    must: list[models.Condition] = [
        models.FieldCondition(key="project_id", match=models.MatchValue(value=where.project_id))
    ]
    if where.document_ids:
        must.append(
            models.FieldCondition(
                key="document_id", match=models.MatchAny(any=list(where.document_ids))
            )
        )
    if where.source_types:
        must.append(
            models.FieldCondition(
                key="source_type", match=models.MatchAny(any=list(where.source_types))
            )
        )
    if where.created_after is not None or where.created_before is not None:
        must.append(
            models.FieldCondition(
                key="document_created_at",
                range=models.Range(gte=where.created_after, lt=where.created_before),
            )
        )
    return models.Filter(must=must)


def payload_indexes() -> dict[str, models.PayloadSchemaParams]:
    """Only the tenant field gets HNSW sub-graphs; the others are plain filter indexes."""
    return {
        "project_id": models.KeywordIndexParams(
            type=models.KeywordIndexType.KEYWORD, is_tenant=True
        ),
        "document_id": models.KeywordIndexParams(
            type=models.KeywordIndexType.KEYWORD, enable_hnsw=False
        ),
        "source_type": models.IntegerIndexParams(
            type=models.IntegerIndexType.INTEGER, lookup=True, range=False, enable_hnsw=False
        ),
        "document_created_at": models.FloatIndexParams(
            type=models.FloatIndexType.FLOAT, enable_hnsw=False
        ),
    }


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    """Unreachable server → IndexUnavailableError; a refused request → VectorIndexError."""
    try:
        yield
    except (ResponseHandlingException, httpx.TransportError, ConnectionError) as error:
        raise IndexUnavailableError(f"the Qdrant server cannot be reached: {error}") from error
    except UnexpectedResponse as error:
        if error.status_code in (502, 503, 504):
            raise IndexUnavailableError(f"the Qdrant server is unavailable: {error}") from error
        raise VectorIndexError(f"Qdrant refused the request: {error}") from error


class ServerVectorIndex(VectorIndex):
    """The index on qdrant-client. Create with `await ServerVectorIndex.open(url=...)`."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        collection: str = DEFAULT_COLLECTION,
        dim: int = DENSE_DIM,
        bm25: Bm25Params | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        super().__init__(dim=dim, bm25=bm25)
        self.client = client
        self.collection = collection
        self.request_timeout = request_timeout
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        *,
        url: str | None = None,
        location: str | None = None,
        path: str | None = None,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        dim: int = DENSE_DIM,
        bm25: Bm25Params | None = None,
        request_timeout: float = 10.0,
    ) -> ServerVectorIndex:
        """Connects to a server (`url`) or opens local mode (`location=":memory:"` / `path`).

        Creates the collection and its payload indexes when missing. Raises
        `VectorIndexError` if the collection exists with another configuration; an
        unreachable server only logs a warning (see the module docstring).
        """
        if sum(x is not None for x in (url, location, path)) != 1:
            raise ValueError("give exactly one of url, location or path")
        if url is not None:
            # No version probe: it runs in a thread that prints a traceback when the server
            # is down at start, which is a state this class handles on its own.
            client = AsyncQdrantClient(
                url=url,
                api_key=api_key,
                timeout=int(request_timeout),
                check_compatibility=False,
            )
        elif location is not None:
            client = AsyncQdrantClient(location=location)
        else:
            client = AsyncQdrantClient(path=path)
        index = cls(
            client,
            collection=collection,
            dim=dim,
            bm25=bm25,
            request_timeout=request_timeout,
        )
        try:
            await index._ensure_collection()
        except IndexUnavailableError as error:
            log.warning("vector index not ready yet: %s", error)
        except BaseException:
            await client.close()
            raise
        return index

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.client.close()

    async def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            await asyncio.wait_for(self._ping(), min(self.request_timeout, HEALTH_TIMEOUT))
        except (VectorIndexError, TimeoutError):
            return False
        return True

    async def _ping(self) -> None:
        await self._ensure_collection()
        with _translate_errors():
            if not await self.client.collection_exists(self.collection):
                self._ready = False
                raise IndexUnavailableError(f"collection {self.collection} is gone")

    # Backend operations -------------------------------------------------------------------

    async def _upsert(self, points: list[PreparedPoint]) -> None:
        await self._ensure_collection()
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [self._point(p) for p in points[start : start + UPSERT_BATCH]]
            with _translate_errors():
                await self.client.upsert(self.collection, points=batch, wait=True)

    @staticmethod
    def _point(p: PreparedPoint) -> models.PointStruct:
        vector: dict[str, Any] = {DENSE_VECTOR: p.dense.tolist()}
        if p.sparse_indices:
            vector[SPARSE_VECTOR] = models.SparseVector(
                indices=p.sparse_indices, values=p.sparse_weights
            )
        return models.PointStruct(id=p.point_id, vector=vector, payload=p.payload)

    async def _search(self, queries: list[VectorQuery]) -> list[list[Hit]]:
        responses = await self._query(queries, with_payload=True)
        return [[hit(p.id, p.score, p.payload or {}) for p in r.points] for r in responses]

    async def _hybrid(
        self, queries: list[VectorQuery], weights: Sequence[float], fusion: Fusion, limit: int
    ) -> list[Hit]:
        responses = await self._query(queries, with_payload=False)
        rankings = [[ScoredId(str(p.id), p.score) for p in r.points] for r in responses]
        rankings += [[] for _ in range(len(weights) - len(rankings))]
        fused = fuse(rankings, weights, limit, fusion)
        if not fused:
            return []
        chunks = await self._retrieve([f.chunk_id for f in fused])
        return hits_in_order(fused, {c.chunk_id: c for c in chunks})

    async def _retrieve(self, chunk_ids: list[str]) -> list[StoredChunk]:
        await self._ensure_collection()
        with _translate_errors():
            records = await self.client.retrieve(
                self.collection, ids=chunk_ids, with_payload=True, with_vectors=False
            )
        return [stored_chunk(r.id, r.payload or {}) for r in records]

    async def _query(
        self, queries: list[VectorQuery], with_payload: bool
    ) -> list[models.QueryResponse]:
        await self._ensure_collection()
        requests = [self._request(q, with_payload) for q in queries]
        with _translate_errors():
            return await self.client.query_batch_points(self.collection, requests=requests)

    @staticmethod
    def _request(query: VectorQuery, with_payload: bool) -> models.QueryRequest:
        params = None
        if query.using == DENSE_VECTOR:
            assert query.dense is not None
            vector: Any = query.dense.tolist()
        else:
            vector = models.SparseVector(indices=query.sparse_indices, values=query.sparse_values)
            # IDF statistics over the project only: tenants never influence each other.
            params = models.SearchParams(
                idf=models.IdfCorpusParams(corpus=server_filter(query.filter.project_only))
            )
        return models.QueryRequest(
            query=vector,
            using=query.using,
            filter=server_filter(query.filter),
            limit=query.limit,
            params=params,
            with_payload=with_payload,
        )

    async def _delete(self, where: SearchFilter) -> None:
        await self._ensure_collection()
        with _translate_errors():
            await self.client.delete(
                self.collection,
                points_selector=models.FilterSelector(filter=server_filter(where)),
                wait=True,
            )

    async def points(self) -> int | None:
        await self._ensure_collection()
        with _translate_errors():
            info = await self.client.get_collection(self.collection)
        return info.points_count

    async def _count(self, where: SearchFilter) -> int:
        await self._ensure_collection()
        with _translate_errors():
            result = await self.client.count(
                self.collection, count_filter=server_filter(where), exact=True
            )
        return result.count

    async def _scroll_page(
        self, where: SearchFilter, offset: str | None, limit: int
    ) -> tuple[list[StoredChunk], str | None]:
        await self._ensure_collection()
        with _translate_errors():
            records, next_offset = await self.client.scroll(
                self.collection,
                scroll_filter=server_filter(where),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
        chunks = [stored_chunk(r.id, r.payload or {}) for r in records]
        return chunks, None if next_offset is None else str(next_offset)

    # The collection -----------------------------------------------------------------------

    async def _ensure_collection(self) -> None:
        if self._closed:
            raise VectorIndexError("the vector index is closed")
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            with _translate_errors():
                if not await self.client.collection_exists(self.collection):
                    await self._create_collection()
                present = await self._check_collection()
                await self._create_payload_indexes(present)
            self._ready = True

    async def _create_collection(self) -> None:
        try:
            await self.client.create_collection(
                self.collection,
                vectors_config={
                    DENSE_VECTOR: models.VectorParams(
                        size=self.dim, distance=models.Distance.COSINE
                    )
                },
                sparse_vectors_config={
                    SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                hnsw_config=models.HnswConfigDiff(m=0, payload_m=HNSW_PAYLOAD_M),
            )
        except UnexpectedResponse as error:
            if error.status_code != 409:  # 409: another replica created it first
                raise

    async def _check_collection(self) -> set[str]:
        """Checks the vectors' configuration; returns the payload fields already indexed."""
        info = await self.client.get_collection(self.collection)
        params = info.config.params
        dense = params.vectors.get(DENSE_VECTOR) if isinstance(params.vectors, dict) else None
        sparse = (params.sparse_vectors or {}).get(SPARSE_VECTOR)
        problems = []
        if dense is None or dense.size != self.dim or dense.distance != models.Distance.COSINE:
            problems.append(f'a {self.dim}-d cosine vector "{DENSE_VECTOR}"')
        if sparse is None or sparse.modifier != models.Modifier.IDF:
            problems.append(f'a sparse vector "{SPARSE_VECTOR}" with the IDF modifier')
        if problems:
            raise VectorIndexError(
                f"Qdrant collection {self.collection} exists with another configuration: "
                f"it needs {' and '.join(problems)}. Use another collection or recreate it."
            )
        return set(info.payload_schema or {})

    async def _create_payload_indexes(self, present: set[str]) -> None:
        with warnings.catch_warnings():
            # Local mode warns that payload indexes do nothing there; that is expected.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for name, schema in payload_indexes().items():
                if name in present:
                    continue
                await self.client.create_payload_index(
                    self.collection, field_name=name, field_schema=schema, wait=True
                )
