"""`projects create|list|show|stats|delete`, `unlock`, `lock` and `passphrase change`.

Passphrases are read without echo from the terminal, or for scripts from the first line(s)
of stdin (`--passphrase-stdin`) or CONTEXTCACHE_PASSPHRASE; they are never printed, stored
or put in an error message.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from google.protobuf import duration_pb2
from rich.markup import escape
from rich.table import Table

from cli.errors import CliError, ExitCode
from cli.options import JsonOption, LimitOption, ProjectArgument
from cli.output import as_dict, err, out, print_json, size, when
from cli.session import TOKEN_VARIABLE, Session
from cli.state import Pin, StoredToken
from contextcache.v1 import projects_pb2

PASSPHRASE_VARIABLE = "CONTEXTCACHE_PASSPHRASE"
NEW_PASSPHRASE_VARIABLE = "CONTEXTCACHE_NEW_PASSPHRASE"

app = typer.Typer(help="Create, list, inspect and delete projects.", no_args_is_help=True)
passphrase_app = typer.Typer(help="Change a project's passphrase.", no_args_is_help=True)

PassphraseStdin = Annotated[
    bool,
    typer.Option(
        "--passphrase-stdin",
        help="Read the passphrase from the first line of stdin (for scripts).",
    ),
]


def session_of(ctx: typer.Context) -> Session:
    return ctx.obj


# -- passphrases -----------------------------------------------------------------------


def _stdin_line(what: str) -> str:
    line = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not line:
        raise CliError(f"No {what} on stdin.", ExitCode.USAGE)
    return line


def read_passphrase(
    prompt: str, *, from_stdin: bool, variable: str, confirm: bool = False, what: str = ""
) -> str:
    what = what or "passphrase"
    if from_stdin:
        return _stdin_line(what)
    if value := os.environ.get(variable):
        return value
    if sys.stdin.isatty():
        return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    raise CliError(
        f"No {what}: stdin is not a terminal to ask on.",
        ExitCode.USAGE,
        f"Pass --passphrase-stdin and write it to stdin, or set {variable}.",
    )


# -- projects --------------------------------------------------------------------------


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The project's name.")],
    description: Annotated[str, typer.Option("--description", "-d", help="What it holds.")] = "",
    passphrase_stdin: PassphraseStdin = False,
    json_output: JsonOption = False,
) -> None:
    """Create a project protected by a passphrase (at least 20 characters)."""
    session = session_of(ctx)
    passphrase = read_passphrase(
        "Passphrase (min. 20 characters)",
        from_stdin=passphrase_stdin,
        variable=PASSPHRASE_VARIABLE,
        confirm=True,
    )
    project = session.projects.CreateProject(
        projects_pb2.CreateProjectRequest(
            name=name, description=description, passphrase=passphrase
        ),
        timeout=session.timeout,
    ).project
    # The key that signs the project's audit log, as first seen: `audit verify` holds the
    # server to it from now on.
    session.state.save_pin(
        project.id, Pin(public_key=base64.b64encode(project.public_key).decode())
    )
    if json_output:
        print_json(as_dict(project))
        return
    out.print(f"Created project [bold]{escape(project.name)}[/] ({project.id}).")
    err.print(f"Unlock it to add documents: contextcache unlock {shlex.quote(project.name)}")


@app.command("list")
def list_projects(
    ctx: typer.Context,
    limit: LimitOption = None,
    json_output: JsonOption = False,
) -> None:
    """List projects, newest first."""
    session = session_of(ctx)
    projects = session.all_projects(limit)
    if json_output:
        print_json([as_dict(p) for p in projects])
        return
    if not projects:
        err.print("No projects yet. Create one: contextcache projects create NAME")
        return
    current = session.state.current()
    table = Table(box=None, pad_edge=False)
    for column in ("name", "id", "documents", "facts", "created", "unlocked"):
        table.add_column(column, justify="right" if column in ("documents", "facts") else "left")
    for project in projects:
        stored = session.state.token(project.id)
        unlocked = "yes" if stored and not stored.expired else ""
        marker = " *" if project.id == current else ""
        table.add_row(
            escape(project.name) + marker,
            project.id,
            str(project.document_count),
            str(project.fact_count),
            when(project.created_at),
            unlocked,
        )
    out.print(table)


@app.command("show")
def show(ctx: typer.Context, project: ProjectArgument = None, json_output: JsonOption = False):
    """Show a project's metadata."""
    found = session_of(ctx).project(project)
    if json_output:
        print_json(as_dict(found))
        return
    rows = [
        ("name", escape(found.name)),
        ("id", found.id),
        ("description", escape(found.description)),
        ("state", projects_pb2.Project.State.Name(found.state).removeprefix("STATE_").lower()),
        ("documents", str(found.document_count)),
        ("facts", str(found.fact_count)),
        ("created", when(found.created_at)),
        ("updated", when(found.updated_at)),
        ("public key", base64.b64encode(found.public_key).decode()),
    ]
    _print_fields(rows)


