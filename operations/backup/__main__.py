"""`python -m operations.backup create|restore`: the operator's backup and restore.

create --to DIR   copies every service's tables (online: SQLite's backup API, or one
                  pg_dump snapshot) into DIR with a manifest written last
restore --from DIR [--replace]
                  checks the backup, refuses a running or non-empty deployment (unless
                  --replace), loads the tables, applies newer migrations, compares the
                  counts with the manifest and rebuilds the vector index from the chunks
rebuild-index     rebuilds the vector index alone from the tables as they are

Reads the deployment's configuration from the environment like the services do
(DATA_DIR, DATABASE_URL, QDRANT_URL/QDRANT_PATH, REDIS_URL, TOKEN_SEALING_KEY). Never
writes a secret into a backup and never prints one.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from operations.backup import embedded, postgres
from operations.backup.errors import BackupError
from operations.backup.index import (
    embedded_index_lock,
    empty_embedded_index,
    invalidate_query_cache,
    rebuild,
)
from operations.backup.manifest import Manifest, read_manifest, sealing_key_id, write_manifest
from operations.backup.tables import BACKUP_ORDER
from runtime.config import ServiceName, Settings, load_settings
from runtime.db import alembic_config, database_kind, database_url, upgrade


def _kind(settings: Settings) -> str:
    return database_kind(database_url(settings, ServiceName.PROJECTS))


def create(settings: Settings, directory: Path) -> Manifest:
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: give a new directory for each backup")
    existed = directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    kind = _kind(settings)
    try:
        store = embedded if kind == "sqlite" else postgres
        revisions, counts, layout = store.snapshot(settings, directory)
        manifest = Manifest(
            database=kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            revisions=revisions,
            counts=counts,
            token_sealing_key_id=sealing_key_id(settings.token_sealing_key),
            layout=layout,
        )
        write_manifest(directory, manifest)
    except BaseException:
        # No half-written backup is left to be mistaken for a good one (a directory the
        # operator made is emptied, not removed).
        if existed:
            for entry in directory.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return manifest


def _check_revisions(settings: Settings, manifest: Manifest) -> None:
    for service in BACKUP_ORDER:
        wanted = manifest.revisions.get(service.value)
        scripts = ScriptDirectory.from_config(
            alembic_config(service, database_url(settings, service))
        )
        try:
            if wanted is not None and scripts.get_revision(wanted) is None:
                raise CommandError(wanted)
        except CommandError:
            raise BackupError(
                f"the backup's {service.value} tables are at migration {wanted}, which this "
                "ContextCache does not know: restore with the version that took the backup "
                "(or a newer one)"
            ) from None


def restore(settings: Settings, directory: Path, replace: bool) -> tuple[Manifest, int, list[str]]:
    manifest = read_manifest(directory)
    kind = _kind(settings)
    if manifest.database != kind:
        raise BackupError(
            f"the backup holds {manifest.database} databases and this deployment is "
            f"configured for {kind} (DATABASE_URL): configure the same kind"
        )
    _check_revisions(settings, manifest)
    warnings: list[str] = []
    with embedded_index_lock(settings):
        if kind == "sqlite":
            embedded.check_target(settings, manifest.layout, replace)
            embedded.load(settings, directory, manifest.layout)
        else:
            postgres.check_target(settings, replace)
            postgres.load(settings, directory, replace)
        for service in BACKUP_ORDER:
            upgrade(service, database_url(settings, service))
        store = embedded if kind == "sqlite" else postgres
        counts = store.restored_counts(settings)
        if counts != manifest.counts:
            raise BackupError(
                f"the restored tables do not hold what the backup counted: {counts} instead "
                f"of {manifest.counts}"
            )
        if not settings.qdrant_url:
            empty_embedded_index(settings.index_path)
    project_ids = _project_ids(settings)
    points = asyncio.run(_index(settings, project_ids, warnings))
    current_key = sealing_key_id(settings.token_sealing_key)
    if current_key is None or current_key != manifest.token_sealing_key_id:
        documents = manifest.counts["documents"]
        assert isinstance(documents, dict)
        unfinished = documents.get("queued", 0) + documents.get("processing", 0)
        warnings.append(
            "TOKEN_SEALING_KEY differs from the deployment's at backup time (or is unset): "
            f"{unfinished} unfinished documents cannot resume (retry them) and "
            f"{manifest.counts['audit_events_pending']} pending audit events cannot be "
            "delivered until the old key is set (TOKEN_SEALING_KEY or _PREVIOUS)"
        )
    return manifest, points, warnings


def rebuild_index(settings: Settings) -> tuple[int, list[str]]:
    """The index alone, from the tables as they are (a lost index, a database recovered by
    other means)."""
    warnings: list[str] = []
    with embedded_index_lock(settings):
        if not settings.qdrant_url:
            empty_embedded_index(settings.index_path)
    points = asyncio.run(_index(settings, _project_ids(settings), warnings))
    return points, warnings


def _project_ids(settings: Settings) -> list[str]:
    from sqlalchemy import create_engine

    from operations.backup.inventory import project_ids
    from runtime.db import sync_url

    engine = create_engine(sync_url(database_url(settings, ServiceName.PROJECTS)))
    try:
        with engine.connect() as connection:
            return project_ids(connection)
    finally:
        engine.dispose()


async def _index(settings: Settings, project_ids: list[str], warnings: list[str]) -> int:
    points = await rebuild(settings, project_ids)
    if not await invalidate_query_cache(settings, project_ids):
        warnings.append(
            "Redis did not answer: the query cache was not invalidated; rankings cached "
            "before the restore may be served for up to 10 minutes"
        )
    return points


def _summary(counts: dict[str, object]) -> str:
    documents = counts["documents"]
    assert isinstance(documents, dict)
    by_status = ", ".join(f"{n} {status}" for status, n in documents.items()) or "none"
    return (
        f"{counts['projects']} projects; documents: {by_status}; {counts['chunks']} chunks; "
        f"{counts['facts']} facts; {counts['audit_events']} audit events "
        f"(+{counts['audit_events_pending']} pending delivery)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operations.backup",
        description="Back up and restore a ContextCache deployment (docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create_cmd = commands.add_parser("create", help="back up the deployment into a new directory")
    create_cmd.add_argument("--to", type=Path, required=True, metavar="DIR")
    restore_cmd = commands.add_parser("restore", help="restore a backup into the deployment")
    restore_cmd.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR")
    restore_cmd.add_argument(
        "--replace", action="store_true", help="overwrite the deployment's existing tables"
    )
    commands.add_parser(
        "rebuild-index", help="rebuild the vector index from the tables (deployment stopped)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        if args.command == "create":
            manifest = create(settings, args.to)
            warnings = []
            print(f"backup written to {args.to} ({manifest.database}): {_summary(manifest.counts)}")
        elif args.command == "rebuild-index":
            points, warnings = rebuild_index(settings)
            print(f"vector index rebuilt with {points} points")
        else:
            manifest, points, warnings = restore(settings, args.source, args.replace)
            print(
                f"restored the backup of {manifest.created_at} ({manifest.database}): "
                f"{_summary(manifest.counts)}; vector index rebuilt with {points} points"
            )
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    except BackupError as error:
        print(f"backup {args.command}: {error}", file=sys.stderr)
        return 1
    except SQLAlchemyError as error:
        # The operator's own database: its message is what they need (no caller to hide it from).
        print(f"backup {args.command}: database error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
