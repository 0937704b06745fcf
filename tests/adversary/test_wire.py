"""Adversaries on the wire, against real node processes (tests/node/harness.py plays the operator,
tests/node/faulty_node.py injects the faults; see its docstring for the modes).

Covered:

* a non-canonical element (a word >= p, equal mod p) in a Beaver opening: the honest parties
  abort with ``failedCheck`` "canonical-element" and name the sender;
* a node shifting an owner's input by re-inputting a changed share of it, self-consistently
  (its broadcast, shares and MACs agree): caught by the owner-input key check, additive and
  Shamir, and in Shamir also after a restart on fresh material (with the restart's control
  run, which succeeds); the same shift made only on the wire (the node's own record is of
  what it computed), and an equivocating re-input broadcast, are caught earlier by the
  broadcast-consistency part of the MAC check (nobody blamed in any of these);
* a node forging its share of a result after every check: the nodes all succeed, the
  recipient refuses it ("forged_output"); a semi-honest control run returns the true result;
* a party missing at collection: the recipient refuses ("missing_shares"), naming it;
* private outputs: two recipients with disjoint allow lists each get only their own outputs,
  and no node's status (or log) carries a result value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import HERE, NodeProc, Operator
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.plan import FieldDecl

FAULTY = [sys.executable, str(HERE / "faulty_node.py")]
FIELDS = [FieldDecl("amount", 0, 1000)]
PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}, {"op": "mean", "field": "amount"}]}
DONE = {"Succeeded", "Failed"}

Start = Callable[..., list[NodeProc]]


@pytest.fixture
def start(operator: Operator) -> Iterator[Start]:
    """Start and certify ``count`` faulty-node processes (``faults``: party index -> PQMPC_TEST_FAULT);
    they are stopped when the test ends."""
    started: list[NodeProc] = []

    def _start(count: int, faults: dict[int, str] | None = None) -> list[NodeProc]:
        env = {i: {"PQMPC_TEST_FAULT": f} for i, f in (faults or {}).items()}
        nodes = operator.start_nodes(count, command=FAULTY, per_node_env=env)
        started.extend(nodes)
        operator.certify(nodes)
        return nodes

    yield _start
    for n in started:
        if n.proc.poll() is None:
            n.proc.terminate()
    for n in started:
        try:
            n.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait()


def client(op: Operator, node: NodeProc, sid: str) -> SessionClient:
    return SessionClient(node_url=node.url, session_id=sid, ca_certificate=op.ca.certificate,
                         plan_signer=op.signer.public_key())


def run(op: Operator, nodes: list[NodeProc], sid: str, values: list[float], *,
        recipients: dict[Identity, list[str]] | None = None, **plan_kw: Any) -> dict[Identity, list[str]]:
    """Plan ``sid`` over ``nodes`` (PROGRAM on one owner's ``values``), submit, return the recipients."""
    owner = Identity.generate("bank-a")
    recipients = recipients or {Identity.generate("auditor"): ["sum(amount)", "mean(amount)"]}
    plan = op.plan(sid, nodes, program=PROGRAM, owners=[owner], fields=FIELDS, recipients=recipients, **plan_kw)
    op.post_plan(plan, nodes)
    with client(op, nodes[0], sid) as c:
        c.submit_rows(owner, {"amount": [str(v) for v in values]})
    return recipients


def final(op: Operator, node: NodeProc, sid: str) -> dict[str, Any]:
    return op.wait_phase(node, sid, DONE)


def assert_caught(status: dict[str, Any], check: str, blamed: list[int]) -> None:
    assert status["phase"] == "Failed" and status["reason"] == "mac_check_failed", status
    assert status["failedCheck"] == check, status
    assert status["blamedParties"] == blamed, status


def assert_no_result(op: Operator, node: NodeProc, sid: str, recipient: Identity) -> None:
    with client(op, node, sid) as c, pytest.raises(ClientError) as err:
        c.collect_result(recipient)
    assert err.value.reason == "session_failed", err.value


def collect(op: Operator, node: NodeProc, sid: str, recipient: Identity) -> dict[str, Any]:
    with client(op, node, sid) as c:
        return c.collect_result(recipient, wait_s=20)


# -- malformed elements -----------------------------------------------------------------


def test_noncanonical_element_blames_its_sender(operator: Operator, start: Start) -> None:
    nodes = start(3, {2: "noncanonical:beaver"})
    (auditor,) = run(operator, nodes, "nc-1", [5, 6, 7], security="malicious")
    for n in nodes[:2]:
        status = final(operator, n, "nc-1")
        assert_caught(status, "canonical-element", [2])
        assert "party 2" in status["message"] and "canonical" in status["message"], status
        assert operator.metric(n, "pqmpc_node_mac_check_failures_total") == 1
    assert_no_result(operator, nodes[0], "nc-1", auditor)


# -- owners' inputs -----------------------------------------------------------------------


def test_shifted_input_caught_by_owner_key_additive(operator: Operator, start: Start) -> None:
    # The shifter re-inputs x_2 + 1: it broadcasts the same d to every peer and its own view,
    # shares and MACs agree, so the broadcast digests and the MAC check pass (see check_macs)
    # and only the owner's key can catch the shift.
    nodes = start(3, {2: "shift-input"})
    (auditor,) = run(operator, nodes, "shift-add-1", [5, 6, 7], security="malicious")
    for n in nodes[:2]:
        status = final(operator, n, "shift-add-1")
        assert_caught(status, "owner-input-key", [])  # proves someone altered the input, not who
        assert "bank-a" in status["message"], status
        assert status["attempts"] == 1, status
    assert final(operator, nodes[2], "shift-add-1")["phase"] == "Failed"
    for n in nodes:
        assert_no_result(operator, n, "shift-add-1", auditor)


def test_wire_only_input_shift_caught_by_mac_check(operator: Operator, start: Start) -> None:
    # Party 2 sends d + 1 on the wire but keeps its own record (and MAC share) of d: its digest of
    # the public inputs differs from its peers', so the MAC check's broadcast step fails first.
    nodes = start(3, {2: "add:input/2"})
    (auditor,) = run(operator, nodes, "wire-add-1", [5, 6, 7], security="malicious")
    for n in nodes[:2]:
        assert_caught(final(operator, n, "wire-add-1"), "before-input-check/broadcast", [])
    assert_no_result(operator, nodes[0], "wire-add-1", auditor)


def test_equivocating_input_broadcast_caught_by_broadcast_check(operator: Operator, start: Start) -> None:
    # Party 2 sends d + 1 to party 0 and d to party 1: the parties' views of the broadcast differ.
    nodes = start(3, {2: "split:input/2"})
    (auditor,) = run(operator, nodes, "split-1", [5, 6, 7], security="malicious")
    for n in nodes[:2]:
        assert_caught(final(operator, n, "split-1"), "before-input-check/broadcast", [])
    assert_no_result(operator, nodes[1], "split-1", auditor)


def test_a_lone_detector_tells_the_others_to_stop(operator: Operator, start: Start) -> None:
    """Party 2 sends a wrong share of the valid count to party 0 only (Shamir n = 3): party 0's opening sees
    it off the polynomial; party 1's view is consistent, so party 1 learns of the cheat from
    party 0's abort notice and fails on a check too, instead of restarting without party 0."""
    nodes = start(3, {2: "split:valid-count"})
    (auditor,) = run(operator, nodes, "lone-1", [5, 6, 7], security="malicious", sharing="shamir", threshold=1)
    assert_caught(final(operator, nodes[0], "lone-1"), "opening-consistency", [])
    told = final(operator, nodes[1], "lone-1")
    assert_caught(told, "peer-abort", [])
    assert "party 0 stopped the session" in told["message"] and told["attempts"] == 1, told
    assert_no_result(operator, nodes[1], "lone-1", auditor)


def test_shifted_input_caught_by_owner_key_shamir(operator: Operator, start: Start) -> None:
    nodes = start(3, {2: "shift-input"})
    (auditor,) = run(operator, nodes, "shift-sh-1", [5, 6, 7], security="malicious", sharing="shamir", threshold=1)
    for n in nodes[:2]:
        status = final(operator, n, "shift-sh-1")
        assert_caught(status, "owner-input-key", [])
        assert status["sharing"] == "shamir" and status["attempts"] == 1, status
    assert_no_result(operator, nodes[0], "shift-sh-1", auditor)


# Party 3's first two sends are the inputs agreement's proposal and commit
# (pqmpc_node.input_agreement); its first MPC send, the third, is its own masked input
# broadcast (round 4, after parties 0-2's): dying there loses it in the middle of attempt
# 1's input phase, before any check.
DIE_IN_ATTEMPT_1 = "die-after:3"


@pytest.mark.slow
def test_shifted_input_caught_after_shamir_restart(operator: Operator, start: Start) -> None:
    nodes = start(4, {3: DIE_IN_ATTEMPT_1, 2: "shift-input"})
    (auditor,) = run(operator, nodes, "shift-restart-1", [5, 6, 7], security="malicious", sharing="shamir",
                     threshold=1)
    for n in nodes[:2]:
        status = final(operator, n, "shift-restart-1")
        assert_caught(status, "owner-input-key", [])
        assert status["attempts"] == 2 and status["liveParties"] == [0, 1, 2], status
    assert nodes[3].proc.wait(timeout=10) == 17
    assert_no_result(operator, nodes[0], "shift-restart-1", auditor)


@pytest.mark.slow
def test_shamir_restart_control_succeeds(operator: Operator, start: Start) -> None:
    nodes = start(4, {3: DIE_IN_ATTEMPT_1})
    (auditor,) = run(operator, nodes, "restart-ok-1", [5, 6, 7], security="malicious", sharing="shamir",
                     threshold=1)
    for n in nodes[:3]:
        status = final(operator, n, "restart-ok-1")
        assert status["phase"] == "Succeeded", status
        assert status["attempts"] == 2 and status["liveParties"] == [0, 1, 2], status
    assert nodes[3].proc.wait(timeout=10) == 17
    out = collect(operator, nodes[0], "restart-ok-1", auditor)
    assert out["outputs"]["sum(amount)"] == pytest.approx(18.0, abs=1e-3)
    assert out["outputs"]["mean(amount)"] == pytest.approx(6.0, abs=1e-3)
    assert out["parties"] == [0, 1, 2]


# -- outputs ------------------------------------------------------------------------------


def test_forged_output_share_refused_by_recipient(operator: Operator, start: Start) -> None:
    nodes = start(3, {1: "forge-output"})
    (auditor,) = run(operator, nodes, "forge-1", [5, 6, 7], security="malicious")
    for n in nodes:
        status = final(operator, n, "forge-1")
        assert status["phase"] == "Succeeded", status  # after every check: the nodes cannot see it
    with client(operator, nodes[0], "forge-1") as c, pytest.raises(ClientError) as err:
        c.collect_result(auditor, wait_s=20)
    assert err.value.reason == "forged_output", err.value


def test_node_lying_about_an_outputs_kind_is_refused(operator: Operator, start: Start) -> None:
    """The decoding (integer counts or fixed point) comes from the plan, never from a node."""
    nodes = start(3, {1: "wrong-kind"})
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    program = {"aggregate": [{"op": "histogram", "field": "amount", "bins": [0, 5, 10]}]}
    plan = operator.plan("kind-1", nodes, program=program, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["histogram(amount)"]}, security="malicious")
    operator.post_plan(plan, nodes)
    with client(operator, nodes[0], "kind-1") as c:
        c.submit_rows(owner, {"amount": ["1", "6", "7"]})
    for n in nodes:
        assert final(operator, n, "kind-1")["phase"] == "Succeeded"
    with client(operator, nodes[0], "kind-1") as c, pytest.raises(ClientError) as err:
        c.collect_result(auditor, wait_s=20)
    assert err.value.reason == "inconsistent" and "another kind" in str(err.value), err.value


