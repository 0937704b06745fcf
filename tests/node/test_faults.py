"""Faults across real node processes: a tampering party caught by the MAC check, counted and named in the honest parties' reports (``blamedParties``), a killed node (additive aborts with the reason), replayed inputs and unauthorised recipients refused."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from harness import HERE, Operator
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.plan import FieldDecl

FIELDS = [FieldDecl("amount", 0, 1000)]
PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}, {"op": "mean", "field": "amount"}]}
FAULTY = [sys.executable, str(HERE / "faulty_node.py")]


def client(op: Operator, node: Any, sid: str) -> SessionClient:
    return SessionClient(node_url=node.url, session_id=sid, ca_certificate=op.ca.certificate,
                         plan_signer=op.signer.public_key())


def submit(op: Operator, nodes: list[Any], sid: str, owner: Identity, values: list[float]) -> None:
    with client(op, nodes[0], sid) as c:
        c.submit_rows(owner, {"amount": [str(v) for v in values]})


def test_replayed_input_and_unauthorised_recipient_refused(operator: Operator, trio: Any) -> None:
    owner, auditor, mallory = Identity.generate("bank-a"), Identity.generate("auditor"), Identity.generate("mallory")
    plan = operator.plan("replay-1", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, trio)
    with client(operator, trio[0], "replay-1") as c:
        party = c.parties()[0]
        envelope = c._seal(owner, party, b"{}")
        r = party.client.post_input("replay-1", envelope)
        assert r.status_code == 422 and r.json()["error"]["reason"] == "bad_payload"
        c.submit_rows(owner, {"amount": ["1", "2", "3"]})
        # The same envelope posted again (a replay) is refused; the client's own retry sees alreadyAccepted.
        sealed = (operator.workdir / trio[0].node_id / "sessions")
        stored_file = next(sealed.rglob("*.sealed")) if any(sealed.rglob("*.sealed")) else None
        stored = None if stored_file is None else stored_file.read_bytes()  # deleted once the session ends
        if stored is not None:
            again = party.client.post_input("replay-1", stored)
            assert again.status_code == 409 and again.json()["error"]["reason"] == "replay"
    for n in trio:
        assert operator.wait_phase(n, "replay-1", {"Succeeded", "Failed"})["phase"] == "Succeeded"
    # After completion the node forgets the session's replay ids (its guard stays bounded): a new
    # envelope is refused because inputs are closed, and counted; the accepted envelope itself is
    # still answered as already accepted, so a client's retry stays idempotent.
    with client(operator, trio[1], "replay-1") as c:
        env = c._seal(owner, c.parties()[1], b"{}")
        r = c.parties()[1].client.post_input("replay-1", env)
        assert r.status_code == 409 and r.json()["error"]["reason"] == "inputs_closed", r.text
        assert operator.metric(trio[1], "pqmpc_node_envelopes_refused_total") >= 1
        if stored is not None:
            again = c.parties()[0].client.post_input("replay-1", stored)
            assert again.status_code == 409 and again.json()["error"].get("alreadyAccepted") is True, again.text
        with pytest.raises(ClientError) as err:
            c.collect_result(mallory)
        assert err.value.reason == "not_a_recipient"
    r = operator.http.get(f"{trio[0].url}/v1/sessions/replay-1/outputs", params={"recipient": "mallory"})
    assert r.status_code == 403 and r.json()["error"]["reason"] == "not_a_recipient"
    with client(operator, trio[2], "replay-1") as c:
        assert c.collect_result(auditor, wait_s=10)["outputs"]["sum(amount)"] == 6  # exact


def test_tampering_party_caught_by_mac_check(operator: Operator) -> None:
    nodes = operator.start_nodes(3, command=FAULTY, per_node_env={2: {"PQMPC_TEST_FAULT": "tamper"}})
    operator.certify(nodes)
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("tamper-1", nodes, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]}, security="malicious")
    operator.post_plan(plan, nodes)
    submit(operator, nodes, "tamper-1", owner, [5, 6, 7])
    for n in nodes[:2]:
        status = operator.wait_phase(n, "tamper-1", {"Succeeded", "Failed"})
        assert status["phase"] == "Failed" and status["reason"] == "mac_check_failed", status
        assert status["blamedParties"] == [2], status  # the tamperer's commitment did not open
        assert operator.metric(n, "pqmpc_node_mac_check_failures_total") == 1
    with client(operator, nodes[0], "tamper-1") as c, pytest.raises(ClientError) as err:
        c.collect_result(auditor)
    assert err.value.reason == "session_failed"


def test_killed_node_aborts_additive_session(operator: Operator) -> None:
    nodes = operator.start_nodes(3, command=FAULTY, per_node_env={1: {"PQMPC_TEST_FAULT": "die-after:8"}})
    operator.certify(nodes)
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("kill-1", nodes, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes)
    submit(operator, nodes, "kill-1", owner, [1, 2])
    for n in (nodes[0], nodes[2]):
        status = operator.wait_phase(n, "kill-1", {"Succeeded", "Failed"})
        assert status["phase"] == "Failed" and status["reason"] == "peer_lost", status
        assert "lost party 1" in status["message"]
        assert "additive sharing needs every party" in status["message"], status["message"]
        assert "every owner's input is kept secret" in status["message"] and status["outputsReady"] == []
    assert nodes[1].proc.wait(timeout=10) == 17
