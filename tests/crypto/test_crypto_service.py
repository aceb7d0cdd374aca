"""The crypto service as a whole: health and status, and no secret in any output.

The leak test drives every secret-bearing RPC (and one unexpected INTERNAL error) with logs
at DEBUG, an in-memory span exporter and Sentry reporting into a capturing transport, then
searches everything captured for passphrases, tokens, keys and plaintext in every encoding.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid

import grpc
import sentry_sdk
import sqlalchemy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sentry_sdk.transport import Transport

from contextcache.v1 import common_pb2
from runtime.protos import CRYPTO_SERVICE
from runtime.telemetry import configure_sentry, tracer_provider
from services.crypto.tokens import TokenAuthority

from .support import CHEAP_KDF, SEALING_KEY, RunningCrypto, settings_for
from .support import crypto_messages as crypto_pb2


def test_health_and_status(crypto):
    health = health_pb2_grpc.HealthStub(crypto.channel())
    for name in ("", CRYPTO_SERVICE, "liveness"):
        response = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    status = crypto.stub.GetStatus(crypto_pb2.CryptoServiceGetStatusRequest()).status
    assert status.service == CRYPTO_SERVICE
    assert status.state == common_pb2.ServiceStatus.STATE_HEALTHY
    checks = {check.name: check for check in status.checks}
    assert set(checks) == {"database", "monitoring"}
    check = checks["database"]
    assert check.result == common_pb2.DependencyCheck.RESULT_OK
    # Error reporting is a check of its own: this process has not configured Sentry.
    assert checks["monitoring"].type == "sentry"
    assert checks["monitoring"].result == common_pb2.DependencyCheck.RESULT_DISABLED
    kind = "sqlite" if crypto.settings.database_url.startswith("sqlite") else "postgresql"
    assert check.type == kind


class CapturingTransport(Transport):
    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope) -> None:
        self.envelopes.append(envelope.serialize())


def forms(secret: bytes | str) -> list[str]:
    """The ways a secret could show up in text output."""
    if isinstance(secret, str):
        return [secret]
    return [
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def test_no_secret_in_logs_errors_spans_or_sentry(tmp_path, caplog, capfd):
    spans = InMemorySpanExporter()
    tracer_provider("crypto", SimpleSpanProcessor(spans))
    settings = settings_for(
        f"sqlite:///{tmp_path}/c.db",
        tmp_path,
        sentry_dsn="https://public@o0.ingest.sentry.io/0",
    )
    assert configure_sentry(settings, "crypto")
    transport = CapturingTransport(sentry_sdk.get_client().options)
    sentry_sdk.get_client().transport = transport
    caplog.set_level(logging.DEBUG)
    service = RunningCrypto(settings, CHEAP_KDF)
    stub = service.stub
    errors: list[str] = []

    def expect_failure(call) -> None:
        try:
            call()
        except grpc.RpcError as error:
            errors.append(f"{error.code()} {error.details()} {error.trailing_metadata()}")
        else:
            raise AssertionError("the call should have failed")

    passphrase = "leaky-passphrase-LP7 horse staple battery"
    wrong = "wrong-passphrase-WP3 battery staple horse"
    plaintext = b"TOP-SECRET-PLAINTEXT-4f1c"
    term = "secretterm-91ab"
    project_id = str(uuid.uuid4())
    try:
        keyring = stub.CreateKeyring(
            crypto_pb2.CreateKeyringRequest(project_id=project_id, passphrase=passphrase)
        ).keyring
        open_request = crypto_pb2.OpenKeyringRequest(
            project_id=project_id, keyring=keyring, passphrase=passphrase
        )
        token = stub.OpenKeyring(open_request).unlock_token
        metadata = (("x-unlock-token", token),)
        open_request.passphrase = wrong
        expect_failure(lambda: stub.OpenKeyring(open_request))
        item = crypto_pb2.CryptoItem(data=plaintext, associated_data=b"doc:1")
        (ciphertext,) = stub.EncryptBatch(
            crypto_pb2.EncryptBatchRequest(project_id=project_id, items=[item]), metadata=metadata
        ).ciphertexts
        decrypt = crypto_pb2.DecryptBatchRequest(
            project_id=project_id,
            items=[crypto_pb2.CryptoItem(data=ciphertext, associated_data=b"doc:1")],
        )
        assert stub.DecryptBatch(decrypt, metadata=metadata).plaintexts == [plaintext]
        decrypt.items[0].associated_data = b"doc:2"
        expect_failure(lambda: stub.DecryptBatch(decrypt, metadata=metadata))
        stub.HashTerms(
            crypto_pb2.HashTermsRequest(project_id=project_id, terms=[term]), metadata=metadata
        )
        job = stub.IssueJobToken(
            crypto_pb2.IssueJobTokenRequest(project_id=project_id, document_id=project_id),
            metadata=metadata,
        ).job_token
        other_project = str(uuid.uuid4())
        expect_failure(
            lambda: stub.EncryptBatch(
                crypto_pb2.EncryptBatchRequest(project_id=other_project, items=[item]),
                metadata=metadata,
            )
        )
        expect_failure(
            lambda: stub.EncryptBatch(
                crypto_pb2.EncryptBatchRequest(project_id=project_id, items=[item]),
                metadata=(("x-unlock-token", token[:-4] + "AAAA"),),
            )
        )
        derived = stub.DeriveKey(
            crypto_pb2.DeriveKeyRequest(passphrase=passphrase, salt=b"s" * 16)
        ).key
        pair = stub.GenerateKeypair(crypto_pb2.GenerateKeypairRequest())
        stub.Sign(crypto_pb2.SignRequest(private_key=pair.private_key, message=plaintext))
        expect_failure(
            lambda: stub.Decrypt(
                crypto_pb2.DecryptRequest(key=derived, ciphertext=ciphertext, associated_data=b"")
            )
        )
        append = crypto_pb2.AppendAuditEventRequest(
            project_id=project_id,
            type=crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UNLOCKED,
            actor="projects",
        )
        stub.AppendAuditEvent(append, metadata=metadata)
        # An unexpected failure while a token and keys are in play: INTERNAL, logged, reported.
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/c.db")
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("DROP TABLE audit_events"))
        engine.dispose()
        expect_failure(lambda: stub.AppendAuditEvent(append, metadata=(("x-unlock-token", job),)))
        sentry_sdk.flush()
    finally:
        service.stop()
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)  # no client: monitoring DISABLED again

    assert any("INTERNAL" in e for e in errors), "the unexpected failure was exercised"
    assert transport.envelopes, "Sentry received the unexpected failure"
    keys = TokenAuthority(base64.b64decode(SEALING_KEY)).open(token).keys
    secrets = {
        "passphrase": forms(passphrase),
        "wrong passphrase": forms(wrong),
        "unlock token": forms(token) + forms(token[5:40]),
        "job token": forms(job) + forms(job[5:40]),
        "plaintext": forms(plaintext) + forms(plaintext.decode()),
        "term": forms(term),
        "data key": forms(keys.data_key),
        "signing key": forms(keys.signing_seed),
        "derived key": forms(derived),
        "private key": forms(pair.private_key),
        "sealing key": forms(SEALING_KEY) + forms(base64.b64decode(SEALING_KEY)),
    }
    out, err = capfd.readouterr()
    records = "\n".join(
        json.dumps({k: str(v) for k, v in record.__dict__.items()}) for record in caplog.records
    )
    span_text = "\n".join(span.to_json() for span in spans.get_finished_spans())
    sentry_text = b"\n".join(transport.envelopes).decode("utf-8", "replace")
    outputs = {
        "logs": caplog.text + records + out + err,
        "error messages": "\n".join(errors),
        "spans": span_text,
        "sentry": sentry_text,
    }
    assert spans.get_finished_spans(), "spans were recorded"
    assert "EncryptBatch" in outputs["logs"], "request logs were captured"
    for where, text in outputs.items():
        for name, variants in secrets.items():
            for variant in variants:
                assert variant not in text, f"{name} leaked into {where}"
