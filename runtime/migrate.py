"""`make migrate` / the Kubernetes migration Job: applies every service's Alembic migrations.

With DATABASE_URL all services' tables go to that database (each service keeps its own
version table); without it, each service's SQLite file under DATA_DIR is migrated.
"""

from __future__ import annotations

import logging

from runtime.config import ServiceName, load_settings
from runtime.db import database_url, upgrade
from runtime.logs import configure_logging

log = logging.getLogger(__name__)
MIGRATED = (ServiceName.PROJECTS, ServiceName.CRYPTO, ServiceName.INGEST)


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, "migrate")
    for service in MIGRATED:
        upgrade(service, database_url(settings, service))
        log.info("%s: migrations applied", service.value)


if __name__ == "__main__":
    main()
