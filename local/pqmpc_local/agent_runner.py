"""Start and stop ``python -m pqmpc_local.agent`` as a child process (fixtures, demo)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kubernetes import client as k8s

from pqmpc_local.kubeconfig import api_client
from pqmpc_local.processes import kill_process_group, pdeathsig_preexec

__all__ = [
    "DEFAULT_NODES",
    "AgentError",
    "FakeNode",
    "NodeAgentProcess",
    "start_agent",
    "stop_agent",
    "wait_nodes_ready",
]


class AgentError(RuntimeError):
    """The node agent failed to start or to register its Nodes."""


@dataclass(frozen=True)
class FakeNode:
    """One Node the agent registers."""

    name: str
    region: str
    zone: str
    gpus: int = 8

    def agent_args(self) -> list[str]:
        """This node's ``--node/--labels/--gpus`` arguments for ``python -m pqmpc_local.agent``."""
        labels = f"topology.kubernetes.io/region={self.region},topology.kubernetes.io/zone={self.zone}"
        return ["--node", self.name, "--labels", labels, "--gpus", str(self.gpus)]


DEFAULT_NODES = (
    FakeNode("node-eu-west-1a", "eu-west", "eu-west-1a"),
    FakeNode("node-eu-west-1b", "eu-west", "eu-west-1b"),
    FakeNode("node-us-east-1a", "us-east", "us-east-1a"),
)


@dataclass(frozen=True)
class NodeAgentProcess:
    """A running ``python -m pqmpc_local.agent`` and the Nodes it plays."""

    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    nodes: tuple[FakeNode, ...]
    log_file: IO[bytes]

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the agent's log, for assertion messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pod_logs(self, namespace: str, name: str, lines: int = 200) -> str:
        """The last lines of a pod's container output (what ``kubectl logs`` would show; every pod by that name)."""
        chunks = []
        for path in sorted(self.workdir.glob(f"pods/{namespace}_{name}_*/*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"==> {path.parent.name}/{path.name} <==\n" + "\n".join(text))
        return "\n".join(chunks)


def start_agent(
    kubeconfig: Path, workdir: Path, nodes: Sequence[FakeNode] = DEFAULT_NODES, *, extra_args: Sequence[str] = ()
) -> NodeAgentProcess:
    """Spawn the agent for ``nodes``; it dies with the calling thread at the latest."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pqmpc_local.agent", "--kubeconfig", str(kubeconfig), "--workdir", str(workdir)]
    argv += list(extra_args)
    for node in nodes:
        argv += node.agent_args()
    log_path = workdir / "agent.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed by stop_agent
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=pdeathsig_preexec(),
        )
    except BaseException:
        log_file.close()
        raise
    return NodeAgentProcess(process=process, workdir=workdir, log_path=log_path, nodes=tuple(nodes), log_file=log_file)


def stop_agent(agent: NodeAgentProcess, timeout: float = 30.0) -> int:
    """SIGTERM the agent (it stops its pods' processes), wait, then SIGKILL its group."""
    try:
        if agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
            try:
                agent.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        kill_process_group(agent.process.pid, signal.SIGKILL)
        return agent.process.wait()
    finally:
        agent.log_file.close()


def _node_ready(node: k8s.V1Node) -> bool:
    conditions = node.status.conditions if node.status is not None else None
    return any(c.type == "Ready" and c.status == "True" for c in conditions or ())


def wait_nodes_ready(kubeconfig: Path, agent: NodeAgentProcess, timeout: float = 30.0) -> None:
    """Return once every Node of ``agent`` is Ready; raise :class:`AgentError` with its log otherwise."""
    wanted = {n.name for n in agent.nodes}
    deadline = time.monotonic() + timeout
    with api_client(kubeconfig) as api:
        core = k8s.CoreV1Api(api)
        while True:
            code = agent.process.poll()
            if code is not None:
                raise AgentError(f"the node agent exited with status {code}; its log ends with:\n{agent.log_tail()}")
            ready = {n.metadata.name for n in core.list_node().items if n.metadata is not None and _node_ready(n)}
            if wanted <= ready:
                return
            if time.monotonic() > deadline:
                raise AgentError(
                    f"Nodes {sorted(wanted - ready)} not Ready after {timeout:.0f}s; "
                    f"the agent's log ends with:\n{agent.log_tail()}"
                )
            time.sleep(0.3)
