"""Hypothesis properties of the score: always in [0, 1]; monotone in every hard-signal count;
the same whatever order the nodes and sessions come in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqmpc_operator.anomaly import AnomalyPolicy, AnomalyState, NodeSample, SessionEvidence, score_nodes

POLICY = AnomalyPolicy()
NODES = ["n0", "n1", "n2", "n3", "n4", "n5"]
counts = st.integers(min_value=0, max_value=50).map(float)
ratios = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@st.composite
def samples(draw: st.DrawFn) -> list[NodeSample]:
    out = []
    for n in NODES:
        peers = [p for p in NODES if p != n]
        out.append(NodeSample(
            node=n, at=0.0,
            handshake_failures={(r, draw(st.sampled_from([None, *peers]))): draw(counts)
                                for r in draw(st.sets(st.sampled_from(["wrong_identity", "wrong_ca", "other"])))},
            envelopes_refused={r: draw(counts) for r in draw(st.sets(st.sampled_from(["replay", "bad_signature"])))},
            plans_refused={"stale": draw(counts)},
            input_rows_rejected=draw(counts),
            peers_lost={p: draw(counts) for p in draw(st.sets(st.sampled_from(peers), max_size=2))},
            traffic_deviation={p: draw(ratios) for p in peers},
            round_latency_sum=draw(st.floats(min_value=0.0, max_value=100.0)),
            round_latency_count=draw(st.integers(min_value=0, max_value=1000)),
        ))
    return out


@st.composite
def evidence(draw: st.DrawFn) -> list[SessionEvidence]:
    out = []
    for i in range(draw(st.integers(min_value=0, max_value=6))):
        parties = tuple(draw(st.permutations(NODES))[: draw(st.integers(min_value=2, max_value=4))])
        blamed = {r: frozenset({draw(st.sampled_from(parties))}) for r in draw(st.sets(st.sampled_from(parties)))}
        out.append(SessionEvidence(f"s{i}", parties, draw(st.sampled_from(["succeeded", "mac_check_failed", "peer_lost"])),
                                   float(i), blamed))
    return out


@settings(max_examples=150, deadline=None)
@given(samples(), evidence())
def test_scores_in_unit_interval(ss: list[NodeSample], ev: list[SessionEvidence]) -> None:
    _, scores = score_nodes(AnomalyState(), ss, ev, POLICY, 10.0)
    assert all(0.0 <= s.score <= 1.0 and math.isfinite(s.score) for s in scores.values())


@settings(max_examples=100, deadline=None)
@given(samples(), evidence(), st.sampled_from(NODES), st.sampled_from(["handshake", "envelopes", "plans", "rows", "lost"]),
       st.integers(min_value=1, max_value=20))
def test_monotone_in_hard_counts(ss: list[NodeSample], ev: list[SessionEvidence], who: str, signal: str, extra: int) -> None:
    _, before = score_nodes(AnomalyState(), ss, ev, POLICY, 10.0)
    bumped = []
    for s in ss:
        if s.node == who:
            if signal == "handshake":
                key = ("wrong_identity", "n0" if who != "n0" else "n1")
                s = NodeSample(**{**s.__dict__, "handshake_failures": {**s.handshake_failures, key: s.handshake_failures.get(key, 0) + extra}})
            elif signal == "envelopes":
                s = NodeSample(**{**s.__dict__, "envelopes_refused": {**s.envelopes_refused, "replay": s.envelopes_refused.get("replay", 0) + extra}})
            elif signal == "plans":
                s = NodeSample(**{**s.__dict__, "plans_refused": {"stale": s.plans_refused["stale"] + extra}})
            elif signal == "rows":
                s = NodeSample(**{**s.__dict__, "input_rows_rejected": s.input_rows_rejected + extra})
            else:
                peer = "n0" if who != "n0" else "n1"
                s = NodeSample(**{**s.__dict__, "peers_lost": {**s.peers_lost, peer: s.peers_lost.get(peer, 0) + extra}})
        bumped.append(s)
    _, after = score_nodes(AnomalyState(), bumped, ev, POLICY, 10.0)
    for n in before:
        # Scores only grow, except that an accusation another node now corroborates no
        # longer counts as that accuser's lone accusation (its 'accuses_many_peers' may drop).
        if after[n].score < before[n].score - 1e-12:
            rest = {k: v for k, v in after[n].evidence.items() if k != "accuses_many_peers"}
            was = {k: v for k, v in before[n].evidence.items() if k != "accuses_many_peers"}
            assert sum(rest.values()) >= sum(was.values()) - 1e-9, (n, before[n], after[n])
    # A node's own refusals never count against it; an accusation against a peer never
    # lowers the peer's evidence (it counts once corroborated by a second accuser).
    peer = "n0" if who != "n0" else "n1"
    if signal in ("envelopes", "plans", "rows"):
        assert sum(after[who].evidence.values()) == pytest.approx(sum(before[who].evidence.values()))
    else:
        assert sum(after[peer].evidence.values()) >= sum(before[peer].evidence.values()) - 1e-9


@settings(max_examples=100, deadline=None)
@given(samples(), evidence(), st.randoms(use_true_random=False))
def test_invariant_to_node_and_session_order(ss: list[NodeSample], ev: list[SessionEvidence], rnd: object) -> None:
    _, a = score_nodes(AnomalyState(), ss, ev, POLICY, 10.0)
    ss2, ev2 = list(ss), list(ev)
    rnd.shuffle(ss2)  # type: ignore[attr-defined]
    rnd.shuffle(ev2)  # type: ignore[attr-defined]
    _, b = score_nodes(AnomalyState(), ss2, ev2, POLICY, 10.0)
    assert set(a) == set(b)
    assert all(abs(a[n].score - b[n].score) < 1e-9 for n in a)
