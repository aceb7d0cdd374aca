"""Load through the Envoy gateway with k6: starts the whole stack as `make run` does (every
service, the rate-limit service with limits raised for the test, Envoy) on free ports in a
temporary directory, seeds a project with a document, runs bench/load.js at a fixed arrival
rate and prints its p50/p95/p99 and error rate.

    .venv/bin/python bench/gateway_load.py    # RATE=50 DURATION=60s; GetProject/ListDocuments/Query
    RATE=100 DURATION=30s WORKLOAD=GetStatus=1,Query=3 .venv/bin/python bench/gateway_load.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.config import Settings  # noqa: E402
from runtime.ports import free_port  # noqa: E402

RAISED = 1_000_000


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


PASSPHRASE = "gateway load passphrase 2026"
SEED_TEXT = (
    "Envoy is a high-performance proxy designed for service-oriented architectures. "
    "It supports HTTP/2 and gRPC, health checking, retries and rate limiting. "
    "Rate limits protect services from bursts of traffic from a single client."
)


def seed(gateway: str) -> tuple[str, str]:
    """A project with one document, created through the gateway; (project id, token)."""
    import grpc

    from contextcache.v1 import ingest_pb2, ingest_pb2_grpc, projects_pb2, projects_pb2_grpc

    with grpc.insecure_channel(gateway) as channel:
        projects = projects_pb2_grpc.ProjectServiceStub(channel)
        project = projects.CreateProject(
            projects_pb2.CreateProjectRequest(name="load", passphrase=PASSPHRASE), timeout=60
        ).project
        token = projects.UnlockProject(
            projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE),
            timeout=60,
        ).unlock_token
        ingest_pb2_grpc.IngestServiceStub(channel).IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                text=ingest_pb2.TextSource(title="Envoy", body=SEED_TEXT),
            ),
            metadata=(("x-unlock-token", token),),
            timeout=300,
        )
    return project.id, token


def stack_environment(work: Path) -> dict[str, str]:
    """The environment of a whole stack on free ports with its data in `work` and rate
    limits out of a benchmark's reach; also set in this process (Settings reads it)."""
    ports = {name: free_port() for name in ("projects", "ingest", "query", "crypto", "ratelimit")}
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL"))}
    env.update({f"{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()})
    env.update(
        DATA_DIR=str(work),
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
        CONSOLE_PORT=str(free_port()),
        GATEWAY_HEALTH_CHECK_INTERVAL="1",
        GATEWAY_LOCAL_RATE_LIMIT=str(RAISED),
        RATELIMIT_RULES=str(raised_rules(work)),
    )
    os.environ.update(env)
    return env


def main() -> None:
    from runtime.stack import Stack

    work = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    env = stack_environment(work)
    settings = Settings()
    gateway = f"127.0.0.1:{settings.gateway_port}"
    with Stack(settings, env, log=work / "stack.log"):
        project_id, token = seed(gateway)
        print(f"stack up, project seeded; logs and data in {work}")
        k6_env = {
            "GATEWAY": gateway,
            "PROJECT_ID": project_id,
            "UNLOCK_TOKEN": token,
            "WORKLOAD": os.environ.get("WORKLOAD", "GetProject=1,ListDocuments=1,Query=1"),
            "K6_NO_USAGE_REPORT": "true",
        }
        k6 = str(Path(sys.executable).parent / "k6")
        result = subprocess.run(
            [k6, "run", "--quiet", str(ROOT / "bench" / "load.js")],
            env={**env, **k6_env},
            check=False,
            timeout=900,
        )
    if result.returncode:
        raise SystemExit(result.returncode)


if __name__ == "__main__":
    main()
