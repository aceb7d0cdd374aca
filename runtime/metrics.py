"""Prometheus metrics of every ContextCache process, and the plaintext HTTP listener
(`/metrics` on METRICS_PORT) that serves them.

One registry per process (prometheus_client's default). RPC metrics use the names of
go-grpc-prometheus (`grpc_server_handled_total`, `grpc_server_handling_seconds`...), so
existing gRPC dashboards work; everything else is `contextcache_*`.

Label values only ever come from closed, small sets: method names the server registered,
status codes, document statuses, dependency names, decisions. Never a project id or name, a
title, a query text, a URL, an address or a token: a monitoring system has no access
control of its own, and such labels would also make the number of series unbounded.

The RQ worker forks a work horse per job, so it counts in prometheus_client's multiprocess
mode: services/ingest/worker.py chooses it before this module is imported, and serves the
sum of every process's counts with `serve_multiprocess`. Each work horse leaves its own files;
before each scrape the files of horses that have exited are added into one archive file and
deleted, so the directory does not grow with every job.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)

# Seconds: from a cache hit (sub-millisecond) to a 50 MB upload or an Argon2id unlock.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# -- RPCs (runtime/interceptors.py, every service) ---------------------------------------
RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (streams: until the stream ends).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS,
)

# -- Readiness (runtime/health.py, every service) ----------------------------------------
READY = Gauge(
    "contextcache_ready",
    "1 while the service reports SERVING (its required dependencies pass), else 0.",
    ["service"],
    multiprocess_mode="max",
)
DEPENDENCY_UP = Gauge(
    "contextcache_dependency_up",
    "1 while the dependency's last check passed, else 0 (disabled dependencies absent).",
    ["service", "dependency", "type"],
    multiprocess_mode="max",
)
DEPENDENCY_CHECK_SECONDS = Gauge(
    "contextcache_dependency_check_seconds",
    "Duration of the dependency's last check.",
    ["service", "dependency"],
    multiprocess_mode="max",
)

# -- Ingestion (services/ingest) ---------------------------------------------------------
DOCUMENTS = Gauge(
    "contextcache_documents",
    "Documents of every project, by status (read from the ingest database).",
    ["status"],
    multiprocess_mode="max",
)
DOCUMENTS_OLDEST_AGE = Gauge(
    "contextcache_documents_oldest_age_seconds",
    "Age of the oldest document still queued or processing (0 when there is none).",
    ["status"],
    multiprocess_mode="max",
)
INGEST_QUEUE_DEPTH = Gauge(
    "contextcache_ingest_queue_depth",
    "Jobs waiting in the ingest queue (RQ with REDIS_URL, else in-process tasks).",
    multiprocess_mode="max",
)
CHUNKS_EMBEDDED = Counter(
    "contextcache_ingest_chunks_embedded_total",
    "Chunks embedded by the model during ingestion (rate() gives chunks per second).",
)
CHUNKS_REUSED = Counter(
    "contextcache_ingest_chunks_reused_total",
    "Chunks whose embedding was reused from an identical chunk of the same project.",
)
INGEST_JOBS = Counter(
    "contextcache_ingest_jobs_total",
    "Ingestion runs of a document, by outcome.",
    ["outcome"],
)

# -- Embeddings (retrieval/embeddings.py: ingestion and queries) ------------------------
EMBEDDING_BATCH_SIZE = Histogram(
    "contextcache_embedding_batch_size",
    "Texts per forward pass of the embedding model.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
EMBEDDING_BATCH_SECONDS = Histogram(
    "contextcache_embedding_batch_seconds",
    "Duration of one forward pass of the embedding model.",
    buckets=LATENCY_BUCKETS,
)

# -- Query (services/query) --------------------------------------------------------------
INDEX_POINTS = Gauge(
    "contextcache_index_points",
    "Points (chunks) in the vector index, all projects together.",
    multiprocess_mode="max",
)
INDEX_SEARCH_SECONDS = Histogram(
    "contextcache_index_search_seconds",
    "Duration of one search of the vector index, by retrieval mode.",
    ["mode"],
    buckets=LATENCY_BUCKETS,
)
QUERY_CACHE = Counter(
    "contextcache_query_cache_requests_total",
    "Query cache lookups, by result (hit or miss; none without Redis).",
    ["result"],
)

# -- Rate limiting (services/ratelimit) --------------------------------------------------
RATELIMIT_DECISIONS = Counter(
    "contextcache_ratelimit_decisions_total",
    "ShouldRateLimit answers, by decision and by where the counters were (redis, memory).",
    ["decision", "store"],
)
RATELIMIT_MEMORY_FALLBACK = Gauge(
    "contextcache_ratelimit_memory_fallback",
    "1 while the rate limit service counts in memory because Redis is unavailable.",
    multiprocess_mode="max",
)

# -- Crypto (services/crypto) ------------------------------------------------------------
KEYRING_OPEN_SECONDS = Histogram(
    "contextcache_crypto_unlock_seconds",
    "Duration of opening a keyring with a passphrase (Argon2id and unwrapping).",
    buckets=LATENCY_BUCKETS,
)
PASSPHRASE_FAILURES = Counter(
    "contextcache_crypto_passphrase_failures_total",
    "Keyrings not opened because the passphrase was wrong (a count; nothing else).",
)


def serve(port: int, host: str) -> object | None:
    """Serves this process's registry on http://host:port/metrics in a thread; the server
    (for `stop`), or None when the port cannot be taken (logged: metrics are missing, the
    service still runs, and Prometheus shows the target down)."""
    return _serve(port, host, prometheus_client.REGISTRY)


def _serve(port: int, host: str, registry: CollectorRegistry) -> object | None:
    try:
        server, _thread = prometheus_client.start_http_server(port, host, registry=registry)
    except OSError as error:
        log.error("metrics not served: cannot listen on %s:%d (%s)", host, port, error)
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def stop(server: object | None) -> None:
    if server is not None:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


def serve_multiprocess(port: int, host: str) -> object | None:
    """Serves the sum of every process's files in PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    registry.register(_CompactingCollector(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
    return _serve(port, host, registry)


