"""KEM key rotation during a session (the session's fence keeps the old key), and plan refusals over HTTP: unsigned, wrongly signed, foreign pool, expired, stale, not a party."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from harness import SUITE, Operator
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import FieldDecl, sign_plan

FIELDS = [FieldDecl("amount", 0, 1000)]
PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}]}
ROTATING = {"PQMPC_KEM_KEY_DURATION": "4s", "PQMPC_KEM_RENEW_BEFORE": "2s", "PQMPC_KEM_GRACE_PERIOD": "1s",
            "PQMPC_ROTATION_CHECK_INTERVAL": "0.25"}


def test_kem_rotation_during_session(operator: Operator) -> None:
    nodes = operator.start_nodes(3, extra_env=ROTATING)
    operator.certify(nodes)
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("rot-1", nodes, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes)
    first = {n.node_id: n.kem_epoch for n in nodes}
    with SessionClient(node_url=nodes[0].url, session_id="rot-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        sealed = c.seal_rows(owner, {"amount": ["10", "20", "30.5"]})
        assert all(p.kem.epoch == first[p.plan.node_id] for p, _ in sealed)
        # Wait until every node rotated past the sealed epoch and its grace period is over.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            epochs = [operator.plain.get(n.metrics_url + "/readyz").json()["kemEpoch"] for n in nodes]
            if all(e >= first[n.node_id] + 2 for e, n in zip(epochs, nodes)):
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"nodes did not rotate: {epochs}")
        operator.sync_keys()
        c.post_sealed(sealed)
    for n in nodes:
        assert operator.wait_phase(n, "rot-1", {"Succeeded", "Failed"})["phase"] == "Succeeded"
    with SessionClient(node_url=nodes[1].url, session_id="rot-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        assert c.collect_result(auditor, wait_s=10)["outputs"]["sum(amount)"] == pytest.approx(60.5, abs=1e-3)


def _post(op: Operator, node: Any, body: bytes) -> tuple[int, str]:
    r = op.http.post(node.url + "/v1/sessions", content=body)
    return r.status_code, r.json()["error"]["reason"] if r.status_code >= 400 else ""


def test_plan_refusals(operator: Operator, trio: Any) -> None:
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("plan-1", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]}, generation=2)
    signed = sign_plan(plan, operator.signer).to_json()
    unsigned = dict(signed, signature="")
    assert _post(operator, trio[0], json.dumps(unsigned).encode()) == (401, "unsigned")
    other = SUITE.signature.generate(os.urandom(32))
    assert _post(operator, trio[0], json.dumps(sign_plan(plan, other).to_json()).encode()) == (403, "bad_signature")
    tampered = json.loads(json.dumps(signed))
    tampered["plan"]["threshold"] = 2
    assert _post(operator, trio[0], json.dumps(tampered).encode()) == (403, "bad_signature")
    foreign = operator.plan("plan-1", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                            recipients={auditor: ["sum(amount)"]}, pool="other-pool")
    assert _post(operator, trio[0], operator.signed_body(foreign)) == (403, "foreign_pool")
    expired = operator.plan("plan-1", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                            recipients={auditor: ["sum(amount)"]}, lifetime_s=1)
    time.sleep(1.5)
    assert _post(operator, trio[0], operator.signed_body(expired)) == (410, "expired")
    assert _post(operator, trio[0], operator.signed_body(plan))[0] == 201
    assert _post(operator, trio[0], operator.signed_body(plan))[0] == 200  # idempotent re-post
    older = operator.plan("plan-1", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                          recipients={auditor: ["sum(amount)"]}, generation=1)
    assert _post(operator, trio[0], operator.signed_body(older)) == (409, "stale")
    two = operator.plan("plan-2", trio[:2], program=PROGRAM, owners=[owner], fields=FIELDS,
                        recipients={auditor: ["sum(amount)"]})
    assert _post(operator, trio[2], operator.signed_body(two)) == (409, "not_a_party")
    assert operator.metric(trio[0], "pqmpc_node_plans_refused_total") >= 5
