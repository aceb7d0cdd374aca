"""What a refused request is told: when it may try again, in the forms its caller reads.

Envoy adds these headers to its 429 (RESOURCE_EXHAUSTED for gRPC and gRPC-Web callers, a
google.rpc.Status in JSON for JSON callers): `retry-after` in seconds for HTTP clients, and
`grpc-status-details-bin`, a google.rpc.Status carrying google.rpc.RetryInfo for gRPC
clients. The status has the code and message the gateway's local reply sets, so
grpcio-status' `rpc_status.from_call` accepts it. Never carries the client's address, API
key or any descriptor value.
"""

from __future__ import annotations

import base64

from envoy_rls import base_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

# The grpc-message of every rate-limit refusal (envoy/envoy.yaml's local reply sets it too).
RATE_LIMITED_MESSAGE = "Rate limit exceeded: retry after the seconds in retry-after"


def retry_status(seconds: int) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=RATE_LIMITED_MESSAGE)
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromSeconds(seconds)
    status.details.add().Pack(info)
    return status


def status_details_bin(seconds: int) -> str:
    """grpc-status-details-bin for a refusal: unpadded base64, as gRPC emits binary headers."""
    return base64.b64encode(retry_status(seconds).SerializeToString()).decode().rstrip("=")


def retry_headers(seconds: int) -> list[base_pb2.HeaderValue]:
    return [
        base_pb2.HeaderValue(key="retry-after", value=str(seconds)),
        base_pb2.HeaderValue(key="grpc-status-details-bin", value=status_details_bin(seconds)),
    ]
