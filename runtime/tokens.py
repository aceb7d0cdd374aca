"""Tokens as every service reads them: the public half of the format, and the one way a
servicer authorizes a call with one.

A token is `cct2.` + base64url (no padding) of

    claims (62 bytes) | sealed keys (93 bytes) | signature (64 bytes)

- claims: version (1 byte, =2) | scope (1 byte: 1 unlock, 2 job) | project id (16-byte UUID)
  | document id (16-byte UUID; zero for unlock tokens) | keyring generation (4 bytes) |
  signing key id (8 bytes) | issued at | expires at (each 8-byte big-endian signed Unix
  seconds). Readable by anyone; they carry no key and no content.
- sealed keys: the project's keys, sealed by crypto; only it can open them
  (services/crypto/tokens.py issues and opens tokens).
- signature: Ed25519 over DOMAIN ‖ claims ‖ sealed keys, by crypto's token-signing key.

Scopes: public RPCs accept unlock tokens only. A job token is bound to one document and is
accepted only by the internal steps of that document's job (`authorize(..., document_id=)`).
The keyring generation ends older tokens at a passphrase change: crypto refuses them on
every call that uses a key, and `authorize(..., fresh=True)` asks crypto (CheckToken) for
calls that use none. Other services check signatures offline with crypto's public keys
(GetTokenVerificationKeys), fetched again when a token names a key id they do not know,
so the signing key can rotate without restarts. Only crypto holds the sealing key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import enum
import functools
import hashlib
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contextcache.internal.v1 import crypto_pb2 as crypto_internal_pb2
from contextcache.internal.v1 import crypto_pb2_grpc as crypto_internal_pb2_grpc
from runtime.background import cancel_and_wait
from runtime.clients import calling
from runtime.errors import Unauthenticated

TOKEN_METADATA_KEY = "x-unlock-token"
PREFIX = "cct2."
DOMAIN = b"contextcache/token/v2\x00"
TOKEN_VERSION = 2
CLAIMS = struct.Struct(">BB16s16sI8sqq")
NO_DOCUMENT = uuid.UUID(int=0)
# A token naming an unknown key id makes the verifier ask crypto again, at most this often.
KEY_REFRESH_SECONDS = 5.0
KEYS_BYTES = 64
SEALED_BYTES = 1 + 12 + KEYS_BYTES + 16
SIGNATURE_BYTES = 64
TOKEN_BYTES = CLAIMS.size + SEALED_BYTES + SIGNATURE_BYTES
MAX_TOKEN_CHARS = 512
# Token signatures remembered as checked (see _signature_valid); about 1 MB at most.
VERIFIED_SIGNATURES = 4096
ALTERED = "The unlock token is invalid: it was altered or issued by another deployment"
WRONG_SCOPE = (
    "This call needs an unlock token (ProjectService.UnlockProject); the token given is a "
    "job token, which opens only its own document's ingestion steps"
)


class Scope(enum.IntEnum):
    UNLOCK = 1  # an interactive unlock (OpenKeyring), short-lived
    JOB = 2  # one document's queued job (IssueJobToken); cannot issue further tokens


UNLOCK_ONLY = frozenset({Scope.UNLOCK})
ANY_SCOPE = frozenset(Scope)


def key_id_of(public_key: bytes) -> bytes:
    """The 8-byte id tokens carry for the key that signed them."""
    return hashlib.sha256(public_key).digest()[:8]


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
    document_id: uuid.UUID | None
    generation: int
    key_id: bytes
    issued_at: int
    expires_at: int

    def pack(self) -> bytes:
        document = (self.document_id or NO_DOCUMENT).bytes
        return CLAIMS.pack(
            TOKEN_VERSION,
            self.scope,
            self.project_id.bytes,
            document,
            self.generation,
            self.key_id,
            self.issued_at,
            self.expires_at,
        )


KEY_ID_OFFSET = 1 + 1 + 16 + 16 + 4


def signing_key_id(parts: TokenParts) -> bytes:
    """The id of the key that signed the token (read before the signature is checked)."""
    return parts.claims[KEY_ID_OFFSET : KEY_ID_OFFSET + 8]


def read_claims(parts: TokenParts) -> TokenClaims:
    """The claims, unchecked (the signature is checked by `verify`)."""
    version, scope, project, document, generation, key_id, issued, expires = CLAIMS.unpack(
        parts.claims
    )
    if version != TOKEN_VERSION or scope not in Scope._value2member_map_:
        raise Unauthenticated("The unlock token has an unsupported format; unlock again")
    document_id = uuid.UUID(bytes=document)
    return TokenClaims(
        uuid.UUID(bytes=project),
        Scope(scope),
        None if document_id == NO_DOCUMENT else document_id,
        generation,
        key_id,
        issued,
        expires,
    )


def encode(claims: bytes, sealed: bytes, signature: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(claims + sealed + signature).rstrip(b"=").decode()


def decode(text: str) -> TokenParts:
    """The token's parts; UNAUTHENTICATED when it is not a well-formed token."""
    malformed = Unauthenticated("The unlock token is malformed; pass the token exactly as issued")
    if text.startswith("cct1."):
        raise Unauthenticated("The unlock token has an old format; unlock the project again")
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
    claims = read_claims(parts)
    if (time.time() if now is None else now) >= claims.expires_at:
        when = datetime.datetime.fromtimestamp(claims.expires_at, datetime.UTC).isoformat()
        raise Unauthenticated(f"The unlock token expired at {when}; unlock the project again")
    return claims


