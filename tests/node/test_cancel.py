"""Cancelling a session at its nodes (the MPCSession was deleted).

Covers the pure pair ``sign_cancel``/``verify_cancel`` (signature, context, session,
plan digest, age), and over HTTP against real node processes: refusals (bad signature,
stale, future-dated, wrong digest, wrong session, unknown session), an accepted cancel
of a session awaiting inputs (Failed/cancelled, stored envelopes deleted, KEM key fence
released so the retired key is dropped, metric, idempotence, inputs closed), and of a
session that is computing (its task stops, its preprocessing material is dropped).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness import SUITE, NodeProc, Operator, now
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import (
    CANCEL_SIGNATURE_CONTEXT,
    PLAN_SIGNATURE_CONTEXT,
    BadPlanSignatureError,
    CancelMismatchError,
    FieldDecl,
    MalformedPlanError,
    StaleCancelError,
    UnsignedPlanError,
    canonical_bytes,
    sign_cancel,
    verify_cancel,
)

FIELDS = [FieldDecl("amount", 0, 1000)]
PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}]}
# Rotation at 11s, a 1s grace: between 12s and 22s the plan's key (epoch 1) is listed as
# retiring only while a fence holds it.
ROTATING = {"PQMPC_KEM_KEY_DURATION": "12s", "PQMPC_KEM_RENEW_BEFORE": "2s", "PQMPC_KEM_GRACE_PERIOD": "1s",
            "PQMPC_ROTATION_CHECK_INTERVAL": "0.25"}
DIGEST = hashlib.sha256(b"plan").hexdigest()
SIGNER = SUITE.signature.generate(os.urandom(32))


# -- the pure pair -------------------------------------------------------------------


def _verify(body: bytes, *, session_id: str = "s-1", digest: str = DIGEST, at: dt.datetime | None = None) -> Any:
    return verify_cancel(body, signer_key=SIGNER.public_key(), session_id=session_id, plan_digest=digest,
                         now=at or now())


def test_signed_cancel_verifies_and_names_session_and_plan() -> None:
    cancel = _verify(sign_cancel("s-1", DIGEST, key=SIGNER, now=now()))
    assert (cancel.session_id, cancel.plan_digest) == ("s-1", DIGEST)
    assert abs(cancel.issued_at - now().timestamp()) < 5


def test_cancel_refused_under_another_key_or_altered() -> None:
    other = SUITE.signature.generate(os.urandom(32))
    with pytest.raises(BadPlanSignatureError):
        _verify(sign_cancel("s-1", DIGEST, key=other, now=now()))
    doc = json.loads(sign_cancel("s-1", DIGEST, key=SIGNER, now=now()))
    doc["cancel"]["issuedAt"] += 1
    with pytest.raises(BadPlanSignatureError):
        _verify(json.dumps(doc).encode())


def test_plan_signature_context_does_not_pass_for_a_cancel() -> None:
    doc = json.loads(sign_cancel("s-1", DIGEST, key=SIGNER, now=now()))
    doc["signature"] = base64.b64encode(SIGNER.sign(canonical_bytes(doc["cancel"]), PLAN_SIGNATURE_CONTEXT)).decode()
    with pytest.raises(BadPlanSignatureError):
        _verify(json.dumps(doc).encode())
    assert CANCEL_SIGNATURE_CONTEXT != PLAN_SIGNATURE_CONTEXT


def test_cancel_refused_for_another_session_or_plan() -> None:
    body = sign_cancel("s-1", DIGEST, key=SIGNER, now=now())
    with pytest.raises(CancelMismatchError, match="session"):
        _verify(body, session_id="s-2")
    with pytest.raises(CancelMismatchError, match="plan"):
        _verify(body, digest=hashlib.sha256(b"other").hexdigest())


def test_cancel_refused_when_stale_or_future_dated() -> None:
    t = now()
    with pytest.raises(StaleCancelError, match="ago"):
        _verify(sign_cancel("s-1", DIGEST, key=SIGNER, now=t - dt.timedelta(minutes=5, seconds=2)), at=t)
    _verify(sign_cancel("s-1", DIGEST, key=SIGNER, now=t - dt.timedelta(minutes=4, seconds=55)), at=t)
    with pytest.raises(StaleCancelError, match="future"):
        _verify(sign_cancel("s-1", DIGEST, key=SIGNER, now=t + dt.timedelta(minutes=2)), at=t)


def test_cancel_refused_unsigned_or_malformed() -> None:
    doc = json.loads(sign_cancel("s-1", DIGEST, key=SIGNER, now=now()))
    with pytest.raises(UnsignedPlanError):
        _verify(json.dumps(dict(doc, signature="")).encode())
    with pytest.raises(MalformedPlanError):
        _verify(b"not json")
    with pytest.raises(MalformedPlanError):
        sign_cancel("s-1", "not-a-digest", key=SIGNER, now=now())


def test_a_cancel_carries_the_operators_reason_signed() -> None:
    """The operator's reason travels in the signed cancel; altering it breaks the signature; bad reasons are refused."""
    body = sign_cancel("s-1", DIGEST, key=SIGNER, now=now(), reason="PreprocessingTooLarge", message="too big: 9 rows fit")
    cancel = _verify(body)
    assert (cancel.reason, cancel.message) == ("PreprocessingTooLarge", "too big: 9 rows fit")
    doc = json.loads(body)
    doc["cancel"]["message"] = "something else"
    with pytest.raises(BadPlanSignatureError):
        _verify(json.dumps(doc).encode())
    assert _verify(sign_cancel("s-1", DIGEST, key=SIGNER, now=now())).reason is None
    with pytest.raises(MalformedPlanError):
        sign_cancel("s-1", DIGEST, key=SIGNER, now=now(), reason="not a word", message="x")
    with pytest.raises(MalformedPlanError):
        sign_cancel("s-1", DIGEST, key=SIGNER, now=now(), reason="Big", message="x" * 5000)


