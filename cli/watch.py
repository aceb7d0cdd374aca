"""Following a document to the end of its ingestion, through a busy or briefly absent gateway.

`follow` reads the WatchDocument stream (status, chunks embedded / total) and opens it again
when it breaks; `with_retries` repeats a call the gateway refused because of its rate limit
(after the reset time it named) or because no healthy service was there for a moment
(UNAVAILABLE, after a growing pause of about a minute in all). Other failures are raised.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from cli.errors import CliError, ExitCode, retry_after
from cli.session import Session
from contextcache.v1 import ingest_pb2

T = TypeVar("T")
TERMINAL = frozenset({ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED})
RATE_LIMIT_WAITS = 10
UNAVAILABLE_PAUSES = (0.5, 1, 2, 4, 8, 15, 15, 15)  # seconds; about a minute in all
# A stream cut in the middle: the gateway closes one idle for minutes, and resets those of a
# service its health checks found unresponsive (the client sees INTERNAL "Stream removed").
BROKEN_STREAM = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
WATCH_REOPENS = 10


class Stopped(Exception):
    """The run was interrupted while this call waited."""


def with_retries(
    call: Callable[[], T],
    stop: threading.Event,
    on_wait: Callable[[str], None] = lambda _: None,
) -> T:
    pauses = iter(UNAVAILABLE_PAUSES)
    rate_limited = 0
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            wait = retry_after(error) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            if wait is not None and rate_limited < RATE_LIMIT_WAITS:
                rate_limited += 1
                on_wait(f"rate limited: waiting {wait} s")
                # Spread the callers that waited together over the next second.
                pause = wait + random.random()
            elif code == grpc.StatusCode.UNAVAILABLE and (pause := next(pauses, None)):
                on_wait("gateway unavailable: trying again")
            else:
                raise
            if stop.wait(pause):
                raise Stopped from None


def follow(
    session: Session,
    project_id: str,
    document_id: str,
    metadata: tuple[tuple[str, str], ...],
    on_update: Callable[[ingest_pb2.Document], None],
    stop: threading.Event | None = None,
) -> ingest_pb2.Document:
    """Streams the document's states to `on_update` until it is completed or failed."""
    stop = stop or threading.Event()
    request = ingest_pb2.WatchDocumentRequest(project_id=project_id, document_id=document_id)
    for reopen in range(WATCH_REOPENS + 1):
        stream = with_retries(
            lambda: _opened(session.ingest.WatchDocument(request, metadata=metadata)), stop
        )
        try:
            for response in stream:
                on_update(response.document)
                if response.document.status in TERMINAL:
                    _drain(stream)
                    return response.document
        except grpc.RpcError as error:
            if error.code() not in BROKEN_STREAM or reopen == WATCH_REOPENS:
                raise
        if stop.is_set():
            raise Stopped
    raise CliError(
        f"The gateway kept ending the watch of document {document_id} before it finished.",
        ExitCode.UNAVAILABLE,
    )


def _drain(stream: Iterator[object]) -> None:
    """Reads the stream to its end (the server ends it after the terminal state), so the call
    completes instead of being cancelled by the client when dropped: a cancelled stream
    costs the server an error path, and a reset seen by the gateway."""
    with contextlib.suppress(grpc.RpcError):
        for _ in stream:
            pass


def _opened(call: Iterator[T]) -> Iterator[T]:
    """The stream with its first response already read, so that a refusal (rate limit, no
    healthy service, locked project) is raised here, inside `with_retries`."""
    try:
        first = next(call)
    except StopIteration:
        return iter(())

    def rest() -> Iterator[T]:
        yield first
        yield from call

    return rest()
