"""Unlock tokens as every service reads them: the public half of the format.

A token is `cct1.` + base64url (no padding) of

    claims (34 bytes) | sealed keys (93 bytes) | signature (64 bytes)

- claims: version (1 byte, =1) | scope (1 byte: 1 unlock, 2 job) | project id (16-byte UUID)
  | issued at | expires at (each 8-byte big-endian signed Unix seconds). Readable by anyone.
- sealed keys: the project's keys, sealed by CryptoService; only it can open them
  (services/crypto/tokens.py issues and opens tokens).
- signature: Ed25519 over DOMAIN ‖ claims ‖ sealed keys, by crypto's token-signing key.

Any service checks project, scope and expiry offline with crypto's public verification key
(GetTokenVerificationKey, fetched once and cached), so authorization keeps working while
crypto is briefly unavailable and no service but crypto ever sees a key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import enum
import functools
import struct
import time
import uuid
from dataclasses import dataclass

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.background import cancel_and_wait
from runtime.clients import calling
from runtime.errors import Unauthenticated

TOKEN_METADATA_KEY = "x-unlock-token"
PREFIX = "cct1."
DOMAIN = b"contextcache/unlock-token/v1\x00"
TOKEN_VERSION = 1
CLAIMS = struct.Struct(">BB16sqq")
KEYS_BYTES = 64
SEALED_BYTES = 1 + 12 + KEYS_BYTES + 16
SIGNATURE_BYTES = 64
TOKEN_BYTES = CLAIMS.size + SEALED_BYTES + SIGNATURE_BYTES
MAX_TOKEN_CHARS = 512
# Token signatures remembered as checked (see _signature_valid); about 1 MB at most.
VERIFIED_SIGNATURES = 4096
ALTERED = "The unlock token is invalid: it was altered or issued by another deployment"


class Scope(enum.IntEnum):
    UNLOCK = 1  # an interactive unlock (OpenKeyring), short-lived
    JOB = 2  # a queued background job (IssueJobToken); cannot issue further tokens


@dataclass(frozen=True)
class TokenParts:
    claims: bytes
    sealed: bytes
    signature: bytes

    @property
    def signed(self) -> bytes:
        return DOMAIN + self.claims + self.sealed


@dataclass(frozen=True)
class TokenClaims:
    project_id: uuid.UUID
    scope: Scope
    issued_at: int
    expires_at: int


def encode(claims: bytes, sealed: bytes, signature: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(claims + sealed + signature).rstrip(b"=").decode()


def decode(text: str) -> TokenParts:
    """The token's parts; UNAUTHENTICATED when it is not a well-formed token."""
    malformed = Unauthenticated("The unlock token is malformed; pass the token exactly as issued")
    if not text.startswith(PREFIX) or len(text) > MAX_TOKEN_CHARS:
        raise malformed
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise malformed from None
    # Only the canonical encoding is accepted, so no two strings name one token.
    if len(raw) != TOKEN_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
        raise malformed
    return TokenParts(
        raw[: CLAIMS.size],
        raw[CLAIMS.size : CLAIMS.size + SEALED_BYTES],
        raw[CLAIMS.size + SEALED_BYTES :],
    )


@functools.lru_cache(maxsize=VERIFIED_SIGNATURES)
def _signature_valid(public_key: bytes, signature: bytes, signed: bytes) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `signed`.

    Remembered per process: every call of a document's ingestion carries the same token (7
    checks per page-sized document across the services), and a check costs about 0.17 ms,
    an eighth of a whole in-process call here. The answer depends only on these bytes, so
    remembering it changes nothing else: the claims (expiry, project, scope) are checked on
    every call.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def verify(parts: TokenParts, key: Ed25519PublicKey, now: float | None = None) -> TokenClaims:
    """Checks the signature, version and expiry; returns the claims."""
    if not _signature_valid(key.public_bytes_raw(), parts.signature, parts.signed):
        raise Unauthenticated(ALTERED)
    version, scope, project, issued_at, expires_at = CLAIMS.unpack(parts.claims)
    if version != TOKEN_VERSION or scope not in Scope._value2member_map_:
        raise Unauthenticated("The unlock token has an unsupported format; unlock again")
    if (time.time() if now is None else now) >= expires_at:
        when = datetime.datetime.fromtimestamp(expires_at, datetime.UTC).isoformat()
        raise Unauthenticated(f"The unlock token expired at {when}; unlock the project again")
    return TokenClaims(uuid.UUID(bytes=project), Scope(scope), issued_at, expires_at)


def check_project(claims: TokenClaims, project_id: str) -> None:
    try:
        wanted = uuid.UUID(project_id)
    except ValueError:
        raise Unauthenticated("The unlock token belongs to another project") from None
    if claims.project_id != wanted:
        raise Unauthenticated("The unlock token belongs to another project")


def token_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    raise Unauthenticated(
        f"This call needs the project's unlock token in metadata '{TOKEN_METADATA_KEY}'. "
        "Get one with ProjectService.UnlockProject"
    )


class TokenVerifier:
    """Checks unlock tokens against crypto's public token-verification key (cached)."""

    def __init__(self, crypto: crypto_pb2_grpc.CryptoServiceStub) -> None:
        self.crypto = crypto
        self._key: Ed25519PublicKey | None = None
        self._prefetching: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begins fetching the key in the background (see prefetch)."""
        self._prefetching = asyncio.create_task(self.prefetch(), name="token-key-prefetch")

    async def stop(self) -> None:
        await cancel_and_wait(self._prefetching)

    async def _verification_key(self) -> Ed25519PublicKey:
        if self._key is None:
            async with calling("crypto"):
                response = await self.crypto.GetTokenVerificationKey(
                    crypto_pb2.GetTokenVerificationKeyRequest(), timeout=5
                )
            self._key = Ed25519PublicKey.from_public_bytes(response.public_key)
        return self._key

    async def prefetch(self, retry_every: float = 2.0) -> None:
        """Fetches the verification key as soon as crypto answers (run as a background task
        at start), so token checks keep working if crypto goes away later."""
        while self._key is None:
            try:
                await self._verification_key()
            except Exception:  # noqa: BLE001 — crypto not up yet: try again
                await asyncio.sleep(retry_every)

    async def verify(self, token: str, project_id: str) -> TokenClaims:
        parts = decode(token)
        claims = verify(parts, await self._verification_key())
        check_project(claims, project_id)
        return claims

    async def authorize(self, context: grpc.aio.ServicerContext, project_id: str) -> str:
        """The caller's token for `project_id`, checked; raises UNAUTHENTICATED otherwise."""
        token = token_from(context)
        await self.verify(token, project_id)
        return token
