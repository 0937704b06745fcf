"""Placement by example: a table of feasible and infeasible sessions on small pools.

Covers locality (intersection of the inputs' regions), non-collusion (distinct trust
domains), maxSharesPerZone, requireGPU, exclusion of not-ready and quarantined nodes,
the objective's levels (spread, load, sparing GPUs, names), determinism, the exact
explanation of each infeasible case, the input checks, and a 10,000-node pool whose
optimum is known.
"""

from __future__ import annotations

import random

import pytest

from pqmpc_operator.placement import (
    InputLocality,
    NodeCandidate,
    NodeName,
    Placement,
    PlacementConstraint,
    PlacementInfeasible,
    PlacementInputError,
    PlacementRequest,
    PlacementScore,
    check_placement,
    place_parties,
)


def node(name: str, region: str, zone: str, td: str, *, ready: bool = True, quarantined: bool = False,
         gpus: int = 0, load: int = 0) -> NodeCandidate:
    return NodeCandidate(name=NodeName(name), group=f"{td}-{zone}", region=region, zone=zone, trust_domain=td,
                         ready=ready, quarantined=quarantined, gpus=gpus, load=load)


def only(*regions: str, owner: str = "bank-a") -> InputLocality:
    return InputLocality(owner=owner, regions=frozenset(regions))


# Three banks, each with one node in each of three eu-west zones and one us-east node.
BANKS = [
    node(f"{td}-{z}", "eu-west", f"eu-west-1{z}", td) for td in ("bank-a", "bank-b", "bank-c") for z in "abc"
] + [node(f"{td}-us", "us-east", "us-east-1a", td) for td in ("bank-a", "bank-b", "bank-c")]


def placed(nodes: list[NodeCandidate], request: PlacementRequest) -> Placement:
    result = place_parties(nodes, request)
    assert isinstance(result, Placement), str(result)
    assert check_placement([n for n in nodes if n.name in result.nodes], request) == ()
    return result


def infeasible(nodes: list[NodeCandidate], request: PlacementRequest) -> PlacementInfeasible:
    result = place_parties(nodes, request)
    assert isinstance(result, PlacementInfeasible), result
    assert result.needed > result.available
    return result


# ----------------------------------------------------------------- feasible cases


def test_locality_keeps_every_party_in_the_allowed_region() -> None:
    result = placed(BANKS, PlacementRequest(3, (only("eu-west"),)))
    assert {a.region for a in result.assignments} == {"eu-west"}
    assert len({a.trust_domain for a in result.assignments}) == 3
    assert len({a.zone for a in result.assignments}) == 3


def test_locality_is_the_intersection_of_all_inputs() -> None:
    request = PlacementRequest(3, (only("eu-west", "us-east"), only("us-east", owner="bank-c")),
                               max_shares_per_zone=3)
    result = placed(BANKS, request)
    assert result.nodes == ("bank-a-us", "bank-b-us", "bank-c-us")


def test_an_input_without_locality_allows_every_region() -> None:
    request = PlacementRequest(3, (InputLocality("bank-a"), only("us-east", owner="bank-b")),
                               max_shares_per_zone=3)
    assert {a.region for a in placed(BANKS, request).assignments} == {"us-east"}


def test_parties_are_numbered_in_node_name_order_and_reported_for_status() -> None:
    result = placed(BANKS, PlacementRequest(3, (only("us-east"),), max_shares_per_zone=3))
    assert [a.party for a in result.assignments] == [0, 1, 2]
    assert result.to_status()[1] == {"party": 1, "node": "bank-b-us", "region": "us-east",
                                     "zone": "us-east-1a", "trustDomain": "bank-b"}
    assert result.solver == "scipy-highs"


def test_without_distinct_trust_domains_parties_still_spread_over_domains() -> None:
    nodes = [node(f"{td}-{i}", "eu", f"z{i}", td) for td in ("a", "b") for i in range(4)]
    result = placed(nodes, PlacementRequest(4, distinct_trust_domains=False))
    assert result.score.max_parties_per_trust_domain == 2
    assert sorted(a.trust_domain for a in result.assignments) == ["a", "a", "b", "b"]


def test_lopsided_trust_domains_need_the_integer_program() -> None:
    # Bounds say ceil(4/2) = 2 per domain, but domain b has a single node: the optimum is 3.
    nodes = [node(f"a-{i}", "eu", f"z{i}", "a") for i in range(5)] + [node("b-0", "eu", "z9", "b")]
    result = placed(nodes, PlacementRequest(4, distinct_trust_domains=False))
    assert result.score == PlacementScore(3, 1, 0, 0)
    assert "b-0" in result.nodes


