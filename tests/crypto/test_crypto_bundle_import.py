"""ImportProjectKeys refuses a bundle's damaged keyring, signature or chain as the importer's
bad input (INVALID_ARGUMENT naming the part), never as DATA_LOSS, which stays for what crypto
holds (a stored keyring that no longer opens: test_crypto_keyring)."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from runtime.errors import bad_request_of

from .support import PASSPHRASE, with_damaged_signing_key
from .support import crypto_messages as crypto_pb2

DIGEST = hashlib.sha256(b"the bytes of a bundle before its signature").digest()


def _start(project, keyring=None, signature=None):  # type: ignore[no-untyped-def]
    return crypto_pb2.ImportProjectKeysRequest(
        start=crypto_pb2.ImportProjectKeysStart(
            project_id=project.id,
            keyring=keyring or project.keyring,
            passphrase=PASSPHRASE,
            digest=DIGEST,
            signature=signature or bytes(64),
        )
    )


def _signed(stub, project) -> bytes:  # type: ignore[no-untyped-def]
    return stub.SignBundle(
        crypto_pb2.SignBundleRequest(project_id=project.id, digest=DIGEST),
        metadata=project.metadata,
    ).signature


def _refusal(stub, messages) -> tuple[grpc.StatusCode, str, list[str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ImportProjectKeys(iter(messages))
    bad_request = bad_request_of(raised.value)
    fields = [v.field for v in bad_request.field_violations] if bad_request else []
    return raised.value.code(), raised.value.details(), fields


def test_a_signature_not_of_the_keyrings_key_names_signature(stub, new_project):
    code, message, fields = _refusal(stub, [_start(new_project())])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["signature"])
    assert "Nothing was imported" in message


def test_a_damaged_keyring_in_the_bundle_names_keyring(stub, new_project):
    project = new_project()
    damaged = with_damaged_signing_key(project.keyring)
    code, message, fields = _refusal(stub, [_start(project, keyring=damaged)])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["keyring"])
    assert "damaged" in message and "Nothing was imported" in message


def test_a_chain_that_does_not_replay_names_events(stub, new_project):
    project = new_project()
    start = _start(project, signature=_signed(stub, project))
    code, message, fields = _refusal(stub, [start])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["events"])
    assert "no audit chain" in message

    # A chain must replay from seq 1: one that starts elsewhere is cut.
    event = crypto_pb2.AuditEvent(project_id=project.id, seq=5)
    events = crypto_pb2.ImportProjectKeysRequest(
        events=crypto_pb2.ExportAuditChainResponse(events=[event])
    )
    code, message, fields = _refusal(stub, [start, events])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["events"])
    assert "breaks at event 1" in message
