"""The steady stream of callers the fault matrix runs through Envoy while it injects a fault.

Two threads, each bounded in calls and in time: one ingests (inline and background, text and
.txt files, in turn; every body distinct, so nothing is refused as a duplicate) into the
stream project, one reads the reference project (GetProject) and asks it fixed questions.
Every call is recorded with its gRPC status code and when it ended, so a test can count what
callers saw during a fault and tell when calls succeeded again. The callers do not retry:
a code is what a client saw.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)

QUESTIONS = (
    "which bird migrates across the desert?",
    "how do glaciers carve valleys?",
    "what keeps a suspension bridge standing?",
    "why does bread dough rise?",
)
INGEST_TIMEOUT = 60.0
QUERY_TIMEOUT = 15.0
MAX_CALLS = 2000  # per thread: the loops end on `stop()` long before


@dataclass(frozen=True)
class Call:
    kind: str  # "ingest inline text", "ingest background file", "query"…
    ended: float  # time.monotonic()
    code: grpc.StatusCode
    document_id: str = ""


def answer_of(response: query_pb2.QueryResponse) -> list[tuple[str, int]]:
    """What a query answered, independent of timings: (document, chunk) of each passage."""
    return [(p.document_id, p.chunk_index) for p in response.passages]


def distinct_body(tag: str, n: int) -> str:
    """A short document no other call sends (its numbers differ), two or three sentences."""
    return (
        f"Field note {tag} number {n}: the survey team counted {n * 7 + 3} lanterns along "
        f"the {tag} canal and {n * 13 + 1} herons nesting by lock {n % 17}. "
        f"Their report on day {n} says the water stood {n % 9} feet above the old mark."
    )


@dataclass
class Workload:
    channel: grpc.Channel
    stream_project: str
    stream_token: str
    reference_project: str
    reference_token: str
    tag: str
    # Between two calls of a thread. Ingestion is paced to what one worker drains on a
    # loaded 2-core machine (a background job takes seconds), so a fault meets a steady
    # stream, not an ever-growing backlog.
    ingest_pause: float = 2.0
    query_pause: float = 0.3
    calls: list[Call] = field(default_factory=list)
    answers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for target in (self._ingest, self._query):
            thread = threading.Thread(target=target, name=f"workload {target.__name__}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = INGEST_TIMEOUT + 10) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _ingest(self) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        metadata = (("x-unlock-token", self.stream_token),)
        kinds = itertools.cycle([(False, "text"), (True, "text"), (False, "file"), (True, "file")])
        for n, (background, source) in zip(range(MAX_CALLS), kinds, strict=False):
            if self._stop.is_set():
                return
            body = distinct_body(self.tag, n)
            request = ingest_pb2.IngestDocumentRequest(
                project_id=self.stream_project, background=background
            )
            if source == "text":
                request.text.CopyFrom(ingest_pb2.TextSource(title=f"{self.tag} {n}", body=body))
            else:
                request.file.CopyFrom(
                    ingest_pb2.FileSource(filename=f"{self.tag}-{n}.txt", content=body.encode())
                )
            kind = f"ingest {'background' if background else 'inline'} {source}"
            try:
                response = stub.IngestDocument(request, metadata=metadata, timeout=INGEST_TIMEOUT)
                self._record(Call(kind, time.monotonic(), grpc.StatusCode.OK, response.document.id))
            except grpc.RpcError as error:
                self._record(Call(kind, time.monotonic(), error.code()))
            self._stop.wait(self.ingest_pause)

    def _query(self) -> None:
        stub = query_pb2_grpc.QueryServiceStub(self.channel)
        projects = projects_pb2_grpc.ProjectServiceStub(self.channel)
        metadata = (("x-unlock-token", self.reference_token),)
        for _, question in zip(range(MAX_CALLS), itertools.cycle(QUESTIONS), strict=False):
            if self._stop.is_set():
                return
            try:
                projects.GetProject(
                    projects_pb2.GetProjectRequest(project_id=self.reference_project),
                    timeout=QUERY_TIMEOUT,
                )
                self._record(Call("get project", time.monotonic(), grpc.StatusCode.OK))
            except grpc.RpcError as error:
                self._record(Call("get project", time.monotonic(), error.code()))
            try:
                response = stub.Query(
                    query_pb2.QueryRequest(project_id=self.reference_project, query=question),
                    metadata=metadata,
                    timeout=QUERY_TIMEOUT,
                )
                with self._lock:
                    self.answers.setdefault(question, answer_of(response))
                    if self.answers[question] != answer_of(response):
                        self.answers[f"{question} (changed)"] = answer_of(response)
                self._record(Call("query", time.monotonic(), grpc.StatusCode.OK))
            except grpc.RpcError as error:
                self._record(Call("query", time.monotonic(), error.code()))
            self._stop.wait(self.query_pause)

    def codes(self, since: float) -> Counter[str]:
        """Calls that ended after `since`, by status code name."""
        with self._lock:
            return Counter(c.code.name for c in self.calls if c.ended >= since)

    def last_failure(self, since: float) -> float | None:
        with self._lock:
            failed = [c.ended for c in self.calls if c.ended >= since and c.code.value[0] != 0]
        return max(failed, default=None)

    def successes_after(self, moment: float) -> Counter[str]:
        with self._lock:
            return Counter(
                c.kind for c in self.calls if c.ended > moment and c.code == grpc.StatusCode.OK
            )
