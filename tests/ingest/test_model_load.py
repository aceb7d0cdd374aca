"""The ingest service answers while its embedding model loads, and its loop never waits for it.

A fresh ingest process (`python -m services.ingest`, a subprocess: this test process has the
model loaded already) joins an in-process stack on the embedded default. As soon as it
listens, one inline ingestion goes to it — in a process that has never embedded — while its
health service is asked every 50 ms. Every health check must answer within its deadline
(before the fix, the model loaded on the event loop at the first ingestion, and health went
silent for the seconds the load took); readiness turns SERVING, with the model among its
checks, and the ingestion completes. Waits are bounded; the subprocess is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from runtime.health import LIVENESS
from runtime.ports import free_port
from tests.conftest import Stack, channel_to, eventually, new_project
from tests.ingest.test_documents import text_request

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0
# Far above a health check's cost even on a loaded machine, far below the model's load.
HEALTH_DEADLINE = 2.0
POLL_EVERY = 0.05

BODY = (
    "The keeper of the northern lighthouse wrote every evening in a leather log. "
    "Ships passed the reef at dawn, and the fog horn sounded twice an hour in winter."
)


def ingest_process(stack: Stack, port: int, health_port: int, log_path: Path):
    settings = stack.settings
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATA_DIR": str(settings.data_dir),
        "CRYPTO_ADDR": settings.crypto_addr,
        "QUERY_ADDR": settings.query_addr,
        "LISTEN_HOST": "127.0.0.1",
        "PORT": str(port),
        "HEALTH_PORT": str(health_port),
        "METRICS_PORT": "0",
        "HEALTH_CHECK_INTERVAL": "5",
        "LOG_LEVEL": "INFO",
    }
    if settings.database_url:
        env["DATABASE_URL"] = str(settings.database_url)
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        cwd=REPO,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def test_health_answers_while_the_first_ingestion_waits_for_the_model(
    stack: Stack, tmp_path: Path
) -> None:
    project, token = await new_project(stack)
    port, health_port = free_port(), free_port()
    log_path = tmp_path / "ingest.log"
    process = ingest_process(stack, port, health_port, log_path)
    slow: list[tuple[str, float]] = []
    statuses: list[int] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            health = health_pb2_grpc.HealthStub(probe)

            async def listening() -> bool:
                assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=1)
                    return True
                return False

            await eventually(listening, timeout=START_TIMEOUT, every=0.1)

            async with channel_to(port, stack.settings) as channel:
                ingest = ingest_pb2_grpc.IngestServiceStub(channel)
                ingestion = asyncio.ensure_future(
                    ingest.IngestDocument(
                        text_request(project.id, BODY), metadata=token, timeout=START_TIMEOUT
                    )
                )
                deadline = time.monotonic() + START_TIMEOUT
                while (not ingestion.done() or not statuses or statuses[-1] != 1) and (
                    time.monotonic() < deadline
                ):
                    for name in (LIVENESS, ""):
                        started = time.perf_counter()
                        try:
                            answer = await health.Check(
                                health_pb2.HealthCheckRequest(service=name),
                                timeout=HEALTH_DEADLINE,
                            )
                        except grpc.aio.AioRpcError as error:
                            slow.append((name or "overall", time.perf_counter() - started))
                            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
                            continue
                        if name == "":
                            statuses.append(answer.status)
                    await asyncio.sleep(POLL_EVERY)
                document = (await ingestion).document
                status = (await ingest.GetStatus(ingest_pb2.IngestServiceGetStatusRequest())).status
    finally:
        process.kill()
        process.wait(timeout=30)

    assert not slow, f"health checks past their {HEALTH_DEADLINE}s deadline: {slow}"
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
    assert document.chunk_count >= 1
    assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    model = [check for check in status.checks if check.name == "embedding-model"]
    assert [check.result for check in model] == [common_pb2.DependencyCheck.RESULT_OK]
