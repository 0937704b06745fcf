"""Pure computation of a pod's status the way kubelet reports it.

The agent keeps a :class:`ContainerView` per container (what the process is doing)
and this module turns it into ``status``: phase, the four standard conditions,
pod/host IPs, start time and ``containerStatuses`` with state and lastState.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ContainerView", "RestartPolicy", "Terminated", "build_status", "phase_of", "rfc3339"]

RestartPolicy = Literal["Always", "OnFailure", "Never"]


def rfc3339(epoch: float) -> str:
    """Kubernetes' timestamp format (second precision, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Terminated:
    """One finished run of a container."""

    exit_code: int
    reason: str
    started_at: float
    finished_at: float
    message: str = ""
    signal: int | None = None

    def as_state(self) -> dict[str, Any]:
        """The ``terminated`` state object."""
        state: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.message:
            state["message"] = self.message
        if self.signal is not None:
            state["signal"] = self.signal
        return state


@dataclass(frozen=True)
class ContainerView:
    """What one container is doing right now."""

    name: str
    image: str
    state: Literal["waiting", "running", "terminated"]
    ready: bool = False
    restart_count: int = 0
    started_at: float | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    pid: int | None = field(default=None, compare=False)

    def as_status(self) -> dict[str, Any]:
        """One ``containerStatuses`` entry."""
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": rfc3339(self.started_at or 0.0)}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.as_state()}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        last = {"terminated": self.last_terminated.as_state()} if self.last_terminated else {}
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": f"pqmpc-local://{self.pid}" if self.pid else "",
            "ready": self.ready and self.state == "running",
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last,
        }


def phase_of(containers: Sequence[ContainerView], restart_policy: RestartPolicy) -> str:
    """Pending / Running / Succeeded / Failed, from the containers and the restart policy."""
    if any(c.state == "running" for c in containers):
        return "Running"
    if containers and all(c.state == "terminated" for c in containers):
        return "Succeeded" if all(c.terminated and c.terminated.exit_code == 0 for c in containers) else "Failed"
    if any(c.restart_count > 0 or c.last_terminated is not None for c in containers) and restart_policy != "Never":
        return "Running"  # restarting (CrashLoopBackOff) counts as Running, as in kubelet
    return "Pending"


def build_status(
    *,
    containers: Sequence[ContainerView],
    restart_policy: RestartPolicy,
    pod_ip: str | None,
    host_ip: str,
    start_time: float,
    transitions: Mapping[str, float],
) -> dict[str, Any]:
    """The ``status`` object to merge-patch onto the pod.

    ``transitions`` maps ``"<Condition>=<True|False>"`` to when that value was first
    seen, so lastTransitionTime only moves when a condition flips.
    """
    phase = phase_of(containers, restart_policy)
    all_ready = bool(containers) and all(c.ready and c.state == "running" for c in containers)
    not_ready = [c.name for c in containers if not (c.ready and c.state == "running")]

    def condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        value = "True" if ok else "False"
        cond: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": rfc3339(transitions.get(f"{kind}={value}", start_time)),
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    finished = phase in ("Succeeded", "Failed")
    reason = "PodCompleted" if finished else "ContainersNotReady"
    message = "" if finished else f"containers with unready status: [{' '.join(not_ready)}]"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", pod_ip is not None and not finished),
            condition("Initialized", True),
            condition("Ready", all_ready, *(("", "") if all_ready else (reason, message))),
            condition("ContainersReady", all_ready, *(("", "") if all_ready else (reason, message))),
            condition("PodScheduled", True),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": rfc3339(start_time),
        "containerStatuses": [c.as_status() for c in containers],
    }
    if pod_ip is not None:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    else:
        status["podIP"] = None
        status["podIPs"] = None
    return status
