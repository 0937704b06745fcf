"""The NodePool and MPCSession CRDs on the real local kube-apiserver: the examples are
accepted, at least twenty schema-invalid specs are rejected at admission
(``kubectl apply --dry-run=server``) with a message that names the field and says what
to do, defaults are applied, the session spec is immutable except its TTL, and the
scale subresource, status subresource, short names and categories work."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
Body = dict[str, Any]


def example(name: str) -> Body:
    body: Body = yaml.safe_load((REPO / "examples" / name).read_text())
    return body


POOL = example("nodepool.yaml")
STATS = example("mpcsession-fraud-stats.yaml")
MLP = example("mpcsession-mlp.yaml")
IDENTITY = "cmVwbGFjZSB3aXRoIGEgcmVhbCBrZXk="


@pytest.fixture(scope="module")
def namespace(kubectl: Any) -> Iterator[str]:
    """The CRDs installed and Established, and a fresh namespace to apply objects in."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("apply", "-f", str(REPO / "deploy" / "mpcsession-admission-policy.yaml"))
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/nodepools.pqmpc.io", "crd/mpcsessions.pqmpc.io",
    )
    ns = f"crd-tests-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    wait_for_policy(kubectl, ns)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)
    # Cluster-scoped and not Helm's: leave no policy behind for a later helm install in the same cluster.
    kubectl("delete", "-f", str(REPO / "deploy" / "mpcsession-admission-policy.yaml"), "--ignore-not-found", check=False)


def wait_for_policy(kubectl: Any, namespace: str) -> None:
    """The admission policy is enforced once the API server has loaded it (a condition, polled)."""
    bad = with_change(STATS, lambda b: b["spec"]["outputs"][0]["allow"].append("sum(amount)"))
    deadline = time.monotonic() + 120
    while "ValidatingAdmissionPolicy" not in (result := dry_run(kubectl, namespace, bad)).stderr:
        if time.monotonic() > deadline:
            raise AssertionError(f"the MPCSession admission policy was not enforced within 120 s: {result.stderr}")
        time.sleep(0.5)


def dry_run(kubectl: Any, namespace: str, body: Body) -> Any:
    return kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def get(kubectl: Any, namespace: str, kind: str, name: str) -> Body:
    out: Body = json.loads(kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)
    return out


def with_change(base: Body, change: Callable[[Body], Any]) -> Body:
    body = copy.deepcopy(base)
    change(body)
    return body


def pool_groups(b: Body) -> list[Body]:
    groups: list[Body] = b["spec"]["groups"]
    return groups


def linear_score(b: Body) -> None:
    b["spec"]["program"] = {"linearScore": {"modelOwner": "insurer", "features": ["amount"], "activation": "threshold"}}
    b["spec"]["outputs"][0]["allow"] = ["score"]