def check_project(claims: TokenClaims, project_id: str) -> None:
    try:
        wanted = uuid.UUID(project_id)
    except ValueError:
        raise Unauthenticated("The unlock token belongs to another project") from None
    if claims.project_id != wanted:
        raise Unauthenticated("The unlock token belongs to another project")


def check_use(
    claims: TokenClaims, scopes: frozenset[Scope], document_id: str | None = None
) -> None:
    """The token's scope fits the call: unlock tokens where `scopes` allow them; a job
    token only where job tokens are allowed and only for its own document."""
    if claims.scope not in scopes:
        raise Unauthenticated(WRONG_SCOPE)
    if claims.scope is Scope.JOB and (
        document_id is None or str(claims.document_id) != document_id
    ):
        raise Unauthenticated("This job token belongs to another document's job")


def token_from(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    raise Unauthenticated(
        f"This call needs the project's unlock token in metadata '{TOKEN_METADATA_KEY}'. "
        "Get one with ProjectService.UnlockProject"
    )


class TokenVerifier:
    """Checks tokens against crypto's public token-verification keys (cached by key id)."""

    def __init__(
        self,
        crypto: crypto_internal_pb2_grpc.CryptoInternalServiceStub,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crypto = crypto
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self._fetched_at = -KEY_REFRESH_SECONDS
        self._clock = clock
        self._fetching: asyncio.Lock | None = None
        self._prefetching: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begins fetching the keys in the background (see prefetch)."""
        self._prefetching = asyncio.create_task(self.prefetch(), name="token-key-prefetch")

    async def stop(self) -> None:
        await cancel_and_wait(self._prefetching)

    async def _fetch(self) -> None:
        async with calling("crypto"):
            response = await self.crypto.GetTokenVerificationKeys(
                crypto_internal_pb2.GetTokenVerificationKeysRequest(), timeout=5
            )
        self._keys = {
            key.key_id: Ed25519PublicKey.from_public_bytes(key.public_key) for key in response.keys
        }
        self._fetched_at = self._clock()

    async def _key(self, key_id: bytes) -> Ed25519PublicKey:
        key = self._keys.get(key_id)
        if key is None and self._clock() - self._fetched_at >= KEY_REFRESH_SECONDS:
            # A key we have not seen: crypto may have rotated its signing key. Ask once.
            if self._fetching is None:
                self._fetching = asyncio.Lock()
            async with self._fetching:
                if key_id not in self._keys and (
                    self._clock() - self._fetched_at >= KEY_REFRESH_SECONDS
                ):
                    await self._fetch()
            key = self._keys.get(key_id)
        if key is None:
            raise Unauthenticated(ALTERED)
        return key

    async def prefetch(self, retry_every: float = 2.0) -> None:
        """Fetches the keys as soon as crypto answers (run as a background task at start), so
        token checks keep working if crypto goes away later."""
        while not self._keys:
            try:
                await self._fetch()
            except Exception:  # noqa: BLE001 — crypto not up yet: try again
                await asyncio.sleep(retry_every)

    async def verify(
        self,
        token: str,
        project_id: str,
        scopes: frozenset[Scope] = UNLOCK_ONLY,
        document_id: str | None = None,
    ) -> TokenClaims:
        parts = decode(token)
        claims = verify(parts, await self._key(signing_key_id(parts)))
        check_project(claims, project_id)
        check_use(claims, scopes, document_id)
        return claims

    async def authorize(
        self,
        context: grpc.aio.ServicerContext,
        project_id: str,
        *,
        scopes: frozenset[Scope] = UNLOCK_ONLY,
        document_id: str | None = None,
        fresh: bool = False,
    ) -> str:
        """The caller's token for `project_id`, checked; raises UNAUTHENTICATED otherwise.

        Public RPCs take the defaults (unlock tokens only). `fresh`: also ask crypto whether
        the token is of the project's current keyring generation — for calls that change
        or delete something without using a key (crypto checks that itself otherwise).
        """
        token = token_from(context)
        await self.verify(token, project_id, scopes, document_id)
        if fresh:
            async with calling("crypto"):
                await self.crypto.CheckToken(
                    crypto_internal_pb2.CheckTokenRequest(project_id=project_id),
                    metadata=((TOKEN_METADATA_KEY, token),),
                )
        return token
