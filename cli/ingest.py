"""`contextcache ingest PATH…|URL…|-`: send documents in parallel and follow them to the end.

Each source is sent as a background ingestion and then followed with WatchDocument, so a
per-document bar shows chunks embedded / total while an overall bar counts documents. The
server decides: a duplicate (ALREADY_EXISTS) is reported as skipped, a refused file as failed
with the server's reason, and the run goes on. What makes the run pointless — a locked
project, an unreachable gateway — stops it at once.

Resumable: a second run sends everything again and the server skips what is already in;
a document an interrupted run left queued or processing is followed to its end.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Annotated, Any

import grpc
import typer
from rich.markup import escape
from rich.progress import Progress, TaskID

from cli.errors import ExitCode, describe
from cli.options import JsonOption, ProjectOption
from cli.output import document_status, err, out, print_json, progress_bars
from cli.session import PAGE_SIZE, Session
from cli.sources import Source, UnreadableSource, collect
from cli.watch import Stopped, follow, with_retries
from contextcache.v1 import ingest_pb2

# Uploads are parsed while the call waits (a 50 MB PDF takes a while); the gateway allows 300 s.
UPLOAD_TIMEOUT = 300.0
_EXISTING = re.compile(r"document ([0-9a-fA-F-]{36})")
_LABEL_WIDTH = 40


# Refusals that concern every document of the run, not the one sent.
STOPS_THE_RUN = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
# A send that may or may not have arrived.
CUT_OFF = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class Result(enum.StrEnum):
    INGESTED = "ingested"
    SKIPPED = "skipped"
    FAILED = "failed"
    QUEUED = "queued"  # --no-wait: sent, not followed


_STYLES = {
    Result.INGESTED: ("✓", "green"),
    Result.SKIPPED: ("↷", "yellow"),
    Result.FAILED: ("✗", "red"),
    Result.QUEUED: ("…", "cyan"),
}


@dataclass(frozen=True)
class Outcome:
    source: Source
    result: Result
    document_id: str = ""
    chunks: int = 0
    reason: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "input": self.source.label,
            "result": self.result.value,
            "document_id": self.document_id,
            "chunks": self.chunks,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        icon, style = _STYLES[self.result]
        if self.result is Result.INGESTED:
            detail = f"{self.chunks} chunks, {self.seconds:.1f} s"
        elif self.result is Result.QUEUED:
            detail = f"document {self.document_id}"
        else:
            detail = self.reason
        label = escape(self.source.label)
        return f"[{style}]{icon} {self.result.value:<8}[/] {label}  {escape(detail)}"


class IngestRun:
    """Sends sources and follows their documents; `ingest` runs in worker threads."""

    def __init__(
        self,
        session: Session,
        project_id: str,
        progress: Progress,
        *,
        wait: bool,
        unfinished: set[str],
    ) -> None:
        self.session = session
        self.project_id = project_id
        self.metadata = session.metadata(project_id)
        self.progress = progress
        self.wait = wait
        self.stop = threading.Event()
        # Documents an earlier run left queued or processing: the first source found to be
        # one of them follows it, instead of calling it a duplicate.
        self._unfinished = unfinished
        self._lock = threading.Lock()

    def ingest(self, source: Source) -> Outcome:
        if self.stop.is_set():
            raise Stopped
        started = time.monotonic()
        task = self.progress.add_task(_short(source.label), total=None, status="reading")
        try:
            return self._ingest(source, task, started)
        finally:
            self.progress.remove_task(task)

    def _ingest(self, source: Source, task: TaskID, started: float) -> Outcome:
        try:
            request = source.request(self.project_id, background=True)
        except UnreadableSource as error:
            return Outcome(source, Result.FAILED, reason=str(error))
        self._show(task, "sending")
        resent = False
        while True:
            try:
                document = with_retries(
                    lambda: self.session.ingest.IngestDocument(
                        request, metadata=self.metadata, timeout=UPLOAD_TIMEOUT
                    ),
                    self.stop,
                    on_wait=lambda why: self._show(task, why),
                ).document
                break
            except grpc.RpcError as error:
                if error.code() in CUT_OFF and not resent:
                    # Cut off on the way (e.g. the gateway reset the stream): the document
                    # may be in or not; sending it again tells (ALREADY_EXISTS: it is).
                    resent = True
                    continue
                return self._refused(source, error, task, started, resent)
        if not self.wait:
            return Outcome(source, Result.QUEUED, document.id, seconds=time.monotonic() - started)
        return self._follow(source, document.id, task, started)

    def _refused(
        self, source: Source, error: grpc.RpcError, task: TaskID, started: float, resent: bool
    ) -> Outcome:
        """A refused send: skipped, failed, or followed after all; raised when the refusal
        stops the whole run (locked, project gone, gateway gone, rate limit outlasted)."""
        failure = describe(error)
        if error.code() == grpc.StatusCode.ALREADY_EXISTS:
            match = _EXISTING.search(failure.message)
            existing = match[1].lower() if match else ""
            # Ours after all (a send cut off earlier), or left unfinished by an earlier run.
            if existing and (resent or self._claim_unfinished(existing)):
                return self._follow(source, existing, task, started)
            reason = f"already in as document {existing}" if existing else failure.message
            return Outcome(source, Result.SKIPPED, existing, reason=reason)
        if error.code() in STOPS_THE_RUN:
            raise error
        return Outcome(source, Result.FAILED, reason=failure.reason)

    def _follow(self, source: Source, document_id: str, task: TaskID, started: float) -> Outcome:
        def update(document: ingest_pb2.Document) -> None:
            if document.chunks_total:
                self.progress.update(
                    task,
                    total=document.chunks_total,
                    completed=document.chunks_embedded,
                    status=f"{document.chunks_embedded}/{document.chunks_total} chunks",
                )
            else:
                self._show(task, document_status(document.status))

        final = follow(self.session, self.project_id, document_id, self.metadata, update, self.stop)
        seconds = time.monotonic() - started
        if final.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
            return Outcome(source, Result.INGESTED, final.id, final.chunk_count, seconds=seconds)
        reason = final.error or f"ended {document_status(final.status)}"
        return Outcome(source, Result.FAILED, final.id, reason=reason, seconds=seconds)

    def _claim_unfinished(self, document_id: str) -> bool:
        with self._lock:
            if document_id in self._unfinished:
                self._unfinished.discard(document_id)
                return True
            return False

    def _show(self, task: TaskID, status: str) -> None:
        self.progress.update(task, status=status)


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_WIDTH else "…" + label[-(_LABEL_WIDTH - 1) :]


def unfinished_documents(session: Session, project_id: str) -> set[str]:
    """Ids of the project's queued and processing documents (the first page of each).

    Also the run's first content call: a locked project stops the run before any upload."""
    metadata = session.metadata(project_id)
    found: set[str] = set()
    for status in (ingest_pb2.DOCUMENT_STATUS_QUEUED, ingest_pb2.DOCUMENT_STATUS_PROCESSING):
        page = session.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(
                project_id=project_id, status=status, page_size=PAGE_SIZE
            ),
            metadata=metadata,
            timeout=session.timeout,
        )
        found |= {document.id for document in page.documents}
    return found


