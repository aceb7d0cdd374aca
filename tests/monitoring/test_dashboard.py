"""The Grafana dashboard (monitoring/grafana-dashboard.json): every query names metrics the
services export (runtime/metrics.py), Envoy's stats, or Prometheus' own `up`; the live
Prometheus test (test_prometheus.py) then finds a series for each of them."""

from __future__ import annotations

import json

from runtime.monitoring import MONITORING
from tests.monitoring.promql import BUILTIN, exported_families, exported_names, metric_names

DASHBOARD = MONITORING / "grafana-dashboard.json"


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_metrics() -> set[str]:
    return {name for _, expr in dashboard_queries() for name in metric_names(expr)}


def test_metric_names_are_read_from_promql():
    assert metric_names(
        "histogram_quantile(0.95, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_"
        'bucket{grpc_type="unary", x=~"a|b"}[$__rate_interval]))) / on (job) up offset 5m'
    ) == {"grpc_server_handling_seconds_bucket", "up"}
    assert metric_names("max(contextcache_ready) > 0.5e3 and bool 1") == {"contextcache_ready"}


def test_every_panel_queries_something():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
    for title, expr in dashboard_queries():
        assert metric_names(expr), f"{title}: {expr}"


def test_every_query_names_an_exported_metric():
    exported = exported_names()
    unknown = {
        (title, name)
        for title, expr in dashboard_queries()
        for name in metric_names(expr)
        if name not in exported and name not in BUILTIN and not name.startswith("envoy_")
    }
    assert not unknown, f"the dashboard queries metrics nothing exports: {sorted(unknown)}"


def test_every_metric_of_the_services_is_on_the_dashboard():
    shown = dashboard_metrics()
    missing = {
        family
        for family, names in exported_families().items()
        if family.startswith(("contextcache_", "grpc_server_")) and not names & shown
    }
    assert not missing, f"metrics missing from the dashboard: {sorted(missing)}"
