"""Rate limits through the real Envoy and our ratelimit service (envoy/ratelimit.yaml).

Each test counts as its own client (a fresh x-api-key or its own loopback source address)
and the session counts under its own Redis key prefix, so tests never share counters.
"""

from __future__ import annotations

import struct
import time
import uuid

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import projects_pb2
from tests.gateway.conftest import (
    SHARED_REDIS,
    free_port,
    gateway,
    get_status,
    project_stub,
    redis_server,
    service,
    wait_for_window,
    wait_until,
)

pytestmark = pytest.mark.envoy
PER_MINUTE = 60


def metadata_of(error: grpc.RpcError) -> dict[str, str]:
    # A rate-limited reply is trailers-only: its headers arrive as trailing metadata.
    return {
        k: v for k, v in (*(error.initial_metadata() or ()), *(error.trailing_metadata() or ()))
    }


def assert_limited(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    headers = metadata_of(error)
    assert headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(headers["x-ratelimit-reset"]) <= 60
    assert headers["x-ratelimit-limit"].startswith("60")


def burst(stub, api_key: str, calls: int) -> None:
    for _ in range(calls):
        get_status(stub, api_key)


def grpc_web_status(address: str, source: str, path: str, message: bytes = b"") -> str:
    """One gRPC-Web call from the loopback address `source`; returns its grpc-status."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.post(
            f"http://{address}{path}",
            content=b"\x00" + struct.pack(">I", len(message)) + message,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert response.status_code == 200, response.status_code
    if "grpc-status" in response.headers:  # a trailers-only reply (e.g. rate limited)
        return response.headers["grpc-status"]
    trailer = response.content[response.content.rfind(b"\x80") :]
    return trailer.split(b"grpc-status:")[1].split(b"\r\n")[0].strip().decode()


def test_the_61st_call_in_a_minute_is_refused_with_reset_headers(envoy):
    api_key = uuid.uuid4().hex
    wait_for_window(20)
    channel, stub = project_stub(envoy.address)
    with channel:
        _, call = get_status(stub, api_key)
        headers = dict(call.initial_metadata())
        assert headers["x-ratelimit-remaining"] == str(PER_MINUTE - 1)
        burst(stub, api_key, PER_MINUTE - 1)
        with pytest.raises(grpc.RpcError) as caught:
            get_status(stub, api_key)
        assert_limited(caught.value)

        # Another client (another API key) is unaffected.
        get_status(stub, uuid.uuid4().hex)

        # Health checks and reflection are never limited, even for this client.
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(PER_MINUTE + 10):
            reply = health.Check(
                health_pb2.HealthCheckRequest(service=""),
                metadata=(("x-api-key", api_key),),
                timeout=5,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_clients_without_api_key_are_counted_by_address(envoy):
    path = "/contextcache.v1.ProjectService/GetStatus"
    wait_for_window(20)
    statuses = [grpc_web_status(envoy.address, "127.0.0.2", path) for _ in range(PER_MINUTE)]
    assert set(statuses) == {"0"}
    assert grpc_web_status(envoy.address, "127.0.0.2", path) == "8"  # RESOURCE_EXHAUSTED
    assert grpc_web_status(envoy.address, "127.0.0.3", path) == "0"


def test_unlock_project_has_a_stricter_limit(envoy):
    path = "/contextcache.v1.ProjectService/UnlockProject"
    request = projects_pb2.UnlockProjectRequest(
        project_id=str(uuid.uuid4()), passphrase="a wrong passphrase, certainly"
    ).SerializeToString()
    wait_for_window(10)
    answers = [grpc_web_status(envoy.address, "127.0.0.4", path, request) for _ in range(5)]
    assert "8" not in answers
    assert grpc_web_status(envoy.address, "127.0.0.4", path, request) == "8"
    # The same address may still make ordinary calls.
    assert (
        grpc_web_status(envoy.address, "127.0.0.4", "/contextcache.v1.ProjectService/GetStatus")
        == "0"
    )


def test_two_gateways_sharing_redis_enforce_one_limit(logs, projects, ratelimit, key_prefix, envoy):
    # A second gateway with its own ratelimit replica, both counting in the same Redis.
    port = free_port()
    env = {"REDIS_URL": SHARED_REDIS, "RATELIMIT_KEY_PREFIX": key_prefix}
    with (
        service("services.ratelimit", port, env, logs),
        gateway(
            logs,
            wait_healthy=("projects", "ratelimit"),
            projects_addr=projects,
            ratelimit_addr=f"127.0.0.1:{port}",
        ) as second,
    ):
        api_key = uuid.uuid4().hex
        wait_for_window(20)
        first_channel, first = project_stub(envoy.address)
        second_channel, other = project_stub(second.address)
        with first_channel, second_channel:
            for _ in range(PER_MINUTE // 2):
                get_status(first, api_key)
                get_status(other, api_key)
            for stub in (first, other):
                with pytest.raises(grpc.RpcError) as caught:
                    get_status(stub, api_key)
                assert_limited(caught.value)


def test_limits_hold_in_memory_while_redis_is_down(logs, projects):
    with redis_server(logs) as (redis_port, redis_process):
        rls_port = free_port()
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "RATELIMIT_KEY_PREFIX": "outage",
            "RATELIMIT_REDIS_RETRY": "1",
        }
        with (
            service("services.ratelimit", rls_port, env, logs) as rls,
            gateway(
                logs,
                wait_healthy=("projects", "ratelimit"),
                projects_addr=projects,
                ratelimit_addr=f"127.0.0.1:{rls_port}",
            ) as gw,
        ):
            own_redis = redis.Redis(port=redis_port, socket_timeout=2)
            api_key = uuid.uuid4().hex
            wait_for_window(40)
            channel, stub = project_stub(gw.address)
            with channel:
                burst(stub, api_key, 5)
                assert own_redis.keys("outage:*"), "counters should be in Redis"

                redis_process.stop()
                burst(stub, api_key, PER_MINUTE)  # a fresh in-memory window
                with pytest.raises(grpc.RpcError) as caught:
                    get_status(stub, api_key)
                assert_limited(caught.value)
                assert rls.alive()
                assert "counting rate limits in memory" in rls.output()

                # Redis returns: counting goes back to it (within the retry interval).
                with redis_server(logs, redis_port):
                    fresh = redis.Redis(port=redis_port, socket_timeout=2)
                    other_key = uuid.uuid4().hex

                    def counted_in_redis() -> bool:
                        get_status(stub, other_key)
                        return bool(fresh.keys("outage:*"))

                    wait_until(counted_in_redis, 10, "counting in Redis again", interval=0.5)
                    assert "Redis is back" in rls.output()


def test_a_dead_ratelimit_service_fails_open_behind_the_local_bucket(logs, projects):
    dead = f"127.0.0.1:{free_port()}"
    with gateway(
        logs, projects_addr=projects, ratelimit_addr=dead, gateway_local_rate_limit=5
    ) as gw:
        channel, stub = project_stub(gw.address)
        with channel:
            codes = []
            started = time.monotonic()
            for _ in range(12):
                try:
                    get_status(stub, uuid.uuid4().hex)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
            elapsed = time.monotonic() - started
    # The global limiter is down: requests pass (fail open) until the bucket is empty.
    assert codes[:5] == [grpc.StatusCode.OK] * 5
    assert elapsed < 2.0, "the bucket refills 5 tokens per second"
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
