"""Keyrings and unlock tokens through the gRPC API: create, open, rewrap, token checks,
job tokens, offline token verification, and the bound on concurrent key derivations."""

from __future__ import annotations

import base64
import struct
import time
import uuid

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import duration_pb2

from services.crypto.config import CryptoConfig
from services.crypto.tokens import ProjectKeys, Scope, TokenAuthority

from .support import (
    CHEAP_KDF,
    PASSPHRASE,
    SEALING_KEY,
    RunningCrypto,
    code_of,
    settings_for,
    with_damaged_signing_key,
)
from .support import crypto_messages as crypto_pb2


def open_keyring(stub, project_id, keyring, passphrase, ttl=None):
    return stub.OpenKeyring(
        crypto_pb2.OpenKeyringRequest(
            project_id=project_id, keyring=keyring, passphrase=passphrase, ttl=ttl
        )
    )


def encrypt_batch(stub, project_id, token, *items):
    return stub.EncryptBatch(
        crypto_pb2.EncryptBatchRequest(
            project_id=project_id,
            items=[crypto_pb2.CryptoItem(data=data, associated_data=ad) for data, ad in items],
        ),
        metadata=(("x-unlock-token", token),),
    ).ciphertexts


def decrypt_batch(stub, project_id, token, *items):
    return stub.DecryptBatch(
        crypto_pb2.DecryptBatchRequest(
            project_id=project_id,
            items=[crypto_pb2.CryptoItem(data=data, associated_data=ad) for data, ad in items],
        ),
        metadata=(("x-unlock-token", token),),
    ).plaintexts


def test_create_keyring_wraps_fresh_keys(stub, new_project):
    project = new_project()
    keyring = project.keyring
    assert (keyring.version, keyring.generation) == (2, 1)
    assert len(keyring.salt) == 16
    assert (
        keyring.kdf_params.memory_kib,
        keyring.kdf_params.time_cost,
        keyring.kdf_params.parallelism,
    ) == (8192, 1, 1)
    assert len(keyring.public_key) == 32
    # 1 version byte + 12 nonce + 32 key + 16 tag.
    assert len(keyring.wrapped_data_key) == len(keyring.wrapped_signing_key) == 61
    other = new_project().keyring
    assert other.salt != keyring.salt and other.public_key != keyring.public_key


