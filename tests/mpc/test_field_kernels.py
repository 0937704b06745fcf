"""The blocked F_p kernels, products by constants, lazy linear combinations and the blocked PRSS
against Python big-int arithmetic: block boundaries (just below, at and above the block size,
real and shrunk), non-contiguous and broadcasting operands, 0 and p - 1, constants -7..7 and
the edges of each constant path; PRSS values independent of the block size and equal to the
formula of :mod:`pqmpc_node.mpc.prss` computed from the raw keystreams."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqmpc_node.mpc import field as field_module
from pqmpc_node.mpc import prss as prss_module
from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.field import BLOCK, P61, SMALL_FACTOR, LinearCombination, MersenneField61
from pqmpc_node.mpc.prss import PrssKeys, unqualified_sets, vanishing_weight
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_node.mpc.sharing import ShamirScheme

F = MersenneField61()
SETTINGS = settings(max_examples=40, deadline=None)
EDGES = [0, 1, 2, P61 - 1, P61 - 2, P61 // 2, P61 // 2 + 1, (1 << 31) - 1, 1 << 31, (1 << 30) - 1, 1 << 60]
ELEMENT = st.one_of(st.sampled_from(EDGES), st.integers(0, P61 - 1))
WORD = st.one_of(st.sampled_from([0, P61, P61 + 1, 2**64 - 1, 2**63, 2**61]), st.integers(0, 2**64 - 1))
CONSTANTS = [*range(-SMALL_FACTOR, SMALL_FACTOR + 1), 8, -8, 9, -9, 1000, -1000, (1 << 31) - 1, -((1 << 31) - 1),
             1 << 31, -(1 << 31), 1 << 32, P61 - 1, P61, P61 + 3, 2**64 + 5, -(2**70), 123456789012345678]
CONSTANT = st.one_of(st.sampled_from(CONSTANTS), st.integers(-(2**80), 2**80))


@contextmanager
def block_size(size: int) -> Iterator[None]:
    """Shrink the kernels' and PRSS's block so that small arrays span many blocks."""
    saved = field_module.BLOCK, prss_module.BLOCK
    field_module.BLOCK = prss_module.BLOCK = size
    try:
        yield
    finally:
        field_module.BLOCK, prss_module.BLOCK = saved


def ints(a: Any) -> list[int]:
    return [int(v) for v in np.asarray(to_host(a)).reshape(-1)]


def elements(values: Sequence[int]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    return np.array(values, dtype=np.uint64)


def reference(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Elements as a numpy array of Python ints (exact big-int arithmetic, elementwise)."""
    return np.asarray(a).astype(object)


def random_elements(count: int, seed: int = 0) -> np.ndarray[Any, np.dtype[np.uint64]]:
    values = np.random.default_rng(seed).integers(0, P61, count, dtype=np.uint64)
    values[: len(EDGES)] = EDGES[: count]
    return values


# -- elementwise ops ----------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(ELEMENT, ELEMENT, WORD), min_size=1, max_size=40), st.sampled_from([1, 2, 3, 7, 16]))
def test_blocked_ops_match_python_ints(rows: list[tuple[int, int, int]], block: int) -> None:
    a, b, w = elements([r[0] for r in rows]), elements([r[1] for r in rows]), elements([r[2] for r in rows])
    with block_size(block):
        assert ints(F.mul(a, b)) == [x * y % P61 for x, y, _ in rows]
        assert ints(F.add(a, b)) == [(x + y) % P61 for x, y, _ in rows]
        assert ints(F.sub(a, b)) == [(x - y) % P61 for x, y, _ in rows]
        assert ints(F.neg(a)) == [-x % P61 for x, _, _ in rows]
        acc = a.copy()
        assert F.iadd(acc, b) is acc and ints(acc) == [(x + y) % P61 for x, y, _ in rows]
        assert ints(F.from_words(w)) == [(v & P61) % P61 for _, _, v in rows]
        assert ints(F.asarray(w)) == [v % P61 for _, _, v in rows]
        assert ints(F.sum(a)) == [sum(x for x, _, _ in rows) % P61]


