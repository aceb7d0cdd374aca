"""RateLimitService.ShouldRateLimit: match each descriptor to a rule, count, decide.

Envoy sends one request per HTTP request with every descriptor its route produced; the
answer has one status per descriptor (limit, remaining, time until reset — Envoy turns the
tightest into x-ratelimit-* headers) and OVER_LIMIT overall if any descriptor is over,
with headers saying when to retry: once every window that is over has reset. Never logs
descriptor values (client addresses, API keys).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from envoy_rls import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

from runtime import metrics
from runtime.errors import InvalidArgument
from runtime.windows import Window, WindowCounter, window_for
from services.ratelimit.refusal import retry_headers
from services.ratelimit.rules import Limit, RateLimitRules

Response = rls_pb2.RateLimitResponse
UNITS = {
    "second": Response.RateLimit.SECOND,
    "minute": Response.RateLimit.MINUTE,
    "hour": Response.RateLimit.HOUR,
    "day": Response.RateLimit.DAY,
}


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(
        self,
        rules: RateLimitRules,
        counter: WindowCounter,
        key_prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.counter = counter
        self.key_prefix = key_prefix
        # The wall clock places the windows (every replica agrees on them); a test moves it.
        self.clock = clock

    async def ShouldRateLimit(self, request, context):
        if request.domain != self.rules.domain:
            raise InvalidArgument(f"Unknown rate limit domain {request.domain!r}")
        now = self.clock()
        hits = request.hits_addend or 1
        limits: list[Limit | None] = []
        counted: list[tuple[int, Limit, Window]] = []
        for index, descriptor in enumerate(request.descriptors):
            entries = [(entry.key, entry.value) for entry in descriptor.entries]
            limit = self.rules.find(entries) if entries else None
            limits.append(limit)
            if limit is not None and not limit.unlimited:
                window = window_for(self.key_prefix, request.domain, entries, limit.seconds, now)
                counted.append((index, limit, window))
        counts = await self.counter.increment([window for _, _, window in counted], hits)
        statuses = [Response.DescriptorStatus(code=Response.OK) for _ in limits]
        for (index, limit, window), count in zip(counted, counts, strict=True):
            statuses[index] = descriptor_status(limit, window, count, now)
        over = any(status.code == Response.OVER_LIMIT for status in statuses)
        in_memory = self.counter.in_memory
        # A fallback only where Redis is configured (without it, memory is the design).
        fallback = in_memory and self.counter.redis is not None
        metrics.RATELIMIT_MEMORY_FALLBACK.set(1 if fallback else 0)
        metrics.RATELIMIT_DECISIONS.labels(
            "limited" if over else "allowed", "memory" if in_memory else "redis"
        ).inc()
        if not over:
            return Response(overall_code=Response.OK, statuses=statuses)
        retry_in = max(
            status.duration_until_reset.seconds
            for status in statuses
            if status.code == Response.OVER_LIMIT
        )
        return Response(
            overall_code=Response.OVER_LIMIT,
            statuses=statuses,
            response_headers_to_add=retry_headers(retry_in),
        )


def descriptor_status(
    limit: Limit, window: Window, count: int, now: float
) -> Response.DescriptorStatus:
    reset = duration_pb2.Duration()
    # Whole seconds, rounded up: a client that waits this long finds a fresh window.
    reset.FromSeconds(max(1, int(window.ends_at - now + 0.999)))
    over = count > limit.requests_per_unit and not limit.shadow_mode
    return Response.DescriptorStatus(
        code=Response.OVER_LIMIT if over else Response.OK,
        current_limit=Response.RateLimit(
            name=limit.name, requests_per_unit=limit.requests_per_unit, unit=UNITS[limit.unit]
        ),
        limit_remaining=max(0, limit.requests_per_unit - count),
        duration_until_reset=reset,
    )
