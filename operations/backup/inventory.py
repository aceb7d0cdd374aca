"""What a deployment's tables hold, counted: written into a backup's manifest, compared
after a restore, and shown to the operator. Counts and ids only, never content."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, func, select, text

from operations.backup.tables import version_table
from runtime.config import ServiceName


def revision(connection: Connection, service: ServiceName) -> str | None:
    """The service's migration revision (None: its tables were never created)."""
    # The table name is ours (tables.version_table), never input.
    query = text(f"SELECT version_num FROM {version_table(service)}")  # noqa: S608
    rows = connection.execute(query).all()
    return rows[0][0] if rows else None


def count_rows(connections: Mapping[ServiceName, Connection]) -> dict[str, object]:
    """Projects, documents by status, chunks, facts, audit events and undelivered events."""
    from services.crypto.models import audit_events
    from services.ingest.models import AUDIT_OUTBOX as INGEST_OUTBOX
    from services.ingest.models import ChunkRow, DocumentRow, FactRow
    from services.projects.models import AUDIT_OUTBOX as PROJECTS_OUTBOX
    from services.projects.models import ProjectRow

    def count(service: ServiceName, table) -> int:  # type: ignore[no-untyped-def]
        return int(connections[service].execute(select(func.count()).select_from(table)).scalar())

    ingest = connections[ServiceName.INGEST]
    by_status = ingest.execute(
        select(DocumentRow.status, func.count()).group_by(DocumentRow.status)
    ).all()
    return {
        "projects": count(ServiceName.PROJECTS, ProjectRow.__table__),
        "documents": {status: int(n) for status, n in sorted(by_status)},
        "chunks": count(ServiceName.INGEST, ChunkRow.__table__),
        "facts": count(ServiceName.INGEST, FactRow.__table__),
        "audit_events": count(ServiceName.CRYPTO, audit_events),
        "audit_events_pending": count(ServiceName.PROJECTS, PROJECTS_OUTBOX)
        + count(ServiceName.INGEST, INGEST_OUTBOX),
    }


def project_ids(connection: Connection) -> list[str]:
    from services.projects.models import ProjectRow

    return list(connection.execute(select(ProjectRow.id).order_by(ProjectRow.id)).scalars())
