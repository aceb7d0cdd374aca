"""Channels for calling other ContextCache services.

Every outgoing call carries the remaining deadline of the incoming call it serves (or a
default), the request id, and a client span (OpenTelemetry). Channels are created inside
the process that uses them (never before an RQ fork).

Every channel is mutual TLS with the calling workload's certificate, and expects the
callee's certificate (`<service>.contextcache.internal`), so a call reaches only the
service it was meant for, whatever the address resolves to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from runtime import context as call_context
from runtime.config import replica_addresses
from runtime.health import Dependency
from runtime.telemetry import traced
from runtime.tls import Identity, target_name

DEFAULT_TIMEOUT = 30.0
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    # Reconnect quickly after a peer restarts (the default backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _call_options(
    client_call_details: grpc.aio.ClientCallDetails,
) -> grpc.aio.ClientCallDetails:
    remaining = call_context.time_remaining()
    timeout = client_call_details.timeout
    if remaining is not None:
        timeout = remaining if timeout is None else min(timeout, remaining)
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
    request_id = call_context.request_id.get()
    if request_id and "x-request-id" not in metadata:
        metadata.add("x-request-id", request_id)
    return grpc.aio.ClientCallDetails(
        method=client_call_details.method,
        timeout=timeout,
        metadata=metadata,
        credentials=client_call_details.credentials,
        wait_for_ready=client_call_details.wait_for_ready,
    )


class DeadlinePropagation(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Gives each outgoing call the time left of the incoming one."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_call_options(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_call_options(client_call_details), request)


def channel_target(address: str, options: list[tuple[str, Any]]) -> str:
    """The gRPC target of an address setting. Replicas (`ip:port,ip:port`) become one
    channel balancing calls round-robin over those that answer, so a replica that goes away
    costs only the calls it held (they fail UNAVAILABLE); a single address is used as is."""
    replicas = replica_addresses(address)
    if len(replicas) == 1:
        return replicas[0]
    options.append(("grpc.lb_policy_name", "round_robin"))
    return "ipv4:" + ",".join(replicas)


def open_channel(address: str, identity: Identity, service: str | None = None) -> grpc.aio.Channel:
    """A channel to `service` at `address`, authenticated as `identity`.

    `service` (a workload name) pins the certificate expected from the server; None accepts
    any of our CA's certificates valid for the address (tools and tests dialling 127.0.0.1).
    """
    options = list(CHANNEL_OPTIONS)
    if service is not None:
        options.append(("grpc.ssl_target_name_override", target_name(service)))
    return grpc.aio.secure_channel(
        channel_target(address, options),
        identity.channel_credentials(),
        options=options,
        interceptors=[
            *aio_client_interceptors(filter_=traced),
            DeadlinePropagation(),
        ],
    )


def grpc_dependency(
    name: str, channel: grpc.aio.Channel, service: str, required: bool = True
) -> Dependency:
    """Readiness probe of another ContextCache service through its health service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)

    async def probe() -> None:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("not serving")

    return Dependency(name, "grpc", probe, required)


_PASSED_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.ABORTED,
}


def remote_error(error: grpc.aio.AioRpcError, service: str, rpc: str = "") -> Exception:
    """The error to raise for a failed call to another service.

    Errors the caller caused (bad input, bad token, wrong passphrase…) pass through with
    their code, message and details; an unreachable service becomes UNAVAILABLE; anything
    else stays unexpected (INTERNAL with a reference id).
    """
    from runtime import errors

    code = error.code()
    if code in _PASSED_THROUGH:
        # The same error type as the callee raised, so callers can match it by type.
        kind = next(
            (k for k in errors.ServiceError.__subclasses__() if k.code == code),
            errors.ServiceError,
        )
        passed = kind(error.details() or code.name)
        passed.code = code
        passed.remote_status = _status_details(error)
        return passed
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        unavailable = errors.Unavailable(f"The {service} service is unavailable. Try again shortly")
        unavailable.cause = " ".join(part for part in (service, rpc, code.name) if part)
        return unavailable
    return RuntimeError(f"{service} call failed with {code.name}")


def _status_details(error: grpc.aio.AioRpcError) -> bytes | None:
    from runtime.errors import STATUS_DETAILS_KEY

    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return value
    return None


@contextlib.asynccontextmanager
async def calling(service: str, rpc: str = "") -> AsyncIterator[None]:
    """Turns a failed call to `service` (method `rpc`, named in logs) into the error this
    service should raise."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise remote_error(error, service, rpc) from error
