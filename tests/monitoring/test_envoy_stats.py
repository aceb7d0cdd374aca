"""Envoy's stats listener: GET /stats/prometheus from the admin interface, and nothing else of
it (the admin port, with its mutating endpoints, stays on 127.0.0.1)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from runtime.ports import free_port
from tests.gateway.conftest import gateway

pytestmark = pytest.mark.envoy


def status(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_the_stats_listener_serves_prometheus_stats_only(tmp_path):
    port = free_port()
    with gateway(tmp_path, wait_healthy=(), gateway_stats_port=port) as gw:
        base = f"http://127.0.0.1:{port}"
        code, body = status(f"{base}/stats/prometheus")
        assert code == 200
        assert "# TYPE envoy_cluster_upstream_rq_total counter" in body
        assert 'envoy_cluster_name="projects"' in body
        for path, method in (
            ("/quitquitquit", "POST"),
            ("/clusters", "GET"),
            ("/config_dump", "GET"),
            ("/stats", "GET"),
            ("/stats/prometheus", "POST"),
            ("/runtime_modify", "POST"),
        ):
            assert status(f"{base}{path}", method)[0] == 404, (path, method)
        assert gw.process.alive()
        assert gw.admin("/ready").strip() == "LIVE"
