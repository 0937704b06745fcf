"""The dealer-free OT provider for additive sessions: triples, MACs, bits, masks, whole programs.

Every test runs real parties over an in-process hub: base OTs from ML-KEM-768, OT
extension, Gilboa products and (malicious) MASCOT MACs and sacrifice; nothing is dealt.
Semi-honest additive sessions compute in Z_2^64, malicious ones in F_p (p = 2^61 - 1).
"""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from hm_run import run_hm, run_program_hm
from pqmpc_node.mpc.channel import InProcessHub, LostPartyError
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Domain
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.ot.provider import TAU, OtProvider
from pqmpc_node.mpc.programs import compile_program
from pqmpc_node.mpc.sharing import AdditiveScheme

CASES = [(2, "semi-honest"), (3, "semi-honest"), (2, "malicious"), (3, "malicious")]


def gather(n: int, security: str, make: Any) -> list[Any]:
    config = EngineConfig(n, sharing="additive", security=security)  # type: ignore[arg-type]
    return asyncio.run(run_hm(config, make))


def total(d: Domain, parts: list[Any]) -> Any:
    acc = parts[0]
    for p in parts[1:]:
        acc = d.add(acc, p)
    return acc


@pytest.mark.parametrize(("n", "security"), CASES)
def test_triples_multiply_are_uniform_and_macs_hold(n: int, security: str) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.triples((4000,)), ctx.mac_key, ctx.domain, ctx.provider

    out = gather(n, security, make)
    d: Domain = out[0][2]
    a, b, c = (total(d, [getattr(tr, k).value for tr, *_ in out]) for k in ("a", "b", "c"))
    assert (d.mul(a, b) == c).all()
    assert len(set(a.tolist())) == 4000 and len(set(b.tolist())) == 4000
    # Uniform in the domain: the top 4 bits of a are balanced (chi-square, 15 dof, p < 1e-4).
    top = (a >> np.uint64(d.bits - 4)).astype(np.int64)
    counts = np.bincount(top, minlength=16)
    assert float(((counts - 250) ** 2 / 250).sum()) < 45.0
    # No party's share is the value (each share is masked by the others' randomness).
    assert all(not (tr.a.value == a).any() for tr, *_ in out)
    stats = out[0][3].stats
    assert stats.triples >= 4000 and stats.base_ots == 2 * 128 * (n - 1)
    if security == "malicious":
        alpha = total(d, [k for _, k, *_ in out])
        for k in ("a", "b", "c"):
            value = total(d, [getattr(tr, k).value for tr, *_ in out])
            mac = total(d, [getattr(tr, k).mac for tr, *_ in out])
            assert (d.mul(value, alpha) == mac).all(), k
        assert stats.extended_ots >= 4000 * TAU * 61 * (n - 1)
    else:
        assert out[0][1] is None and out[0][0].a.mac is None


@pytest.mark.parametrize(("n", "security"), [(2, "semi-honest"), (2, "malicious"), (3, "malicious")])
def test_matrix_triples_multiply(n: int, security: str) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.matrix_triple((4, 3), (3, 5)), ctx.mac_key, ctx.domain

    out = gather(n, security, make)
    d = out[0][2]
    a, b, c = (total(d, [getattr(tr, k).value for tr, *_ in out]) for k in ("a", "b", "c"))
    assert c.shape == (4, 5) and (d.matmul(a, b) == c).all()
    if security == "malicious":
        alpha = total(d, [k for _, k, _ in out])
        assert (d.mul(c, alpha) == total(d, [tr.c.mac for tr, _, _ in out])).all()


