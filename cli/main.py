"""The `contextcache` command: its commands, global options, and how every failure ends.

A failed call ends with one readable message on stderr (the field named for bad input) and
the documented exit code (`cli.errors.ExitCode`), never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import grpc
import typer
from rich.markup import escape
from rich.table import Table

from cli import audit, bundles, documents, ingest, projects, query
from cli.errors import EXIT_CODE_HELP, CliError, ExitCode, describe
from cli.output import err, out
from cli.session import DEFAULT_ADDRESS, Session
from contextcache.v1 import (
    common_pb2,
    crypto_pb2,
    ingest_pb2,
    projects_pb2,
    query_pb2,
)

# The session of this process's command, for the hints of its error message.
_session: Session | None = None

app = typer.Typer(
    name="contextcache",
    help=(
        "ContextCache from a terminal: create and unlock passphrase-protected projects, ingest "
        "documents, ask questions, verify the audit log. Talks to the gateway "
        f"(--address, CONTEXTCACHE_ADDRESS; default {DEFAULT_ADDRESS})."
    ),
    epilog=EXIT_CODE_HELP,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    # A traceback's locals could hold a passphrase or a token.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Option(
            "--address", "-a", envvar="CONTEXTCACHE_ADDRESS", help="The gateway, host:port."
        ),
    ] = DEFAULT_ADDRESS,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for each call (uploads: 300).")
    ] = 60.0,
) -> None:
    global _session
    _session = Session(address, timeout)
    ctx.obj = _session
    ctx.call_on_close(_session.close)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Show whether each service behind the gateway is healthy, with its dependencies."""
    session: Session = ctx.obj
    calls = [
        (session.projects.GetStatus, projects_pb2.ProjectServiceGetStatusRequest()),
        (session.ingest.GetStatus, ingest_pb2.IngestServiceGetStatusRequest()),
        (session.query.GetStatus, query_pb2.QueryServiceGetStatusRequest()),
        (session.crypto.GetStatus, crypto_pb2.CryptoServiceGetStatusRequest()),
    ]
    table = Table(box=None, pad_edge=False)
    for column in ("service", "state", "version", "checks"):
        table.add_column(column)
    degraded = False
    for call, request in calls:
        found = call(request, timeout=session.timeout).status
        healthy = found.state == common_pb2.ServiceStatus.STATE_HEALTHY
        degraded |= not healthy
        checks = ", ".join(f"{c.name} {_check_result(c.result)}" for c in found.checks)
        table.add_row(
            found.service.removeprefix("contextcache.v1."),
            "[green]healthy[/]" if healthy else "[red]degraded[/]",
            found.version,
            escape(checks),
        )
    out.print(table)
    if degraded:
        raise typer.Exit(ExitCode.UNAVAILABLE)


def _check_result(result: int) -> str:
    return common_pb2.DependencyCheck.Result.Name(result).removeprefix("RESULT_").lower()


app.add_typer(projects.app, name="projects")
app.command("unlock")(projects.unlock)
app.command("lock")(projects.lock)
app.add_typer(projects.passphrase_app, name="passphrase")
app.command("ingest")(ingest.ingest)
app.add_typer(documents.app, name="documents")
app.command("watch")(documents.watch)
app.command("query")(query.query)
app.add_typer(audit.app, name="audit")
app.command("export")(bundles.export_project)
app.command("import")(bundles.import_project)


def _fail(lines: list[str], code: ExitCode) -> None:
    err.print(f"[bold red]{escape(lines[0])}[/]")
    for line in lines[1:]:
        err.print(escape(line))
    sys.exit(code)


def main() -> None:
    """The console script: runs the app, turning every expected failure into a message and
    its exit code."""
    try:
        app()
    except grpc.RpcError as error:
        address = _session.address if _session else DEFAULT_ADDRESS
        hint = _session.project_hint if _session else ""
        failure = describe(error, address=address, project=hint)
        _fail(failure.lines(), failure.code)
    except CliError as error:
        _fail([error.message, *([error.hint] if error.hint else [])], error.code)
    except OSError as error:
        _fail([f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")], ExitCode.ERROR)