def ingest(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Files, folders (recursive), http(s) URLs, or - for text on stdin.",
            metavar="PATH|URL|-",
            show_default=False,
        ),
    ],
    project: ProjectOption = None,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", "-i", help="In folders, only files matching this glob."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="In folders, skip files matching this glob."),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", "-j", min=1, max=16, help="Documents in flight.")
    ] = 4,
    title: Annotated[str, typer.Option(help="Title of the text read from stdin.")] = "stdin",
    wait: Annotated[
        bool,
        typer.Option(help="Follow each document until it is completed or failed."),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Ingest files, folders, URLs or stdin into a project, with live progress.

    Duplicates are skipped, refused files are reported with the reason, and a second run
    skips what is already in. Exits 10 when a document failed.
    """
    session: Session = ctx.obj
    project_id = session.project_id(project)
    sources = collect(inputs, include or [], exclude or [], title)
    if not sources:
        err.print("Nothing to ingest: no file matched.")
        return
    unfinished = unfinished_documents(session, project_id)

    progress = progress_bars()
    run = IngestRun(session, project_id, progress, wait=wait, unfinished=unfinished)
    started = time.monotonic()
    outcomes: dict[int, Outcome] = {}
    with progress:
        overall = progress.add_task(
            "[bold]documents", total=len(sources), status=f"0/{len(sources)}"
        )
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="ingest")
        futures = {pool.submit(run.ingest, source): i for i, source in enumerate(sources)}
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                if not json_output:
                    out.print(outcome.line())
                progress.update(overall, advance=1, status=f"{len(outcomes)}/{len(sources)}")
        except BaseException as error:
            run.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            session.close()  # cancels the calls still running
            if isinstance(error, KeyboardInterrupt):
                err.print(
                    "Interrupted. Documents already sent go on in the server; run the same "
                    "command again to pick up where this run stopped."
                )
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            raise
        pool.shutdown()

    ordered = [outcomes[i] for i in range(len(sources))]
    counts = {result: sum(o.result is result for o in ordered) for result in Result}
    seconds = time.monotonic() - started
    if json_output:
        print_json(
            {
                "project_id": project_id,
                **{result.value: counts[result] for result in Result},
                "seconds": round(seconds, 3),
                "documents": [o.as_json() for o in ordered],
            }
        )
    else:
        parts = [f"{counts[Result.INGESTED]} ingested"]
        if counts[Result.QUEUED]:
            parts.append(f"{counts[Result.QUEUED]} queued")
        parts.append(f"{counts[Result.SKIPPED]} skipped (already in)")
        parts.append(f"{counts[Result.FAILED]} failed")
        chunks = sum(o.chunks for o in ordered)
        out.print(f"Done: {', '.join(parts)}; {chunks} chunks in {seconds:.1f} s.")
    if counts[Result.FAILED]:
        raise typer.Exit(ExitCode.DOCUMENT_FAILED)
