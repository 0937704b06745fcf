"""Quarantine decisions: entry at the quarantine score with a readable reason, release after a
clean period once decay brings the score under the release score, immediate release (and a
wiped record) by the clear annotation, replacement requests under autoReplace, and the policy
built from a NodePool's ``anomaly`` block."""

from __future__ import annotations

import pytest

from pqmpc_operator.anomaly import (
    AnomalyPolicy,
    AnomalyState,
    SessionEvidence,
    forget_node,
    quarantine_decisions,
    score_nodes,
)

POLICY = AnomalyPolicy()
NAMED = SessionEvidence("s1", ("a", "b", "t"), "mac_check_failed", 0.0,
                        {"a": frozenset({"t"}), "b": frozenset({"t"})})


def quarantined_t(policy: AnomalyPolicy = POLICY) -> AnomalyState:
    st, scores = score_nodes(AnomalyState(), [], [NAMED], policy, 0.0)
    st, dec = quarantine_decisions(st, scores, policy, 0.0)
    assert [d.node for d in dec.enter] == ["t"]
    return st


def test_entry_names_the_evidence() -> None:
    st, scores = score_nodes(AnomalyState(), [], [NAMED], POLICY, 0.0)
    st, dec = quarantine_decisions(st, scores, POLICY, 0.0)
    assert [d.node for d in dec.enter] == ["t"] and not dec.leave and not dec.replace
    assert "named_by_coparties=2.50" in dec.enter[0].reason and "0.9" in dec.enter[0].reason
    assert st.quarantined() == {"t"}
    # Still above: no second entry.
    _, dec2 = quarantine_decisions(st, scores, POLICY, 1.0)
    assert not dec2.enter


def test_decay_releases_after_clean_period() -> None:
    st = quarantined_t()
    hl = POLICY.half_life_s
    # Score 1-exp(-2.83): needs ~2.5 half-lives to drop below 0.45.
    st, scores = score_nodes(st, [], [], POLICY, 1.0 * hl)
    st, dec = quarantine_decisions(st, scores, POLICY, 1.0 * hl)
    assert scores["t"].score >= POLICY.release_score and not dec.leave
    st, scores = score_nodes(st, [], [], POLICY, 3.0 * hl)
    assert scores["t"].score < POLICY.release_score
    st, dec = quarantine_decisions(st, scores, POLICY, 3.0 * hl)
    assert not dec.leave and st.quarantined() == {"t"}  # clean period starts now
    t_leave = 3.0 * hl + POLICY.clean_period_s
    st, scores = score_nodes(st, [], [], POLICY, t_leave)
    st, dec = quarantine_decisions(st, scores, POLICY, t_leave)
    assert [d.node for d in dec.leave] == ["t"] and "clean period" in dec.leave[0].reason
    assert st.quarantined() == frozenset()


def test_relapse_during_clean_period_restarts_it() -> None:
    st = quarantined_t()
    hl = POLICY.half_life_s
    st, scores = score_nodes(st, [], [], POLICY, 3 * hl)
    st, _ = quarantine_decisions(st, scores, POLICY, 3 * hl)
    again = SessionEvidence("s2", ("c", "d", "t"), "mac_check_failed", 3 * hl + 10,
                            {"c": frozenset({"t"}), "d": frozenset({"t"})})
    st, scores = score_nodes(st, [], [again], POLICY, 3 * hl + 10)
    st, _ = quarantine_decisions(st, scores, POLICY, 3 * hl + 10)
    st, scores = score_nodes(st, [], [], POLICY, 3 * hl + POLICY.clean_period_s)
    st, dec = quarantine_decisions(st, scores, POLICY, 3 * hl + POLICY.clean_period_s)
    assert not dec.leave and st.quarantined() == {"t"}


def test_clear_annotation_releases_at_once_and_wipes_evidence() -> None:
    st = quarantined_t()
    st, scores = score_nodes(st, [], [], POLICY, 10.0)
    st, dec = quarantine_decisions(st, scores, POLICY, 10.0, cleared={"t"})
    assert [d.node for d in dec.leave] == ["t"] and "annotation" in dec.leave[0].reason
    st, scores = score_nodes(st, [], [], POLICY, 11.0)
    assert scores["t"].score < 0.05  # old named evidence gone, old session no longer attributed to t
    st, dec = quarantine_decisions(st, scores, POLICY, 11.0)
    assert not dec.enter and st.quarantined() == frozenset()


def test_auto_replace_requests_replacement() -> None:
    policy = AnomalyPolicy.from_spec({"quarantineScore": 0.9, "autoReplace": True})
    st, scores = score_nodes(AnomalyState(), [], [NAMED], policy, 0.0)
    _, dec = quarantine_decisions(st, scores, policy, 0.0)
    assert [d.node for d in dec.replace] == ["t"] and dec.replace[0].reason.startswith("autoReplace")
    st, scores = score_nodes(AnomalyState(), [], [NAMED], POLICY, 0.0)
    _, dec = quarantine_decisions(st, scores, POLICY, 0.0)
    assert dec.enter and not dec.replace


def test_restore_and_forget() -> None:
    st = AnomalyState.restore({"x": 100.0})
    assert st.quarantined() == {"x"}
    assert forget_node(st, "x").quarantined() == frozenset()


def test_policy_from_spec() -> None:
    p = AnomalyPolicy.from_spec({})
    assert (p.quarantine_score, p.release_score, p.auto_replace) == (0.9, 0.45, False)
    assert AnomalyPolicy.from_spec({"quarantineScore": 0.6}).release_score == pytest.approx(0.3)
    assert AnomalyPolicy.from_spec(None, half_life_s=60.0).half_life_s == 60.0
    for bad in ({"quarantineScore": 1.5}, {"quarantineScore": True}, {"quarantineScore": "x"}, {"autoReplace": "yes"}):
        with pytest.raises(ValueError, match="anomaly"):
            AnomalyPolicy.from_spec(bad)
    with pytest.raises(ValueError, match="release_score"):
        AnomalyPolicy(quarantine_score=0.5, release_score=0.6)
