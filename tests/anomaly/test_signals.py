"""Each anomaly signal on its own, and their combination: clean fleets score ~0, MAC failures
are attributed to the common party across sessions, named culprits, handshake refusals
(attributed and not, counted once corroborated), a node's own refusals (never held against
it), lost peers, downgraded links, and the
robust fleet z-scores of traffic deviation and round latency (an outlier is flagged, a
fleet-wide slowdown is not)."""

from __future__ import annotations

import math

import pytest

from pqmpc_operator.anomaly import (
    AnomalyPolicy,
    AnomalyState,
    NodeSample,
    SessionEvidence,
    attribute_failures,
    robust_z,
    score_nodes,
)

POLICY = AnomalyPolicy()
FLEET = ["a", "b", "c", "d", "e"]


def clean(node: str, at: float = 0.0, **kw: object) -> NodeSample:
    """An honest node's scrape: some sessions, symmetric traffic, PQ links, normal latency."""
    peers = [p for p in FLEET if p != node]
    base: dict[str, object] = dict(
        sessions={"succeeded": 4.0},
        traffic_deviation={p: 0.0 for p in peers},
        link_info=frozenset((p, "X25519MLKEM768", "ML-DSA-65") for p in peers),
        round_latency_sum=0.4, round_latency_count=200.0,
    )
    base.update(kw)
    return NodeSample(node=node, at=at, **base)  # type: ignore[arg-type]


def fleet(**overrides: dict[str, object]) -> list[NodeSample]:
    return [clean(n, **overrides.get(n, {})) for n in FLEET]


def session(sid: str, parties: tuple[str, ...], outcome: str = "succeeded", at: float = 0.0,
            blamed: dict[str, frozenset[str]] | None = None) -> SessionEvidence:
    return SessionEvidence(sid, parties, outcome, at, blamed or {})


def test_clean_fleet_scores_zero() -> None:
    sessions = [session("s1", ("a", "b", "c")), session("s2", ("c", "d", "e"))]
    _, scores = score_nodes(AnomalyState(), fleet(), sessions, POLICY, now=0.0)
    assert set(scores) == set(FLEET)
    assert all(s.score < 0.01 for s in scores.values()), scores


def test_mac_failures_across_rotated_sessions_single_out_the_common_party() -> None:
    sessions = [session("s1", ("a", "b", "t"), "mac_check_failed"),
                session("s2", ("a", "c", "t"), "mac_check_failed"),
                session("s3", ("b", "c", "t"), "mac_check_failed"),
                session("s4", ("a", "b", "c"))]
    _, scores = score_nodes(AnomalyState(), [], sessions, POLICY, now=0.0)
    assert scores["t"].score >= 0.9
    assert all(scores[n].score < 0.45 for n in "abc"), scores
    assert scores["t"].evidence["mac_failures_attributed"] == pytest.approx(3.0, abs=0.05)


def test_one_failed_session_cannot_single_anyone_out_without_names() -> None:
    _, scores = score_nodes(AnomalyState(), [], [session("s1", ("a", "b", "t"), "mac_check_failed")], POLICY, 0.0)
    assert scores["a"].score == pytest.approx(scores["t"].score) == pytest.approx(1 - math.exp(-1 / 3))


def test_named_by_both_coparties_crosses_quarantine_in_one_session() -> None:
    ev = session("s1", ("a", "b", "t"), "mac_check_failed",
                 blamed={"a": frozenset({"t"}), "b": frozenset({"t"}), "t": frozenset({"a"})})
    _, scores = score_nodes(AnomalyState(), [], [ev], POLICY, 0.0)
    assert scores["t"].score >= 0.9
    assert scores["t"].evidence["named_by_coparties"] == pytest.approx(2.5)
    # The cheater's counter-accusation is one uncorroborated voice: it adds nothing against a.
    assert "named_by_coparties" not in scores["a"].evidence
    assert scores["a"].score < 0.9 and scores["b"].score == pytest.approx(scores["a"].score)


def test_session_seen_twice_counts_once() -> None:
    ev = session("s1", ("a", "b", "t"), "mac_check_failed", blamed={"a": frozenset({"t"})})
    st, first = score_nodes(AnomalyState(), [], [ev], POLICY, 0.0)
    _, second = score_nodes(st, [], [ev], POLICY, 0.0)
    assert second["t"].score == pytest.approx(first["t"].score)


def test_peer_lost_sessions_are_not_attributed_as_mac_failures() -> None:
    _, scores = score_nodes(AnomalyState(), [], [session("s1", ("a", "b", "t"), "peer_lost")], POLICY, 0.0)
    assert all(s.score == 0.0 for s in scores.values())


