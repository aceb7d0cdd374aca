"""Unlock tokens: what lets a caller use a project's keys for a while, without crypto storing them.

A token is `cct1.` + base64url (no padding) of

    claims (34 bytes) | sealed keys (93 bytes) | signature (64 bytes)

- claims: version (1 byte, =1) | scope (1 byte: 1 unlock, 2 job) | project id (16-byte UUID)
  | issued at | expires at (each 8-byte big-endian signed Unix seconds). Readable by anyone.
- sealed keys: the project's data key and Ed25519 signing seed (64 bytes), AEAD-sealed
  (see aead.py) under the token sealing key with associated data DOMAIN ‖ claims, so the keys
  cannot be moved under other claims.
- signature: Ed25519 over DOMAIN ‖ claims ‖ sealed keys, by the token signing key. Other
  services check project, scope and expiry offline with the public key from
  GetTokenVerificationKey; only crypto can unseal the keys.

Both token keys derive from TOKEN_SEALING_KEY with HKDF, so every replica given the same
environment accepts the same tokens. Tokens are stateless: they stay valid until they expire
(a passphrase change does not revoke them). Nothing here logs a token or a key, and no error
message carries one.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import struct
import time
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import Unauthenticated
from services.crypto.aead import Aead, AeadError
from services.crypto.kdf import hkdf_subkey

PREFIX = "cct1."
DOMAIN = b"contextcache/unlock-token/v1\x00"
TOKEN_VERSION = 1
CLAIMS = struct.Struct(">BB16sqq")
KEYS_BYTES = 64
SEALED_BYTES = 1 + 12 + KEYS_BYTES + 16
SIGNATURE_BYTES = 64
TOKEN_BYTES = CLAIMS.size + SEALED_BYTES + SIGNATURE_BYTES
MAX_TOKEN_CHARS = 512


class Scope(enum.IntEnum):
    UNLOCK = 1  # an interactive unlock (OpenKeyring), short-lived
    JOB = 2  # a queued background job (IssueJobToken); cannot issue further tokens


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
        encoded = base64.urlsafe_b64encode(claims + sealed + signature).rstrip(b"=").decode()
        return PREFIX + encoded, token

    def open(self, text: str) -> UnlockToken:
        """The token's claims and keys; UNAUTHENTICATED when it is not a valid, live token."""
        raw = _decode(text)
        claims, sealed, signature = (
            raw[: CLAIMS.size],
            raw[CLAIMS.size : CLAIMS.size + SEALED_BYTES],
            raw[CLAIMS.size + SEALED_BYTES :],
        )
        try:
            self._verifier.verify(signature, DOMAIN + claims + sealed)
        except InvalidSignature:
            raise Unauthenticated(
                "The unlock token is invalid: it was altered or issued by another deployment"
            ) from None
        version, scope, project, issued_at, expires_at = CLAIMS.unpack(claims)
        if version != TOKEN_VERSION or scope not in Scope._value2member_map_:
            raise Unauthenticated("The unlock token has an unsupported format; unlock again")
        if time.time() >= expires_at:
            when = datetime.datetime.fromtimestamp(expires_at, datetime.UTC).isoformat()
            raise Unauthenticated(f"The unlock token expired at {when}; unlock the project again")
        try:
            keys = self._sealer.open(sealed, DOMAIN + claims)
        except AeadError:
            raise Unauthenticated(
                "The unlock token is invalid: it was altered or issued by another deployment"
            ) from None
        return UnlockToken(
            uuid.UUID(bytes=project),
            Scope(scope),
            issued_at,
            expires_at,
            ProjectKeys(keys[:32], keys[32:]),
        )


def _decode(text: str) -> bytes:
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
    return raw
