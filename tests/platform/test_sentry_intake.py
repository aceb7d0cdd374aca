"""Sentry as configured from the environment, against a local intake: a small HTTP server on
loopback standing in for Sentry's ingest endpoint (SENTRY_DSN=http://key@127.0.0.1:PORT/1).

The crypto service runs as its own process (`python -m services.crypto`, as deployed) with
SENTRY_DSN, SENTRY_TRACES_SAMPLE_RATE and ENVIRONMENT; calls carrying a passphrase and
plaintext go through its public API, then an unexpected failure (its audit table dropped
under it) makes an INTERNAL error. The envelopes the intake receives carry the environment and
release, transactions only when the sample rate says so, and no passphrase or plaintext. Its
detailed status reports monitoring enabled.
"""

from __future__ import annotations

import gzip
import http.server
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from contextcache.v1 import common_pb2, crypto_pb2, crypto_pb2_grpc
from runtime import VERSION
from runtime.config import Settings
from runtime.ports import free_port
from tests.conftest import identity_of
from tests.gateway.conftest import service, wait_until

PASSPHRASE = "intake-passphrase-QX7 staple horse battery"
PLAINTEXT = b"INTAKE-PLAINTEXT-83d1 never in an event"


class Intake(http.server.ThreadingHTTPServer):
    """Records every envelope POSTed to /api/<project>/envelope/."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), IntakeHandler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    def items(self) -> list[tuple[dict, bytes]]:
        """(item header, payload) of every envelope item received so far."""
        with self.lock:
            bodies = list(self.bodies)
        found = []
        for body in bodies:
            lines = body.split(b"\n")
            position = 1  # after the envelope header
            while position < len(lines) and lines[position]:
                header = json.loads(lines[position])
                if "length" in header:
                    rest = b"\n".join(lines[position + 1 :])
                    payload = rest[: header["length"]]
                    consumed = rest[header["length"] + 1 :]
                    lines = [b"", *consumed.split(b"\n")]
                    position = 1
                else:
                    payload = lines[position + 1]
                    position += 2
                found.append((header, payload))
        return found

    def of_type(self, kind: str) -> list[dict]:
        return [json.loads(payload) for header, payload in self.items() if header["type"] == kind]


class IntakeHandler(http.server.BaseHTTPRequestHandler):
    server: Intake

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        elif self.headers.get("content-encoding") == "br":
            import brotli

            body = brotli.decompress(body)
        if "/envelope/" in self.path:
            with self.server.lock:
                self.server.bodies.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@contextmanager
def intake() -> Iterator[Intake]:
    server = Intake()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("sample_rate", ["1.0", "0.0"])
def test_errors_and_traces_reach_sentry_scrubbed(tmp_path, sample_rate):
    with intake() as received:
        port = free_port()
        data = tmp_path / "data"
        env = {
            "SENTRY_DSN": f"http://publickey@127.0.0.1:{received.server_port}/1",
            "SENTRY_TRACES_SAMPLE_RATE": sample_rate,
            "ENVIRONMENT": "staging",
            "DATA_DIR": str(data),
            "TLS_DIR": str(tmp_path / "tls"),
        }
        with service("services.crypto", port, env, tmp_path / "logs") as crypto:
            settings = Settings(tls_dir=tmp_path / "tls", environment="test")
            channel = grpc.secure_channel(
                f"127.0.0.1:{port}", identity_of(settings).channel_credentials()
            )
            with channel:
                stub = crypto_pb2_grpc.CryptoServiceStub(channel)
                status = stub.GetStatus(crypto_pb2.CryptoServiceGetStatusRequest(), timeout=10)
                checks = {check.name: check for check in status.status.checks}
                monitoring = checks["monitoring"]
                assert (monitoring.type, monitoring.result) == (
                    "sentry",
                    common_pb2.DependencyCheck.RESULT_OK,
                )
                assert status.status.environment == "staging"

                key = stub.DeriveKey(
                    crypto_pb2.DeriveKeyRequest(passphrase=PASSPHRASE, salt=b"s" * 16),
                    timeout=30,
                ).key
                stub.Encrypt(crypto_pb2.EncryptRequest(key=key, plaintext=PLAINTEXT), timeout=10)

                with sqlite3.connect(data / "crypto.db") as database:
                    database.execute("DROP TABLE audit_events")
                with pytest.raises(grpc.RpcError) as caught:
                    stub.VerifyAuditChain(
                        crypto_pb2.VerifyAuditChainRequest(project_id=str(uuid.uuid4())),
                        timeout=10,
                    )
                assert caught.value.code() == grpc.StatusCode.INTERNAL
                wait_until(lambda: received.of_type("event"), 20, "the error event")
            crypto.stop()  # flushes what is left (transactions)

        events = received.of_type("event")
        transactions = received.of_type("transaction")
        raw = b"\n".join(received.bodies)

    assert events, "the INTERNAL error was reported"
    for event in events:
        assert event["environment"] == "staging"
        assert event["release"] == f"contextcache@{VERSION}"
        assert event["level"] == "error"
        assert event["tags"]["service"] == "crypto"
    # The caller's reference id finds the report.
    (reference,) = re.findall(r"\b[0-9a-f]{12}\b", caught.value.details())
    assert any(reference in json.dumps(event) for event in events)
    if sample_rate == "1.0":
        assert {t["transaction"] for t in transactions} >= {
            "/contextcache.v1.CryptoService/DeriveKey",
            "/contextcache.v1.CryptoService/Encrypt",
        }, [t.get("transaction") for t in transactions]
        assert {t["environment"] for t in transactions} == {"staging"}
    else:
        assert transactions == []
    for secret in (PASSPHRASE.encode(), PLAINTEXT, key.hex().encode()):
        assert secret not in raw
