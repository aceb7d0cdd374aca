"""The crypto service as the runtime runs it: its database, key derivation, token keys.

Crypto is the only workload given TOKEN_SEALING_KEY; the others verify tokens with its
public keys.
"""

from __future__ import annotations

import grpc

from contextcache.internal.v1 import crypto_pb2_grpc as internal_pb2_grpc
from contextcache.v1 import crypto_pb2_grpc
from runtime.config import ServiceName, Settings
from runtime.db import create_engine, database_dependency, database_url, upgrade_async
from runtime.health import Dependency
from runtime.protos import CRYPTO_SERVICE
from runtime.server import MB, ServiceApp
from services.crypto.audit import AuditChain
from services.crypto.config import (
    CryptoConfig,
    load_crypto_config,
    previous_token_master_keys,
    token_master_key,
)
from services.crypto.kdf import PassphraseKdf
from services.crypto.registry import KeyringRegistry
from services.crypto.servicer import CryptoInternalServicer, CryptoServicer, TokenCheck
from services.crypto.tokens import TokenAuthority

# DeriveKey (public) gets one derivation at a time and a short queue of its own; beyond it,
# RESOURCE_EXHAUSTED at once.
PUBLIC_KDF_LIMITS = {
    "argon2_max_concurrent": 1,
    "argon2_memory_budget_kib": 65536,
    "argon2_max_waiting": 4,
}


class CryptoApp(ServiceApp):
    name = ServiceName.CRYPTO
    service_names = (CRYPTO_SERVICE,)
    # Raw uploads (up to 50 MB) are encrypted through EncryptBatch.
    max_receive_bytes = 64 * MB

    def __init__(self, settings: Settings, config: CryptoConfig | None = None) -> None:
        super().__init__(settings)
        self.config = config or load_crypto_config()
        # Fails here, at start, when production has no sealing key.
        self.tokens = TokenAuthority(
            token_master_key(settings), previous_token_master_keys(settings)
        )
        self.kdf = PassphraseKdf(self.config)
        self.public_kdf = PassphraseKdf(self.config.model_copy(update=PUBLIC_KDF_LIMITS))
        self.url = database_url(settings, self.name)
        self.engine = create_engine(self.url)
        self.audit = AuditChain(self.engine)
        self.registry = KeyringRegistry(self.engine)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await upgrade_async(self.name, self.url)

    async def stop(self) -> None:
        self.kdf.close()
        self.public_kdf.close()
        await self.engine.dispose()

    def dependencies(self) -> list[Dependency]:
        return [database_dependency(self.engine)]

    def register(self, server: grpc.aio.Server) -> None:
        check = TokenCheck(self.tokens, self.registry)
        crypto_pb2_grpc.add_CryptoServiceServicer_to_server(
            CryptoServicer(self.public_kdf, self.audit, check, self.readiness), server
        )
        internal_pb2_grpc.add_CryptoInternalServiceServicer_to_server(
            CryptoInternalServicer(self.kdf, self.tokens, self.registry, self.audit, check),
            server,
        )
