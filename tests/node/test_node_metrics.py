"""The node's per-peer behavioural metrics: handshake refusals labelled by the refused peer
(``""`` where unknown, also for callers that only give reason counts), the per-peer
round-wait histogram filled from a session's channel, and the configured KEM key lifetime
(the ``PqmpcKeyRotationOverdue`` alert compares the key's age with it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from harness import Operator
from pqmpc_node.metrics import NodeMetrics
from pqmpc_node.net.counters import RefusalCounters


def samples(metrics: NodeMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value for family in metrics.registry.collect() for s in family.samples
            if s.name == name}


def test_handshake_failures_labelled_by_peer() -> None:
    counters = RefusalCounters()
    counters.count("wrong_identity", "node-9")
    counters.count("wrong_identity", "node-9")
    counters.count("wrong_ca")
    m = NodeMetrics(CollectorRegistry(), refusals=counters.snapshot, refusals_by_peer=counters.snapshot_by_peer)
    got = samples(m, "pqmpc_node_handshake_failures_total")
    assert got == {frozenset({("reason", "wrong_identity"), ("peer", "node-9")}): 2.0,
                   frozenset({("reason", "wrong_ca"), ("peer", "")}): 1.0}
    assert counters.snapshot() == {"wrong_identity": 2, "wrong_ca": 1}  # the by-reason view is unchanged
    text = generate_latest(m.registry).decode()
    assert 'pqmpc_node_handshake_failures_total{peer="node-9",reason="wrong_identity"} 2.0' in text


def test_reason_only_callers_export_an_empty_peer() -> None:
    m = NodeMetrics(CollectorRegistry(), refusals=lambda: {"no_shared_group": 3})
    assert samples(m, "pqmpc_node_handshake_failures_total") == {
        frozenset({("reason", "no_shared_group"), ("peer", "")}): 3.0}


def test_peer_wait_histogram_and_kem_duration_from_a_real_session(operator: Operator) -> None:
    from pqmpc_node.client import Identity, SessionClient
    from pqmpc_node.plan import FieldDecl

    nodes = operator.start_nodes(3, extra_env={"PQMPC_KEM_KEY_DURATION": "12h"})
    operator.certify(nodes)
    text = operator.plain.get(nodes[0].metrics_url + "/metrics").text
    assert "pqmpc_node_kem_key_duration_seconds 43200.0" in text
    assert "pqmpc_node_peer_wait_seconds_count" not in text  # no session yet: no per-peer series
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("waits-1", nodes, program={"aggregate": [{"op": "sum", "field": "amount"}]},
                         owners=[owner], fields=[FieldDecl("amount", 0, 1000)], recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id="waits-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        c.submit_rows(owner, {"amount": ["1", "2"]})
    for n in nodes:
        assert operator.wait_phase(n, "waits-1", {"Succeeded", "Failed"})["phase"] == "Succeeded"
    text = operator.plain.get(nodes[0].metrics_url + "/metrics").text
    rounds = operator.metric(nodes[0], "pqmpc_node_round_latency_seconds_count")
    for peer in (nodes[1], nodes[2]):
        line = next(ln for ln in text.splitlines()
                    if ln.startswith(f'pqmpc_node_peer_wait_seconds_count{{peer="{peer.node_id}"}}'))
        # Every round of this 3-party session receives from both peers.
        assert float(line.rsplit(" ", 1)[1]) == rounds > 0
    assert f'peer="{nodes[0].node_id}"' not in "\n".join(
        ln for ln in text.splitlines() if ln.startswith("pqmpc_node_peer_wait_seconds"))

