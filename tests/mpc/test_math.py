"""Pure math of the engine: Z_2^64 and F_p arithmetic, limb-GEMM matrix products against an
exact integer reference, additive and Shamir sharing (missing parties, inconsistent shares),
fixed-point encoding bounds and backend selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqmpc_node.mpc.backend import BackendUnavailableError, select_namespace, to_host
from pqmpc_node.mpc.field import P61, MersenneField61
from pqmpc_node.mpc.fixedpoint import FixedPoint, FixedPointRangeError
from pqmpc_node.mpc.matmul import LIMB_BITS, MAX_INNER_DIM
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.ring import Ring64
from pqmpc_node.mpc.sharing import AdditiveScheme, InconsistentSharesError, MissingSharesError, ShamirScheme

U64 = st.integers(0, 2**64 - 1)
FP = st.integers(0, P61 - 1)
SETTINGS = settings(max_examples=40, deadline=None)


def exact_matmul(a: Any, b: Any, modulus: int) -> list[list[int]]:
    a, b = to_host(a), to_host(b)
    return [
        [sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) % modulus for j in range(b.shape[1])]
        for i in range(a.shape[0])
    ]


@SETTINGS
@given(st.lists(st.tuples(U64, U64), min_size=1, max_size=20))
def test_ring_ops_match_python_ints(pairs: list[tuple[int, int]]) -> None:
    r = Ring64()
    a = r.asarray([p[0] for p in pairs])
    b = r.asarray([p[1] for p in pairs])
    m = 2**64
    assert [int(v) for v in r.mul(a, b)] == [(x * y) % m for x, y in pairs]
    assert [int(v) for v in r.sub(a, b)] == [(x - y) % m for x, y in pairs]
    assert [int(v) for v in r.neg(a)] == [(-x) % m for x, _ in pairs]
    assert int(r.sum(a)[0]) == sum(x for x, _ in pairs) % m


@SETTINGS
@given(st.lists(st.tuples(FP, FP), min_size=1, max_size=20))
def test_field_ops_match_python_ints(pairs: list[tuple[int, int]]) -> None:
    f = MersenneField61()
    a = f.asarray([p[0] for p in pairs])
    b = f.asarray([p[1] for p in pairs])
    assert [int(v) for v in f.mul(a, b)] == [(x * y) % P61 for x, y in pairs]
    assert [int(v) for v in f.add(a, b)] == [(x + y) % P61 for x, y in pairs]
    assert [int(v) for v in f.sub(a, b)] == [(x - y) % P61 for x, y in pairs]
    assert [int(v) for v in f.neg(a)] == [(-x) % P61 for x, _ in pairs]
    assert int(f.sum(a)[0]) == sum(x for x, _ in pairs) % P61


def test_field_signed_round_trip_and_extremes() -> None:
    f = MersenneField61()
    values = np.array([0, 1, -1, P61 // 2, -(P61 // 2), 2**59, -(2**59)], dtype=np.int64)
    assert f.to_signed(f.from_signed(values)).tolist() == values.tolist()
    top = f.asarray([P61 - 1] * 3)
    assert [int(v) for v in f.mul(top, top)] == [1, 1, 1]  # (-1)^2


def test_limb_bound_is_exact_in_float64() -> None:
    # the worst-case limb dot product over MAX_INNER_DIM terms must stay within 2^53
    assert MAX_INNER_DIM * (2**LIMB_BITS - 1) ** 2 <= 2**53
    assert (MAX_INNER_DIM + 1) * (2**LIMB_BITS) ** 2 > 2**53


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 5), (8, 300, 4)])
def test_ring_matmul_exact(xp: Any, shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.integers(0, 2**64 - 1, (m, k), dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, (k, n), dtype=np.uint64, endpoint=True)
    a[0, :] = 2**64 - 1  # worst case limbs
    b[:, 0] = 2**64 - 1
    r = Ring64(xp)
    got = to_host(r.matmul(xp.asarray(a), xp.asarray(b)))
    assert got.astype(object).tolist() == exact_matmul(a, b, 2**64)


@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 33, 6), (5, 400, 3)])
def test_field_matmul_exact(xp: Any, shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.integers(0, P61 - 1, (m, k), dtype=np.uint64, endpoint=True)
    b = rng.integers(0, P61 - 1, (k, n), dtype=np.uint64, endpoint=True)
    a[0, :] = P61 - 1
    f = MersenneField61(xp)
    got = to_host(f.matmul(xp.asarray(a), xp.asarray(b)))
    assert got.astype(object).tolist() == exact_matmul(a, b, P61)


def test_matmul_rejects_mismatched_shapes() -> None:
    r = Ring64()
    with pytest.raises(ValueError, match=r"\(m,k\) @ \(k,n\)"):
        r.matmul(r.zeros((2, 3)), r.zeros((2, 3)))


@pytest.mark.parametrize("n", range(2, 8))
def test_additive_round_trip(n: int) -> None:
    rng = AesCtrRandom(bytes(32))
    for domain in (Ring64(), MersenneField61()):
        values = domain.from_signed(np.array([0, -5, 7, 2**40], dtype=np.int64))
        shares = AdditiveScheme(n).share(domain, values, rng)
        assert len(shares) == n
        assert (AdditiveScheme(n).reconstruct(domain, dict(enumerate(shares))) == values).all()
        with pytest.raises(MissingSharesError, match="missing parties"):
            AdditiveScheme(n).reconstruct(domain, dict(enumerate(shares[1:], start=1)))


@SETTINGS
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))), st.data())
def test_shamir_recombines_from_any_t_plus_1(nt: tuple[int, int], data: st.DataObject) -> None:
    n, t = nt
    f = MersenneField61()
    secret = f.asarray(data.draw(st.lists(FP, min_size=1, max_size=5)))
    scheme = ShamirScheme(n, t)
    shares = scheme.share(f, secret, AesCtrRandom(bytes(32)))
    present = data.draw(st.lists(st.sampled_from(range(n)), min_size=t + 1, max_size=n, unique=True))
    got = scheme.reconstruct(f, {p: shares[p] for p in present}, check=True)
    assert (got == secret).all()


def test_shamir_missing_too_many_and_inconsistent() -> None:
    f = MersenneField61()
    scheme = ShamirScheme(5, 2)
    secret = f.asarray([42, 7])
    shares = scheme.share(f, secret, AesCtrRandom(bytes(32)))
    with pytest.raises(MissingSharesError, match="at most 2 of 5 parties may be missing"):
        scheme.reconstruct(f, {0: shares[0], 3: shares[3]})
    bad = dict(enumerate(shares))
    bad[4] = f.add(bad[4], f.asarray([1, 0]))
    with pytest.raises(InconsistentSharesError, match="party 4"):
        scheme.reconstruct(f, bad, check=True)
    with pytest.raises(ValueError, match="prime field"):
        scheme.share(Ring64(), Ring64().asarray([1]), AesCtrRandom(bytes(32)))


@SETTINGS
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_fixed_point_encoding_error_within_half_ulp(values: list[float]) -> None:
    fx = FixedPoint(16)
    for domain in (Ring64(), MersenneField61()):
        back = fx.decode(fx.encode(values, domain), domain)
        assert np.all(np.abs(back - np.array(values)) <= fx.ulp / 2 + 1e-12)


def test_fixed_point_range_checked() -> None:
    fx = FixedPoint(16)
    with pytest.raises(FixedPointRangeError, match="must be <"):
        fx.encode([2.0**47], MersenneField61())
    with pytest.raises(FixedPointRangeError, match="finite"):
        fx.encode([float("nan")], Ring64())
    assert fx.max_abs(Ring64()) == 2.0**46


def test_backend_selection() -> None:
    assert select_namespace("numpy") is np
    assert select_namespace("auto") is not None
    with pytest.raises(ValueError, match="unknown array backend"):
        select_namespace("torch")  # type: ignore[arg-type]
    try:
        select_namespace("cupy")
    except BackendUnavailableError as exc:
        assert "numpy" in str(exc)
