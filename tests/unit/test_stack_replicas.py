"""The scaled topology's configuration: `--replicas N` gives each replicated service N
children on distinct ports, every address setting lists them all, Envoy gets one endpoint per
replica, and a service's channel balances over them. (tests/faults/test_replicas.py runs it.)"""

from __future__ import annotations

import json

import pytest
import yaml

from runtime.clients import channel_target
from runtime.config import Settings, replica_addresses
from runtime.gateway import lb_endpoints, render_text
from runtime.stack import REPLICATED, children, replicas_from, replicated


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
    }
    values.update(overrides)
    return Settings(**values)


def test_each_replicated_service_gets_two_children_on_their_own_ports(tmp_path):
    scaled = replicated(settings(data_dir=tmp_path), 2)
    for service in REPLICATED:
        replicas = replica_addresses(getattr(scaled, f"{service.value}_addr"))
        assert len(set(replicas)) == 2
    # Query and the rate-limit service stay single.
    assert replica_addresses(scaled.query_addr) == ["127.0.0.1:50053"]
    names = [c.name for c in children(scaled, workers=2)]
    for name in ("projects", "projects-2", "ingest", "ingest-2", "crypto", "crypto-2"):
        assert name in names
    assert names.count("query") == 1 and "query-2" not in names
    assert {"worker", "worker-2"} <= set(names)
    ports = [c.port for c in children(scaled, workers=2) if c.port is not None]
    metrics = [c.metrics_port for c in children(scaled, workers=2) if c.metrics_port]
    assert len(ports) == len(set(ports)) and len(metrics) == len(set(metrics))


def test_replicas_need_the_shared_database_and_redis(tmp_path):
    with pytest.raises(ValueError, match="DATABASE_URL and REDIS_URL"):
        replicated(settings(data_dir=tmp_path, redis_url=None), 2)
    assert replicated(settings(data_dir=tmp_path, redis_url=None), 1).ingest_addr == (
        "127.0.0.1:50052"
    )


def test_replicas_option_and_environment(monkeypatch):
    monkeypatch.delenv("STACK_REPLICAS", raising=False)
    assert replicas_from([]) == 1
    assert replicas_from(["--replicas", "2"]) == 2
    monkeypatch.setenv("STACK_REPLICAS", "3")
    assert replicas_from([]) == 3
    with pytest.raises(SystemExit):
        replicas_from(["--replicas", "0"])


def test_envoy_gets_one_endpoint_per_replica():
    endpoints = json.loads(lb_endpoints("127.0.0.1:50052,127.0.0.1:50062"))
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "127.0.0.1", "port_value": 50052},
        {"address": "127.0.0.1", "port_value": 50062},
    ]
    rendered = yaml.safe_load(render_text(settings(ingest_addr="127.0.0.1:50052,127.0.0.1:50062")))
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    for name, expected in (("ingest", 2), ("ingest_uploads", 2), ("projects", 1)):
        (locality,) = clusters[name]["load_assignment"]["endpoints"]
        assert len(locality["lb_endpoints"]) == expected, name


def test_a_channel_to_replicas_balances_over_them():
    options: list[tuple[str, object]] = []
    assert channel_target("127.0.0.1:50054", options) == "127.0.0.1:50054"
    assert options == []
    assert channel_target("127.0.0.1:50054,127.0.0.1:50064", options) == (
        "ipv4:127.0.0.1:50054,127.0.0.1:50064"
    )
    assert ("grpc.lb_policy_name", "round_robin") in options


def test_an_address_list_with_a_bad_replica_is_refused():
    with pytest.raises(ValueError, match="host:port"):
        settings(crypto_addr="127.0.0.1:50054,nowhere")
