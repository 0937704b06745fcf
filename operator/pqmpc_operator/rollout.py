"""Decide which node pods to create and delete: scaling, roll-outs, unsatisfiable groups.

Contract: pure. Takes the parsed pool, the pods and Nodes that were read, and returns a
:class:`PodPlan`; the handler carries it out. Rules (StatefulSet-like, per pool):

1. A missing pod of a schedulable group is created.
2. Surplus pods go highest ordinal first, one per group per pass; the next goes once
   the previous has disappeared.
3. A pod whose template hash is stale is replaced (deleted, then re-created by rule 1):
   stale pods that are not Ready go at once, since they serve nothing; a Ready stale
   pod goes only when every other pod of the pool exists and is Ready, one at a time.
4. A group that no Node can host (topology labels, node selector, GPU count) gets no
   new pods and no roll-out, and is reported with an explanation.
5. A Ready pod that a running session uses (``busy``) is not rolled out until the
   session ends: replacing it would abort an additive session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pqmpc_operator.builders import (
    GPU_RESOURCE,
    LABEL_GROUP,
    LABEL_ORDINAL,
    LABEL_REGION,
    LABEL_TEMPLATE_HASH,
    LABEL_ZONE,
    build_node_pod,
    desired_pod_names,
    template_hash,
)
from pqmpc_operator.model import GroupSpec, NodePoolSpec
from pqmpc_operator.settings import OperatorSettings

__all__ = ["PodPlan", "is_pod_ready", "is_terminating", "plan_pods", "unsatisfiable_groups"]


@dataclass(frozen=True)
class PodPlan:
    """What to do with node pods in this pass."""

    create: tuple[dict[str, Any], ...] = ()
    delete: tuple[str, ...] = ()
    unsatisfiable: Mapping[str, str] = field(default_factory=dict)
    outdated: tuple[str, ...] = ()


def is_terminating(pod: Mapping[str, Any]) -> bool:
    """True once the pod has a deletion timestamp."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """True when the pod's Ready condition is True."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _gpu_count(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _node_fits(node: Mapping[str, Any], group: GroupSpec) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_REGION) != group.region or labels.get(LABEL_ZONE) != group.zone:
        return False
    if any(labels.get(k) != v for k, v in group.node_selector.items()):
        return False
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return _gpu_count(allocatable.get(GPU_RESOURCE, 0)) >= group.gpus


def unsatisfiable_groups(pool: NodePoolSpec, nodes: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Groups with pods to run that no Node can host, each with an actionable reason."""
    reasons: dict[str, str] = {}
    wanted = pool.effective_replicas()
    for index, group in enumerate(pool.groups):
        if wanted[group.name] == 0 or any(_node_fits(n, group) for n in nodes):
            continue
        in_zone = [
            n
            for n in nodes
            if ((n.get("metadata") or {}).get("labels") or {}).get(LABEL_ZONE) == group.zone
            and ((n.get("metadata") or {}).get("labels") or {}).get(LABEL_REGION) == group.region
        ]
        if not in_zone:
            reasons[group.name] = (
                f"group {group.name!r}: no Node is labelled {LABEL_REGION}={group.region}, "
                f"{LABEL_ZONE}={group.zone}; fix spec.groups[{index}].region/zone or label Nodes"
            )
            continue
        most = max(_gpu_count(((n.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)) for n in in_zone)
        if most < group.gpus:
            reasons[group.name] = (
                f"group {group.name!r} needs {group.gpus} {GPU_RESOURCE} per pod but the largest Node in "
                f"zone {group.zone} offers {most}; lower spec.groups[{index}].gpus to at most {most} "
                f"or add GPU Nodes there"
            )
        else:
            reasons[group.name] = (
                f"group {group.name!r}: no Node in zone {group.zone} matches nodeSelector "
                f"{dict(group.node_selector)}; fix spec.groups[{index}].nodeSelector or label Nodes"
            )
    return reasons


def _ordinal(pod: Mapping[str, Any]) -> int:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(LABEL_ORDINAL, "-1"))
    except ValueError:
        return -1


def plan_pods(
    pool: NodePoolSpec,
    pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
    busy: frozenset[str] = frozenset(),
) -> PodPlan:
    """Compute this pass's pod creations and deletions (rules in the module docstring)."""
    desired = desired_pod_names(pool)
    unsatisfiable = unsatisfiable_groups(pool, nodes)
    by_name = {str(p["metadata"]["name"]): p for p in pods}
    hashes = {g.name: template_hash(pool, g, settings) for g in pool.groups}
    terminating = {n for n, p in by_name.items() if is_terminating(p)}

    create = tuple(
        build_node_pod(pool, group, ordinal, settings)
        for name, (group, ordinal) in desired.items()
        if name not in by_name and group.name not in unsatisfiable
    )

    delete: list[str] = []
    surplus_by_group: dict[str, list[Mapping[str, Any]]] = {}
    for name, pod in by_name.items():
        if name not in desired:
            group = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_GROUP, "")
            surplus_by_group.setdefault(str(group), []).append(pod)
    for group_pods in surplus_by_group.values():
        if any(is_terminating(p) for p in group_pods):
            continue
        delete.append(str(max(group_pods, key=_ordinal)["metadata"]["name"]))

    outdated = sorted(
        (
            name
            for name, (group, _) in desired.items()
            if name in by_name
            and name not in terminating
            and group.name not in unsatisfiable
            and ((by_name[name].get("metadata") or {}).get("labels") or {}).get(LABEL_TEMPLATE_HASH)
            != hashes[group.name]
        ),
        key=lambda n: -desired[n][1],
    )
    broken = [n for n in outdated if not is_pod_ready(by_name[n])]
    delete.extend(broken)
    healthy_outdated = [n for n in outdated if n not in broken and n not in busy]
    everyone_ready = (
        not terminating
        and not broken
        and all(n in by_name and is_pod_ready(by_name[n]) for n in desired if desired[n][0].name not in unsatisfiable)
    )
    if healthy_outdated and everyone_ready and not create:
        delete.append(healthy_outdated[0])
    return PodPlan(create=create, delete=tuple(delete), unsatisfiable=unsatisfiable, outdated=tuple(outdated))
