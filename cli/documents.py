"""`documents list|show|delete|retry` and `watch DOC`: a project's documents (token needed)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.errors import ExitCode
from cli.options import JsonOption, LimitOption, ProjectOption
from cli.output import (
    as_dict,
    document_status,
    err,
    out,
    print_json,
    progress_bars,
    size,
    source_type,
    styled_status,
    when,
)
from cli.session import PAGE_SIZE, Session
from cli.watch import follow
from contextcache.v1 import ingest_pb2

app = typer.Typer(
    help="List, inspect, delete and retry a project's documents.", no_args_is_help=True
)

DocumentArgument = Annotated[str, typer.Argument(help="Document id.", show_default=False)]
STATUSES = {
    "queued": ingest_pb2.DOCUMENT_STATUS_QUEUED,
    "processing": ingest_pb2.DOCUMENT_STATUS_PROCESSING,
    "completed": ingest_pb2.DOCUMENT_STATUS_COMPLETED,
    "failed": ingest_pb2.DOCUMENT_STATUS_FAILED,
}


def _status_option(value: str | None) -> str | None:
    if value is not None and value not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}")
    return value


@app.command("list")
def list_documents(
    ctx: typer.Context,
    project: ProjectOption = None,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only documents in this status: queued, processing, completed or failed.",
            callback=_status_option,
        ),
    ] = None,
    limit: LimitOption = None,
    json_output: JsonOption = False,
) -> None:
    """List a project's documents, newest first."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    metadata = session.metadata(project_id)
    documents: list[ingest_pb2.Document] = []
    page_token = ""
    while limit is None or len(documents) < limit:
        page = session.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(
                project_id=project_id,
                status=STATUSES[status] if status else ingest_pb2.DOCUMENT_STATUS_UNSPECIFIED,
                page_size=PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(documents)),
                page_token=page_token,
            ),
            metadata=metadata,
            timeout=session.timeout,
        )
        documents += page.documents
        page_token = page.next_page_token
        if not page_token:
            break
    if json_output:
        print_json([as_dict(d) for d in documents])
        return
    if not documents:
        err.print("No documents. Add some: contextcache ingest PATH…")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "status", "title", "source", "chunks", "created"):
        table.add_column(column, justify="right" if column == "chunks" else "left")
    for document in documents:
        table.add_row(
            document.id,
            styled_status(document.status),
            escape(document.title),
            escape(document.source),
            str(document.chunk_count),
            when(document.created_at),
        )
    out.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    document: DocumentArgument,
    project: ProjectOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one document: status, source, counts, and why it failed if it did."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    found = session.ingest.GetDocument(
        ingest_pb2.GetDocumentRequest(project_id=project_id, document_id=document),
        metadata=session.metadata(project_id),
        timeout=session.timeout,
    ).document
    if json_output:
        print_json(as_dict(found))
        return
    rows = [
        ("id", found.id),
        ("status", styled_status(found.status)),
        ("title", escape(found.title)),
        ("source", escape(found.source)),
        ("type", source_type(found.source_type)),
        ("chunks", str(found.chunk_count)),
        ("facts", str(found.fact_count)),
        ("text", size(found.text_bytes)),
        ("attempts", str(found.attempts)),
        ("created", when(found.created_at)),
        ("completed", when(found.completed_at)),
        ("content hash", found.content_hash),
    ]
    if found.status == ingest_pb2.DOCUMENT_STATUS_PROCESSING and found.chunks_total:
        rows.insert(2, ("progress", f"{found.chunks_embedded}/{found.chunks_total} chunks"))
    if found.error:
        rows.insert(2, ("error", f"[red]{escape(found.error)}[/]"))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


@app.command("delete")
def delete(
    ctx: typer.Context,
    documents: Annotated[list[str], typer.Argument(help="Document ids.", show_default=False)],
    project: ProjectOption = None,
) -> None:
    """Delete documents with their chunks, facts and index entries."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    metadata = session.metadata(project_id)
    for document in documents:
        session.ingest.DeleteDocument(
            ingest_pb2.DeleteDocumentRequest(project_id=project_id, document_id=document),
            metadata=metadata,
            timeout=session.timeout,
        )
        out.print(f"Deleted document {document}.")


@app.command("retry")
def retry(
    ctx: typer.Context,
    document: DocumentArgument,
    project: ProjectOption = None,
    wait: Annotated[bool, typer.Option(help="Follow it until it is completed or failed.")] = True,
    json_output: JsonOption = False,
) -> None:
    """Queue a failed document again (exits 10 if it fails again)."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    queued = session.ingest.RetryDocument(
        ingest_pb2.RetryDocumentRequest(
            project_id=project_id, document_id=document, background=True
        ),
        metadata=session.metadata(project_id),
        timeout=session.timeout,
    ).document
    if not wait:
        if json_output:
            print_json(as_dict(queued))
        else:
            out.print(f"Queued document {document} again.")
        return
    _follow_and_report(session, project_id, document, json_output)


def watch(
    ctx: typer.Context,
    document: DocumentArgument,
    project: ProjectOption = None,
    json_output: JsonOption = False,
) -> None:
    """Follow a document's ingestion live until it is completed or failed (exits 10 if failed)."""
    session: Session = ctx.obj
    _follow_and_report(session, session.project_id(project), document, json_output)


def _follow_and_report(
    session: Session, project_id: str, document_id: str, json_output: bool
) -> None:
    progress = progress_bars()

    def update(document: ingest_pb2.Document) -> None:
        if document.chunks_total:
            progress.update(
                task,
                total=document.chunks_total,
                completed=document.chunks_embedded,
                status=f"{document.chunks_embedded}/{document.chunks_total} chunks",
            )
        else:
            progress.update(task, status=document_status(document.status))

    with progress:
        task = progress.add_task(document_id[:8], total=None, status="")
        final = follow(session, project_id, document_id, session.metadata(project_id), update)
    if json_output:
        print_json(as_dict(final))
    elif final.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
        out.print(
            f"[green]completed[/] {escape(final.title or final.source)}: "
            f"{final.chunk_count} chunks, {final.fact_count} facts."
        )
    else:
        out.print(f"[red]failed[/] {escape(final.title or final.source)}: {escape(final.error)}")
    if final.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED:
        raise typer.Exit(ExitCode.DOCUMENT_FAILED)
