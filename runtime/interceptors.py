"""Server interceptors: validation, error mapping and request logging for every RPC.

Order for each call: record context (request id, deadline) → check the caller's identity
against runtime/callers.py's table (before anything reads the request) → refuse a request
whose bytes do not parse (INVALID_ARGUMENT, never grpcio's UNKNOWN) → validate the
request against its protovalidate rules → run the handler → map errors to statuses → log
one line and set `x-process-time` in trailing metadata; count it in runtime/metrics.py
(method and code only). Never logs request or response bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import protovalidate
from google.protobuf.message import DecodeError, Message

from runtime import context as call_context
from runtime import metrics
from runtime.background import cancel_and_wait
from runtime.callers import authorize_caller, client_address
from runtime.db import unavailable_database
from runtime.errors import (
    STATUS_DETAILS_KEY,
    FieldViolation,
    InvalidArgument,
    ServiceError,
)
from runtime.telemetry import report_exception

log = logging.getLogger("contextcache.rpc")
_validator = protovalidate.Validator()
# Logged at DEBUG only. Rate-limit decisions come one per gateway request: Envoy's access log
# has a line for each of those requests with its outcome, and the decisions are counted in
# metrics, so a line per decision would double the log on the path of every request.
QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.", "/envoy.service.ratelimit.v3.")


def field_path(violation: protovalidate.Violation) -> str:
    parts: list[str] = []
    for element in violation.proto.field.elements:
        part = element.field_name
        which = element.WhichOneof("subscript") if hasattr(element, "WhichOneof") else None
        if which:
            part += f"[{getattr(element, which)}]"
        parts.append(part)
    return ".".join(parts)


def validate(request: Message) -> None:
    """Raises InvalidArgument with one field violation per broken rule."""
    if not request.DESCRIPTOR.full_name.startswith("contextcache."):
        return
    violations = _validator.collect_violations(request)
    if not violations:
        return
    details = [FieldViolation(field_path(v), v.proto.message, v.proto.rule_id) for v in violations]
    if len(details) == 1:
        message = details[0].description
        if not message[:1].isupper():
            message = f"{details[0].field} {message}"
    else:
        message = "; ".join(f"{d.field}: {d.description}" for d in details)
    raise InvalidArgument(message, details)


class MalformedRequest:
    """What a request deserializes to when its bytes are not a message of the method's type
    (truncated or corrupt protobuf, a string that is not UTF-8). grpcio would answer such a
    request UNKNOWN before any interceptor saw it; the handler turns this into
    INVALID_ARGUMENT once the caller is authorized."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return MalformedRequest(error)

    return parse


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(
            "The request is not a valid protobuf message of this method's request type "
            "(truncated or corrupt bytes, or a string field that is not UTF-8)"
        )


class _Call:
    """Bookkeeping of one RPC: timing, outcome, the log line and trailing metadata."""

    def __init__(
        self, method: str, context: grpc.aio.ServicerContext, rpc_type: str = "unary"
    ) -> None:
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        # "/pkg.Service/Method": names the server registered (a closed set), never a value.
        service, _, name = method.lstrip("/").partition("/")
        self.labels = (service, name, rpc_type)
        metrics.RPC_STARTED.labels(*self.labels).inc()
        self.code = grpc.StatusCode.OK
        metadata = dict(context.invocation_metadata() or ())
        self.request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        call_context.request_id.set(self.request_id)
        remaining = context.time_remaining()
        call_context.deadline.set(None if remaining is None else time.monotonic() + remaining)

    def _process_time(self) -> tuple[str, str]:
        return ("x-process-time", f"{time.perf_counter() - self.started:.6f}")

    async def fail(self, error: BaseException) -> None:
        """Aborts the call with the status for `error` (re-raises the AbortError)."""
        details: tuple[tuple[str, bytes], ...] = ()
        if not isinstance(error, ServiceError) and (unavailable := unavailable_database(error)):
            log.warning(
                "%s: the database is unavailable (%s)",
                self.method,
                type(getattr(error, "orig", None) or error).__name__,
                extra={"request_id": self.request_id},
            )
            error = unavailable
        if isinstance(error, ServiceError):
            self.code, message = error.code, error.message
            details = ((STATUS_DETAILS_KEY, error.to_status().SerializeToString()),)
        elif isinstance(error, NotImplementedError):
            self.code, message = grpc.StatusCode.UNIMPLEMENTED, "Method not implemented yet"
        else:
            reference = uuid.uuid4().hex[:12]
            self.code, message = grpc.StatusCode.INTERNAL, f"Internal error. Reference: {reference}"
            log.error(
                "unexpected error in %s (reference %s)",
                self.method,
                reference,
                exc_info=error,
                extra={"reference": reference, "request_id": self.request_id},
            )
            report_exception(error, reference)
        await self.context.abort(
            self.code, message, trailing_metadata=(*details, self._process_time())
        )

    def finish(self, aborted: bool = False) -> None:
        if aborted and self.code == grpc.StatusCode.OK:
            self.code = _code_of(self.context)
        if not aborted:
            self.context.set_trailing_metadata((self._process_time(),))
        elapsed = time.perf_counter() - self.started
        metrics.RPC_HANDLED.labels(*self.labels, self.code.name).inc()
        metrics.RPC_SECONDS.labels(*self.labels).observe(elapsed)
        level = logging.DEBUG if self.method.startswith(QUIET_PREFIXES) else logging.INFO
        if not log.isEnabledFor(level):
            return  # the peer and client address cost a look at the certificate each
        log.log(
            level,
            "%s %s %.1fms peer=%s client=%s caller=%s request_id=%s",
            self.method,
            self.code.name,
            elapsed * 1000,
            self.context.peer(),
            client_address(self.context),
            call_context.caller.get() or "-",
            self.request_id,
            extra={
                "rpc_method": self.method,
                "rpc_code": self.code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "peer": self.context.peer(),
                "client": client_address(self.context),
                "caller": call_context.caller.get(),
                "request_id": self.request_id,
            },
        )


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN


