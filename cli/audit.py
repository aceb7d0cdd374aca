"""`audit verify|head|events`: check a project's signed, hash-chained audit log.

`verify` holds the server to what this machine saw before: the project's public key (pinned
when the project was created here, or at the first verification) and the last verified head,
so a swapped signing key or a truncated chain fails even if every remaining link verifies.
"""

from __future__ import annotations

import base64
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.errors import ExitCode
from cli.options import JsonOption, LimitOption, ProjectOption
from cli.output import as_dict, audit_event_type, err, out, print_json, when
from cli.session import PAGE_SIZE, Session
from cli.state import Pin
from contextcache.v1 import crypto_pb2

app = typer.Typer(help="Verify and read a project's signed audit log.", no_args_is_help=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@app.command("verify")
def verify(
    ctx: typer.Context,
    project: ProjectOption = None,
    pin: Annotated[
        bool,
        typer.Option(
            help="Check against the key and head pinned on this machine, and pin the new head."
        ),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Replay the audit chain: every hash and signature, from the first event to the head.

    Exits 11 when the chain does not verify.
    """
    session: Session = ctx.obj
    project_id = session.project_id(project)
    pinned = session.state.pin(project_id) if pin else None
    request = crypto_pb2.VerifyAuditChainRequest(project_id=project_id)
    if pinned is not None:
        request.public_key = base64.b64decode(pinned.public_key)
        if pinned.head_seq:
            request.pinned_head.CopyFrom(
                crypto_pb2.AuditHead(
                    project_id=project_id,
                    seq=pinned.head_seq,
                    hash=base64.b64decode(pinned.head_hash),
                    signature=base64.b64decode(pinned.head_signature),
                )
            )
    elif pin:  # first verification here: pin the key the server shows now
        request.public_key = session.project(project_id).public_key
    result = session.crypto.VerifyAuditChain(request, timeout=session.timeout)
    if result.valid and pin:
        session.state.save_pin(
            project_id,
            Pin(
                public_key=_b64(request.public_key),
                head_seq=result.head.seq,
                head_hash=_b64(result.head.hash),
                head_signature=_b64(result.head.signature),
            ),
        )
    if json_output:
        print_json(as_dict(result))
    elif result.valid:
        out.print(
            f"[green]valid[/]: {result.events_verified} events verified; head seq "
            f"{result.head.seq}, hash {result.head.hash.hex()[:16]}…"
        )
        if pinned is not None and pinned.head_seq:
            err.print(f"Checked against the head pinned earlier (seq {pinned.head_seq}).")
    else:
        out.print(
            f"[red]BROKEN[/] at event {result.first_broken_seq}: {escape(result.reason)} "
            f"({result.events_verified} events verified before it)"
        )
    if not result.valid:
        raise typer.Exit(ExitCode.AUDIT_BROKEN)


@app.command("head")
def head(ctx: typer.Context, project: ProjectOption = None, json_output: JsonOption = False):
    """Show the signed head of the audit chain (the latest event), to pin or compare."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    found = session.crypto.GetAuditHead(
        crypto_pb2.GetAuditHeadRequest(project_id=project_id), timeout=session.timeout
    ).head
    if json_output:
        print_json(as_dict(found))
        return
    out.print(f"seq        {found.seq}")
    out.print(f"hash       {found.hash.hex()}")
    out.print(f"signature  {_b64(found.signature)}")


@app.command("events")
def events(
    ctx: typer.Context,
    project: ProjectOption = None,
    limit: LimitOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the audit events in sequence order (needs the unlock token)."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    metadata = session.metadata(project_id)
    found: list[crypto_pb2.AuditEvent] = []
    page_token = ""
    while limit is None or len(found) < limit:
        page = session.crypto.ListAuditEvents(
            crypto_pb2.ListAuditEventsRequest(
                project_id=project_id,
                page_size=PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(found)),
                page_token=page_token,
            ),
            metadata=metadata,
            timeout=session.timeout,
        )
        found += page.events
        page_token = page.next_page_token
        if not page_token:
            break
    if json_output:
        print_json([as_dict(e) for e in found])
        return
    table = Table(box=None, pad_edge=False)
    for column in ("seq", "time", "event", "actor", "attributes"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for event in found:
        attributes = " ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
        table.add_row(
            str(event.seq),
            when(event.time),
            audit_event_type(event.type),
            escape(event.actor),
            escape(attributes),
        )
    out.print(table)
