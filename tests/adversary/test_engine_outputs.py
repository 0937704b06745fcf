"""Outputs are private to their recipients and verifiable by them (findings 4 and 5).

A node never sees an output it is not a recipient of: the only unmasked value any party
opens is the valid-row count (public by design); every other opening is masked by fresh
preprocessing. A recipient gets only the outputs the policy names for it, under keys
independent of any other recipient's, and refuses a result when any node forges its
share of the value, the key or the tag, or when too few nodes answered.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import decoded, output_units, plaintext, run  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.outputs import DeliveredShare, OutputForgeryError, verify_delivered  # noqa: E402

CONFIGS = {
    "additive": EngineConfig(3, security="malicious"),
    "shamir": EngineConfig(4, threshold=1, sharing="shamir", security="malicious"),
    "semi-honest": EngineConfig(3),
}
UNMASKED = {"valid-count"}  # every other label opens a value hidden by a fresh random mask


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_no_party_opens_an_output(kind: str) -> None:
    config = CONFIGS[kind]
    r = run(config)
    want = plaintext()
    ctx = r.contexts[0]
    encoded = {name: output_units(name) for name in ("sum(amount)", "mean(amount)", "max(amount)")}
    for p, opened in r.opened.items():
        labels = {label for label, _ in opened}
        assert "outputs" not in labels and labels & UNMASKED == UNMASKED, labels
        for label, values in opened:
            if label in UNMASKED:
                assert ctx.domain.to_signed(values).tolist() == [want["count(amount)"]]
                continue
            flat = set(int(v) for v in np.asarray(values).reshape(-1))
            assert not flat & set(encoded.values()), f"party {p} opened an output in a {label!r} round"


def test_recipients_get_only_their_outputs_under_independent_keys() -> None:
    r = run(CONFIGS["additive"])
    outcomes = r.outcomes
    for o in outcomes.values():
        assert set(o.delivered) == {"auditor", "analyst"}  # type: ignore[union-attr]
        assert set(o.delivered["analyst"]) == {"sum(amount)"}  # type: ignore[union-attr]
        assert "count(amount)" not in o.delivered["auditor"]  # public, travels in the clear part  # type: ignore[union-attr]
    ctx = r.contexts[0]
    d, s = ctx.domain, ctx.scheme
    key_a = s.reconstruct(d, {p: o.delivered["auditor"]["sum(amount)"].key for p, o in outcomes.items()})  # type: ignore[union-attr,arg-type]
    key_b = s.reconstruct(d, {p: o.delivered["analyst"]["sum(amount)"].key for p, o in outcomes.items()})  # type: ignore[union-attr,arg-type]
    assert int(key_a[0]) != int(key_b[0]), "two recipients share a MAC key: one could forge the other's result"


def _shares(kind: str, name: str = "sum(amount)") -> tuple[Any, dict[int, DeliveredShare]]:
    r = run(CONFIGS[kind])
    return r.contexts[0], {p: o.delivered["auditor"][name] for p, o in r.outcomes.items()}  # type: ignore[union-attr]


@pytest.mark.parametrize("part", ["value", "key", "tag"])
@pytest.mark.parametrize("kind", ["additive", "shamir"])
def test_forged_output_share_is_refused(kind: str, part: str) -> None:
    ctx, shares = _shares(kind)
    y = verify_delivered(ctx.domain, ctx.scheme, shares, authenticated=True)
    assert decoded("sum(amount)", y, ctx.domain) == plaintext()["sum(amount)"]
    forged = dict(shares)
    victim = forged[1]
    bumped = ctx.domain.add(getattr(victim, part), ctx.domain.asarray(np.ones(1, dtype=np.uint64)))
    forged[1] = replace(victim, **{part: bumped})
    if kind == "shamir":
        # Let the forger's share pass the polynomial check: the MAC must still catch it.
        forged = {p: forged[p] for p in (0, 1)}
    with pytest.raises(OutputForgeryError):
        verify_delivered(ctx.domain, ctx.scheme, forged, authenticated=True)


def test_forger_that_also_adjusts_key_or_tag_linearly_is_still_refused() -> None:
    """Shifting y by e and the tag by k*e for a guessed key k fails unless k is the real key."""
    ctx, shares = _shares("additive")
    d = ctx.domain
    e = d.asarray(np.array([1 << 40], dtype=np.uint64))
    for guess in (0, 1, 12345):
        forged = dict(shares)
        forged[2] = replace(forged[2], value=d.add(forged[2].value, e),
                            tag=d.add(forged[2].tag, d.mul(e, d.asarray(np.array([guess], dtype=np.uint64)))))
        with pytest.raises(OutputForgeryError, match="MAC"):
            verify_delivered(d, ctx.scheme, forged, authenticated=True)


@pytest.mark.parametrize("kind", ["additive", "shamir"])
def test_too_few_answers_are_refused(kind: str) -> None:
    ctx, shares = _shares(kind)
    keep = 2 if kind == "additive" else 1  # additive needs all 3, Shamir t + 1 = 2
    with pytest.raises(OutputForgeryError, match="needed to verify"):
        verify_delivered(ctx.domain, ctx.scheme, {p: shares[p] for p in list(shares)[:keep]}, authenticated=True)


def test_missing_key_or_tag_in_a_malicious_session_is_refused() -> None:
    ctx, shares = _shares("additive")
    stripped = {**shares, 0: DeliveredShare(shares[0].value)}
    with pytest.raises(OutputForgeryError, match="no output key"):
        verify_delivered(ctx.domain, ctx.scheme, stripped, authenticated=True)


def test_shares_of_different_shapes_are_refused() -> None:
    """A node whose value, key and tag carry an extra axis must not broadcast its way through."""
    ctx, shares = _shares("additive")
    d = ctx.domain
    forged = dict(shares)
    s0 = forged[0]
    forged[0] = DeliveredShare(d.xp.stack([s0.value] * 3), d.xp.stack([s0.key] * 3), d.xp.stack([s0.tag] * 3))
    with pytest.raises(OutputForgeryError, match="different shapes"):
        verify_delivered(d, ctx.scheme, forged, authenticated=True)
