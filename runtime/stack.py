"""`make run`: the whole ContextCache stack in one foreground command.

Starts crypto, projects, ingest, query, the rate-limit service, the ingest worker (only
with REDIS_URL) and Envoy as child processes, waits until each is ready, and on Ctrl-C
or SIGTERM stops them in reverse order (SIGTERM, then SIGKILL after a grace period), so
nothing is left running. If any child dies, everything is stopped and the exit code says so.

`--replicas N` (or STACK_REPLICAS; needs DATABASE_URL and REDIS_URL) runs N replicas each of
projects, ingest and crypto, each on its own port with the same workload certificate, and N
RQ workers; Envoy and the services balance their calls over the replicas. `Stack.kill` and
`Stack.restart` stop and start one child (the fault tests, tests/faults/).

Once `make install` has built it, the web console's file server (runtime/console.py) is one
more child, and its origin is added to the gateway's CORS origins.

Every process serves Prometheus metrics (METRICS_PORT, and Envoy's GATEWAY_STATS_PORT: the
defaults 9101-9107 when the services are on their default ports, free ports otherwise), and
a Prometheus configuration scraping them is written to DATA_DIR/prometheus.yml.
"""

from __future__ import annotations

import argparse
import contextlib
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
from runtime.config import (
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    REPO_ROOT,
    ServiceName,
    Settings,
    load_settings,
    replica_addresses,
)
from runtime.gateway import envoy_command, render
from runtime.monitoring import ENVOY_STATS_PATH, write_prometheus_config
from runtime.ports import free_port
from runtime.tls import Identity, workload_identity

STOP_GRACE = 15.0
# How long one child may take to become ready: ingest loads the embedding model before it
# listens, which takes minutes on a busy 2-core machine.
START_TIMEOUT = 300.0


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int | None = None  # gRPC port to probe for readiness
    http: bool = False  # probe `port` with GET /healthz instead
    metrics_port: int | None = None  # its METRICS_PORT
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def port_of(address: str) -> int:
    """The port of an address (of its first replica)."""
    return int(replica_addresses(address)[0].rpartition(":")[2])


# The services that can run as several replicas: stateless but for the shared PostgreSQL
# and Redis (query owns the embedded index, the rate-limit service its in-memory fallback).
REPLICATED = (ServiceName.PROJECTS, ServiceName.INGEST, ServiceName.CRYPTO)


def replicated(settings: Settings, replicas: int) -> Settings:
    """The settings of a stack with `replicas` of each REPLICATED service: the first keeps
    its *_ADDR port, the others take free ports, and every *_ADDR lists them all (Envoy and
    the services' own channels balance over them)."""
    if replicas == 1:
        return settings
    if not (settings.database_url and settings.redis_url):
        raise ValueError("replicas share PostgreSQL and Redis: set DATABASE_URL and REDIS_URL")
    update = {}
    for service in REPLICATED:
        first = replica_addresses(getattr(settings, f"{service.value}_addr"))[0]
        more = [f"127.0.0.1:{free_port()}" for _ in range(replicas - 1)]
        update[f"{service.value}_addr"] = ",".join([first, *more])
    return settings.model_copy(update=update)


def children(settings: Settings, workers: int = 1) -> list[Child]:
    """Each service listens on the port of its *_ADDR setting (the defaults: 50051…); one
    child per replica listed there (named `ingest`, `ingest-2`, …), and `workers` RQ workers
    (with REDIS_URL)."""
    python = sys.executable
    addresses = {
        ServiceName.CRYPTO: settings.crypto_addr,
        ServiceName.PROJECTS: settings.projects_addr,
        ServiceName.QUERY: settings.query_addr,
        ServiceName.INGEST: settings.ingest_addr,
        ServiceName.RATELIMIT: settings.ratelimit_addr,
    }
    # The default metrics ports go with the default service ports; a stack on other ports
    # (tests, the demo, benchmarks) or with replicas may run beside one on the defaults.
    defaults = workers == 1 and all(
        replica_addresses(a) == [f"127.0.0.1:{DEFAULT_PORTS[s]}"] for s, a in addresses.items()
    )

    def metrics_port(name: str) -> int:
        return DEFAULT_METRICS_PORTS[name] if defaults else free_port()

    services = [
        Child(
            s.value if n == 1 else f"{s.value}-{n}",
            [python, "-m", f"services.{s.value}"],
            port_of(replica),
            metrics_port=metrics_port(s.value),
        )
        for s, address in addresses.items()
        for n, replica in enumerate(replica_addresses(address), start=1)
    ]
    if settings.redis_url:
        services.extend(
            Child(
                "worker" if n == 1 else f"worker-{n}",
                [python, "-m", "services.ingest.worker"],
                metrics_port=metrics_port("worker"),
            )
            for n in range(1, workers + 1)
        )
    if console.is_built(settings):
        services.append(Child("console", console.ARGV, settings.console_port, http=True))
        settings = console.with_own_origins(settings)
    # Envoy's stats listener (GET /stats/prometheus); the admin port stays on 127.0.0.1.
    stats_port = settings.gateway_stats_port or metrics_port("envoy")
    settings = settings.model_copy(update={"gateway_stats_port": stats_port})
    services.append(Child("envoy", envoy_command(render(settings)), metrics_port=stats_port))
    return services


