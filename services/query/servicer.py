"""QueryService RPCs (ranked, decrypted, cited passages) and QueryInternalService RPCs
(index writes and deletes for ingest, its worker and projects — runtime/callers.py).

Query reads: validate → authorize → embed and hash the query → search (hybrid, dense or
keyword; always filtered to the project) → decrypt → respond. Rankings may come from the
query cache (ids and scores only). Never logs queries or passage text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from contextcache.internal.v1 import crypto_pb2_grpc
from contextcache.internal.v1 import query_pb2 as query_internal_pb2
from contextcache.internal.v1 import query_pb2_grpc as query_internal_pb2_grpc
from contextcache.v1 import query_pb2, query_pb2_grpc
from retrieval.cipher import ContentCipher
from retrieval.query_batching import QueryBatcher
from retrieval.sealing import associated_data
from retrieval.terms import term_frequencies
from runtime import metrics
from runtime.errors import InvalidArgument, Unavailable
from runtime.health import Readiness
from runtime.protos import QUERY_SERVICE
from runtime.tokens import ANY_SCOPE, TokenVerifier
from services.query.cache import QueryCache
from services.query.index import (
    Hit,
    IndexPoint,
    SearchFilter,
    SparseTerms,
    StoredChunk,
    VectorIndex,
)
from services.query.index.fusion import HYBRID_FUSION
from services.query.index.types import VectorIndexError
from services.query.passages import PassagePlan, candidate_limit, plan_passages

IndexSource = Callable[[], VectorIndex | None]

DEFAULT_TOP_K = 5
MODE_NAMES = {
    query_pb2.RETRIEVAL_MODE_UNSPECIFIED: "hybrid",
    query_pb2.RETRIEVAL_MODE_HYBRID: "hybrid",
    query_pb2.RETRIEVAL_MODE_DENSE: "dense",
    query_pb2.RETRIEVAL_MODE_KEYWORD: "keyword",
}
MODE_VALUES = {
    "hybrid": query_pb2.RETRIEVAL_MODE_HYBRID,
    "dense": query_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": query_pb2.RETRIEVAL_MODE_KEYWORD,
}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def search_filter(request: query_pb2.QueryRequest) -> SearchFilter:
    filters = request.filters
    after = (
        filters.created_after.ToNanoseconds() / 1e9 if filters.HasField("created_after") else None
    )
    before = (
        filters.created_before.ToNanoseconds() / 1e9 if filters.HasField("created_before") else None
    )
    if after is not None and before is not None and after >= before:
        raise InvalidArgument.for_field(
            "filters.created_before", "created_before must be later than created_after"
        )
    return SearchFilter(
        project_id=request.project_id,
        document_ids=tuple(filters.document_ids),
        source_types=tuple(filters.source_types),
        created_after=after,
        created_before=before,
    )


def open_index(source: IndexSource) -> VectorIndex:
    index = source()
    if index is None:
        raise Unavailable("The vector index is not open yet. Try again shortly")
    return index


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(
        self,
        index: IndexSource,
        query_vectors: QueryBatcher,
        cache: QueryCache,
        crypto: crypto_pb2_grpc.CryptoInternalServiceStub,
        tokens: TokenVerifier,
        hybrid_weights: tuple[float, float],
        readiness: Readiness,
    ) -> None:
        self._index = index
        self.query_vectors = query_vectors
        self.cache = cache
        self.crypto = crypto
        self.tokens = tokens
        self.hybrid_weights = hybrid_weights
        self.readiness = readiness

    @property
    def index(self) -> VectorIndex:
        return open_index(self._index)

    # -- Query -------------------------------------------------------------------------

    async def Query(self, request, context):
        started = time.perf_counter()
        token = await self.tokens.authorize(context, request.project_id)
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_TOP_K
        mode = MODE_NAMES[request.mode]
        where = search_filter(request)
        cipher = ContentCipher(self.crypto, request.project_id, token)
        params = {
            "k": top_k,
            "mode": mode,
            "filters": request.filters.SerializeToString(deterministic=True).hex(),
        }

        embed_ms = search_ms = 0.0
        ranking = await self.cache.get(request.project_id, request.query, params)
        cached = ranking is not None
        if self.cache.enabled:
            metrics.QUERY_CACHE.labels("hit" if cached else "miss").inc()
        if ranking is None:
            hits, embed_ms, search_ms = await self._search(
                cipher, request.query, mode, where, candidate_limit(top_k)
            )
            ranking = [(h.chunk_id, h.score) for h in hits]
            await self.cache.put(request.project_id, request.query, params, ranking)
            chunks: list[StoredChunk] = list(hits)
        else:
            search_started = time.perf_counter()
            chunks = await self._retrieve(request.project_id, [cid for cid, _ in ranking])
            search_ms = _ms(search_started)
        scores = dict(ranking)
        if request.HasField("min_score"):
            chunks = [c for c in chunks if scores[c.chunk_id] >= request.min_score]

        # k distinct passages: overlapping and neighbouring chunks merged (services.query.passages).
        plans = plan_passages(chunks, scores, top_k)
        decrypt_started = time.perf_counter()
        passages = await self._passages(cipher, plans)
        return query_pb2.QueryResponse(
            passages=passages,
            cached=cached,
            mode=MODE_VALUES[mode],
            timings=query_pb2.QueryTimings(
                embed_ms=embed_ms,
                search_ms=search_ms,
                decrypt_ms=_ms(decrypt_started),
                total_ms=_ms(started),
            ),
        )

    async def _search(
        self, cipher: ContentCipher, query: str, mode: str, where: SearchFilter, top_k: int
    ) -> tuple[list[Hit], float, float]:
        embed_started = time.perf_counter()
        vector = None
        sparse = None
        # The model runs on its executor thread (in a pass shared with the queries that wait
        # with this one, retrieval.query_batching) while crypto hashes the query's terms.
        embedding = (
            asyncio.ensure_future(self.query_vectors.embed(query))
            if mode in ("hybrid", "dense")
            else None
        )
        if mode in ("hybrid", "keyword"):
            frequencies = term_frequencies(query)
            ids = await cipher.hash_terms(list(frequencies)) if frequencies else {}
            merged: dict[int, float] = {}
            for term, count in frequencies.items():
                merged[ids[term]] = merged.get(ids[term], 0.0) + count
            ordered = sorted(merged)
            sparse = SparseTerms(ordered, [merged[i] for i in ordered])
        if embedding is not None:
            vector = await embedding
        embed_ms = _ms(embed_started)
        search_started = time.perf_counter()
        try:
            if mode == "dense":
                hits = await self.index.search_dense(vector, where, top_k)
            elif mode == "keyword":
                hits = await self.index.search_sparse(sparse.indices, sparse.values, where, top_k)
            else:
                hits = await self.index.search_hybrid(
                    vector,
                    sparse,
                    where,
                    top_k,
                    fusion=HYBRID_FUSION,
                    weights=self.hybrid_weights,
                )
        except VectorIndexError as error:
            raise Unavailable("The vector index is unavailable. Try again shortly") from error
        metrics.INDEX_SEARCH_SECONDS.labels(mode).observe(time.perf_counter() - search_started)
        return hits, embed_ms, _ms(search_started)

    async def _retrieve(self, project_id: str, chunk_ids: list[str]) -> list[StoredChunk]:
        found = {c.chunk_id: c for c in await self.index.retrieve(project_id, chunk_ids)}
        return [found[cid] for cid in chunk_ids if cid in found]  # deleted chunks drop out

    async def _passages(
        self, cipher: ContentCipher, plans: list[PassagePlan]
    ) -> list[query_pb2.Passage]:
        chunks = {c.chunk_id: c for plan in plans for c in plan.members}
        documents = {plan.document_id: plan.first for plan in plans}
        sealed: list[tuple[bytes, bytes]] = [
            (c.encrypted_text, associated_data("chunk", c.project_id, c.document_id, c.chunk_index))
            for c in chunks.values()
        ]
        for c in documents.values():
            sealed.append(
                (c.encrypted_title, associated_data("title", c.project_id, c.document_id))
            )
            sealed.append(
                (c.encrypted_source, associated_data("source", c.project_id, c.document_id))
            )
        wanted = [(i, item) for i, item in enumerate(sealed) if item[0]]
        plain = await cipher.decrypt([item for _, item in wanted]) if wanted else []
        values = [""] * len(sealed)
        for (i, _), value in zip(wanted, plain, strict=True):
            values[i] = value.decode()
        texts = dict(zip(chunks, values, strict=False))
        titles = {
            document_id: (values[len(chunks) + 2 * n], values[len(chunks) + 2 * n + 1])
            for n, document_id in enumerate(documents)
        }
        return [
            query_pb2.Passage(
                text=plan.text(texts),
                document_title=titles[plan.document_id][0],
                source=titles[plan.document_id][1],
                score=plan.score,
                document_id=plan.document_id,
                source_type=plan.first.source_type,
                chunk_index=plan.first.chunk_index,
                start_offset=plan.start,
                end_offset=plan.end,
                chunk_id=plan.first.chunk_id,
            )
            for plan in plans
        ]

    async def GetStatus(self, request, context):
        return query_pb2.QueryServiceGetStatusResponse(
            status=await self.readiness.service_status(QUERY_SERVICE)
        )


def index_point(project_id: str, chunk: query_internal_pb2.IndexedChunk) -> IndexPoint:
    return IndexPoint(
        chunk_id=chunk.chunk_id,
        project_id=project_id,
        document_id=chunk.document_id,
        chunk_index=chunk.chunk_index,
        dense=list(chunk.dense),
        sparse_indices=list(chunk.sparse.indices),
        sparse_values=list(chunk.sparse.values),
        encrypted_text=chunk.encrypted_text,
        encrypted_title=chunk.encrypted_title,
        encrypted_source=chunk.encrypted_source,
        source_type=chunk.source_type,
        start_offset=chunk.start_offset,
        end_offset=chunk.end_offset,
        document_created_at=chunk.document_created_at.ToNanoseconds() / 1e9,
    )


class QueryIndexServicer(query_internal_pb2_grpc.QueryInternalServiceServicer):
    """Index writes and deletes. Deletes need only the caller's identity (ingest, its
    worker, projects): removing vectors must always be possible, even for a document whose
    job can no longer be authorized."""

    def __init__(self, index: IndexSource, cache: QueryCache, tokens: TokenVerifier) -> None:
        self._index = index
        self.cache = cache
        self.tokens = tokens

    @property
    def index(self) -> VectorIndex:
        return open_index(self._index)

    async def IndexChunks(self, request, context):
        # Content enters the index only under a token: the document's job token (bound to
        # that document) or the project's unlock token (ReindexProject).
        # A job token writes its own document's chunks only; an unlock token, any of its
        # project's (ReindexProject).
        documents = {c.document_id for c in request.chunks}
        if len(documents) == 1:
            await self.tokens.authorize(
                context, request.project_id, scopes=ANY_SCOPE, document_id=documents.pop()
            )
        else:
            await self.tokens.authorize(context, request.project_id)
        points = [index_point(request.project_id, c) for c in request.chunks]
        try:
            written = await self.index.upsert(points)
        except ValueError as error:
            raise InvalidArgument.for_field("chunks", str(error)) from None
        except VectorIndexError as error:
            raise Unavailable("The vector index is unavailable. Try again shortly") from error
        await self.cache.invalidate(request.project_id)
        return query_internal_pb2.IndexChunksResponse(indexed=written)

    async def DeleteDocumentChunks(self, request, context):
        await self.index.delete_document(request.project_id, request.document_id)
        await self.cache.invalidate(request.project_id)
        return query_internal_pb2.DeleteDocumentChunksResponse()

    async def DeleteProjectIndex(self, request, context):
        await self.index.delete_project(request.project_id)
        await self.cache.invalidate(request.project_id)
        return query_internal_pb2.DeleteProjectIndexResponse()
