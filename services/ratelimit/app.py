"""The rate limit service as the runtime runs it: rules, Redis counters, servicer wiring.

Redis (REDIS_URL) is optional: without it, or while it is down, counting happens in
memory, so readiness does not depend on it; GetStatus-style health still reports it.
"""

from __future__ import annotations

import grpc
from envoy_rls import rls_pb2, rls_pb2_grpc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runtime.config import ServiceName, Settings
from runtime.health import Dependency
from runtime.server import ServiceApp
from runtime.windows import WindowCounter
from services.ratelimit.rules import load_rules
from services.ratelimit.servicer import RateLimitServicer

RATE_LIMIT_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
# A rate limit decision sits in front of every request: never wait long for Redis.
REDIS_TIMEOUT = 0.25


class RatelimitApp(ServiceApp):
    name = ServiceName.RATELIMIT
    service_names = (RATE_LIMIT_SERVICE,)
    public_service_names = (RATE_LIMIT_SERVICE,)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rules = load_rules(settings.ratelimit_rules)
        self.redis: Redis | None = None
        if settings.redis_url:
            self.redis = Redis.from_url(
                settings.redis_url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        self.counter = WindowCounter(self.redis, settings.ratelimit_redis_retry)

    def dependencies(self) -> list[Dependency]:
        if self.redis is None:
            return [Dependency.disabled("redis", "redis")]
        return [Dependency("redis", "redis", self.redis.ping, required=False)]

    def register(self, server: grpc.aio.Server) -> None:
        servicer = RateLimitServicer(self.rules, self.counter, self.settings.ratelimit_key_prefix)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