# (case id, base object, change, fragments the rejection must contain)
INVALID: list[tuple[str, Body, Callable[[Body], Any], tuple[str, ...]]] = [
    # NodePool
    ("pool-no-groups", POOL, lambda b: b["spec"].pop("groups"), ("spec.groups", "Required")),
    ("pool-external-no-domain", POOL, lambda b: b["spec"].update(externalAccess={"mode": "gateway"}),
     ("spec.externalAccess.domain", "Required")),
    ("pool-external-wildcard", POOL, lambda b: b["spec"].update(externalAccess={"domain": "*.banks.example.com"}),
     ("spec.externalAccess.domain",)),
    ("pool-external-mode", POOL, lambda b: b["spec"].update(externalAccess={"mode": "ingress", "domain": "b.example"}),
     ("spec.externalAccess.mode", "gateway")),
    ("pool-external-service-type", POOL,
     lambda b: b["spec"].update(externalAccess={"domain": "b.example", "service": {"type": "ExternalName"}}),
     ("spec.externalAccess.service.type", "LoadBalancer")),
    ("pool-empty-groups", POOL, lambda b: b["spec"].update(groups=[]), ("spec.groups",)),
    ("pool-duplicate-group", POOL, lambda b: pool_groups(b)[1].update(name="bank-a-eu"),
     ("spec.groups", "must be unique", "rename or merge")),
    ("pool-group-name-case", POOL, lambda b: pool_groups(b)[0].update(name="Bank-A"), ("spec.groups[0].name",)),
    ("pool-group-name-long", POOL, lambda b: pool_groups(b)[0].update(name="g" * 31), ("spec.groups[0].name",)),
    ("pool-replicas-101", POOL, lambda b: pool_groups(b)[0].update(replicas=101), ("spec.groups[0].replicas",)),
    ("pool-gpus-9", POOL, lambda b: pool_groups(b)[2].update(gpus=9), ("spec.groups[2].gpus",)),
    ("pool-no-trust-domain", POOL, lambda b: pool_groups(b)[1].pop("trustDomain"),
     ("spec.groups[1].trustDomain", "Required")),
    ("pool-bad-region", POOL, lambda b: pool_groups(b)[0].update(region="eu west"), ("spec.groups[0].region",)),
    ("pool-33-groups", POOL,
     lambda b: b["spec"].update(groups=[dict(pool_groups(b)[0], name=f"g{i}") for i in range(33)]),
     ("spec.groups",)),
    ("pool-backend", POOL, lambda b: b["spec"]["engine"].update(backend="tpu"), ("spec.engine.backend", "Unsupported value")),
    ("pool-suite", POOL, lambda b: b["spec"]["keys"].update(suite="rsa-2048"), ("spec.keys.suite", "Unsupported value")),
    ("pool-renew-after-expiry", POOL, lambda b: b["spec"]["keys"]["rotation"].update(renewBefore="24h"),
     ("spec.keys.rotation.renewBefore", "lower renewBefore or raise duration")),
    ("pool-duration-days", POOL, lambda b: b["spec"]["keys"]["rotation"].update(duration="2d"),
     ("spec.keys.rotation.duration",)),
    ("pool-quarantine-score", POOL, lambda b: b["spec"]["anomaly"].update(quarantineScore=1.5),
     ("spec.anomaly.quarantineScore",)),
    ("pool-client-cidr", POOL, lambda b: b["spec"].update(clientCIDRs=["10.0.0.300/8"]),
     ("spec.clientCIDRs[0]", "is not a CIDR")),
    ("pool-negative-total", POOL, lambda b: b["spec"].update(replicas=-1), ("spec.replicas",)),
    ("pool-total-over-group-capacity", POOL, lambda b: b["spec"].update(replicas=301),
     ("spec.replicas", "lower the total or add groups")),
    ("pool-name-dots", POOL, lambda b: b["metadata"].update(name="banks.eu"), ("metadata.name",)),
    ("pool-pod-name-too-long", POOL,
     lambda b: (b["metadata"].update(name="p" * 30), pool_groups(b)[0].update(name="g" * 30)),
     ("spec.groups", "at most 59 characters")),
    # MPCSession
    ("session-one-party", STATS, lambda b: b["spec"].update(parties=1), ("spec.parties",)),
    ("session-threshold-ge-parties", STATS, lambda b: b["spec"].update(threshold=2),
     ("spec.threshold", "lower threshold or add parties")),
    ("session-shamir-majority", MLP, lambda b: b["spec"].update(parties=4, threshold=2),
     ("spec.threshold", "honest majority")),
    ("session-sharing", STATS, lambda b: b["spec"].update(sharing="replicated"), ("spec.sharing", "Unsupported value")),
    ("session-security", STATS, lambda b: b["spec"].update(security="covert"), ("spec.security",)),
    ("session-no-program", STATS, lambda b: b["spec"].update(program={}), ("spec.program", "exactly one")),
    ("session-two-programs", MLP,
     lambda b: b["spec"]["program"].update(aggregate=[{"op": "sum", "field": "amount"}]),
     ("spec.program", "exactly one")),
    ("session-allow-unknown-result", STATS, lambda b: b["spec"]["outputs"][0]["allow"].append("sum(amount)"),
     ("spec.outputs[].allow: sum(amount) is not a result the program computes",
      "allow only results of spec.program (count(amount), mean(amount), variance(amount), histogram(amount))")),
    ("session-allow-score-on-aggregate", STATS, lambda b: b["spec"]["outputs"][0].update(allow=["score"]),
     ("spec.outputs[].allow: score is not a result the program computes",)),
    ("session-allow-aggregate-on-model", MLP, lambda b: b["spec"]["outputs"][0].update(allow=["mean(amount)"]),
     ("spec.outputs[].allow: mean(amount) is not a result", "(score)")),
    ("session-allow-malformed", STATS, lambda b: b["spec"]["outputs"][0]["allow"].append("avg(amount)"),
     ("spec.outputs[0].allow[4]",)),
    ("session-histogram-no-bins", STATS, lambda b: b["spec"]["program"]["aggregate"][3].pop("bins"),
     ("spec.program.aggregate[3].bins", "is required for a histogram")),
    ("session-bins-on-mean", STATS, lambda b: b["spec"]["program"]["aggregate"][1].update(bins=[1, 2]),
     ("spec.program.aggregate[1].bins", "only allowed with op: histogram")),
    ("session-bins-unsorted", STATS, lambda b: b["spec"]["program"]["aggregate"][3].update(bins=[0, 100, 10]),
     ("spec.program.aggregate[3].bins", "strictly increasing")),
    ("session-op", STATS, lambda b: b["spec"]["program"]["aggregate"][0].update(op="median"),
     ("spec.program.aggregate[0].op", "Unsupported value")),
    ("session-min-ge-max", STATS, lambda b: b["spec"]["inputs"][0]["fields"][0].update(min=5, max=5),
     ("spec.inputs[0].fields[0].min", "widen or swap")),
    ("session-undeclared-feature", MLP, lambda b: b["spec"]["program"]["mlp"]["features"].append("income"),
     ("spec.program features: income is not declared in spec.inputs[].fields",)),
    ("session-undeclared-aggregate-field", STATS,
     lambda b: b["spec"]["program"]["aggregate"].append({"op": "sum", "field": "income"}),
     ("spec.program.aggregate[].field: income is not declared in spec.inputs[].fields",)),
    ("session-linear-threshold-missing", STATS, linear_score,
     ("spec.program.linearScore.threshold", "activation: sigmoid")),
    ("session-identity-not-base64", STATS, lambda b: b["spec"]["inputs"][0].update(identity="not base64!"),
     ("spec.inputs[0].identity",)),
    ("session-duplicate-owner", STATS, lambda b: b["spec"]["inputs"][1].update(owner="bank-a"),
     ("spec.inputs", "must be unique")),
    ("session-max-shares-per-zone", STATS, lambda b: b["spec"]["placement"].update(maxSharesPerZone=0),
     ("spec.placement.maxSharesPerZone",)),
    ("session-deadline", STATS, lambda b: b["spec"].update(deadline="soon"), ("spec.deadline",)),
    ("session-negative-ttl", STATS, lambda b: b["spec"].update(ttlSecondsAfterFinished=-1),
     ("spec.ttlSecondsAfterFinished",)),
    ("session-no-layers", MLP, lambda b: b["spec"]["program"]["mlp"].update(layers=[]),
     ("spec.program.mlp.layers",)),
    ("session-no-inputs", STATS, lambda b: b["spec"].pop("inputs"), ("spec.inputs", "Required")),
    ("session-no-outputs", STATS, lambda b: b["spec"].pop("outputs"), ("spec.outputs", "Required")),
    ("session-empty-outputs", STATS, lambda b: b["spec"].update(outputs=[]), ("spec.outputs", "at least 1")),
]


