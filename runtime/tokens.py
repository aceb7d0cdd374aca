"""Unlock-token checks for services other than crypto.

An unlock token is `v1.<claims>.<sealed>.<signature>` (base64url parts). CryptoService
seals the project's keys into <sealed> (only it can open them) and signs the whole with
its token-signing key (Ed25519). Any service can check the signature and the claims —
project id, expiry, scope — with crypto's public verification key, which it fetches once
and caches; so authorization keeps working while crypto is briefly unavailable, and no
service but crypto ever sees a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc
from runtime.clients import calling
from runtime.errors import Unauthenticated

TOKEN_METADATA_KEY = "x-unlock-token"
TOKEN_VERSION = "v1"
MALFORMED = "Malformed unlock token. Unlock the project again"


@dataclass(frozen=True)
class TokenClaims:
    project_id: str
    expires_at: float
    scope: str
    token_id: str


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def split_token(token: str) -> tuple[bytes, dict[str, object], bytes, bytes]:
    """(signed bytes, claims, sealed bytes, signature); raises Unauthenticated if malformed."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        raise Unauthenticated(MALFORMED)
    try:
        claims = json.loads(b64decode(parts[1]))
        sealed, signature = b64decode(parts[2]), b64decode(parts[3])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Unauthenticated(MALFORMED) from None
    if not isinstance(claims, dict):
        raise Unauthenticated(MALFORMED)
    signed = ".".join(parts[:3]).encode()
    return signed, claims, sealed, signature


def check_claims(
    claims: dict[str, object], project_id: str, now: float | None = None
) -> TokenClaims:
    try:
        parsed = TokenClaims(
            project_id=str(claims["pid"]),
            expires_at=float(claims["exp"]),  # type: ignore[arg-type]
            scope=str(claims["scope"]),
            token_id=str(claims["jti"]),
        )
    except (KeyError, TypeError, ValueError):
        raise Unauthenticated(MALFORMED) from None
    if parsed.project_id != project_id:
        raise Unauthenticated("The unlock token belongs to another project")
    if parsed.expires_at <= (time.time() if now is None else now):
        raise Unauthenticated("The unlock token has expired. Unlock the project again")
    return parsed


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

    async def _verification_key(self) -> Ed25519PublicKey:
        if self._key is None:
            async with calling("crypto"):
                response = await self.crypto.GetTokenVerificationKey(
                    crypto_pb2.GetTokenVerificationKeyRequest(), timeout=5
                )
            self._key = Ed25519PublicKey.from_public_bytes(response.public_key)
        return self._key

    async def verify(self, token: str, project_id: str) -> TokenClaims:
        signed, claims, _sealed, signature = split_token(token)
        key = await self._verification_key()
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            raise Unauthenticated("Invalid unlock token. Unlock the project again") from None
        return check_claims(claims, project_id)

    async def authorize(self, context: grpc.aio.ServicerContext, project_id: str) -> str:
        """The caller's token for `project_id`, checked; raises UNAUTHENTICATED otherwise."""
        token = token_from(context)
        await self.verify(token, project_id)
        return token
