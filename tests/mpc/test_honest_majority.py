"""The dealer-free honest-majority provider: PRSS sharings, verified triples, bits, masks, whole programs."""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.field import MersenneField61
from pqmpc_node.mpc.honest_majority import HonestMajorityProvider, TooFewPartiesError
from pqmpc_node.mpc.programs import compile_program
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.prss import LiveSetMismatchError, PrssKeys, agree_keys, unqualified_sets, vanishing_weight
from pqmpc_node.mpc.sharing import InconsistentSharesError, ShamirScheme
from hm_run import run_hm, run_program_hm

F = MersenneField61()
SIZES = [(3, 1), (5, 2), (7, 3)]


def agreed(n: int, t: int) -> list[PrssKeys]:
    hub = InProcessHub(n)

    async def all_keys() -> list[PrssKeys]:
        return list(await asyncio.gather(*(agree_keys(hub.channel(i), party=i, t=t, live=range(n), session="s")
                                           for i in range(n))))

    return asyncio.run(all_keys())


# -- PRSS ------------------------------------------------------------------------------


def test_vanishing_polynomial() -> None:
    for subset in unqualified_sets(5, 2):
        for party in range(5):
            w = vanishing_weight(subset, party)
            assert (w == 0) == (party in subset)
    assert len(unqualified_sets(7, 3)) == 35


@pytest.mark.parametrize(("n", "t"), SIZES)
def test_prss_sharings_are_consistent_and_uniform(n: int, t: int) -> None:
    keys = agreed(n, t)
    assert [len(k.keys) for k in keys] == [math.comb(n - 1, t)] * n  # a key per set the party is outside of
    count = 20_000
    shares = {i: keys[i].random(F, (count,)) for i in range(n)}
    values = ShamirScheme(n, t).reconstruct(F, shares, check=True)  # all n shares on one degree-t polynomial
    zeros = {i: keys[i].zero(F, (count,)) for i in range(n)}
    assert not ShamirScheme(n, 2 * t).reconstruct(F, zeros, check=True).any()  # degree 2t, constant 0
    if n > 2 * t + 1:
        with pytest.raises(InconsistentSharesError):
            ShamirScheme(n, t).reconstruct(F, {i: zeros[i][:8] for i in range(n)}, check=True)  # not degree t
    # Uniform over F_p: each of the top 4 bits of the 61-bit values equally likely (chi-square, 15 dof).
    counts = np.bincount((values >> np.uint64(57)).astype(np.int64), minlength=16)
    expected = count / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45.0  # p < 1e-4 under uniformity
    assert len(set(values.tolist())) == count  # no repeats among 20k draws from 2^61
    again = ShamirScheme(n, t).reconstruct(F, {i: keys[i].random(F, (count,)) for i in range(n)})
    assert not (again == values).any()  # fresh every call


def test_t_parties_cannot_predict_the_value() -> None:
    """A coalition of t parties misses exactly the key of its own set: changing that key alone
    leaves every coalition share as it was and changes the shared value."""
    n, t = 5, 2
    coalition = (0, 1)
    keys = agreed(n, t)
    assert all(coalition not in keys[i].keys for i in coalition)
    assert all(coalition in keys[i].keys for i in range(n) if i not in coalition)
    other = {i: PrssKeys(i, n, t, {s: (bytes(32) if s == coalition else k) for s, k in keys[i].keys.items()})
             for i in range(n)}
    fresh = {i: PrssKeys(i, n, t, dict(keys[i].keys)) for i in range(n)}
    before = {i: fresh[i].random(F, (64,)) for i in range(n)}
    after = {i: other[i].random(F, (64,)) for i in range(n)}
    assert all((before[i] == after[i]).all() for i in coalition)
    scheme = ShamirScheme(n, t)
    assert not (scheme.reconstruct(F, before, check=True) == scheme.reconstruct(F, after, check=True)).any()


def test_inconsistent_leader_is_caught_at_key_confirmation() -> None:
    n, t = 5, 2
    hub = InProcessHub(n)

    class LyingLeader:
        """Party 0 leads every set without it and sends party 2 other keys than the rest."""

        def __init__(self) -> None:
            self.inner = hub.channel(0)
            self.party, self.n = 0, n

        async def send_many(self, tag: str, payloads: Any) -> None:
            if tag.endswith("prss-keys"):
                payloads = {p: (v[:8] + bytes(len(v) - 8) if p == 2 else v) for p, v in payloads.items()}  # keys only
            await self.inner.send_many(tag, payloads)

        async def receive_many(self, tag: str, peers: Any) -> Any:
            return await self.inner.receive_many(tag, peers)

    async def go() -> list[Any]:
        parties: list[Any] = [LyingLeader(), *(hub.channel(i) for i in range(1, n))]
        return list(await asyncio.gather(*(agree_keys(c, party=i, t=t, live=range(n), session="s")
                                           for i, c in enumerate(parties)), return_exceptions=True))

    results = asyncio.run(go())
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert 2 in failed and all("prss-key-confirmation" in str(results[i]) for i in failed)


