"""Shared test harness: settings, real PostgreSQL/Redis, in-process servers on free ports.

Servers are the real services (`runtime.server.Server` around each app) listening on
127.0.0.1 with mutual TLS; tests talk to them through generated stubs over real sockets,
as the `operator` workload (public API) unless a test presents another identity.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import psycopg
import pytest
import redis

from contextcache.v1 import (
    crypto_pb2_grpc,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2_grpc,
)
from runtime.background import cancel_and_wait
from runtime.config import Settings
from runtime.ports import free_port
from runtime.server import Server, ServiceApp
from runtime.tls import Identity, workload_identity

PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def fresh_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"cc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> str:
    if not postgres_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (start it: see README)")
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Runs a test on the embedded default (SQLite) and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    if not postgres_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (start it: see README)")
    with fresh_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS} (start it: see README)")
    return REDIS


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "environment": "test",
            "data_dir": tmp_path / "var",
            "health_check_interval": 0.3,
            "shutdown_grace": 0.5,
            "url_fetch_allow_private": True,
            # Fixed for the test, so a restarted crypto service accepts earlier tokens.
            "token_sealing_key": base64.b64encode(os.urandom(32)).decode(),
            "ingest_reaper_interval": 0.5,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@contextlib.asynccontextmanager
async def running(app: ServiceApp, port: int = 0) -> AsyncIterator[Server]:
    server = Server(app)
    await server.start(host="127.0.0.1", port=port)
    try:
        yield server
    finally:
        await server.stop(grace=0.2)


def identity_of(settings: Settings, name: str = "operator") -> Identity:
    """A workload certificate of the test deployment's development CA."""
    return workload_identity(settings, name)


def secure_channel(port: int, identity: Identity) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", identity.channel_credentials())


@contextlib.asynccontextmanager
async def channel_to(
    port: int, settings: Settings, identity: str = "operator"
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a test server, authenticated as `identity` (the operator by default)."""
    channel = secure_channel(port, identity_of(settings, identity))
    try:
        yield channel
    finally:
        await channel.close()


class TcpProxy:
    """A loopback TCP proxy a test can cut and restore (a dependency "going away")."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for connection in list(self._connections):
            await cancel_and_wait(connection)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        self._connections.add(connection)
        connection.add_done_callback(self._connections.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def eventually(check: Callable[[], object], timeout: float = 10.0, every: float = 0.1):
    """Polls an async or sync check until it returns a truthy value (bounded in time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


CHEAP_KDF = {"argon2_memory_kib": 8192, "argon2_time_cost": 1, "argon2_parallelism": 1}


@dataclasses.dataclass
class Stack:
    """The four ContextCache services running in this process, wired to each other."""

    settings: Settings
    ports: dict[str, int]
    servers: dict[str, Server]
    channels: dict[str, grpc.aio.Channel]

    @property
    def projects(self) -> projects_pb2_grpc.ProjectServiceStub:
        return projects_pb2_grpc.ProjectServiceStub(self.channels["projects"])

    @property
    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channels["ingest"])

    @property
    def query(self) -> query_pb2_grpc.QueryServiceStub:
        return query_pb2_grpc.QueryServiceStub(self.channels["query"])

    @property
    def crypto(self) -> crypto_pb2_grpc.CryptoServiceStub:
        return crypto_pb2_grpc.CryptoServiceStub(self.channels["crypto"])

    def app(self, name: str):  # type: ignore[no-untyped-def]
        return self.servers[name].app

    def channel_as(self, service: str, identity: str) -> grpc.aio.Channel:
        """A channel to `service` authenticated as the workload `identity` (for internal
        RPCs, as the service that calls them in production)."""
        key = f"{service} as {identity}"
        if key not in self.channels:
            self.channels[key] = secure_channel(
                self.ports[service], identity_of(self.settings, identity)
            )
        return self.channels[key]

    async def stop_service(self, name: str) -> None:
        await self.servers.pop(name).stop(grace=0.2)

    async def start_service(self, name: str) -> None:
        self.servers[name] = await _start(name, self.settings, self.ports[name])


async def _start(name: str, settings: Settings, port: int) -> Server:
    from services.crypto.app import CryptoApp
    from services.crypto.config import CryptoConfig
    from services.ingest.app import IngestApp
    from services.projects.app import ProjectsApp
    from services.query.app import QueryApp

    if name == "crypto":
        app = CryptoApp(settings, CryptoConfig(**CHEAP_KDF))
    else:
        app = {"projects": ProjectsApp, "ingest": IngestApp, "query": QueryApp}[name](settings)
    server = Server(app)
    await server.start(host="127.0.0.1", port=port)
    return server


@contextlib.asynccontextmanager
async def running_stack(settings_factory: Callable[..., Settings], **overrides: object):
    names = ("crypto", "query", "ingest", "projects")
    ports = {name: free_port() for name in names}
    settings = settings_factory(
        **{f"{name}_addr": f"127.0.0.1:{port}" for name, port in ports.items()}, **overrides
    )
    stack = Stack(settings, ports, {}, {})
    try:
        for name in names:
            await stack.start_service(name)
            stack.channels[name] = secure_channel(ports[name], identity_of(settings))
        yield stack
    finally:
        for channel in stack.channels.values():
            await channel.close()
        for name in reversed(names):
            if name in stack.servers:
                await stack.stop_service(name)


@pytest.fixture
async def stack(make_settings):
    """The whole service stack on the embedded default (SQLite, embedded index, no Redis)."""
    async with running_stack(make_settings) as running_services:
        yield running_services


PASSPHRASE = "correct horse battery staple 42"


async def new_project(stack: Stack, name: str = "research", passphrase: str = PASSPHRASE):
    """Creates and unlocks a project; returns (project, metadata carrying its unlock token)."""
    created = await stack.projects.CreateProject(
        projects_pb2.CreateProjectRequest(name=name, passphrase=passphrase)
    )
    unlocked = await stack.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=created.project.id, passphrase=passphrase)
    )
    return created.project, (("x-unlock-token", unlocked.unlock_token),)
