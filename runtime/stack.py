"""`make run`: the whole ContextCache stack in one foreground command.

Starts crypto, projects, ingest, query, the rate-limit service, the ingest worker (only
with REDIS_URL) and Envoy as child processes, waits until each is ready, and on Ctrl-C
or SIGTERM stops them in reverse order (SIGTERM, then SIGKILL after a grace period), so
nothing is left running. If any child dies, everything is stopped and the exit code says so.
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

from runtime.config import DEFAULT_PORTS, REPO_ROOT, ServiceName, Settings, load_settings
from runtime.gateway import envoy_command, render

STOP_GRACE = 15.0


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int | None = None  # gRPC port to probe for readiness
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def children(settings: Settings) -> list[Child]:
    python = sys.executable
    services = [
        Child(s.value, [python, "-m", f"services.{s.value}"], DEFAULT_PORTS[s])
        for s in (
            ServiceName.CRYPTO,
            ServiceName.PROJECTS,
            ServiceName.QUERY,
            ServiceName.INGEST,
            ServiceName.RATELIMIT,
        )
    ]
    if settings.redis_url:
        services.append(Child("worker", [python, "-m", "services.ingest.worker"]))
    services.append(Child("envoy", envoy_command(render(settings))))
    return services


def ready(port: int, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


class Stack:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.env.pop("PORT", None)  # each service listens on its own default port
        self.children = children(settings)

    def start(self, timeout: float = 120.0) -> None:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        for child in self.children:
            child.process = subprocess.Popen(  # noqa: S603 — our own interpreter and binaries
                child.argv, cwd=REPO_ROOT, env=self.env, start_new_session=True
            )
            if child.port is not None:
                self._wait_ready(child, timeout)

    def _wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready(child.port):  # type: ignore[arg-type]
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
            f"Try: .venv/bin/grpcurl -plaintext {gateway} list    — Ctrl-C stops everything.\n",
            flush=True,
        )
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
