"""NodePool reconciliation on the real local control plane, node pods as real processes.

Covers: apply -> owned children and Ready pods; kubectl scale up/down (highest ordinals
first); template roll-out; an unschedulable group reported as Degraded with no pods;
crash-looping node pods -> Degraded; operator restart mid-reconcile converges; delete
-> garbage collection; the operator's RBAC is enough and no broader than needed.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import REPO, OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl, wait_for

NAMESPACES = ("pq-apply", "pq-scale", "pq-bad", "pq-restart", "pq-gc")
CRASH_NAMESPACE = "pq-crash"
OPERATOR_SA = "system:serviceaccount:pqmpc-system:pqmpc-operator"




def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def pool_doc(name: str, groups: list[dict[str, Any]], **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": name},
                           "spec": {"engine": {"backend": "numpy"}, "groups": groups, **spec}})


def group(name: str, zone: str = "eu-west-1a", region: str = "eu-west", replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "replicas": replicas, "region": region, "zone": zone, "trustDomain": name, **extra}


def condition(pool: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (pool.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def ready_pool(kubectl: Kubectl, ns: str, name: str, replicas: int) -> Callable[[], Any]:
    def check() -> Any:
        pool = get_json(kubectl, "mpcpool", name, "-n", ns)
        st = pool.get("status") or {}
        ok = (
            condition(pool, "Ready").get("status") == "True"
            and st.get("readyReplicas") == replicas
            and st.get("replicas") == replicas
            and st.get("observedGeneration") == pool["metadata"]["generation"]
        )
        return pool if ok else None
    return check


def pod_names(kubectl: Kubectl, ns: str) -> list[str]:
    pods = get_json(kubectl, "pods", "-n", ns, "-l", "app.kubernetes.io/name=pqmpc-node")["items"]
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: object, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    for ns in NAMESPACES:
        kubectl("create", "namespace", ns, check=False)
    workdir = tmp_path_factory.mktemp("operator")
    args = [a for ns in NAMESPACES for a in ("--namespace", ns)]
    op = start_operator(control_plane, workdir, args=args)
    yield op
    op.stop()


class TestApplyAndReady:
    def test_example_pool_becomes_ready_with_owned_children(self, operator: OperatorProcess, kubectl: Kubectl) -> None:
        ns = "pq-apply"
        kubectl("apply", "-n", ns, "-f", str(REPO / "examples" / "nodepool.yaml"))
        pool = wait_for("pool banks Ready", ready_pool(kubectl, ns, "banks", 3))
        uid = pool["metadata"]["uid"]
        assert pool["status"]["selector"] == "app.kubernetes.io/name=pqmpc-node,pqmpc.io/pool=banks"
        nodes = pool["status"]["nodes"]
        assert {n["trustDomain"] for n in nodes} == {"bank-a", "bank-b", "bank-c"}
        assert all(n["ready"] for n in nodes)

        pods = get_json(kubectl, "pods", "-n", ns, "-l", "pqmpc.io/pool=banks")["items"]
        assert sorted(p["metadata"]["name"] for p in pods) == ["banks-bank-a-eu-0", "banks-bank-b-eu-0", "banks-bank-c-us-0"]
        for kind in ("pods", "service", "serviceaccount", "poddisruptionbudget", "networkpolicy"):
            items = get_json(kubectl, kind, "-n", ns, "-l", "pqmpc.io/pool=banks")["items"]
            assert items, f"no {kind} for the pool"
            for obj in items:
                refs = obj["metadata"].get("ownerReferences") or []
                assert [r["uid"] for r in refs] == [uid], f"{kind} {obj['metadata']['name']} not owned by the pool"
        # Each pod is a real process serving its readiness endpoint on its own loopback IP
        # (plain HTTP on the metrics port; the API port speaks PQ-TLS only).
        for pod in pods:
            ip = pod["status"]["podIP"]
            assert ip.startswith("127.0.0.")
            with urllib.request.urlopen(f"http://{ip}:9100/readyz", timeout=5) as resp:
                assert json.loads(resp.read())["node"] == pod["metadata"]["name"]
        events = get_json(kubectl, "events", "-n", ns, "--field-selector", "involvedObject.name=banks")["items"]
        assert any(e["reason"] == "PoolReady" for e in events)
        metrics = operator.metrics()
        assert 'pqmpc_pool_replicas{namespace="pq-apply",pool="banks",state="ready"} 3.0' in metrics


class TestScaleAndRollout:
    def test_kubectl_scale_and_rollout(self, operator: OperatorProcess, kubectl: Kubectl) -> None:
        ns = "pq-scale"
        kubectl("apply", "-n", ns, "-f", "-", input=pool_doc("p", [group("a"), group("b", zone="eu-west-1b")]))
        wait_for("pool p Ready with 2", ready_pool(kubectl, ns, "p", 2))

        kubectl("scale", "-n", ns, "mpcpool/p", "--replicas=4")
        wait_for("pool p Ready with 4", ready_pool(kubectl, ns, "p", 4))
        assert pod_names(kubectl, ns) == ["p-a-0", "p-a-1", "p-b-0", "p-b-1"]
        scale = get_json(kubectl, "mpcpool", "p", "-n", ns, "--subresource=scale")
        assert scale["status"]["replicas"] == 4 and "pqmpc.io/pool=p" in scale["status"]["selector"]

        kubectl("scale", "-n", ns, "mpcpool/p", "--replicas=3")
        wait_for("pool p Ready with 3", ready_pool(kubectl, ns, "p", 3))
        assert pod_names(kubectl, ns) == ["p-a-0", "p-a-1", "p-b-0"], "the highest ordinal of the later group goes first"

        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in get_json(kubectl, "pods", "-n", ns)["items"]}
        kubectl("patch", "-n", ns, "mpcpool/p", "--type=merge", "-p", '{"spec":{"engine":{"backend":"auto"}}}')
        seen_unready = []

        def rolled() -> bool:
            pool = get_json(kubectl, "mpcpool", "p", "-n", ns)
            pods = get_json(kubectl, "pods", "-n", ns)["items"]
            seen_unready.append(sum(1 for n in (pool.get("status") or {}).get("nodes", []) if not n["ready"]))
            fresh = all(before.get(p["metadata"]["name"]) != p["metadata"]["uid"] for p in pods)
            return fresh and len(pods) == 3 and bool(ready_pool(kubectl, ns, "p", 3)())

        wait_for("roll-out to finish", rolled, timeout=120)
        assert max(seen_unready) <= 1, f"roll-out took more than one pod down at once: {seen_unready}"
        envs = [c["env"] for p in get_json(kubectl, "pods", "-n", ns)["items"] for c in p["spec"]["containers"]]
        assert all({"name": "PQMPC_BACKEND", "value": "auto"} in env for env in envs)


class TestBadSpecs:
    def test_unschedulable_group_is_degraded_without_pods(self, operator: OperatorProcess, kubectl: Kubectl) -> None:
        ns = "pq-bad"
        kubectl("apply", "-n", ns, "-f", "-",
                input=pool_doc("mars", [group("ok"), group("far", zone="mars-1a", region="mars")]))

        def degraded() -> Any:
            pool = get_json(kubectl, "mpcpool", "mars", "-n", ns)
            cond = condition(pool, "Degraded")
            return cond if cond.get("status") == "True" else None

        cond = wait_for("Degraded on pool mars", degraded)
        assert cond["reason"] == "InsufficientResources"
        assert "mars-1a" in cond["message"] and "spec.groups[1]" in cond["message"]
        wait_for("the schedulable group's pod", lambda: pod_names(kubectl, ns) == ["mars-ok-0"])

        def ok_node_ready() -> bool:
            nodes = (get_json(kubectl, "mpcpool", "mars", "-n", ns).get("status") or {}).get("nodes") or []
            return any(n["name"] == "mars-ok-0" and n.get("ready") for n in nodes)

        # Status can only show the pod ready from a later reconcile pass than the one that made it;
        # each pass plans every group's pods, so by then a wrongly made "far" pod would exist.
        wait_for("a later reconcile pass to report mars-ok-0 ready", ok_node_ready, timeout=120)
        assert pod_names(kubectl, ns) == ["mars-ok-0"], "no pod may be made for the unschedulable group"

    def test_too_many_gpus_for_any_node(self, operator: OperatorProcess, kubectl: Kubectl) -> None:
        ns = "pq-bad"
        # Each fake Node has 8 GPUs: two pods asking for 5 each cannot both fit in one zone.
        kubectl("apply", "-n", ns, "-f", "-", input=pool_doc("greedy", [group("g", replicas=2, gpus=5)]))

        def degraded() -> Any:
            cond = condition(get_json(kubectl, "mpcpool", "greedy", "-n", ns), "Degraded")
            return cond if cond.get("status") == "True" else None

        cond = wait_for("Degraded on pool greedy", degraded)
        assert cond["reason"] == "Unschedulable"
        assert "greedy-g-1" in cond["message"]


    def test_crash_looping_nodes_degrade_the_pool(
        self, control_plane: ControlPlane, node_agent: object, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        # A second operator, watching only this namespace, whose node command exits 1.
        kubectl("create", "namespace", CRASH_NAMESPACE, check=False)
        crashy = start_operator(control_plane, tmp_path, args=["--namespace", CRASH_NAMESPACE],
                                extra_env={"PQMPC_NODE_COMMAND": "false"})
        try:
            kubectl("apply", "-n", CRASH_NAMESPACE, "-f", "-", input=pool_doc("crashy", [group("a")]))

            def degraded() -> Any:
                cond = condition(get_json(kubectl, "mpcpool", "crashy", "-n", CRASH_NAMESPACE), "Degraded")
                return cond if cond.get("status") == "True" else None

            cond = wait_for("Degraded on pool crashy", degraded, timeout=120)
            assert cond["reason"] == "CrashLoopBackOff"
            assert "crashy-a-0" in cond["message"] and "exit code 1" in cond["message"]
            pool = get_json(kubectl, "mpcpool", "crashy", "-n", CRASH_NAMESPACE)
            assert condition(pool, "Ready")["status"] == "False"
            events = get_json(kubectl, "events", "-n", CRASH_NAMESPACE, "--field-selector", "involvedObject.name=crashy")["items"]
            assert any(e["reason"] == "CrashLoopBackOff" and e["type"] == "Warning" for e in events)
            kubectl("delete", "-n", CRASH_NAMESPACE, "mpcpool", "crashy", "--wait=true", "--timeout=60s")
        finally:
            crashy.stop()


class TestRestartAndGarbageCollection:
    def test_operator_restart_mid_reconcile_converges(
        self, operator: OperatorProcess, control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        ns = "pq-restart"
        operator.process.stop(timeout=0.1)  # SIGKILL-ish: no graceful clean-up
        kubectl("apply", "-n", ns, "-f", "-", input=pool_doc("r", [group("a", replicas=2), group("b", zone="us-east-1a", region="us-east")]))
        args = [a for n in NAMESPACES for a in ("--namespace", n)]
        second = start_operator(control_plane, tmp_path, args=args)
        try:
            wait_for("first pods", lambda: len(pod_names(kubectl, ns)) >= 1, timeout=60, every=0.05)
            second.process.stop(timeout=0.1)  # killed in the middle of creating the pool's pods
            third = start_operator(control_plane, tmp_path / "again", args=args)
            operator.process = third.process
            operator.liveness_port, operator.metrics_port = third.liveness_port, third.metrics_port
            wait_for("pool r Ready after restarts", ready_pool(kubectl, ns, "r", 3))
            assert pod_names(kubectl, ns) == ["r-a-0", "r-a-1", "r-b-0"]
        finally:
            second.process.stop(timeout=1)

    def test_delete_collects_children(self, operator: OperatorProcess, kubectl: Kubectl) -> None:
        ns = "pq-gc"
        kubectl("apply", "-n", ns, "-f", "-", input=pool_doc("gone", [group("a")]))
        wait_for("pool gone Ready", ready_pool(kubectl, ns, "gone", 1))
        kubectl("delete", "-n", ns, "mpcpool", "gone", "--wait=true", "--timeout=60s")

        def collected() -> bool:
            left = [k for k in ("pods", "service", "serviceaccount", "poddisruptionbudget", "networkpolicy")
                    if get_json(kubectl, k, "-n", ns, "-l", "pqmpc.io/pool=gone")["items"]]
            return not left

        wait_for("garbage collection of the pool's children", collected, timeout=90)


class TestLeastPrivilege:
    @pytest.mark.parametrize(
        ("verb", "resource", "allowed"),
        [
            ("create", "pods", True),
            ("delete", "pods", True),
            ("patch", "nodepools.pqmpc.io/status", True),
            ("list", "nodes", True),
            ("create", "secrets", True),
            ("patch", "secrets", True),  # a session's signed plan (server-side apply, by name)
            ("create", "tokenreviews.authentication.k8s.io", True),  # node bootstrap (workload attestation)
            ("create", "serviceaccounts --subresource=token", False),  # it checks tokens, never mints them
            ("list", "secrets", False),
            ("watch", "secrets", False),
            ("update", "secrets", False),
            ("delete", "secrets", False),
            ("delete", "nodepools.pqmpc.io", False),
            ("create", "nodes", False),
            ("update", "pods", False),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
            ("create", "pods --subresource=exec", False),
            ("delete", "namespaces", False),
        ],
    )
    def test_operator_role(self, operator: OperatorProcess, kubectl: Kubectl, verb: str, resource: str, allowed: bool) -> None:
        result = kubectl("auth", "can-i", verb, *resource.split(), "--all-namespaces", f"--as={OPERATOR_SA}", check=False)
        assert result.stdout.strip() == ("yes" if allowed else "no"), result.stdout + result.stderr

    def test_role_has_no_wildcards(self) -> None:
        role = yaml.safe_load((REPO / "deploy" / "operator-clusterrole.yaml").read_text())
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {key}: {rule}"
