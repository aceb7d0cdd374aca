"""Load through the Envoy gateway with k6: starts the project service, the ratelimit service
(limits raised for the test, counting in Redis when it answers) and Envoy on free ports,
runs bench/load.js at a fixed arrival rate and prints its p50/p95/p99 and error rate.

    .venv/bin/python bench/gateway_load.py            # RATE=50 DURATION=60s by default
    RATE=100 DURATION=30s WORKLOAD=GetStatus=1,ListProjects=1 .venv/bin/python bench/gateway_load.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.config import Settings  # noqa: E402
from runtime.gateway import envoy_command, render  # noqa: E402

RAISED = 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def raised_rules(directory: Path) -> Path:
    rules = yaml.safe_load((ROOT / "envoy" / "ratelimit.yaml").read_text())

    def raise_all(descriptors) -> None:
        for descriptor in descriptors or ():
            if "rate_limit" in descriptor:
                descriptor["rate_limit"]["requests_per_unit"] = RAISED
            raise_all(descriptor.get("descriptors"))

    raise_all(rules["descriptors"])
    path = directory / "ratelimit.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def shared_redis() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
        return url
    except redis.RedisError:
        return ""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    processes: list[subprocess.Popen] = []
    python = sys.executable
    log = (work / "processes.log").open("wb")

    def start(command: list[str], env: dict[str, str]) -> None:
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log)
        )

    try:
        projects, crypto, ratelimit = free_port(), free_port(), free_port()
        rules = raised_rules(work)
        redis_url = shared_redis()
        # CreateProject (setup) needs crypto; ingest and query are started by nobody here:
        # their workloads need `make run`'s stack (pass GATEWAY to k6 directly).
        common = {"DATA_DIR": str(work), "CRYPTO_ADDR": f"127.0.0.1:{crypto}"}
        start([python, "-m", "services.crypto"], {**common, "PORT": str(crypto)})
        start([python, "-m", "services.projects"], {**common, "PORT": str(projects)})
        start(
            [python, "-m", "services.ratelimit"],
            {
                "PORT": str(ratelimit),
                "RATELIMIT_RULES": str(rules),
                "REDIS_URL": redis_url,
                "RATELIMIT_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
            },
        )
        wait(lambda: all(map(port_open, (projects, crypto, ratelimit))), 60, "the services")
        settings = Settings(
            gateway_port=free_port(),
            gateway_admin_port=free_port(),
            projects_addr=f"127.0.0.1:{projects}",
            ratelimit_addr=f"127.0.0.1:{ratelimit}",
            ratelimit_rules=rules,
            gateway_local_rate_limit=RAISED,
            gateway_health_check_interval=1,
        )
        start(envoy_command(render(settings, work / "envoy.yaml")), {})
        admin = f"http://127.0.0.1:{settings.gateway_admin_port}"

        def ready() -> bool:
            with urllib.request.urlopen(f"{admin}/clusters", timeout=2) as response:
                text = response.read().decode()
            return "projects::" in text and "health_flags::healthy" in text

        wait(ready, 30, "Envoy with a healthy project service")
        print(f"counting rate limits in {'Redis' if redis_url else 'memory'}; logs in {work}")
        env = {"GATEWAY": f"127.0.0.1:{settings.gateway_port}", "K6_NO_USAGE_REPORT": "true"}
        k6 = str(Path(python).parent / "k6")
        result = subprocess.run(
            [k6, "run", "--quiet", str(ROOT / "bench" / "load.js")],
            env={**os.environ, **env},
            check=False,
            timeout=600,
        )
        if result.returncode:
            raise SystemExit(result.returncode)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


if __name__ == "__main__":
    main()
