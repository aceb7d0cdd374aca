"""The embedded default's databases: one SQLite file per service under DATA_DIR (or one
file for all, with DATABASE_URL=sqlite:///…).

A copy is taken with SQLite's online backup API in one step, under a read transaction: it
is consistent even while the services write, and never a torn file copy. A restore writes
each file beside its target and renames it into place, so a target is either untouched or
whole.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, create_engine

from operations.backup.errors import BackupError
from operations.backup.inventory import count_rows, revision
from operations.backup.tables import BACKUP_ORDER, owned_tables
from runtime.config import ServiceName, Settings
from runtime.db import database_url

FOLDER = "sqlite"


def database_file(settings: Settings, service: ServiceName) -> Path:
    url = database_url(settings, service)
    if ":///" not in url:
        raise BackupError(f"DATABASE_URL {url.split(':', 1)[0]}: only a SQLite file can be copied")
    return Path(url.split(":///", 1)[1])


def copy_database(source: Path, target: Path) -> None:
    """A consistent, self-contained copy (no -wal file beside it), checked by SQLite."""
    with contextlib.closing(sqlite3.connect(source, timeout=30)) as origin:
        with contextlib.closing(sqlite3.connect(target)) as copy:
            origin.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
    if verdict != "ok":
        target.unlink(missing_ok=True)
        raise BackupError(f"the copy of {source} failed SQLite's integrity check: {verdict}")


@contextlib.contextmanager
def connections(files: dict[ServiceName, Path]) -> Iterator[dict[ServiceName, Connection]]:
    engines = {path: create_engine(f"sqlite:///{path}") for path in set(files.values())}
    try:
        with contextlib.ExitStack() as stack:
            opened = {path: stack.enter_context(e.connect()) for path, e in engines.items()}
            yield {service: opened[path] for service, path in files.items()}
    finally:
        for engine in engines.values():
            engine.dispose()


def snapshot(settings: Settings, directory: Path) -> tuple[dict, dict, dict[str, str]]:
    """Copies every service's file into `directory`; returns the files' revisions, counts
    and layout (service → file name in the backup)."""
    (directory / FOLDER).mkdir()
    layout: dict[str, str] = {}
    copied: dict[Path, str] = {}
    for service in BACKUP_ORDER:
        source = database_file(settings, service)
        if source not in copied:
            if not source.is_file():
                raise BackupError(
                    f"{source} does not exist: nothing to back up for {service.value} "
                    "(is DATA_DIR or DATABASE_URL the deployment's?)"
                )
            name = f"{FOLDER}/{source.name}"
            copy_database(source, directory / name)
            copied[source] = name
        layout[service.value] = copied[source]
    files = {ServiceName(s): directory / name for s, name in layout.items()}
    with connections(files) as opened:
        _require_tables(opened)
        revisions = {s.value: revision(c, s) for s, c in opened.items()}
        counts = count_rows(opened)
    return revisions, counts, layout


def _require_tables(opened: dict[ServiceName, Connection]) -> None:
    from sqlalchemy import inspect

    for service, connection in opened.items():
        present = set(inspect(connection).get_table_names())
        missing = [t for t in owned_tables(service) if t not in present]
        if missing:
            raise BackupError(
                f"the {service.value} database has no table {', '.join(missing)}: not a "
                "ContextCache deployment, or its migrations never ran (make migrate)"
            )


def targets(settings: Settings, layout: dict[str, str]) -> dict[Path, str]:
    """Where each file of the backup goes (target file → file in the backup)."""
    placed: dict[Path, str] = {}
    for service in BACKUP_ORDER:
        target = database_file(settings, service)
        name = layout[service.value]
        if placed.setdefault(target, name) != name:
            raise BackupError(
                f"{target} would receive two files of the backup: the backup keeps the "
                "services in separate files; unset DATABASE_URL (or point it where it pointed "
                "when the backup was taken)"
            )
    return placed


def check_target(settings: Settings, layout: dict[str, str], replace: bool) -> None:
    """Refuses to overwrite a deployment unless told to."""
    present = [str(path) for path in targets(settings, layout) if path.exists()]
    if present and not replace:
        raise BackupError(
            f"the deployment already has databases ({', '.join(present)}): restore into an "
            "empty DATA_DIR, or pass --replace to overwrite them"
        )


def load(settings: Settings, directory: Path, layout: dict[str, str]) -> None:
    for target, name in targets(settings, layout).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        incoming = target.with_name(f".{target.name}.restoring")
        copy_database(directory / name, incoming)
        # The old file's write-ahead log must not be replayed onto the restored file.
        for suffix in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
        incoming.replace(target)


def restored_counts(settings: Settings) -> dict[str, object]:
    files = {service: database_file(settings, service) for service in BACKUP_ORDER}
    with connections(files) as opened:
        return count_rows(opened)
