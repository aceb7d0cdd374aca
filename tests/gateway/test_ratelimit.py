"""Rate limits through the real Envoy and our ratelimit service (envoy/ratelimit.yaml).

Each test counts as its own client (a fresh x-api-key or its own loopback source address)
and the session counts under its own Redis key prefix, so tests never share counters. The
probe is ListProjects (cheap, public, counted); GetStatus is exempt like health checks.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid

import grpc
import httpx
import pytest
import redis
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from contextcache.v1 import projects_pb2
from tests.gateway.conftest import (
    SHARED_REDIS,
    free_port,
    gateway,
    get_status,
    list_projects,
    project_stub,
    redis_server,
    service,
    wait_for_window,
    wait_until,
)

pytestmark = pytest.mark.envoy
PER_MINUTE = 60
LIST_PROJECTS = "/contextcache.v1.ProjectService/ListProjects"
GET_STATUS = "/contextcache.v1.ProjectService/GetStatus"


def metadata_of(error: grpc.RpcError) -> dict[str, str]:
    # A rate-limited reply is trailers-only: its headers arrive as trailing metadata.
    return {
        k: v for k, v in (*(error.initial_metadata() or ()), *(error.trailing_metadata() or ()))
    }


def retry_delay(status: status_pb2.Status) -> int:
    """The google.rpc.RetryInfo delay (seconds) of a RESOURCE_EXHAUSTED status."""
    assert status.code == code_pb2.RESOURCE_EXHAUSTED, status
    (detail,) = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info), detail
    return info.retry_delay.seconds


def assert_limited(error: grpc.RpcError, limit: int = PER_MINUTE, window: int = 60) -> int:
    """A refusal by the gateway's rate limit, saying when to retry; returns that delay."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    headers = metadata_of(error)
    assert headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(headers["x-ratelimit-reset"]) <= window
    assert headers["x-ratelimit-limit"].startswith(str(limit))
    # from_call checks the details' code and message against the call's own.
    delay = retry_delay(rpc_status.from_call(error))
    assert 0 < delay <= window
    assert headers["retry-after"] == str(delay)
    return delay


def burst(stub, api_key: str, calls: int) -> None:
    for _ in range(calls):
        list_projects(stub, api_key)


def grpc_web_client(source: str) -> httpx.Client:
    """An HTTP/1.1 client calling from the loopback address `source`."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10)


def grpc_web_call(
    client: httpx.Client, address: str, path: str, message: bytes = b""
) -> httpx.Response:
    response = client.post(
        f"http://{address}{path}",
        content=b"\x00" + struct.pack(">I", len(message)) + message,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert response.status_code == 200, response.status_code
    return response


def grpc_web_code(response: httpx.Response) -> str:
    if "grpc-status" in response.headers:  # a trailers-only reply (e.g. rate limited)
        return response.headers["grpc-status"]
    trailer = response.content[response.content.rfind(b"\x80") :]
    return trailer.split(b"grpc-status:")[1].split(b"\r\n")[0].strip().decode()


def grpc_web_status(address: str, source: str, path: str, message: bytes = b"") -> str:
    """One gRPC-Web call from the loopback address `source`; returns its grpc-status."""
    with grpc_web_client(source) as client:
        return grpc_web_code(grpc_web_call(client, address, path, message))


def json_retry_delay(response: httpx.Response) -> int:
    """A JSON caller's refusal: a 429 whose google.rpc.Status body carries the RetryInfo that
    retry-after repeats."""
    assert response.status_code == 429, (response.status_code, response.text[:300])
    body = response.json()
    assert body["code"] == code_pb2.RESOURCE_EXHAUSTED
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    delay = int(detail["retryDelay"].removesuffix("s"))
    assert response.headers["retry-after"] == str(delay)
    return delay


def grpc_web_retry_delay(response: httpx.Response) -> int:
    """A gRPC-Web refusal's RetryInfo delay, checked against its retry-after header."""
    raw = response.headers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    assert status.message == response.headers["grpc-message"]
    delay = retry_delay(status)
    assert response.headers["retry-after"] == str(delay)
    return delay


