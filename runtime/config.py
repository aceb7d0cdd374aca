"""Configuration from environment variables only (12-factor), validated at start.

A bad value stops the process with a message naming the variable; secrets are never
printed back.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceName(enum.StrEnum):
    PROJECTS = "projects"
    INGEST = "ingest"
    QUERY = "query"
    CRYPTO = "crypto"
    RATELIMIT = "ratelimit"


DEFAULT_PORTS = {
    ServiceName.PROJECTS: 50051,
    ServiceName.INGEST: 50052,
    ServiceName.QUERY: 50053,
    ServiceName.CRYPTO: 50054,
    ServiceName.RATELIMIT: 8081,
}

# Prometheus metrics ports (runtime/metrics.py) of `python -m services.<name>` and the worker
# when METRICS_PORT is unset; one machine can run the whole stack on them (`make run`).
DEFAULT_METRICS_PORTS = {
    ServiceName.PROJECTS.value: 9101,
    ServiceName.INGEST.value: 9102,
    ServiceName.QUERY.value: 9103,
    ServiceName.CRYPTO.value: 9104,
    ServiceName.RATELIMIT.value: 9105,
    "worker": 9106,
    "envoy": 9107,  # GATEWAY_STATS_PORT under `make run`
}


def replica_addresses(address: str) -> list[str]:
    """The replicas of a service address setting: `host:port`, or several separated by commas
    (`python -m runtime.stack --replicas 2`); callers balance their calls over them."""
    return [part.strip() for part in address.split(",") if part.strip()]


class Settings(BaseSettings):
    """Every setting of every service; each service reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    environment: Literal["development", "test", "staging", "production"] = "development"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Where this process listens; PORT overrides the service's default port.
    listen_host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    # A plaintext listener serving only the gRPC health service, for Kubernetes' gRPC probes
    # (which cannot present a client certificate). Unset: no such listener.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # Prometheus metrics in plaintext on http://LISTEN_HOST:METRICS_PORT/metrics. Unset: the
    # process's entry in DEFAULT_METRICS_PORTS (servers a test starts in-process: none);
    # 0: no metrics listener.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Seconds between reads of the gauges that cost a query (documents by status, queue
    # depth, index points); about Prometheus' scrape interval.
    metrics_interval: float = Field(default=15.0, gt=0, le=3600)
    # Workload certificates: <TLS_DIR>/<identity>/{tls.crt,tls.key,ca.crt} (cert-manager's
    # Secret layout). Unset: DATA_DIR/tls, where a development CA is created outside
    # production. Every service port speaks mutual TLS.
    tls_dir: Path | None = None

    # Storage. Without DATABASE_URL each service uses its own SQLite file under DATA_DIR.
    data_dir: Path = REPO_ROOT / "var"
    database_url: str | None = None
    # Apply the service's migrations when it starts (Kubernetes runs a migration Job instead).
    migrate_on_start: bool = True
    redis_url: str | None = None
    qdrant_url: str | None = None
    qdrant_path: Path | None = None

    # Addresses of the other services (host:port; replicas: host:port,host:port).
    projects_addr: str = "127.0.0.1:50051"
    ingest_addr: str = "127.0.0.1:50052"
    query_addr: str = "127.0.0.1:50053"
    crypto_addr: str = "127.0.0.1:50054"
    ratelimit_addr: str = "127.0.0.1:8081"

    # Gateway (Envoy), rendered from envoy/envoy.yaml by runtime.gateway.
    # Browser origins allowed by CORS, comma-separated ("*" allows any origin).
    cors_origins: str = "http://localhost:3000,http://127.0.0.1:3000"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    gateway_admin_port: int = Field(default=9901, ge=1, le=65535)
    # Envoy's Prometheus stats (GET /stats/prometheus only) on GATEWAY_HOST, for scrapers
    # off the host (the admin port stays on 127.0.0.1). 0: any free port (`make run`: 9107).
    gateway_stats_port: int = Field(default=0, ge=0, le=65535)
    # Seconds between Envoy's gRPC health checks of each upstream.
    gateway_health_check_interval: float = Field(default=5.0, gt=0, le=300)
    # Envoy-wide token bucket (requests per second) that holds if the ratelimit service is down.
    gateway_local_rate_limit: int = Field(default=200, ge=1)
    # Envoy's overload manager: the heap it may use (MiB; keep it under the container's memory
    # limit) and the downstream connections it accepts; IngestDocument uploads at once.
    gateway_max_heap_mb: int = Field(default=384, ge=64, le=65536)
    gateway_max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    gateway_max_concurrent_uploads: int = Field(default=16, ge=1, le=10_000)
    # The descriptor set Envoy's gRPC-JSON transcoder reads (`make protos` builds it; in
    # Kubernetes the envoy-config ConfigMap ships it, k8s/README.md).
    gateway_descriptor: Path = REPO_ROOT / "build" / "gateway.binpb"

    # Web console (runtime/console.py): its port (PORT overrides), the built app it serves and
    # the gateway URL it gives browsers ("/" = same origin; unset = the gateway port on the
    # host name the browser used for the console).
    console_port: int = Field(default=3000, ge=1, le=65535)
    console_dist: Path = REPO_ROOT / "web" / "dist"
    console_gateway_url: str | None = None

    # Rate limiting: the rules file (envoyproxy/ratelimit format), the Redis key prefix and
    # how often, in seconds, to try Redis again while counting in memory.
    ratelimit_rules: Path = REPO_ROOT / "envoy" / "ratelimit.yaml"
    ratelimit_key_prefix: str = Field(default="ratelimit", min_length=1)
    ratelimit_redis_retry: float = Field(default=5.0, gt=0, le=300)

    # Monitoring.
    sentry_dsn: str | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    otel_exporter_otlp_endpoint: str | None = None

    # Crypto only: the key that seals and signs tokens (base64 of 32 bytes; required in
    # production), and keys rotated out whose tokens stay valid (comma-separated).
    token_sealing_key: str | None = Field(default=None, repr=False)
    token_sealing_key_previous: str | None = Field(default=None, repr=False)

    # Ingest: allow fetching URLs on private/loopback addresses (tests and local demos only).
    url_fetch_allow_private: bool = False
    # Ingest: a queued or processing document whose lease (seconds) lapses is run again, up
    # to INGEST_MAX_ATTEMPTS times; the reaper looks for such documents every interval.
    ingest_lease_seconds: float = Field(default=60.0, ge=1, le=3600)
    ingest_max_attempts: int = Field(default=3, ge=1, le=20)
    ingest_reaper_interval: float = Field(default=10.0, gt=0, le=3600)
    # The RQ queue background ingestion jobs go to (with REDIS_URL).
    ingest_queue: str = Field(default="contextcache-ingest", min_length=1, max_length=100)
    # Without REDIS_URL, background documents run in the ingest process, this many at once;
    # the rest wait their turn (their lease kept). Two keep the embedding workers busy, and
    # a bulk of uploads then cannot crowd out the calls each document makes to crypto and
    # query until they pass their deadlines.
    ingest_background_jobs: int = Field(default=2, ge=1, le=64)

    # Query: weights of the dense and keyword rankings in hybrid fusion (see
    # services.query.index.fusion.HYBRID_FUSION).
    hybrid_dense_weight: float = Field(default=1.0, ge=0, le=10)
    hybrid_keyword_weight: float = Field(default=1.5, ge=0, le=10)

    # Projects and ingest: how often the audit relay retries delivering outbox events to
    # crypto (seconds; events are also delivered right after the change that records them).
    audit_relay_interval: float = Field(default=1.0, gt=0, le=300)

    # Calls one server runs at once (streams included; the plaintext probe port is apart):
    # beyond it a call is refused at once with RESOURCE_EXHAUSTED, never queued unboundedly.
    max_concurrent_rpcs: int = Field(default=256, ge=1, le=100_000)
    # Projects: the largest project bundle ImportProject takes (bytes), and where it is held
    # while it is verified (a file per import, removed when the import ends).
    import_max_bytes: int = Field(default=4 * 1024**3, ge=1024, le=1024**4)
    # Ingest: WatchDocument streams one unlock token may hold open at once.
    watch_streams_per_token: int = Field(default=32, ge=1, le=1000)

    # How often readiness re-checks dependencies, in seconds.
    health_check_interval: float = Field(default=5.0, gt=0, le=300)
    # How long SIGTERM waits for in-flight calls, in seconds.
    shutdown_grace: float = Field(default=10.0, ge=0, le=300)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        """The forms a user will paste: postgres://, postgresql://, postgresql+psycopg://
        (psycopg 3 is the driver) and sqlite://; other drivers are refused here, with a
        message, rather than failing with an import error at start."""
        if not value:
            return value
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme in ("postgres", "postgresql", "postgresql+psycopg", "sqlite", "sqlite+aiosqlite"):
            return value
        if scheme.startswith(("postgresql+", "postgres+")):
            raise ValueError(
                f"the {scheme.partition('+')[2]} driver is not supported: use postgresql:// "
                "(ContextCache connects with psycopg 3)"
            )
        raise ValueError("must be a postgresql:// (or postgres://) or sqlite:// URL")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("projects_addr", "ingest_addr", "query_addr", "crypto_addr", "ratelimit_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        for replica in replica_addresses(value):
            host, _, port = replica.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("must be host:port (or host:port,host:port for replicas)")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def listen_port(self, service: ServiceName) -> int:
        return self.port or DEFAULT_PORTS[service]

    def metrics_port_of(self, process: str) -> int:
        """METRICS_PORT, else the process's default (0: no metrics listener)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return DEFAULT_METRICS_PORTS[process]

    @property
    def hybrid_weights(self) -> tuple[float, float]:
        return (self.hybrid_dense_weight, self.hybrid_keyword_weight)

    @property
    def tls_root(self) -> Path:
        return self.tls_dir or self.data_dir / "tls"

    @property
    def index_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_or_exit(kind: type[SettingsT], title: str = "configuration") -> SettingsT:
    """Reads settings from the environment; exits with a message naming each bad variable."""
    try:
        return kind()
    except ValidationError as error:
        lines = [f"ContextCache {title} error:"]
        for problem in error.errors():
            variable = "_".join(str(part) for part in problem["loc"]).upper() or "(settings)"
            lines.append(f"  {variable}: {problem['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def load_settings() -> Settings:
    return settings_or_exit(Settings)
