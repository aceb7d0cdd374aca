"""`python -m services.ingest.worker`: the RQ worker that runs background ingestion jobs.

The worker does not fork per job (RQ's SimpleWorker): its jobs run on one long-lived event
loop with the app and the embedding model loaded once, the model embedding on one thread per
CPU the process may run on (services/ingest/job_runner.py). Run one worker per core or per
pod; each uses the cores it is given. Trace context comes with the job. A job carries the
document's grant, which crypto redeems for the job token only for the worker's certificate;
the token lives in memory for the job's run. Run by another RQ worker (a forking one, say),
a job opens its own loop, engine and channels and closes them when it ends.

With HEALTH_PORT set, the worker answers the kubelet's liveness probe (`GET /livez`, plain
HTTP: no gRPC in the process RQ forks from) with 200 while RQ's loop keeps heartbeating and
503 once it has been silent for two worker TTLs (a wedged worker is restarted).

Metrics (runtime/metrics.py): the worker counts in prometheus_client's multiprocess mode,
in files under DATA_DIR/metrics/worker-<port> (so work horses of a forking worker class add
to them too); the worker serves their sum on METRICS_PORT (default 9106). The files of
finished processes are folded into one archive before each scrape; the directory is emptied
when the worker starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from runtime.config import load_settings
from runtime.logs import configure_logging

# Imported in main, after the metrics mode is set: each of these imports runtime.metrics.
if TYPE_CHECKING:
    from services.ingest.job_runner import JobRunner

log = logging.getLogger(__name__)
# RQ heartbeats at least once per (TTL - 15 s) while idle, and while it supervises a job.
WORKER_TTL = 60


# This process's job runner and RQ worker (set by main; None when another worker runs jobs).
_runner: JobRunner | None = None
_worker: Any = None


def process_document(document_id: str, job_grant: str) -> str:
    """The RQ job: runs the ingestion pipeline for one document; returns its outcome."""
    from rq import get_current_job

    job = get_current_job()
    carrier = (job.meta or {}).get("trace", {}) if job else {}
    if _runner is not None:
        worker = _worker

        def heartbeat() -> None:
            if worker is not None and job is not None:
                worker.maintain_heartbeats(job)

        return _runner.run(document_id, job_grant, carrier, heartbeat)
    token = otel_context.attach(propagate.extract(carrier))
    try:
        tracer = trace.get_tracer("contextcache.ingest.worker")
        with tracer.start_as_current_span("ingest.process_document"):
            return asyncio.run(_process(document_id, job_grant))
    finally:
        otel_context.detach(token)


async def _process(document_id: str, job_grant: str) -> str:
    from services.ingest.app import IngestApp

    app = IngestApp(load_settings(), worker=True)
    await app.open()
    try:
        result = await app.pipeline().process_granted(document_id, job_grant)
        log.info("document %s: %s", document_id, result.outcome.value)
        return result.outcome.value
    finally:
        await app.close()


def worker_alive(worker: Any, now: datetime | None = None) -> bool:
    """Whether RQ's loop heartbeated within two TTLs (or has not started yet)."""
    last = worker.last_heartbeat
    if last is None:
        return True  # loading the model, registering: not wedged
    now = now or datetime.now(UTC)
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return (now - last).total_seconds() < 2 * worker.worker_ttl


def serve_liveness(host: str, port: int, worker: Any) -> ThreadingHTTPServer:
    """GET /livez → 200 while the worker is alive, else 503; in a daemon thread."""

    class Liveness(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/livez":
                self.send_error(404)
                return
            alive = worker_alive(worker)
            body = b"alive\n" if alive else b"RQ loop silent\n"
            self.send_response(200 if alive else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per probe would drown the job logs

    server = ThreadingHTTPServer((host, port), Liveness)
    threading.Thread(target=server.serve_forever, name="liveness", daemon=True).start()
    return server


def count_in_files(directory: Path) -> None:
    """prometheus_client's multiprocess mode: every process forked from this one adds to
    files under `directory`. Before runtime.metrics is imported (its metrics take the mode
    when they are created)."""
    import sys

    if "runtime.metrics" in sys.modules:
        raise RuntimeError("runtime.metrics was imported before the multiprocess mode was set")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, "worker")
    metrics_port = settings.metrics_port_of("worker")
    if metrics_port:
        count_in_files(Path(settings.data_dir) / "metrics" / f"worker-{metrics_port}")

    from redis import Redis
    from rq import Queue, SimpleWorker

    from retrieval.embeddings import start_loading
    from runtime import metrics
    from runtime.telemetry import configure_sentry, configure_tracing
    from services.ingest.job_runner import JobRunner

    configure_tracing(settings, "worker")
    configure_sentry(settings, "worker")
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is required for the worker (without it, jobs run in-process)")
    if metrics_port:
        metrics.serve_multiprocess(metrics_port, settings.listen_host)
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(settings.ingest_queue, connection=connection)
    worker = SimpleWorker([queue], connection=connection, worker_ttl=WORKER_TTL)
    if settings.health_port is not None:
        serve_liveness(settings.listen_host, settings.health_port, worker)
        log.info("worker liveness on %s:%d/livez", settings.listen_host, settings.health_port)
    global _runner, _worker
    loading = start_loading()  # once per worker process, beside opening the app
    runner = JobRunner(settings)
    runner.start()
    loading.result()  # registered with RQ only once it can embed
    _runner, _worker = runner, worker
    log.info("ingest worker ready (queue %s)", settings.ingest_queue)
    try:
        worker.work(with_scheduler=False)
    finally:
        _runner = None
        runner.stop()


if __name__ == "__main__":
    main()
