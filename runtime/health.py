"""Readiness that follows dependencies, over the standard grpc.health.v1 service.

`liveness` stays SERVING while the process runs. The overall name ("") and each
ContextCache service name turn NOT_SERVING while a required dependency check fails and
back to SERVING by themselves when it passes again. GetStatus reports each check's result
and latency — never the error text of a dependency. Each refresh also sets the service's
readiness and dependency gauges (runtime/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2

from contextcache.v1 import common_pb2
from runtime import VERSION, metrics
from runtime.background import Periodic

log = logging.getLogger(__name__)
LIVENESS = "liveness"
CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Dependency:
    """Something a service needs; `probe` raises (or times out) when it is unusable."""

    name: str
    type: str
    probe: Callable[[], Awaitable[object]] | None
    required: bool = True

    @classmethod
    def disabled(cls, name: str, type_: str) -> Dependency:
        return cls(name, type_, None, required=False)


@dataclass(frozen=True)
class CheckResult:
    dependency: Dependency
    ok: bool
    latency: float

    def to_proto(self) -> common_pb2.DependencyCheck:
        if self.dependency.probe is None:
            result = common_pb2.DependencyCheck.RESULT_DISABLED
        elif self.ok:
            result = common_pb2.DependencyCheck.RESULT_OK
        else:
            result = common_pb2.DependencyCheck.RESULT_FAILING
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(int(self.latency * 1e9))
        return common_pb2.DependencyCheck(
            name=self.dependency.name,
            type=self.dependency.type,
            result=result,
            latency=latency,
        )


async def run_check(dependency: Dependency) -> CheckResult:
    if dependency.probe is None:
        return CheckResult(dependency, True, 0.0)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(dependency.probe(), CHECK_TIMEOUT)
        ok = True
    except Exception as error:  # noqa: BLE001 — a failed probe is a result, not a crash
        log.warning("dependency %s check failed: %s", dependency.name, type(error).__name__)
        ok = False
    return CheckResult(dependency, ok, time.perf_counter() - started)


class Readiness:
    """Runs the dependency checks and publishes the result on the health service."""

    def __init__(
        self,
        service_names: Sequence[str],
        dependencies: Sequence[Dependency],
        environment: str = "development",
        metrics_name: str | None = None,
    ) -> None:
        self.service_names = list(service_names)
        self.metrics_name = metrics_name  # the `service` label of its gauges
        self.dependencies = list(dependencies)
        self.environment = environment
        self.servicer = health.aio.HealthServicer()
        self._refreshes: Periodic | None = None
        self._ready: bool | None = None

    async def check(self) -> list[CheckResult]:
        return list(await asyncio.gather(*(run_check(d) for d in self.dependencies)))

    async def refresh(self) -> bool:
        results = await self.check()
        ready = all(r.ok for r in results if r.dependency.required)
        if ready != self._ready:
            log.info("readiness: %s", "SERVING" if ready else "NOT_SERVING")
        self._ready = ready
        self._export(results, ready)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        for name in ["", *self.service_names]:
            await self.servicer.set(name, status)
        return ready

    def _export(self, results: list[CheckResult], ready: bool) -> None:
        if self.metrics_name is None:
            return
        metrics.READY.labels(self.metrics_name).set(1 if ready else 0)
        for result in results:
            if result.dependency.probe is None:
                continue
            name = result.dependency.name
            metrics.DEPENDENCY_UP.labels(self.metrics_name, name, result.dependency.type).set(
                1 if result.ok else 0
            )
            metrics.DEPENDENCY_CHECK_SECONDS.labels(self.metrics_name, name).set(result.latency)

    async def start(self, interval: float) -> None:
        await self.refresh()
        self._refreshes = Periodic("readiness", self.refresh, interval)
        self._refreshes.start()

    async def stop(self) -> None:
        if self._refreshes is not None:
            await self._refreshes.stop()
        await self.servicer.enter_graceful_shutdown()

    async def service_status(self, service: str) -> common_pb2.ServiceStatus:
        results = await self.check()
        healthy = all(r.ok for r in results)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return common_pb2.ServiceStatus(
            service=service,
            version=VERSION,
            time=now,
            environment=self.environment,
            state=common_pb2.ServiceStatus.STATE_HEALTHY
            if healthy
            else common_pb2.ServiceStatus.STATE_DEGRADED,
            checks=[r.to_proto() for r in results],
        )
