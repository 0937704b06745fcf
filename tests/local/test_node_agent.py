"""The local node agent plays kubelet: scheduling, env and volumes, probes, restarts, deletion, clean shutdown."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pqmpc_local.agent_runner import FakeNode, NodeAgentProcess, start_agent, stop_agent, wait_nodes_ready
from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.pytest_plugin import Kubectl

PODPROG = Path(__file__).with_name("podprog.py")
NS = "agent-test"


def _eventually(check: Callable[[], Any], timeout: float, what: str, agent: NodeAgentProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\nagent log:\n{agent.log_tail()}" if agent is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(0.25)


def _pod(kubectl: Kubectl, name: str) -> dict[str, Any]:
    result = kubectl("-n", NS, "get", "pod", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _apply(kubectl: Kubectl, *docs: dict[str, Any]) -> None:
    kubectl("-n", NS, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def _container_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "pqmpc/test", "command": command, **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec}}


def _state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl, node_agent: NodeAgentProcess) -> str:
    kubectl("create", "namespace", NS)
    kubectl("-n", NS, "create", "serviceaccount", "runner")
    return NS


def test_nodes_advertise_topology_and_gpus(kubectl: Kubectl, node_agent: NodeAgentProcess) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    for fake in node_agent.nodes:
        node = by_name[fake.name]
        assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == fake.zone
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(fake.gpus)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_pod_gets_env_volumes_ip_and_readiness(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"greeting": "hello"}}

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_UID", **field("metadata.uid")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "SA_NAME", **field("spec.serviceAccountName")},
        {"name": "LABEL_APP", **field("metadata.labels['app']")},
        {"name": "SECRET_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "CONFIG_GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "POD_GREETING_TWICE", "value": "$(CONFIG_GREETING)-$(CONFIG_GREETING)"},
        {"name": "READY_AFTER", "value": "3"},
        {"name": "RESOLVE", "value": f"web-0.nodes.{NS}.svc.cluster.local"},
    ]
    pod = _container_pod(
        "web", ["python", str(PODPROG), "serve"],
        serviceAccountName="runner",
        hostname="web-0",
        subdomain="nodes",
        nodeSelector={"topology.kubernetes.io/region": "us-east"},
        volumes=[{"name": "creds", "secret": {"secretName": "creds"}},
                 {"name": "settings", "configMap": {"name": "settings"}}],
        container={
            "env": env,
            "resources": {"limits": {"nvidia.com/gpu": "2"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/pqmpc-test/secret", "readOnly": True},
                             {"name": "settings", "mountPath": "/etc/pqmpc-test/config"}],
        },
    )
    pod["metadata"]["labels"] = {"app": "web"}
    _apply(kubectl, secret, config, pod)

    running = _eventually(lambda: (p := _pod(kubectl, "web")).get("status", {}).get("phase") == "Running" and p,
                          20, "pod web Running", node_agent)
    assert not _state(running)["ready"], "readiness must wait for the probe (READY_AFTER=3)"
    ready = _eventually(lambda: (p := _pod(kubectl, "web")) and _state(p).get("ready") and p, 20, "pod web Ready",
                        node_agent)
    conditions = {c["type"]: c["status"] for c in ready["status"]["conditions"]}
    assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True",
                          "PodReadyToStartContainers": "True"}
    ip = ready["status"]["podIP"]
    assert ip.startswith("127.0.") and ip != "127.0.0.1"
    assert ready["spec"]["nodeName"] == "node-us-east-1a"
    assert ready["status"]["hostIP"] == "127.0.0.1"

    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as response:
        report = json.loads(response.read())
    assert report["env"]["POD_NAME"] == "web"
    assert report["env"]["POD_NAMESPACE"] == NS
    assert report["env"]["POD_UID"] == ready["metadata"]["uid"]
    assert report["env"]["POD_IP"] == ip
    assert report["env"]["NODE_NAME"] == "node-us-east-1a"
    assert report["env"]["SA_NAME"] == "runner"
    assert report["env"]["LABEL_APP"] == "web"
    assert report["env"]["SECRET_PASSWORD"] == "hunter2"
    assert report["env"]["CONFIG_GREETING"] == "hello"
    assert report["env"]["POD_GREETING_TWICE"] == "hello-hello"
    assert report["path_python"].startswith(str(Path(sys.executable).parent))
    assert report["secret_file"] == "hunter2"
    assert report["config_file"] == "hello"
    assert report["sa_token"] and report["sa_ca"] and report["sa_namespace"] == NS
    assert report["api_version"].startswith("v1.35."), report["api_version"]

    assert report["hostname"] == "web-0"
    assert report["resolved"] == ip, "the pod's DNS name resolves through the agent's /etc/hosts"

    pid = report["pid"]
    assert _pid_alive(pid)
    kubectl("-n", NS, "delete", "pod", "web", "--wait=true", timeout=30)
    assert not _pid_alive(pid), "deleting the pod must kill its process"
    assert kubectl("-n", NS, "get", "pod", "web", check=False).returncode != 0


def test_crashing_pod_backs_off(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    _apply(kubectl, _container_pod("crasher", ["python", str(PODPROG), "crash"],
                                   container={"env": [{"name": "EXIT_CODE", "value": "3"}]}))
    pod = _eventually(
        lambda: (p := _pod(kubectl, "crasher")) and _state(p).get("restartCount", 0) > 0
        and _state(p).get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and p,
        20, "crasher in CrashLoopBackOff", node_agent)
    status = _state(pod)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert "back-off" in status["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Running"
    assert "crashing on purpose" in node_agent.pod_logs(NS, "crasher")


def test_startup_probe_gates_readiness(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 20}
    _apply(kubectl, _container_pod("slow-start", ["python", str(PODPROG), "serve"], container={
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "READY_AFTER", "value": "3"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "startupProbe": probe}))
    running = _eventually(lambda: (p := _pod(kubectl, "slow-start")).get("status", {}).get("phase") == "Running" and p,
                          20, "slow-start Running", node_agent)
    assert not _state(running)["ready"]
    _eventually(lambda: _state(_pod(kubectl, "slow-start")).get("ready"), 20, "slow-start Ready after startup",
                node_agent)
    assert _state(_pod(kubectl, "slow-start"))["restartCount"] == 0


@pytest.mark.parametrize(("code", "phase", "reason"), [(7, "Failed", "Error"), (0, "Succeeded", "Completed")])
def test_restart_never_reports_exit(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess,
                                    code: int, phase: str, reason: str) -> None:
    name = f"once-{code}"
    _apply(kubectl, _container_pod(name, ["sh", "-c", f"exit {code}"], restartPolicy="Never"))
    pod = _eventually(lambda: (p := _pod(kubectl, name)).get("status", {}).get("phase") == phase and p,
                      20, f"{name} {phase}", node_agent)
    terminated = _state(pod)["state"]["terminated"]
    assert terminated["exitCode"] == code and terminated["reason"] == reason
    assert _state(pod)["restartCount"] == 0


def test_liveness_failure_restarts_the_process(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    probe = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}
    _apply(kubectl, _container_pod("unlively", ["sleep", "600"], container={"livenessProbe": probe}))
    pod = _eventually(lambda: (p := _pod(kubectl, "unlively")) and _state(p).get("restartCount", 0) >= 1 and p,
                      25, "unlively restarted by its liveness probe", node_agent)
    assert _state(pod)["lastState"]["terminated"]["reason"] == "Error"


def test_gpu_over_request_stays_unschedulable(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    _apply(kubectl, _container_pod("greedy", ["sleep", "600"],
                                   container={"resources": {"limits": {"nvidia.com/gpu": "9"}}}))
    pod = _eventually(
        lambda: (p := _pod(kubectl, "greedy")) and any(c.get("reason") == "Unschedulable"
                                                       for c in p.get("status", {}).get("conditions", [])) and p,
        15, "greedy Unschedulable", node_agent)
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in condition["message"] and "0/3 nodes are available" in condition["message"]
    time.sleep(1)
    assert not _pod(kubectl, "greedy")["spec"].get("nodeName")
    assert _pod(kubectl, "greedy")["status"]["phase"] == "Pending"


def test_required_node_affinity_not_in(kubectl: Kubectl, namespace: str, node_agent: NodeAgentProcess) -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "NotIn",
                               "values": ["eu-west-1a", "us-east-1a"]}]}]}}}
    _apply(kubectl, _container_pod("picky", ["sleep", "600"], affinity=affinity))
    pod = _eventually(lambda: (p := _pod(kubectl, "picky")).get("spec", {}).get("nodeName") and p, 15,
                      "picky bound", node_agent)
    assert pod["spec"]["nodeName"] == "node-eu-west-1b"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _mentions(pid: int, text: str) -> bool:
    """True when a live process's command line, environment or cwd mentions ``text``."""
    proc = Path(f"/proc/{pid}")
    try:
        blobs = [(proc / "cmdline").read_bytes(), (proc / "environ").read_bytes(), str((proc / "cwd").resolve()).encode()]
    except OSError:
        return False
    return any(text.encode() in b for b in blobs)


