"""Uploads through the gateway: streamed to ingest (an 8 MB file passes the 5 MiB buffer
limit of other calls) and admitted GATEWAY_MAX_CONCURRENT_UPLOADS at a time — the next one is
refused at once (UNAVAILABLE, retryable), before its body is read. The upstream is a slow
stand-in for ingest with ingest's certificate, so the test controls how long an upload lasts.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contextcache.v1 import ingest_pb2, ingest_pb2_grpc
from runtime.config import Settings
from runtime.tls import workload_identity
from tests.gateway.conftest import free_port, gateway

pytestmark = pytest.mark.envoy

HOLD = 3.0  # seconds each upload stays in the stand-in


class SlowIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self) -> None:
        self.received: list[int] = []
        self._lock = threading.Lock()

    def IngestDocument(self, request, context):
        with self._lock:
            self.received.append(len(request.file.content))
        time.sleep(HOLD)
        return ingest_pb2.IngestDocumentResponse(
            document=ingest_pb2.Document(id="00000000-0000-4000-8000-000000000001")
        )


def upload(address: str, size: int) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        try:
            stub.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id="00000000-0000-4000-8000-000000000002",
                    file=ingest_pb2.FileSource(filename="big.txt", content=b"a" * size),
                ),
                metadata=(("x-unlock-token", "not-checked-by-the-stand-in"),),
                timeout=30,
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_uploads_are_streamed_and_admitted_a_bounded_number_at_a_time(logs, ratelimit):
    port = free_port()
    identity = workload_identity(Settings(tls_dir=logs / "tls"), "ingest")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    stand_in = SlowIngest()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(stand_in, server)
    checks = health.HealthServicer()
    checks.set("contextcache.v1.IngestService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_secure_port(f"127.0.0.1:{port}", identity.server_credentials())
    server.start()
    try:
        with gateway(
            logs,
            wait_healthy=("ingest_uploads",),
            ingest_addr=f"127.0.0.1:{port}",
            ratelimit_addr=ratelimit,
            gateway_max_concurrent_uploads=1,
        ) as gw:
            size = 8 * 1024 * 1024
            with futures.ThreadPoolExecutor(max_workers=2) as pool:
                first = pool.submit(upload, gw.address, size)
                deadline = time.monotonic() + 10
                while not stand_in.received and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert stand_in.received, "the first upload never reached the upstream"
                started = time.monotonic()
                second = pool.submit(upload, gw.address, size).result()
                refused_after = time.monotonic() - started
                assert first.result() == grpc.StatusCode.OK
            assert second == grpc.StatusCode.UNAVAILABLE
            assert refused_after < HOLD  # refused at once, not queued behind the first
            assert stand_in.received == [size]  # the refused body never reached ingest
            assert upload(gw.address, size) == grpc.StatusCode.OK  # the slot is back
    finally:
        server.stop(0)
