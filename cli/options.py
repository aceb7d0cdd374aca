"""Options shared by several commands, spelled the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

PROJECT_VARIABLE = "CONTEXTCACHE_PROJECT"
_PROJECT_HELP = (
    "Project id or name (default: CONTEXTCACHE_PROJECT, else the project unlocked last)."
)

ProjectArgument = Annotated[
    str | None,
    typer.Argument(help=_PROJECT_HELP, envvar=PROJECT_VARIABLE, show_default=False),
]
ProjectOption = Annotated[
    str | None,
    typer.Option(
        "--project", "-p", help=_PROJECT_HELP, envvar=PROJECT_VARIABLE, show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOption = Annotated[int | None, typer.Option(help="At most this many.", min=1)]
