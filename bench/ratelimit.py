"""What one rate-limit decision costs the ratelimit service, as Envoy asks for it. Prints only.

Starts `python -m services.ratelimit` (mutual TLS, rules raised so nothing is refused) counting
in Redis under a key prefix of its own, then sends ShouldRateLimit calls carrying the three
descriptors Envoy sends with every public call from a client without an API key, from
`--callers` concurrent callers over one connection, as Envoy does. It prints the latency the
callers saw and the service's own CPU time per decision (from /proc: user + system time of
the process over the round), which stays meaningful on a machine shared with other work, and
the same for a service counting in memory (no Redis) as the floor.

    .venv/bin/python bench/ratelimit.py [--calls 2000] [--callers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from envoy_rls import ratelimit_pb2, rls_pb2, rls_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_load import free_port, raised_rules  # noqa: E402
from runtime.config import Settings  # noqa: E402
from runtime.stack import ready  # noqa: E402
from runtime.tls import workload_identity  # noqa: E402


def descriptors(address: str) -> list[ratelimit_pb2.RateLimitDescriptor]:
    """What Envoy sends for a public call from `address` without an API key."""
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return [
        ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="window", value="minute"),
                                             entry(key="remote_address", value=address)]),
        ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="window", value="hour"),
                                             entry(key="remote_address", value=address)]),
        ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="address_ceiling", value="all"),
                                             entry(key="remote_address", value=address)]),
    ]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_of(settings: Settings, port: int, pid: int, calls: int, callers: int):
    identity = workload_identity(settings, "envoy")
    import grpc

    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", identity.channel_credentials()
    ) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        latencies: list[float] = []

        async def caller(n: int) -> None:
            for i in range(n, calls, callers):
                request = rls_pb2.RateLimitRequest(
                    domain="contextcache", descriptors=descriptors(f"10.0.{i % 200}.{n}")
                )
                began = time.perf_counter()
                response = await stub.ShouldRateLimit(request, timeout=10)
                latencies.append((time.perf_counter() - began) * 1000)
                assert response.overall_code == rls_pb2.RateLimitResponse.OK

        await asyncio.gather(*(caller(n) for n in range(callers)))  # warm up
        latencies.clear()
        cpu = cpu_seconds(pid)
        began = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu
    p50, p99 = np.percentile(latencies, [50, 99])
    return p50, p99, calls / elapsed, cpu / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    settings = Settings(data_dir=work / "var")
    rules = raised_rules(work)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; {args.calls} calls")
    print(f"  {'counting in':<12} {'p50 ms':>7} {'p99 ms':>7} {'calls/s':>8} {'CPU ms/call':>12}")
    for label, redis_url in (("redis", args.redis), ("memory", "")):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL"))}
        env.update(
            DATA_DIR=str(work / "var"),
            PORT=str(port),
            METRICS_PORT="0",
            LOG_LEVEL="WARNING",
            RATELIMIT_RULES=str(rules),
            RATELIMIT_KEY_PREFIX=f"bench-ratelimit-{uuid.uuid4().hex[:8]}",
        )
        if redis_url:
            env["REDIS_URL"] = redis_url
        with (work / "ratelimit.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.ratelimit"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
        try:
            deadline = time.monotonic() + 60
            while not ready(port, workload_identity(settings, "operator")):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"ratelimit did not start; see {work / 'ratelimit.log'}")
                time.sleep(0.2)
            p50, p99, rate, cpu = asyncio.run(
                round_of(settings, port, process.pid, args.calls, args.callers)
            )
            print(f"  {label:<12} {p50:7.2f} {p99:7.2f} {rate:8.0f} {cpu:12.3f}", flush=True)
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