def test_from_reports_parses_culprits_and_outcome() -> None:
    msg = "MAC check 'outputs/broadcast' failed over openings []: party 2 opened a value that does not match its commitment; the session must abort"
    reports = {"a": {"phase": "Failed", "reason": "mac_check_failed", "message": msg},
               "b": {"phase": "Failed", "reason": "mac_check_failed", "message": msg},
               "t": {"phase": "Failed", "reason": "peer_lost", "message": "lost party 1: peer closed the TLS session"}}
    ev = SessionEvidence.from_reports("s1", ["a", "b", "t"], reports, finished_at=5.0)
    assert ev.outcome == "mac_check_failed"
    assert dict(ev.blamed) == {"a": frozenset({"t"}), "b": frozenset({"t"})}
    ok = SessionEvidence.from_reports("s2", ["a", "b"], {"a": {"phase": "Succeeded"}}, finished_at=5.0)
    assert ok.outcome == "succeeded" and not ok.blamed
    # A MAC failure without a commitment mismatch names nobody.
    vague = {"a": {"phase": "Failed", "reason": "mac_check_failed",
                   "message": "MAC check 'outputs' failed over openings [x]: the MAC shares do not match the opened values"}}
    assert not SessionEvidence.from_reports("s3", ["a", "b"], vague, finished_at=0.0).blamed


def test_handshake_refusal_with_peer_label_counts_once_corroborated() -> None:
    alone = fleet(a={"handshake_failures": {("wrong_identity", "e"): 2.0}})
    _, scores = score_nodes(AnomalyState(), alone, [], POLICY, 0.0)
    assert "handshake_refusals" not in scores["e"].evidence  # one accuser names nobody
    both = fleet(a={"handshake_failures": {("wrong_identity", "e"): 2.0}},
                 b={"handshake_failures": {("wrong_identity", "e"): 3.0}})
    _, scores = score_nodes(AnomalyState(), both, [], POLICY, 0.0)
    # Each accuser counts at most accusation_cap; two agree on the weaker one's units.
    assert scores["e"].evidence["handshake_refusals"] == pytest.approx(POLICY.weights.accusation_cap)
    assert "handshake_refusals" not in scores["a"].evidence


def test_refusal_of_an_unauthenticated_peer_scores_nothing() -> None:
    """Anyone who can connect causes these at every node: counting them would quarantine the fleet."""
    every = fleet(**{n: {"handshake_failures": {("wrong_ca", None): 100.0, ("bad_certificate", ""): 100.0}}
                     for n in FLEET})
    _, scores = score_nodes(AnomalyState(), every, [], POLICY, 0.0)
    assert all(scores[n].score == 0.0 for n in FLEET)


def test_counters_are_differenced_between_passes_and_reset_is_handled() -> None:
    def lost(count: float) -> list[NodeSample]:
        return fleet(a={"peers_lost": {"e": count}}, b={"peers_lost": {"e": count}})

    st, sc1 = score_nodes(AnomalyState(), lost(2.0), [], POLICY, 0.0)
    assert sc1["e"].evidence["peers_lost"] == pytest.approx(0.6)
    st, sc2 = score_nodes(st, lost(2.0), [], POLICY, 0.0)
    assert sc2["e"].evidence["peers_lost"] == pytest.approx(0.6)  # nothing new
    st, sc3 = score_nodes(st, lost(1.0), [], POLICY, 0.0)
    assert sc3["e"].evidence["peers_lost"] == pytest.approx(0.9)  # both restarted: 1 new


def test_first_sample_can_be_taken_as_baseline() -> None:
    policy = AnomalyPolicy(count_history_on_first_sample=False)
    samples = fleet(a={"peers_lost": {"e": 5.0}}, b={"peers_lost": {"e": 5.0}})
    _, scores = score_nodes(AnomalyState(), samples, [], policy, 0.0)
    assert scores["e"].score == 0.0


def test_a_nodes_own_refusals_never_count_against_it() -> None:
    samples = fleet(a={"plans_refused": {"bad_signature": 2.0}}, b={"input_rows_rejected": 100.0},
                    c={"envelopes_refused": {"replay": 1000.0, "bad_signature": 50.0}})
    _, scores = score_nodes(AnomalyState(), samples, [], POLICY, 0.0)
    assert all(scores[n].score == 0.0 for n in FLEET)


def test_lost_peer_counts_once_however_many_report_it() -> None:
    samples = fleet(a={"peers_lost": {"e": 1.0}}, b={"peers_lost": {"e": 1.0}}, c={"peers_lost": {"e": 1.0}})
    _, scores = score_nodes(AnomalyState(), samples, [], POLICY, 0.0)
    assert scores["e"].evidence["peers_lost"] == pytest.approx(0.3)