def test_trust_domain_spread_comes_before_zone_spread() -> None:
    # Either two parties per trust domain with two in z0, or three in t0 with one per zone.
    nodes = [node(f"a{z}", "eu", f"z{z}", "t0") for z in range(4)] + [node("b0", "eu", "z0", "t1"),
                                                                      node("b1", "eu", "z0", "t1")]
    result = placed(nodes, PlacementRequest(4, distinct_trust_domains=False, max_shares_per_zone=4))
    assert result.score == PlacementScore(2, 2, 0, 0)


def test_zone_cap_above_one_still_prefers_one_party_per_zone() -> None:
    nodes = [node(f"{td}-{z}", "eu", z, td) for td in "abcd" for z in ("z1", "z2", "z3", "z4")]
    result = placed(nodes, PlacementRequest(4, max_shares_per_zone=2))
    assert result.score.max_parties_per_zone == 1


def test_zone_cap_of_two_allows_two_parties_per_zone() -> None:
    nodes = [node(f"{td}-{z}", "eu", z, td) for td in "abcd" for z in ("z1", "z2")]
    result = placed(nodes, PlacementRequest(4, max_shares_per_zone=2))
    assert result.score.max_parties_per_zone == 2
    assert len({a.trust_domain for a in result.assignments}) == 4


def test_equal_zone_names_in_two_regions_are_two_zones() -> None:
    nodes = [node("a", "eu", "zone-a", "t1"), node("b", "us", "zone-a", "t2")]
    assert placed(nodes, PlacementRequest(2)).nodes == ("a", "b")


def test_require_gpu_uses_only_gpu_nodes() -> None:
    nodes = [node(f"{td}-{z}", "eu", z, td, gpus=1 if z == "z2" else 0) for td in "abc" for z in ("z1", "z2", "z3")]
    nodes += [node("d-z4", "eu", "z4", "d", gpus=2)]
    result = placed(nodes, PlacementRequest(2, require_gpu=True))
    chosen = {n.name: n for n in nodes if n.name in result.nodes}
    assert all(n.gpus > 0 for n in chosen.values())
    assert "d-z4" in chosen


def test_not_ready_and_quarantined_nodes_are_never_chosen() -> None:
    nodes = [node("a-1", "eu", "z1", "a", load=0, ready=False), node("a-2", "eu", "z1", "a", load=5),
             node("b-1", "eu", "z2", "b", quarantined=True), node("b-2", "eu", "z2", "b", load=5)]
    assert placed(nodes, PlacementRequest(2)).nodes == ("a-2", "b-2")


def test_lower_load_is_preferred() -> None:
    nodes = [node("a-busy", "eu", "z1", "a", load=3), node("a-idle", "eu", "z2", "a", load=1),
             node("b-busy", "eu", "z3", "b", load=2), node("b-idle", "eu", "z1", "b", load=0)]
    result = placed(nodes, PlacementRequest(2))
    assert result.nodes == ("a-idle", "b-idle")
    assert result.score.total_load == 1


def test_spread_comes_before_load() -> None:
    # Two idle nodes share zone z1; with maxSharesPerZone=2 the spread level still wins.
    nodes = [node("a", "eu", "z1", "t1"), node("b", "eu", "z1", "t2"), node("c", "eu", "z2", "t3", load=4)]
    result = placed(nodes, PlacementRequest(2, max_shares_per_zone=2))
    assert result.score == PlacementScore(1, 1, 4, 0)


def test_gpu_nodes_are_spared_for_sessions_that_do_not_need_them() -> None:
    nodes = [node("a-gpu", "eu", "z1", "a", gpus=1), node("a-cpu", "eu", "z1", "a"),
             node("b-gpu", "eu", "z2", "b", gpus=1), node("b-cpu", "eu", "z2", "b", load=1)]
    result = placed(nodes, PlacementRequest(2))
    assert result.nodes == ("a-cpu", "b-gpu")  # load first, then spare GPUs
    assert result.score == PlacementScore(1, 1, 0, 1)


def test_ties_go_to_names_that_sort_first_whatever_the_input_order() -> None:
    nodes = [node(f"{td}-{i}", "eu", f"z{td}{i}", td) for td in "abc" for i in range(3)]
    expected = placed(nodes, PlacementRequest(3)).nodes
    assert expected == ("a-0", "b-0", "c-0")
    rng = random.Random(5)
    for _ in range(5):
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        assert placed(shuffled, PlacementRequest(3)).nodes == expected


# ----------------------------------------------------------------- infeasible cases

