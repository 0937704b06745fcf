"""The quarantine cannot be gamed (issue: corroborated accusations).

A malicious node controls its own ``/metrics`` and its own session reports. It tries to
get an honest peer quarantined by lying in every signal it owns — handshake refusals of
every kind naming the peer, lost-peer counts, traffic deviation, a downgraded link, and
failed-session reports that name the peer — for hours of scrapes: the honest peer's score
does not move. A victim of an inconsistent broadcast is not named; refusals of
unauthenticated connections (which anyone can cause at every node) score nothing; a node
that alone accuses many peers becomes a suspect, one of two that see a real outage does
not. An outsider replaying a
captured envelope 1,000 times at a real node does not move that node's score (it refused
correctly). A real tampering node is still quarantined: tests/anomaly/test_real_nodes.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from pqmpc_node.net.https import async_pq_transport
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.plan import FieldDecl
from pqmpc_operator.anomaly import (
    AnomalyPolicy,
    AnomalyState,
    NodeSample,
    SessionEvidence,
    quarantine_decisions,
    score_nodes,
)
from pqmpc_operator.node_signals import scrape_node

FLEET = ["a", "b", "c", "h", "m"]
HONEST, LIAR = "h", "m"
REASONS = ["wrong_identity", "wrong_fingerprint", "wrong_ca", "bad_certificate", "not_in_log", "no_shared_group",
           "unexpected_session"]


def _honest(node: str, at: float) -> NodeSample:
    peers = [p for p in FLEET if p != node]
    return NodeSample(node=node, at=at, sessions={"succeeded": 4.0}, traffic_deviation={p: 0.0 for p in peers},
                      link_info=frozenset((p, "X25519MLKEM768", "ML-DSA-65") for p in peers),
                      round_latency_sum=0.4, round_latency_count=200.0)


def _liar(at: float, k: int) -> NodeSample:
    peers = [p for p in FLEET if p != LIAR]
    return NodeSample(
        node=LIAR, at=at, sessions={"succeeded": 4.0},
        handshake_failures={**{(r, HONEST): 1000.0 * k for r in REASONS}, ("wrong_ca", None): 1000.0 * k},
        peers_lost={HONEST: 50.0 * k},
        traffic_deviation={**{p: 0.0 for p in peers}, HONEST: 25.0},
        link_info=frozenset({*((p, "X25519MLKEM768", "ML-DSA-65") for p in peers if p != HONEST),
                             (HONEST, "X25519", "ecdsa")}),
        round_latency_sum=0.4, round_latency_count=200.0)


def _lying_report(k: int, at: float) -> SessionEvidence:
    """A session of (liar, honest, rotating third party): the liar alone reports a MAC failure naming h."""
    third = ["a", "b", "c"][k % 3]
    parties = [LIAR, HONEST, third]
    reports = {LIAR: {"phase": "Failed", "reason": "mac_check_failed", "blamedParties": [1],
                      "message": "MAC check 'before-outputs' failed: party 1 opened a value that does not match its commitment"},
               HONEST: {"phase": "Succeeded"}, third: {"phase": "Succeeded"}}
    return SessionEvidence.from_reports(f"s{k}", parties, reports, finished_at=at)


def test_one_malicious_nodes_metrics_and_reports_cannot_quarantine_an_honest_peer() -> None:
    policy = AnomalyPolicy()
    state = AnomalyState()
    worst_honest = 0.0
    for k in range(1, 241):  # four hours of one-minute scrapes, one lying session report each
        at = 60.0 * k
        samples = [_liar(at, k), *(_honest(n, at) for n in FLEET if n != LIAR)]
        state, scores = score_nodes(state, samples, [_lying_report(k, at)], policy, at)
        state, decisions = quarantine_decisions(state, scores, policy, at)
        assert HONEST not in {d.node for d in decisions.enter}, scores[HONEST].explain()
        worst_honest = max(worst_honest, scores[HONEST].score)
    assert worst_honest < 0.05, f"uncorroborated accusations still moved the honest peer: {worst_honest}"


def test_a_victims_report_of_an_inconsistent_broadcast_names_nobody() -> None:
    """M sends different masked inputs to H1 and H2: each honest party reports that the
    *other* saw different public inputs. Victims must not become culprits."""
    parties = ["m", "h1", "h2"]
    msg = "MAC check 'before-count/broadcast' failed over openings [1:input/0]: party {} saw different public inputs"
    reports = {"m": {"phase": "Failed", "reason": "mac_check_failed", "blamedParties": [], "message": msg.format(1)},
               "h1": {"phase": "Failed", "reason": "mac_check_failed", "blamedParties": [], "message": msg.format(2)},
               "h2": {"phase": "Failed", "reason": "mac_check_failed", "blamedParties": [], "message": msg.format(1)}}
    ev = SessionEvidence.from_reports("bc-1", parties, reports, finished_at=0.0)
    assert not ev.blamed
    _, scores = score_nodes(AnomalyState(), [], [ev], AnomalyPolicy(), 0.0)
    assert all("named_by_coparties" not in scores[p].evidence for p in parties)
    assert all(scores[p].score < 0.9 for p in parties)


def test_anyone_connecting_to_every_node_cannot_quarantine_the_fleet() -> None:
    policy = AnomalyPolicy()
    state = AnomalyState()
    for k in range(1, 31):
        at = 60.0 * k
        samples = [NodeSample(**{**_honest(n, at).__dict__,
                                 "handshake_failures": {("bad_certificate", ""): 100.0 * k, ("wrong_ca", None): 100.0 * k}})
                   for n in FLEET]
        state, scores = score_nodes(state, samples, [], policy, at)
        state, decisions = quarantine_decisions(state, scores, policy, at)
        assert not decisions.enter
    assert all(s.score == 0.0 for s in scores.values())


def test_an_honest_node_seeing_a_real_outage_is_not_quarantined() -> None:
    """Two nodes both lose five peers (a zone outage): corroborated losses, no 'accuses many'."""
    nodes = [f"n{i}" for i in range(8)]
    at = 60.0
    down = nodes[3:]
    samples = [NodeSample(node=n, at=at, peers_lost={p: 1.0 for p in down}) for n in nodes[:2]]
    _, scores = score_nodes(AnomalyState(), samples, [], AnomalyPolicy(), at)
    assert all("accuses_many_peers" not in scores[n].evidence for n in nodes[:2])
    # Alone, the same report raises suspicion of the reporter but never quarantines it.
    _, scores = score_nodes(AnomalyState(), samples[:1], [], AnomalyPolicy(), at)
    assert 0 < scores["n0"].score < AnomalyPolicy().quarantine_score


def test_two_independent_accusers_are_heard() -> None:
    """Corroboration is not deafness: two nodes refusing the same peer's identity count against it."""
    policy = AnomalyPolicy()
    at = 60.0
    samples = [_honest(n, at) for n in FLEET]
    for i, n in enumerate(("a", "b")):
        samples[i] = NodeSample(**{**samples[i].__dict__, "handshake_failures": {("wrong_identity", "m"): 3.0}})
    _, scores = score_nodes(AnomalyState(), samples, [], policy, at)
    assert scores["m"].evidence["handshake_refusals"] > 0


