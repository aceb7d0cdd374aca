"""One fault of the matrix, exercised and checked: while the workload (tests/faults/workload.py)
ingests and queries through Envoy, the fault is injected; afterwards nothing is lost, stuck,
doubled or INTERNAL:

- every document of the stream ends `completed` or `failed` with a reason (none stuck in
  queued or processing);
- each completed document has its chunks exactly once in the ingest database and its vectors
  exactly once in the index; a failed one has none in the index;
- the reference questions get the answers recorded before any fault, during the fault (when
  they are answered at all) and after it;
- every audit chain verifies, with exactly one ingested-or-failed event per terminal document
  (the outboxes deliver what they held once crypto is back);
- callers saw only OK, UNAVAILABLE or DEADLINE_EXCEEDED — never INTERNAL or UNKNOWN.

With FAULT_FIGURES set, each fault appends a Markdown table row to that file: how long the
fault lasted, when the last failed call ended (from the injection) and the calls by code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from services.query.index import open_index
from tests.faults.conftest import ChaosStack, Project, reference_answers
from tests.faults.workload import Workload

WARM_UP = 5.0  # the stream runs this long before the fault
AFTER = 8.0  # and this long once the fault is over
SETTLE_TIMEOUT = 600.0  # a backlog of background jobs drains slowly on a busy 2-core machine
EXPECTED_CODES = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
TERMINAL = {ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED}
DOCUMENT_EVENTS = {
    crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_INGESTED: ingest_pb2.DOCUMENT_STATUS_COMPLETED,
    crypto_pb2.AUDIT_EVENT_TYPE_DOCUMENT_FAILED: ingest_pb2.DOCUMENT_STATUS_FAILED,
}


def kill_and_restart(name: str) -> Callable[[ChaosStack], None]:
    def inject(chaos: ChaosStack) -> None:
        chaos.stack.kill(name, signal.SIGKILL)
        chaos.stack.restart(name)

    return inject


def down_for(name: str, seconds: float) -> Callable[[ChaosStack], None]:
    def inject(chaos: ChaosStack) -> None:
        chaos.stack.kill(name, signal.SIGTERM)
        time.sleep(seconds)
        chaos.stack.restart(name)

    return inject


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[ChaosStack], None]


def all_pages(list_page: Callable[[str], Any], items: str) -> list[Any]:
    """Every item of a paged List RPC: `list_page(page_token)` answers one page."""
    found: list[Any] = []
    token = ""
    for _ in range(1000):
        page = list_page(token)
        found.extend(getattr(page, items))
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("too many pages")


def documents(chaos: ChaosStack, project: Project) -> list[ingest_pb2.Document]:
    stub = ingest_pb2_grpc.IngestServiceStub(chaos.channel)
    return all_pages(
        lambda token: stub.ListDocuments(
            ingest_pb2.ListDocumentsRequest(project_id=project.id, page_size=100, page_token=token),
            metadata=project.metadata,
            timeout=30,
        ),
        "documents",
    )


def audit_events(chaos: ChaosStack, project: Project) -> list[crypto_pb2.AuditEvent]:
    stub = crypto_pb2_grpc.CryptoServiceStub(chaos.channel)
    return all_pages(
        lambda token: stub.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(
                project_id=project.id, page_size=100, page_token=token
            ),
            metadata=project.metadata,
            timeout=30,
        ),
        "events",
    )


def until(check: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Polls `check` (calls failing UNAVAILABLE count as "not yet") until it is truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except grpc.RpcError as error:
            assert error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ), error
            last = error
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({last})")


def settled(chaos: ChaosStack) -> list[ingest_pb2.Document]:
    active: list[str] = []

    def all_terminal() -> list[ingest_pb2.Document] | None:
        found = documents(chaos, chaos.stream)
        active[:] = [
            f"{d.id} {ingest_pb2.DocumentStatus.Name(d.status)} attempts {d.attempts}"
            for d in found
            if d.status not in TERMINAL
        ]
        return None if active else found

    try:
        return until(all_terminal, SETTLE_TIMEOUT, "every document to end completed or failed")
    except AssertionError as error:
        raise AssertionError(f"{error}; still active: {active}") from None


def stored_chunks(chaos: ChaosStack, project: Project) -> dict[str, tuple[int, int, int]]:
    """document id → (chunk rows, distinct indexes, highest index + 1), read from PostgreSQL."""
    with psycopg.connect(chaos.database_url) as connection:
        rows = connection.execute(
            "SELECT document_id, count(*), count(DISTINCT chunk_index), max(chunk_index) + 1"
            " FROM chunks WHERE project_id = %s GROUP BY document_id",
            (project.id,),
        ).fetchall()
    return {document: (rows_, distinct, top) for document, rows_, distinct, top in rows}


def indexed_vectors(chaos: ChaosStack, project: Project) -> Counter[tuple[str, int]]:
    """(document, chunk index) → points in the embedded index. Only one process may open it:
    the query service is stopped (gracefully) for the count and started again."""

    async def scroll() -> Counter[tuple[str, int]]:
        index = await open_index(None, chaos.settings.index_path)
        try:
            return Counter([(c.document_id, c.chunk_index) async for c in index.scroll(project.id)])
        finally:
            await index.close()

    chaos.stack.kill("query", signal.SIGTERM)
    try:
        return asyncio.run(scroll())
    finally:
        chaos.stack.restart("query")
        chaos.stack.wait_gateway(60)


def record_figures(fault: Fault, workload: Workload, injected: float, restored: float) -> str:
    last_failure = workload.last_failure(injected)
    recovered = 0.0 if last_failure is None else last_failure - injected
    codes = ", ".join(f"{code} {n}" for code, n in sorted(workload.codes(injected).items()))
    line = f"| {fault.name} | {restored - injected:.1f} s | {recovered:.1f} s | {codes} |"
    figures = os.environ.get("FAULT_FIGURES")
    if figures:
        with Path(figures).open("a", encoding="utf-8") as out:
            out.write(line + "\n")
    return line


def exercise(chaos: ChaosStack, fault: Fault) -> None:
    """Runs the workload through `fault` and checks that nothing was lost, stuck or doubled."""
    workload = Workload(
        chaos.channel,
        chaos.stream.id,
        chaos.stream.token,
        chaos.reference.id,
        chaos.reference.token,
        tag=fault.name.replace(" ", "-"),
    )
    workload.start()
    try:
        time.sleep(WARM_UP)
        injected = time.monotonic()
        fault.inject(chaos)
        restored = time.monotonic()
        time.sleep(AFTER)
    finally:
        workload.stop()
    print(record_figures(fault, workload, injected, restored))

    codes = workload.codes(0)
    assert set(codes) <= EXPECTED_CODES, codes
    assert workload.successes_after(restored)["query"] > 0, "queries answered again"
    assert workload.answers == chaos.baseline, "answers during the fault"

    final = settled(chaos)
    assert final, "the stream ingested something"
    for document in final:
        if document.status == ingest_pb2.DOCUMENT_STATUS_FAILED:
            assert document.error, f"{document.id} failed without a reason"

    chunks = stored_chunks(chaos, chaos.stream)
    for document in final:
        if document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
            n = document.chunk_count
            assert n > 0
            assert chunks.get(document.id) == (n, n, n), (document.id, chunks.get(document.id))

    def audit_complete() -> list[crypto_pb2.AuditEvent] | None:
        events = audit_events(chaos, chaos.stream)
        about = Counter(
            (e.attributes["document_id"], DOCUMENT_EVENTS[e.type])
            for e in events
            if e.type in DOCUMENT_EVENTS
        )
        expected = Counter((d.id, d.status) for d in final)
        assert not (about - expected), f"audit events without their outcome: {about - expected}"
        return events if about == expected else None

    events = until(audit_complete, 60, "one audit event per terminal document")
    for project, count in ((chaos.stream, len(events)), (chaos.reference, None)):
        verified = crypto_pb2_grpc.CryptoServiceStub(chaos.channel).VerifyAuditChain(
            crypto_pb2.VerifyAuditChainRequest(
                project_id=project.id, public_key=project.public_key
            ),
            timeout=30,
        )
        assert verified.valid, (project.id, verified.first_broken_seq)
        if count is not None:
            assert verified.events_verified == count

    assert reference_answers(chaos.channel, chaos.reference) == chaos.baseline

    vectors = indexed_vectors(chaos, chaos.stream)
    assert all(n == 1 for n in vectors.values()), [k for k, n in vectors.items() if n > 1]
    for document in final:
        indexes = sorted(i for d, i in vectors if d == document.id)
        if document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
            assert indexes == list(range(document.chunk_count)), document.id
        else:
            assert indexes == [], f"failed document {document.id} still indexed"
