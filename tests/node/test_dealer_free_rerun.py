"""A dealer-free Shamir session at n = 3, t = 1 that loses a node fails cleanly and keeps every owner's input at
the survivors; a re-run plan with a replacement node then succeeds with the plaintext answer and no owner submits
again (the survivors reshare to the replacement over their PQ links). A survivor that cheats in the resharing is
caught by the input authentication before anything is opened. Real node processes over PQ-TLS."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import Any

import numpy as np
import pytest

from harness import HERE, NodeProc, Operator
from pqmpc_node.client import SessionClient
from pqmpc_node.plan import SessionPlan
from test_dealer_free import ROWS, submit


def _kill_third(operator: Operator, sid: str, survivor_env: dict[int, dict[str, str]] | None = None
                ) -> tuple[list[NodeProc], SessionPlan, Any]:
    """Run ``sid`` on three nodes until node 2 dies mid-run; check the survivors failed and kept the input."""
    env = {2: {"PQMPC_TEST_FAULT": "die-after:14"}, **(survivor_env or {})}
    nodes = operator.start_nodes(3, command=[sys.executable, str(HERE / "faulty_node.py")], per_node_env=env)
    operator.certify(nodes)
    plan, client, auditor = submit(operator, nodes, sid)
    client.close()
    for n in nodes[:2]:
        status = operator.wait_phase(n, sid, {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Failed" and status["reason"] == "peer_lost", status
        assert "2t + 1 = 3 live parties" in status["message"], status
        assert "needs no resubmission" in status["message"], status
        assert status["inputsKept"] is True and status["inputsKeptOwners"] == 1, status
        assert status["liveParties"] == [0, 1] and status["outputsReady"] == [], status
        sealed = list((operator.workdir / n.node_id / "sessions" / hashlib.sha256(sid.encode()).hexdigest()[:32]
                       / "inputs").rglob("*.sealed"))
        assert sealed, f"{n.node_id} deleted the kept envelopes"
    return nodes, plan, auditor


def _rerun(operator: Operator, nodes: list[NodeProc], plan: SessionPlan) -> tuple[NodeProc, SessionPlan]:
    """Start a replacement node and post generation 2 (holders 0 and 1, the replacement at index 2)."""
    replacement = operator.start_nodes(1)[0]
    operator.certify([replacement])
    t0 = plan.issued_at + 1
    gen2 = dataclasses.replace(plan, generation=2, issued_at=t0, not_after=plan.not_after,
                               parties=(nodes[0].party(0), nodes[1].party(1), replacement.party(2)),
                               inputs_held_by=(0, 1))
    operator.post_plan(gen2, [nodes[0], nodes[1], replacement])
    return replacement, gen2


@pytest.mark.slow
def test_rerun_with_a_replacement_needs_no_resubmission(operator: Operator) -> None:
    nodes, plan, auditor = _kill_third(operator, "hm-rerun")
    replacement, gen2 = _rerun(operator, nodes, plan)
    parties = [nodes[0], nodes[1], replacement]
    for n in parties:
        status = operator.wait_phase(n, "hm-rerun", {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Succeeded", (status["reason"], status["message"], n.log_text()[-3000:])
        assert status["generation"] == 2 and status["inputsHeldBy"] == [0, 1] and status["inputsKept"] is False
    status = operator.http.get(f"{replacement.url}/v1/sessions/hm-rerun").json()
    assert status["inputsResharedFrom"] == [0, 1], status
    # Nobody submitted again: the replacement never took an envelope, the holders took exactly one each, ever.
    assert operator.metric(replacement, "pqmpc_node_envelopes_accepted_total") == 0
    for n in nodes[:2]:
        assert operator.metric(n, "pqmpc_node_envelopes_accepted_total") == 1
    with SessionClient(node_url=nodes[0].url, session_id="hm-rerun", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        assert client.plan.generation == 2
        out = client.collect_result(auditor, wait_s=30)
    x1, x2 = ROWS[:, 0], ROWS[:, 1]
    assert out["outputs"]["sum(x1)"] == pytest.approx(x1.sum(), abs=1e-9)
    assert out["outputs"]["mean(x2)"] == pytest.approx(x2.mean(), abs=1e-9)
    assert out["outputs"]["variance(x1)"] == pytest.approx(x1.var(), abs=1e-9)
    assert out["outputs"]["max(x2)"] == pytest.approx(float(np.max(x2)), abs=1e-9)
    assert out["outputs"]["histogram(x1)"] == [0, 2]
    # The run ended: the holders deleted the envelopes they kept.
    for n in nodes[:2]:
        sdir = operator.workdir / n.node_id / "sessions" / hashlib.sha256(b"hm-rerun").hexdigest()[:32] / "inputs"
        assert not sdir.exists() or not list(sdir.rglob("*.sealed"))


@pytest.mark.slow
def test_a_survivor_that_cheats_in_the_resharing_is_caught(operator: Operator) -> None:
    """Party 1 adds 1 to the first word of its resharing message: the replacement's share of the owner's first
    value leaves the owner's polynomial, and the attempt's degree check over all three parties aborts, naming
    the owner, before any output exists."""
    nodes, plan, _ = _kill_third(operator, "hm-rerun-cheat",
                                 {1: {"PQMPC_TEST_FAULT": "add:input-reshare/shares"}})
    replacement, _ = _rerun(operator, nodes, plan)
    for n in [nodes[0], nodes[1], replacement]:
        status = operator.wait_phase(n, "hm-rerun-cheat", {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Failed" and status["reason"] == "mac_check_failed", status
        assert status["failedCheck"] == "owner-input-degree", status
        assert "bank-a" in status["message"], status
        assert status["outputsReady"] == [], status
