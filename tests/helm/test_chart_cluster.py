"""The Helm chart against the real local control plane, its operator run by the node agent.

Covers: ``helm install`` (CRDs, RBAC, Deployment; NOTES with next steps); the Deployment's
pod run by the local node agent as a real ``python -m pqmpc_operator`` process that uses
the in-cluster ServiceAccount token, passes kopf's liveness probe, and reconciles
``examples/nodepool.yaml`` to Ready with nothing but the chart's RBAC; that RBAC is least
privilege (no listing or deleting Secrets, no wildcards); ``helm upgrade`` with a changed
value rolls the Deployment (Recreate: the old pod is gone); ``helm uninstall`` removes
everything but the CRDs. A real Prometheus (Debian's package) scrapes the chart's operator
and the pool's nodes with the pqmpc alert rules loaded, and the key series are queried.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chart_helpers import CHART, REPO
from pqmpc_local.agent_runner import NodeAgentProcess
from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.processes import free_port
from pqmpc_local.prometheus_config import prometheus_config
from pqmpc_local.pytest_plugin import Kubectl, wait_for

Helm = Callable[..., subprocess.CompletedProcess[str]]

RELEASE = "pqmpc-helm"
SYSTEM_NS = "pqmpc-helm-system"
POOL_NS = "pq-helm"
OPERATOR = f"{RELEASE}-operator"  # the chart's name for Deployment, ServiceAccount, ClusterRole
SA_USER = f"system:serviceaccount:{SYSTEM_NS}:{OPERATOR}"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=pqmpc-operator"


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def running_operator_pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    pods = get_json(kubectl, "pods", "-n", SYSTEM_NS, "-l", OPERATOR_SELECTOR)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_operator_pod(kubectl: Kubectl) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        pods = running_operator_pods(kubectl)
        if len(pods) != 1:
            return None
        pod = pods[0]
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
        return pod if pod["status"].get("phase") == "Running" and conds.get("Ready") == "True" else None
    return check


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except OSError as exc:
        return 0, str(exc)


def pool_ready(kubectl: Kubectl, replicas: int) -> Callable[[], Any]:
    def check() -> Any:
        pool = get_json(kubectl, "mpcpool", "banks", "-n", POOL_NS)
        status = pool.get("status") or {}
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("Ready")
        ok = (ready == "True" and status.get("readyReplicas") == replicas
              and status.get("observedGeneration") == pool["metadata"]["generation"])
        return pool if ok else None
    return check


@pytest.fixture(scope="module")
def release(
    helm: Helm, control_plane: ControlPlane, kubectl: Kubectl, node_agent: NodeAgentProcess,
) -> Iterator[dict[str, Any]]:
    """The chart installed (watching only the test namespace), until the module ends."""
    kube = ["--kubeconfig", str(control_plane.kubeconfig)]
    # The operator binds 0.0.0.0: free ports keep it clear of anything else on this machine.
    ports = {"liveness": free_port(), "metrics": free_port(), "bootstrap": free_port()}
    kubectl("create", "namespace", POOL_NS)
    install = helm(
        "install", RELEASE, str(CHART), *kube, "--namespace", SYSTEM_NS, "--create-namespace",
        "--set", f"operator.watchNamespaces={{{POOL_NS}}}",
        "--set", f"operator.livenessPort={ports['liveness']}", "--set", f"operator.metricsPort={ports['metrics']}",
        # No cluster DNS or kube-proxy locally: node processes dial the operator pod's port on this host.
        "--set", f"operator.bootstrapPort={ports['bootstrap']}",
        "--set", f"operator.bootstrapUrl=https://127.0.0.1:{ports['bootstrap']}",
        "--set", "operator.resyncSeconds=5", "--set", "operator.livenessProbe.initialDelaySeconds=2",
        "--set", "operator.livenessProbe.periodSeconds=5",
    )
    try:
        yield {"helm": helm, "kube": kube, "ports": ports, "install": install, "agent": node_agent}
    finally:
        # Pools carry kopf's finalizer: delete them while an operator still runs.
        kubectl("delete", "mpcpool", "--all", "-n", POOL_NS, "--wait=true", "--timeout=60s", check=False)
        helm("uninstall", RELEASE, *kube, "--namespace", SYSTEM_NS, "--wait", "--timeout", "60s", check=False)
        kubectl("delete", "namespace", POOL_NS, SYSTEM_NS, "--wait=false", check=False)


def operator_diagnostics(kubectl: Kubectl, agent: NodeAgentProcess) -> str:
    pods = running_operator_pods(kubectl)
    logs = "\n".join(agent.pod_logs(SYSTEM_NS, p["metadata"]["name"], 60) for p in pods)
    return f"operator pods: {[p['metadata']['name'] for p in pods]}\n{logs}\nagent:\n{agent.log_tail(30)}"


def test_install_creates_the_chart_objects(release: dict[str, Any], kubectl: Kubectl) -> None:
    notes = release["install"].stdout
    assert "STATUS: deployed" in notes
    assert "kubectl apply -f" in notes and "mpcpool banks" in notes
    assert "monitoring.coreos.com/v1" in notes  # no Prometheus Operator here: says so
    for crd in ("nodepools.pqmpc.io", "mpcsessions.pqmpc.io"):
        kubectl("get", "crd", crd)
    deployment = get_json(kubectl, "deployment", OPERATOR, "-n", SYSTEM_NS)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    kubectl("get", "serviceaccount", OPERATOR, "-n", SYSTEM_NS)
    kubectl("get", "clusterrole", OPERATOR)
    kubectl("get", "clusterrolebinding", OPERATOR)
    kubectl("get", "service", f"{OPERATOR}-metrics", "-n", SYSTEM_NS)
    dashboards = get_json(kubectl, "configmap", "-n", SYSTEM_NS, "-l", "grafana_dashboard=1")["items"]
    assert [cm["metadata"]["name"] for cm in dashboards] == [f"{RELEASE}-dashboard"]
    # No Prometheus Operator API on this control plane: no ServiceMonitor was attempted.
    manifest = release["helm"]("get", "manifest", RELEASE, *release["kube"], "--namespace", SYSTEM_NS).stdout
    assert "kind: ServiceMonitor" not in manifest and "kind: PrometheusRule" not in manifest


def test_chart_operator_runs_and_reconciles_the_example_pool(release: dict[str, Any], kubectl: Kubectl) -> None:
    agent: NodeAgentProcess = release["agent"]
    pod = wait_for("the operator pod to run and pass kopf's liveness probe", ready_operator_pod(kubectl), 120)
    ip = pod["status"]["podIP"]
    healthz = f"http://{ip}:{release['ports']['liveness']}/healthz"
    try:
        wait_for("kopf's /healthz on the pod IP", lambda: http_get(healthz)[0] == 200, 60)
    except BaseException:
        print(operator_diagnostics(kubectl, agent))
        raise
    kubectl("apply", "-n", POOL_NS, "-f", str(REPO / "examples" / "nodepool.yaml"))
    try:
        pool = wait_for("NodePool banks Ready under the chart's operator", pool_ready(kubectl, 3), 150, every=1.0)
    except BaseException:
        print(operator_diagnostics(kubectl, agent))
        raise
    assert pool["status"]["replicas"] == 3
    nodes = get_json(kubectl, "pods", "-n", POOL_NS, "-l", "app.kubernetes.io/name=pqmpc-node")["items"]
    assert len(nodes) == 3 and all(p["status"]["phase"] == "Running" for p in nodes)
    # The operator's process has no kubeconfig: only the pod's in-cluster ServiceAccount token.
    assert "KUBECONFIG" not in {e["name"] for e in pod["spec"]["containers"][0].get("env") or []}
    # Its metrics port serves the pool gauges. The operator sets them just after it writes the
    # status this test saw, so wait for the gauge rather than read it once.
    gauge = f'pqmpc_pool_replicas{{namespace="{POOL_NS}",pool="banks",state="ready"}} 3.0'
    metrics_url = f"http://{ip}:{release['ports']['metrics']}/metrics"
    wait_for("the ready-replicas gauge at 3", lambda: (lambda r: r[0] == 200 and gauge in r[1])(http_get(metrics_url)),
             30)


def test_operator_uses_the_in_cluster_service_account(release: dict[str, Any], kubectl: Kubectl) -> None:
    pod = wait_for("the operator pod", ready_operator_pod(kubectl), 60)
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    volumes = [v for v in pod["spec"]["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in src for v in volumes for src in v["projected"]["sources"]), (
        "the ServiceAccount admission plugin did not project a token"
    )
    # The agent materialised the token at the standard path for the in-cluster client.
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts


def prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = http_get(url)
    return list(json.loads(body)["data"]["result"]) if status == 200 else []


def test_prometheus_scrapes_operator_and_nodes(
    release: dict[str, Any], kubectl: Kubectl, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (make prometheus)")
    operator = wait_for("the operator pod", ready_operator_pod(kubectl), 60)
    nodes = get_json(kubectl, "pods", "-n", POOL_NS, "-l", "app.kubernetes.io/name=pqmpc-node")["items"]
    node_targets = [f"{p['status']['podIP']}:9100" for p in nodes]  # the plain-HTTP metrics port
    assert len(node_targets) == 3
    rules = REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml"
    config = prometheus_config(
        operator_target=f"{operator['status']['podIP']}:{release['ports']['metrics']}",
        operator_labels={"namespace": SYSTEM_NS},  # as a ServiceMonitor would attach: the series keep theirs
        node_targets=[(t, {}) for t in node_targets], rule_files=[str(rules)], interval="1s",
    )
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        def all_up() -> list[dict[str, Any]] | None:
            up = prometheus_query(base, "up == 1")
            return up if len(up) == 4 else None

        try:
            wait_for("Prometheus to scrape the operator and three nodes", all_up, 60)
        except BaseException:
            print((tmp_path / "prometheus.log").read_text()[-3000:])
            print(prometheus_query(base, "up"))
            raise
        ready = prometheus_query(base, f'pqmpc_pool_replicas{{namespace="{POOL_NS}",pool="banks",state="ready"}}')
        assert [r["value"][1] for r in ready] == ["3"]
        certified = prometheus_query(base, "sum(pqmpc_node_certified)")
        assert certified and certified[0]["value"][1] == "3"
        assert len(prometheus_query(base, "pqmpc_node_kem_key_age_seconds")) == 3
        assert len(prometheus_query(base, 'pqmpc_node_info{pool="banks"}')) == 3
        status, body = http_get(f"{base}/api/v1/rules")
        assert status == 200
        loaded = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
        assert {"PqmpcMacCheckFailures", "PqmpcPeerLinkNotPostQuantum", "PqmpcKeyRotationOverdue"} <= loaded
        # A healthy fleet fires nothing.
        status, body = http_get(f"{base}/api/v1/alerts")
        assert status == 200 and json.loads(body)["data"]["alerts"] == []
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("create", "pods", True),
    ("patch", "nodepools.pqmpc.io/status", True),
    ("get", "secrets", True),  # the pool CA Secret, by name
    ("patch", "secrets", True),  # a session's signed plan, written with server-side apply
    ("list", "secrets", False),
    ("watch", "secrets", False),
    ("delete", "secrets", False),
    ("update", "secrets", False),
    ("delete", "nodepools.pqmpc.io", False),
    ("create", "clusterroles.rbac.authorization.k8s.io", False),
    ("*", "*", False),
])
def test_chart_rbac_is_least_privilege(
    release: dict[str, Any], kubectl: Kubectl, verb: str, resource: str, allowed: bool
) -> None:
    result = kubectl("auth", "can-i", verb, resource, "-n", POOL_NS, "--as", SA_USER, check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), result.stdout + result.stderr


def test_upgrade_with_a_changed_value_rolls_the_deployment(release: dict[str, Any], kubectl: Kubectl) -> None:
    before = wait_for("the operator pod", ready_operator_pod(kubectl), 60)
    generation = get_json(kubectl, "deployment", OPERATOR, "-n", SYSTEM_NS)["metadata"]["generation"]
    upgrade = release["helm"]("upgrade", RELEASE, str(CHART), *release["kube"], "--namespace", SYSTEM_NS,
                              "--reuse-values", "--set", "operator.resyncSeconds=7")
    assert "STATUS: deployed" in upgrade.stdout and "REVISION: 2" in upgrade.stdout
    deployment = get_json(kubectl, "deployment", OPERATOR, "-n", SYSTEM_NS)
    assert deployment["metadata"]["generation"] > generation
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PQMPC_RESYNC_SECONDS"] == "7"

    def replaced() -> dict[str, Any] | None:
        pod = ready_operator_pod(kubectl)()
        return pod if pod and pod["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = wait_for("a new operator pod after the upgrade", replaced, 120)
    assert {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}["PQMPC_RESYNC_SECONDS"] == "7"
    # Recreate: the old pod is gone, never two operators at once.
    assert [p["metadata"]["uid"] for p in running_operator_pods(kubectl)] == [after["metadata"]["uid"]]
    # The new operator picks the pool up and keeps it Ready.
    kubectl("scale", "mpcpool", "banks", "-n", POOL_NS, "--replicas=3")
    wait_for("NodePool banks Ready under the upgraded operator", pool_ready(kubectl, 3), 90, every=1.0)
    history = release["helm"]("history", RELEASE, *release["kube"], "--namespace", SYSTEM_NS, "-o", "json").stdout
    assert [h["revision"] for h in json.loads(history)] == [1, 2]


def test_uninstall_removes_everything_but_the_crds(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl("delete", "mpcpool", "banks", "-n", POOL_NS, "--wait=true", "--timeout=60s")
    release["helm"]("uninstall", RELEASE, *release["kube"], "--namespace", SYSTEM_NS, "--wait", "--timeout", "90s")
    for args in (("deployment", OPERATOR, "-n", SYSTEM_NS), ("serviceaccount", OPERATOR, "-n", SYSTEM_NS),
                 ("clusterrole", OPERATOR), ("clusterrolebinding", OPERATOR),
                 ("service", f"{OPERATOR}-metrics", "-n", SYSTEM_NS)):
        result = kubectl("get", *args, check=False)
        assert result.returncode != 0 and "NotFound" in result.stderr, args
    wait_for("the operator pod to go", lambda: not running_operator_pods(kubectl), 60)
    # Helm never deletes CRDs (that would delete every pool and session in the cluster).
    kubectl("get", "crd", "nodepools.pqmpc.io")
    listed = release["helm"]("list", *release["kube"], "--namespace", SYSTEM_NS, "-q").stdout
    assert RELEASE not in listed.split()