def test_short_passphrase_is_rejected_with_a_clear_message(stub):
    code, message = code_of(
        lambda: stub.CreateKeyring(
            crypto_pb2.CreateKeyringRequest(project_id=str(uuid.uuid4()), passphrase="too short")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "Passphrase too short. Minimum length is 20 characters"


def test_open_keyring_issues_a_token_with_the_requested_lifetime(stub, new_project):
    project = new_project()
    response = open_keyring(
        stub,
        project.id,
        project.keyring,
        PASSPHRASE,
        ttl=duration_pb2.Duration(seconds=120),
    )
    assert response.unlock_token.startswith("cct2.")
    lifetime = response.expires_at.seconds - _claims(response.unlock_token)["issued_at"]
    assert lifetime == 120


def test_wrong_passphrase_is_permission_denied(stub, new_project):
    project = new_project()
    code, message = code_of(
        lambda: open_keyring(stub, project.id, project.keyring, PASSPHRASE + "!")
    )
    assert (code, message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "Wrong passphrase for this project",
    )


def test_keyring_of_another_project_does_not_open(stub, new_project):
    project = new_project()
    code, _ = code_of(lambda: open_keyring(stub, str(uuid.uuid4()), project.keyring, PASSPHRASE))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_damaged_keyring_is_data_loss(stub, new_project):
    project = new_project()
    damaged = with_damaged_signing_key(project.keyring)
    code, message = code_of(lambda: open_keyring(stub, project.id, damaged, PASSPHRASE))
    assert code == grpc.StatusCode.DATA_LOSS
    assert "damaged" in message
    # A keyring naming another public key is not the project's: refused before unwrapping.
    swapped_key = crypto_pb2.Keyring()
    swapped_key.CopyFrom(project.keyring)
    swapped_key.public_key = new_project().keyring.public_key
    code, message = code_of(lambda: open_keyring(stub, project.id, swapped_key, PASSPHRASE))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "not the project's" in message


def test_rewrap_changes_the_passphrase_but_not_the_keys(stub, new_project):
    project = new_project()
    (ciphertext,) = encrypt_batch(stub, project.id, project.token, (b"kept content", b"chunk:0"))
    new_passphrase = "a completely different passphrase"
    rewrapped = stub.RewrapKeyring(
        crypto_pb2.RewrapKeyringRequest(
            project_id=project.id,
            keyring=project.keyring,
            old_passphrase=PASSPHRASE,
            new_passphrase=new_passphrase,
        )
    ).keyring
    assert rewrapped.public_key == project.keyring.public_key
    assert rewrapped.salt != project.keyring.salt
    code, _ = code_of(lambda: open_keyring(stub, project.id, rewrapped, PASSPHRASE))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    token = open_keyring(stub, project.id, rewrapped, new_passphrase).unlock_token
    assert decrypt_batch(stub, project.id, token, (ciphertext, b"chunk:0")) == [b"kept content"]


def test_rewrap_with_wrong_old_passphrase_is_permission_denied(stub, new_project):
    project = new_project()
    code, _ = code_of(
        lambda: stub.RewrapKeyring(
            crypto_pb2.RewrapKeyringRequest(
                project_id=project.id,
                keyring=project.keyring,
                old_passphrase="not the passphrase",
                new_passphrase="a completely different passphrase",
            )
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_missing_token_is_unauthenticated(stub, new_project):
    project = new_project()
    code, message = code_of(
        lambda: stub.HashTerms(crypto_pb2.HashTermsRequest(project_id=project.id, terms=["a"]))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "x-unlock-token" in message


def test_tampered_token_is_unauthenticated(stub, new_project):
    project = new_project()
    raw = bytearray(_raw(project.token))
    # scope, project id, document id, generation, sealed keys, signature
    for position in (1, 10, 30, 36, 100, 180):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        text = "cct2." + base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        code, message = code_of(lambda t=text: encrypt_batch(stub, project.id, t, (b"x", b"")))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "altered" in message
    for garbage in ("", "cct2.", "cct2.!!!", project.token[:-2], project.token + "AA"):
        code, _ = code_of(lambda g=garbage: encrypt_batch(stub, project.id, g, (b"x", b"")))
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_token_of_another_project_is_unauthenticated(stub, new_project):
    project, other = new_project(), new_project()
    code, message = code_of(lambda: encrypt_batch(stub, other.id, project.token, (b"x", b"")))
    assert (code, message) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "The unlock token belongs to another project",
    )


def test_expired_token_is_unauthenticated(stub, new_project):
    project = new_project()
    # A token exactly as this deployment would issue it, whose lifetime is already over.
    authority = TokenAuthority(base64.b64decode(SEALING_KEY))
    keys = authority.open(project.token).keys
    expired, _ = authority.issue(uuid.UUID(project.id), Scope.UNLOCK, -1, keys, generation=1)
    code, message = code_of(lambda: encrypt_batch(stub, project.id, expired, (b"x", b"")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in message


def test_token_from_another_deployment_is_unauthenticated(stub, new_project):
    project = new_project()
    foreign = TokenAuthority(b"\x07" * 32)
    text, _ = foreign.issue(
        uuid.UUID(project.id),
        Scope.UNLOCK,
        600,
        ProjectKeys(b"\x01" * 32, b"\x02" * 32),
        generation=1,
    )
    code, _ = code_of(lambda: encrypt_batch(stub, project.id, text, (b"x", b"")))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_job_token_works_for_content_but_cannot_issue_tokens(stub, new_project):
    project = new_project()
    document_id = str(uuid.uuid4())
    response = stub.IssueJobToken(
        crypto_pb2.IssueJobTokenRequest(
            project_id=project.id,
            document_id=document_id,
            ttl=duration_pb2.Duration(seconds=7 * 24 * 3600),
        ),
        metadata=project.metadata,
    )
    job = response.job_token
    claims = _claims(job)
    assert claims["scope"] == Scope.JOB
    assert claims["document_id"] == uuid.UUID(document_id)
    assert response.expires_at.seconds - claims["issued_at"] == 7 * 24 * 3600
    (ciphertext,) = encrypt_batch(stub, project.id, job, (b"from a job", b"doc"))
    assert decrypt_batch(stub, project.id, project.token, (ciphertext, b"doc")) == [b"from a job"]
    code, _ = code_of(
        lambda: stub.IssueJobToken(
            crypto_pb2.IssueJobTokenRequest(project_id=project.id, document_id=document_id),
            metadata=(("x-unlock-token", job),),
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_default_job_token_lifetime_is_a_day(stub, new_project):
    project = new_project()
    response = stub.IssueJobToken(
        crypto_pb2.IssueJobTokenRequest(project_id=project.id, document_id=str(uuid.uuid4())),
        metadata=project.metadata,
    )
    assert response.expires_at.seconds - _claims(response.job_token)["issued_at"] == 86400


def test_tokens_verify_offline_with_the_published_key(stub, new_project):
    project = new_project()
    (key,) = stub.GetTokenVerificationKeys(crypto_pb2.GetTokenVerificationKeysRequest()).keys
    raw = _raw(project.token)
    body, signature = raw[:-64], raw[-64:]
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(
        signature, b"contextcache/token/v2\x00" + body
    )
    assert _claims(project.token)["key_id"] == key.key_id
    claims = _claims(project.token)
    assert claims["project_id"] == uuid.UUID(project.id)
    assert claims["scope"] == Scope.UNLOCK
    # The keys are sealed: the data key appears nowhere in the token.
    keys = TokenAuthority(base64.b64decode(SEALING_KEY)).open(project.token).keys
    assert keys.data_key not in raw and keys.signing_seed not in raw


def test_default_argon2_cost_keyring(tmp_path):
    """One keyring at the production default cost (64 MiB, t=3, p=4)."""
    service = RunningCrypto(settings_for(f"sqlite:///{tmp_path}/c.db", tmp_path), CryptoConfig())
    try:
        project_id = str(uuid.uuid4())
        keyring = service.stub.CreateKeyring(
            crypto_pb2.CreateKeyringRequest(project_id=project_id, passphrase=PASSPHRASE)
        ).keyring
        params = keyring.kdf_params
        assert (params.memory_kib, params.time_cost, params.parallelism) == (65536, 3, 4)
        assert open_keyring(service.stub, project_id, keyring, PASSPHRASE).unlock_token
        code, _ = code_of(lambda: open_keyring(service.stub, project_id, keyring, "x" * 20))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        service.stop()


def test_a_burst_of_public_derivations_queues_within_bounds_and_never_starves_unlock(tmp_path):
    service = RunningCrypto(settings_for(f"sqlite:///{tmp_path}/c.db", tmp_path), CHEAP_KDF)
    # The heaviest DeriveKey the public API allows (~0.3 s each here).
    heavy = crypto_pb2.Argon2Params(time_cost=4, memory_kib=65536, parallelism=4)
    request = crypto_pb2.DeriveKeyRequest(passphrase="pw", salt=b"s" * 16, params=heavy)
    project_id = str(uuid.uuid4())
    keyring = service.stub.CreateKeyring(
        crypto_pb2.CreateKeyringRequest(project_id=project_id, passphrase=PASSPHRASE)
    ).keyring
    try:
        calls = [service.stub.DeriveKey.future(request) for _ in range(24)]
        # While the storm runs, unlocks use their own derivation slots.
        started = time.monotonic()
        assert open_keyring(service.stub, project_id, keyring, PASSPHRASE).unlock_token
        unlock_seconds = time.monotonic() - started
        errors = [call.exception() for call in calls]
        succeeded = [e for e in errors if e is None]
        refused = [e for e in errors if e is not None]
        assert succeeded, "queued derivations complete"
        # Beyond one running and four waiting, refused at once (how many depends on how fast
        # the calls arrive; the queue bound itself: tests/unit/test_derivation_limiter.py).
        assert {e.code() for e in refused} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # One public derivation at a time: the unlock waited for at most the one running.
        assert unlock_seconds < 5.0
        over_cap = crypto_pb2.Argon2Params(time_cost=1, memory_kib=131072, parallelism=1)
        code, message = code_of(
            lambda: service.stub.DeriveKey(
                crypto_pb2.DeriveKeyRequest(passphrase="pw", salt=b"s" * 16, params=over_cap)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "capped" in message
        # Once the burst is over the service derives normally again.
        assert service.stub.DeriveKey(request).key
    finally:
        service.stop()


def test_production_refuses_to_start_without_a_sealing_key(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"TOKEN_SEALING_KEY", "DATABASE_URL"}
    }
    env.update(ENVIRONMENT="production", DATA_DIR=str(tmp_path), PORT="59999")
    result = subprocess.run(
        [sys.executable, "-m", "services.crypto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "TOKEN_SEALING_KEY: required when ENVIRONMENT=production" in result.stderr
    env["TOKEN_SEALING_KEY"] = "not base64 of 32 bytes"
    result = subprocess.run(
        [sys.executable, "-m", "services.crypto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "TOKEN_SEALING_KEY: must be the base64 encoding of exactly 32 bytes" in result.stderr


def _raw(token: str) -> bytes:
    body = token.removeprefix("cct2.")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _claims(token: str) -> dict:
    """Reads the public claims as another service would (layout documented in tokens.py)."""
    version, scope, project, document, generation, key_id, issued_at, expires_at = struct.unpack(
        ">BB16s16sI8sqq", _raw(token)[:62]
    )
    assert version == 2
    return {
        "scope": scope,
        "project_id": uuid.UUID(bytes=project),
        "document_id": uuid.UUID(bytes=document),
        "generation": generation,
        "key_id": key_id,
        "issued_at": issued_at,
        "expires_at": expires_at,
    }