def test_downgraded_link_is_held_against_the_peer_once_two_report_it() -> None:
    links = frozenset({("e", "X25519", "ML-DSA-65"), ("b", "X25519MLKEM768", "ML-DSA-65")})
    _, scores = score_nodes(AnomalyState(), fleet(a={"link_info": links}), [], POLICY, 0.0)
    assert "downgraded_link" not in scores["e"].evidence  # one node's word
    _, scores = score_nodes(AnomalyState(), fleet(a={"link_info": links}, c={"link_info": links}), [], POLICY, 0.0)
    assert scores["e"].evidence["downgraded_link"] == pytest.approx(1.0)
    assert "downgraded_link" not in scores["b"].evidence


def test_traffic_deviation_outlier_is_flagged_by_lower_median_of_reports() -> None:
    # Everyone but e reports e sending 80% more than it receives; e reports everyone (it sees the mirror).
    overrides: dict[str, dict[str, object]] = {n: {"traffic_deviation": {**{p: 0.0 for p in FLEET if p not in (n, "e")}, "e": 0.8}}
                                               for n in "abcd"}
    overrides["e"] = {"traffic_deviation": {p: 0.45 for p in "abcd"}}
    _, scores = score_nodes(AnomalyState(), fleet(**overrides), [], POLICY, 0.0)
    assert scores["e"].evidence["traffic_deviation"] == pytest.approx(3.0)  # capped
    assert scores["e"].score > 0.9
    assert all("traffic_deviation" not in scores[n].evidence for n in "abcd")


def test_latency_outlier_flagged_but_fleet_wide_slowdown_not() -> None:
    slow = fleet(c={"round_latency_sum": 4.0})  # 20 ms per round against 2 ms
    _, scores = score_nodes(AnomalyState(), slow, [], POLICY, 0.0)
    assert scores["c"].evidence["round_latency"] == pytest.approx(1.5)
    assert 0.5 < scores["c"].score < 0.9  # flagged, never quarantined by latency alone
    assert all(scores[n].score == 0.0 for n in "abde")
    everyone = [clean(n, round_latency_sum=4.0 * (1 + 0.01 * i)) for i, n in enumerate(FLEET)]
    _, scores = score_nodes(AnomalyState(), everyone, [], POLICY, 0.0)
    assert all(s.score == 0.0 for s in scores.values()), scores


def test_latency_uses_the_interval_since_the_last_scrape() -> None:
    st, _ = score_nodes(AnomalyState(), fleet(c={"round_latency_sum": 4.0}), [], POLICY, 0.0)
    # c's next 200 rounds are normal (sum +0.4): its interval mean is normal again; the old level decays.
    later = fleet(**{n: {"round_latency_sum": 0.8, "round_latency_count": 400.0} for n in "abde"},
                  c={"round_latency_sum": 4.4, "round_latency_count": 400.0})
    _, scores = score_nodes(st, [s for s in later], [], POLICY, now=POLICY.half_life_s)
    assert scores["c"].evidence["round_latency"] == pytest.approx(0.75)


def test_too_small_fleet_gives_no_soft_signal() -> None:
    two = [clean("a", round_latency_sum=40.0), clean("b")]
    _, scores = score_nodes(AnomalyState(), two, [], POLICY, 0.0)
    assert all("round_latency" not in s.evidence for s in scores.values())


def test_robust_z_ignores_one_outlier_in_scale() -> None:
    z = robust_z({"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.0, "e": 50.0}, floor_abs=0.0)
    assert z["e"] > 100 and abs(z["a"]) < 1


def test_attribution_is_ambiguous_when_parties_always_run_together() -> None:
    caused = attribute_failures([(("a", "b", "t"), 1.0), (("a", "b", "t"), 1.0)], {"a": 2, "b": 2, "t": 2})
    assert caused["a"] == pytest.approx(caused["t"]) == pytest.approx(2 / 3)


def test_evidence_decays_with_half_life() -> None:
    ev = session("s1", ("a", "b", "t"), "mac_check_failed", blamed={"a": frozenset({"t"}), "b": frozenset({"t"})})
    st, s0 = score_nodes(AnomalyState(), [], [ev], POLICY, 0.0)
    _, s1 = score_nodes(st, [], [], POLICY, POLICY.half_life_s)
    assert s1["t"].evidence["named_by_coparties"] == pytest.approx(s0["t"].evidence["named_by_coparties"] / 2)
    assert s1["t"].evidence["mac_failures_attributed"] == pytest.approx(s0["t"].evidence["mac_failures_attributed"] / 2, rel=0.05)
