"""Debian's real Prometheus against the stack as `make run` starts it (every service, the RQ
worker on the shared Redis, the rate limit service and Envoy as processes), with the scrape
configuration the stack writes (DATA_DIR/prometheus.yml, alert rules included).

After some traffic through Envoy — a project created and unlocked, a wrong passphrase, a
document ingested in the background by the worker, queries (one served from the Redis
cache), a refused request — every target is up, the key series exist with the values that
traffic implies, every metric the dashboard queries has a series, and every alert rule
evaluates without error and none fires.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.ports import free_port
from tests.conftest import PASSPHRASE, REDIS, redis_available
from tests.monitoring.test_dashboard import dashboard_metrics

REPO = Path(__file__).resolve().parents[2]
JOBS = {"projects", "ingest", "query", "crypto", "ratelimit", "worker", "envoy"}
pytestmark = [pytest.mark.envoy, pytest.mark.redis, pytest.mark.slow]


def wait_for(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError, KeyError) as error:
            result, last = None, error
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path) -> None:
        self.port = free_port()
        self.log = data.parent / "prometheus.log"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(self.log.read_text(errors="replace"))
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return r.status == 200

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def stack(tmp_path):
    """`python -m runtime.stack` on free ports, with Redis: the worker runs background jobs."""
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS} (start it: see README)")
    ports = {name: free_port() for name in ("projects", "ingest", "query", "crypto", "ratelimit")}
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL"))}
    env.update({f"{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()})
    run = uuid.uuid4().hex[:10]
    env.update(
        DATA_DIR=str(tmp_path / "var"),
        REDIS_URL=REDIS,
        INGEST_QUEUE=f"test-metrics-{run}",
        RATELIMIT_KEY_PREFIX=f"test-metrics-{run}",
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
        CONSOLE_PORT=str(free_port()),
        GATEWAY_HEALTH_CHECK_INTERVAL="1",
        HEALTH_CHECK_INTERVAL="1",
        METRICS_INTERVAL="1",
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
    )
    log = tmp_path / "stack.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.stack"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: process.poll() is None and "ContextCache is running" in log.read_text(),
            240,
            "the stack to start",
        )
        yield env, tmp_path / "var", log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def traffic(gateway: str) -> str:
    """Calls through Envoy a user would make; returns the ingested document's id."""
    with grpc.insecure_channel(gateway) as channel:
        projects = projects_pb2_grpc.ProjectServiceStub(channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        query = query_pb2_grpc.QueryServiceStub(channel)
        project = projects.CreateProject(
            projects_pb2.CreateProjectRequest(name="metrics", passphrase=PASSPHRASE), timeout=30
        ).project
        with pytest.raises(grpc.RpcError) as denied:
            projects.UnlockProject(
                projects_pb2.UnlockProjectRequest(
                    project_id=project.id, passphrase="a wrong passphrase of some length"
                ),
                timeout=30,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        token = projects.UnlockProject(
            projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=PASSPHRASE),
            timeout=30,
        ).unlock_token
        metadata = (("x-unlock-token", token),)
        with pytest.raises(grpc.RpcError) as invalid:
            projects.GetProject(projects_pb2.GetProjectRequest(project_id="nope"), timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        document = ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                text=ingest_pb2.TextSource(
                    title="Tides",
                    body="Tides are caused by the pull of the Moon and the Sun on the oceans. "
                    "Spring tides happen when the Sun and the Moon line up.",
                ),
                background=True,
            ),
            metadata=metadata,
            timeout=30,
        ).document
        assert document.status == ingest_pb2.DOCUMENT_STATUS_QUEUED

        def completed() -> bool:
            current = ingest.GetDocument(
                ingest_pb2.GetDocumentRequest(project_id=project.id, document_id=document.id),
                metadata=metadata,
                timeout=10,
            ).document
            assert current.status != ingest_pb2.DOCUMENT_STATUS_FAILED, current.error
            return current.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED

        wait_for(completed, 180, "the worker to complete the document", every=1)
        for _ in range(2):  # the second answer comes from the Redis cache
            answer = query.Query(
                query_pb2.QueryRequest(project_id=project.id, query="what causes tides?"),
                metadata=metadata,
                timeout=30,
            )
        assert answer.cached
        return document.id


