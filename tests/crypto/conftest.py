"""Fixtures: the crypto service on a free port over a real socket, on SQLite and PostgreSQL.

Each server runs in its own thread and event loop, so tests call it with the plain
(synchronous) generated stubs, exactly as a client would.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy

from .support import CHEAP_KDF, PASSPHRASE, Project, RunningCrypto, settings_for
from .support import crypto_messages as crypto_pb2

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A fresh database for the session: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('crypto-sqlite') / 'crypto.db'}"
        return
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        # A missing server is a broken environment, not a reason to test less (see README).
        pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {error}".strip())
    name = f"cc_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def crypto(database_url: str, tmp_path_factory) -> Iterator[RunningCrypto]:
    service = RunningCrypto(
        settings_for(database_url, tmp_path_factory.mktemp("crypto-data")), CHEAP_KDF
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def stub(crypto: RunningCrypto):  # type: ignore[no-untyped-def]
    return crypto.stub


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[sqlalchemy.Engine]:
    """Direct access to crypto's tables, to play the attacker who edits them."""
    url = database_url.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def new_project(stub) -> Callable[[], Project]:  # type: ignore[no-untyped-def]
    """Creates a keyring for a fresh project id and unlocks it."""

    def create(passphrase: str = PASSPHRASE) -> Project:
        project_id = str(uuid.uuid4())
        keyring = stub.CreateKeyring(
            crypto_pb2.CreateKeyringRequest(project_id=project_id, passphrase=passphrase)
        ).keyring
        token = stub.OpenKeyring(
            crypto_pb2.OpenKeyringRequest(
                project_id=project_id, keyring=keyring, passphrase=passphrase
            )
        ).unlock_token
        return Project(project_id, passphrase, keyring, token)

    return create