@pytest.mark.parametrize(("n", "security"), CASES)
def test_bits_are_fair_bits(n: int, security: str) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.edabits((40,)), ctx.mac_key, ctx.domain

    out = gather(n, security, make)
    d = out[0][2]
    bits = total(d, [b.value for b, _, _ in out])
    assert bits.shape == (d.bits, 40)
    assert set(bits.reshape(-1).tolist()) == {0, 1}
    assert abs(int(bits.sum()) - bits.size / 2) < 5 * math.sqrt(bits.size / 4)  # fair coins (5 sigma)
    if security == "malicious":
        alpha = total(d, [k for _, k, _ in out])
        assert (d.mul(bits, alpha) == total(d, [b.mac for b, _, _ in out])).all()


@pytest.mark.parametrize("n", [2, 3])
def test_truncation_pairs_are_consistent(n: int) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.truncation_pairs((300,), 16), ctx.domain

    out = gather(n, "semi-honest", make)
    d = out[0][1]
    r, msb, trunc = (total(d, [getattr(p, k).value for p, _ in out]) for k in ("r", "r_msb", "r_trunc"))
    assert (msb == r >> np.uint64(63)).all()
    assert (trunc == (r & np.uint64((1 << 63) - 1)) >> np.uint64(16)).all()
    assert len(set(r.tolist())) == 300


@pytest.mark.parametrize(("n", "security"), CASES)
def test_input_mask_opens_to_its_owner_only(n: int, security: str) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.input_mask((6,), 1), ctx.domain

    out = gather(n, security, make)
    d = out[0][1]
    assert all(m.clear is None for i, (m, _) in enumerate(out) if i != 1)
    clear = out[1][0].clear
    assert clear is not None and (total(d, [m.mask.value for m, _ in out]) == clear).all()


def test_a_missing_party_is_refused_before_any_message() -> None:
    hub = InProcessHub(3)
    with pytest.raises(LostPartyError, match="needs every party"):
        asyncio.run(OtProvider.create(hub.channel(0), domain=MersenneField61(), scheme=AdditiveScheme(3),
                                      live=[0, 1], session="s", authenticated=True))


def test_nothing_secret_in_repr() -> None:
    async def make(ctx: MPCContext) -> Any:
        return repr(ctx.provider), ctx.mac_key

    out = gather(2, "malicious", make)
    text, alpha = out[0]
    assert str(int(alpha[0])) not in text and "Delta" not in text and "seed" not in text.lower()


FIELDS = [{"name": "amount", "min": 0, "max": 1000, "decimals": 2}, {"name": "age", "min": 18, "max": 100}]
AGG = {"aggregate": [
    {"op": "count", "field": "amount"}, {"op": "sum", "field": "amount"}, {"op": "mean", "field": "amount"},
    {"op": "variance", "field": "amount"}, {"op": "min", "field": "age"}, {"op": "max", "field": "age"},
    {"op": "histogram", "field": "amount", "bins": [200, 500, 800]},
]}


@pytest.mark.parametrize(("n", "security"), CASES)
def test_aggregate_program_matches_plaintext(n: int, security: str) -> None:
    rng = np.random.default_rng(11)
    amount = np.round(rng.uniform(-50, 1050, 24), 2)
    age = rng.integers(10, 110, 24)
    config = EngineConfig(n, sharing="additive", security=security)  # type: ignore[arg-type]
    got = run_program_hm(config, compile_program(AGG, FIELDS), {"amount": amount, "age": age})
    ok = (amount >= 0) & (amount <= 1000) & (age >= 18) & (age <= 100)
    cents = [Fraction(round(v * 100), 100) for v in amount[ok]]
    assert got["valid_rows"] == int(ok.sum())
    assert got["sum(amount)"] == [sum(cents)]
    assert got["min(age)"] == [int(age[ok].min())] and got["max(age)"] == [int(age[ok].max())]
    mean = sum(cents) / len(cents)
    assert got["variance(amount)"] == [sum((c - mean) ** 2 for c in cents) / len(cents)]
    hist = [sum(1 for c in cents if lo <= c < hi) for lo, hi in ((200, 500), (500, 800))]
    hist[-1] += sum(1 for c in cents if c == 800)
    assert got["histogram(amount)"] == hist