def test_parties_that_disagree_on_who_is_live_stop_without_blame() -> None:
    """A party silent toward some parties only can split the survivors' views of the live set;
    the key messages carry each sender's view, so the attempt stops and nobody honest is blamed."""
    hub = InProcessHub(4)

    async def go() -> list[Any]:
        views = {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2, 3]}  # party 2 never saw party 3 go
        tasks = [asyncio.wait_for(agree_keys(hub.channel(i), party=i, t=1, live=views[i], session="s"), 5.0)
                 for i in views]
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(go())
    for i in (0, 1):
        assert isinstance(results[i], LiveSetMismatchError), results[i]
        assert not isinstance(results[i], BlamedCheckError)
        assert "[0, 1, 2, 3]" in str(results[i]) and "nobody is blamed" in str(results[i])


# -- material ---------------------------------------------------------------------------


def gather_material(n: int, t: int, security: str, make: Any) -> list[Any]:
    config = EngineConfig(n, threshold=t, sharing="shamir", security=security)  # type: ignore[arg-type]
    return asyncio.run(run_hm(config, make))


def open_all(scheme: ShamirScheme, parts: list[Any]) -> Any:
    return scheme.reconstruct(F, dict(enumerate(parts)), check=True)


@pytest.mark.parametrize(("n", "t"), SIZES)
@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_triples_multiply_and_macs_hold(n: int, t: int, security: str) -> None:
    async def make(ctx: MPCContext) -> Any:
        tr = await ctx.triples((500,))
        return tr, ctx.mac_key

    out = gather_material(n, t, security, make)
    scheme = ShamirScheme(n, t)
    a = open_all(scheme, [tr.a.value for tr, _ in out])
    b = open_all(scheme, [tr.b.value for tr, _ in out])
    c = open_all(scheme, [tr.c.value for tr, _ in out])
    assert (F.mul(a, b) == c).all()
    assert len(set(a.tolist())) == 500
    if security == "malicious":
        alpha = open_all(scheme, [k for _, k in out])
        for name in ("a", "b", "c"):
            value = open_all(scheme, [getattr(tr, name).value for tr, _ in out])
            mac = open_all(scheme, [getattr(tr, name).mac for tr, _ in out])
            assert (F.mul(value, alpha) == mac).all(), name


def test_matrix_triples_multiply() -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.matrix_triple((4, 3), (3, 5)), ctx.mac_key

    out = gather_material(3, 1, "malicious", make)
    scheme = ShamirScheme(3, 1)
    a = open_all(scheme, [tr.a.value for tr, _ in out])
    b = open_all(scheme, [tr.b.value for tr, _ in out])
    c = open_all(scheme, [tr.c.value for tr, _ in out])
    assert (F.matmul(a, b) == c).all()
    alpha = open_all(scheme, [k for _, k in out])
    assert (F.mul(c, alpha) == open_all(scheme, [tr.c.mac for tr, _ in out])).all()


@pytest.mark.parametrize(("n", "t"), SIZES)
@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_direct_products_are_right_and_pass_the_product_check(n: int, t: int, security: str) -> None:
    """The engine's multiplications with this provider (no triples): elementwise and matrix
    products equal the products of the opened operands, their MACs hold, and the product
    check run by ``check_macs`` passes over all of them."""
    from pqmpc_node.mpc import protocols as P
    from pqmpc_node.mpc.mac import check_macs

    async def make(ctx: MPCContext) -> Any:
        provider = ctx.provider
        assert isinstance(provider, HonestMajorityProvider)
        x, y = await provider.random_authenticated((300,)), await provider.random_authenticated((300,))
        (z,) = await P.multiply_many(ctx, [(x, y)])
        a, b = await provider.random_authenticated((4, 3)), await provider.random_authenticated((3, 2))
        c = await P.matmul(ctx, a, b)
        pending = provider.stats.products
        await check_macs(ctx, "end")
        return x, y, z, a, b, c, ctx.mac_key, pending, provider.stats.checked_products

    out = gather_material(n, t, security, make)
    scheme = ShamirScheme(n, t)
    x, y, z, a, b, c = (open_all(scheme, [o[i].value for o in out]) for i in range(6))
    assert (F.mul(x, y) == z).all() and len(set(z.tolist())) == 300
    assert (F.matmul(a, b) == c).all()
    if security == "malicious":
        alpha = open_all(scheme, [o[6] for o in out])
        for i in range(6):
            assert (F.mul(open_all(scheme, [o[i].value for o in out]), alpha)
                    == open_all(scheme, [o[i].mac for o in out])).all(), i
        # every product and every random value's MAC (x, y, a, b) checked
        assert {o[7] for o in out} == {300 + 8} and {o[8] for o in out} == {300 + 8 + 600 + 12 + 6}