class _CompactingCollector:
    """prometheus_client's MultiProcessCollector, after compacting the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._collector = multiprocess.MultiProcessCollector(None, str(directory))

    def collect(self):  # type: ignore[no-untyped-def]
        compact(self.directory)
        return self._collector.collect()


_compacting = threading.Lock()
ARCHIVE = "archive"  # in place of a pid in the archive files' names


# File prefix → how the values of processes that exited combine: counters and histograms
# only grow (a sum loses nothing); every gauge here is multiprocess_mode="max".
_COMBINE = {"counter": "sum", "histogram": "sum", "gauge_max": "max"}


def compact(directory: Path) -> int:
    """Combines the files of processes that have exited into `<prefix>_archive.db` and
    deletes them; returns how many files went. A forked work horse has files of every type
    (prometheus_client reopens every value in a new process), one set per job."""
    merged = 0
    with _compacting:
        for prefix, combine in _COMBINE.items():
            archive = directory / f"{prefix}_{ARCHIVE}.db"
            dead = [
                path
                for path in directory.glob(f"{prefix}_*.db")
                if path != archive
                and path.stem.count("_") == prefix.count("_") + 1
                and not _alive(path.stem.rpartition("_")[2])
            ]
            if not dead:
                continue
            values: dict[str, float] = {}
            for path in ([archive] if archive.exists() else []) + dead:
                for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                    if key not in values:
                        values[key] = value
                    elif combine == "sum":
                        values[key] += value
                    else:
                        values[key] = max(values[key], value)
            target = MmapedDict(str(archive))
            try:
                for key, value in values.items():
                    target.write_value(key, value, 0.0)
            finally:
                target.close()
            for path in dead:
                path.unlink()
            merged += len(dead)
    return merged


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not a process's file: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
