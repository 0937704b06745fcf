"""Run the pqmpc operator as a local process under a least-privilege ServiceAccount.

Used by the integration tests and the demo: installs the CRDs and the operator's
ClusterRole (``deploy/operator-clusterrole.yaml``, the one the chart ships), creates the
ServiceAccount and binding, mints a token for it and starts ``python -m pqmpc_operator``
with a kubeconfig that carries only that token — never the admin credentials.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.kubeconfig import api_client
from pqmpc_local.processes import ManagedProcess, free_port

__all__ = ["OperatorProcess", "REPO", "install_crds", "install_operator_rbac", "start_operator"]

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "pqmpc-system"
OPERATOR_SA = "pqmpc-operator"


@dataclass
class OperatorProcess:
    """A running operator, its health, metrics and node-bootstrap ports."""

    process: ManagedProcess
    liveness_port: int
    metrics_port: int
    bootstrap_port: int = 0
    """The node-bootstrap port (PQ-TLS) on 127.0.0.1."""

    def healthy(self) -> bool:
        """True when kopf's liveness endpoint answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        """The operator's Prometheus exposition text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> int:
        """Stop the operator (SIGTERM, then SIGKILL)."""
        return self.process.stop(timeout=15.0)


def _create_or_replace(api: k8s.ApiClient, doc: Any) -> None:
    from kubernetes import utils

    try:
        utils.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
    except utils.FailToCreateError as exc:
        if not all(isinstance(e, ApiException) and e.status == 409 for e in exc.api_exceptions):
            raise


def install_crds(kubeconfig: Path, timeout: float = 60.0) -> None:
    """Create the CRDs from ``crds/`` and wait until they are Established."""
    with api_client(kubeconfig) as api:
        ext = k8s.ApiextensionsV1Api(api)
        names = []
        for path in sorted((REPO / "crds").glob("*.yaml")):
            doc = yaml.safe_load(path.read_text())
            names.append(doc["metadata"]["name"])
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = ext.read_custom_resource_definition(doc["metadata"]["name"])
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version if current.metadata else None
                ext.replace_custom_resource_definition(doc["metadata"]["name"], doc)
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                crd = ext.read_custom_resource_definition(name)
                conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
                if conds.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} not Established after {timeout}s")
                time.sleep(0.2)


def install_operator_rbac(kubeconfig: Path, namespace: str = OPERATOR_NAMESPACE) -> None:
    """Namespace, ServiceAccount, the shipped ClusterRole and its binding."""
    role = yaml.safe_load((REPO / "deploy" / "operator-clusterrole.yaml").read_text())
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"pqmpc-operator-{namespace}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": namespace}],
    }
    with api_client(kubeconfig) as api:
        for doc in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": namespace}},
            role,
            binding,
        ):
            _create_or_replace(api, doc)


def _bootstrap_port(plane: ControlPlane) -> int:
    """One bootstrap port per control plane, kept across operator restarts.

    Node pods carry the bootstrap URL in their spec (as a cluster's pods carry the stable
    Service name): a new port at every restart would change the pod template and roll
    every pool. A second operator running at the same time (another namespace set) gets a port of its own.
    """
    record = plane.workdir / "operator-bootstrap-port"
    try:
        port = int(record.read_text())
    except (OSError, ValueError):
        port = free_port()
        record.write_text(str(port))
        return port
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the operator's listener binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()  # held by an operator still running
    return port


def start_operator(
    plane: ControlPlane,
    workdir: Path,
    *,
    namespace: str = OPERATOR_NAMESPACE,
    resync_seconds: float = 10.0,
    extra_env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    wait: float = 60.0,
) -> OperatorProcess:
    """Install CRDs and RBAC, then start the operator under its ServiceAccount's token."""
    install_crds(plane.kubeconfig)
    install_operator_rbac(plane.kubeconfig, namespace)
    kubeconfig = plane.kubeconfig_for_service_account(namespace, OPERATOR_SA, path=workdir / "operator.kubeconfig")
    live, metrics, bootstrap = free_port(), free_port(), _bootstrap_port(plane)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PQMPC_LIVENESS_PORT": str(live),
        "PQMPC_METRICS_PORT": str(metrics),
        # Node processes run on this host: they reach the operator's bootstrap port directly.
        "PQMPC_BOOTSTRAP_HOST": "127.0.0.1",
        "PQMPC_BOOTSTRAP_PORT": str(bootstrap),
        "PQMPC_BOOTSTRAP_URL": f"https://127.0.0.1:{bootstrap}",
        "PQMPC_RESYNC_SECONDS": str(resync_seconds),
        **(extra_env or {}),
    }
    # A local process has no in-cluster service-account files; the kubeconfig is its identity.
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = ManagedProcess(
        "operator", [sys.executable, "-m", "pqmpc_operator", *args], log_path=workdir / "operator.log", env=env, cwd=REPO
    )
    op = OperatorProcess(proc, live, metrics, bootstrap)
    deadline = time.monotonic() + wait
    while not op.healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.poll()}:\n{proc.log_tail(40)}")
        if time.monotonic() > deadline:
            op.stop()
            raise TimeoutError(f"operator not healthy after {wait}s:\n{proc.log_tail(40)}")
        time.sleep(0.3)
    return op