def test_semi_honest_control_returns_result(operator: Operator, start: Start) -> None:
    nodes = start(3)
    (auditor,) = run(operator, nodes, "control-1", [5, 6, 7])
    for n in nodes:
        assert final(operator, n, "control-1")["phase"] == "Succeeded"
    out = collect(operator, nodes[2], "control-1", auditor)
    assert out["outputs"] == {"sum(amount)": pytest.approx(18.0, abs=1e-3), "mean(amount)": pytest.approx(6.0, abs=1e-3)}
    assert out["parties"] == [0, 1, 2]


def test_missing_party_at_collection_refused(operator: Operator, start: Start) -> None:
    nodes = start(3)
    (auditor,) = run(operator, nodes, "missing-1", [1, 2, 3])
    for n in nodes:
        assert final(operator, n, "missing-1")["phase"] == "Succeeded"
    nodes[2].proc.terminate()
    nodes[2].proc.wait(timeout=10)
    with client(operator, nodes[0], "missing-1") as c, pytest.raises(ClientError) as err:
        c.collect_result(auditor)
    assert err.value.reason == "missing_shares", err.value
    assert "missing parties [2]" in str(err.value), err.value


def _walk(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield f"{path}.{k}", k
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, doc


def test_outputs_private_to_their_recipients(operator: Operator, start: Start) -> None:
    nodes = start(3)
    values = [123.25, 456.5, 789.125]
    total, mean = sum(values), sum(values) / len(values)  # 1368.875, 456.2916...
    auditor, analyst = Identity.generate("auditor"), Identity.generate("analyst")
    run(operator, nodes, "private-1", values, security="malicious",
        recipients={auditor: ["sum(amount)"], analyst: ["mean(amount)"]})
    for n in nodes:
        assert final(operator, n, "private-1")["phase"] == "Succeeded"
    got_auditor = collect(operator, nodes[0], "private-1", auditor)
    got_analyst = collect(operator, nodes[1], "private-1", analyst)
    assert set(got_auditor["outputs"]) == {"sum(amount)"}
    assert got_auditor["outputs"]["sum(amount)"] == pytest.approx(total, abs=1e-2)
    assert set(got_analyst["outputs"]) == {"mean(amount)"}
    assert got_analyst["outputs"]["mean(amount)"] == pytest.approx(mean, abs=1e-2)
    for n in nodes:
        text = operator.http.get(f"{n.url}/v1/sessions/private-1").text
        status = json.loads(text)
        assert status["outputsReady"] == ["analyst", "auditor"], status  # names only
        for needle in ("1368.8", "456.29", "456.3"):
            assert needle not in text, (needle, text)
        for where, v in _walk(status):
            assert v not in ("outputs", "result", "results", "sum(amount)", "mean(amount)"), (where, status)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert v != pytest.approx(total, abs=0.5) and v != pytest.approx(mean, abs=0.5), (where, status)
        log = n.log_text()
        assert "1368.8" not in log and "456.29" not in log
