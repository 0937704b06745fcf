"""The operator's attestation decisions (pure): every way a bootstrap request can fail to prove its pod.

The API server's answers are written here the way it gives them (TokenReview ``status``,
a pod object); the real TokenReview path runs in ``tests/operator/test_bootstrap_cluster.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from pqmpc_node.crypto.pki import BOOTSTRAP_AUDIENCE
from pqmpc_operator.attestation import (
    POD_NAME_CLAIM,
    POD_UID_CLAIM,
    AttestationRefused,
    AttestedPod,
    attest_pod,
    attest_token,
)
from pqmpc_operator.model import parse_nodepool

NS, POOL, POD, UID = "banks-ns", "banks", "banks-a-0", "uid-a0"
STARTED = "2026-12-03T05:00:00Z"
SPEC = parse_nodepool({"metadata": {"name": POOL, "namespace": NS, "uid": "pool-uid"},
                       "spec": {"groups": [{"name": "a", "replicas": 2, "region": "eu-west", "zone": "z1",
                                            "trustDomain": "t"}]}})


def review(**over: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "authenticated": True, "audiences": [BOOTSTRAP_AUDIENCE],
        "user": {"username": f"system:serviceaccount:{NS}:{POOL}-node",
                 "extra": {POD_NAME_CLAIM: [POD], POD_UID_CLAIM: [UID]}},
    }
    status.update(over)
    return status


def pod(**meta: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": POD, "namespace": NS, "uid": UID, "labels": {"pqmpc.io/pool": POOL},
                            "ownerReferences": [{"uid": "pool-uid"}], "creationTimestamp": "2026-12-03T05:01:00Z"}
    base.update(meta)
    return {"metadata": base}


def token(status: dict[str, Any], node: str = POD, csr_node: object = POD) -> AttestedPod:
    return attest_token(status, namespace=NS, pool=POOL, node_id=node, csr_node_id=csr_node)


def owned(p: dict[str, Any] | None, created: set[str] = {UID}, bound: AttestedPod = AttestedPod(POD, UID)) -> AttestedPod:
    return attest_pod(bound, p, namespace=NS, pool=SPEC, created_uids=created, started_at=STARTED)


def refused(reason: str, fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(AttestationRefused) as err:
        fn(*args, **kw)
    assert err.value.reason == reason, err.value
    return str(err.value)


def test_the_genuine_token_and_pod_attest() -> None:
    assert owned(pod()) == token(review()) == AttestedPod(POD, UID)


@pytest.mark.parametrize(("status", "reason", "says"), [
    (review(authenticated=False, error="token expired"), "token_rejected", "token expired"),
    (review(audiences=[]), "token_rejected", BOOTSTRAP_AUDIENCE),  # an authenticator that ignored audiences
    (review(audiences=["https://kubernetes.default.svc"]), "token_rejected", BOOTSTRAP_AUDIENCE),
    (review(user={"username": f"system:serviceaccount:{NS}:default", "extra": {}}), "wrong_service_account", "default"),
    (review(user={"username": f"system:serviceaccount:{NS}:{POOL}-node", "extra": {}}), "unbound_token", "pod"),
])
def test_tokens_that_prove_nothing_are_refused(status: dict[str, Any], reason: str, says: str) -> None:
    assert says in refused(reason, token, status)


def test_a_relayed_token_is_refused() -> None:
    assert "relayed" in refused("wrong_pod", token, review(), node="banks-a-1", csr_node="banks-a-1")
    refused("wrong_pod", token, review(), csr_node="banks-a-1")  # the CSR speaks for another node


def test_pods_the_operator_does_not_run_are_refused() -> None:
    assert "wants" in refused("foreign_pod", owned, pod(name="banks-a-7"), bound=AttestedPod("banks-a-7", UID))
    refused("foreign_pod", owned, pod(ownerReferences=[]))
    refused("foreign_pod", owned, pod(labels={}))
    # Labels and owner reference forged by someone with pods/create, made while the operator ran:
    assert "not by it" in refused("foreign_pod", owned, pod(), created=set())
    refused("pod_gone", owned, None)
    refused("pod_gone", owned, pod(uid="uid-other"))
    refused("pod_gone", owned, pod(deletionTimestamp="2026-12-03T05:02:00Z"))


def test_a_pod_made_before_the_operator_started_may_be_a_predecessors() -> None:
    assert owned(pod(creationTimestamp="2026-12-03T04:00:00Z"), created=set()) == AttestedPod(POD, UID)
