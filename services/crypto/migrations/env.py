"""Alembic environment of the crypto service."""

from runtime.migration_env import run
from services.crypto.models import metadata

run(metadata)
