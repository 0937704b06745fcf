"""Anomaly scoring and quarantine in the NodePool loop (I/O shell around :mod:`anomaly`).

Each pass (at most every ``SCRAPE_SECONDS``) the operator scrapes every running node's
``/metrics``, takes the evidence of sessions that finished since (queued by the session
controller), scores the nodes (:func:`pqmpc_operator.anomaly.score_nodes`) and decides
quarantine (:func:`pqmpc_operator.anomaly.quarantine_decisions`):

- a node whose score reaches ``spec.anomaly.quarantineScore`` is quarantined: placement
  skips it (``status.nodes[].quarantined``), the pool gets a ``Quarantine`` condition and
  a Warning Event, and with ``spec.anomaly.autoReplace`` its pod is deleted (the pool
  re-creates it with fresh keys, certified anew);
- it leaves quarantine after a clean period below the release score, or at once when the
  pool carries the annotation ``pqmpc.io/clear-quarantine: <node>[,<node>...]`` (the
  operator removes the annotation once it has acted on it).

``quarantinedSince`` is kept in the pool status, so an operator restart keeps quarantines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import kopf

from pqmpc_operator.anomaly import (
    AnomalyPolicy,
    AnomalyState,
    NodeSample,
    NodeScore,
    SessionEvidence,
    forget_node,
    quarantine_decisions,
    score_nodes,
)
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.model import NodePoolSpec
from pqmpc_operator.node_signals import scrape_node
from pqmpc_operator.rollout import is_terminating

__all__ = ["CLEAR_ANNOTATION", "PoolWatch", "assess_pool"]

_log = logging.getLogger(__name__)
CLEAR_ANNOTATION = "pqmpc.io/clear-quarantine"
SCRAPE_SECONDS = 5.0


@dataclass
class PoolWatch:
    """What the operator remembers of one pool's behaviour between passes."""

    state: AnomalyState | None = None
    evidence: list[SessionEvidence] = field(default_factory=list)
    scores: dict[str, NodeScore] = field(default_factory=dict)
    last_scrape: float = 0.0


def _restore(previous_nodes: Sequence[Mapping[str, Any]]) -> AnomalyState:
    since = {
        str(n["name"]): float(n["quarantinedSince"])
        for n in previous_nodes if n.get("quarantined") and n.get("quarantinedSince") is not None
    }
    return AnomalyState.restore(since)


async def assess_pool(
    api: ClusterApi,
    http: httpx.AsyncClient,
    pool: NodePoolSpec,
    body: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    watch: PoolWatch,
    metrics_port: int,
) -> dict[str, dict[str, Any]]:
    """Score the pool's nodes, act on quarantine decisions; returns per-node status facts.

    Metrics are scraped from each node's plain-HTTP ``metrics_port`` (they carry no secret).
    """
    status = body.get("status") or {}
    if watch.state is None:
        watch.state = _restore(status.get("nodes") or [])
    now = time.time()
    cleared_raw = ((body.get("metadata") or {}).get("annotations") or {}).get(CLEAR_ANNOTATION, "")
    cleared = {n.strip() for n in cleared_raw.split(",") if n.strip()}
    if now - watch.last_scrape >= SCRAPE_SECONDS or cleared or watch.evidence:
        watch.last_scrape = now
        samples: list[NodeSample] = []
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or is_terminating(pod):
                continue
            sample, why = await scrape_node(http, pod["metadata"]["name"], f"http://{ip}:{metrics_port}", at=now)
            if sample is not None:
                samples.append(sample)
            else:
                _log.debug("pool %s/%s: %s", pool.namespace, pool.name, why)
        policy = AnomalyPolicy.from_spec({"quarantineScore": pool.quarantine_score, "autoReplace": pool.auto_replace})
        sessions, watch.evidence = watch.evidence, []
        state, watch.scores = score_nodes(watch.state, samples, sessions, policy, now)
        state, decisions = quarantine_decisions(state, watch.scores, policy, now, frozenset(cleared))
        for d in decisions.enter:
            _log.warning("pool %s/%s: quarantining %s: %s", pool.namespace, pool.name, d.node, d.reason)
            kopf.event(cast(kopf.Body, body), type="Warning", reason="Quarantined", message=f"{d.node}: {d.reason}"[:1000])
        for d in decisions.leave:
            kopf.event(cast(kopf.Body, body), type="Normal", reason="QuarantineLifted", message=f"{d.node}: {d.reason}"[:1000])
        for d in decisions.replace:
            kopf.event(cast(kopf.Body, body), type="Warning", reason="NodeReplaced", message=f"{d.node}: {d.reason}"[:1000])
            await api.delete_pod(pool.namespace, d.node)
            state = forget_node(state, d.node)
        watch.state = state
        if cleared:
            await api.patch_pool_annotations(pool.namespace, pool.name, {CLEAR_ANNOTATION: None})
    quarantined = watch.state.nodes if watch.state else {}
    facts: dict[str, dict[str, Any]] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        hist = quarantined.get(name)
        since = hist.quarantined_since if hist is not None else None
        score = watch.scores.get(name)
        facts[name] = {
            "anomalyScore": round(score.score, 4) if score is not None else 0.0,
            "quarantined": since is not None,
        }
        if since is not None:
            facts[name]["quarantinedSince"] = int(since)
            if score is not None:
                facts[name]["message"] = f"quarantined: {score.explain()}"
    return facts
