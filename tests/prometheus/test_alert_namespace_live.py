"""A real Prometheus, scraping the operator's metrics with the demo's scrape config, names the session's namespace.

The operator runs in ``pqmpc-system`` and the scrape target carries that namespace (as a
ServiceMonitor or the demo's static config attach it); a session in ``default`` fails. The
firing ``PqmpcSessionFailed`` alert must say ``MPCSession default/hqs``: without
``honor_labels`` the target's namespace would overwrite the series' own (issue #17).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from pqmpc_local.processes import free_port
from pqmpc_local.prometheus_config import prometheus_config
from pqmpc_local.pytest_plugin import wait_for
from pqmpc_operator.metrics import OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml"


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - localhost only
        return json.loads(response.read())


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[str, OperatorMetrics]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (make prometheus)")
    metrics = OperatorMetrics()
    metrics_port = free_port()
    server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    config = prometheus_config(operator_target=f"127.0.0.1:{metrics_port}",
                               operator_labels={"namespace": "pqmpc-system", "pod": "pqmpc-operator-0"},
                               rule_files=[str(ALERTS)], interval="1s")
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_failed_sessions_alert_names_its_own_namespace(prometheus: tuple[str, OperatorMetrics]) -> None:
    base, metrics = prometheus
    metrics.observe_session("default", "hqs", "Failed")
    metrics.observe_session("default", "ok", "Computing")

    def firing() -> list[dict[str, Any]]:
        try:
            alerts = get(f"{base}/api/v1/alerts")["data"]["alerts"]
        except OSError:
            return []  # Prometheus still starting
        return [a for a in alerts if a["labels"].get("alertname") == "PqmpcSessionFailed" and a["state"] == "firing"]

    (alert,) = wait_for("PqmpcSessionFailed to fire", firing, timeout=120)
    assert alert["labels"]["namespace"] == "default" and alert["labels"]["session"] == "hqs"
    assert alert["annotations"]["summary"] == "MPCSession default/hqs failed"
    assert "-n default" in alert["annotations"]["description"]
    # The target's namespace stays on the operator's own series that name none.
    query = urllib.parse.urlencode({"query": "pqmpc_session_phase{phase='Failed'} == 1"})
    series = get(f"{base}/api/v1/query?{query}")["data"]["result"]
    assert [(s["metric"]["namespace"], "exported_namespace" in s["metric"]) for s in series] == [("default", False)]
