"""QueryService RPCs: ranked, decrypted, cited passages, and the index RPCs ingest uses.

Query reads: validate → authorize → embed and hash the query → search (hybrid, dense or
keyword; always filtered to the project) → decrypt → respond. Rankings may come from the
query cache (ids and scores only). Never logs queries or passage text.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from contextcache.v1 import query_pb2, query_pb2_grpc
from retrieval.cipher import ContentCipher
from retrieval.sealing import associated_data
from retrieval.terms import term_frequencies
from runtime.errors import InvalidArgument, Unavailable
from runtime.protos import QUERY_SERVICE
from services.query.index import Hit, IndexPoint, SearchFilter, SparseTerms, StoredChunk
from services.query.index.fusion import HYBRID_FUSION
from services.query.index.types import (
    VectorIndexError,
)
from services.query.passages import PassagePlan, candidate_limit, plan_passages

if TYPE_CHECKING:
    from services.query.app import QueryApp

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


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, app: QueryApp) -> None:
        self.app = app

    @property
    def index(self):  # type: ignore[no-untyped-def]
        if self.app.index is None:
            raise Unavailable("The vector index is not open yet. Try again shortly")
        return self.app.index

    # -- Query -------------------------------------------------------------------------

    async def Query(self, request, context):
        started = time.perf_counter()
        token = await self.app.tokens.authorize(context, request.project_id)
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_TOP_K
        mode = MODE_NAMES[request.mode]
        where = search_filter(request)
        cipher = ContentCipher(self.app.crypto, request.project_id, token)
        params = {
            "k": top_k,
            "mode": mode,
            "filters": request.filters.SerializeToString(deterministic=True).hex(),
        }

        embed_ms = search_ms = 0.0
        ranking = await self.app.cache.get(request.project_id, request.query, params)
        cached = ranking is not None
        if ranking is None:
            hits, embed_ms, search_ms = await self._search(
                cipher, request.query, mode, where, candidate_limit(top_k)
            )
            ranking = [(h.chunk_id, h.score) for h in hits]
            await self.app.cache.put(request.project_id, request.query, params, ranking)
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
            asyncio.ensure_future(self.app.query_vectors.embed(query))
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
                    weights=self.app.settings.hybrid_weights,
                )
        except VectorIndexError as error:
            raise Unavailable("The vector index is unavailable. Try again shortly") from error
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

    # -- index RPCs (called by the ingest service) --------------------------------------

    async def IndexChunks(self, request, context):
        points = [
            IndexPoint(
                chunk_id=c.chunk_id,
                project_id=request.project_id,
                document_id=c.document_id,
                chunk_index=c.chunk_index,
                dense=list(c.dense),
                sparse_indices=list(c.sparse.indices),
                sparse_values=list(c.sparse.values),
                encrypted_text=c.encrypted_text,
                encrypted_title=c.encrypted_title,
                encrypted_source=c.encrypted_source,
                source_type=c.source_type,
                start_offset=c.start_offset,
                end_offset=c.end_offset,
                document_created_at=c.document_created_at.ToNanoseconds() / 1e9,
            )
            for c in request.chunks
        ]
        try:
            written = await self.index.upsert(points)
        except ValueError as error:
            raise InvalidArgument.for_field("chunks", str(error)) from None
        except VectorIndexError as error:
            raise Unavailable("The vector index is unavailable. Try again shortly") from error
        await self.app.cache.invalidate(request.project_id)
        return query_pb2.IndexChunksResponse(indexed=written)

    async def DeleteDocumentChunks(self, request, context):
        await self.index.delete_document(request.project_id, request.document_id)
        await self.app.cache.invalidate(request.project_id)
        return query_pb2.DeleteDocumentChunksResponse()

    async def DeleteProjectIndex(self, request, context):
        await self.index.delete_project(request.project_id)
        await self.app.cache.invalidate(request.project_id)
        return query_pb2.DeleteProjectIndexResponse()

    async def GetStatus(self, request, context):
        return query_pb2.QueryServiceGetStatusResponse(
            status=await self.app.readiness.service_status(QUERY_SERVICE)
        )
