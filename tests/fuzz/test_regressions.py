"""Requests the fuzzer found answered INTERNAL, UNKNOWN or DATA_LOSS, each by name, sent as
raw bytes over a real socket to the in-process services (mutual TLS, as the caller named).

Each row failed before its fix; the campaign (tests/fuzz/campaign.py) finds more.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from runtime.errors import bad_request_of
from tests.conftest import running_stack


@dataclass(frozen=True)
class Named:
    name: str
    method: str
    payload: bytes
    expected: grpc.StatusCode
    caller: str = "operator"
    streaming: bool = False
    client_streaming: bool = False
    # The field an INVALID_ARGUMENT must name; empty: the body itself does not parse.
    field: str = ""


PROJECTS = "/contextcache.v1.ProjectService/"
CRYPTO = "/contextcache.v1.CryptoService/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# grpcio answered every one of these UNKNOWN ("Unexpected DecodeError") before the
# interceptor parsed requests itself.
REQUESTS = [
    Named(
        "string length past the end", PROJECTS + "GetProject", b"\x0a\xff\xff\xff\xff\x0f", INVALID
    ),
    Named("string field not UTF-8", PROJECTS + "UnlockProject", b"\x0a\x02\xff\xfe", INVALID),
    Named(
        "varint longer than ten bytes", PROJECTS + "ListProjects", b"\x08" + b"\xff" * 11, INVALID
    ),
    Named("wire type 7", CRYPTO + "Hash", b"\x07", INVALID),
    Named("field number 0", PROJECTS + "CreateProject", b"\x00", INVALID),
    Named("truncated message", PROJECTS + "ChangePassphrase", b"\x0a\x24abc", INVALID),
    Named(
        "server-streaming method, string not UTF-8",
        "/contextcache.v1.IngestService/WatchDocument",
        b"\x0a\x02\xff\xfe",
        INVALID,
        streaming=True,
    ),
    Named(
        "internal method, allowed caller, corrupt body",
        "/contextcache.internal.v1.CryptoInternalService/HashTerms",
        b"\x0a\xff",
        INVALID,
        caller="ingest",
    ),
    # Authorization comes before reading the request: a stranger learns nothing about it.
    Named(
        "internal method, caller not allowed, corrupt body",
        "/contextcache.internal.v1.CryptoInternalService/HashTerms",
        b"\x0a\xff",
        grpc.StatusCode.PERMISSION_DENIED,
        caller="operator",
    ),
    # A request stream's messages were parsed by grpcio alone: INTERNAL, once a handler
    # (ImportProject) read one.
    Named(
        "client-streaming method, string not UTF-8",
        PROJECTS + "ImportProject",
        b"\x0a\x02\xff\xfe",
        INVALID,
        client_streaming=True,
    ),
    # DATA_LOSS (HTTP 500 over JSON) before: the caller's own ciphertext is bad input.
    Named(
        "Decrypt of a ciphertext with an unknown format version",
        CRYPTO + "Decrypt",
        b"\x0a\x20" + bytes(32) + b"\x12\x1d\x02" + bytes(28),
        INVALID,
        field="ciphertext",
    ),
]


SERVED_BY = {
    "contextcache.v1.ProjectService": "projects",
    "contextcache.v1.CryptoService": "crypto",
    "contextcache.v1.IngestService": "ingest",
    "contextcache.internal.v1.CryptoInternalService": "crypto",
}


async def answer(stack, named: Named) -> tuple[grpc.StatusCode, str, list[str]]:  # type: ignore[no-untyped-def]
    channel = stack.channel_as(SERVED_BY[named.method.split("/")[1]], named.caller)
    try:
        if named.client_streaming:
            await channel.stream_unary(named.method)(iter([named.payload]), timeout=10)
        elif named.streaming:
            async for _ in channel.unary_stream(named.method)(named.payload, timeout=10):
                pass
        else:
            await channel.unary_unary(named.method)(named.payload, timeout=10)
    except grpc.aio.AioRpcError as error:
        bad_request = bad_request_of(error)
        fields = [v.field for v in bad_request.field_violations] if bad_request else []
        return error.code(), error.details() or "", fields
    return grpc.StatusCode.OK, "", []


async def test_every_named_request_gets_its_code(make_settings) -> None:
    """One stack for the whole table; every row is checked and every mismatch named."""
    wrong = {}
    async with running_stack(make_settings) as stack:
        for named in REQUESTS:
            code, details, fields = await answer(stack, named)
            if named.expected != INVALID:
                readable = True
            elif named.field:
                readable = fields == [named.field]
            else:
                readable = "not a valid protobuf message" in details
            if code != named.expected or not readable:
                wrong[named.name] = f"{code.name}: {details}"
    assert not wrong, wrong
