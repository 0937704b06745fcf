"""Three node processes on loopback: CSR exchange, readiness, aggregate from CSV to decrypted result, replay and recipient refusals."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Operator
from pqmpc_node.client import ClientError, Identity, SessionClient, read_csv
from pqmpc_node.plan import FieldDecl, SessionPlan

FIELDS = [FieldDecl("amount", 0, 1000), FieldDecl("age", 18, 100)]


def write_csv(path: Path, rows: list[tuple[float, float]]) -> Path:
    path.write_text("amount,age\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_readyz_before_and_after_certificate(operator: Operator) -> None:
    """Before the operator certifies it (no attestation token yet), the node's PQ-TLS API answers no one."""
    (node,) = operator.start_nodes(1)
    r = operator.plain.get(node.metrics_url + "/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "awaiting_certificate"
    with pytest.raises(httpx.ConnectError, match="unrecognized name"):
        operator.http.get(node.url + "/v1/keys")
    operator.certify([node])
    assert operator.plain.get(node.metrics_url + "/readyz").status_code == 200
    assert operator.http.get(node.url + "/v1/keys").json()["kemKeys"][0]["state"] == "current"


def test_aggregate_from_csv_to_result(operator: Operator, trio: Any, tmp_path: Path) -> None:
    a, b, auditor = Identity.generate("bank-a"), Identity.generate("bank-b"), Identity.generate("auditor")
    program = {"aggregate": [{"op": "mean", "field": "amount"}, {"op": "sum", "field": "age"},
                             {"op": "count", "field": "amount"}]}
    plan = operator.plan("agg-1", trio, program=program, owners=[a, b], fields=FIELDS,
                         recipients={auditor: ["mean(amount)", "sum(age)", "count(amount)"]})
    operator.post_plan(plan, trio)
    rows_a = [(100.5, 30), (250, 45), (999, 18)]
    rows_b = [(10, 60), (20.25, 70)]
    for ident, rows in ((a, rows_a), (b, rows_b)):
        with SessionClient(node_url=trio[0].url, session_id="agg-1", ca_certificate=operator.ca.certificate,
                           plan_signer=operator.signer.public_key()) as client:
            client.submit_rows(ident, read_csv(write_csv(tmp_path / f"{ident.name}.csv", rows)))
    for n in trio:
        assert operator.wait_phase(n, "agg-1", {"Succeeded", "Failed"})["phase"] == "Succeeded", n.log_text()[-2000:]
    with SessionClient(node_url=trio[1].url, session_id="agg-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        result = client.collect_result(auditor, wait_s=10)["outputs"]
    cents = [round(r[0] * 100) for r in rows_a + rows_b]
    assert result["mean(amount)"] == float(Fraction(sum(cents), 100 * len(cents)))  # exact
    assert result["sum(age)"] == sum(r[1] for r in rows_a + rows_b)
    assert result["count(amount)"] == 5
    assert operator.metric(trio[0], "pqmpc_node_sessions_total") >= 1
    assert operator.metric(trio[0], "pqmpc_node_peer_link_info") >= 1


def test_rows_beyond_the_bound_or_the_resolution_are_refused(operator: Operator, trio: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The client refuses before sealing; a node refuses an owner that bypasses the client (422 too_many_rows)."""
    a, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("bound-1", trio, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=[a],
                         fields=[FieldDecl("amount", 0, 1000, 1)], recipients={auditor: ["sum(amount)"]},
                         max_rows_per_owner=3)
    operator.post_plan(plan, trio)
    with SessionClient(node_url=trio[0].url, session_id="bound-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        with pytest.raises(ClientError) as err:
            client.submit_rows(a, {"amount": ["1.5", "2.25"]})
        assert err.value.reason == "too_many_decimals"
        assert str(err.value) == ("line 3, column 'amount': 2.25 has more decimals than the field's 1 (results are "
                                  "exact in units of 10^-1); round the value, or ask for a session that declares "
                                  "more decimals for this field")
        with pytest.raises(ClientError) as err:
            client.submit_rows(a, {"amount": ["1", "2", "3", "4"]})
        assert err.value.reason == "too_many_rows"
        # A hostile owner whose client ignores the bound (but seals under the real plan's digest,
        # or the node would refuse it as wrong_plan first): every node refuses the envelope.
        binding = client.plan.binding()
        monkeypatch.setattr(SessionPlan, "binding", lambda _self: binding)
        client.plan = replace(client.plan, max_rows_per_owner=100)
        sealed = client.seal_rows(a, {"amount": ["1", "2", "3", "4"]})
        for party, envelope in sealed:
            r = operator.http.post(f"{trio[party.plan.index].url}/v1/sessions/bound-1/inputs", content=envelope,
                                   headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 422 and r.json()["error"]["reason"] == "too_many_rows", r.text
