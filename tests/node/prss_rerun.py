"""The scenario of a dealer-free Shamir re-run on real node processes (tests/node/test_dealer_free_rerun.py and
tests/adversary/test_rerun_resharing_cheats.py): three nodes, node 2 dies mid-run, the survivors fail and keep the
owner's input; then a replacement node and plan generation 2 with ``inputsHeldBy = [0, 1]``."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

from harness import HERE, NodeProc, Operator
from pqmpc_node.plan import SessionPlan
from test_dealer_free import submit

__all__ = ["kept_envelopes", "kill_third", "rerun"]


def kept_envelopes(operator: Operator, node: NodeProc, sid: str) -> list[Path]:
    """The sealed input envelopes ``node`` stores for session ``sid``."""
    sdir = operator.workdir / node.node_id / "sessions" / hashlib.sha256(sid.encode()).hexdigest()[:32] / "inputs"
    return sorted(sdir.rglob("*.sealed")) if sdir.exists() else []


def kill_third(operator: Operator, sid: str, survivor_env: dict[int, dict[str, str]] | None = None
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
        assert kept_envelopes(operator, n, sid), f"{n.node_id} deleted the kept envelopes"
    return nodes, plan, auditor


def rerun_plan(operator: Operator, nodes: list[NodeProc], plan: SessionPlan) -> tuple[NodeProc, SessionPlan]:
    """A certified replacement node and generation 2 (holders 0 and 1, the replacement at index 2), not posted."""
    replacement = operator.start_nodes(1)[0]
    operator.certify([replacement])
    gen2 = dataclasses.replace(plan, generation=2, issued_at=plan.issued_at + 1,
                               parties=(nodes[0].party(0), nodes[1].party(1), replacement.party(2)),
                               inputs_held_by=(0, 1))
    return replacement, gen2


def rerun(operator: Operator, nodes: list[NodeProc], plan: SessionPlan) -> tuple[NodeProc, SessionPlan]:
    """:func:`rerun_plan`, posted to its three parties."""
    replacement, gen2 = rerun_plan(operator, nodes, plan)
    operator.post_plan(gen2, [nodes[0], nodes[1], replacement])
    return replacement, gen2
