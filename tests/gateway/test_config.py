"""The gateway configuration and the Kubernetes manifests are valid as shipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from runtime.config import REPO_ROOT, Settings
from runtime.gateway import envoy_command, render, render_text
from runtime.tls import ensure_dev_pki
from tests.gateway.conftest import free_port

pytestmark = pytest.mark.envoy
K8S = REPO_ROOT / "k8s"
# The settings k8s/envoy.yaml is rendered with (see k8s/README.md).
K8S_GATEWAY = {
    "gateway_host": "0.0.0.0",
    "cors_origins": "https://app.contextcache.example",
    "projects_addr": "projects.contextcache.svc.cluster.local:50051",
    "ingest_addr": "ingest.contextcache.svc.cluster.local:50052",
    "query_addr": "query.contextcache.svc.cluster.local:50053",
    "crypto_addr": "crypto.contextcache.svc.cluster.local:50054",
    "ratelimit_addr": "ratelimit.contextcache.svc.cluster.local:8081",
    "gateway_health_check_interval": 5,
    "gateway_local_rate_limit": 500,
    "gateway_stats_port": 9090,
    "environment": "production",
    "tls_dir": "/etc/contextcache/tls",
    # Shipped beside envoy.yaml in the envoy-config ConfigMap (k8s/gateway.binpb).
    "gateway_descriptor": "/etc/envoy/gateway.binpb",
}


def validate_envoy(path: Path) -> subprocess.CompletedProcess:
    command = [*envoy_command(path), "--mode", "validate"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_rendered_config_passes_envoy_validate(tmp_path):
    settings = Settings(gateway_port=free_port(), gateway_admin_port=free_port(), cors_origins="*")
    result = validate_envoy(render(settings, tmp_path / "envoy.yaml"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout + result.stderr


def test_rendering_fills_every_placeholder(tmp_path):
    text = render_text(Settings(cors_origins="https://a.example, https://b.example"))
    assert "${" not in text
    config = yaml.safe_load(text)
    vhost = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [
        {"exact": "https://a.example"},
        {"exact": "https://b.example"},
    ]


def test_kubernetes_envoy_config_is_the_rendered_template(tmp_path):
    rendered = render_text(Settings(**K8S_GATEWAY))
    assert (K8S / "envoy.yaml").read_text() == rendered, (
        "k8s/envoy.yaml is stale: regenerate it as k8s/README.md says"
    )
    # Validated with certificates where the pod mounts its Secret (a development CA here).
    ensure_dev_pki(tmp_path / "tls")
    local = tmp_path / "envoy.yaml"
    local.write_text(
        rendered.replace("/etc/contextcache/tls", str(tmp_path / "tls")).replace(
            "/etc/envoy/gateway.binpb", str(K8S / "gateway.binpb")
        )
    )
    result = validate_envoy(local)
    assert result.returncode == 0, result.stderr + result.stdout


def test_kubernetes_ships_the_transcoders_descriptor_of_these_protos():
    """k8s/gateway.binpb (the envoy-config ConfigMap's binary key) is `make protos`' output."""
    shipped, built = FileDescriptorSet(), FileDescriptorSet()
    shipped.ParseFromString((K8S / "gateway.binpb").read_bytes())
    built.ParseFromString(Settings().gateway_descriptor.read_bytes())
    assert shipped == built, (
        "k8s/gateway.binpb is stale: cp build/gateway.binpb k8s/ (see k8s/README.md)"
    )


def test_kustomization_builds_and_every_manifest_validates():
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    kinds = {doc["kind"] for doc in documents}
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "Job",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds
    for doc in documents:
        kubernetes_validate.validate(doc, "1.32", strict=True)
    deployments = [doc for doc in documents if doc["kind"] == "Deployment"]
    names = {d["metadata"]["name"] for d in deployments}
    assert {"projects", "ingest", "query", "crypto", "ingest-worker", "envoy", "ratelimit"} <= names
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"] and container["resources"]["requests"]
            if deployment["metadata"]["name"] in {"projects", "ingest", "query", "crypto"}:
                assert container["livenessProbe"]["grpc"]["service"] == "liveness"
                assert container["readinessProbe"]["grpc"]["service"].startswith("contextcache.v1.")


def test_kubernetes_rate_limit_rules_are_the_shipped_rules():
    shipped = (REPO_ROOT / "envoy" / "ratelimit.yaml").read_text()
    assert (K8S / "ratelimit-rules.yaml").read_text() == shipped


def test_network_policies_are_generated_from_the_caller_table_and_allow_exactly_its_paths():
    from runtime.callers import call_paths
    from runtime.network_policies import METRICS_POLICY, METRICS_PORT, POD_NAMES, render
    from runtime.protos import PUBLIC_METHODS

    assert (K8S / "network-policies.yaml").read_text() == render(), (
        "k8s/network-policies.yaml is stale: python -m runtime.network_policies > "
        "k8s/network-policies.yaml"
    )
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    deployments = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Deployment"}
    ports = {
        name: {
            port["containerPort"]
            for container in doc["spec"]["template"]["spec"]["containers"]
            for port in container.get("ports", ())
        }
        for name, doc in deployments.items()
    }
    allowed = set()
    for doc in documents:
        if doc["kind"] != "NetworkPolicy":
            continue
        if doc["metadata"]["name"] == METRICS_POLICY:
            # Prometheus' namespace, to the metrics port only (checked below).
            (rule,) = doc["spec"]["ingress"]
            assert rule["ports"] == [{"port": METRICS_PORT, "protocol": "TCP"}]
            assert [set(source) for source in rule["from"]] == [{"namespaceSelector"}]
            continue
        callee = doc["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in doc["spec"].get("ingress", ()):
            for source in rule.get("from", ()):
                for expression in source["podSelector"]["matchExpressions"]:
                    for caller in expression["values"]:
                        for port in rule["ports"]:
                            assert port["port"] in ports[callee], (callee, port)
                            allowed.add((caller, callee))
    wanted = {
        (POD_NAMES.get(p.caller, p.caller), POD_NAMES.get(p.callee, p.callee))
        for p in call_paths(PUBLIC_METHODS)
    }
    assert allowed == wanted
    # Background ingestion and deletion: the paths the last policies missed.
    assert {("ingest-worker", "query"), ("ingest-worker", "crypto"), ("projects", "query")} <= (
        allowed
    )
    # Only crypto is given the token sealing key.
    for name, doc in deployments.items():
        env = {
            e["name"]
            for c in doc["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", ())
        }
        assert ("TOKEN_SEALING_KEY" in env) == (name == "crypto"), name