def test_stopping_the_agent_kills_its_pods(control_plane: ControlPlane, kubectl: Kubectl, namespace: str,
                                           tmp_path: Path) -> None:
    """Also covers the mount fallback: without mount namespaces, PQMPC_LOCAL_MOUNTS maps mountPaths."""
    node = FakeNode("node-ephemeral", "eu-west", "eu-west-1c", gpus=0)
    before = _descendants(os.getpid())
    agent = start_agent(control_plane.kubeconfig, tmp_path / "agent", [node],
                        extra_args=["--no-scheduling", "--no-mount-namespaces"])
    try:
        wait_nodes_ready(control_plane.kubeconfig, agent)
        _apply(kubectl, _container_pod("doomed", ["sh", "-c", "sleep 600 & sleep 600"], nodeName=node.name))
        pod = _eventually(lambda: (p := _pod(kubectl, "doomed")).get("status", {}).get("phase") == "Running" and p,
                          20, "doomed Running", agent)
        pid = int(_state(pod)["containerID"].rsplit("/", 1)[1])
        assert pid in _descendants(agent.process.pid)
        environ = dict(
            item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
        )
        mounts = json.loads(environ[b"PQMPC_LOCAL_MOUNTS"])
        token = Path(mounts["/var/run/secrets/kubernetes.io/serviceaccount"]) / "token"
        assert token.read_text().count(".") == 2, "a JWT service-account token"
    finally:
        stop_agent(agent)
    assert not _pid_alive(pid)
    # Other fixtures' pods may start processes meanwhile: look only for this agent's.
    leftovers = [p for p in _descendants(os.getpid()) - before if _mentions(p, str(tmp_path))]
    assert not leftovers, f"the agent or a pod process outlived stop_agent: {leftovers}"
    kubectl("delete", "node", node.name)
