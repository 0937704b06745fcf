"""Every protocol against plaintext on random inputs (hypothesis), negatives and edge values
included, for additive ring, additive field with MACs and Shamir sharings, 2 to 7 parties;
fixed-point error within the stated bounds; Shamir sessions with parties missing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqmpc_local.mpc_simulation import make_contexts, run_local
from pqmpc_node.mpc import protocols as P
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.mac import check_macs

CONFIGS = {
    "ring-2": EngineConfig(2),
    "ring-3": EngineConfig(3),
    "ring-7": EngineConfig(7),
    "field-mal-3": EngineConfig(3, security="malicious"),
    "shamir-5-2": EngineConfig(5, threshold=2, sharing="shamir"),
    "shamir-mal-3-1": EngineConfig(3, threshold=1, sharing="shamir", security="malicious"),
}
REALS = st.floats(-1000, 1000, allow_nan=False).map(lambda v: round(v, 3))
VECS = st.lists(REALS | st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-5, -1e-5, 999.999, -999.999]), min_size=1, max_size=12)
SETTINGS = settings(max_examples=25, deadline=None)
ULP = 2.0**-16


def run(config: EngineConfig, inputs: list[np.ndarray[Any, Any]], body: Callable[..., Awaitable[Any]], *, live: list[int] | None = None) -> list[Any]:
    """Share ``inputs`` through the dealer, run ``body(ctx, *shared)``, open its results."""
    contexts, dealer = make_contexts(config, seed=b"protocol-tests-seed-0123456789ab", live=live)
    domain, fx = contexts[0].domain, contexts[0].fixed
    encoded = [fx.encode(v, domain) for v in inputs]

    async def program(ctx: MPCContext) -> list[Any]:
        shared = [dealer.share_input(ctx.party, e, f"in{i}") for i, e in enumerate(encoded)]
        outs = await body(ctx, *shared)
        opened = await ctx.open(outs, "result")
        await check_macs(ctx)
        return opened

    results = asyncio.run(run_local(contexts, program))
    for other in results[1:]:
        assert all(bool((a == b).all()) for a, b in zip(results[0], other, strict=True))
    return [domain.to_signed(v) for v in results[0]]


def decode(values: Any) -> np.ndarray[Any, Any]:
    return np.asarray(values, dtype=np.float64) * ULP


@pytest.mark.parametrize("name", list(CONFIGS))
@SETTINGS
@given(st.data())
def test_add_mul_and_public_scalars(name: str, data: st.DataObject) -> None:
    a = np.array(data.draw(VECS))
    b = np.array(data.draw(st.lists(REALS, min_size=len(a), max_size=len(a))))

    async def body(ctx: MPCContext, x: Any, y: Any) -> list[Any]:
        prod = await P.fx_multiply(ctx, x, y)
        lin = ctx.add_public(ctx.sub(ctx.mul_public(x, ctx.domain.scalar(3)), y), ctx.encode_fixed([2.5]))
        return [prod, lin]

    prod, lin = run(CONFIGS[name], [a, b], body)
    ea, eb = np.rint(a / ULP) * ULP, np.rint(b / ULP) * ULP
    # truncation error <= 1.5 ulp on the product of the encodings
    assert np.all(np.abs(decode(prod) - ea * eb) <= 1.5 * ULP + 1e-9)
    assert np.allclose(decode(lin), 3 * ea - eb + 2.5, atol=1e-9)


@pytest.mark.parametrize("name", list(CONFIGS))
@SETTINGS
@given(st.data())
def test_comparisons_relu_max_min(name: str, data: st.DataObject) -> None:
    a = np.array(data.draw(VECS))
    b = np.array(data.draw(st.lists(REALS | st.just(0.0), min_size=len(a), max_size=len(a))))
    b[: len(a) // 3] = a[: len(a) // 3]  # equal values are an edge case

    async def body(ctx: MPCContext, x: Any, y: Any) -> list[Any]:
        lt = await P.less_than(ctx, x, y)
        r = await P.relu(ctx, x)
        mx = await P.maximum(ctx, x, y)
        mn = await P.minimum(ctx, x, y)
        top = await P.max_reduce(ctx, x)
        bottom = await P.min_reduce(ctx, y)
        return [lt, r, mx, mn, top, bottom]

    lt, r, mx, mn, top, bottom = run(CONFIGS[name], [a, b], body)
    ea, eb = np.rint(a / ULP), np.rint(b / ULP)
    assert lt.tolist() == (ea < eb).astype(int).tolist()
    assert r.tolist() == np.maximum(ea, 0).astype(int).tolist()
    assert mx.tolist() == np.maximum(ea, eb).astype(int).tolist()
    assert mn.tolist() == np.minimum(ea, eb).astype(int).tolist()
    assert int(top[0]) == int(ea.max()) and int(bottom[0]) == int(eb.min())


@pytest.mark.parametrize("name", ["ring-3", "field-mal-3", "shamir-5-2"])
def test_ltz_at_domain_edges(name: str) -> None:
    config = CONFIGS[name]
    contexts, dealer = make_contexts(config, seed=b"edge-seed-0123456789abcdef012345")
    d = contexts[0].domain
    half = 2**63 if d.name == "ring64" else (2**61 - 1) // 2
    values = np.array([0, 1, -1, half - 1, -half + 1] + ([-half] if d.name == "ring64" else []), dtype=np.int64)

    async def program(ctx: MPCContext) -> Any:
        x = dealer.share_input(ctx.party, d.from_signed(values), "edge")
        (out,) = await ctx.open([await P.less_than_zero(ctx, x)])
        await check_macs(ctx)
        return out

    out = asyncio.run(run_local(contexts, program))[0]
    assert d.to_signed(out).tolist() == (values < 0).astype(int).tolist()


@pytest.mark.parametrize("name", ["ring-3", "field-mal-3", "shamir-5-2"])
@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.data())
def test_matmul_dot_and_division(name: str, m: int, k: int, n: int, data: st.DataObject) -> None:
    small = st.floats(-30, 30, allow_nan=False).map(lambda v: round(v, 2))
    a = np.array(data.draw(st.lists(small, min_size=m * k, max_size=m * k))).reshape(m, k)
    b = np.array(data.draw(st.lists(small, min_size=k * n, max_size=k * n))).reshape(k, n)
    divisor = data.draw(st.sampled_from([3.0, -7.0, 1000.0, 0.5]))

    async def body(ctx: MPCContext, x: Any, y: Any) -> list[Any]:
        mm = await P.fx_matmul(ctx, x, y)
        dt = await P.truncate(ctx, await P.dot(ctx, x, x))
        dv = await P.divide_public(ctx, x, divisor, quotient_bound=60.0)
        return [mm, dt, dv]

    mm, dt, dv = run(CONFIGS[name], [a, b], body)
    ea, eb = np.rint(a / ULP) * ULP, np.rint(b / ULP) * ULP
    assert np.all(np.abs(decode(mm) - ea @ eb) <= 1.5 * ULP + 1e-9)
    assert np.all(np.abs(decode(dt) - (ea * ea).sum(axis=1)) <= 1.5 * ULP + 1e-9)
    assert np.all(np.abs(decode(dv) - ea / divisor) <= np.abs(ea) * 2.0**-30 + 1.5 * ULP + 1e-9)


@pytest.mark.parametrize("name", ["ring-3", "shamir-mal-3-1"])
def test_sigmoid_within_stated_bound(name: str) -> None:
    xs = np.concatenate([np.linspace(-12, 12, 97), [0.0, -8.0, 8.0, 50.0, -50.0]])

    async def body(ctx: MPCContext, x: Any) -> list[Any]:
        return [await P.sigmoid(ctx, x)]

    (s,) = run(CONFIGS[name], [xs], body)
    assert np.max(np.abs(decode(s) - 1 / (1 + np.exp(-xs)))) <= P.SIGMOID_MAX_ERROR


def test_shamir_session_with_parties_missing() -> None:
    # n = 5, t = 2: parties 3 and 4 are down; 3 = t + 1 parties still multiply and open
    a, b = np.array([1.5, -2.25, 100.0]), np.array([-4.0, 8.0, 0.5])

    async def body(ctx: MPCContext, x: Any, y: Any) -> list[Any]:
        return [await P.fx_multiply(ctx, x, y), await P.less_than(ctx, x, y)]

    prod, lt = run(EngineConfig(5, threshold=2, sharing="shamir"), [a, b], body, live=[0, 1, 2])
    assert np.allclose(decode(prod), a * b, atol=2 * ULP)
    assert lt.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="cannot open"):
        make_contexts(EngineConfig(5, threshold=2, sharing="shamir"), seed=b"x" * 32, live=[0, 1])


def test_input_sharing_by_a_party() -> None:
    config = EngineConfig(3, security="malicious")
    contexts, _ = make_contexts(config, seed=b"input-seed-0123456789abcdef01234")
    d, fx = contexts[0].domain, contexts[0].fixed
    secret = fx.encode([3.25, -1.5], d)

    async def program(ctx: MPCContext) -> Any:
        x = await P.share_input(ctx, 1, secret if ctx.party == 1 else None, (2,))
        (out,) = await ctx.open([await P.fx_multiply(ctx, x, x)])
        await check_macs(ctx)
        return out

    out = asyncio.run(run_local(contexts, program))[0]
    assert np.allclose(fx.decode(out, d), [3.25**2, 1.5**2], atol=2 * ULP)


def test_malicious_needs_the_field() -> None:
    from pqmpc_node.mpc.context import SecurityConfigError

    contexts, dealer = make_contexts(EngineConfig(2), seed=b"y" * 32)
    with pytest.raises(SecurityConfigError, match="prime field"):
        MPCContext(
            party=0, channel=contexts[0].channel, domain=contexts[0].domain, scheme=contexts[0].scheme,
            provider=contexts[0].provider, rng=contexts[0].rng, security="malicious",
        )
