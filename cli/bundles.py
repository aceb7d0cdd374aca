"""`export` and `import`: a project as one signed file, moved between deployments.

The file is the bundle ExportProject streams (docs/export.md): content still encrypted, the
keyring (wrapped keys only), the audit chain, signed by the project's key. `export` writes
beside the target and renames at the end, so a failed export never leaves a partial file
under the name asked for; `import` streams the file in pieces and the server takes all of
it or nothing. The passphrase is never printed or stored.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.errors import CliError, ExitCode
from cli.options import JsonOption, ProjectArgument
from cli.output import as_dict, err, out, print_json, size
from cli.projects import PASSPHRASE_VARIABLE, PassphraseStdin, read_passphrase, session_of
from cli.state import Pin
from contextcache.v1 import projects_pb2

# A bundle can be large: the whole transfer gets this long, not the per-call timeout.
TRANSFER_TIMEOUT = 3600.0
PIECE_BYTES = 1024 * 1024


def export_project(
    ctx: typer.Context,
    project: ProjectArgument = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The bundle file to write.", dir_okay=False),
    ] = Path("project.ccbundle"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Export a project as one signed bundle file (needs the project unlocked).

    Content stays encrypted under the project's key; `contextcache import` on another
    deployment opens it with the passphrase.
    """
    session = session_of(ctx)
    project_id = session.project_id(project)
    if output.exists() and not force:
        raise CliError(f"{output} exists.", ExitCode.USAGE, "Pass --force to replace it.")
    partial = output.with_name(f".{output.name}.partial")
    written = 0
    try:
        with partial.open("wb") as file:
            os.chmod(partial, 0o600)
            for response in session.projects.ExportProject(
                projects_pb2.ExportProjectRequest(project_id=project_id),
                metadata=session.metadata(project_id),
                timeout=TRANSFER_TIMEOUT,
            ):
                file.write(response.data)
                written += len(response.data)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    err.print(f"Exported {project_id} to {escape(str(output))} ({size(written)}).")


def _pieces(path: Path, passphrase: str) -> Iterator[projects_pb2.ImportProjectRequest]:
    """The passphrase with the first piece, then the rest of the file."""
    with path.open("rb") as file:
        yield projects_pb2.ImportProjectRequest(passphrase=passphrase, data=file.read(PIECE_BYTES))
        while data := file.read(PIECE_BYTES):
            yield projects_pb2.ImportProjectRequest(data=data)


def import_project(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="A bundle written by `contextcache export`.", exists=True, dir_okay=False
        ),
    ],
    passphrase_stdin: PassphraseStdin = False,
    json_output: JsonOption = False,
) -> None:
    """Import a project from a bundle file into this deployment (same project id).

    The passphrase must open the bundle's keyring, whose signing key must verify every byte
    of the file; otherwise nothing is imported (exit 7 wrong passphrase, 3 altered or cut
    file, 5 the project exists here).
    """
    session = session_of(ctx)
    passphrase = read_passphrase(
        f"Passphrase of the project in {file.name}",
        from_stdin=passphrase_stdin,
        variable=PASSPHRASE_VARIABLE,
    )
    response = session.projects.ImportProject(_pieces(file, passphrase), timeout=TRANSFER_TIMEOUT)
    project = response.project
    # The key that verified the bundle is the project's: `audit verify` holds the server to it.
    session.state.save_pin(
        project.id, Pin(public_key=base64.b64encode(project.public_key).decode())
    )
    if json_output:
        print_json(as_dict(response))
        return
    out.print(
        f"Imported project [bold]{escape(project.name)}[/] ({project.id}): "
        f"{response.documents_imported} documents, {response.chunks_imported} chunks, "
        f"{response.facts_imported} facts, {response.audit_events_imported} audit events "
        f"verified; {response.chunks_indexed} chunks indexed."
    )
