"""Through the real Envoy: routing, reflection, error details, gRPC-Web and CORS."""

from __future__ import annotations

import struct
import subprocess
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc, projects_pb2
from runtime.protos import SERVICE_NAMES
from tests.gateway.conftest import ALLOWED_ORIGIN, project_stub, wait_until

pytestmark = pytest.mark.envoy
GRPCURL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "grpcurl")


def grpcurl(*args: str) -> str:
    result = subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def grpc_web_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Splits a gRPC-Web response body into its messages and its trailers."""
    messages, trailers, offset = [], {}, 0
    while offset < len(body):
        flag, length = body[offset], struct.unpack(">I", body[offset + 1 : offset + 5])[0]
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().strip().split("\r\n"):
                name, _, value = line.partition(":")
                trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def test_grpcurl_lists_every_service_and_describes_a_method(envoy):
    listed = grpcurl(envoy.address, "list").split()
    for name in SERVICE_NAMES:
        assert name in listed
    # Python's reflection server resolves services and messages (not bare method symbols).
    described = grpcurl(envoy.address, "describe", "contextcache.v1.ProjectService")
    assert "rpc CreateProject ( .contextcache.v1.CreateProjectRequest )" in described
    request = grpcurl(envoy.address, "describe", "contextcache.v1.CreateProjectRequest")
    assert "string name = 1" in request


def test_health_is_routed_to_the_project_service(envoy):
    with grpc.insecure_channel(envoy.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_bad_request_details_pass_through_the_gateway(envoy):
    channel, stub = project_stub(envoy.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.CreateProject(
            projects_pb2.CreateProjectRequest(name="n" * 201, passphrase="p" * 24),
            metadata=(("x-api-key", uuid.uuid4().hex),),
            timeout=5,
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "200" in error.details()
    status = rpc_status.from_call(error)
    assert status is not None, "grpc-status-details-bin did not pass through Envoy"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [v.field for v in bad_request.field_violations]
    assert "name" in violations


def test_internal_rpcs_are_not_served_to_the_outside(envoy):
    with grpc.insecure_channel(envoy.address) as channel:
        stub = crypto_pb2_grpc.CryptoServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.OpenKeyring(crypto_pb2.OpenKeyringRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "internal" in caught.value.details()


def test_grpc_web_call_over_http1_with_cors(envoy):
    request = projects_pb2.ProjectServiceGetStatusRequest().SerializeToString()
    with httpx.Client(http1=True, http2=False, timeout=10) as client:
        response = client.post(
            f"http://{envoy.address}/contextcache.v1.ProjectService/GetStatus",
            content=grpc_web_frame(request),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "origin": ALLOWED_ORIGIN,
                "x-api-key": uuid.uuid4().hex,
            },
        )
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.headers["content-type"].startswith("application/grpc-web")
    messages, trailers = grpc_web_frames(response.content)
    assert trailers.get("grpc-status") == "0", trailers
    reply = projects_pb2.ProjectServiceGetStatusResponse.FromString(messages[0])
    assert reply.status.service == "contextcache.v1.ProjectService"
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = response.headers["access-control-expose-headers"]
    for header in ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-ratelimit-reset"):
        assert header in exposed
    assert response.headers["x-request-id"]


def preflight(envoy, origin: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.options(
            f"http://{envoy.address}/contextcache.v1.ProjectService/GetStatus",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web",
            },
        )


def test_preflight_from_an_allowed_origin_is_answered(envoy):
    response = preflight(envoy, ALLOWED_ORIGIN)
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-grpc-web" in response.headers["access-control-allow-headers"]


def test_preflight_from_another_origin_gets_no_cors_headers(envoy):
    response = preflight(envoy, "https://evil.example")
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_request_id_from_the_caller_is_kept(envoy):
    request_id = f"test-{uuid.uuid4().hex}"
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"http://{envoy.address}/contextcache.v1.ProjectService/GetStatus",
            content=grpc_web_frame(b""),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-request-id": request_id,
                "x-api-key": uuid.uuid4().hex,
            },
        )
    assert response.headers["x-request-id"] == request_id
    # The JSON access log line carries it too (Envoy flushes its log within seconds).
    wait_until(
        lambda: f'"request_id":"{request_id}"' in envoy.process.output(), 10, "access log line"
    )
