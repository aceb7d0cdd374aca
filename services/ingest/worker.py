"""`python -m services.ingest.worker`: the RQ worker that runs background ingestion jobs.

The embedding model is loaded once, in the worker process, before RQ forks a work horse per
job (the fork shares it); each job creates its own event loop, database engine and gRPC
channels after the fork, and closes them when it ends. Trace context comes with the job.
A job carries the document's grant, which crypto redeems for the job token only for the
worker's certificate; the token lives in memory for the job's run.

Metrics (runtime/metrics.py): the work horses count in prometheus_client's multiprocess
mode, in files under DATA_DIR/metrics/worker-<port>; the worker serves their sum on
METRICS_PORT (default 9106). The files of finished horses are folded into one archive before
each scrape; the directory is emptied when the worker starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from runtime.config import load_settings
from runtime.logs import configure_logging
from runtime.telemetry import configure_sentry, configure_tracing

log = logging.getLogger(__name__)


def process_document(document_id: str, job_grant: str) -> str:
    """The RQ job: runs the ingestion pipeline for one document; returns its outcome."""
    from rq import get_current_job

    job = get_current_job()
    carrier = (job.meta or {}).get("trace", {}) if job else {}
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
    from rq import Queue, Worker

    from retrieval.embeddings import load_model
    from runtime import metrics

    configure_tracing(settings, "worker")
    configure_sentry(settings, "worker")
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is required for the worker (without it, jobs run in-process)")
    if metrics_port:
        metrics.serve_multiprocess(metrics_port, settings.listen_host)
    load_model()  # once per worker process; work horses inherit it through fork
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(settings.ingest_queue, connection=connection)
    worker = Worker([queue], connection=connection)
    log.info("ingest worker ready (queue %s)", settings.ingest_queue)
    worker.work(with_scheduler=False)


if __name__ == "__main__":
    main()
