"""Issuing and opening unlock tokens: what lets a caller use a project's keys for a while,
without crypto storing them.

The format, and the offline check other services do, live in runtime/tokens.py. Here the
project's data key and Ed25519 signing seed are sealed (AEAD, see aead.py) under the token
sealing key with associated data DOMAIN ‖ claims, so the keys cannot be moved under other
claims, and the whole is signed with the token signing key. Both keys derive from
TOKEN_SEALING_KEY with HKDF, so every replica given the same environment accepts the same
tokens. Tokens are stateless: they stay valid until they expire (a passphrase change does
not revoke them). Nothing here logs a token or a key, and no error message carries one.
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import Unauthenticated
from runtime.tokens import ALTERED, CLAIMS, DOMAIN, TOKEN_VERSION, Scope, decode, encode
from runtime.tokens import verify as verify_claims
from services.crypto.aead import Aead, AeadError
from services.crypto.kdf import hkdf_subkey

__all__ = ["ProjectKeys", "Scope", "TokenAuthority", "UnlockToken"]


@dataclass(frozen=True)
class ProjectKeys:
    """A project's unwrapped keys. Lives only for the request that needs them."""

    data_key: bytes = field(repr=False)
    signing_seed: bytes = field(repr=False)


@dataclass(frozen=True)
class UnlockToken:
    project_id: uuid.UUID
    scope: Scope
    issued_at: int
    expires_at: int
    keys: ProjectKeys = field(repr=False)

    @property
    def expires_at_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.expires_at, datetime.UTC)


class TokenAuthority:
    """Issues and opens unlock tokens under the service's token keys."""

    def __init__(self, master_key: bytes) -> None:
        self._sealer = Aead(hkdf_subkey(master_key, b"contextcache/token-sealing/v1"))
        self._signer = Ed25519PrivateKey.from_private_bytes(
            hkdf_subkey(master_key, b"contextcache/token-signing/v1")
        )
        self._verifier = self._signer.public_key()
        self.verification_key = self._verifier.public_bytes_raw()

    def issue(
        self, project_id: uuid.UUID, scope: Scope, ttl_seconds: int, keys: ProjectKeys
    ) -> tuple[str, UnlockToken]:
        now = int(time.time())
        token = UnlockToken(project_id, scope, now, now + ttl_seconds, keys)
        claims = CLAIMS.pack(TOKEN_VERSION, scope, project_id.bytes, now, token.expires_at)
        sealed = self._sealer.seal(keys.data_key + keys.signing_seed, DOMAIN + claims)
        signature = self._signer.sign(DOMAIN + claims + sealed)
        return encode(claims, sealed, signature), token

    def open(self, text: str) -> UnlockToken:
        """The token's claims and keys; UNAUTHENTICATED when it is not a valid, live token."""
        parts = decode(text)
        claims = verify_claims(parts, self._verifier)
        try:
            keys = self._sealer.open(parts.sealed, DOMAIN + parts.claims)
        except AeadError:
            raise Unauthenticated(ALTERED) from None
        return UnlockToken(
            claims.project_id,
            claims.scope,
            claims.issued_at,
            claims.expires_at,
            ProjectKeys(keys[:32], keys[32:]),
        )
