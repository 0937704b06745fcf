"""A whole local cluster: the control plane plus a node agent, for the demo and benchmarks.

::

    with LocalCluster(Path("/tmp/pqmpc")) as cluster:
        print(cluster.kubeconfig)

    python -m pqmpc_local.cluster up --dir /tmp/pqmpc   # prints the kubeconfig, runs until SIGINT/SIGTERM
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pqmpc_local.agent_runner import (
    DEFAULT_NODES,
    AgentError,
    FakeNode,
    NodeAgentProcess,
    start_agent,
    stop_agent,
    wait_nodes_ready,
)
from pqmpc_local.controlplane import ControlPlane, ControlPlaneError
from pqmpc_local.processes import Stopped, stop_on

__all__ = ["LocalCluster", "main"]

log = logging.getLogger("pqmpc_local.cluster")


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + a node agent under ``workdir``."""

    def __init__(self, workdir: Path, *, nodes: Sequence[FakeNode] = DEFAULT_NODES) -> None:
        self.workdir = Path(workdir)
        self.nodes = tuple(nodes)
        self.control_plane = ControlPlane(self.workdir / "control-plane")
        self.agent: NodeAgentProcess | None = None

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.control_plane.kubeconfig

    @property
    def running(self) -> bool:
        """True while the control plane and the agent are alive."""
        return self.control_plane.running and self.agent is not None and self.agent.process.poll() is None

    def start(self) -> None:
        """Start the control plane, then the agent; returns once every Node is Ready."""
        self.control_plane.start()
        try:
            self.agent = start_agent(self.kubeconfig, self.workdir / "node-agent", self.nodes)
            wait_nodes_ready(self.kubeconfig, self.agent)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the agent (and its pods' processes), then the control plane. Idempotent."""
        try:
            if self.agent is not None:
                stop_agent(self.agent)
                self.agent = None
        finally:
            self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``up --dir D``: start a local cluster, print its kubeconfig path, run until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m pqmpc_local.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and a node agent with three GPU Nodes")
    up.add_argument("--dir", type=Path, required=True, help="work directory (certificates, data, logs, pods)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop_on(signal.SIGTERM, signal.SIGINT)
    try:
        with LocalCluster(args.dir) as cluster:
            print(cluster.kubeconfig, flush=True)
            while cluster.running:
                time.sleep(1)
            log.error("a component exited; see the logs under %s", args.dir)
            return 1
    except Stopped as stop:
        log.info("stopping on %s", stop)
        return 0
    except (ControlPlaneError, AgentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
