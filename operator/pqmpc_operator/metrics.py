"""Prometheus metrics of the operator, on a registry of its own (no global state).

Names follow ``pqmpc_<subsystem>_<what>_<unit>``; counters end in ``_total``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OperatorMetrics"]


class OperatorMetrics:
    """Reconcile counters and pool gauges, exported on the operator's metrics port."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "pqmpc_operator_reconciles_total", "Reconcile passes by resource kind and outcome.",
            ["kind", "outcome"], registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "pqmpc_operator_reconcile_errors_total", "Reconcile passes that could not finish, by reason.",
            ["reason"], registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "pqmpc_operator_reconcile_duration_seconds", "Wall time of one reconcile pass.",
            ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.pool_replicas = Gauge(
            "pqmpc_pool_replicas", "Node pods of a pool by state (existing, ready).",
            ["namespace", "pool", "state"], registry=self.registry,
        )
        self.pool_condition = Gauge(
            "pqmpc_pool_condition", "1 when the pool condition has the given status.",
            ["namespace", "pool", "condition", "status"], registry=self.registry,
        )

        self.bootstrap_requests = Counter(
            "pqmpc_operator_bootstrap_requests_total",
            "Node bootstrap requests (CSR + attestation token) by outcome: certified or the refusal reason.",
            ["outcome"], registry=self.registry,
        )
        self.placement_failures = Counter(
            "pqmpc_operator_placement_failures_total", "Placement attempts that found no valid placement, by reason.",
            ["reason"], registry=self.registry,
        )
        self.sessions_planned = Counter(
            "pqmpc_operator_sessions_planned_total",
            "Session plans delivered, by preprocessing provider (ot, prss: dealer-free; dealer: the operator deals).",
            ["preprocessing"], registry=self.registry,
        )
        self.session_phase_changes = Counter(
            "pqmpc_operator_session_transitions_total", "MPCSession phase transitions, by the phase entered.",
            ["phase"], registry=self.registry,
        )

        self.node_anomaly_score = Gauge(
            "pqmpc_node_anomaly_score", "Anomaly score of a node in [0, 1] (see the operator's anomaly module).",
            ["namespace", "pool", "node"], registry=self.registry,
        )
        self.node_quarantined = Gauge(
            "pqmpc_node_quarantined", "1 while a node is quarantined (no new placements).",
            ["namespace", "pool", "node"], registry=self.registry,
        )
        self.node_cert_expiry = Gauge(
            "pqmpc_operator_node_certificate_expiry_timestamp_seconds", "When a node's certificate expires (Unix time).",
            ["namespace", "pool", "node"], registry=self.registry,
        )
        self.node_kem_rotation = Gauge(
            "pqmpc_operator_node_kem_next_rotation_timestamp_seconds",
            "When a node's current KEM key rotates (Unix time).",
            ["namespace", "pool", "node"], registry=self.registry,
        )
        self.session_phase = Gauge(
            "pqmpc_session_phase", "1 for the phase an MPCSession is in.",
            ["namespace", "session", "phase"], registry=self.registry,
        )

    def observe_session(self, namespace: str, session: str, phase: str | None) -> None:
        """Set the session's phase series (all other phases to 0); None drops the session."""
        for p in ("Pending", "Placing", "Preprocessing", "AwaitingInputs", "Computing", "Succeeded", "Failed"):
            if phase is None:
                try:
                    self.session_phase.remove(namespace, session, p)
                except KeyError:
                    pass
            else:
                self.session_phase.labels(namespace, session, p).set(1 if p == phase else 0)

    def observe_pool(self, namespace: str, pool: str, status: Mapping[str, Any]) -> None:
        """Export the gauges of one pool's freshly computed status."""
        self.pool_replicas.labels(namespace, pool, "existing").set(status.get("replicas", 0))
        for node in status.get("nodes") or []:
            self.node_anomaly_score.labels(namespace, pool, node["name"]).set(float(node.get("anomalyScore", 0.0)))
            self.node_quarantined.labels(namespace, pool, node["name"]).set(1 if node.get("quarantined") else 0)
            if node.get("kemRotatesAt"):
                rot = _dt.datetime.strptime(node["kemRotatesAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
                self.node_kem_rotation.labels(namespace, pool, node["name"]).set(rot.timestamp())
            if node.get("certNotAfter"):
                when = _dt.datetime.strptime(node["certNotAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
                self.node_cert_expiry.labels(namespace, pool, node["name"]).set(when.timestamp())
        self.pool_replicas.labels(namespace, pool, "ready").set(status.get("readyReplicas", 0))
        for cond in status.get("conditions") or []:
            for value in ("True", "False", "Unknown"):
                self.pool_condition.labels(namespace, pool, cond["type"], value).set(1 if cond["status"] == value else 0)

    def forget_pool(self, namespace: str, pool: str) -> None:
        """Drop a deleted pool's series so dashboards do not show ghosts."""
        for state in ("existing", "ready"):
            try:
                self.pool_replicas.remove(namespace, pool, state)
            except KeyError:
                pass
        for cond in ("Ready", "Progressing", "Degraded"):
            for value in ("True", "False", "Unknown"):
                try:
                    self.pool_condition.remove(namespace, pool, cond, value)
                except KeyError:
                    pass
