"""The fuzzer in the test suite: a bounded slice of the campaign, and the gateway's named
requests the fuzzer found answered with INTERNAL, UNKNOWN or a 5xx.

One real stack for the module (every service, the rate limiter and Envoy as processes on
free ports, the embedded default in a temporary directory). The slice's seed is printed
and taken from FUZZ_SEED when set, so a failure is reproduced with
`FUZZ_SEED=<seed> pytest tests/fuzz/test_fuzz.py` (or `make fuzz FUZZ_SEED=<seed>`).
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from tests.fuzz.campaign import fuzz, running_stack, varint
from tests.fuzz.transports import Outcome, grpc_web_frame, http_outcome

pytestmark = pytest.mark.envoy

SLICE_REQUESTS = int(os.environ.get("FUZZ_SLICE_REQUESTS", "1000"))
# The slice stops at whichever comes first; on a loaded 2-core machine the time bound does.
SLICE_SECONDS = float(os.environ.get("FUZZ_SLICE_SECONDS", "90"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[object, object, Path]]:
    work = tmp_path_factory.mktemp("fuzz")
    with running_stack(work) as (settings, processes):
        yield settings, processes, work


@dataclass(frozen=True)
class GatewayRequest:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    expected: str  # an Outcome code
    message: str = ""  # a part of the answer's grpc-message


HASH = "/contextcache.v1.CryptoService/Hash"
LIST = "/contextcache.v1.ProjectService/ListProjects"
GET = "/contextcache.v1.ProjectService/GetProject"
INGEST = "/contextcache.v1.IngestService/IngestDocument"
WEB = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
WEB_TEXT = {"content-type": "application/grpc-web-text", "x-grpc-web": "1"}
HASH_ABC = b"\x0a\x03abc"  # HashRequest{data: "abc"}


GATEWAY_REQUESTS = [
    # The services reset a stream that is not gRPC; Envoy answered 503.
    GatewayRequest(
        "text body on a gRPC path", LIST, b"", {"content-type": "text/plain"}, "HTTP_415"
    ),
    GatewayRequest(
        "JSON body on a gRPC path", HASH, b"{}", {"content-type": "application/json"}, "HTTP_415"
    ),
    GatewayRequest("no content type on a gRPC path", LIST, b"", {}, "HTTP_415"),
    # gRPC-Web bodies whose frames do not add up: the services never answered them (the
    # client gave up, or Envoy's route timeout answered 504).
    GatewayRequest(
        "gRPC-Web frame shorter than its header announces",
        GET,
        b"\x00\x00\x00\x00\x05ab",
        WEB,
        "INVALID_ARGUMENT",
        "header announces 5 bytes, 2 follow",
    ),
    GatewayRequest(
        "gRPC-Web second frame cut short",
        HASH,
        grpc_web_frame(HASH_ABC) + grpc_web_frame(HASH_ABC)[:-2],
        WEB,
        "INVALID_ARGUMENT",
        "header announces 5 bytes, 3 follow",
    ),
    GatewayRequest(
        "gRPC-Web frame header cut short",
        HASH,
        b"\x00\x00",
        WEB,
        "INVALID_ARGUMENT",
        "header cut short (2 of 5 bytes)",
    ),
    GatewayRequest("gRPC-Web empty body", LIST, b"", WEB, "INVALID_ARGUMENT", "empty"),
    GatewayRequest(
        "gRPC-Web frame cut short on the upload route (streamed)",
        INGEST,
        grpc_web_frame(HASH_ABC)[:-1],
        WEB,
        "INVALID_ARGUMENT",
        "header announces 5 bytes, 4 follow",
    ),
    GatewayRequest(
        "grpc-web-text frame cut short",
        HASH,
        base64.b64encode(grpc_web_frame(HASH_ABC)[:-1]),
        WEB_TEXT,
        "INVALID_ARGUMENT",
        "header announces 5 bytes, 4 follow",
    ),
    # Envoy's grpc_web filter answered INTERNAL ("invalid base64 data") itself.
    GatewayRequest(
        "grpc-web-text that is not base64",
        HASH,
        b"!!!not base64",
        WEB_TEXT,
        "INVALID_ARGUMENT",
        "grpc-web-text body is not base64",
    ),
    GatewayRequest(
        "grpc-web-text padded before its end",
        LIST,
        base64.b64encode(grpc_web_frame(b"")[:4]) + base64.b64encode(grpc_web_frame(b"")[4:]),
        WEB_TEXT,
        "INVALID_ARGUMENT",
        "grpc-web-text body is not base64",
    ),
    # Well-formed bodies still reach the service.
    GatewayRequest("gRPC-Web well-formed", LIST, grpc_web_frame(b""), WEB, "OK"),
    GatewayRequest(
        "grpc-web-text well-formed", LIST, base64.b64encode(grpc_web_frame(b"")), WEB_TEXT, "OK"
    ),
]


@pytest.mark.parametrize("request_", GATEWAY_REQUESTS, ids=[r.name for r in GATEWAY_REQUESTS])
def test_gateway_request_gets_its_code(stack, request_: GatewayRequest) -> None:
    settings, _, _ = stack
    url = f"http://127.0.0.1:{settings.gateway_port}{request_.path}"
    # Well under the routes' timeouts (15 s; 300 s for uploads): an answer, not a timeout.
    response = httpx.post(url, content=request_.body, headers=request_.headers, timeout=10)
    outcome: Outcome = http_outcome(response)
    assert outcome.code == request_.expected, outcome
    assert request_.message in outcome.detail, outcome
    assert not outcome.is_failure


def test_oversize_message_is_resource_exhausted(stack) -> None:
    """Past the gateway's 5 MiB limit: Envoy's 413 reached gRPC callers as UNKNOWN."""
    settings, _, _ = stack
    payload = b"\x0a" + varint(5 * 2**20) + b"a" * 5 * 2**20  # field 1, a 5 MiB string
    with grpc.insecure_channel(f"127.0.0.1:{settings.gateway_port}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(HASH)(payload, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()


@pytest.mark.timeout(600)
def test_fuzz_slice_finds_no_internal_error(stack) -> None:
    """Up to 1,000 generated requests (90 s at most) over every transport: no
    INTERNAL/UNKNOWN/5xx, every health check SERVING afterwards, no process dead, nothing
    half-written."""
    settings, processes, work = stack
    seed = int(os.environ.get("FUZZ_SEED") or secrets.randbelow(2**32))
    print(f"fuzz slice seed {seed} (FUZZ_SEED={seed} reproduces it)")
    report = fuzz(processes, settings, SLICE_REQUESTS, seed, SLICE_SECONDS, work)
    print(report.render())
    assert report.requests >= min(SLICE_REQUESTS, 200), report.render()
    assert report.ok, report.render()