def test_the_61st_call_in_a_minute_is_refused_saying_when_to_retry(envoy):
    api_key = uuid.uuid4().hex
    wait_for_window(20)
    channel, stub = project_stub(envoy.address)
    with channel:
        _, call = list_projects(stub, api_key)
        headers = dict(call.initial_metadata())
        assert headers["x-ratelimit-remaining"] == str(PER_MINUTE - 1)
        assert "retry-after" not in headers
        burst(stub, api_key, PER_MINUTE - 1)
        with pytest.raises(grpc.RpcError) as caught:
            list_projects(stub, api_key)
        delay = assert_limited(caught.value)
        # The minute window resets on the minute: retry-after says when.
        assert abs(delay - (60 - time.time() % 60)) <= 2

        # Another client (another API key) is unaffected.
        list_projects(stub, uuid.uuid4().hex)

        # Health checks and reflection are never limited, even for this client.
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(PER_MINUTE + 10):
            reply = health.Check(
                health_pb2.HealthCheckRequest(service=""),
                metadata=(("x-api-key", api_key),),
                timeout=5,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_detailed_status_is_never_limited_while_other_calls_are(envoy):
    api_key = uuid.uuid4().hex
    wait_for_window(20)
    channel, stub = project_stub(envoy.address)
    with channel:
        for _ in range(PER_MINUTE + 10):
            reply, call = get_status(stub, api_key)
            assert reply.status.service == "contextcache.v1.ProjectService"
            assert "x-ratelimit-remaining" not in dict(call.initial_metadata())
        # None of those counted: this client still has its whole minute.
        _, call = list_projects(stub, api_key)
        assert dict(call.initial_metadata())["x-ratelimit-remaining"] == str(PER_MINUTE - 1)
        burst(stub, api_key, PER_MINUTE - 1)
        with pytest.raises(grpc.RpcError) as caught:
            list_projects(stub, api_key)
        assert_limited(caught.value)
        # Over its limit, the client still gets its detailed status, over gRPC and gRPC-Web.
        get_status(stub, api_key)
    wait_for_window(20)
    with grpc_web_client("127.0.0.5") as client:

        def web(path: str) -> str:
            return grpc_web_code(grpc_web_call(client, envoy.address, path))

        assert {web(LIST_PROJECTS) for _ in range(PER_MINUTE)} == {"0"}
        assert web(LIST_PROJECTS) == "8"
        assert {web(GET_STATUS) for _ in range(10)} == {"0"}


def test_clients_without_api_key_are_counted_by_address(envoy):
    wait_for_window(20)
    with grpc_web_client("127.0.0.2") as client:
        statuses = [
            grpc_web_code(grpc_web_call(client, envoy.address, LIST_PROJECTS))
            for _ in range(PER_MINUTE)
        ]
        refused = grpc_web_call(client, envoy.address, LIST_PROJECTS)
    assert set(statuses) == {"0"}
    assert grpc_web_code(refused) == "8"  # RESOURCE_EXHAUSTED
    assert 0 < grpc_web_retry_delay(refused) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"
    # JSON callers from that address are over the same limit, and told the same.
    with grpc_web_client("127.0.0.2") as client:
        refused_json = client.get(f"http://{envoy.address}/v1/projects")
    assert 0 < json_retry_delay(refused_json) <= 60
    assert refused_json.headers["x-ratelimit-remaining"] == "0"
    assert grpc_web_status(envoy.address, "127.0.0.3", LIST_PROJECTS) == "0"


def test_unlock_project_has_a_stricter_limit(envoy):
    path = "/contextcache.v1.ProjectService/UnlockProject"
    request = projects_pb2.UnlockProjectRequest(
        project_id=str(uuid.uuid4()), passphrase="a wrong passphrase, certainly"
    ).SerializeToString()
    wait_for_window(10)
    answers = [grpc_web_status(envoy.address, "127.0.0.4", path, request) for _ in range(5)]
    assert "8" not in answers
    with grpc_web_client("127.0.0.4") as client:
        refused = grpc_web_call(client, envoy.address, path, request)
    assert grpc_web_code(refused) == "8"
    assert 0 < grpc_web_retry_delay(refused) <= 60
    # The same address may still make ordinary calls.
    assert grpc_web_status(envoy.address, "127.0.0.4", LIST_PROJECTS) == "0"


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
                list_projects(first, api_key)
                list_projects(other, api_key)
            for stub in (first, other):
                with pytest.raises(grpc.RpcError) as caught:
                    list_projects(stub, api_key)
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
                    list_projects(stub, api_key)
                assert_limited(caught.value)
                assert rls.alive()
                assert "counting rate limits in memory" in rls.output()

                # Redis returns: counting goes back to it (within the retry interval).
                with redis_server(logs, redis_port):
                    fresh = redis.Redis(port=redis_port, socket_timeout=2)
                    other_key = uuid.uuid4().hex

                    def counted_in_redis() -> bool:
                        list_projects(stub, other_key)
                        return bool(fresh.keys("outage:*"))

                    wait_until(counted_in_redis, 10, "counting in Redis again", interval=0.5)
                    assert "Redis is back" in rls.output()


def test_a_dead_ratelimit_service_fails_open_behind_the_local_bucket(logs, projects):
    """The local bucket's refusals are RESOURCE_EXHAUSTED for gRPC and gRPC-Web callers alike,
    told to retry in a second (the bucket refills each second); GetStatus is exempt."""
    dead = f"127.0.0.1:{free_port()}"
    with gateway(
        logs, projects_addr=projects, ratelimit_addr=dead, gateway_local_rate_limit=5
    ) as gw:
        channel, stub = project_stub(gw.address)
        with channel:
            codes, errors = [], []
            started = time.monotonic()
            for _ in range(12):
                try:
                    list_projects(stub, uuid.uuid4().hex)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    errors.append(error)
            elapsed = time.monotonic() - started
            # The bucket is empty now (5 a second), yet the detailed status answers.
            for _ in range(10):
                get_status(stub)
        # gRPC-Web callers over the bucket get the same code and the same advice.
        with grpc_web_client("127.0.0.6") as client:
            web = [grpc_web_call(client, gw.address, LIST_PROJECTS) for _ in range(12)]
            json = [client.get(f"http://{gw.address}/v1/projects") for _ in range(12)]
    # The global limiter is down: requests pass (fail open) until the bucket is empty.
    assert codes[:5] == [grpc.StatusCode.OK] * 5
    assert elapsed < 2.0, "the bucket refills 5 tokens per second"
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    for error in errors:
        assert retry_delay(rpc_status.from_call(error)) == 1
        assert metadata_of(error)["retry-after"] == "1"
    web_refused = [response for response in web if grpc_web_code(response) != "0"]
    assert web_refused, "12 calls within a second exceed a bucket of 5"
    assert {grpc_web_code(response) for response in web_refused} == {"8"}
    assert {grpc_web_retry_delay(response) for response in web_refused} == {1}
    json_refused = [response for response in json if response.status_code != 200]
    assert json_refused, "12 calls within a second exceed a bucket of 5"
    assert {json_retry_delay(response) for response in json_refused} == {1}
