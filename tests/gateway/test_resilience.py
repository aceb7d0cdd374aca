"""An upstream killed mid-run: Envoy marks it unhealthy, fails fast, and recovers."""

from __future__ import annotations

import signal
import time
import uuid

import grpc
import pytest

from tests.gateway.conftest import (
    free_port,
    gateway,
    get_status,
    project_stub,
    start_service,
    wait_until,
)

pytestmark = pytest.mark.envoy


def test_killed_upstream_fails_fast_and_recovers(logs, ratelimit):
    port = free_port()
    env = {"DATA_DIR": str(logs / f"killed-{port}")}
    process = start_service("services.projects", port, env, logs)
    try:
        with gateway(logs, projects_addr=f"127.0.0.1:{port}", ratelimit_addr=ratelimit) as gw:
            channel, stub = project_stub(gw.address)
            with channel:
                get_status(stub, uuid.uuid4().hex)

                process.stop(signal.SIGKILL)
                wait_until(
                    lambda: "failed_active_hc" in gw.host_flags("projects"),
                    10,
                    "Envoy to mark the killed upstream unhealthy",
                )
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as caught:
                    get_status(stub, uuid.uuid4().hex)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 0.5, "no healthy upstream: fail fast"

                process = start_service("services.projects", port, env, logs)

                def answers() -> bool:
                    try:
                        get_status(stub, uuid.uuid4().hex)
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                        return False
                    return True

                wait_until(answers, 15, "calls to succeed again", interval=0.25)
                assert gw.host_flags("projects") == "healthy"
    finally:
        process.stop()
