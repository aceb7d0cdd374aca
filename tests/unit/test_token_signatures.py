"""Token checks remember verified signatures, and nothing else: another key, an altered
byte or an expired token is refused as before."""

from __future__ import annotations

import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime import tokens
from runtime.errors import Unauthenticated


def issue(key: Ed25519PrivateKey, expires_in: int = 3600) -> str:
    now = int(time.time())
    claims = tokens.CLAIMS.pack(
        tokens.TOKEN_VERSION, tokens.Scope.UNLOCK, uuid.uuid4().bytes, now, now + expires_in
    )
    sealed = bytes(tokens.SEALED_BYTES)
    return tokens.encode(claims, sealed, key.sign(tokens.DOMAIN + claims + sealed))


def test_a_token_checked_once_is_still_refused_by_another_key_or_when_altered():
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = issue(signer)
    parts = tokens.decode(token)
    assert tokens.verify(parts, signer.public_key()).scope is tokens.Scope.UNLOCK
    assert tokens.verify(parts, signer.public_key())  # remembered
    with pytest.raises(Unauthenticated, match="altered"):
        tokens.verify(parts, other.public_key())
    altered = tokens.TokenParts(parts.claims, parts.sealed, bytes(64))
    with pytest.raises(Unauthenticated, match="altered"):
        tokens.verify(altered, signer.public_key())
    claims = bytearray(parts.claims)
    claims[-1] ^= 1  # a later expiry, same signature
    with pytest.raises(Unauthenticated, match="altered"):
        tokens.verify(
            tokens.TokenParts(bytes(claims), parts.sealed, parts.signature), signer.public_key()
        )


def test_expiry_is_checked_on_every_use_of_a_remembered_signature():
    signer = Ed25519PrivateKey.generate()
    parts = tokens.decode(issue(signer, expires_in=60))
    tokens.verify(parts, signer.public_key())
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(parts, signer.public_key(), now=time.time() + 120)
