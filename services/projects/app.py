"""The project service as the runtime runs it: storage, clients, servicer wiring."""

from __future__ import annotations

import grpc
from redis.asyncio import Redis

from contextcache.internal.v1 import crypto_pb2_grpc, ingest_pb2_grpc, query_pb2_grpc
from contextcache.v1 import projects_pb2_grpc
from runtime.clients import grpc_dependency, open_channel
from runtime.config import ServiceName, Settings
from runtime.db import create_engine, database_dependency, database_url, upgrade_async
from runtime.health import Dependency
from runtime.outbox import AuditRelay
from runtime.protos import CRYPTO_SERVICE, INGEST_SERVICE, PROJECT_SERVICE, QUERY_SERVICE
from runtime.server import ServiceApp
from runtime.tokens import TokenVerifier
from runtime.windows import WindowCounter
from services.projects.attempts import PassphraseAttempts
from services.projects.deletion import ProjectDeletion
from services.projects.servicer import ProjectServicer
from services.projects.store import ProjectStore


class ProjectsApp(ServiceApp):
    name = ServiceName.PROJECTS
    service_names = (PROJECT_SERVICE,)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.url = database_url(settings, self.name)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await upgrade_async(self.name, self.url)
        self.engine = create_engine(self.url)
        self.store = ProjectStore(self.engine)
        identity = self.identity
        self.channels = {
            "crypto": open_channel(self.settings.crypto_addr, identity, "crypto"),
            "ingest": open_channel(self.settings.ingest_addr, identity, "ingest"),
            "query": open_channel(self.settings.query_addr, identity, "query"),
        }
        self.crypto = crypto_pb2_grpc.CryptoInternalServiceStub(self.channels["crypto"])
        self.ingest = ingest_pb2_grpc.IngestInternalServiceStub(self.channels["ingest"])
        self.query = query_pb2_grpc.QueryInternalServiceStub(self.channels["query"])
        self.tokens = TokenVerifier(self.crypto)
        self.tokens.start()
        self.relay = AuditRelay(
            self.engine,
            self.store.outbox,
            self.crypto,
            interval=self.settings.audit_relay_interval,
        )
        self.relay.start()
        self.deletion = ProjectDeletion(self.store, self.ingest, self.query)
        self.deletion.start()
        self.redis = (
            Redis.from_url(self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            if self.settings.redis_url
            else None
        )
        self.attempts = PassphraseAttempts(
            WindowCounter(self.redis, self.settings.ratelimit_redis_retry),
            prefix=self.settings.ratelimit_key_prefix,
        )

    async def stop(self) -> None:
        await self.tokens.stop()
        await self.deletion.stop()
        await self.relay.stop()
        for channel in self.channels.values():
            await channel.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()

    def dependencies(self) -> list[Dependency]:
        return [
            database_dependency(self.engine),
            grpc_dependency("crypto", self.channels["crypto"], CRYPTO_SERVICE, required=False),
            grpc_dependency("ingest", self.channels["ingest"], INGEST_SERVICE, required=False),
            grpc_dependency("query", self.channels["query"], QUERY_SERVICE, required=False),
        ]

    def register(self, server: grpc.aio.Server) -> None:
        servicer = ProjectServicer(
            self.store,
            self.crypto,
            self.ingest,
            self.tokens,
            self.deletion,
            self.attempts,
            self.readiness,
            self.relay,
            self.settings.data_dir / "imports",
            self.settings.import_max_bytes,
        )
        projects_pb2_grpc.add_ProjectServiceServicer_to_server(servicer, server)
