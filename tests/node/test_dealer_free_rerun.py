"""A dealer-free Shamir session at n = 3, t = 1 that loses a node fails cleanly and keeps every owner's input at
the survivors; a re-run plan with a replacement node then succeeds with the plaintext answer and no owner submits
again (the survivors reshare to the replacement over their PQ links); a cancel ends the keeping. Real node
processes over PQ-TLS (the scenario: prss_rerun.py; a cheating survivor: tests/adversary/)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from harness import Operator
from pqmpc_node.client import SessionClient
from pqmpc_node.plan import sign_cancel
from prss_rerun import kept_envelopes, kill_third, rerun_plan
from test_dealer_free import ROWS


@pytest.mark.slow
def test_rerun_with_a_replacement_needs_no_resubmission(operator: Operator) -> None:
    nodes, plan, auditor = kill_third(operator, "hm-rerun")
    replacement, gen2 = rerun_plan(operator, nodes, plan)
    # A re-run may not keep the inputs past the deadline the owners consented to (the holder keeps them).
    later = dataclasses.replace(gen2, deadline=gen2.deadline + 3600)
    r = operator.http.post(nodes[0].url + "/v1/sessions", content=operator.signed_body(later),
                           headers={"Content-Type": "application/json"})
    assert r.status_code == 409 and r.json()["error"]["reason"] == "rerun_mismatch", r.text
    assert "moves the deadline" in r.json()["error"]["message"], r.text
    operator.post_plan(gen2, [nodes[0], nodes[1], replacement])
    for n in [nodes[0], nodes[1], replacement]:
        status = operator.wait_phase(n, "hm-rerun", {"Succeeded", "Failed"}, timeout=120)
        assert status["phase"] == "Succeeded", (status["reason"], status["message"], n.log_text()[-3000:])
        assert status["generation"] == 2 and status["inputsHeldBy"] == [0, 1] and status["inputsKept"] is False
    status = operator.http.get(f"{replacement.url}/v1/sessions/hm-rerun").json()
    assert status["inputsResharedFrom"] == [0, 1], status
    # A re-run takes no envelopes (before even reading one), and nobody submitted again: the replacement never
    # took an envelope, the holders took exactly one each, ever.
    r = operator.http.post(f"{replacement.url}/v1/sessions/hm-rerun/inputs", content=b"PQMPCENV" + bytes(32))
    assert r.status_code == 409 and r.json()["error"]["reason"] == "rerun_holds_inputs", r.text
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
    for n in nodes[:2]:  # the run ended: the holders deleted the envelopes they had kept
        assert kept_envelopes(operator, n, "hm-rerun") == []


@pytest.mark.slow
def test_a_cancel_ends_the_keeping_and_a_rerun_is_refused(operator: Operator) -> None:
    nodes, plan, _ = kill_third(operator, "hm-rerun-cancel")
    digest = operator.http.get(f"{nodes[0].url}/v1/sessions/hm-rerun-cancel").json()["planDigest"]
    body = sign_cancel("hm-rerun-cancel", digest, key=operator.signer, now=dt.datetime.now(dt.timezone.utc))
    for n in nodes[:2]:
        r = operator.http.post(f"{n.url}/v1/sessions/hm-rerun-cancel/cancel", content=body)
        assert r.status_code == 200 and r.json()["alreadyFinished"] is True, r.text
        status = operator.http.get(f"{n.url}/v1/sessions/hm-rerun-cancel").json()
        assert status["inputsKept"] is False and status["inputsKeptOwners"] == 0, status
        assert kept_envelopes(operator, n, "hm-rerun-cancel") == []
    _, gen2 = rerun_plan(operator, nodes, plan)
    r = operator.http.post(nodes[0].url + "/v1/sessions", content=operator.signed_body(gen2),
                           headers={"Content-Type": "application/json"})
    assert r.status_code == 409 and r.json()["error"]["reason"] == "session_running", r.text
