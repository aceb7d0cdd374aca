"""A PostgreSQL cluster and a Redis server of the fault tests' own, on free loopback ports.

The fault matrix restarts them, so it never uses the shared servers on 5432 / 6379 (other
test runs depend on them). PostgreSQL refuses to run as root: the cluster is created and run
as the `postgres` system user, in a directory it owns. Redis keeps nothing on disk, so a
restart loses every queued job (the worst case: the ingest reaper must queue them again).
Both are stopped when their context ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from runtime.ports import free_port
from tests.gateway.conftest import redis_server

START_TIMEOUT = 60.0


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """Runs argv as the postgres user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PrivatePostgres:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        command = [
            str(postgres_bin() / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "-t",
            str(int(timeout)),
            *args,
        ]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=timeout + 10)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
            f"{self.directory} -c fsync=off -c max_connections=200"
        )
        self._pg_ctl("-o", options, "start")
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        """A restart as an operator does it: fast shutdown (every session cut), then start."""
        self.stop("fast")
        self.start()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="cc-faults-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    initdb = [str(postgres_bin() / "initdb"), "-D", str(directory / "data"), "-A", "trust"]
    subprocess.run(
        _as_postgres([*initdb, "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PrivatePostgres(directory, free_port())
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A redis-server of our own (tests/gateway/conftest.py starts it), on a fixed port so
    that clients find it again after a restart."""

    directory: Path
    port: int
    _running: contextlib.ExitStack | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        running = contextlib.ExitStack()
        running.enter_context(redis_server(self.directory, self.port))
        self._running = running

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    directory = Path(tempfile.mkdtemp(prefix="cc-faults-redis-"))
    server = PrivateRedis(directory, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
