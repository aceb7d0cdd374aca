"""Which tables each service owns, from its own models (one source of truth with its
migrations), in the order a backup copies them.

Order matters only for the embedded default, where each service has its own file copied
at its own instant: ingest first (its documents name projects that already exist when
projects is copied), then projects (whose keyrings crypto already holds when crypto is
copied), then crypto last, so that every audit event an outbox had delivered is in the
copied chain; an event still pending in a copied outbox but already in the chain is
delivered again after a restore and appended at most once (events carry ids).
"""

from __future__ import annotations

from sqlalchemy import MetaData

from runtime.config import ServiceName

BACKUP_ORDER = (ServiceName.INGEST, ServiceName.PROJECTS, ServiceName.CRYPTO)


def service_metadata(service: ServiceName) -> MetaData:
    if service is ServiceName.INGEST:
        from services.ingest.models import Base as IngestBase

        return IngestBase.metadata
    if service is ServiceName.PROJECTS:
        from services.projects.models import Base as ProjectsBase

        return ProjectsBase.metadata
    if service is ServiceName.CRYPTO:
        from services.crypto.models import metadata

        return metadata
    raise ValueError(f"{service.value} owns no tables")


def version_table(service: ServiceName) -> str:
    """Alembic's version table of a service (runtime.db.alembic_config)."""
    return f"alembic_version_{service.value}"


def owned_tables(service: ServiceName) -> list[str]:
    """Every table of the service, its migration version table included."""
    return [*sorted(service_metadata(service).tables), version_table(service)]
