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
    claims = tokens.TokenClaims(
        uuid.uuid4(),
        tokens.Scope.UNLOCK,
        None,
        1,
        tokens.key_id_of(key.public_key().public_bytes_raw()),
        now,
        now + expires_in,
    ).pack()
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


def test_job_tokens_open_only_their_own_documents_steps_and_no_public_rpc():
    project, document = uuid.uuid4(), uuid.uuid4()
    key = Ed25519PrivateKey.generate()
    claims = tokens.TokenClaims(
        project, tokens.Scope.JOB, document, 1, b"\0" * 8, 0, int(time.time()) + 60
    )
    unlock = tokens.TokenClaims(project, tokens.Scope.UNLOCK, None, 1, b"\0" * 8, 0, 0)
    assert key  # tokens.check_use needs only the claims
    with pytest.raises(Unauthenticated, match="job token"):
        tokens.check_use(claims, tokens.UNLOCK_ONLY)  # what every public RPC asks
    with pytest.raises(Unauthenticated, match="another document"):
        tokens.check_use(claims, tokens.ANY_SCOPE, str(uuid.uuid4()))
    tokens.check_use(claims, tokens.ANY_SCOPE, str(document))
    tokens.check_use(unlock, tokens.ANY_SCOPE, str(uuid.uuid4()))
    tokens.check_use(unlock, tokens.UNLOCK_ONLY)


class _Keys:
    """Crypto's GetTokenVerificationKeys as seen over the wire: the keys it publishes now."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.publish(*keys)
        self.calls = 0

    def publish(self, *keys: Ed25519PrivateKey) -> None:
        from contextcache.internal.v1 import crypto_pb2

        self.response = crypto_pb2.GetTokenVerificationKeysResponse(
            keys=[
                crypto_pb2.TokenVerificationKey(
                    key_id=tokens.key_id_of(k.public_key().public_bytes_raw()),
                    public_key=k.public_key().public_bytes_raw(),
                )
                for k in keys
            ]
        )

    async def GetTokenVerificationKeys(self, request, timeout=None):
        self.calls += 1
        return self.response


def _token_for(key: Ed25519PrivateKey, project: uuid.UUID) -> str:
    now = int(time.time())
    claims = tokens.TokenClaims(
        project,
        tokens.Scope.UNLOCK,
        None,
        1,
        tokens.key_id_of(key.public_key().public_bytes_raw()),
        now,
        now + 600,
    ).pack()
    sealed = bytes(tokens.SEALED_BYTES)
    return tokens.encode(claims, sealed, key.sign(tokens.DOMAIN + claims + sealed))


async def test_a_rotated_signing_key_is_fetched_when_a_token_names_it():
    old, new, foreign = (Ed25519PrivateKey.generate() for _ in range(3))
    crypto = _Keys(old)
    now = [0.0]
    verifier = tokens.TokenVerifier(crypto, clock=lambda: now[0])
    project = uuid.uuid4()
    await verifier.verify(_token_for(old, project), str(project))
    assert crypto.calls == 1
    crypto.publish(new, old)  # crypto rotated: new tokens name the new key
    now[0] += tokens.KEY_REFRESH_SECONDS
    await verifier.verify(_token_for(new, project), str(project))
    assert crypto.calls == 2
    await verifier.verify(_token_for(old, project), str(project))  # still accepted
    # A key crypto never published is refused, and asking again is rate-limited.
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await verifier.verify(_token_for(foreign, project), str(project))
    assert crypto.calls == 2
