"""ContentCipher: a project's content crypto, done by CryptoService under an unlock token.

Ingest encrypts with it, query decrypts with it; both hash keyword terms with it. The token
(sealed by crypto) travels as metadata; this module never sees a key and never logs text.
"""

from __future__ import annotations

from collections.abc import Sequence

from contextcache.internal.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.clients import calling
from runtime.tokens import TOKEN_METADATA_KEY

BATCH = 2000  # items per EncryptBatch/DecryptBatch call (well under the message size limit)


class ContentCipher:
    def __init__(
        self, crypto: crypto_pb2_grpc.CryptoInternalServiceStub, project_id: str, token: str
    ) -> None:
        self.crypto = crypto
        self.project_id = project_id
        self.token = token
        self.metadata = ((TOKEN_METADATA_KEY, token),)

    async def encrypt(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Ciphertexts of (plaintext, associated data) pairs, in order."""
        out: list[bytes] = []
        for start in range(0, len(items), BATCH):
            request = crypto_pb2.EncryptBatchRequest(
                project_id=self.project_id,
                items=[
                    crypto_pb2.CryptoItem(data=data, associated_data=ad)
                    for data, ad in items[start : start + BATCH]
                ],
            )
            async with calling("crypto"):
                response = await self.crypto.EncryptBatch(request, metadata=self.metadata)
            out.extend(response.ciphertexts)
        return out

    async def decrypt(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Plaintexts of (ciphertext, associated data) pairs, in order."""
        out: list[bytes] = []
        for start in range(0, len(items), BATCH):
            request = crypto_pb2.DecryptBatchRequest(
                project_id=self.project_id,
                items=[
                    crypto_pb2.CryptoItem(data=data, associated_data=ad)
                    for data, ad in items[start : start + BATCH]
                ],
            )
            async with calling("crypto"):
                response = await self.crypto.DecryptBatch(request, metadata=self.metadata)
            out.extend(response.plaintexts)
        return out

    async def encrypt_one(self, data: bytes, associated_data: bytes) -> bytes:
        return (await self.encrypt([(data, associated_data)]))[0]

    async def decrypt_one(self, data: bytes, associated_data: bytes) -> bytes:
        return (await self.decrypt([(data, associated_data)]))[0]

    async def hash_terms(self, terms: Sequence[str]) -> dict[str, int]:
        """Keyed term ids (HMAC under the project's subkey) — one round trip per 100k terms."""
        ids: dict[str, int] = {}
        unique = list(dict.fromkeys(terms))
        for start in range(0, len(unique), 100_000):
            batch = unique[start : start + 100_000]
            async with calling("crypto"):
                response = await self.crypto.HashTerms(
                    crypto_pb2.HashTermsRequest(project_id=self.project_id, terms=batch),
                    metadata=self.metadata,
                )
            ids.update(zip(batch, response.term_ids, strict=True))
        return ids
