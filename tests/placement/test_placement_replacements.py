"""Placing replacements for a re-run (``place_replacements``): the kept parties stay where they are, each lost
index gets a free node that keeps every rule with them (least loaded, the lost parties' own pods last), and a pool
with no such node is explained, not solved around."""

from __future__ import annotations

import pytest

from pqmpc_operator.placement import (
    NodeCandidate,
    NodeName,
    Placement,
    PlacementConstraint,
    PlacementInfeasible,
    PlacementInputError,
    PlacementRequest,
    check_placement,
    place_replacements,
)


def node(name: str, td: str, zone: str, *, load: int = 0, ready: bool = True) -> NodeCandidate:
    return NodeCandidate(NodeName(name), group=td, region="eu", zone=zone, trust_domain=td, ready=ready, load=load)


A, B, C = node("a", "td-a", "z1"), node("b", "td-b", "z2"), node("c", "td-c", "z3")
REQUEST = PlacementRequest(parties=3)


def test_the_kept_parties_stay_and_a_free_node_fills_the_gap() -> None:
    d, e = node("d", "td-d", "z4", load=2), node("e", "td-e", "z5")
    got = place_replacements([A, B, C, d, e], REQUEST, {0: A, 1: B}, [2], placed_before={"a": 0, "b": 1, "c": 2})
    assert isinstance(got, Placement)
    assert [str(a.node) for a in got.assignments] == ["a", "b", "e"]  # c (the lost pod) last, then least loaded
    assert not check_placement([A, B, e], REQUEST)
    got = place_replacements([A, B, C], REQUEST, {0: A, 2: C}, [1], placed_before={"b": 1})
    assert isinstance(got, Placement) and [str(a.node) for a in got.assignments] == ["a", "b", "c"]  # b is back


def test_a_replacement_keeps_the_rules_with_the_kept_parties() -> None:
    same_td = node("d", "td-a", "z4")
    same_zone = node("e", "td-e", "z1")
    got = place_replacements([A, B, same_td, same_zone], REQUEST, {0: A, 1: B}, [2])
    assert isinstance(got, PlacementInfeasible) and got.constraint is PlacementConstraint.DISTINCT_TRUST_DOMAINS
    assert "no free node can replace party 2" in got.message
    not_ready = node("f", "td-f", "z6", ready=False)
    got = place_replacements([A, B, not_ready], REQUEST, {0: A, 1: B}, [2])
    assert isinstance(got, PlacementInfeasible) and got.constraint is PlacementConstraint.READY_NODES


def test_kept_and_filled_must_cover_every_party() -> None:
    with pytest.raises(PlacementInputError, match="once each"):
        place_replacements([A, B, C], REQUEST, {0: A}, [2])


def test_a_node_that_held_another_index_is_never_a_replacement() -> None:
    # c held index 1 in an earlier generation (it has f(2)): at index 2 it would also get f(3).
    got = place_replacements([A, B, C], REQUEST, {0: A, 1: B}, [2], placed_before={"a": 0, "b": 1, "c": 1})
    assert isinstance(got, PlacementInfeasible) and got.constraint is PlacementConstraint.READY_NODES
    assert "held another index" in got.message
    d = node("d", "td-d", "z4", load=9)
    got = place_replacements([A, B, C, d], REQUEST, {0: A, 1: B}, [2], placed_before={"c": 1})
    assert isinstance(got, Placement) and [str(a.node) for a in got.assignments] == ["a", "b", "d"]


def test_kept_parties_must_be_where_they_were() -> None:
    with pytest.raises(PlacementInputError, match="a at 0 \\(held 1\\)"):
        place_replacements([A, B, C], REQUEST, {0: A, 1: B}, [2], placed_before={"a": 1})
