"""Compute a NodePool's status, and the Events its changes deserve.

Contract: pure. The status is computed on a copy from what was read (the pool, its
pods, the pod plan) and the caller writes it only when it differs (KubeRay's habit).
Condition ``lastTransitionTime`` only moves when a condition's status flips, and the
clock comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pqmpc_operator.builders import LABEL_GROUP, LABEL_TRUST_DOMAIN, LABEL_REGION, LABEL_ZONE, selector_string
from pqmpc_operator.model import NodePoolSpec, SpecError
from pqmpc_operator.rollout import PodPlan, is_pod_ready, is_terminating

__all__ = ["Condition", "PoolEvent", "compute_status", "condition_events", "invalid_spec_status", "merge_conditions"]

# A container restarting this often without becoming Ready is crash-looping even
# before the kubelet's back-off has set the CrashLoopBackOff reason.
CRASH_RESTARTS = 3


@dataclass(frozen=True)
class Condition:
    """A metav1.Condition before its transition time is settled."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True)
class PoolEvent:
    """An Event to post on the pool."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def _pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a pod is unhealthy in a way a human must look at."""
    name = pod["metadata"]["name"]
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return "Unschedulable", f"pod {name} cannot be scheduled: {cond.get('message', 'no fitting Node')}"
    cs = _container_status(pod)
    waiting = (cs.get("state") or {}).get("waiting") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    restarts = int(cs.get("restartCount", 0))
    if waiting.get("reason") in {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"}:
        detail = f" (last exit code {last['exitCode']})" if "exitCode" in last else ""
        return str(waiting["reason"]), f"pod {name}: {waiting['reason']}{detail}: {waiting.get('message', '')}".rstrip(": ")
    if restarts >= CRASH_RESTARTS and not is_pod_ready(pod):
        detail = f", last exit code {last['exitCode']}" if "exitCode" in last else ""
        return "CrashLoopBackOff", f"pod {name} restarted {restarts} times without becoming Ready{detail}"
    if (pod.get("status") or {}).get("phase") == "Failed":
        return "PodFailed", f"pod {name} failed: {(pod.get('status') or {}).get('message', 'see its logs')}"
    return None


def _node_entry(
    pod: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]], facts: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    cs = _container_status(pod)
    problem = _pod_problem(pod)
    entry: dict[str, Any] = {
        # Key and anomaly fields belong to the session/PKI controller; keep what it wrote.
        **{k: v for k, v in previous.get(meta["name"], {}).items() if k in {"certFingerprint", "certNotAfter", "kemEpoch", "kemRotatesAt", "anomalyScore", "quarantined",
                     "quarantinedSince"}},
        "name": meta["name"],
        "group": labels.get(LABEL_GROUP, ""),
        "region": labels.get(LABEL_REGION, ""),
        "zone": labels.get(LABEL_ZONE, ""),
        "trustDomain": labels.get(LABEL_TRUST_DOMAIN, ""),
        "ready": is_pod_ready(pod),
        "phase": "Terminating" if is_terminating(pod) else str((pod.get("status") or {}).get("phase", "Pending")),
        "restarts": int(cs.get("restartCount", 0)),
    }
    entry.update(facts.get(meta["name"], {}))
    if not entry.get("quarantined"):
        entry.pop("quarantinedSince", None)
    if problem:
        entry["message"] = problem[1]
    return entry


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Condition], generation: int, now: str
) -> list[dict[str, Any]]:
    """metav1.Conditions, keeping ``lastTransitionTime`` unless the status flipped."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond.type)
        changed = before is None or before.get("status") != cond.status
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": now if changed else before.get("lastTransitionTime", now) if before else now,
            }
        )
    return merged


def invalid_spec_status(body: Mapping[str, Any], error: SpecError, now: str) -> dict[str, Any]:
    """Status for a spec the operator cannot act on: Degraded, nothing else touched."""
    status = dict(body.get("status") or {})
    generation = int((body.get("metadata") or {}).get("generation", 0))
    conditions = [
        Condition("Ready", "False", "InvalidSpec", str(error)),
        Condition("Progressing", "False", "InvalidSpec", "waiting for a corrected spec"),
        Condition("Degraded", "True", "InvalidSpec", str(error)),
    ]
    status["conditions"] = merge_conditions(status.get("conditions") or [], conditions, generation, now)
    status["observedGeneration"] = generation
    return status


def compute_status(
    pool: NodePoolSpec,
    pods: Sequence[Mapping[str, Any]],
    plan: PodPlan,
    previous: Mapping[str, Any],
    now: str,
    node_facts: Mapping[str, Mapping[str, Any]] | None = None,
    key_revision: int | None = None,
) -> dict[str, Any]:
    """The pool's new status from its pods, this pass's plan and what certification learnt.

    ``key_revision``: the size of the transparency log the nodes hold (it grows with every
    certificate and every rotated KEM key), shown in ``kubectl get mpcpool -o wide``.
    """
    wanted = sum(pool.effective_replicas().values())
    live = [p for p in pods if not is_terminating(p)]
    ready = sum(1 for p in live if is_pod_ready(p))
    old_nodes = {str(n.get("name")): n for n in previous.get("nodes") or []}
    nodes = sorted((_node_entry(p, old_nodes, node_facts or {}) for p in pods), key=lambda n: n["name"])

    problems = [pr for pr in (_pod_problem(p) for p in live) if pr]
    problems += [("InsufficientResources", msg) for msg in plan.unsatisfiable.values()]
    if problems:
        reasons = sorted({r for r, _ in problems})
        degraded = Condition("Degraded", "True", reasons[0], "; ".join(m for _, m in problems))
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "all node pods healthy")

    missing = wanted - len(live)
    if plan.outdated:
        progressing = Condition("Progressing", "True", "RollingOut", f"{len(plan.outdated)} node pod(s) to update")
    elif missing > 0 or plan.create:
        progressing = Condition("Progressing", "True", "ScalingUp", f"{len(live)}/{wanted} node pods exist")
    elif len(live) > wanted or len(pods) > len(live):
        progressing = Condition("Progressing", "True", "ScalingDown", f"{len(pods)} node pods, want {wanted}")
    elif ready < wanted:
        progressing = Condition("Progressing", "True", "WaitingForReady", f"{ready}/{wanted} node pods ready")
    else:
        progressing = Condition("Progressing", "False", "Complete", f"{wanted} node pods up to date and ready")

    if wanted == 0:
        ready_cond = Condition("Ready", "True", "ScaledToZero", "pool has no node pods")
    elif ready >= wanted and not plan.outdated and len(live) == wanted and any(n.get("quarantined") for n in nodes):
        # Running and ready, but not all placeable: STATUS must not read healthy.
        names = ", ".join(n["name"] for n in nodes if n.get("quarantined"))
        ready_cond = Condition("Ready", "True", "NodesQuarantined",
                               f"{ready}/{wanted} node pods ready; quarantined (no new sessions): {names}")
    elif ready >= wanted and not plan.outdated and len(live) == wanted:
        ready_cond = Condition("Ready", "True", "AllNodesReady", f"{ready}/{wanted} node pods ready")
    else:
        ready_cond = Condition("Ready", "False", "NodesNotReady", f"{ready}/{wanted} node pods ready")

    quarantined = [n for n in nodes if n.get("quarantined")]
    if quarantined:
        quarantine = Condition("Quarantine", "True", "NodesQuarantined",
                               "; ".join(f"{n['name']} ({n.get('message', 'anomalous behaviour')})" for n in quarantined)
                               + f"; clear with the annotation pqmpc.io/clear-quarantine={quarantined[0]['name']}")
    else:
        quarantine = Condition("Quarantine", "False", "NoneQuarantined", "no node is quarantined")
    status = {k: v for k, v in previous.items() if k in {"keyRevision"}}
    if key_revision:
        status["keyRevision"] = key_revision
    status.update(
        {
            "replicas": len(live),
            "readyReplicas": ready,
            "selector": selector_string(pool.name),
            "observedGeneration": pool.generation,
            "nodes": nodes,
            "conditions": merge_conditions(
                previous.get("conditions") or [], [ready_cond, progressing, degraded, quarantine], pool.generation, now
            ),
        }
    )
    return status


def condition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[PoolEvent]:
    """Events for condition flips between two statuses (Ready and Degraded matter)."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    events: list[PoolEvent] = []
    for cond in new.get("conditions") or []:
        prior = before.get(cond["type"])
        if prior is not None and prior.get("status") == cond["status"] and prior.get("reason") == cond["reason"]:
            continue
        if cond["type"] == "Ready" and cond["status"] == "True":
            if prior is None or prior.get("status") != "True":  # a reason change (quarantine) has its own Events
                events.append(PoolEvent("Normal", "PoolReady", cond["message"]))
        elif cond["type"] == "Ready" and prior is not None and prior.get("status") == "True":
            events.append(PoolEvent("Warning", "PoolNotReady", cond["message"]))
        elif cond["type"] == "Degraded" and cond["status"] == "True":
            events.append(PoolEvent("Warning", str(cond["reason"]), cond["message"]))
        elif cond["type"] == "Degraded" and prior is not None and prior.get("status") == "True":
            events.append(PoolEvent("Normal", "Recovered", cond["message"]))
    return events
