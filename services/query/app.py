"""The query service as the runtime runs it: the vector index (it alone opens the embedded
one), the embedding model (loaded once, at start), the query cache and crypto."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc

from contextcache.internal.v1 import crypto_pb2_grpc
from contextcache.internal.v1 import query_pb2_grpc as query_internal_pb2_grpc
from contextcache.v1 import query_pb2_grpc
from retrieval.onnx_embeddings import query_embedder
from retrieval.query_batching import QueryBatcher
from runtime import metrics
from runtime.background import Periodic
from runtime.clients import grpc_dependency, open_channel
from runtime.config import ServiceName, Settings
from runtime.health import Dependency
from runtime.protos import CRYPTO_SERVICE, QUERY_SERVICE
from runtime.server import MB, ServiceApp
from runtime.tokens import TokenVerifier
from services.query.cache import QueryCache
from services.query.index import VectorIndex, open_index
from services.query.servicer import QueryIndexServicer, QueryServicer


class QueryApp(ServiceApp):
    name = ServiceName.QUERY
    service_names = (QUERY_SERVICE,)
    max_receive_bytes = 64 * MB  # IndexChunks batches carry vectors and ciphertext

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.index: VectorIndex | None = None

    async def start(self) -> None:
        self.index = await open_index(self.settings.qdrant_url, self.settings.index_path)
        # A query is one short text, embedded on one thread (a thread per core spin-waits
        # for cores this service shares with crypto, Envoy and other requests), on an
        # executor thread of its own, in ONNX Runtime: the same weights as ingestion's
        # torch model with less overhead per call (retrieval.onnx_embeddings).
        self.embedder = query_embedder()
        self.embed_executor = ThreadPoolExecutor(1, thread_name_prefix="query-embed")
        # Once per process, before the first query.
        await asyncio.get_running_loop().run_in_executor(self.embed_executor, self.embedder.load)
        self.query_vectors = QueryBatcher(self.embedder, self.embed_executor)
        self.cache = QueryCache(self.settings.redis_url)
        self.crypto_channel = open_channel(self.settings.crypto_addr, self.identity, "crypto")
        self.crypto = crypto_pb2_grpc.CryptoInternalServiceStub(self.crypto_channel)
        self.tokens = TokenVerifier(self.crypto)
        self.tokens.start()
        self.gauges = Periodic("index gauges", self._count_points, self.settings.metrics_interval)
        self.gauges.start(run_first=True)

    async def _count_points(self) -> None:
        if self.index is not None and (points := await self.index.points()) is not None:
            metrics.INDEX_POINTS.set(points)

    async def stop(self) -> None:
        await self.gauges.stop()
        await self.tokens.stop()
        await self.crypto_channel.close()
        await self.cache.close()
        self.embed_executor.shutdown(wait=False)
        if self.index is not None:
            await self.index.close()

    def dependencies(self) -> list[Dependency]:
        async def index_probe() -> None:
            if self.index is None or not await self.index.healthy():
                raise RuntimeError("index unavailable")

        return [
            Dependency(
                "index", "qdrant" if self.settings.qdrant_url else "qdrant-edge", index_probe
            ),
            Dependency("redis", "redis", self.cache.ping, required=False)
            if self.cache.enabled
            else Dependency.disabled("redis", "redis"),
            grpc_dependency("crypto", self.crypto_channel, CRYPTO_SERVICE, required=False),
        ]

    def register(self, server: grpc.aio.Server) -> None:
        def index() -> VectorIndex | None:
            return self.index

        servicer = QueryServicer(
            index,
            self.query_vectors,
            self.cache,
            self.crypto,
            self.tokens,
            self.settings.hybrid_weights,
            self.readiness,
        )
        query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
        query_internal_pb2_grpc.add_QueryInternalServiceServicer_to_server(
            QueryIndexServicer(index, self.cache, self.tokens), server
        )
