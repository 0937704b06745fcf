"""Openings are MAC-checked before anything unmasked is opened or delivered (finding 1).

A cheating party adds an error to its share of Beaver openings (``e = x - a``): the product
becomes ``xy + D*y``, and without the order fixed here an unmasked opening after it (the
valid-row count, or an output opened to every node) would read a function of the rows.
The tests drive that party through the real engine (``execute``, the node's own runner):
every honest party aborts with a :class:`MacCheckError` at the check that precedes the
first unmasked opening, and never sends that opening or any output share.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import add_to_first, decoded, label_of, plaintext, run  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.outputs import verify_delivered  # noqa: E402

MALICIOUS = {
    "additive": EngineConfig(3, security="malicious"),
    "shamir": EngineConfig(3, threshold=1, sharing="shamir", security="malicious"),
}


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_error_on_a_final_masking_product_aborts_before_any_output(kind: str) -> None:
    """The review's attack: D on a Beaver opening of the products with the validity bit, after the count."""
    r = run(MALICIOUS[kind], cheater=2, tamper=add_to_first("beaver", 1, after="valid-count"))
    for p in r.honest(2):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError), err
        # Shamir with all n = 2t + 1 shares sees the bad share off the polynomial at once.
        assert err.check in ("before-outputs", "opening-consistency"), err
        assert not any(label_of(t) == "output-keys" for t in r.sent[p]), "an honest party started delivering outputs"
        assert [label for label, _ in r.opened[p] if label == "outputs"] == []


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_error_in_the_range_checks_aborts_before_the_count_opens(kind: str) -> None:
    """D on the range checks' Beaver openings would turn the valid count into a per-row oracle."""
    r = run(MALICIOUS[kind], cheater=1, tamper=add_to_first("beaver", 1 << 20))
    for p in r.honest(1):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError), err
        assert err.check in ("before-count", "before-input-check", "opening-consistency"), err
        assert not any(label_of(t) == "valid-count" for t in r.sent[p]), "the count was opened before the check"


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_error_on_the_count_opening_is_caught_before_outputs(kind: str) -> None:
    r = run(MALICIOUS[kind], cheater=0, tamper=add_to_first("valid-count", 1))
    for p in r.honest(0):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError) and err.check in ("before-outputs", "opening-consistency"), err
        assert not any(label_of(t) == "output-keys" for t in r.sent[p])


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_error_on_the_output_key_opening_is_caught_before_delivery(kind: str) -> None:
    r = run(MALICIOUS[kind], cheater=2, tamper=add_to_first("output-keys", 5))
    for p in r.honest(2):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError) and err.check in ("output-keys", "opening-consistency"), err


@pytest.mark.parametrize("kind", [*MALICIOUS, "semi-honest-additive", "semi-honest-shamir"])
def test_honest_run_delivers_correct_verified_outputs(kind: str) -> None:
    config = MALICIOUS.get(kind) or (EngineConfig(3) if kind == "semi-honest-additive"
                                     else EngineConfig(3, threshold=1, sharing="shamir"))
    r = run(config)
    want = plaintext()
    ctx = r.contexts[0]
    outcomes = {p: o for p, o in r.outcomes.items()}
    assert all(not isinstance(o, BaseException) for o in outcomes.values()), outcomes
    for name in ("sum(amount)", "mean(amount)", "max(amount)"):
        y = verify_delivered(ctx.domain, ctx.scheme, {p: o.delivered["auditor"][name] for p, o in outcomes.items()},  # type: ignore[union-attr]
                             authenticated=config.security == "malicious")
        assert decoded(name, y, ctx.domain) == want[name]  # exact
    hist = verify_delivered(ctx.domain, ctx.scheme, {p: o.delivered["auditor"]["histogram(amount)"]  # type: ignore[union-attr]
                                                     for p, o in outcomes.items()}, authenticated=config.security == "malicious")
    assert ctx.domain.to_signed(hist).tolist() == want["histogram(amount)"]
    assert outcomes[0].result.public == {"count(amount)": want["count(amount)"]}  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", list(MALICIOUS))
def test_error_on_the_variance_limb_split_is_caught_before_outputs(kind: str) -> None:
    """D on the opening of an exact limb split (``c = y + r``) would shift a limb, and the variance with it."""
    r = run(MALICIOUS[kind], cheater=1, tamper=add_to_first("split", 1 << 7))
    for p in r.honest(1):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError) and err.check in ("before-outputs", "opening-consistency"), err
        assert not any(label_of(t) == "output-keys" for t in r.sent[p]), "an honest party started delivering outputs"