def test_prometheus_scrapes_every_process_and_finds_the_key_series(stack, prometheus, tmp_path):
    env, data_dir, stack_log = stack
    generated = data_dir / "prometheus.yml"
    config = yaml.safe_load(generated.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == JOBS
    # make run prints where each process serves its metrics.
    printed = stack_log.read_text()
    for name, job in jobs.items():
        (target,) = job["static_configs"][0]["targets"]
        assert f"http://{target}{job.get('metrics_path', '/metrics')}" in printed, name
    # The project's configuration, scraped every second instead of every 15 for the test.
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    fast = tmp_path / "prometheus-fast.yml"
    fast.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [str(Path(prometheus).with_name("promtool")), "check", "config", str(fast)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    document_id = traffic(f"127.0.0.1:{env['GATEWAY_PORT']}")

    server = Prometheus(prometheus, fast, tmp_path / "tsdb")
    try:
        wait_for(server.ready, 60, "Prometheus to be ready")

        def all_up() -> bool:
            targets = server.get("/api/v1/targets")["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            return set(health) == JOBS and all(h == "up" for h in health.values())

        wait_for(all_up, 60, "every target up")

        expectations = {
            # RPCs: counted per method and code, with latencies.
            'grpc_server_handled_total{job="projects", grpc_method="UnlockProject",'
            ' grpc_code="PERMISSION_DENIED"}': 1,
            'grpc_server_handled_total{job="projects", grpc_method="UnlockProject",'
            ' grpc_code="OK"}': 1,
            'grpc_server_handled_total{job="projects", grpc_method="GetProject",'
            ' grpc_code="INVALID_ARGUMENT"}': 1,
            'grpc_server_handling_seconds_count{job="query", grpc_method="Query"}': 2,
            # Ingestion: the worker's counts (multiprocess: summed over its work horses).
            'contextcache_documents{job="ingest", status="completed"}': 1,
            'contextcache_documents_oldest_age_seconds{job="ingest", status="queued"}': 0,
            'contextcache_ingest_queue_depth{job="ingest"}': 0,
            'contextcache_ingest_jobs_total{job="worker", outcome="completed"}': 1,
            'contextcache_ingest_chunks_embedded_total{job="worker"}': 1,
            'contextcache_embedding_batch_size_count{job="worker"}': 1,
            # Query: the index, a search, a cache hit.
            'contextcache_index_points{job="query"}': 1,
            'contextcache_index_search_seconds_count{job="query", mode="hybrid"}': 1,
            'contextcache_query_cache_requests_total{job="query", result="hit"}': 1,
            'contextcache_query_cache_requests_total{job="query", result="miss"}': 1,
            # Rate limiting on Redis, and a wrong passphrase counted at crypto.
            'contextcache_ratelimit_decisions_total{job="ratelimit", decision="allowed",'
            ' store="redis"}': 1,
            'contextcache_ratelimit_memory_fallback{job="ratelimit"}': 0,
            'contextcache_crypto_passphrase_failures_total{job="crypto"}': 1,
            'contextcache_crypto_unlock_seconds_count{job="crypto"}': 2,
            # Readiness and dependencies.
            'min(contextcache_ready{job=~"projects|ingest|query|crypto|ratelimit"})': 1,
            'count(contextcache_ready{job=~"projects|ingest|query|crypto|ratelimit"})': 5,
            'min(contextcache_dependency_up{job="ingest"})': 1,
            # Envoy's own stats.
            "sum(envoy_cluster_upstream_rq_total)": 1,
        }

        def all_present() -> dict | None:
            values = {expr: server.value(expr) for expr in expectations}
            ok = all(
                v is not None and (v >= want if want else v == 0)
                for (expr, want), v in zip(expectations.items(), values.values(), strict=True)
            )
            return None if not ok else values

        try:
            values = wait_for(all_present, 60, "the key series")
        except AssertionError:
            got = {expr: server.value(expr) for expr in expectations}
            raise AssertionError(f"series and values: {json.dumps(got, indent=1)}") from None
        # Exactly what the traffic implies, where it is exact.
        assert values['contextcache_documents{job="ingest", status="completed"}'] == 1

        for name in sorted(dashboard_metrics()):
            assert server.value(f'count({{__name__="{name}"}})'), (
                f"the dashboard queries {name}, which Prometheus has no series of"
            )

        rules = [r for g in server.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert len(rules) >= 10
        for rule in rules:
            assert rule["health"] == "ok", rule
            if rule["type"] == "alerting":
                assert rule["state"] == "inactive", rule

        # No series carries the project's content or identifiers.
        everything = json.dumps(server.get("/api/v1/series", **{"match[]": '{job=~".+"}'}))
        for secret in ("Tides", "what causes tides", PASSPHRASE, document_id):
            assert secret not in everything
    finally:
        server.stop()
