"""Database access shared by the services: engines, readiness probes and migrations.

Each service owns its tables and its Alembic history (version table
`alembic_version_<service>`), so services may share one PostgreSQL database or use their
own. Without DATABASE_URL each service uses its own SQLite file under DATA_DIR.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from runtime.config import ServiceName, Settings
from runtime.errors import Unavailable
from runtime.health import Dependency

# A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out
# (seconds). A connection that was just in use is not: the ping is a round trip per
# transaction, a measurable share of ingest's CPU on page-sized documents (the model needs
# those cores). A connection that breaks while in use (the server restarted within this
# window) fails its statement once; SQLAlchemy then invalidates the whole pool, so the next
# checkouts connect afresh.
PING_AFTER_IDLE = 5.0
_IDLE_SINCE = "contextcache_idle_since"

# Constraint and index names every service's tables use (stable names for migrations).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Every stored time is UTC; SQLite hands datetimes back without a zone."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def database_url(settings: Settings, service: ServiceName) -> str:
    """The async SQLAlchemy URL of a service's database."""
    url = settings.database_url
    if not url:
        path = settings.data_dir / f"{service.value}.db"
        return f"sqlite+aiosqlite:///{path}"
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def database_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite") and ":///" in url:
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,
        connect_args={"connect_timeout": 3},
    )
    ping_when_idle(engine, PING_AFTER_IDLE)
    return engine


def ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Pre-ping, but only for connections that sat in the pool longer than `idle_seconds`:
    a dead one is replaced (and the pool invalidated) before any statement runs on it."""
    dialect: Dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # a new connection, or one in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.InvalidatePoolError() from error
            raise


# SQLite reports a missing table or a malformed statement as an OperationalError too: only
# these say the database file could not be used for now.
SQLITE_OUTAGES = ("database is locked", "unable to open database file", "disk i/o error")


def _connection_lost(error: BaseException) -> bool:
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if isinstance(error.orig, sqlite3.Error):
        message = str(error.orig).lower()
        return isinstance(error, exc.OperationalError) and any(s in message for s in SQLITE_OUTAGES)
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


def unavailable_database(error: BaseException) -> Unavailable | None:
    """What a caller should see when `error` says the database could not be reached or lost
    the connection (a restart, a network cut, a pool with no connection to give): UNAVAILABLE,
    which clients may retry, rather than INTERNAL, which reports a bug. None for any other
    error. The driver's text stays in the logs."""
    if not (_connection_lost(error) or isinstance(error, exc.TimeoutError)):
        return None
    unavailable = Unavailable("The database is unavailable. Try again in a few seconds.")
    unavailable.cause = "database"
    return unavailable


def database_dependency(engine: AsyncEngine) -> Dependency:
    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return Dependency("database", database_kind(str(engine.url)), probe)


def alembic_config(service: ServiceName, url: str) -> Config:
    migrations = Path(__file__).resolve().parent.parent / "services" / service.value / "migrations"
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    config.attributes["version_table"] = f"alembic_version_{service.value}"
    return config


def upgrade(service: ServiceName, url: str) -> None:
    """Applies the service's migrations up to head (blocking)."""
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(service, url), "head")


async def upgrade_async(service: ServiceName, url: str) -> None:
    await asyncio.to_thread(upgrade, service, url)
