"""Issuing and opening tokens, and sealing job grants: what lets a caller use a project's
keys for a while, without crypto storing them.

The format, and the offline check other services do, live in runtime/tokens.py. Here the
project's data key and Ed25519 signing seed are sealed (AEAD, see aead.py) under the token
sealing key with associated data DOMAIN ‖ claims, so the keys cannot be moved under other
claims, and the whole is signed with the token signing key. Both keys derive from
TOKEN_SEALING_KEY with HKDF, so every replica given the same environment accepts the same
tokens; TOKEN_SEALING_KEY_PREVIOUS keeps tokens of the key before a rotation valid (their
key id says which). Only crypto is given these keys.

A job grant is a job token sealed under a grant key (also from TOKEN_SEALING_KEY), bound to
its project and document: it is what ingest stores in its database and RQ job arguments. A
reader of those stores holds nothing usable; only crypto opens a grant, for ingest and its
worker (runtime/callers.py). Nothing here logs a token, grant or key.
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import Unauthenticated
from runtime.tokens import (
    ALTERED,
    DOMAIN,
    Scope,
    TokenClaims,
    decode,
    encode,
    key_id_of,
    signing_key_id,
)
from runtime.tokens import verify as verify_claims
from services.crypto.aead import Aead, AeadError
from services.crypto.kdf import hkdf_subkey

__all__ = ["ProjectKeys", "Scope", "TokenAuthority", "UnlockToken"]

GRANT_DOMAIN = b"contextcache/job-grant/v1\x00"
GRANT_HEADER = 32  # project id ‖ document id, in clear, bound as associated data


@dataclass(frozen=True)
class ProjectKeys:
    """A project's unwrapped keys. Lives only for the request that needs them."""

    data_key: bytes = field(repr=False)
    signing_seed: bytes = field(repr=False)


@dataclass(frozen=True)
class UnlockToken:
    claims: TokenClaims
    keys: ProjectKeys = field(repr=False)

    @property
    def project_id(self) -> uuid.UUID:
        return self.claims.project_id

    @property
    def scope(self) -> Scope:
        return self.claims.scope

    @property
    def generation(self) -> int:
        return self.claims.generation

    @property
    def expires_at(self) -> int:
        return self.claims.expires_at

    @property
    def expires_at_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.expires_at, datetime.UTC)


@dataclass(frozen=True)
class _SigningKey:
    signer: Ed25519PrivateKey
    sealer: Aead
    public_key: bytes


def _signing_key(master_key: bytes) -> _SigningKey:
    signer = Ed25519PrivateKey.from_private_bytes(
        hkdf_subkey(master_key, b"contextcache/token-signing/v1")
    )
    return _SigningKey(
        signer,
        Aead(hkdf_subkey(master_key, b"contextcache/token-sealing/v1")),
        signer.public_key().public_bytes_raw(),
    )


class TokenAuthority:
    """Issues and opens tokens under the service's token keys (current one first)."""

    def __init__(self, master_key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        masters = (master_key, *previous)
        self._keys = {}
        for master in masters:
            key = _signing_key(master)
            self._keys[key_id_of(key.public_key)] = key
        self.current_key_id = key_id_of(_signing_key(master_key).public_key)
        self._grants = [Aead(hkdf_subkey(m, b"contextcache/job-grant/v1")) for m in masters]

    def verification_keys(self) -> list[tuple[bytes, bytes]]:
        """(key id, public key) of every accepted key, the current one first."""
        ordered = sorted(self._keys.items(), key=lambda item: item[0] != self.current_key_id)
        return [(key_id, key.public_key) for key_id, key in ordered]

    def issue(
        self,
        project_id: uuid.UUID,
        scope: Scope,
        ttl_seconds: int,
        keys: ProjectKeys,
        generation: int,
        document_id: uuid.UUID | None = None,
    ) -> tuple[str, UnlockToken]:
        if (scope is Scope.JOB) != (document_id is not None):
            raise ValueError("a job token names its document; an unlock token none")
        now = int(time.time())
        claims = TokenClaims(
            project_id,
            scope,
            document_id,
            generation,
            self.current_key_id,
            now,
            now + ttl_seconds,
        )
        packed = claims.pack()
        key = self._keys[self.current_key_id]
        sealed = key.sealer.seal(keys.data_key + keys.signing_seed, DOMAIN + packed)
        signature = key.signer.sign(DOMAIN + packed + sealed)
        return encode(packed, sealed, signature), UnlockToken(claims, keys)

    def open(self, text: str) -> UnlockToken:
        """The token's claims and keys; UNAUTHENTICATED when it is not a valid, live token."""
        parts = decode(text)
        key = self._keys.get(signing_key_id(parts))
        if key is None:
            raise Unauthenticated(ALTERED)
        claims = verify_claims(parts, key.signer.public_key())
        try:
            keys = key.sealer.open(parts.sealed, DOMAIN + parts.claims)
        except AeadError:
            raise Unauthenticated(ALTERED) from None
        return UnlockToken(claims, ProjectKeys(keys[:32], keys[32:]))

    def seal_grant(self, token: str, project_id: uuid.UUID, document_id: uuid.UUID) -> bytes:
        header = project_id.bytes + document_id.bytes
        return header + self._grants[0].seal(token.encode(), GRANT_DOMAIN + header)

    def open_grant(self, grant: bytes) -> tuple[str, uuid.UUID, uuid.UUID]:
        """(job token, project id, document id) of a grant; UNAUTHENTICATED if forged."""
        header, sealed = grant[:GRANT_HEADER], grant[GRANT_HEADER:]
        if len(header) == GRANT_HEADER:
            for aead in self._grants:
                try:
                    token = aead.open(sealed, GRANT_DOMAIN + header).decode()
                except AeadError:
                    continue
                return token, uuid.UUID(bytes=header[:16]), uuid.UUID(bytes=header[16:])
        raise Unauthenticated(
            "The job grant is invalid: it was altered or is of another deployment"
        )
