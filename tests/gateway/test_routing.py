"""Through the real Envoy: routing, reflection, error details, gRPC-Web and CORS."""

from __future__ import annotations

import re
import struct
import subprocess
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from contextcache.v1 import projects_pb2
from runtime.config import Settings
from runtime.gateway import render_text
from runtime.protos import INTERNAL_METHODS, PUBLIC_METHODS, SERVICE_NAMES
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
    # Reflection through the gateway shows the public API only.
    assert not [name for name in listed if name.startswith("contextcache.internal.")], listed
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


def admin_post(envoy, path: str) -> None:
    with httpx.Client(timeout=5) as client:
        client.post(f"http://127.0.0.1:{envoy.admin_port}{path}").raise_for_status()


def test_envoy_answers_healthz_itself_and_fails_it_while_draining(envoy):
    """GET /healthz is Envoy's own liveness (load balancers): answered without any upstream,
    and 503 once the admin marks Envoy as failing (as before a drain)."""
    url = f"http://{envoy.address}/healthz"
    with httpx.Client(timeout=5) as client:
        response = client.get(url)
        assert response.status_code == 200
        assert response.headers["server"] == "envoy"
        assert "x-envoy-upstream-service-time" not in response.headers, "no upstream asked"
        admin_post(envoy, "/healthcheck/fail")
        try:
            assert client.get(url).status_code == 503
        finally:
            admin_post(envoy, "/healthcheck/ok")
        assert client.get(url).status_code == 200


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


def _raw_call(channel: grpc.Channel, method: str) -> grpc.StatusCode:
    """Calls `method` with an empty request (bytes in, bytes out) and returns the status."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(b"", timeout=5, metadata=(("x-api-key", uuid.uuid4().hex),))
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_every_internal_rpc_is_refused_and_every_public_one_routed(envoy):
    """The gateway's allow-list against the descriptors, over the wire: no internal method
    (or unknown path) reaches a service; each public method reaches its service (only the
    projects service runs here, so the others answer UNAVAILABLE from Envoy, never 403)."""
    with grpc.insecure_channel(envoy.address) as channel:
        for method in (*INTERNAL_METHODS, "/contextcache.v1.ProjectService/Nope", "/x.Y/Z"):
            assert _raw_call(channel, method) == grpc.StatusCode.PERMISSION_DENIED, method
        for method in PUBLIC_METHODS:
            if method.endswith(("/WatchDocument", "/UnlockProject", "/ChangePassphrase")):
                continue  # streaming, or limited to 5 a minute (test_ratelimit covers them)
            code = _raw_call(channel, method)
            assert code != grpc.StatusCode.PERMISSION_DENIED, (method, code)


def test_route_table_allows_exactly_the_public_methods():
    """The rendered route table, read as Envoy reads it, matches every public method and no
    internal one: the allow-list cannot drift from the protos."""
    config = yaml.safe_load(render_text(Settings()))
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]

    def first_route(path: str) -> dict:
        for route in routes:
            match = route["match"]
            if match.get("headers"):
                continue  # only for some requests (a body that is not gRPC: 415)
            if "path" in match and match["path"] == path:
                return route
            if "prefix" in match and path.startswith(match["prefix"]):
                return route
            if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
                return route
        raise AssertionError(f"no route for {path}")

    routed = {m for m in (*PUBLIC_METHODS, *INTERNAL_METHODS) if "route" in first_route(m)}
    assert routed == set(PUBLIC_METHODS)
    assert "route" in first_route("/grpc.health.v1.Health/Check")
    assert "route" in first_route("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert first_route("/anything/else")["direct_response"]["status"] == 403


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