# -- real nodes ----------------------------------------------------------------------


def _inputs_dir(op: Operator, node: NodeProc, session_id: str) -> Path:
    return op.workdir / node.node_id / "sessions" / hashlib.sha256(session_id.encode()).hexdigest()[:32] / "inputs"


def _cancel(op: Operator, node: NodeProc, session_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    r = op.http.post(f"{node.url}/v1/sessions/{session_id}/cancel", content=body,
                     headers={"Content-Type": "application/json"})
    return r.status_code, r.json()


def _status(op: Operator, node: NodeProc, session_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = op.http.get(f"{node.url}/v1/sessions/{session_id}").json()
    return doc


def _epochs(op: Operator, node: NodeProc) -> set[int]:
    return {int(k["epoch"]) for k in op.http.get(node.url + "/v1/keys").json()["kemKeys"]}


def _current_epoch(op: Operator, node: NodeProc) -> int:
    return int(op.plain.get(node.metrics_url + "/readyz").json()["kemEpoch"])


def _submit(op: Operator, nodes: list[NodeProc], session_id: str, owner: Identity) -> None:
    with SessionClient(node_url=nodes[0].url, session_id=session_id, ca_certificate=op.ca.certificate,
                       plan_signer=op.signer.public_key()) as c:
        c.post_sealed(c.seal_rows(owner, {"amount": ["10", "20", "30.5"]}))


def test_cancel_awaiting_inputs(operator: Operator) -> None:
    nodes = operator.start_nodes(2, extra_env=ROTATING)
    operator.certify(nodes)
    operator.sync_keys()
    a, b, auditor = Identity.generate("bank-a"), Identity.generate("bank-b"), Identity.generate("auditor")
    plan = operator.plan("cancel-wait", nodes, program=PROGRAM, owners=[a, b], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes, dealer=False)
    fenced = {n.node_id: n.kem_epoch for n in nodes}
    _submit(operator, nodes, "cancel-wait", a)  # bank-b never submits: the session waits
    node = nodes[0]
    with SessionClient(node_url=node.url, session_id="cancel-wait", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        late = c.seal_rows(b, {"amount": ["1"]})  # posted only after the cancel
    dealt = operator.deal(plan, {"bank-a": 3, "bank-b": 1})
    assert set(operator.post_preprocessing(plan, dealt).values()) == {202}
    st = _status(operator, node, "cancel-wait")
    digest = st["planDigest"]
    assert (st["phase"], st["preprocessingReceived"]) == ("AwaitingInputs", True)
    assert list(_inputs_dir(operator, node, "cancel-wait").rglob("*.sealed"))

    other = SUITE.signature.generate(os.urandom(32))
    code, doc = _cancel(operator, node, "cancel-wait", sign_cancel("cancel-wait", digest, key=other, now=now()))
    assert (code, doc["error"]["reason"]) == (403, "bad_signature")
    stale = sign_cancel("cancel-wait", digest, key=operator.signer, now=now() - dt.timedelta(minutes=6))
    assert _cancel(operator, node, "cancel-wait", stale)[0] == 403
    future = sign_cancel("cancel-wait", digest, key=operator.signer, now=now() + dt.timedelta(minutes=10))
    assert _cancel(operator, node, "cancel-wait", future)[0] == 403
    wrong_digest = sign_cancel("cancel-wait", hashlib.sha256(b"x").hexdigest(), key=operator.signer, now=now())
    code, doc = _cancel(operator, node, "cancel-wait", wrong_digest)
    assert (code, doc["error"]["reason"]) == (409, "cancel_mismatch")
    wrong_session = sign_cancel("cancel-other", digest, key=operator.signer, now=now())
    assert _cancel(operator, node, "cancel-wait", wrong_session)[0] == 409
    code, doc = _cancel(operator, node, "no-such-session", sign_cancel("no-such-session", digest, key=operator.signer,
                                                                        now=now()))
    assert (code, doc["error"]["reason"]) == (404, "unknown_session")
    assert _status(operator, node, "cancel-wait")["phase"] == "AwaitingInputs"
    assert operator.metric(node, "pqmpc_node_plans_refused_total") >= 5

    # The fence keeps the plan's KEM key past rotation and grace while the session waits ...
    assert set(fenced.values()) == {1}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(_current_epoch(operator, n) == 2 for n in nodes):
            break
        time.sleep(0.25)
    else:
        pytest.fail("nodes did not rotate to epoch 2")
    time.sleep(1.5)  # past the grace period
    assert all(1 in _epochs(operator, n) for n in nodes)

    before = operator.metric(node, 'pqmpc_node_sessions_total{outcome="cancelled"}')
    for n in nodes:
        code, doc = _cancel(operator, n, "cancel-wait", sign_cancel("cancel-wait", digest, key=operator.signer, now=now()))
        assert code == 200, doc
        assert (doc["cancelled"], doc["phase"], doc["reason"]) == (True, "Failed", "cancelled")
        st = _status(operator, n, "cancel-wait")
        assert (st["phase"], st["reason"]) == ("Failed", "cancelled")
        assert "operator" in st["message"]
        assert st["preprocessingReceived"] is False
        assert not _inputs_dir(operator, n, "cancel-wait").exists()
    assert operator.metric(node, 'pqmpc_node_sessions_total{outcome="cancelled"}') == before + 1

    # ... and once cancelled, the retired key is dropped at the next rotation check.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(1 in _epochs(operator, n) for n in nodes):
        time.sleep(0.25)
    assert not any(1 in _epochs(operator, n) for n in nodes)
    assert all(_current_epoch(operator, n) == 2 for n in nodes)  # dropped by the release, not by a later rotation

    code, doc = _cancel(operator, node, "cancel-wait", sign_cancel("cancel-wait", digest, key=operator.signer, now=now()))
    assert (code, doc["cancelled"], doc["alreadyFinished"]) == (200, True, True)
    assert operator.metric(node, 'pqmpc_node_sessions_total{outcome="cancelled"}') == before + 1
    r = operator.http.post(f"{node.url}/v1/sessions/cancel-wait/inputs", content=late[0][1],
                           headers={"Content-Type": "application/octet-stream"})
    assert (r.status_code, r.json()["error"]["reason"]) == (409, "inputs_closed")


def test_cancel_computing_session(operator: Operator) -> None:
    nodes = operator.start_nodes(2)
    operator.certify(nodes)
    a, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("cancel-run", nodes, program=PROGRAM, owners=[a], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes, dealer=False)
    _submit(operator, nodes, "cancel-run", a)
    dealt = operator.deal(plan, {"bank-a": 3})
    # Only party 0 gets its material: it starts its run and waits for party 1, which joins the run's inputs
    # agreement but never gets its material (both report that and wait; nothing is computed).
    running = nodes[0]
    r = operator.http.post(f"{running.url}/v1/sessions/cancel-run/preprocessing", content=dealt.bodies[running.node_id],
                           headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while "has no preprocessing material yet" not in _status(operator, running, "cancel-run")["inputsAgreement"]:
        assert time.monotonic() < deadline, _status(operator, running, "cancel-run")
        time.sleep(0.1)
    assert _status(operator, running, "cancel-run")["attempts"] == 1  # its run is under way
    digest = _status(operator, running, "cancel-run")["planDigest"]

    code, doc = _cancel(operator, running, "cancel-run", sign_cancel("cancel-run", digest, key=operator.signer, now=now()))
    assert code == 200, doc
    st = _status(operator, running, "cancel-run")
    assert (st["phase"], st["reason"]) == ("Failed", "cancelled"), st
    assert "operator" in st["message"]
    assert st["preprocessingReceived"] is False
    assert not _inputs_dir(operator, running, "cancel-run").exists()
    assert operator.metric(running, 'pqmpc_node_sessions_total{outcome="cancelled"}') == 1
    assert "Traceback" not in running.log_text()


def test_a_cancel_with_a_reason_is_what_the_owner_reads(operator: Operator, tmp_path: Path) -> None:
    """The operator ends a session it cannot deal: the parties fail it with its reason, and
    ``pqmpc result --wait`` says so in one line at once (not "still awaiting inputs")."""
    nodes = operator.start_nodes(2)
    operator.certify(nodes)
    operator.sync_keys()
    a, b, auditor = Identity.generate("bank-a"), Identity.generate("bank-b"), Identity.generate("auditor")
    plan = operator.plan("cancel-why", nodes, program=PROGRAM, owners=[a, b], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes, dealer=False)
    _submit(operator, nodes, "cancel-why", a)
    _submit(operator, nodes, "cancel-why", b)  # every input in; no preprocessing will come
    digest = _status(operator, nodes[0], "cancel-why")["planDigest"]
    why = "the dealt preprocessing would be 300.0 MiB per party, over the 256 MiB a node takes; at most 3 rows fit"
    for n in nodes:
        code, doc = _cancel(operator, n, "cancel-why", sign_cancel("cancel-why", digest, key=operator.signer, now=now(),
                                                                    reason="PreprocessingTooLarge", message=why))
        assert code == 200, doc
        st = _status(operator, n, "cancel-why")
        assert (st["phase"], st["reason"], st["message"]) == ("Failed", "PreprocessingTooLarge", why)

    from typer.testing import CliRunner

    from pqmpc_node.cli import app
    from test_cli import trust_files
    ca, signer = trust_files(operator, tmp_path)
    auditor.save(tmp_path / "auditor.json")
    started = time.monotonic()
    r = CliRunner().invoke(app, ["result", "--session", "cancel-why", "--node", nodes[0].url, "--ca", str(ca),
                                 "--plan-signer", str(signer), "--identity", str(tmp_path / "auditor.json"),
                                 "--wait", "60"])
    assert r.exit_code == 1 and why in r.output and "Traceback" not in r.output, r.output
    assert time.monotonic() - started < 30  # failed at once, not after the wait
