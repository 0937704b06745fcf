"""The Prometheus configuration the local demo and the tests scrape pqmpc with.

One place for the scrape jobs so the demo and the tests agree with the chart's
ServiceMonitor: the operator job has ``honor_labels: true``. The operator's series carry
their own ``namespace`` label (the session's or pool's namespace); without
``honor_labels`` Prometheus overwrites it with the target's namespace (the operator's
own, ``pqmpc-system``) and keeps the real one as ``exported_namespace``, so an alert
would name ``pqmpc-system/hqs`` for a session in ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["prometheus_config"]


def prometheus_config(
    *,
    operator_target: str,
    node_targets: Sequence[tuple[str, Mapping[str, str]]] = (),
    operator_labels: Mapping[str, str] | None = None,
    rule_files: Sequence[str] = (),
    interval: str = "2s",
) -> dict[str, Any]:
    """A ``prometheus.yml`` document (JSON is YAML) scraping the operator and the nodes.

    ``node_targets``: (``host:port`` of a node's plain-HTTP metrics port, target labels).
    ``operator_labels``: target labels of the operator (e.g. its namespace and pod); the
    operator's own series labels win over them (``honor_labels``).
    """
    node_jobs: list[dict[str, Any]] = [{"targets": [target], "labels": dict(labels)} for target, labels in node_targets]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": "pqmpc-operator", "honor_labels": True,
             "static_configs": [{"targets": [operator_target], "labels": dict(operator_labels or {})}]},
            {"job_name": "pqmpc-nodes", "static_configs": node_jobs},
        ],
    }
