"""linearScore and mlp from CSV and model input to the recipient's result, and a Shamir session over 5 node processes that completes after a node is killed mid-session."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from harness import HERE, Operator
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import FieldDecl

FIELDS = [FieldDecl("x1", -10, 10), FieldDecl("x2", -10, 10)]


def run(op: Operator, nodes: list[Any], sid: str, program: dict[str, Any], model: dict[str, Any] | None,
        allow: list[str], rows: np.ndarray, **kw: Any) -> dict[str, Any]:
    owner, insurer, auditor = Identity.generate("bank-a"), Identity.generate("insurer"), Identity.generate("auditor")
    plan = op.plan(sid, nodes, program=program, owners=[owner], fields=FIELDS, recipients={auditor: allow},
                   model_owner=insurer if model is not None else None, **kw)
    op.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                       plan_signer=op.signer.public_key()) as c:
        c.submit_rows(owner, {"x1": [str(v) for v in rows[:, 0]], "x2": [str(v) for v in rows[:, 1]]})
        if model is not None:
            c.submit_model(insurer, model)
        for n in nodes:
            op.wait_phase(n, sid, {"Succeeded", "Failed"})
        return c.collect_result(auditor, wait_s=20)


def test_linear_score(operator: Operator, trio: Any) -> None:
    rows = np.array([[1.5, -2.0], [3.0, 4.0], [0.0, 0.5]])
    w, b = np.array([0.5, -0.25]), np.array([0.125])
    program = {"linearScore": {"modelOwner": "insurer", "features": ["x1", "x2"]}}
    out = run(operator, trio, "lin-1", program, {"weights": w.tolist(), "bias": b.tolist()}, ["score", "count"], rows)
    assert np.allclose(out["outputs"]["score"], rows @ w + b[0], atol=1e-2)
    assert out["outputs"]["count"] == 3


def test_mlp(operator: Operator, trio: Any) -> None:
    rng = np.random.default_rng(1)
    rows = rng.uniform(-2, 2, size=(4, 2))
    w0, b0 = rng.uniform(-1, 1, (2, 4)), rng.uniform(-1, 1, 4)
    w1, b1 = rng.uniform(-1, 1, (4, 1)), rng.uniform(-1, 1, 1)
    program = {"mlp": {"modelOwner": "insurer", "features": ["x1", "x2"], "layers": [4, 1]}}
    model = {"W0": w0.tolist(), "b0": b0.tolist(), "W1": w1.tolist(), "b1": b1.tolist()}
    out = run(operator, trio, "mlp-1", program, model, ["score"], rows)
    expected = np.maximum(rows @ w0 + b0, 0) @ w1 + b1
    assert np.allclose(np.asarray(out["outputs"]["score"]).reshape(-1), expected.reshape(-1), atol=5e-2)


@pytest.mark.slow
def test_shamir_completes_after_node_killed(operator: Operator) -> None:
    nodes = operator.start_nodes(5, command=[sys.executable, str(HERE / "faulty_node.py")],
                                 per_node_env={3: {"PQMPC_TEST_FAULT": "die-after:10"}})
    operator.certify(nodes)
    rows = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]])
    program = {"aggregate": [{"op": "sum", "field": "x1"}, {"op": "mean", "field": "x2"}]}
    out = run(operator, nodes, "shamir-1", program, None, ["sum(x1)", "mean(x2)"], rows,
              sharing="shamir", threshold=1)
    assert out["outputs"]["sum(x1)"] == pytest.approx(9.0, abs=1e-2)
    assert out["outputs"]["mean(x2)"] == pytest.approx(4 / 3, abs=1e-2)
    assert 3 not in out["parties"]
    status = operator.http.get(f"{nodes[0].url}/v1/sessions/shamir-1").json()
    assert status["phase"] == "Succeeded" and status["liveParties"] == [0, 1, 2, 4] and status["attempts"] == 2
