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
from pqmpc_node.dealer.size import PREPROCESSING_LIMIT, project_size
from pqmpc_node.plan import FieldDecl, PlanInput, PlanOutput, PlanParty, SessionId, SessionPlan

AGGREGATE = {"aggregate": [{"op": "count", "field": "amount"}, {"op": "mean", "field": "amount"},
                           {"op": "histogram", "field": "amount", "bins": [0, 20, 40, 60, 80, 100]}]}
OUTPUTS = ("count(amount)", "mean(amount)", "histogram(amount)")


def _plan(n: int, t: int, sharing: str, security: str) -> tuple[SessionPlan, dict[str, tuple[int, Any]]]:
    suite = get_suite(SuiteName.PQ_DEFAULT)
    owners = {o: suite.signature.generate(os.urandom(32)) for o in ("bank-a", "bank-b")}
    auditor = KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32))
    pairs = {f"node-{i}": KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32)) for i in range(n)}
    parties = tuple(PlanParty(i, f"node-{i}", f"127.0.0.{i + 1}", f"node-{i}.pool", 7000, 8000, "ab" * 32, 1)
                    for i in range(n))
    plan = SessionPlan(
        session_id=SessionId("size-1"), pool="pool", namespace="default", generation=1, issued_at=0,
        not_after=2**40, deadline=2**40, parties=parties, sharing=sharing, threshold=t,  # type: ignore[arg-type]
        security=security, program=AGGREGATE,  # type: ignore[arg-type]
        inputs=tuple(PlanInput(o, k.public_key().public_bytes_raw(), "data", (FieldDecl("amount", 0, 100),))
                     for o, k in owners.items()),
        outputs=(PlanOutput("auditor", auditor.public_bytes, OUTPUTS),),
    )
    return SessionPlan.from_json(plan.to_json()), {k: (1, v.public_key()) for k, v in pairs.items()}


@pytest.mark.parametrize(("n", "t", "sharing", "security"), [
    (2, 0, "additive", "semi-honest"), (3, 0, "additive", "malicious"), (4, 1, "shamir", "malicious"),
])
def test_the_projection_matches_a_real_deal(n: int, t: int, sharing: str, security: str) -> None:
    """Within 1% (plus the envelope allowance) of the largest body a real deal seals, at 5 and 20 rows, uneven owners too."""
    suite = get_suite(SuiteName.PQ_DEFAULT)
    signer = suite.signature.generate(os.urandom(32))
    plan, keys = _plan(n, t, sharing, security)
    projection = project_size(plan)
    for rows in ({"bank-a": 5, "bank-b": 5}, {"bank-a": 20, "bank-b": 20}, {"bank-a": 20, "bank-b": 5}):
        real = max(len(b) for b in deal(plan, rows, suite=suite, signer_key=signer, node_kem_keys=keys).bodies.values())
        projected = projection.projected_bytes(rows)
        # Never below the real size (a session that does not fit must never be dealt), and close.
        assert real <= projected <= real * 1.01 + (64 << 10), (rows, real, projected)
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