@app.command("stats")
def stats(ctx: typer.Context, project: ProjectArgument = None, json_output: JsonOption = False):
    """Show a project's document, chunk and fact counts and stored bytes."""
    session = session_of(ctx)
    project_id = session.project_id(project)
    figures = session.projects.GetProjectStats(
        projects_pb2.GetProjectStatsRequest(project_id=project_id), timeout=session.timeout
    ).stats
    if json_output:
        print_json(as_dict(figures))
        return
    _print_fields(
        [
            ("project", figures.project_id),
            ("completed", str(figures.documents_completed)),
            ("queued", str(figures.documents_queued)),
            ("processing", str(figures.documents_processing)),
            ("failed", str(figures.documents_failed)),
            ("chunks", str(figures.chunk_count)),
            ("facts", str(figures.fact_count)),
            ("stored", size(figures.stored_bytes)),
            ("last ingest", when(figures.last_ingest_at) or "never"),
        ]
    )


@app.command("delete")
def delete(
    ctx: typer.Context,
    project: ProjectArgument = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a project and everything in it (needs its unlock token)."""
    session = session_of(ctx)
    project_id = session.project_id(project)
    metadata = session.metadata(project_id)
    name = session.project_hint
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "Deleting a project needs confirmation.", ExitCode.USAGE, "Pass --yes to confirm."
            )
        typer.confirm(f"Delete project {name} and every document in it?", abort=True, err=True)
    completed = session.projects.DeleteProject(
        projects_pb2.DeleteProjectRequest(project_id=project_id),
        metadata=metadata,
        timeout=session.timeout,
    ).completed
    session.state.forget_token(project_id)
    session.state.forget_current(project_id)
    if completed:
        out.print(f"Deleted project {escape(name)}.")
    else:
        out.print(
            f"Deleted project {escape(name)}; its data is still being removed from every "
            "service (this completes by itself)."
        )


def _print_fields(rows: list[tuple[str, str]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


# -- unlock, lock, passphrase change ---------------------------------------------------

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 8h or 1d")
    return int(match[1]) * _UNITS[match[2]]


def in_words(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def unlock(
    ctx: typer.Context,
    project: ProjectArgument = None,
    ttl: Annotated[
        str | None,
        typer.Option(help="How long the token lasts: 1m to 24h, e.g. 30m, 8h (server default 1h)."),
    ] = None,
    passphrase_stdin: PassphraseStdin = False,
    print_token: Annotated[
        bool,
        typer.Option(
            "--print",
            help="Print `export CONTEXTCACHE_TOKEN=…` lines for eval instead of saving the token.",
        ),
    ] = False,
) -> None:
    """Unlock a project: check its passphrase and keep a short-lived unlock token.

    The token is saved in a file only you can read and the project becomes the default for
    the following commands; with --print it is printed for `eval` instead.
    """
    session = session_of(ctx)
    project_id = session.project_id(project)
    name = session.project_hint
    request = projects_pb2.UnlockProjectRequest(
        project_id=project_id,
        passphrase=read_passphrase(
            f"Passphrase of {name}", from_stdin=passphrase_stdin, variable=PASSPHRASE_VARIABLE
        ),
    )
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=parse_duration(ttl)))
    response = session.projects.UnlockProject(request, timeout=session.timeout)
    expiry = response.expires_at.ToDatetime().replace(tzinfo=UTC)
    until = (
        f"until {expiry.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')} "
        f"(in {in_words((expiry - datetime.now(UTC)).total_seconds())})"
    )
    if print_token:
        out.print(f"export {TOKEN_VARIABLE}={shlex.quote(response.unlock_token)}", markup=False)
        out.print(f"export CONTEXTCACHE_PROJECT={project_id}", markup=False)
        err.print(f"Unlocked {escape(name)} {until}.")
        return
    path = session.state.save_token(
        StoredToken(project_id, name, response.unlock_token, expiry.isoformat())
    )
    session.state.set_current(project_id)
    out.print(f"Unlocked {escape(name)} ({project_id}) {until}.")
    err.print(f"Token saved in {path} (readable only by you); `contextcache lock` removes it.")


def lock(
    ctx: typer.Context,
    project: ProjectArgument = None,
) -> None:
    """Forget a project's saved unlock token (it stays valid until it expires)."""
    session = session_of(ctx)
    project_id = session.project_id(project)
    if session.state.forget_token(project_id):
        out.print(f"Removed the saved token of {escape(session.project_hint)}.")
    else:
        err.print(f"No token was saved for {escape(session.project_hint)}.")


@passphrase_app.command("change")
def change_passphrase(
    ctx: typer.Context,
    project: ProjectArgument = None,
    passphrase_stdin: Annotated[
        bool,
        typer.Option(
            "--passphrase-stdin",
            help="Read the current passphrase, then the new one, from two lines of stdin.",
        ),
    ] = False,
) -> None:
    """Change a project's passphrase. Tokens issued before stop working."""
    session = session_of(ctx)
    project_id = session.project_id(project)
    name = session.project_hint
    old = read_passphrase(
        f"Current passphrase of {name}", from_stdin=passphrase_stdin, variable=PASSPHRASE_VARIABLE
    )
    new = read_passphrase(
        "New passphrase (min. 20 characters)",
        from_stdin=passphrase_stdin,
        variable=NEW_PASSPHRASE_VARIABLE,
        confirm=True,
        what="new passphrase",
    )
    session.projects.ChangePassphrase(
        projects_pb2.ChangePassphraseRequest(
            project_id=project_id, old_passphrase=old, new_passphrase=new
        ),
        timeout=session.timeout,
    )
    had_token = session.state.forget_token(project_id)
    out.print(f"Changed the passphrase of {escape(name)}.")
    if had_token:
        err.print(f"Its saved token no longer works: contextcache unlock {shlex.quote(name)}")
