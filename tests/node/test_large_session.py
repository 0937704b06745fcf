"""A session of 3 owners x 45k rows across 3 node processes over PQ links.

The range check's Beaver opening of such a session is one ~276 MB share per peer, past a
peer link's 256 MiB ``max_message`` (at 3 x 100k it is ~614 MB); the engine sends it in
parts of at most ``MAX_MESSAGE_BYTES`` (see :mod:`pqmpc_node.mpc.context`), so the session
completes. The nodes run through ``large_body_node.py`` (party 0's dealt preprocessing is
large; the service's 256 MiB upload limit is lifted). 3 x 100k rows does not run through
the node yet: party 0's preprocessing upload is then over 256 MiB and not read within the
service's 30 s body timeout (``service.py``/``api_errors.py``, not the links). The program
is a mean (exact: the sum in cents over the public count); an exact variance adds one
exact split per row and doubles party 0's material (~720 MiB here), past what the
service reads within that timeout on a shared machine — the in-process engine tests
cover the variance at 100 000 rows (``tests/mpc/test_numerics.py``).
"""

from __future__ import annotations

import sys
from fractions import Fraction

import numpy as np
import pytest

from harness import HERE, Operator
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import FieldDecl

ROWS = 45_000  # 3 x 45k: the range check opening is ~276 MB per peer, past the links' 256 MiB max_message


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_owners_of_45k_rows(operator: Operator) -> None:
    nodes = operator.start_nodes(3, command=[sys.executable, str(HERE / "large_body_node.py")], extra_env={"PQMPC_ROUND_TIMEOUT": "300", "PQMPC_MESH_TIMEOUT": "60"})
    operator.certify(nodes)
    owners = [Identity.generate(f"bank-{i}") for i in range(3)]
    auditor = Identity.generate("auditor")
    program = {"aggregate": [{"op": "mean", "field": "amount"}, {"op": "sum", "field": "amount"}]}
    plan = operator.plan("big-1", nodes, program=program, owners=owners, fields=[FieldDecl("amount", 0, 1000)],
                         recipients={auditor: ["mean(amount)", "sum(amount)"]}, lifetime_s=1200,
                         max_rows_per_owner=ROWS)
    operator.post_plan(plan, nodes)
    rng = np.random.default_rng(5)
    columns = [np.round(rng.uniform(0, 1000, ROWS), 2) for _ in owners]
    with SessionClient(node_url=nodes[0].url, session_id="big-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        for owner, col in zip(owners, columns, strict=True):
            c.submit_rows(owner, {"amount": [f"{v:.2f}" for v in col]})
        for n in nodes:
            status = operator.wait_phase(n, "big-1", {"Succeeded", "Failed"}, timeout=600)
            assert status["phase"] == "Succeeded", (status, operator.dealer_errors, n.log_text()[-3000:])
        out = c.collect_result(auditor, wait_s=60)["outputs"]
    cents = [int(round(v * 100)) for v in np.concatenate(columns)]
    n, total = len(cents), sum(cents)
    # exact: the recipient's value is the exact fraction rounded once to a float
    assert out["mean(amount)"] == float(Fraction(total, n * 100))
    assert out["sum(amount)"] == float(Fraction(total, 100))
