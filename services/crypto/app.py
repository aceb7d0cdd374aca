"""The crypto service as the runtime runs it: its database, key derivation, token keys."""

from __future__ import annotations

import grpc

from contextcache.v1 import crypto_pb2_grpc
from runtime.config import ServiceName, Settings
from runtime.db import create_engine, database_dependency, database_url, upgrade_async
from runtime.health import Dependency
from runtime.protos import CRYPTO_SERVICE
from runtime.server import MB, ServiceApp
from services.crypto.audit import AuditChain
from services.crypto.config import CryptoConfig, load_crypto_config, token_master_key
from services.crypto.kdf import PassphraseKdf
from services.crypto.servicer import CryptoServicer
from services.crypto.tokens import TokenAuthority


class CryptoApp(ServiceApp):
    name = ServiceName.CRYPTO
    service_names = (CRYPTO_SERVICE,)
    # Raw uploads (up to 50 MB) are encrypted through EncryptBatch.
    max_receive_bytes = 64 * MB

    def __init__(self, settings: Settings, config: CryptoConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or load_crypto_config()
        # Fails here, at start, when production has no sealing key.
        self.tokens = TokenAuthority(token_master_key(settings))
        self.kdf = PassphraseKdf(self.config)
        self.url = database_url(settings, self.name)
        self.engine = create_engine(self.url)
        self.audit = AuditChain(self.engine)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await upgrade_async(self.name, self.url)

    async def stop(self) -> None:
        self.kdf.close()
        await self.engine.dispose()

    def dependencies(self) -> list[Dependency]:
        return [database_dependency(self.engine)]

    def register(self, server: grpc.aio.Server) -> None:
        crypto_pb2_grpc.add_CryptoServiceServicer_to_server(CryptoServicer(self), server)
