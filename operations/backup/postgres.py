"""The production path's databases: every service's tables in the PostgreSQL database of
DATABASE_URL, dumped with `pg_dump` and loaded with `pg_restore` (Debian's PostgreSQL
client; its major version must be at least the server's).

The dump, the counts and the migration revisions all read one exported snapshot, so a
backup taken while ingestion runs is one instant of every service. Only the services'
tables are dumped (other applications' tables in the same database are left alone), and a
restore runs in a single transaction: it either loads everything or changes nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from operations.backup.errors import BackupError
from operations.backup.inventory import count_rows, revision
from operations.backup.tables import BACKUP_ORDER, owned_tables
from runtime.config import ServiceName, Settings
from runtime.db import database_url, sync_url

DUMP = "postgresql.dump"
DUMP_TIMEOUT = 6 * 3600


def libpq_url(settings: Settings) -> str:
    """DATABASE_URL as pg_dump reads it (no SQLAlchemy driver name)."""
    return "postgresql://" + database_url(settings, ServiceName.PROJECTS).split("://", 1)[1]


def engine_of(settings: Settings) -> Engine:
    return create_engine(sync_url(database_url(settings, ServiceName.PROJECTS)))


def _client(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise BackupError(
            f"{program} not found: install Debian's PostgreSQL client "
            "(apt-get install postgresql-client), of the server's major version or newer"
        )
    return path


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 (fixed program, arguments are ours)
            command, capture_output=True, text=True, timeout=DUMP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish within {DUMP_TIMEOUT} s") from None
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()[-2000:]}")


def _all_tables() -> list[str]:
    return [table for service in BACKUP_ORDER for table in owned_tables(service)]


def snapshot(settings: Settings, directory: Path) -> tuple[dict, dict, dict[str, str]]:
    pg_dump = _client("pg_dump")
    engine = engine_of(settings)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            with connection.begin():
                present = set(inspect(connection).get_table_names())
                missing = [t for t in _all_tables() if t not in present]
                if missing:
                    raise BackupError(
                        f"the database has no table {', '.join(missing)}: not a ContextCache "
                        "deployment, or its migrations never ran (make migrate)"
                    )
                schema = connection.execute(text("SELECT current_schema()")).scalar()
                exported = connection.execute(text("SELECT pg_export_snapshot()")).scalar()
                opened = dict.fromkeys(BACKUP_ORDER, connection)
                revisions = {s.value: revision(connection, s) for s in BACKUP_ORDER}
                counts = count_rows(opened)
                # The transaction stays open until pg_dump has read the snapshot it exported.
                _run(
                    [
                        pg_dump,
                        "--format=custom",
                        "--no-owner",
                        "--no-privileges",
                        f"--snapshot={exported}",
                        f"--file={directory / DUMP}",
                        *(f"--table={schema}.{table}" for table in _all_tables()),
                        f"--dbname={libpq_url(settings)}",
                    ],
                    "pg_dump",
                )
    finally:
        engine.dispose()
    return revisions, counts, {service.value: DUMP for service in BACKUP_ORDER}


def check_target(settings: Settings, replace: bool) -> None:
    engine = engine_of(settings)
    try:
        with engine.connect() as connection:
            present = sorted(set(inspect(connection).get_table_names()) & set(_all_tables()))
    except Exception as error:  # noqa: BLE001 (any connection failure: one message)
        raise BackupError(f"cannot connect to DATABASE_URL: {error.__class__.__name__}") from None
    finally:
        engine.dispose()
    if present and not replace:
        raise BackupError(
            f"the database already has ContextCache tables ({', '.join(present)}): restore "
            "into an empty database, or pass --replace to drop and reload them"
        )


def load(settings: Settings, directory: Path, replace: bool) -> None:
    pg_restore = _client("pg_restore")
    _run(
        [
            pg_restore,
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            *(["--clean", "--if-exists"] if replace else []),
            f"--dbname={libpq_url(settings)}",
            str(directory / DUMP),
        ],
        "pg_restore",
    )


def restored_counts(settings: Settings) -> dict[str, object]:
    engine = engine_of(settings)
    try:
        with engine.connect() as connection:
            return count_rows(dict.fromkeys(BACKUP_ORDER, connection))
    finally:
        engine.dispose()
