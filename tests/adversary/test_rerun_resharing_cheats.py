"""A survivor that cheats in a re-run's resharing (:mod:`pqmpc_node.input_resharing`) is caught before anything
is opened: party 1 adds 1 to the first word of its resharing message to the replacement, which moves the
replacement's share of the owner's first value off the owner's polynomial; the attempt's input degree check over all
three parties aborts, naming the owner, and no output exists. Real node processes over PQ-TLS (tests/node/
prss_rerun.py; the fault is faulty_node.py's ``add``)."""

from __future__ import annotations

import pytest

from harness import Operator
from prss_rerun import kill_third, rerun


@pytest.mark.slow
def test_a_survivor_that_cheats_in_the_resharing_is_caught(operator: Operator) -> None:
    nodes, plan, _ = kill_third(operator, "hm-rerun-cheat", {1: {"PQMPC_TEST_FAULT": "add:input-reshare/shares"}})
    replacement, _ = rerun(operator, nodes, plan)
    for n in [nodes[0], nodes[1], replacement]:
        status = operator.wait_phase(n, "hm-rerun-cheat", {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Failed" and status["reason"] == "mac_check_failed", status
        assert status["failedCheck"] == "owner-input-degree", status
        assert "bank-a" in status["message"], status
        assert status["outputsReady"] == [], status
        r = operator.http.get(f"{n.url}/v1/sessions/hm-rerun-cheat/outputs", params={"recipient": "auditor"})
        assert r.status_code == 409 and r.json()["error"]["reason"] == "session_failed", r.text
