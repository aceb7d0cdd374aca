"""What went wrong, in words a person can act on, and an exit code a script can rely on.

Every gRPC status the API can return maps to one `ExitCode` and a message; INVALID_ARGUMENT
names each offending field from the `google.rpc.BadRequest` detail of the status. Nothing
here prints a traceback or a server-internal detail.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ExitCode(enum.IntEnum):
    """The documented exit codes of `contextcache` (README, `contextcache --help`)."""

    OK = 0
    ERROR = 1  # anything not listed below (INTERNAL, UNKNOWN, DATA_LOSS, …)
    USAGE = 2  # a bad option or argument, found before any call
    INVALID = 3  # INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION
    NOT_FOUND = 4
    ALREADY_EXISTS = 5
    LOCKED = 6  # UNAUTHENTICATED: no unlock token, or it expired
    DENIED = 7  # PERMISSION_DENIED: e.g. a wrong passphrase
    RATE_LIMITED = 8  # RESOURCE_EXHAUSTED
    UNAVAILABLE = 9  # UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED: try again later
    DOCUMENT_FAILED = 10  # ingest, retry, watch: one or more documents failed
    AUDIT_BROKEN = 11  # audit verify: the chain does not verify
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODE_HELP = (
    "Exit codes: 0 ok · 1 other error · 2 usage · 3 invalid input · 4 not found · "
    "5 already exists · 6 locked (unlock first) · 7 permission denied (wrong passphrase) · "
    "8 rate limited · 9 gateway unavailable or timed out · 10 a document failed · "
    "11 audit chain broken · 130 interrupted."
)

_EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.INVALID,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.LOCKED,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.RATE_LIMITED,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: ExitCode.INTERRUPTED,
}

_TITLES = {
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid input",
    grpc.StatusCode.OUT_OF_RANGE: "Out of range",
    grpc.StatusCode.FAILED_PRECONDITION: "Not possible now",
    grpc.StatusCode.NOT_FOUND: "Not found",
    grpc.StatusCode.ALREADY_EXISTS: "Already exists",
    grpc.StatusCode.UNAUTHENTICATED: "Locked",
    grpc.StatusCode.PERMISSION_DENIED: "Permission denied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "Rate limited",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timed out",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.CANCELLED: "Cancelled",
    grpc.StatusCode.DATA_LOSS: "Data integrity error",
    grpc.StatusCode.UNIMPLEMENTED: "Not supported by this server",
    grpc.StatusCode.INTERNAL: "Server error",
    grpc.StatusCode.UNKNOWN: "Server error",
}

RATE_LIMIT_RESET = "x-ratelimit-reset"


class CliError(Exception):
    """A failure found by the command itself, with the exit code it ends with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint


@dataclass(frozen=True)
class Failure:
    """A failed call, described for a person (`lines`) and a script (`code`, `status`)."""

    status: grpc.StatusCode
    message: str
    fields: tuple[tuple[str, str], ...] = ()  # (field path, description)
    hint: str = ""

    @property
    def code(self) -> ExitCode:
        return _EXIT_CODES.get(self.status, ExitCode.ERROR)

    @property
    def reason(self) -> str:
        """One line: the message, or each offending field with what is wrong with it."""
        if not self.fields:
            return self.message
        return "; ".join(f"{field}: {description}" for field, description in self.fields)

    def lines(self) -> list[str]:
        title = _TITLES.get(self.status, self.status.name.replace("_", " ").capitalize())
        if len(self.fields) == 1 and self.fields[0][1] == self.message:
            lines = [f"{title}: {self.fields[0][0]}: {self.message}"]
        else:
            lines = [f"{title}: {self.message}"]
            lines += [f"  {field}: {description}" for field, description in self.fields]
        if self.hint:
            lines.append(self.hint)
        return lines


def retry_after(error: grpc.RpcError) -> int | None:
    """Seconds to wait before trying again, when the refusal said: the gateway's rate-limit
    reset header, or the service's google.rpc.RetryInfo."""
    # A rate-limited reply is trailers-only: its headers arrive as trailing metadata.
    for key, value in (*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())):
        if key == RATE_LIMIT_RESET and str(value).isdigit():
            return int(value)
    status = _status(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(1, math.ceil(info.retry_delay.ToTimedelta().total_seconds()))
    return None


def _status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(error)
    except ValueError:  # code or message of the details disagree with the call's own
        return None


def describe(error: grpc.RpcError, address: str = "", project: str = "") -> Failure:
    """A failed call as a `Failure`: its status, message, field violations and a hint."""
    code = error.code()
    message = error.details() or code.name
    fields: list[tuple[str, str]] = []
    status = _status(error)
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields += [(v.field, v.description) for v in bad_request.field_violations]
    if code == grpc.StatusCode.UNAVAILABLE and message.startswith("failed to connect"):
        message = f"cannot reach the gateway at {address}" if address else message
    return Failure(code, message, tuple(fields), _hint(error, code, address, project))


def _hint(error: grpc.RpcError, code: grpc.StatusCode, address: str, project: str) -> str:
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"Unlock the project first: contextcache unlock {project or 'PROJECT'}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        seconds = retry_after(error)
        return f"Try again in {seconds} s." if seconds is not None else "Try again later."
    if code == grpc.StatusCode.UNAVAILABLE and "no healthy upstream" in (error.details() or ""):
        return (
            "The gateway answers, but the service behind it does not (starting, overloaded or "
            "down): try again shortly; `contextcache status` shows each service."
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            "Is ContextCache running there? Start it with `make run`, or point --address "
            "(CONTEXTCACHE_ADDRESS) at its gateway."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "The gateway did not answer in time; try again, or raise --timeout."
    return ""
