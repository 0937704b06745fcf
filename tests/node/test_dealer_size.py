"""The dealer's size projection: the body size of a real deal, known from a few rows.

The operator refuses a session whose dealt body would not fit a node before dealing it
(:mod:`pqmpc_node.dealer.size`); the projection must agree with what :func:`deal`
really seals, across sharings, securities and programs with a histogram, and say how
many rows fit a limit.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pqmpc_node.crypto.kemkeys import KemKeyPair
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.dealer import deal
from pqmpc_node.dealer.size import ENVELOPE_ALLOWANCE, PREPROCESSING_LIMIT, project_size
from pqmpc_node.plan import FieldDecl, PlanInput, PlanOutput, PlanParty, SessionId, SessionPlan

AGGREGATE = {"aggregate": [{"op": "count", "field": "amount"}, {"op": "mean", "field": "amount"},
                           {"op": "histogram", "field": "amount", "bins": [0, 20, 40, 60, 80, 100]}]}
OUTPUTS = ("count(amount)", "mean(amount)", "histogram(amount)")


MLP = {"mlp": {"modelOwner": "insurer", "features": ["amount", "days"], "layers": [4, 1]}}


def _plan(n: int, t: int, sharing: str, security: str, *, mlp: bool = False) -> tuple[SessionPlan, dict[str, tuple[int, Any]]]:
    suite = get_suite(SuiteName.PQ_DEFAULT)
    owners = {o: suite.signature.generate(os.urandom(32)) for o in ("bank-a", "bank-b")}
    fields = (FieldDecl("amount", 0, 100), *((FieldDecl("days", 0, 30),) if mlp else ()))
    model = suite.signature.generate(os.urandom(32))
    auditor = KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32))
    pairs = {f"node-{i}": KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32)) for i in range(n)}
    parties = tuple(PlanParty(i, f"node-{i}", f"127.0.0.{i + 1}", f"node-{i}.pool", 7000, 8000, "ab" * 32, 1)
                    for i in range(n))
    plan = SessionPlan(
        session_id=SessionId("size-1"), pool="pool", namespace="default", generation=1, issued_at=0,
        not_after=2**40, deadline=2**40, parties=parties, sharing=sharing, threshold=t,  # type: ignore[arg-type]
        security=security, program=MLP if mlp else AGGREGATE,  # type: ignore[arg-type]
        inputs=(*(PlanInput(o, k.public_key().public_bytes_raw(), "data", fields) for o, k in owners.items()),
                *((PlanInput("insurer", model.public_key().public_bytes_raw(), "model", ()),) if mlp else ())),
        outputs=(PlanOutput("auditor", auditor.public_bytes, ("score",) if mlp else OUTPUTS),),
    )
    return SessionPlan.from_json(plan.to_json()), {k: (1, v.public_key()) for k, v in pairs.items()}


@pytest.mark.parametrize(("n", "t", "sharing", "security", "mlp"), [
    (2, 0, "additive", "semi-honest", False), (3, 0, "additive", "malicious", False),
    (4, 1, "shamir", "malicious", False), (2, 0, "additive", "malicious", True),
])
def test_the_projection_matches_a_real_deal(n: int, t: int, sharing: str, security: str, mlp: bool) -> None:
    """Never below, at most the envelope allowance above, the largest body a real deal seals (5, 20, uneven rows)."""
    suite = get_suite(SuiteName.PQ_DEFAULT)
    signer = suite.signature.generate(os.urandom(32))
    plan, keys = _plan(n, t, sharing, security, mlp=mlp)
    projection = project_size(plan)
    slack = []
    for rows in ({"bank-a": 5, "bank-b": 5}, {"bank-a": 20, "bank-b": 20}, {"bank-a": 20, "bank-b": 5}):
        real = max(len(b) for b in deal(plan, rows, suite=suite, signer_key=signer, node_kem_keys=keys).bodies.values())
        projected = projection.projected_bytes(rows)
        # Never below the real size (a session that does not fit must never be dealt), and close:
        # what the projection adds is the envelope allowance less the real envelope, whatever the rows.
        assert real <= projected <= real + ENVELOPE_ALLOWANCE, (rows, real, projected)
        slack.append(projected - real)
    assert max(slack) - min(slack) <= 0.01 * min(slack), slack  # exactly linear in the rows (JSON digits aside)
    growth = projection.projected_bytes({"bank-a": 20, "bank-b": 20}) - projection.projected_bytes({"bank-a": 5, "bank-b": 5})
    assert growth > 0


def test_rows_that_fit_is_the_largest_count_under_the_limit() -> None:
    plan, _ = _plan(2, 0, "additive", "semi-honest")
    projection = project_size(plan)
    fit = projection.rows_that_fit(PREPROCESSING_LIMIT)
    assert 100 < fit < 10_000_000
    assert projection.projected_bytes({"bank-a": fit, "bank-b": fit}) <= PREPROCESSING_LIMIT
    assert projection.projected_bytes({"bank-a": fit + 1, "bank-b": fit + 1}) > PREPROCESSING_LIMIT
    assert projection.rows_that_fit(1000) == 0  # not even the envelope fits
