"""NodePool planning without a cluster: spec parsing, builders, roll-out plan, status."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pqmpc_operator import builders, rollout, status
from pqmpc_operator.model import SpecError, distribute_replicas, parse_duration, parse_nodepool
from pqmpc_operator.settings import OperatorSettings, settings_from_env

SETTINGS = OperatorSettings()
NOW = "2026-11-21T12:00:00Z"


def pool_body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "pqmpc.io/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": "banks", "namespace": "ns", "uid": "u-1", "generation": 3},
        "spec": {
            "groups": [
                {"name": "a", "replicas": 2, "region": "eu-west", "zone": "eu-west-1a", "trustDomain": "bank-a"},
                {"name": "b", "replicas": 1, "region": "us-east", "zone": "us-east-1a", "trustDomain": "bank-b", "gpus": 2},
            ]
        },
    }
    base["spec"].update(spec)
    return base


def node(zone: str, region: str, gpus: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": f"n-{zone}", "labels": {builders.LABEL_REGION: region, builders.LABEL_ZONE: zone}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


NODES = [node("eu-west-1a", "eu-west"), node("us-east-1a", "us-east", gpus=4)]


def as_running(pod: dict[str, Any], ready: bool = True, restarts: int = 0, waiting: str | None = None) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"restartCount": restarts, "ready": ready, "state": state,
                               "lastState": {"terminated": {"exitCode": 3}} if restarts else {}}],
    }
    return pod


class TestSpecParsing:
    def test_defaults(self) -> None:
        pool = parse_nodepool(pool_body())
        assert pool.suite.value == "pq-default"
        assert pool.rotation.duration_s == 86400 and pool.rotation.renew_before_s == 28800
        assert pool.effective_replicas() == {"a": 2, "b": 1}

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            ({"groups": []}, "groups"),
            ({"engine": {"backend": "tpu"}}, "engine.backend"),
            ({"keys": {"rotation": {"duration": "1h", "renewBefore": "2h"}}}, "keys.rotation.renewBefore"),
            ({"keys": {"rotation": {"duration": "forever"}}}, "keys.rotation.duration"),
            ({"keys": {"suite": "classical"}}, "keys.suite"),
            ({"anomaly": {"quarantineScore": 1.5}}, "anomaly.quarantineScore"),
        ],
    )
    def test_unusable_specs_name_the_field(self, spec: dict[str, Any], field: str) -> None:
        with pytest.raises(SpecError) as err:
            parse_nodepool(pool_body(**spec))
        assert err.value.field_path == field
        assert f"spec.{field}" in str(err.value)

    def test_duplicate_group_names(self) -> None:
        body = pool_body()
        body["spec"]["groups"][1]["name"] = "a"
        with pytest.raises(SpecError, match=r"groups\[1\]\.name.*twice"):
            parse_nodepool(body)

    def test_cupy_without_gpus(self) -> None:
        body = pool_body(engine={"backend": "cupy"})
        body["spec"]["groups"][1]["gpus"] = 0
        with pytest.raises(SpecError, match="engine.backend"):
            parse_nodepool(body)

    def test_durations(self) -> None:
        assert parse_duration("1h30m", "x") == 5400
        assert parse_duration("500ms", "x") == 0.5
        with pytest.raises(SpecError):
            parse_duration("1d", "x")


class TestReplicaDistribution:
    def test_scale_up_fills_smallest_groups_first(self) -> None:
        groups = parse_nodepool(pool_body()).groups
        assert distribute_replicas(4, groups) == {"a": 2, "b": 2}
        assert distribute_replicas(5, groups) == {"a": 3, "b": 2}
        assert distribute_replicas(6, groups) == {"a": 3, "b": 3}

    def test_scale_down_takes_from_largest_later_first(self) -> None:
        groups = parse_nodepool(pool_body()).groups
        assert distribute_replicas(2, groups) == {"a": 1, "b": 1}
        assert distribute_replicas(0, groups) == {"a": 0, "b": 0}

    def test_total_is_respected(self) -> None:
        groups = parse_nodepool(pool_body()).groups
        for total in range(0, 12):
            assert sum(distribute_replicas(total, groups).values()) == total


class TestBuilders:
    def test_pod_identity_topology_and_gpus(self) -> None:
        pool = parse_nodepool(pool_body(image="registry.example/pqmpc:1"))
        pod = builders.build_node_pod(pool, pool.groups[1], 0, SETTINGS)
        assert pod["metadata"]["name"] == "banks-b-0"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        assert pod["metadata"]["ownerReferences"][0]["controller"] is True
        spec = pod["spec"]
        expr = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
        assert {"key": builders.LABEL_ZONE, "operator": "In", "values": ["us-east-1a"]} in expr
        container = spec["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert container["image"] == "registry.example/pqmpc:1"
        env = {e["name"]: e for e in container["env"]}
        assert env["PQMPC_TRUST_DOMAIN"]["value"] == "bank-b"
        assert env["PQMPC_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert spec["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True

    def test_template_hash_tracks_spec_not_name(self) -> None:
        pool = parse_nodepool(pool_body())
        h0 = builders.build_node_pod(pool, pool.groups[0], 0, SETTINGS)["metadata"]["labels"][builders.LABEL_TEMPLATE_HASH]
        h1 = builders.build_node_pod(pool, pool.groups[0], 1, SETTINGS)["metadata"]["labels"][builders.LABEL_TEMPLATE_HASH]
        assert h0 == h1
        changed = parse_nodepool(pool_body(image="other:2"))
        assert builders.template_hash(changed, changed.groups[0], SETTINGS) != h0

    def test_children_are_owned_and_selective(self) -> None:
        pool = parse_nodepool(pool_body(clientCIDRs=["10.1.0.0/16"]))
        objs = [
            builders.build_headless_service(pool, SETTINGS),
            builders.build_service_account(pool),
            builders.build_pdb(pool),
            builders.build_network_policy(pool, SETTINGS),
        ]
        for obj in objs:
            assert obj["metadata"]["ownerReferences"][0]["name"] == "banks"
        svc, _, pdb, netpol = objs
        assert svc["spec"]["clusterIP"] == "None"
        assert pdb["spec"]["maxUnavailable"] == 1
        sources = [src for rule in netpol["spec"]["ingress"] for src in rule["from"]]
        assert {"ipBlock": {"cidr": "10.1.0.0/16"}} in sources
        assert all(src for src in sources)  # no empty peer, which would admit everyone


class TestRolloutPlan:
    def test_creates_missing_pods(self) -> None:
        pool = parse_nodepool(pool_body())
        plan = rollout.plan_pods(pool, [], NODES, SETTINGS)
        assert sorted(p["metadata"]["name"] for p in plan.create) == ["banks-a-0", "banks-a-1", "banks-b-0"]
        assert plan.delete == ()

    def test_scale_down_removes_highest_ordinal_first(self) -> None:
        pool = parse_nodepool(pool_body(replicas=1))  # a:1? distribution takes from the later group first
        big = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(big, [], NODES, SETTINGS).create]
        plan = rollout.plan_pods(pool, pods, NODES, SETTINGS)
        assert pool.effective_replicas() == {"a": 1, "b": 0}
        assert set(plan.delete) == {"banks-a-1", "banks-b-0"}

    def test_rollout_one_ready_pod_at_a_time(self) -> None:
        old = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(old, [], NODES, SETTINGS).create]
        new = parse_nodepool(pool_body(image="v2"))
        plan = rollout.plan_pods(new, pods, NODES, SETTINGS)
        assert len(plan.delete) == 1 and len(plan.outdated) == 3
        # while one pod is down, nothing else is touched
        pods[0]["metadata"]["deletionTimestamp"] = NOW
        plan2 = rollout.plan_pods(new, pods, NODES, SETTINGS)
        assert plan2.delete == ()

    def test_busy_pods_wait_for_their_sessions(self) -> None:
        old = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(old, [], NODES, SETTINGS).create]
        new = parse_nodepool(pool_body(image="v2"))
        everyone_busy = frozenset({"banks-a-0", "banks-a-1", "banks-b-0"})
        assert rollout.plan_pods(new, pods, NODES, SETTINGS, everyone_busy).delete == ()
        some_busy = frozenset({"banks-b-0"})
        assert "banks-b-0" not in rollout.plan_pods(new, pods, NODES, SETTINGS, some_busy).delete
        assert len(rollout.plan_pods(new, pods, NODES, SETTINGS, some_busy).delete) == 1

    def test_broken_outdated_pods_are_replaced_at_once(self) -> None:
        old = parse_nodepool(pool_body())
        pods = [as_running(p, ready=False, waiting="CrashLoopBackOff") for p in rollout.plan_pods(old, [], NODES, SETTINGS).create]
        new = parse_nodepool(pool_body(image="fixed"))
        plan = rollout.plan_pods(new, pods, NODES, SETTINGS)
        assert set(plan.delete) == {"banks-a-0", "banks-a-1", "banks-b-0"}

    def test_unsatisfiable_gpu_group_gets_no_pods(self) -> None:
        body = pool_body()
        body["spec"]["groups"][1]["gpus"] = 8
        pool = parse_nodepool(body)
        plan = rollout.plan_pods(pool, [], NODES, SETTINGS)
        assert [p["metadata"]["name"] for p in plan.create] == ["banks-a-0", "banks-a-1"]
        assert "needs 8 nvidia.com/gpu" in plan.unsatisfiable["b"]
        assert "at most 4" in plan.unsatisfiable["b"]


class TestStatus:
    def test_ready_pool(self) -> None:
        pool = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(pool, [], NODES, SETTINGS).create]
        plan = rollout.plan_pods(pool, pods, NODES, SETTINGS)
        st = status.compute_status(pool, pods, plan, {}, NOW)
        conds = {c["type"]: c for c in st["conditions"]}
        assert st["readyReplicas"] == 3 and st["replicas"] == 3
        assert conds["Ready"]["status"] == "True" and conds["Progressing"]["reason"] == "Complete"
        assert conds["Degraded"]["status"] == "False"
        assert st["observedGeneration"] == 3
        assert st["selector"] == "app.kubernetes.io/name=pqmpc-node,pqmpc.io/pool=banks"
        assert [n["trustDomain"] for n in st["nodes"]] == ["bank-a", "bank-a", "bank-b"]

    def test_crashloop_is_degraded_with_reason(self) -> None:
        pool = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(pool, [], NODES, SETTINGS).create]
        pods[2] = as_running(pods[2], ready=False, restarts=5, waiting="CrashLoopBackOff")
        st = status.compute_status(pool, pods, rollout.plan_pods(pool, pods, NODES, SETTINGS), {}, NOW)
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Degraded"]["status"] == "True"
        assert conds["Degraded"]["reason"] == "CrashLoopBackOff"
        assert "banks-b-0" in conds["Degraded"]["message"] and "exit code 3" in conds["Degraded"]["message"]
        assert conds["Ready"]["status"] == "False"

    def test_transition_time_kept_until_flip(self) -> None:
        pool = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(pool, [], NODES, SETTINGS).create]
        plan = rollout.plan_pods(pool, pods, NODES, SETTINGS)
        first = status.compute_status(pool, pods, plan, {}, NOW)
        again = status.compute_status(pool, pods, plan, first, "2030-01-01T00:00:00Z")
        assert again == first  # nothing changed: the writer will skip the update
        pods[0] = as_running(pods[0], ready=False)
        flipped = status.compute_status(pool, pods, plan, first, "2030-01-01T00:00:00Z")
        ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")
        assert ready["lastTransitionTime"] == "2030-01-01T00:00:00Z"
        events = status.condition_events(first, flipped)
        assert [e.reason for e in events] == ["PoolNotReady"]

    def test_a_quarantined_node_shows_in_status_and_the_key_revision_is_reported(self) -> None:
        """`kubectl get mpcpool` must not read healthy while a node is quarantined; KEYS shows the log size."""
        pool = parse_nodepool(pool_body())
        pods = [as_running(p) for p in rollout.plan_pods(pool, [], NODES, SETTINGS).create]
        plan = rollout.plan_pods(pool, pods, NODES, SETTINGS)
        healthy = status.compute_status(pool, pods, plan, {}, NOW, key_revision=7)
        assert healthy["keyRevision"] == 7
        st = status.compute_status(pool, pods, plan, healthy, NOW, {"banks-a-1": {"quarantined": True}})
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "NodesQuarantined")
        assert ready["message"] == "3/3 node pods ready; quarantined (no new sessions): banks-a-1"
        assert st["keyRevision"] == 7  # kept when this pass learnt nothing new
        assert status.condition_events(healthy, st) == []  # the quarantine itself posts its Warning

    def test_invalid_spec_status(self) -> None:
        body = pool_body(keys={"suite": "rsa"})
        with pytest.raises(SpecError) as err:
            parse_nodepool(body)
        st = status.invalid_spec_status(body, err.value, NOW)
        degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == "InvalidSpec" and "spec.keys.suite" in degraded["message"]


def test_settings_from_env_rejects_bad_ports() -> None:
    with pytest.raises(ValueError, match="PQMPC_NODE_API_PORT"):
        settings_from_env({"PQMPC_NODE_API_PORT": "http"})
    assert settings_from_env({"PQMPC_NODE_COMMAND": "pqmpc-node --x"}).node_command == ("pqmpc-node", "--x")