def test_unchecked_products_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_UNVERIFIED unchecked elements the product check runs at once (memory bound)."""
    from pqmpc_node.mpc import honest_majority
    from pqmpc_node.mpc import protocols as P

    monkeypatch.setattr(honest_majority, "MAX_UNVERIFIED", 100)

    async def make(ctx: MPCContext) -> Any:
        provider = ctx.provider
        assert isinstance(provider, HonestMajorityProvider)
        x = await provider.random_authenticated((64,))
        for _ in range(3):
            x = await P.multiply(ctx, x, x)
        return provider.stats.checked_products

    # kept: x (64), then 64 per product: 128 > 100 checks at the first and the third product
    assert {n for n in gather_material(3, 1, "malicious", make)} == {256}


@pytest.mark.parametrize(("n", "t"), [(3, 1), (5, 2)])
def test_bits_are_bits(n: int, t: int) -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.edabits((40,)), ctx.mac_key

    out = gather_material(n, t, "malicious", make)
    scheme = ShamirScheme(n, t)
    bits = open_all(scheme, [b.value for b, _ in out])
    assert bits.shape == (61, 40)
    assert set(bits.reshape(-1).tolist()) == {0, 1}
    ones = int(bits.sum())
    assert abs(ones - bits.size / 2) < 5 * math.sqrt(bits.size / 4)  # fair coins (5 sigma)
    alpha = open_all(scheme, [k for _, k in out])
    assert (F.mul(bits, alpha) == open_all(scheme, [b.mac for b, _ in out])).all()


def test_input_mask_opens_to_its_owner_only() -> None:
    async def make(ctx: MPCContext) -> Any:
        return await ctx.input_mask((6,), 1)

    out = gather_material(3, 1, "malicious", make)
    masks = [m.mask.value for m in out]
    assert out[0].clear is None and out[2].clear is None
    assert out[1].clear is not None
    assert (open_all(ShamirScheme(3, 1), masks) == out[1].clear).all()


def test_too_few_live_parties_refused() -> None:
    hub = InProcessHub(3)
    with pytest.raises(TooFewPartiesError, match="2t \\+ 1 = 3"):
        asyncio.run(HonestMajorityProvider.create(hub.channel(0), domain=F, scheme=ShamirScheme(3, 1), live=[0, 1],
                                                  session="s", authenticated=True))


# -- whole programs ---------------------------------------------------------------------


FIELDS = [{"name": "amount", "min": 0, "max": 1000, "decimals": 2}, {"name": "age", "min": 18, "max": 100}]
AGG = {"aggregate": [
    {"op": "count", "field": "amount"}, {"op": "sum", "field": "amount"}, {"op": "mean", "field": "amount"},
    {"op": "variance", "field": "amount"}, {"op": "min", "field": "age"}, {"op": "max", "field": "age"},
    {"op": "histogram", "field": "amount", "bins": [200, 500, 800]},  # valid amounts below and above the edges too
]}


@pytest.mark.parametrize(("n", "t", "security"), [(3, 1, "malicious"), (4, 1, "malicious"), (5, 2, "semi-honest")])
def test_aggregate_program_matches_plaintext(n: int, t: int, security: str) -> None:
    rng = np.random.default_rng(7)
    amount = np.round(rng.uniform(-50, 1050, 30), 2)
    age = rng.integers(10, 110, 30)
    config = EngineConfig(n, threshold=t, sharing="shamir", security=security)  # type: ignore[arg-type]
    plan = compile_program(AGG, FIELDS)
    got = run_program_hm(config, plan, {"amount": amount, "age": age})
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
    below, above = sum(1 for c in cents if c < 200), sum(1 for c in cents if c > 800)
    assert got["histogram(amount).below"] == [below] and got["histogram(amount).above"] == [above]
    assert below > 0 and above > 0 and sum(hist) + below + above == len(cents)
