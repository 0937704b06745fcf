"""Dealer-free Shamir sessions on real node processes: nothing is dealt, results equal the plaintext,
a lost node is survived only where n >= 2t + 2, and a node refuses dealt material for such a session."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from harness import HERE, Operator
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import FieldDecl

FIELDS = [FieldDecl("x1", -10, 10), FieldDecl("x2", -10, 10)]
AGG = {"aggregate": [{"op": "sum", "field": "x1"}, {"op": "mean", "field": "x2"}, {"op": "variance", "field": "x1"},
                     {"op": "max", "field": "x2"}, {"op": "histogram", "field": "x1", "bins": [-1, 0, 4]}]}
ALLOW = ["sum(x1)", "mean(x2)", "variance(x1)", "max(x2)", "histogram(x1)"]
ROWS = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0], [-2.0, 1.0]])


def submit(op: Operator, nodes: list[Any], sid: str, **kw: Any) -> tuple[Any, SessionClient, Identity]:
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = op.plan(sid, nodes, program=AGG, owners=[owner], fields=FIELDS, recipients={auditor: ALLOW},
                   security="malicious", sharing="shamir", threshold=1, preprocessing="prss", **kw)
    op.post_plan(plan, nodes)
    client = SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                           plan_signer=op.signer.public_key())
    client.submit_rows(owner, {"x1": [str(v) for v in ROWS[:, 0]], "x2": [str(v) for v in ROWS[:, 1]]})
    return plan, client, auditor


def test_dealer_free_session_matches_plaintext(operator: Operator, trio: Any) -> None:
    plan, client, auditor = submit(operator, trio, "hm-1")
    with client:
        for n in trio:
            status = operator.wait_phase(n, "hm-1", {"Succeeded", "Failed"})
            assert status["phase"] == "Succeeded", status
            assert status["preprocessing"] == "prss" and status["preprocessingReceived"] is False
        out = client.collect_result(auditor, wait_s=20)
    x1, x2 = ROWS[:, 0], ROWS[:, 1]
    assert out["outputs"]["sum(x1)"] == pytest.approx(x1.sum(), abs=1e-9)
    assert out["outputs"]["mean(x2)"] == pytest.approx(x2.mean(), abs=1e-9)
    assert out["outputs"]["variance(x1)"] == pytest.approx(x1.var(), abs=1e-9)
    assert out["outputs"]["max(x2)"] == pytest.approx(x2.max(), abs=1e-9)
    # x1 = 1, 3, 5, -2 over bins [-1, 0), [0, 4]: the rows outside the edges are reported, not dropped.
    assert out["outputs"]["histogram(x1)"] == [0, 2]
    assert out["outputs"]["histogram(x1).below"] == 1 and out["outputs"]["histogram(x1).above"] == 1
    assert out["labels"] == {"histogram(x1).below": "histogram(x1) below -1", "histogram(x1).above": "histogram(x1) above 4"}
    assert set(out["outputs"]) == {*ALLOW, "histogram(x1).below", "histogram(x1).above"}
    assert "hm-1" not in operator.dealt  # nothing was dealt: the harness's dealer never ran
    for n in trio:
        assert operator.metric(n, 'pqmpc_node_preprocessing_material_total{kind="triples",provider="prss"}') > 0


def test_dealt_material_refused_for_a_dealer_free_session(operator: Operator, trio: Any) -> None:
    plan, client, _ = submit(operator, trio, "hm-refuse")
    client.close()
    r = operator.http.post(f"{trio[0].url}/v1/sessions/hm-refuse/preprocessing", content=b"PQMPCPP1" + bytes(64))
    assert r.status_code == 409 and r.json()["error"]["reason"] == "dealer_free_session", r.text
    assert "makes its own preprocessing" in r.json()["error"]["message"]


@pytest.mark.slow
def test_lost_node_survived_at_n4_t1(operator: Operator) -> None:
    nodes = operator.start_nodes(4, command=[sys.executable, str(HERE / "faulty_node.py")],
                                 per_node_env={3: {"PQMPC_TEST_FAULT": "die-after:14"}})
    operator.certify(nodes)
    _, client, auditor = submit(operator, nodes, "hm-kill4")
    with client:
        out = client.collect_result(auditor, wait_s=120)
    assert out["outputs"]["sum(x1)"] == pytest.approx(ROWS[:, 0].sum(), abs=1e-9)
    assert 3 not in out["parties"]
    status = operator.http.get(f"{nodes[0].url}/v1/sessions/hm-kill4").json()
    assert status["phase"] == "Succeeded" and status["liveParties"] == [0, 1, 2] and status["attempts"] == 2


@pytest.mark.slow
def test_lost_node_fails_cleanly_at_n3_t1(operator: Operator) -> None:
    nodes = operator.start_nodes(3, command=[sys.executable, str(HERE / "faulty_node.py")],
                                 per_node_env={2: {"PQMPC_TEST_FAULT": "die-after:14"}})
    operator.certify(nodes)
    _, client, _ = submit(operator, nodes, "hm-kill3")
    client.close()
    for n in nodes[:2]:
        status = operator.wait_phase(n, "hm-kill3", {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Failed" and status["reason"] == "peer_lost", status
        assert "2t + 1 = 3 live parties" in status["message"] and "n >= 2t + 2" in status["message"]
        assert status["outputsReady"] == []
