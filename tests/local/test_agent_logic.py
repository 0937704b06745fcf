"""Pure parts of the local node agent: scheduling fit, env resolution, pod status, loopback addresses, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pqmpc_local.agent import IpPool, parse_args
from pqmpc_local.podenv import ContainerConfigError, command_line, expand, resolve_env
from pqmpc_local.podstatus import ContainerView, Terminated, build_status, phase_of
from pqmpc_local.scheduling import NodeCapacity, Unschedulable, choose_node, pod_gpu_request
from pqmpc_local.volumes import materialize_volumes, mounts_for

NODES = [
    NodeCapacity("eu-a", {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-a"}, 8),
    NodeCapacity("eu-b", {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-b"}, 8),
    NodeCapacity("us-a", {"topology.kubernetes.io/region": "us", "topology.kubernetes.io/zone": "us-a"}, 2,
                 taints=({"key": "dedicated", "value": "x", "effect": "NoSchedule"},)),
]


def _pod(gpus: int = 0, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "resources": resources}], **spec},
            "status": {"podIP": "127.0.0.10"}}


def test_gpu_request_prefers_requests_over_limits() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "3"}}
    assert pod_gpu_request(pod) == 2
    assert pod_gpu_request(_pod(4)) == 4


def test_most_free_gpus_wins_and_taints_block() -> None:
    assert choose_node(_pod(1), NODES, {"eu-a": 3}) == "eu-b"
    tolerating = _pod(1, tolerations=[{"key": "dedicated", "operator": "Exists"}],
                      nodeSelector={"topology.kubernetes.io/region": "us"})
    assert choose_node(tolerating, NODES, {}) == "us-a"
    blocked = choose_node(_pod(1, nodeSelector={"topology.kubernetes.io/region": "us"}), NODES, {})
    assert isinstance(blocked, Unschedulable) and "untolerated taint" in blocked.message


@pytest.mark.parametrize(("operator", "values", "expected"), [
    ("In", ["eu-b"], "eu-b"),
    ("NotIn", ["eu-a"], "eu-b"),
    ("Exists", [], "eu-a"),
])
def test_required_node_affinity(operator: str, values: list[str], expected: str) -> None:
    expr = {"key": "topology.kubernetes.io/zone", "operator": operator, "values": values}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}
    assert choose_node(_pod(affinity=affinity), NODES[:2], {}) == expected


def test_unschedulable_message_reads_like_the_scheduler() -> None:
    result = choose_node(_pod(9, nodeSelector={"topology.kubernetes.io/region": "eu"}), NODES, {})
    assert isinstance(result, Unschedulable)
    assert result.message.startswith("0/3 nodes are available: 2 Insufficient nvidia.com/gpu, "
                                     "1 node(s) didn't match Pod's node affinity/selector.")


def test_env_resolution_covers_downward_api_refs_and_expansion() -> None:
    container = {"name": "c", "env": [
        {"name": "A", "value": "a"},
        {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
    ], "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}]}
    env = resolve_env(_pod(), container, secrets=lambda n: {"k": "v"} if n == "s" else None,
                      config_maps=lambda n: {"x": "1"} if n == "cm" else None,
                      base={"PATH": "/bin"}, service_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    assert env["B"] == "a-$(MISSING)-$(A)"
    assert (env["IP"], env["APP"], env["S"], env["CM_x"]) == ("127.0.0.10", "x", "v", "1")
    assert "OPT" not in env and env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["HOSTNAME"] == "p"
    with pytest.raises(ContainerConfigError, match='secret "gone" not found'):
        resolve_env(_pod(), {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone",
                                                                                                 "key": "k"}}}]},
                    secrets=lambda n: None, config_maps=lambda n: None, base={}, service_env={})


def test_command_line_expands_and_requires_a_command() -> None:
    assert command_line({"command": ["echo"], "args": ["$(X)"]}, {"X": "hi"}) == ["echo", "hi"]
    assert expand("$$(X)", {"X": "1"}) == "$(X)"
    with pytest.raises(ContainerConfigError, match="explicit command"):
        command_line({"name": "c", "args": ["x"]}, {})


def test_status_phases_and_conditions() -> None:
    crashed = Terminated(exit_code=1, reason="Error", started_at=0.0, finished_at=1.0)
    waiting = ContainerView(name="c", image="i", state="waiting", restart_count=1, waiting_reason="CrashLoopBackOff",
                            last_terminated=crashed)
    assert phase_of([waiting], "Always") == "Running"
    assert phase_of([ContainerView(name="c", image="i", state="waiting")], "Always") == "Pending"
    done = ContainerView(name="c", image="i", state="terminated", terminated=crashed)
    assert phase_of([done], "Never") == "Failed"
    status = build_status(containers=[ContainerView(name="c", image="i", state="running", ready=True, started_at=5.0)],
                          restart_policy="Always", pod_ip="127.0.0.10", host_ip="127.0.0.1", start_time=1.0,
                          transitions={"Ready=True": 5.0})
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["lastTransitionTime"] == "1970-01-01T00:00:05Z"
    assert status["podIPs"] == [{"ip": "127.0.0.10"}] and status["containerStatuses"][0]["ready"] is True


def test_ip_pool_reuses_lowest_released_address() -> None:
    pool = IpPool()
    first, second = pool.allocate(), pool.allocate()
    assert (first, second) == ("127.0.0.10", "127.0.0.11")
    pool.release(first)
    assert pool.allocate() == "127.0.0.10"
    assert pool.allocate() == "127.0.0.12"


def test_ip_pool_locks_keep_two_agents_apart(tmp_path: Path) -> None:
    one, two = IpPool(lock_dir=tmp_path), IpPool(lock_dir=tmp_path)
    assert one.allocate() == "127.0.0.10"
    assert two.allocate() == "127.0.0.11"
    one.release("127.0.0.10")
    assert two.allocate() == "127.0.0.10"


def test_cli_groups_labels_and_gpus_with_their_node() -> None:
    options = parse_args(["--kubeconfig", "k", "--workdir", "w", "--node", "a", "--labels", "x=1,y=2", "--gpus", "4",
                          "--node", "b", "--gpus=2"])
    assert [(n.name, dict(n.labels), n.gpus) for n in options.nodes] == [("a", {"x": "1", "y": "2"}, 4), ("b", {}, 2)]
    with pytest.raises(SystemExit):
        parse_args(["--kubeconfig", "k", "--workdir", "w", "--node", "a", "--node", "a"])


def test_volumes_materialise_projected_token_and_items(tmp_path: Path) -> None:
    pod = _pod(volumes=[
        {"name": "api", "projected": {"defaultMode": 0o640, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 600, "audience": "vault"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}},
        {"name": "sec", "secret": {"secretName": "s", "items": [{"key": "k", "path": "sub/dir/k.bin"}]}},
        {"name": "scratch", "emptyDir": {}},
    ])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "sec", "mountPath": "/etc/x/sec", "readOnly": True},
                                                   {"name": "api", "mountPath": "/var/run/secrets/t"}]
    minted: list[tuple[str | None, int]] = []

    def mint(audience: str | None, expiry: int) -> str:
        minted.append((audience, expiry))
        return "a.b.c"

    paths = materialize_volumes(pod, tmp_path, secrets=lambda n: {"k": b"\x00\x01"} if n == "s" else None,
                                config_maps=lambda n: {"ca.crt": b"PEM"}, mint_token=mint)
    assert (paths["api"] / "token").read_text() == "a.b.c" and minted == [("vault", 600)]
    assert (paths["api"] / "ca.crt").read_bytes() == b"PEM"
    assert (paths["api"] / "namespace").read_text() == "ns"
    assert (paths["api"] / "token").stat().st_mode & 0o777 == 0o640
    assert (paths["sec"] / "sub/dir/k.bin").read_bytes() == b"\x00\x01"
    assert paths["scratch"].is_dir()
    mounts = mounts_for(pod["spec"]["containers"][0], paths)
    assert [(m.target, m.read_only) for m in mounts] == [("/etc/x/sec", True), ("/var/run/secrets/t", False)]
    with pytest.raises(ContainerConfigError, match='secret "s" not found'):
        materialize_volumes(pod, tmp_path, secrets=lambda n: None, config_maps=lambda n: {"ca.crt": b""},
                            mint_token=mint)
