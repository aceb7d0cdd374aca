"""What the gateway's gRPC-Web body check (envoy/grpc_web_check.lua) costs an ordinary call.

Starts the stack as `make run` does (on free ports, in a temporary directory; its Envoy has
the check) and a second Envoy from the same settings without the Lua filter, then sends
ListProjects through both, by gRPC-Web (HTTP/1.1, binary) and by gRPC (HTTP/2), alternating
between the two gateways call by call so that load on the machine falls on both alike.
Prints p50/p95 in milliseconds per gateway and transport.

    .venv/bin/python bench/grpc_web_check.py          # CALLS=500 per gateway and transport
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_load import port_open, stack_environment, wait  # noqa: E402
from runtime.config import Settings  # noqa: E402
from runtime.gateway import envoy_command, render_text  # noqa: E402
from runtime.ports import free_port  # noqa: E402

CALLS = int(os.environ.get("CALLS", "500"))
LIST = "/contextcache.v1.ProjectService/ListProjects"
LUA = "envoy.filters.http.lua"


def without_check(settings: Settings, port: int, admin_port: int) -> str:
    """The rendered configuration on other ports, without the Lua filter."""
    config = yaml.safe_load(render_text(settings))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        address = listener["address"]["socket_address"]
        address["port_value"] = port if listener["name"] == "gateway" else free_port()
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != LUA]
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "envoy_admin":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            endpoint["endpoint"]["address"]["socket_address"]["port_value"] = admin_port
    return yaml.safe_dump(config)


def grpc_web_caller(port: int) -> Callable[[], None]:
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}

    def call() -> None:
        response = client.post(LIST, content=b"\x00\x00\x00\x00\x00", headers=headers)
        assert b"grpc-status:0" in response.content, response.content

    return call


def grpc_caller(port: int) -> Callable[[], None]:
    import grpc

    method = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(LIST)

    def call() -> None:
        method(b"", timeout=20)

    return call


def measure(callers: dict[str, Callable[[], None]], calls: int) -> dict[str, list[float]]:
    """Milliseconds per call of each caller, called in turn (after a few warm-up calls)."""
    for call in callers.values():
        for _ in range(20):
            call()
    times: dict[str, list[float]] = {name: [] for name in callers}
    for _ in range(calls):
        for name, call in callers.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    from runtime.stack import Stack

    work = Path(tempfile.mkdtemp(prefix="grpc-web-check-"))
    env = stack_environment(work)
    settings = Settings()
    plain_port = free_port()
    plain_config = work / "envoy-without-check.yaml"
    plain_config.write_text(without_check(settings, plain_port, free_port()))
    with Stack(settings, env, log=work / "stack.log"):
        with (work / "envoy-without-check.log").open("wb") as log:
            plain = subprocess.Popen(envoy_command(plain_config), stdout=log, stderr=log)
        try:
            wait(lambda: port_open(plain_port), 60, "the Envoy without the check")
            checked_port = settings.gateway_port
            callers = {
                "gRPC-Web with check": grpc_web_caller(checked_port),
                "gRPC-Web without": grpc_web_caller(plain_port),
                "gRPC with check": grpc_caller(checked_port),
                "gRPC without": grpc_caller(plain_port),
            }
            # Both gateways answer once every cluster is healthy.
            wait(lambda: all(_succeeds(call) for call in callers.values()), 120, "both gateways")
            times = measure(callers, CALLS)
        finally:
            plain.terminate()
            plain.wait(10)
    print(f"ListProjects, {CALLS} calls each, alternating; logs in {work}")
    for name, values in times.items():
        p50 = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1]
        print(f"  {name:<22} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")


def _succeeds(call: Callable[[], None]) -> bool:
    try:
        call()
    except Exception:  # not ready yet, whatever the reason
        return False
    return True


if __name__ == "__main__":
    main()
