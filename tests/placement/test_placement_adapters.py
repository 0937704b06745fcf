"""Building placement inputs from the API objects: NodePool status nodes and MPCSession specs.

Covers ``candidates_from_pool_status`` (GPUs from the pool spec's groups, loads,
terminating and missing fields, malformed entries) and ``placement_request_from_spec``
(the CRD's defaults, locality rules, and precise errors for bad fields).
"""

from __future__ import annotations

from typing import Any

import pytest

from pqmpc_operator.model import GroupSpec, SpecError
from pqmpc_operator.placement import (
    InputLocality,
    NodeCandidate,
    NodeName,
    Placement,
    PlacementInputError,
    PlacementRequest,
    candidates_from_pool_status,
    place_parties,
    placement_request_from_spec,
)

GROUPS = (
    GroupSpec(name="bank-a-eu", replicas=2, region="eu-west", zone="eu-west-1a", trust_domain="bank-a", gpus=1),
    GroupSpec(name="bank-b-eu", replicas=1, region="eu-west", zone="eu-west-1b", trust_domain="bank-b"),
)

STATUS_NODES: list[dict[str, Any]] = [
    {"name": "banks-bank-a-eu-0", "group": "bank-a-eu", "region": "eu-west", "zone": "eu-west-1a",
     "trustDomain": "bank-a", "ready": True, "phase": "Running", "kemEpoch": 3},
    {"name": "banks-bank-a-eu-1", "group": "bank-a-eu", "region": "eu-west", "zone": "eu-west-1a",
     "trustDomain": "bank-a", "ready": True, "phase": "Terminating"},
    {"name": "banks-bank-b-eu-0", "group": "bank-b-eu", "region": "eu-west", "zone": "eu-west-1b",
     "trustDomain": "bank-b", "ready": True, "quarantined": True},
    {"name": "banks-old-0", "group": "old", "region": "eu-west", "zone": "eu-west-1c", "trustDomain": "bank-c"},
]


def test_candidates_take_gpus_from_the_groups_and_loads_from_the_caller() -> None:
    nodes = candidates_from_pool_status(STATUS_NODES, GROUPS, {"banks-bank-a-eu-0": 4})
    assert nodes[0] == NodeCandidate(name=NodeName("banks-bank-a-eu-0"), group="bank-a-eu", region="eu-west",
                                     zone="eu-west-1a", trust_domain="bank-a", ready=True, quarantined=False,
                                     gpus=1, load=4)
    assert nodes[1].ready is False  # terminating
    assert nodes[2].quarantined is True and nodes[2].gpus == 0 and nodes[2].load == 0
    assert nodes[3].ready is False and nodes[3].gpus == 0  # group gone, no ready field


def test_candidates_reject_an_entry_without_a_name() -> None:
    with pytest.raises(PlacementInputError, match="no name"):
        candidates_from_pool_status([{"group": "bank-a-eu"}], GROUPS)


SPEC = {
    "poolRef": "banks",
    "parties": 3,
    "threshold": 1,
    "inputs": [
        {"owner": "bank-a", "fields": [{"name": "amount"}], "locality": {"regions": ["eu-west", "eu-central"]}},
        {"owner": "bank-b", "fields": [{"name": "amount"}]},
    ],
    "program": {"aggregate": [{"op": "sum", "field": "amount"}]},
}


def test_request_from_spec_applies_the_crd_defaults() -> None:
    assert placement_request_from_spec(SPEC) == PlacementRequest(
        parties=3,
        inputs=(InputLocality("bank-a", frozenset({"eu-west", "eu-central"})), InputLocality("bank-b", None)),
        distinct_trust_domains=True, max_shares_per_zone=1, require_gpu=False,
    )


def test_request_from_spec_reads_the_placement_rules() -> None:
    spec = {**SPEC, "placement": {"distinctTrustDomains": False, "maxSharesPerZone": 2, "requireGPU": True}}
    request = placement_request_from_spec(spec)
    assert (request.distinct_trust_domains, request.max_shares_per_zone, request.require_gpu) == (False, 2, True)


@pytest.mark.parametrize(("patch", "field"), [
    ({"parties": "three"}, "spec.parties"),
    ({"placement": {"maxSharesPerZone": 0}}, "spec.placement.maxSharesPerZone"),
    ({"inputs": [{"owner": "x", "locality": {"regions": []}}]}, r"spec.inputs\[0\].locality.regions"),
])
def test_request_from_spec_names_a_bad_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        placement_request_from_spec({**SPEC, **patch})


def test_status_and_spec_compose_into_a_placement() -> None:
    nodes = candidates_from_pool_status(STATUS_NODES[:1] + [{**STATUS_NODES[2], "quarantined": False}], GROUPS)
    result = place_parties(nodes, placement_request_from_spec({**SPEC, "parties": 2}))
    assert isinstance(result, Placement)
    assert result.to_status() == [
        {"party": 0, "node": "banks-bank-a-eu-0", "region": "eu-west", "zone": "eu-west-1a", "trustDomain": "bank-a"},
        {"party": 1, "node": "banks-bank-b-eu-0", "region": "eu-west", "zone": "eu-west-1b", "trustDomain": "bank-b"},
    ]