@pytest.mark.parametrize("count", [BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
def test_ops_at_the_real_block_size(count: int) -> None:
    a, b = random_elements(count, 1), random_elements(count, 2)
    b[-3:] = [P61 - 1, 0, 1]
    ra, rb = reference(a), reference(b)
    assert (reference(F.mul(a, b)) == ra * rb % P61).all()
    assert (reference(F.add(a, b)) == (ra + rb) % P61).all()
    assert (reference(F.sub(a, b)) == (ra - rb) % P61).all()
    assert (reference(F.neg(a)) == -ra % P61).all()
    acc = a.copy()
    F.iadd(acc, b)
    assert (reference(acc) == (ra + rb) % P61).all()
    words = np.random.default_rng(3).integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)
    assert (reference(F.from_words(words)) == (reference(words) & P61) % P61).all()
    assert (reference(F.asarray(words)) == reference(words) % P61).all()
    for k in (-7, -1, 2, 7, 1000, -(1 << 31), P61 // 3):
        assert (reference(F.mul(a, F.scalar(k))) == ra * k % P61).all(), k


@pytest.mark.parametrize("k", CONSTANTS)
def test_products_by_constants(k: int) -> None:
    """Every constant path, and every form of the constant: numpy scalar, Python int, 0-d and size-1
    arrays (a (1, 1) array broadcasts the result to (1, n)), on either side; blocked and not."""
    for count in (5, BLOCK + 3):
        a = random_elements(count, 4)
        want = [x * (k % P61) % P61 for x in ints(a)]
        forms: list[Any] = [F.scalar(k), k % P61, np.array(k % P61, dtype=np.uint64), np.array([k % P61], dtype=np.uint64)]
        if 0 <= k <= P61:
            forms.append(np.uint64(k))  # the word itself (p counts as 0)
        for c in forms:
            assert ints(F.mul(a, c)) == want, (k, c)
            assert ints(F.mul(c, a)) == want, (k, c)
        wide = F.mul(a, np.array([[k % P61]], dtype=np.uint64))
        assert wide.shape == (1, count) and ints(wide) == want


def test_small_constants_minus_7_to_7_on_edges() -> None:
    a = elements(EDGES)
    for k in range(-7, 8):
        assert ints(F.mul(a, F.scalar(k))) == [x * k % P61 for x in EDGES], k


def test_non_contiguous_and_broadcasting_operands() -> None:
    base = random_elements(4 * BLOCK + 8, 5).reshape(2, -1)
    a, b = base[:, ::2], base[::-1, 1::2]  # strided views, one of them reversed
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    ra, rb = reference(a), reference(b)
    assert (reference(F.mul(a, b)) == ra * rb % P61).all()
    assert (reference(F.add(a, b)) == (ra + rb) % P61).all()
    assert (reference(F.sub(a, b)) == (ra - rb) % P61).all()
    assert (reference(F.mul(a.T, F.scalar(-3))) == ra.T * -3 % P61).all()
    col, row = random_elements(300, 6).reshape(-1, 1), random_elements(200, 7).reshape(1, -1)
    rc, rr = reference(col), reference(row)
    for got, want in ((F.mul(col, row), rc * rr % P61), (F.add(col, row), (rc + rr) % P61),
                      (F.sub(row, col), (rr - rc) % P61)):
        assert got.shape == (300, 200) and (reference(got) == want).all()
    one = random_elements(1, 8)
    big = random_elements(BLOCK + 9, 9)
    assert (reference(F.add(big, one)) == (reference(big) + int(one[0])) % P61).all()
    assert (reference(F.sub(one, big)) == (int(one[0]) - reference(big)) % P61).all()


def test_iadd_into_views_and_itself() -> None:
    a = random_elements(2 * BLOCK + 8, 10)
    ra = reference(a)
    view = a[::2]  # non-contiguous target: written through the view
    F.iadd(view, F.scalar(P61 - 1))
    assert (reference(a[::2]) == (ra[::2] - 1) % P61).all() and (reference(a[1::2]) == ra[1::2]).all()
    b = random_elements(BLOCK + 3, 11)
    rb = reference(b)
    assert F.iadd(b, b) is b and (reference(b) == 2 * rb % P61).all()
    c = random_elements(BLOCK + 40, 12)
    rc = reference(c)
    F.iadd(c[:-1], c[1:])  # overlapping operand: numpy's buffered semantics, as before blocking
    assert (reference(c[:-1]) == (rc[:-1] + rc[1:]) % P61).all()


def test_results_are_fresh_arrays() -> None:
    a = random_elements(BLOCK + 1, 13)
    for out in (F.mul(a, F.scalar(1)), F.mul(a, 1), F.add(a, F.zeros(a.shape)), F.from_words(a)):
        assert out is not a and not np.shares_memory(out, a) and (out == a).all()
    assert F.mul(a, F.scalar(0)).tolist() == [0] * a.size and F.mul(a, P61).tolist() == [0] * a.size


# -- linear combinations ------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(CONSTANT, st.lists(ELEMENT, min_size=6, max_size=6)), min_size=1, max_size=24),
       st.sampled_from([2, 5, 64]))
def test_lincomb_matches_python_ints(terms: list[tuple[int, list[int]]], block: int) -> None:
    coeffs = [c for c, _ in terms]
    arrays = [elements(xs) for _, xs in terms]
    want = [sum(c * xs[i] for c, xs in terms) % P61 for i in range(6)]
    with block_size(block):
        assert ints(F.lincomb(coeffs, arrays)) == want


def test_lincomb_many_terms_of_every_kind_force_folds() -> None:
    """30 terms of 7, -7, medium and split constants: the unreduced sum must fold many times."""
    count = BLOCK + 17
    arrays = [random_elements(count, 20 + i) for i in range(30)]
    for x in arrays:
        x[:2] = [P61 - 1, P61 - 1]  # the largest element everywhere at the start
    coeffs = [(7, -7, (1 << 31) - 1, -(1 << 30), P61 // 5, -1, 1)[i % 7] for i in range(30)]
    want = sum((c * reference(x) for c, x in zip(coeffs, arrays, strict=True)), start=reference(np.zeros(count, dtype=np.uint64))) % P61
    assert (reference(F.lincomb(coeffs, arrays)) == want).all()


@SETTINGS
@given(st.lists(st.tuples(CONSTANT, st.lists(WORD, min_size=4, max_size=4)), min_size=1, max_size=12))
def test_linear_combination_of_words(terms: list[tuple[int, list[int]]]) -> None:
    """``words=True`` takes each word's low 61 bits, as from_words does (p counts as 0)."""
    out = np.empty(4, dtype=np.uint64)
    comb = LinearCombination(np, out, [np.empty(4, dtype=np.uint64) for _ in range(4)])
    for c, ws in terms:
        comb.add(c, elements(ws), words=True)
    assert comb.finish() is out
    assert ints(out) == [sum(c * (ws[i] & P61) for c, ws in terms) % P61 for i in range(4)]


def test_lincomb_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match="one coefficient per array"):
        F.lincomb([1, 2], [random_elements(3)])
    with pytest.raises(ValueError, match="one shape"):
        F.lincomb([1, 2], [random_elements(3), random_elements(4)])
    with pytest.raises(ValueError, match="4 temporaries"):
        LinearCombination(np, np.empty(2, dtype=np.uint64), [])
    out = np.full(3, 5, dtype=np.uint64)
    assert LinearCombination(np, out, [np.empty(3, dtype=np.uint64)] * 4).finish().tolist() == [0, 0, 0]


@pytest.mark.parametrize(("n", "t"), [(3, 1), (3, 2), (5, 2), (7, 3)])
@pytest.mark.parametrize("count", [7, BLOCK, BLOCK + 1])
def test_shamir_reconstruct_matches_lagrange_in_python_ints(n: int, t: int, count: int) -> None:
    scheme = ShamirScheme(n, t)
    secret = random_elements(count, 30)
    shares = scheme.share(F, secret, AesCtrRandom(bytes(32)))
    parties = list(range(n))[-(t + 1):]  # the last t + 1: other coefficients than the first
    got = scheme.reconstruct(F, {p: shares[p] for p in parties})
    weights = scheme.weights(parties)
    want = sum((weights[p] * reference(shares[p]) for p in parties), start=reference(np.zeros(count, dtype=np.uint64))) % P61
    assert (reference(got) == want).all() and (got == secret).all()
    assert (scheme.reconstruct(F, dict(enumerate(shares)), check=True) == secret).all()


# -- randomness and PRSS -------------------------------------------------------------------


def test_words_into_continues_the_stream() -> None:
    whole = AesCtrRandom(bytes(range(32))).bytes(8 * 100_001)
    stream = AesCtrRandom(bytes(range(32)))
    parts = [stream.words(3), stream.words(0)]
    buf = np.empty(40_000, dtype=np.uint64)
    stream.words_into(buf)
    parts.append(buf.copy())
    parts.append(stream.words(100_001 - 3 - 40_000))
    assert np.concatenate(parts).tobytes() == whole
    with pytest.raises(ValueError, match="C-contiguous uint64"):
        stream.words_into(np.empty(10, dtype=np.uint64)[::2])
    with pytest.raises(ValueError, match="C-contiguous uint64"):
        stream.words_into(np.empty(10, dtype=np.int64))  # type: ignore[arg-type]


def test_vanishing_weight_is_the_unnormalized_polynomial() -> None:
    for n, t in [(3, 1), (5, 2), (7, 3)]:
        for subset in unqualified_sets(n, t):
            for party in range(n):
                assert vanishing_weight(subset, party) == math.prod(a - party for a in subset) % P61


def _keys(n: int, t: int) -> list[PrssKeys]:
    sets = unqualified_sets(n, t)
    key = {s: derive_key("test-prss", *s) for s in sets}
    return [PrssKeys(i, n, t, {s: key[s] for s in sets if i not in s}) for i in range(n)]


def _expected(keys: PrssKeys, counts: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """The module docstring's formulas from the raw keystreams, (r_i, z_i) per request, in Python ints."""
    x, t = keys.party + 1, keys.t
    streams = [(math.prod(a - keys.party for a in s), AesCtrRandom(derive_key(k, "pqmpc/prss/random")),
                AesCtrRandom(derive_key(k, "pqmpc/prss/zero-2t"))) for s, k in sorted(keys.keys.items())]
    out = []
    for count in counts:
        r = reference(np.zeros(count, dtype=np.uint64))
        z = reference(np.zeros(count, dtype=np.uint64))
        for w, rand, zero in streams:
            r = r + w * (reference(rand.words(count)) & P61)
            words = reference(zero.words(t * count)).reshape(count, t)  # PRF_1..PRF_t of element e: words t e + j - 1
            for j in range(1, t + 1):
                z = z + x**j * w * (words[:, j - 1] & P61)
        out.append(([int(v) % P61 for v in r], [int(v) % P61 for v in z]))
    return out


@pytest.mark.parametrize(("n", "t"), [(3, 1), (5, 2)])
@pytest.mark.parametrize(("block", "counts"), [(BLOCK, [5, 1, 2 * BLOCK + 3, 17]), (777, [5, 1, 2 * BLOCK + 3, 17]),
                                               (3, [5, 1, 8, 17])])
def test_prss_values_follow_the_formula_at_any_block_size(n: int, t: int, block: int, counts: list[int]) -> None:
    """Requests of several sizes (some spanning blocks) give the docstring's values whatever the
    block size: the stream order depends only on the keys and the requests."""
    for keys in _keys(n, t):
        want = _expected(PrssKeys(keys.party, n, t, dict(keys.keys)), counts)
        with block_size(block):
            got = [(ints(keys.random(F, (c,))), ints(keys.zero(F, (c,)))) for c in counts]
        assert got == want, (keys.party, block)


def test_prss_shares_recombine_across_block_boundaries() -> None:
    n, t = 7, 3
    keys = _keys(n, t)
    count = BLOCK + 2
    shares = {i: keys[i].random(F, (count,)) for i in range(n)}
    ShamirScheme(n, t).reconstruct(F, shares, check=True)  # one degree-t polynomial
    zeros = {i: keys[i].zero(F, (count,)) for i in range(n)}
    assert not ShamirScheme(n, 2 * t).reconstruct(F, zeros, check=True).any()
    shaped = keys[0].random(F, (3, 4))
    assert shaped.shape == (3, 4) and shaped.dtype == np.uint64 and F.is_canonical(shaped)


def test_prss_refuses_the_ring() -> None:
    from pqmpc_node.mpc.ring import Ring64

    with pytest.raises(ValueError, match="prime field"):
        _keys(3, 1)[0].random(Ring64(), (4,))


# -- cupy: the same results through the unblocked whole-array kernels ---------------------


def test_device_kernels_match_numpy(xp: Any) -> None:
    g = MersenneField61(xp)
    a, b = random_elements(BLOCK + 5, 40), random_elements(BLOCK + 5, 41)
    da, db = xp.asarray(a), xp.asarray(b)
    assert ints(g.mul(da, db)) == ints(F.mul(a, b))
    assert ints(g.add(da, db)) == ints(F.add(a, b))
    assert ints(g.sub(da, db)) == ints(F.sub(a, b))
    assert ints(g.neg(da)) == ints(F.neg(a))
    for k in (-7, 3, 1000, -(1 << 31), P61 // 3):
        assert ints(g.mul(da, g.scalar(k))) == ints(F.mul(a, F.scalar(k)))
    assert ints(g.mul(da, xp.asarray([5], dtype=xp.uint64))) == ints(F.mul(a, F.scalar(5)))  # a device constant
    assert ints(g.lincomb([3, -3, 1], [da, db, da])) == ints(F.lincomb([3, -3, 1], [a, b, a]))
    keys = _keys(3, 1)
    assert ints(keys[1].random(g, (9,))) == ints(_keys(3, 1)[1].random(F, (9,)))


class WholeArrayNamespace:
    """numpy under another name: the field then runs each pass over the whole array with numpy
    scalar constants, the path cupy takes, so it is exercised on machines without a GPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def test_whole_array_path_matches_the_blocked_one() -> None:
    g = MersenneField61(WholeArrayNamespace())
    a, b = random_elements(2 * BLOCK + 5, 50), random_elements(2 * BLOCK + 5, 51)
    words = np.random.default_rng(52).integers(0, 2**64 - 1, a.size, dtype=np.uint64, endpoint=True)
    assert (g.mul(a, b) == F.mul(a, b)).all() and (g.add(a, b) == F.add(a, b)).all()
    assert (g.sub(a, b) == F.sub(a, b)).all() and (g.neg(a) == F.neg(a)).all()
    assert (g.from_words(words) == F.from_words(words)).all() and (g.asarray(words) == F.asarray(words)).all()
    for k in CONSTANTS:
        assert (g.mul(a, k % P61) == F.mul(a, k % P61)).all(), k
    assert (g.lincomb([7, -7, 1 << 40, -1], [a, b, a, b]) == F.lincomb([7, -7, 1 << 40, -1], [a, b, a, b])).all()
    acc, ref = a.copy(), a.copy()
    g.iadd(acc, b)
    F.iadd(ref, b)
    assert (acc == ref).all()
    assert ints(_keys(3, 1)[2].zero(g, (BLOCK + 1,))) == ints(_keys(3, 1)[2].zero(F, (BLOCK + 1,)))