def test_table_is_large_enough() -> None:
    assert len(INVALID) >= 20
    assert len({case[0] for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize("name", ["nodepool.yaml", "mpcsession-fraud-stats.yaml", "mpcsession-mlp.yaml"])
def test_example_is_accepted(kubectl: Any, namespace: str, name: str) -> None:
    result = dry_run(kubectl, namespace, example(name))
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


@pytest.mark.parametrize(("base", "change", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(
    kubectl: Any, namespace: str, base: Body, change: Callable[[Body], Any], fragments: tuple[str, ...]
) -> None:
    body = with_change(base, change)
    result = dry_run(kubectl, namespace, body)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert "is invalid" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    # A CEL rule that errors (rather than failing with its message) tells the user nothing.
    assert "evaluating rule" not in result.stderr, result.stderr


def test_nodepool_defaults_are_applied(kubectl: Any, namespace: str) -> None:
    minimal = {
        "apiVersion": "pqmpc.io/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": "minimal"},
        "spec": {"groups": [{"name": "a", "region": "r1", "zone": "z1", "trustDomain": "t1"}]},
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(minimal))
    spec = get(kubectl, namespace, "nodepool", "minimal")["spec"]
    assert spec["engine"] == {"backend": "auto"}
    assert spec["groups"][0]["replicas"] == 1
    assert spec["groups"][0]["gpus"] == 0
    assert spec["keys"] == {"suite": "pq-default", "rotation": {"duration": "24h", "renewBefore": "8h", "gracePeriod": "1h"}}
    assert spec["anomaly"] == {"quarantineScore": 0.9, "autoReplace": False}
    assert "replicas" not in spec and "image" not in spec


def test_mpcsession_defaults_are_applied(kubectl: Any, namespace: str) -> None:
    minimal = {
        "apiVersion": "pqmpc.io/v1alpha1",
        "kind": "MPCSession",
        "metadata": {"name": "minimal"},
        "spec": {
            "poolRef": "banks",
            "parties": 3,
            "threshold": 1,
            "inputs": [{"owner": "a", "identity": IDENTITY, "fields": [{"name": "x", "min": 0, "max": 10}]}],
            "program": {"aggregate": [{"op": "sum", "field": "x"}]},
            "outputs": [{"recipient": "r", "identity": IDENTITY, "allow": ["sum(x)"]}],
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(minimal))
    spec = get(kubectl, namespace, "mpcsession", "minimal")["spec"]
    assert (spec["sharing"], spec["security"], spec["preprocessing"]) == ("additive", "malicious", "auto")
    assert spec["placement"] == {"distinctTrustDomains": True, "maxSharesPerZone": 1, "requireGPU": False}
    assert spec["deadline"] == "1h"
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["maxRowsPerOwner"] == 10000
    assert "decimals" not in spec["inputs"][0]["fields"][0]  # left out: the operator picks the most that fit


def test_session_spec_is_immutable_except_ttl(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(STATS))
    name = STATS["metadata"]["name"]
    for patch, field in [
        ({"spec": {"threshold": 0}}, "spec.threshold"),  # a change the field's own bounds allow
        ({"spec": {"poolRef": "other"}}, "spec.poolRef"),
        ({"spec": {"deadline": "2h"}}, "spec.deadline"),
        ({"spec": {"placement": {"requireGPU": True}}}, "spec.placement"),
        ({"spec": {"outputs": [{**STATS["spec"]["outputs"][0], "recipient": "someone-else"}]}}, "spec.outputs"),
        ({"spec": {"maxRowsPerOwner": 5}}, "spec.maxRowsPerOwner"),
    ]:
        result = kubectl("patch", "-n", namespace, "mpcs", name, "--type=merge", "-p", json.dumps(patch), check=False)
        assert result.returncode != 0, patch
        assert field in result.stderr, result.stderr
        assert "immutable" in result.stderr or "minimum" in result.stderr, result.stderr
    result = kubectl("patch", "-n", namespace, "mpcs", name, "--type=merge", "-p", '{"spec":{"parties":3}}', check=False)
    assert result.returncode != 0 and "spec.parties" in result.stderr and "immutable" in result.stderr
    kubectl("patch", "-n", namespace, "mpcs", name, "--type=merge", "-p", '{"spec":{"ttlSecondsAfterFinished":60}}')
    assert get(kubectl, namespace, "mpcs", name)["spec"]["ttlSecondsAfterFinished"] == 60


def test_scale_subresource_sets_total_replicas(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(POOL))
    kubectl("scale", "-n", namespace, "mpcpool/banks", "--replicas=5")
    assert get(kubectl, namespace, "nodepool", "banks")["spec"]["replicas"] == 5
    too_many = kubectl("scale", "-n", namespace, "mpcpool/banks", "--replicas=301", check=False)
    assert too_many.returncode != 0 and "lower the total or add groups" in too_many.stderr, too_many.stderr
    status = {"status": {"replicas": 3, "readyReplicas": 2, "selector": "pqmpc.io/pool=banks"}}
    kubectl("patch", "-n", namespace, "nodepool", "banks", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    scale = json.loads(kubectl("get", "-n", namespace, "nodepool", "banks", "--subresource=scale", "-o", "json").stdout)
    assert scale["spec"]["replicas"] == 5
    assert scale["status"] == {"replicas": 3, "selector": "pqmpc.io/pool=banks"}


def test_status_keeps_every_field_the_operator_writes(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(POOL))
    node = {
        "name": "banks-bank-a-eu-0", "group": "bank-a-eu", "region": "eu-west", "zone": "eu-west-1a",
        "trustDomain": "bank-a", "ready": True, "phase": "Running", "restarts": 0, "message": "",
        "certFingerprint": "ab" * 32, "kemEpoch": 2, "anomalyScore": 0.25, "quarantined": False,
    }
    condition = {
        "type": "Ready", "status": "True", "reason": "AllNodesReady", "message": "3/3 nodes ready",
        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    status = {"replicas": 3, "readyReplicas": 3, "selector": "pqmpc.io/pool=banks", "observedGeneration": 1,
              "keyRevision": 4, "conditions": [condition], "nodes": [node]}
    kubectl("patch", "-n", namespace, "nodepool", "banks", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))
    assert get(kubectl, namespace, "nodepool", "banks")["status"] == status
    table = kubectl("get", "-n", namespace, "mpcpool", "banks").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "READY", "REPLICAS", "STATUS", "REASON", "SUITE"]
    assert row.split()[:6] == ["banks", "3", "3", "True", "AllNodesReady", "pq-default"]


def test_session_status_and_columns(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(MLP))
    status = {
        "phase": "Computing", "reason": "Computing", "inputsReceived": "1/2",
        "unreachableSince": {"banks-bank-a-eu-0": "2026-01-01T00:00:00Z"},
        "placement": [{"party": 0, "node": "banks-bank-a-eu-0", "region": "eu-west", "zone": "eu-west-1a",
                       "trustDomain": "bank-a"}],
        "inputs": [{"owner": "bank-a", "received": True, "rejected": False}],
        "result": {"score": {"sealedFor": "insurer", "url": "https://example.invalid/r"}},
        "observedGeneration": 1, "startTime": "2026-01-01T00:00:00Z",
    }
    kubectl("patch", "-n", namespace, "mpcs", "fraud-mlp", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))
    assert get(kubectl, namespace, "mpcs", "fraud-mlp")["status"] == status
    bad = kubectl("patch", "-n", namespace, "mpcs", "fraud-mlp", "--subresource=status", "--type=merge",
                  "-p", '{"status":{"phase":"Running"}}', check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr
    header, row = kubectl("get", "-n", namespace, "mpcs", "fraud-mlp").stdout.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "PHASE", "POOL", "PARTIES", "THRESHOLD", "INPUTS", "REASON"]
    assert row.split()[:7] == ["fraud-mlp", "Computing", "banks", "3", "1", "1/2", "Computing"]
    assert "Unreachable Since" in kubectl("describe", "-n", namespace, "mpcs", "fraud-mlp").stdout
    # The operator writes None once every party answers again: the merge patch removes the map,
    # so describe shows no empty "Unreachable Since".
    kubectl("patch", "-n", namespace, "mpcs", "fraud-mlp", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"unreachableSince": None}}))
    assert "unreachableSince" not in get(kubectl, namespace, "mpcs", "fraud-mlp")["status"]
    assert "Unreachable Since" not in kubectl("describe", "-n", namespace, "mpcs", "fraud-mlp").stdout


def test_category_lists_both_kinds(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(POOL))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(MLP))
    names = kubectl("get", "-n", namespace, "pqmpc", "-o", "name").stdout.split()
    assert "nodepool.pqmpc.io/banks" in names
    assert "mpcsession.pqmpc.io/fraud-mlp" in names


def test_external_access_defaults_are_applied(kubectl: Any, namespace: str) -> None:
    body = with_change(POOL, lambda b: b["spec"].update(externalAccess={"domain": "banks.mpc.example.com"}))
    body["metadata"]["name"] = "external"
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    access = get(kubectl, namespace, "nodepool", "external")["spec"]["externalAccess"]
    assert access == {"mode": "gateway", "domain": "banks.mpc.example.com", "replicas": 1}
