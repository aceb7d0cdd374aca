"""DATABASE_URL in the forms a user will paste, and the driver we do not use refused at start
with a message naming the variable (not an import error)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from runtime.config import ServiceName, Settings
from runtime.db import create_engine, database_url
from tests.conftest import PG_ADMIN


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
async def test_every_postgresql_form_connects(scheme):
    rest = PG_ADMIN.split("://", 1)[1]
    url = database_url(Settings(database_url=f"{scheme}://{rest}"), ServiceName.PROJECTS)
    assert url.startswith("postgresql+psycopg://")
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def test_an_unsupported_driver_stops_the_service_with_a_message(tmp_path):
    env = {**os.environ, "DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1/db"}
    env["DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "services.projects"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "asyncpg driver is not supported" in result.stderr
    assert "Traceback" not in result.stderr
