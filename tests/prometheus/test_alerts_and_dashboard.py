"""Prometheus alert rules and the Grafana dashboard, checked with promtool.

Covers: ``promtool check rules`` and the ``promtool test rules`` unit tests of
``deploy/prometheus/pqmpc-alerts.yaml`` (and that those tests notice a changed rule);
every alert's labels and annotations; every dashboard query parsed by promtool as a
recording rule; every metric the alerts and the dashboard use is one the operator or the
node exports today, or one listed in ``ASSUMED`` (not exported yet: the lead exports it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pqmpc_node.metrics import NodeMetrics
from pqmpc_operator.metrics import OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml"
UNIT_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yaml"))
DASHBOARD = REPO / "helm" / "pqmpc" / "files" / "pqmpc-dashboard.json"

# Metrics the alerts and the dashboard use that nothing exports yet (name: who should).
ASSUMED = {
    "pqmpc_node_anomaly_score": "operator; gauge 0..1 with labels namespace, pool, node",
    "pqmpc_node_quarantined": "operator; gauge 0/1 with labels namespace, pool, node",
    "pqmpc_session_phase": "operator; gauge 1 for the current phase, labels namespace, session, phase",
}
# Grafana's variables, replaced by values promtool accepts.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$namespace": ".*"}
METRIC = re.compile(r"\bpqmpc_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found; install it with `make prometheus` (scripts/install-prometheus.sh)")
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, Grafana variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            found.append((panel["title"], expr))
    return found


def exported_metric_names() -> set[str]:
    """Sample names the operator and the node expose today (counters with ``_total`` etc.)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    op = OperatorMetrics()
    node = NodeMetrics(CollectorRegistry(), refusals=lambda: {"wrong_ca": 1})
    for registry in (op.registry, node.registry):
        # Labelled metrics without children expose no samples: derive the names from the type.
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    result = run(promtool, "test", "rules", *map(str, UNIT_TESTS), cwd=UNIT_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_notice_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    # The unit tests pin behaviour: a looser MAC-check rule must make them fail.
    (tmp_path / "tests").mkdir()
    (tmp_path / "pqmpc-alerts.yaml").write_text(
        ALERTS.read_text().replace("increase(pqmpc_node_mac_check_failures_total[10m]) > 0",
                                   "increase(pqmpc_node_mac_check_failures_total[10m]) > 5"))
    for test in UNIT_TESTS:
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = run(promtool, "test", "rules", *(t.name for t in UNIT_TESTS), cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "PqmpcMacCheckFailures" in result.stdout + result.stderr


def test_every_alert_is_tested_and_documented() -> None:
    tested = {case["alertname"] for path in UNIT_TESTS
              for test in yaml.safe_load(path.read_text())["tests"] for case in test.get("alert_rule_test") or []}
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Pqmpc[A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert name in tested, f"{name} has no promtool unit test"


def test_alerts_cover_the_required_signals() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for metric in ("pqmpc_node_anomaly_score", "pqmpc_node_mac_check_failures_total",
                   "pqmpc_node_handshake_failures_total", "pqmpc_node_kem_key_age_seconds",
                   "pqmpc_node_sessions_total", "pqmpc_node_peer_link_info"):
        assert metric in exprs, metric


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "pqmpc-dashboard", "rules": [
        {"record": f"pqmpc_dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_refuses_a_broken_query(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (le (rate(pqmpc_node_round_latency_seconds_bucket[5m]))"}]}]}))
    assert run(promtool, "check", "rules", str(path)).returncode != 0


def test_dashboard_is_sidecar_ready() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "pqmpc-overview"
    assert "id" not in dashboard  # Grafana assigns ids; a fixed one clashes on import
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert "datasource" in variables


def test_metrics_used_are_exported_or_listed_as_assumed() -> None:
    exported = exported_metric_names()
    used_by_alerts = set(METRIC.findall(ALERTS.read_text()))
    used_by_dashboard = {m for _, expr in dashboard_exprs() for m in METRIC.findall(expr)}
    used = used_by_alerts | used_by_dashboard
    unknown = sorted(used - exported - set(ASSUMED))
    assert not unknown, f"metrics neither exported nor listed in ASSUMED: {unknown}"
    unused = sorted(set(ASSUMED) - used)
    assert not unused, f"ASSUMED lists metrics nothing uses: {unused}"
    # Sanity: the exporter scan sees real names (a typo-checking test that sees nothing checks nothing).
    assert {"pqmpc_node_handshake_failures_total", "pqmpc_pool_replicas",
            "pqmpc_node_round_latency_seconds_bucket"} <= exported
