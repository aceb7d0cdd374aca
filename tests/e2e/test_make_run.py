"""The stack as `make run` starts it (every service, Envoy and the web console's file server as
processes), used through Envoy with grpcurl and stubs, then stopped with SIGINT: nothing is
left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.ports import free_port
from tests.conftest import PASSPHRASE

REPO = Path(__file__).resolve().parents[2]
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
pytestmark = pytest.mark.envoy


@pytest.fixture
def stack_env(tmp_path):
    ports = {name: free_port() for name in ("projects", "ingest", "query", "crypto", "ratelimit")}
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL"))}
    env.update({f"{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()})
    env.update(
        DATA_DIR=str(tmp_path / "var"),
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
        CONSOLE_PORT=str(free_port()),
        GATEWAY_HEALTH_CHECK_INTERVAL="1",
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
    )
    return env


def test_make_run_serves_through_envoy_and_stops_cleanly(stack_env):
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.stack"],
        cwd=REPO,
        env=stack_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    gateway = f"127.0.0.1:{stack_env['GATEWAY_PORT']}"
    output: list[str] = []
    try:
        deadline = time.monotonic() + 360  # ingest loads the model before it listens
        # "Web console: <url>" follows "ContextCache is running…".
        while not any(line.startswith("Web console:") for line in output):
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(output)
            output.append(line)
            assert time.monotonic() < deadline, "".join(output)

        assert f"JSON over HTTP on the same port: curl http://{gateway}/v1/projects " in "".join(
            output
        )
        projects = httpx.get(f"http://{gateway}/v1/projects", timeout=10)
        assert projects.status_code == 200, projects.text
        assert "projects" in projects.json()

        console = f"http://127.0.0.1:{stack_env['CONSOLE_PORT']}"
        assert f"Web console: {console}\n" in output, "".join(output)
        assert "ContextCache console" in httpx.get(console, timeout=10).text
        config = httpx.get(f"{console}/config.json", timeout=10).json()
        assert config == {"gatewayUrl": f"http://{gateway}"}

        listed = subprocess.run(
            [GRPCURL, "-plaintext", gateway, "list"], capture_output=True, text=True, timeout=30
        )
        assert "contextcache.v1.IngestService" in listed.stdout, listed.stderr

        with grpc.insecure_channel(gateway) as channel:
            projects = projects_pb2_grpc.ProjectServiceStub(channel)
            project = projects.CreateProject(
                projects_pb2.CreateProjectRequest(name="e2e", passphrase=PASSPHRASE), timeout=30
            ).project
            token = projects.UnlockProject(
                projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE),
                timeout=30,
            ).unlock_token
            metadata = (("x-unlock-token", token),)
            document = (
                ingest_pb2_grpc.IngestServiceStub(channel)
                .IngestDocument(
                    ingest_pb2.IngestDocumentRequest(
                        project_id=project.id,
                        text=ingest_pb2.TextSource(
                            title="Tides",
                            body="Tides are caused by the pull of the Moon and the Sun.",
                        ),
                    ),
                    metadata=metadata,
                    timeout=120,
                )
                .document
            )
            assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
            answer = query_pb2_grpc.QueryServiceStub(channel).Query(
                query_pb2.QueryRequest(project_id=project.id, query="what causes tides?"),
                metadata=metadata,
                timeout=30,
            )
            assert answer.passages[0].document_title == "Tides"

            # A wrong-passphrase storm from this address, with a new API key on each try:
            # at most 5 wrong answers a minute, then RESOURCE_EXHAUSTED.
            codes = []
            for attempt in range(10):
                try:
                    projects.UnlockProject(
                        projects_pb2.UnlockProjectRequest(
                            project_id=project.id, passphrase=f"guess number {attempt} is wrong"
                        ),
                        metadata=(("x-api-key", f"key-{attempt}"),),
                        timeout=30,
                    )
                except grpc.RpcError as error:
                    codes.append(error.code())
            assert codes.count(grpc.StatusCode.PERMISSION_DENIED) <= 5, codes
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 5, codes
            # The internal API is not served by the gateway, whatever the caller sends.
            purge = channel.unary_unary(
                "/contextcache.internal.v1.IngestInternalService/PurgeProject",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as refused:
                purge(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0
    ports = [int(v.rpartition(":")[2]) for k, v in stack_env.items() if k.endswith("_ADDR")]
    ports += [
        int(stack_env[name]) for name in ("GATEWAY_PORT", "GATEWAY_ADMIN_PORT", "CONSOLE_PORT")
    ]
    for port in ports:  # nothing is left listening
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
