"""The alert rules: valid for Prometheus, their unit tests pass under `promtool test rules`,
and the copy Kubernetes loads is the same file."""

from __future__ import annotations

import os
import subprocess
import sys

from runtime.config import REPO_ROOT
from runtime.monitoring import ALERT_RULES, MONITORING


def test_the_rules_are_valid(promtool):
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test():
    import yaml

    rules = yaml.safe_load(ALERT_RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_kubernetes_loads_the_same_rules():
    copy = REPO_ROOT / "k8s" / "prometheus-alerts.yaml"
    assert copy.read_text() == ALERT_RULES.read_text(), (
        "k8s/prometheus-alerts.yaml differs from monitoring/alerts.yaml: copy it again"
    )


def test_the_printed_configuration_passes_promtool(promtool, tmp_path):
    """`python -m runtime.monitoring`: the default ports, with the worker only with Redis."""
    for redis, jobs in ((None, 6), ("redis://127.0.0.1:6379/0", 7)):
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        if redis:
            env["REDIS_URL"] = redis
        printed = subprocess.run(
            [sys.executable, "-m", "runtime.monitoring"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        config = tmp_path / f"prometheus-{jobs}.yml"
        config.write_text(printed)
        checked = subprocess.run(
            [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert printed.count("job_name:") == jobs
        assert "metrics_path: /stats/prometheus" in printed
