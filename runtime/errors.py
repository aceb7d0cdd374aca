"""Errors are part of the API: domain errors and how they become gRPC statuses.

Handlers raise these; the error interceptor turns them into a status code, a message a
person can act on and, for bad input, `google.rpc.BadRequest` field violations. Anything
else becomes INTERNAL with a reference id — never exception text.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""


class ServiceError(Exception):
    """A failure the caller caused or can act on."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, violations: Iterable[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)
        # The serialized google.rpc.Status of an error passed through from another service.
        self.remote_status: bytes | None = None

    def to_status(self) -> status_pb2.Status:
        if self.remote_status:
            return status_pb2.Status.FromString(self.remote_status)
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason
                    )
                    for v in self.violations
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad_request)
            status.details.append(detail)
        return status


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_field(cls, field: str, description: str, reason: str = "") -> InvalidArgument:
        return cls(description, [FieldViolation(field, description, reason)])


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    """Over a limit; `retry_after` (seconds) goes to the caller as google.rpc.RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        if self.retry_after is not None and not self.remote_status:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromTimedelta(datetime.timedelta(seconds=self.retry_after))
            detail = any_pb2.Any()
            detail.Pack(info)
            status.details.append(detail)
        return status


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    code = grpc.StatusCode.DATA_LOSS


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code)


def bad_request_of(error: grpc.RpcError) -> error_details_pb2.BadRequest | None:
    """Reads the BadRequest detail of a failed call, if it carries one (clients and tests)."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    return bad_request
    return None
