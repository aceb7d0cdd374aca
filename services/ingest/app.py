"""The ingest service as the runtime runs it (and as a worker job opens it).

The embedding model loads at start in a thread of its own: the service answers (liveness
SERVING) while it loads, readiness stays NOT_SERVING until it can embed, and the event loop
never waits for the load (an ingestion that comes early waits for it off the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future
from datetime import timedelta

import grpc

from contextcache.internal.v1 import crypto_pb2_grpc, query_pb2_grpc
from contextcache.internal.v1 import ingest_pb2_grpc as ingest_internal_pb2_grpc
from contextcache.v1 import ingest_pb2_grpc
from retrieval.embeddings import Embedder, start_loading
from runtime.clients import grpc_dependency, open_channel
from runtime.config import ServiceName, Settings
from runtime.db import create_engine, database_dependency, database_url, upgrade_async
from runtime.health import Dependency
from runtime.outbox import AuditRelay
from runtime.protos import CRYPTO_SERVICE, INGEST_SERVICE, QUERY_SERVICE
from runtime.server import MB, ServiceApp
from runtime.tokens import TokenVerifier
from services.ingest.gauges import IngestGauges
from services.ingest.ingestion import IngestionPipeline
from services.ingest.jobs import JobQueue, Reaper
from services.ingest.pipeline.fetch import UrlFetcher
from services.ingest.servicer import IngestInternalServicer, IngestServicer
from services.ingest.store import DocumentStore
from services.ingest.watch import StreamSlots


class IngestApp(ServiceApp):
    name = ServiceName.INGEST
    service_names = (INGEST_SERVICE,)
    max_receive_bytes = 64 * MB  # 50 MB files plus framing

    def __init__(self, settings: Settings, worker: bool = False) -> None:
        super().__init__(settings)
        self.worker = worker
        self.url = database_url(settings, self.name)
        self._pipeline: IngestionPipeline | None = None
        self._model_loading: Future[None] | None = None
        self._model_loaded: asyncio.Task[None] | None = None

    @property
    def identity_name(self) -> str:
        return "worker" if self.worker else "ingest"

    async def open(self) -> None:
        """Engine, channels and helpers (a worker job opens these after RQ's fork)."""
        if self.settings.migrate_on_start and not self.worker:
            await upgrade_async(self.name, self.url)
        self.engine = create_engine(self.url)
        self.store = DocumentStore(self.engine)
        self.channels = {
            "crypto": open_channel(self.settings.crypto_addr, self.identity, "crypto"),
            "query": open_channel(self.settings.query_addr, self.identity, "query"),
        }
        self.crypto = crypto_pb2_grpc.CryptoInternalServiceStub(self.channels["crypto"])
        self.query = query_pb2_grpc.QueryInternalServiceStub(self.channels["query"])
        self.tokens = TokenVerifier(self.crypto)
        self.fetcher = UrlFetcher(
            allow_private=self.settings.url_fetch_allow_private,
            allow_loopback=self.settings.url_fetch_allow_private,
        )
        self.embedder = Embedder()
        # Only the service relays its outbox (a worker's events wait there for it).
        self.relay = (
            None
            if self.worker
            else AuditRelay(
                self.engine,
                self.store.outbox,
                self.crypto,
                interval=self.settings.audit_relay_interval,
            )
        )
        self.queue = JobQueue(
            self.pipeline,
            self.settings.redis_url,
            self.settings.ingest_queue,
            in_process=self.settings.ingest_background_jobs,
        )

    def pipeline(self) -> IngestionPipeline:
        if self._pipeline is None:
            self._pipeline = IngestionPipeline(
                self.store,
                self.crypto,
                self.query,
                self.fetcher,
                self.embedder,
                lease=timedelta(seconds=self.settings.ingest_lease_seconds),
                max_attempts=self.settings.ingest_max_attempts,
                relay=self.relay,
            )
        return self._pipeline

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        await self.engine.dispose()

    async def start(self) -> None:
        self._model_loading = start_loading()
        self._model_loaded = asyncio.create_task(self._ready_when_loaded(self._model_loading))
        await self.open()
        self.pipeline().text.start()  # spawns the text worker processes now, not at a request
        self.tokens.start()
        self.reaper = Reaper(
            self.store, self.queue, self.pipeline, self.settings.ingest_reaper_interval
        )
        self.reaper.start()
        assert self.relay is not None
        self.relay.start()
        self.gauges = IngestGauges(self.store, self.queue, self.settings.metrics_interval)
        self.gauges.start(run_first=True)

    async def _ready_when_loaded(self, loading: Future[None]) -> None:
        """Turns readiness SERVING as soon as the model is loaded, not at the next refresh."""
        with contextlib.suppress(Exception):  # a failed load keeps readiness NOT_SERVING
            await asyncio.wrap_future(loading)
        if self.readiness.dependencies:  # the server has started publishing readiness
            await self.readiness.refresh()

    async def _model_ready(self) -> None:
        """The readiness probe of the embedding model: fails until it is loaded (and for
        good if the load failed)."""
        loading = self._model_loading
        if loading is None or not loading.done():
            raise RuntimeError("the embedding model is loading")
        loading.result()

    async def stop(self) -> None:
        if self._model_loaded is not None:
            self._model_loaded.cancel()
        await self.tokens.stop()
        await self.gauges.stop()
        await self.reaper.stop()
        if self.relay is not None:
            await self.relay.stop()
        await self.queue.stop()
        await self.close()

    def dependencies(self) -> list[Dependency]:
        redis = (
            # Configured, Redis carries background jobs and their recovery: not ready without it.
            Dependency("redis", "redis", self.queue.ping)
            if self.queue.uses_redis
            else Dependency.disabled("redis", "redis")
        )
        return [
            database_dependency(self.engine),
            Dependency("embedding-model", "model", self._model_ready),
            redis,
            grpc_dependency("crypto", self.channels["crypto"], CRYPTO_SERVICE, required=False),
            grpc_dependency("query", self.channels["query"], QUERY_SERVICE, required=False),
        ]

    def register(self, server: grpc.aio.Server) -> None:
        servicer = IngestServicer(
            self.store,
            self.crypto,
            self.query,
            self.tokens,
            self.pipeline,
            self.queue,
            self.fetcher.policy,
            self.readiness,
            self.relay,
            StreamSlots(self.settings.watch_streams_per_token),
        )
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        ingest_internal_pb2_grpc.add_IngestInternalServiceServicer_to_server(
            IngestInternalServicer(self.store, self.tokens, self.query), server
        )
