"""The local control plane is a real Kubernetes API: version, RBAC, garbage collection, namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pqmpc_local.agent_runner import FakeNode
from pqmpc_local.cluster import LocalCluster
from pqmpc_local.controlplane import ControlPlane, ControlPlaneNotBuiltError, binaries_dir
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def test_missing_binaries_name_the_make_target(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "cp", binaries=tmp_path / "empty")
    with pytest.raises(ControlPlaneNotBuiltError, match="make control-plane"):
        plane.start()
    assert plane.pids == ()


def test_binaries_dir_follows_the_build_script() -> None:
    env = {"HOME": "/h", "PQMPC_K8S_VERSION": "v1.2.3", "PQMPC_ETCD_VERSION": "v9"}
    assert binaries_dir(env) == Path("/h/.cache/pqmpc/control-plane/v1.2.3-etcd-v9")
    assert binaries_dir({**env, "PQMPC_CONTROL_PLANE_DIR": "/x"}) == Path("/x")


def test_server_reports_its_real_version(kubectl: Kubectl) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"].startswith("v1.35.")
    assert out["serverVersion"]["minor"] == "35"


def test_rbac_forbids_an_unbound_service_account(control_plane: ControlPlane, kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "rbac-check")
    kubectl("-n", "rbac-check", "create", "serviceaccount", "nobody")
    config = control_plane.kubeconfig_for_service_account("rbac-check", "nobody")
    as_sa = Kubectl(kubeconfig=config, binary=kubectl.binary)
    denied = as_sa("get", "configmaps", "-n", "rbac-check", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert "system:serviceaccount:rbac-check:nobody" in denied.stderr
    kubectl("-n", "rbac-check", "create", "role", "cm-reader", "--verb=list", "--resource=configmaps")
    kubectl("-n", "rbac-check", "create", "rolebinding", "cm-reader", "--role=cm-reader",
            "--serviceaccount=rbac-check:nobody")
    _eventually(lambda: as_sa("get", "configmaps", "-n", "rbac-check", check=False).returncode == 0,
                10, "the RoleBinding to take effect")


def test_garbage_collector_deletes_owned_children(kubectl: Kubectl) -> None:
    kubectl("create", "configmap", "gc-parent", "--from-literal=a=b")
    uid = kubectl("get", "configmap", "gc-parent", "-o", "jsonpath={.metadata.uid}").stdout
    child = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "gc-child", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-parent", "uid": uid}]},
    }
    kubectl("apply", "-f", "-", input=json.dumps(child))
    kubectl("delete", "configmap", "gc-parent", "--wait=true")
    _eventually(lambda: kubectl("get", "configmap", "gc-child", check=False).returncode != 0,
                30, "the garbage collector to delete gc-child")


def test_deployment_creates_replicaset_and_pods(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "deploy-check")
    kubectl("-n", "deploy-check", "create", "deployment", "web", "--image=example.invalid/web", "--replicas=2")
    _eventually(lambda: len(kubectl("-n", "deploy-check", "get", "pods", "-o", "name").stdout.split()) == 2,
                30, "the Deployment's two pods")
    kubectl("delete", "namespace", "deploy-check", "--wait=false")


def test_namespace_deletion_completes(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "doomed")
    kubectl("-n", "doomed", "create", "configmap", "x", "--from-literal=a=b")
    kubectl("delete", "namespace", "doomed", "--wait=false")
    _eventually(lambda: kubectl("get", "namespace", "doomed", check=False).returncode != 0,
                45, "namespace doomed to be gone")


def _live_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


def _children_of(pid: int) -> set[int]:
    """Every live process whose parent chain reaches ``pid`` (a /proc scan, no psutil)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.integration
def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    before = _children_of(os.getpid())
    with ControlPlane(tmp_path / "cp") as plane:
        pids = set(plane.pids)
        assert len(pids) == 3 and pids <= _live_pids()
        assert plane.running
    assert not pids & _live_pids()
    assert _children_of(os.getpid()) <= before


@pytest.mark.integration
def test_cli_up_runs_until_sigterm(tmp_path: Path) -> None:
    before = _children_of(os.getpid())
    proc = subprocess.Popen([sys.executable, "-m", "pqmpc_local.controlplane", "up", "--dir", str(tmp_path / "cp")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        kubeconfig = Path(proc.stdout.readline().strip())
        assert kubeconfig.is_file() and "certificate-authority-data" in kubeconfig.read_text()
        components = _children_of(proc.pid)
        assert len(components) >= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    assert not components & _live_pids()
    assert _children_of(os.getpid()) <= before


@pytest.mark.integration
def test_local_cluster_brings_up_ready_nodes_and_stops_cleanly(tmp_path: Path) -> None:
    before = _children_of(os.getpid())
    nodes = (FakeNode("solo", "eu-west", "eu-west-1a", gpus=2),)
    with LocalCluster(tmp_path / "cluster", nodes=nodes) as cluster:
        kubectl = Kubectl(kubeconfig=cluster.kubeconfig, binary=kubectl_binary())
        ready = kubectl("get", "node", "solo", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        assert ready.stdout == "True"
        assert cluster.running
    assert not cluster.running
    assert _children_of(os.getpid()) <= before
