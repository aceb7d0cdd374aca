"""The rate-limit windows themselves, over the ratelimit service's gRPC API, with the shipped
rules (envoy/ratelimit.yaml) and a clock the test moves: the 1000/hour window admits 1000
calls, refuses the next ones saying when it resets, and admits calls again once the hour has
moved on. Counted in the shared Redis (a key prefix of this test's own) and in memory.

The requests are the descriptors Envoy's routes produce for a client without an API key
(tests/gateway/test_ratelimit.py checks that Envoy sends them).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy_rls import ratelimit_pb2, rls_pb2, rls_pb2_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from redis.asyncio import Redis

from runtime.config import REPO_ROOT
from runtime.ports import free_port
from runtime.windows import WindowCounter
from services.ratelimit.refusal import RATE_LIMITED_MESSAGE
from services.ratelimit.rules import load_rules
from services.ratelimit.servicer import RateLimitServicer

RULES = load_rules(REPO_ROOT / "envoy" / "ratelimit.yaml")
PER_HOUR = 1000
PER_MINUTE = 60
Response = rls_pb2.RateLimitResponse
# An hour boundary, plus some seconds into the hour.
START = 1_800_000_000 - 1_800_000_000 % 3600 + 120


class Clock:
    """The ratelimit service's time, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def descriptor(*entries: tuple[str, str]) -> ratelimit_pb2.RateLimitDescriptor:
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )


def anonymous_call(address: str) -> rls_pb2.RateLimitRequest:
    """What Envoy asks for one call of an ordinary public RPC from `address`."""
    return rls_pb2.RateLimitRequest(
        domain=RULES.domain,
        descriptors=[
            descriptor(("window", "minute"), ("remote_address", address)),
            descriptor(("window", "hour"), ("remote_address", address)),
            descriptor(("address_ceiling", "all"), ("remote_address", address)),
        ],
    )


def retry_after(response: rls_pb2.RateLimitResponse) -> int:
    """The seconds the refusal's headers give, checked against its RetryInfo detail."""
    headers = {header.key: header.value for header in response.response_headers_to_add}
    raw = headers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert status.message == RATE_LIMITED_MESSAGE
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert headers["retry-after"] == str(info.retry_delay.seconds)
    return info.retry_delay.seconds


@pytest.fixture(params=["redis", "memory"])
async def ratelimit(request) -> AsyncIterator[tuple[rls_pb2_grpc.RateLimitServiceStub, Clock]]:
    redis = Redis.from_url("redis://127.0.0.1:6379/0") if request.param == "redis" else None
    clock = Clock(START)
    prefix = f"test-windows-{uuid.uuid4().hex[:12]}"
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitServicer(RULES, WindowCounter(redis, 5), prefix, clock), server
    )
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield rls_pb2_grpc.RateLimitServiceStub(channel), clock
    finally:
        await channel.close()
        await server.stop(0)
        if redis is not None:
            keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()


@pytest.mark.redis
async def test_the_hour_window_admits_1000_refuses_then_admits_after_the_hour(ratelimit):
    stub, clock = ratelimit
    request = anonymous_call(f"10.9.{uuid.uuid4().int % 250}.1")
    hour_status = 1  # the (window, hour) descriptor's place in the request

    # 1000 calls spread over the hour, never more than 50 in one minute.
    for call in range(PER_HOUR):
        clock.now = START + (call // 50) * 61
        answer = await stub.ShouldRateLimit(request)
        assert answer.overall_code == Response.OK, call
        assert answer.statuses[hour_status].limit_remaining == PER_HOUR - 1 - call
        assert not answer.response_headers_to_add
    assert clock.now < START + 3600 - 120, "still within the first hour"

    # A fresh minute, so only the hour window can refuse.
    clock.now += 61
    refused = await stub.ShouldRateLimit(request)
    assert refused.overall_code == Response.OVER_LIMIT
    assert refused.statuses[0].code == Response.OK  # the minute window
    assert refused.statuses[hour_status].code == Response.OVER_LIMIT
    assert refused.statuses[hour_status].current_limit.requests_per_unit == PER_HOUR
    until_the_hour = START - 120 + 3600 - clock.now
    assert retry_after(refused) == until_the_hour
    # A minute later it is still refused, with a shorter wait.
    clock.now += 60
    assert (await stub.ShouldRateLimit(request)).overall_code == Response.OVER_LIMIT
    assert retry_after(await stub.ShouldRateLimit(request)) == until_the_hour - 60

    # Another client is unaffected.
    other = await stub.ShouldRateLimit(anonymous_call("10.9.255.2"))
    assert other.overall_code == Response.OK

    # The hour moves on: the client has its 1000 again.
    clock.now = START - 120 + 3600
    again = await stub.ShouldRateLimit(request)
    assert again.overall_code == Response.OK
    assert again.statuses[hour_status].limit_remaining == PER_HOUR - 1


@pytest.mark.redis
async def test_retry_after_waits_for_every_window_over_its_limit(ratelimit):
    """Over the minute and the hour at once: wait for the hour, not the minute."""
    stub, clock = ratelimit
    request = anonymous_call(f"10.8.{uuid.uuid4().int % 250}.1")
    for call in range(PER_HOUR - PER_MINUTE):
        clock.now = START + (call // 50) * 61
        assert (await stub.ShouldRateLimit(request)).overall_code == Response.OK
    clock.now += 61
    for _ in range(PER_MINUTE):
        assert (await stub.ShouldRateLimit(request)).overall_code == Response.OK
    refused = await stub.ShouldRateLimit(request)
    assert [status.code for status in refused.statuses[:2]] == [Response.OVER_LIMIT] * 2
    assert refused.statuses[0].duration_until_reset.seconds <= 60
    assert retry_after(refused) == START - 120 + 3600 - clock.now
