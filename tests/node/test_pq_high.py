"""The pq-high suite end to end through real node processes (issue 12, finding 6).

A pool whose CA, node certificates and plan signer are ML-DSA-87 and whose envelopes use
ML-KEM-1024 + P-384: owners made with ``pqmpc identity new --suite pq-high`` submit, the
malicious Shamir session computes over PQ links, the recipient reconstructs the exact
result; a pq-default identity is refused with what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Operator
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.plan import FieldDecl

HIGH = get_suite(SuiteName.PQ_HIGH)


@pytest.fixture(scope="module")
def high(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(tmp_path_factory.mktemp("pq-high"), suite=HIGH)
    try:
        yield op
    finally:
        op.stop_all()


def test_a_pq_high_session_end_to_end(high: Operator, tmp_path: Path) -> None:
    nodes = high.start_nodes(3)
    high.certify(nodes)
    owners = [Identity.generate(f"bank-{i}", SuiteName.PQ_HIGH) for i in range(2)]
    auditor = Identity.generate("auditor", SuiteName.PQ_HIGH)
    plan = high.plan("high-1", nodes, program={"aggregate": [{"op": "mean", "field": "amount"},
                                                             {"op": "variance", "field": "amount"}]},
                     owners=owners, fields=[FieldDecl("amount", 0, 1000)], sharing="shamir", threshold=1,
                     security="malicious", recipients={auditor: ["mean(amount)", "variance(amount)"]})
    assert plan.suite is SuiteName.PQ_HIGH
    high.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id="high-1", ca_certificate=high.ca.certificate,
                       plan_signer=high.signer.public_key()) as client:
        assert client.suite is HIGH
        stranger = Identity.generate("bank-0", SuiteName.PQ_DEFAULT)
        with pytest.raises(ClientError) as err:
            client.submit_rows(stranger, {"amount": ["1"]})
        assert err.value.reason == "wrong_suite" and "--suite pq-high" in str(err.value)
        client.submit_rows(owners[0], {"amount": ["1.5", "2.5"]})
        client.submit_rows(owners[1], {"amount": ["10"]})
        for n in nodes:
            status = high.wait_phase(n, "high-1", {"Succeeded", "Failed"})
            assert status["phase"] == "Succeeded", (status, n.log_text()[-2000:])
        out = client.collect_result(auditor, wait_s=30)
    assert out["exact"] == {"mean(amount)": "14/3", "variance(amount)": "259/18"}  # exact
    assert out["outputs"]["mean(amount)"] == 14 / 3 and out["outputs"]["variance(amount)"] == 259 / 18