INFEASIBLE = [
    pytest.param(
        BANKS, PlacementRequest(2, (only("eu-west"), only("us-east", owner="bank-c"))),
        PlacementConstraint.LOCALITY,
        "locality: inputs of bank-a allow [eu-west] and of bank-c allow [us-east]: no region allowed by all",
        (1, 0), id="locality-conflict",
    ),
    pytest.param(
        BANKS, PlacementRequest(2, (only("eu-west", "us-east"), only("eu-west", "ap-south", owner="b"),
                                    only("us-east", "ap-south", owner="c"))),
        PlacementConstraint.LOCALITY,
        "locality: inputs of bank-a allow [eu-west, us-east], of b allow [ap-south, eu-west] and of c allow "
        "[ap-south, us-east]: no region allowed by all",
        (1, 0), id="locality-three-way-conflict",
    ),
    pytest.param(
        BANKS, PlacementRequest(2, (only("eu-west"), only("us-east"))),
        PlacementConstraint.LOCALITY,
        "locality: inputs of bank-a allow [eu-west] and [us-east]: no region allowed by all",
        (1, 0), id="locality-conflict-one-owner",
    ),
    pytest.param(
        BANKS, PlacementRequest(4, (only("us-east"),), max_shares_per_zone=4),
        PlacementConstraint.LOCALITY,
        "locality: need 4 ready, unquarantined nodes in regions [us-east] (the regions every input allows), "
        "only 3 there; 9 more are in [eu-west]",
        (4, 3), id="locality-too-few",
    ),
    pytest.param(
        [node(f"{td}-{z}", "eu-west", z, td) for td in ("bank-a", "bank-b", "bank-c") for z in "vwxyz"],
        PlacementRequest(5, (only("eu-west"),)),
        PlacementConstraint.DISTINCT_TRUST_DOMAINS,
        "distinctTrustDomains: need 5 trust domains among ready, unquarantined nodes in regions [eu-west], "
        "only 3 available (bank-a, bank-b, bank-c)",
        (5, 3), id="too-few-trust-domains",
    ),
    pytest.param(
        [node(f"t{i}", "eu", f"z{i % 4}", f"t{i}") for i in range(8)],
        PlacementRequest(5),
        PlacementConstraint.MAX_SHARES_PER_ZONE,
        "maxSharesPerZone=1: need 5 zones, have 4 [z0, z1, z2, z3] among ready, unquarantined nodes in any region",
        (5, 4), id="too-few-zones",
    ),
    pytest.param(
        [node(f"t{i}", "eu", f"z{i % 2}", f"t{i}") for i in range(5)],
        PlacementRequest(5, max_shares_per_zone=2),
        PlacementConstraint.MAX_SHARES_PER_ZONE,
        "maxSharesPerZone=2: need 3 zones, have 2 [z0, z1] among ready, unquarantined nodes in any region",
        (3, 2), id="zone-cap-two-too-few-zones",
    ),
    pytest.param(
        [node("t0", "eu", "z0", "t0"), node("t1", "eu", "z0", "t1"), node("t2", "eu", "z1", "t2"),
         node("t3", "eu", "z2", "t3")],
        PlacementRequest(5, max_shares_per_zone=3, distinct_trust_domains=False),
        PlacementConstraint.READY_NODES,
        "readyNodes: need 5 ready, unquarantined nodes, the pool has 4 (4 nodes: 0 not ready, 0 quarantined)",
        (5, 4), id="too-few-nodes",
    ),
    pytest.param(
        [node(f"t{i}", "eu", f"z{i}", f"t{i}", gpus=1 if i < 2 else 0) for i in range(6)],
        PlacementRequest(5, require_gpu=True),
        PlacementConstraint.REQUIRE_GPU,
        "requireGPU: 2 GPU nodes eligible, need 5 (among 6 ready, unquarantined nodes in any region)",
        (5, 2), id="too-few-gpu-nodes",
    ),
    pytest.param(
        [node("a", "eu", "z1", "t1", ready=False), node("b", "eu", "z2", "t2", quarantined=True),
         node("c", "eu", "z3", "t3"), node("d", "eu", "z4", "t4")],
        PlacementRequest(3),
        PlacementConstraint.READY_NODES,
        "readyNodes: need 3 ready, unquarantined nodes, the pool has 2 (4 nodes: 1 not ready, 1 quarantined)",
        (3, 2), id="not-ready-and-quarantined-excluded",
    ),
    pytest.param(
        [node("a", "eu", "z1", "a"), node("b", "eu", "z1", "b"), node("c-2", "eu", "z2", "c"),
         node("c-3", "eu", "z3", "c")],
        PlacementRequest(3),
        PlacementConstraint.TRUST_DOMAINS_AND_ZONES,
        "distinctTrustDomains with maxSharesPerZone=1: at most 2 parties fit in distinct trust domains with "
        "at most 1 per zone among ready, unquarantined nodes in any region, need 3",
        (3, 2), id="trust-domains-and-zones-together",
    ),
]


