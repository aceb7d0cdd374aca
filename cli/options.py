"""Options shared by several commands, spelled the same everywhere."""

from __future__ import annotations

import os
from typing import Annotated

import grpc
import typer

from cli.session import DEFAULT_ADDRESS, Session

PROJECT_VARIABLE = "CONTEXTCACHE_PROJECT"
_PROJECT_HELP = (
    "Project id or name (default: CONTEXTCACHE_PROJECT, else the project unlocked last)."
)


def complete_project(incomplete: str) -> list[str]:
    """Project names for shell completion, from the gateway in CONTEXTCACHE_ADDRESS."""
    session = Session(os.environ.get("CONTEXTCACHE_ADDRESS", DEFAULT_ADDRESS), timeout=2)
    try:
        names = [project.name for project in session.all_projects(limit=100)]
    except grpc.RpcError:
        return []
    finally:
        session.close()
    return sorted({name for name in names if name.startswith(incomplete)})


ProjectArgument = Annotated[
    str | None,
    typer.Argument(
        help=_PROJECT_HELP,
        envvar=PROJECT_VARIABLE,
        show_default=False,
        autocompletion=complete_project,
    ),
]
ProjectOption = Annotated[
    str | None,
    typer.Option(
        "--project",
        "-p",
        help=_PROJECT_HELP,
        envvar=PROJECT_VARIABLE,
        show_default=False,
        autocompletion=complete_project,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOption = Annotated[int | None, typer.Option(help="At most this many.", min=1)]
