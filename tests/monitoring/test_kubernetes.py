"""Kubernetes: every ContextCache process is scraped by pod annotation on the metrics port the
configuration gives it, and the alert rules ship as a ConfigMap."""

from __future__ import annotations

import subprocess

import yaml

from runtime.config import REPO_ROOT
from runtime.monitoring import ALERT_RULES
from runtime.network_policies import METRICS_PORT

SCRAPED = {"projects", "ingest", "query", "crypto", "ratelimit", "ingest-worker"}
ENVOY_STATS = 9090  # GATEWAY_STATS_PORT of k8s/envoy.yaml


def built() -> list[dict]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(REPO_ROOT / "k8s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_every_process_is_scraped_on_its_metrics_port():
    documents = built()
    config = next(
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "contextcache-config"
    )
    assert config["data"]["METRICS_PORT"] == str(METRICS_PORT)
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert SCRAPED <= set(deployments)
    for name in SCRAPED:
        template = deployments[name]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(METRICS_PORT), name
        assert annotations["prometheus.io/path"] == "/metrics", name
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", ())}
        assert ports["metrics"] == METRICS_PORT, name
        assert {"configMapRef": {"name": "contextcache-config"}} in container["envFrom"], name


def test_envoy_is_scraped_on_its_stats_listener():
    envoy = next(
        d for d in built() if d["kind"] == "Deployment" and d["metadata"]["name"] == "envoy"
    )
    template = envoy["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ENVOY_STATS)
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    (container,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": ENVOY_STATS} in container["ports"]
    config = yaml.safe_load((REPO_ROOT / "k8s" / "envoy.yaml").read_text())
    (stats,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "stats"]
    assert stats["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": ENVOY_STATS}
    # The admin interface itself stays on the pod's loopback.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_alert_rules_ship_as_a_config_map():
    (rules,) = [
        d
        for d in built()
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"].startswith("contextcache-prometheus-rules")
    ]
    assert rules["data"]["contextcache-alerts.yaml"] == ALERT_RULES.read_text()
    assert rules["metadata"]["labels"]["app.kubernetes.io/component"] == "prometheus-rules"