@pytest.mark.parametrize(("nodes", "request_", "constraint", "message", "numbers"), INFEASIBLE)
def test_infeasible_requests_name_the_constraint_and_the_numbers(
    nodes: list[NodeCandidate], request_: PlacementRequest, constraint: PlacementConstraint, message: str,
    numbers: tuple[int, int] | None,
) -> None:
    result = infeasible(nodes, request_)
    assert result.constraint is constraint
    assert result.message == message
    assert str(result) == message
    if numbers is not None:
        assert (result.needed, result.available) == numbers
    assert result.reason == constraint.reason


def test_zone_capacity_message_counts_small_zones() -> None:
    nodes = [node("a", "eu", "z1", "a"), node("b", "eu", "z2", "b"), node("c", "eu", "z2", "c"),
             node("d", "eu", "z3", "d"), node("e", "eu", "z3", "e"), node("f", "eu", "z3", "f")]
    assert placed(nodes, PlacementRequest(5, max_shares_per_zone=2, distinct_trust_domains=False)).score == (
        PlacementScore(1, 2, 0, 0))
    result = infeasible(nodes, PlacementRequest(6, max_shares_per_zone=2, distinct_trust_domains=False))
    assert result.constraint is PlacementConstraint.MAX_SHARES_PER_ZONE
    assert result.message == (
        "maxSharesPerZone=2: the 3 zones with ready, unquarantined nodes in any region hold at most 5 parties "
        "[z1: 1, z2: 2, z3: 2], need 6"
    )
    assert (result.needed, result.available) == (6, 5)


def test_reasons_are_camel_case_for_events_and_metrics() -> None:
    assert {c.reason for c in PlacementConstraint} == {
        "NotEnoughReadyNodes", "LocalityUnsatisfiable", "NotEnoughGPUNodes", "NotEnoughTrustDomains",
        "NotEnoughZones", "TrustDomainsAndZonesConflict"}


# ----------------------------------------------------------------- input checks


def test_duplicate_node_names_are_rejected() -> None:
    with pytest.raises(PlacementInputError, match=r"repeated: \[a\]"):
        place_parties([node("a", "eu", "z1", "t1"), node("a", "eu", "z2", "t2")], PlacementRequest(1))


@pytest.mark.parametrize(("make", "text"), [
    (lambda: PlacementRequest(0), "at least one party"),
    (lambda: PlacementRequest(2, max_shares_per_zone=0), "maxSharesPerZone=0"),
    (lambda: InputLocality("bank-a", frozenset()), "locality.regions is empty"),
    (lambda: node("", "eu", "z", "t"), "empty name"),
    (lambda: node("a", "eu", "z", "t", load=-1), "must both be >= 0"),
])
def test_bad_inputs_raise_precise_errors(make: object, text: str) -> None:
    with pytest.raises(PlacementInputError, match=text):
        make()  # type: ignore[operator]


def test_check_placement_names_each_broken_rule() -> None:
    chosen = [node("a", "us", "z1", "t1", ready=False), node("b", "us", "z1", "t1", quarantined=True)]
    problems = check_placement(chosen, PlacementRequest(3, (only("eu"),), require_gpu=True))
    text = "\n".join(problems)
    for part in ("parties: 2 nodes chosen, need 3", "a is not ready", "b is quarantined", "a is in us, allowed [eu]",
                 "requireGPU: a has no GPU", "distinctTrustDomains: a trust domain holds 2 parties",
                 "maxSharesPerZone=1: a zone holds 2 parties"):
        assert part in text


# ----------------------------------------------------------------- scale


def test_ten_thousand_nodes_with_a_known_optimum() -> None:
    rng = random.Random(11)
    nodes = [node(f"n{i:05d}", f"r{i % 7}", f"r{i % 7}-{rng.randrange(3)}", f"org{rng.randrange(40)}",
                  load=rng.randrange(1, 9), gpus=rng.randrange(2)) for i in range(10000)]
    # 16 idle nodes, each alone in its trust domain and zone: the only load-0 placement.
    idle = [node(f"idle-{k:02d}", "r-idle", f"idle-zone-{k}", f"idle-org-{k}") for k in range(16)]
    result = placed(nodes + idle, PlacementRequest(16))
    assert result.nodes == tuple(n.name for n in idle)
    assert result.score == PlacementScore(1, 1, 0, 0)