def _session_members(session: int) -> list[int]:
    """The processes of a session, from Linux's /proc (elsewhere: none)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) may hold spaces: fields after its ")" are fixed.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[3]) == session:
            members.append(int(stat.parent.name))
    return members


def _kill_session(session: int) -> None:
    for pid in _session_members(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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
        self,
        settings: Settings,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        replicas: int = 1,
    ) -> None:
        """`log`: a file for the children's output (default: this terminal). `replicas`:
        how many of each of projects, ingest and crypto, and of RQ workers."""
        self.settings = replicated(settings, replicas)
        self.env = dict(os.environ if env is None else env)
        for service in REPLICATED:  # every child reaches every replica
            self.env[f"{service.value.upper()}_ADDR"] = getattr(
                self.settings, f"{service.value}_addr"
            )
        self.children = children(self.settings, workers=replicas)
        self.log = log

    @property
    def metrics_targets(self) -> dict[str, str]:
        """Where each process serves its metrics (host:port; Envoy: its stats listener)."""
        return {c.name: f"127.0.0.1:{c.metrics_port}" for c in self.children if c.metrics_port}

    @property
    def prometheus_config(self) -> Path:
        return Path(self.settings.data_dir) / "prometheus.yml"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        # Outside production this creates the development CA and every workload's
        # certificate before any child starts (each child would otherwise make them itself).
        self.operator = workload_identity(self.settings, "operator")
        write_prometheus_config(self.prometheus_config, self.metrics_targets)
        for child in self.children:
            self._spawn(child)
            if child.port is not None:
                self._wait_ready(child, timeout)
        self.wait_gateway(timeout)

    def _spawn(self, child: Child) -> None:
        env = dict(self.env)
        env.pop("PORT", None)
        if child.port is not None:
            env["PORT"] = str(child.port)
        if child.metrics_port is not None:
            env["METRICS_PORT"] = str(child.metrics_port)
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

    def child(self, name: str) -> Child:
        found = next((c for c in self.children if c.name == name), None)
        if found is None:
            raise KeyError(f"no child named {name!r}: {[c.name for c in self.children]}")
        return found

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = STOP_GRACE) -> None:
        """Stops one child as its container would stop. SIGKILL: a crash — every process of
        the child's session dies at once, RQ's work horses included (they leave the child's
        process group), nothing is cleaned up. SIGTERM: a graceful stop of the child, then
        SIGKILL for all that is left after `timeout`."""
        process = self.child(name).process
        if process is None:
            return
        if sig == signal.SIGKILL:
            _kill_session(process.pid)
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _kill_session(process.pid)  # what it left behind (its leader is gone: no new members)

    def restart(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Starts one child again (stopping it first if it runs) on the same ports, and
        waits until it is ready (Envoy: until it routes to every service again)."""
        child = self.child(name)
        self.kill(name, signal.SIGTERM)
        self._spawn(child)
        if child.port is not None:
            self._wait_ready(child, timeout)
        if child.name == "envoy":
            self.wait_gateway(timeout)

    def wait_gateway(self, timeout: float) -> None:
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


def replicas_from(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.stack", description=__doc__)
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("STACK_REPLICAS", "1")),
        help="replicas of projects, ingest and crypto, and RQ workers (env STACK_REPLICAS;"
        " more than 1 needs DATABASE_URL and REDIS_URL)",
    )
    replicas = parser.parse_args(argv).replicas
    if not 1 <= replicas <= 8:
        parser.error("--replicas must be between 1 and 8")
    return replicas


def main(argv: list[str] | None = None) -> int:
    replicas = replicas_from(argv)
    settings = load_settings()
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack = Stack(settings, replicas=replicas)
    except ValueError as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 2
    try:
        stack.start()
        settings = stack.settings
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
        print("Prometheus metrics:", flush=True)
        for name, target in stack.metrics_targets.items():
            path = ENVOY_STATS_PATH if name == "envoy" else "/metrics"
            print(f"  {name:<10} http://{target}{path}", flush=True)
        config = stack.prometheus_config
        print(
            f"A Prometheus configuration scraping them, with the alert rules: {config}\n"
            f"  e.g. prometheus --config.file={config}\n",
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
