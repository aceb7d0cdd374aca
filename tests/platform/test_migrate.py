"""`make migrate` (python -m runtime.migrate) creates every service's tables, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]
TABLES = {"projects", "project_deletions", "audit_events", "documents", "chunks", "facts"}


def test_migrate_creates_every_service_table_and_can_run_twice(postgres_url):
    env = dict(os.environ, DATABASE_URL=postgres_url)
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "runtime.migrate"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    with psycopg.connect(postgres_url) as connection:
        tables = {
            name
            for (name,) in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert tables >= TABLES | {
        "alembic_version_projects",
        "alembic_version_crypto",
        "alembic_version_ingest",
    }