def test_an_accuser_of_many_peers_becomes_the_suspect() -> None:
    policy = AnomalyPolicy()
    at = 60.0
    samples = [_honest(n, at) for n in FLEET if n != LIAR]
    samples.append(NodeSample(node=LIAR, at=at, peers_lost={p: 3.0 for p in FLEET if p != LIAR}))
    _, scores = score_nodes(AnomalyState(), samples, [], policy, at)
    assert scores[LIAR].evidence["accuses_many_peers"] > 0
    assert all(scores[p].score == 0.0 for p in FLEET if p != LIAR)


# -- a real node refusing 1,000 replays ---------------------------------------------------------

FIELDS = [FieldDecl("amount", 0, 1000)]


async def test_replayed_envelopes_do_not_move_the_receiving_nodes_score(operator: Any) -> None:
    nodes = operator.start_nodes(3)
    operator.certify(nodes)
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("replayed-1", nodes, program={"aggregate": [{"op": "sum", "field": "amount"}]},
                         owners=[owner], fields=FIELDS, recipients={auditor: ["sum(amount)"]})
    operator.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id="replayed-1", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        sealed = c.seal_rows(owner, {"amount": ["1", "2", "3"]})
        c.post_sealed(sealed)
    party, envelope = sealed[0]
    victim = nodes[party.plan.index]
    policy = AnomalyPolicy()
    # An outsider reaches the node API over PQ-TLS like anyone (it needs no certificate of its own).
    async with httpx.AsyncClient(timeout=30.0) as plain, httpx.AsyncClient(
            timeout=30.0, transport=async_pq_transport(operator.ca.certificate, operator.suite)) as http:
        before = [await scrape_node(plain, n.node_id, n.metrics_url, at=time.time()) for n in nodes]
        state, _ = score_nodes(AnomalyState(), [s for s, _ in before if s is not None], [], policy, time.time())
        refused = 0
        for _ in range(1000):  # an outsider replaying the captured envelope
            r = await http.post(f"{victim.url}/v1/sessions/replayed-1/inputs", content=envelope,
                                headers={"Content-Type": "application/octet-stream"})
            refused += r.status_code == 409
        assert refused == 1000
        after = [await scrape_node(plain, n.node_id, n.metrics_url, at=time.time()) for n in nodes]
    samples = [s for s, _ in after if s is not None]
    assert len(samples) == 3
    mine = next(s for s in samples if s.node == victim.node_id)
    assert sum(mine.envelopes_refused.values()) >= 1000  # the node did count them (a metric for alerts)
    state, scores = score_nodes(state, samples, [], policy, time.time())
    assert scores[victim.node_id].score == 0.0, scores[victim.node_id].explain()
