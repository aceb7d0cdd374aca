"""A Prometheus configuration for a ContextCache deployment on one host: one scrape job per
process (the four services, the rate limit service, the worker, Envoy's stats listener) and
the alert rules of monitoring/alerts.yaml.

`make run` writes it to DATA_DIR/prometheus.yml for the stack it started (runtime/stack.py);
`python -m runtime.monitoring` prints the one for the default ports. Kubernetes scrapes by
pod annotations instead (k8s/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from runtime.config import DEFAULT_METRICS_PORTS, REPO_ROOT, Settings, load_settings

MONITORING = REPO_ROOT / "monitoring"
ALERT_RULES = MONITORING / "alerts.yaml"
ENVOY_STATS_PATH = "/stats/prometheus"


def default_targets(settings: Settings) -> dict[str, str]:
    """Each process's metrics address on the default ports (`python -m services.<name>`);
    the worker runs only with REDIS_URL."""
    targets = {name: f"127.0.0.1:{port}" for name, port in DEFAULT_METRICS_PORTS.items()}
    if not settings.redis_url:
        del targets["worker"]
    if settings.gateway_stats_port:
        targets["envoy"] = f"127.0.0.1:{settings.gateway_stats_port}"
    return targets


def prometheus_config(
    targets: Mapping[str, str],
    *,
    rules: tuple[Path, ...] = (ALERT_RULES,),
    interval: str = "15s",
) -> dict[str, object]:
    """The configuration as a dict (yaml.safe_dump it): job = process name, instance = its
    address; Envoy is scraped on its stats path."""
    jobs = []
    for name, address in targets.items():
        job: dict[str, object] = {"job_name": name, "static_configs": [{"targets": [address]}]}
        if name == "envoy":
            job["metrics_path"] = ENVOY_STATS_PATH
        jobs.append(job)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": jobs,
    }


def write_prometheus_config(path: Path, targets: Mapping[str, str], **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(prometheus_config(targets, **options), sort_keys=False))  # type: ignore[arg-type]
    return path


def main() -> None:
    print(yaml.safe_dump(prometheus_config(default_targets(load_settings())), sort_keys=False))


if __name__ == "__main__":
    main()
