"""`make run`: the whole ContextCache stack in one foreground command.

Starts crypto, projects, ingest, query, the rate-limit service, the ingest worker (only
with REDIS_URL) and Envoy as child processes, waits until each is ready, and on Ctrl-C
or SIGTERM stops them in reverse order (SIGTERM, then SIGKILL after a grace period), so
nothing is left running. If any child dies, everything is stopped and the exit code says so.

Once `make install` has built it, the web console's file server (runtime/console.py) is one
more child, and its origin is added to the gateway's CORS origins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import console
from runtime.config import REPO_ROOT, ServiceName, Settings, load_settings
from runtime.gateway import envoy_command, render
from runtime.tls import Identity, workload_identity

STOP_GRACE = 15.0


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int | None = None  # gRPC port to probe for readiness
    http: bool = False  # probe `port` with GET /healthz instead
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def children(settings: Settings) -> list[Child]:
    """Each service listens on the port of its *_ADDR setting (the defaults: 50051…)."""
    python = sys.executable
    addresses = {
        ServiceName.CRYPTO: settings.crypto_addr,
        ServiceName.PROJECTS: settings.projects_addr,
        ServiceName.QUERY: settings.query_addr,
        ServiceName.INGEST: settings.ingest_addr,
        ServiceName.RATELIMIT: settings.ratelimit_addr,
    }
    services = [
        Child(s.value, [python, "-m", f"services.{s.value}"], port_of(address))
        for s, address in addresses.items()
    ]
    if settings.redis_url:
        services.append(Child("worker", [python, "-m", "services.ingest.worker"]))
    if console.is_built(settings):
        services.append(Child("console", console.ARGV, settings.console_port, http=True))
        settings = console.with_own_origins(settings)
    services.append(Child("envoy", envoy_command(render(settings))))
    return services


def ready(port: int, identity: Identity, timeout: float = 1.0) -> bool:
    """Whether the service on `port` answers its liveness check (over mutual TLS, as the
    operator)."""
    with grpc.secure_channel(f"127.0.0.1:{port}", identity.channel_credentials()) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


class Stack:
    def __init__(
        self, settings: Settings, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        """`log`: a file for the children's output (default: this terminal)."""
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.children = children(settings)
        self.log = log

    def start(self, timeout: float = 120.0) -> None:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        # Outside production this creates the development CA and every workload's
        # certificate before any child starts (each child would otherwise make them itself).
        self.operator = workload_identity(self.settings, "operator")
        for child in self.children:
            env = dict(self.env)
            env.pop("PORT", None)
            if child.port is not None:
                env["PORT"] = str(child.port)
            output = self.log.open("ab") if self.log else None
            child.process = subprocess.Popen(  # noqa: S603 — our own interpreter and binaries
                child.argv,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
            if output:
                output.close()  # the child holds its own descriptor
            if child.port is not None:
                self._wait_ready(child, timeout)
        self._wait_gateway(timeout)

    def _wait_gateway(self, timeout: float) -> None:
        """Until Envoy routes to every service (its first upstream health checks passed)."""
        from contextcache.v1 import (
            crypto_pb2,
            crypto_pb2_grpc,
            ingest_pb2,
            ingest_pb2_grpc,
            projects_pb2,
            projects_pb2_grpc,
            query_pb2,
            query_pb2_grpc,
        )

        probes = [
            (projects_pb2_grpc.ProjectServiceStub, projects_pb2.ProjectServiceGetStatusRequest),
            (ingest_pb2_grpc.IngestServiceStub, ingest_pb2.IngestServiceGetStatusRequest),
            (query_pb2_grpc.QueryServiceStub, query_pb2.QueryServiceGetStatusRequest),
            (crypto_pb2_grpc.CryptoServiceStub, crypto_pb2.CryptoServiceGetStatusRequest),
        ]
        deadline = time.monotonic() + timeout
        address = f"127.0.0.1:{self.settings.gateway_port}"
        with grpc.insecure_channel(address) as channel:
            for stub, request in probes:
                while True:
                    try:
                        stub(channel).GetStatus(request(), timeout=2)
                        break
                    except grpc.RpcError:
                        if self.failed() is not None or time.monotonic() > deadline:
                            raise RuntimeError("the gateway does not reach every service") from None
                        time.sleep(0.3)

    def _wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        port: int = child.port  # type: ignore[assignment]
        while not (console.serving(port) if child.http else ready(port, self.operator)):
            if child.process is None or child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def failed(self) -> Child | None:
        return next(
            (c for c in self.children if c.process is not None and c.process.poll() is not None),
            None,
        )

    def stop(self) -> None:
        running = [c for c in reversed(self.children) if c.process and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_GRACE
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
                child.process.wait()  # type: ignore[union-attr]

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    settings = load_settings()
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack = Stack(settings)
    try:
        stack.start()
        gateway = f"{settings.gateway_host}:{settings.gateway_port}"
        print(
            f"\nContextCache is running: gRPC and gRPC-Web on {gateway} (Envoy; admin "
            f"127.0.0.1:{settings.gateway_admin_port}).\n"
            f"Try: .venv/bin/grpcurl -plaintext {gateway} list    — Ctrl-C stops everything.\n"
            f"JSON over HTTP on the same port: curl http://{gateway}/v1/projects "
            f"(every route: docs/openapi.yaml).\n"
            f"Service ports speak mutual TLS; certificates (development CA) are in "
            f"{settings.tls_root}/<workload>/.\n",
            flush=True,
        )
        if console.is_built(settings):
            print(f"Web console: {console.url(settings)}\n", flush=True)
        else:
            print("Web console: not built (run `make install`)\n", flush=True)
        while not stopping:
            if (dead := stack.failed()) is not None:
                print(f"{dead.name} exited unexpectedly; stopping the stack", file=sys.stderr)
                return 1
            time.sleep(0.3)
        return 0
    except RuntimeError as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
