"""The signed plan's preprocessing provider: ``ot`` (additive, any n >= 2) and ``prss`` (honest-majority
Shamir) are accepted where they can run and refused elsewhere; a dealer-free plan carries no dealer
seed; an ot plan signs, verifies and parses back as ot. Pure: no node process."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import replace
from typing import Any

import pytest

from pqmpc_node.client import Identity
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.plan import (
    BadPlanSignatureError,
    FieldDecl,
    MalformedPlanError,
    PlanInput,
    PlanOutput,
    PlanParty,
    SessionId,
    SessionPlan,
    sign_plan,
    verify_signed_plan,
)

SUITE = get_suite("pq-default")
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
OWNER, AUDITOR = Identity.generate("bank-a"), Identity.generate("auditor")
SIGNER = SUITE.signature.generate(os.urandom(32))


def plan(n: int = 2, *, sharing: str = "additive", threshold: int = 1, preprocessing: str = "ot",
         security: str = "malicious") -> SessionPlan:
    t0 = int(NOW.timestamp())
    parties = tuple(PlanParty(i, f"node-{i}", f"127.0.0.{10 + i}", f"node-{i}.svc", 9443, 8443, "ab" * 32, 1)
                    for i in range(n))
    return SessionPlan(
        session_id=SessionId("ns.ot.01234567"), pool="banks", namespace="ns", generation=1, issued_at=t0 - 1,
        not_after=t0 + 600, deadline=t0 + 600, parties=parties,
        sharing=sharing, threshold=threshold, security=security,  # type: ignore[arg-type]
        program={"aggregate": [{"op": "mean", "field": "amount"}]},
        inputs=(PlanInput(OWNER.name, OWNER.signing_key.public_key().public_bytes_raw(), "data",
                          (FieldDecl("amount", 0.0, 100.0),)),),
        outputs=(PlanOutput(AUDITOR.name, AUDITOR.kem.public_bytes, ("mean(amount)",)),),
        suite=SUITE.name, preprocessing=preprocessing,  # type: ignore[arg-type]
    )


def parsed(p: SessionPlan, **change: Any) -> SessionPlan:
    """``p`` through its wire form, with ``change`` applied to the raw JSON (what a node would parse)."""
    raw = json.loads(json.dumps(p.to_json()))
    raw.update(change)
    return SessionPlan.from_json(raw)


@pytest.mark.parametrize(("n", "security"), [(2, "malicious"), (3, "malicious"), (2, "semi-honest"), (5, "semi-honest")])
def test_an_ot_plan_for_an_additive_session_signs_verifies_and_parses_as_ot(n: int, security: str) -> None:
    p = plan(n, security=security)
    body = json.dumps(sign_plan(p, SIGNER).to_json()).encode()
    got = verify_signed_plan(body, signer_key=SIGNER.public_key(), pool="banks", node_id="node-1", now=NOW)
    assert got.preprocessing == "ot" and got.digest() == p.digest()
    assert got.to_json()["preprocessing"] == {"provider": "ot", "sealedSeeds": {}}


def test_the_provider_is_signed_like_every_term() -> None:
    ot, dealer = plan(), plan(preprocessing="dealer")
    assert ot.digest() != dealer.digest()  # a plan changed from ot to dealer no longer verifies
    body = sign_plan(ot, SIGNER).to_json()
    body["plan"]["preprocessing"]["provider"] = "dealer"
    with pytest.raises(BadPlanSignatureError, match="signature does not verify"):
        verify_signed_plan(json.dumps(body).encode(), signer_key=SIGNER.public_key(), pool="banks", node_id="node-0",
                           now=NOW)


@pytest.mark.parametrize(("n", "t"), [(3, 1), (5, 2), (4, 2)])
def test_ot_is_refused_for_shamir(n: int, t: int) -> None:
    with pytest.raises(MalformedPlanError, match=r"'ot' preprocessing needs additive sharing \(n-of-n\), got shamir"):
        parsed(plan(n, sharing="shamir", threshold=t))
    with pytest.raises(MalformedPlanError, match="needs additive sharing"):
        sign_plan(plan(n, sharing="shamir", threshold=t), SIGNER)  # nothing signs what no node would run


@pytest.mark.parametrize("provider", ["ot", "prss"])
def test_a_dealer_free_plan_carries_no_dealer_seed(provider: str) -> None:
    p = plan(3, sharing="shamir" if provider == "prss" else "additive")
    p = replace(p, preprocessing=provider)  # type: ignore[arg-type]
    assert parsed(p).preprocessing == provider
    with pytest.raises(MalformedPlanError, match=f"a dealer-free \\('{provider}'\\) plan carries no dealer seeds"):
        parsed(p, preprocessing={"provider": provider, "sealedSeeds": {"node-0": "AAAA"}})
    # the dealer's own plans may still carry the (compatibility) seeds field
    assert parsed(replace(p, preprocessing="dealer"),
                  preprocessing={"provider": "dealer", "sealedSeeds": {"node-0": "AAAA"}}).sealed_dealer_seeds


def test_an_unknown_provider_is_refused_with_the_known_ones() -> None:
    with pytest.raises(MalformedPlanError, match=r"one of \['dealer', 'prss', 'ot'\], got 'spdz'"):
        parsed(plan(), preprocessing={"provider": "spdz", "sealedSeeds": {}})


def test_a_plan_without_a_provider_is_the_dealer() -> None:
    raw = plan().to_json()
    del raw["preprocessing"]
    assert SessionPlan.from_json(raw).preprocessing == "dealer"