@contextlib.asynccontextmanager
async def _guard(call: _Call) -> AsyncIterator[None]:
    """Maps whatever the handler raises to a status, then logs the call."""
    aborted = False
    try:
        yield
    except grpc.aio.AbortError:
        aborted = True
        raise
    except asyncio.CancelledError:
        call.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as error:  # noqa: BLE001 — every failure gets a status
        aborted = True
        await call.fail(error)
    finally:
        call.finish(aborted)


class _WritesAsYields:
    """The handler's context, except that `write()` hands messages to a queue.

    Lets a handler that streams with `await context.write(...)` (the stock health service's
    Watch) run as an async generator, which every interceptor around ours expects.
    """

    END = object()

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)

    async def write(self, message: Any) -> None:
        await self.queue.put(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _as_generator(
    behavior: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    writer = _WritesAsYields(context)

    async def run() -> Any:
        try:
            return await behavior(request, writer)
        finally:
            await writer.queue.put(_WritesAsYields.END)

    task = asyncio.create_task(run())
    try:
        while (message := await writer.queue.get()) is not _WritesAsYields.END:
            yield message
        result = await task
        if result is not None:  # a unary-style return from a streaming handler
            yield result
    finally:
        await cancel_and_wait(task)


async def _refusing_malformed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream whose first malformed message ends the call INVALID_ARGUMENT."""
    async for request in requests:
        _refuse_malformed(request)
        yield request


def _rpc_type(unary_request: bool, streaming_response: bool) -> str:
    """go-grpc-prometheus's grpc_type values."""
    if unary_request:
        return "server_stream" if streaming_response else "unary"
    return "bidi_stream" if streaming_response else "client_stream"


def _wrap(
    method: str, behavior: Callable[..., Any], unary_request: bool, streaming_response: bool
) -> Callable[..., Any]:
    """Wraps a handler. Streaming handlers become async generators whichever style they use."""
    if streaming_response:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, context, _rpc_type(unary_request, streaming_response))
            async with _guard(call):
                call_context.caller.set(authorize_caller(method, context))
                if unary_request:
                    _refuse_malformed(request)
                    validate(request)
                else:
                    request = _refusing_malformed(request)
                responses = (
                    behavior(request, context)
                    if inspect.isasyncgenfunction(behavior)
                    else _as_generator(behavior, request, context)
                )
                async for response in responses:
                    yield response

        return stream

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(method, context, _rpc_type(unary_request, streaming_response))
        async with _guard(call):
            call_context.caller.set(authorize_caller(method, context))
            if unary_request:
                _refuse_malformed(request)
                validate(request)
            else:
                request = _refusing_malformed(request)
            return await behavior(request, context)
        return None  # reached only when the call was aborted (the guard re-raises)

    return handle


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Applies validation, error mapping and request logging to every handler."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        kwargs = {
            "request_deserializer": _lenient(deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap(method, handler.unary_unary, True, False), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap(method, handler.unary_stream, True, True), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap(method, handler.stream_unary, False, False), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap(method, handler.stream_stream, False, True), **kwargs
        )
