"""grpc.aio server bootstrap shared by every service.

A service supplies a `ServiceApp` (its servicers, dependencies and start/stop hooks); this
module adds the interceptors, health, reflection, keepalive and message-size options, and
runs it until SIGTERM/SIGINT, then drains in-flight calls and stops cleanly.

The service port speaks mutual TLS only (runtime/tls.py): a caller without a certificate
from the deployment's CA is refused in the handshake, and runtime/callers.py's table says
which identity may call which method. Kubernetes' gRPC probes cannot present a
certificate, so HEALTH_PORT, when set, adds a plaintext listener serving the health
service and nothing else. METRICS_PORT, when set, serves Prometheus metrics in plaintext
(runtime/metrics.py); `python -m services.<name>` sets it to the service's default.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from runtime import metrics
from runtime.config import ServiceName, Settings, load_settings
from runtime.health import Dependency, Readiness
from runtime.interceptors import RpcInterceptor
from runtime.logs import configure_logging
from runtime.protos import SERVICE_NAMES
from runtime.telemetry import (
    configure_sentry,
    configure_tracing,
    monitoring_dependency,
    traced,
)
from runtime.tls import Identity, TlsConfigError, workload_identity

log = logging.getLogger(__name__)

MB = 1024 * 1024


class ReflectionPool:
    """The default descriptor pool, plus method lookups (`grpcurl describe Svc.Method`):
    the upb pool's FindFileContainingSymbol does not know methods."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str):
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str):
        return getattr(self._pool, name)


class ListenError(RuntimeError):
    """The server could not take its address (another process holds the port), or has no
    certificate to serve it with."""


class ServiceApp(abc.ABC):
    """What a service plugs into the runtime. Subclasses set the fields and hooks."""

    name: ServiceName
    # Full names of the gRPC services this app serves (health names).
    service_names: Sequence[str] = ()
    # Of those, the ones reflection may advertise besides the ContextCache public API.
    public_service_names: Sequence[str] = ()
    # Largest request this service accepts (ingest raises it for 50 MB uploads).
    max_receive_bytes: int = 4 * MB

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.readiness = Readiness(
            self.service_names, [], settings.environment, metrics_name=self.name.value
        )
        self._identity: Identity | None = None

    @property
    def identity_name(self) -> str:
        """The workload name in this app's certificate (the worker overrides it)."""
        return self.name.value

    @property
    def identity(self) -> Identity:
        """This workload's certificate: serves its port and authenticates its calls."""
        if self._identity is None:
            self._identity = workload_identity(self.settings, self.identity_name)
        return self._identity

    def dependencies(self) -> list[Dependency]:
        return []

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> None:
        """Adds the service's servicers to the server."""

    async def start(self) -> None:
        """Opens databases, channels, indexes; runs migrations in the embedded default."""

    async def stop(self) -> None:
        """Closes what start() opened."""


def server_options(max_receive_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 60_000),
        ("grpc.max_connection_idle_ms", 10 * 60_000),
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", 64 * MB),
        # A second server on a taken port must fail to start, not share the port with the
        # first and receive half of its calls.
        ("grpc.so_reuseport", 0),
    ]


class Server:
    """One service's gRPC server with the shared runtime around it."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.settings = app.settings
        self.port = 0
        self.health_port = 0
        self.server = grpc.aio.server(
            interceptors=[aio_server_interceptor(filter_=traced), RpcInterceptor()],
            options=server_options(app.max_receive_bytes),
            # Beyond it gRPC answers RESOURCE_EXHAUSTED at once: load sheds instead of
            # queueing without bound (Envoy's retry policy and clients back off).
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        self.probe_server: grpc.aio.Server | None = None
        self.metrics_server: object | None = None

    def _listen(self, server: grpc.aio.Server, address: str, credentials) -> int:  # type: ignore[no-untyped-def]
        try:
            if credentials is None:
                return server.add_insecure_port(address)
            return server.add_secure_port(address, credentials)
        except RuntimeError:
            return 0

    async def start(
        self, host: str | None = None, port: int | None = None, health_port: int | None = None
    ) -> int:
        try:
            credentials = self.app.identity.server_credentials()
        except TlsConfigError as error:
            raise ListenError(f"{self.app.name.value}: {error}") from None
        await self.app.start()
        readiness = self.app.readiness
        readiness.dependencies = [*self.app.dependencies(), monitoring_dependency()]
        self.app.register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(readiness.servicer, self.server)
        reflection.enable_server_reflection(
            (
                # The public API only: internal services are not advertised (grpcurl reaches
                # them with -proto files and a workload certificate; see examples/README.md).
                *dict.fromkeys((*SERVICE_NAMES, *self.app.public_service_names)),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
            pool=ReflectionPool(),
        )
        host = host or self.settings.listen_host
        port = self.settings.listen_port(self.app.name) if port is None else port
        self.port = self._listen(self.server, f"{host}:{port}", credentials)
        health_port = self.settings.health_port if health_port is None else health_port
        if self.port and health_port is not None:
            # Health only, in plaintext, for the kubelet's gRPC probes.
            self.probe_server = grpc.aio.server(options=server_options(64 * 1024))
            health_pb2_grpc.add_HealthServicer_to_server(readiness.servicer, self.probe_server)
            self.health_port = self._listen(self.probe_server, f"{host}:{health_port}", None)
            if not self.health_port:
                port = health_port
                self.port = 0
        if not self.port:
            await self.app.stop()
            raise ListenError(
                f"{self.app.name.value} cannot listen on {host}:{port}: the address is in use "
                "or not available here (set PORT, HEALTH_PORT or LISTEN_HOST)"
            )
        await self.server.start()
        if self.probe_server is not None:
            await self.probe_server.start()
        await readiness.start(self.settings.health_check_interval)
        if self.settings.metrics_port:
            self.metrics_server = metrics.serve(self.settings.metrics_port, host)
        log.info("%s listening on %s:%d (mutual TLS)", self.app.name.value, host, self.port)
        if self.health_port:
            log.info(
                "%s health probes on %s:%d (plaintext)", self.app.name.value, host, self.health_port
            )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        await self.app.readiness.stop()
        grace = self.settings.shutdown_grace if grace is None else grace
        if self.probe_server is not None:
            await self.probe_server.stop(0)
        metrics.stop(self.metrics_server)
        await self.server.stop(grace)
        await self.app.stop()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def serve(app: ServiceApp) -> None:
    server = Server(app)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    await stopping.wait()
    log.info("%s shutting down", app.name.value)
    await server.stop()


def run(service: ServiceName, factory: Callable[[Settings], ServiceApp]) -> None:
    """The `python -m services.<name>` entry point."""
    settings = load_settings()
    settings = settings.model_copy(update={"metrics_port": settings.metrics_port_of(service)})
    configure_logging(settings.log_format, settings.log_level, service.value)
    configure_tracing(settings, service.value)
    if configure_sentry(settings, service.value):
        log.info("Sentry error reporting enabled")
    try:
        asyncio.run(serve(factory(settings)))
    except ListenError as error:
        log.error("%s", error)
        raise SystemExit(1) from None
