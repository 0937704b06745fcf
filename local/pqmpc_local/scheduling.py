"""Pure pod-to-node fitting for the local node agent (a tiny kube-scheduler).

Filters only what pqmpc uses: ``nodeSelector``, required node affinity
(``In``/``NotIn``/``Exists``/``DoesNotExist``/``Gt``/``Lt``), untolerated ``NoSchedule``
taints and free ``nvidia.com/gpu``. Among fitting nodes the one with the most free
GPUs wins (ties by name), which spreads pods like the default scorer roughly does.
Works on raw Kubernetes dicts; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GPU_RESOURCE", "NodeCapacity", "Unschedulable", "choose_node", "pod_gpu_request"]

GPU_RESOURCE = "nvidia.com/gpu"

_AFFINITY = "didn't match Pod's node affinity/selector"
_TAINT = "had untolerated taint"


@dataclass(frozen=True)
class NodeCapacity:
    """What the scheduler needs to know about one Node."""

    name: str
    labels: Mapping[str, str]
    gpus: int
    taints: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Unschedulable:
    """No node fits; ``message`` reads like kube-scheduler's."""

    message: str


def _quantity_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    """The pod's ``nvidia.com/gpu`` request (limits count when requests are absent, as for extended resources)."""
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(GPU_RESOURCE, (resources.get("limits") or {}).get(GPU_RESOURCE))
        if value is not None:
            total += _quantity_int(value)
    return total


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _affinity_matches(pod: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    spec = pod.get("spec", {})
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        or {}
    )
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    # Terms are ORed, expressions within a term ANDed.
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in terms
        if term.get("matchExpressions")
    )


def _tolerated(pod: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    for toleration in pod.get("spec", {}).get("tolerations") or []:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def choose_node(
    pod: Mapping[str, Any], nodes: Sequence[NodeCapacity], gpus_in_use: Mapping[str, int]
) -> str | Unschedulable:
    """The node to bind ``pod`` to, or why none fits."""
    want = pod_gpu_request(pod)
    reasons: Counter[str] = Counter()
    fitting: list[tuple[int, str]] = []
    for node in nodes:
        if not _affinity_matches(pod, node.labels):
            reasons[_AFFINITY] += 1
            continue
        blocking = [t for t in node.taints if t.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(pod, t)]
        if blocking:
            reasons[f"{_TAINT} {{{blocking[0].get('key')}: {blocking[0].get('value', '')}}}"] += 1
            continue
        free = node.gpus - gpus_in_use.get(node.name, 0)
        if want > free:
            reasons[f"Insufficient {GPU_RESOURCE}"] += 1
            continue
        fitting.append((-free, node.name))
    if fitting:
        return min(fitting)[1]
    detail = ", ".join(f"{count} node(s) {reason}" if not reason.startswith("Insufficient") else f"{count} {reason}"
                       for reason, count in sorted(reasons.items()))
    if not nodes:
        return Unschedulable(message="no nodes available to schedule pods")
    n = len(nodes)
    return Unschedulable(
        message=f"0/{n} nodes are available: {detail}. "
        f"preemption: 0/{n} nodes are available: {n} No preemption victims found for incoming pod."
    )
