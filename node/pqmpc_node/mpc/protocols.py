"""MPC protocols over :class:`~pqmpc_node.mpc.context.MPCContext`; one code path for ring and field.

Every function is a coroutine that all live parties call in the same order. Independent
operations batch: each ``*_many`` function and every array-valued call spends one round
for the whole batch. Fixed-point values carry ``ctx.fixed.frac_bits`` fractional bits.

Rounds: open 1; multiply 1; matmul 1; truncate 1 (ring) or 1 + 6 (field);
less-than 8 (one opening, a 6-level comparison tree, one XOR); ReLU 9; sigmoid 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pqmpc_node.mpc.context import MPCContext, encode_payload
from pqmpc_node.mpc.domain import Array
from pqmpc_node.mpc.field import P61
from pqmpc_node.mpc.preprocessing import DirectProducts
from pqmpc_node.mpc.fixedpoint import truncation_input_bits
from pqmpc_node.mpc.shares import Shared

__all__ = [
    "share_input",
    "open_values",
    "multiply",
    "multiply_many",
    "matmul",
    "fx_multiply",
    "fx_matmul",
    "dot",
    "truncate",
    "bit_less_than_public",
    "bit_compare_public",
    "split_limbs",
    "less_than_zero",
    "less_than",
    "relu",
    "maximum",
    "minimum",
    "max_reduce",
    "min_reduce",
    "divide_public",
    "sigmoid",
    "SIGMOID_MAX_ERROR",
]


async def share_input(ctx: MPCContext, owner: int, values: Array | None, shape: tuple[int, ...]) -> Shared:
    """Secret-share party ``owner``'s ``values`` (others pass None) with an input mask [DPSZ12].

    1. The provider gives ``[r]`` to all and ``r`` to the owner.
    2. The owner broadcasts ``d = x - r``; every party sets ``[x] = [r] + d``.
    3. Malicious mode records ``d`` so the next MAC check compares what each party saw.
    """
    mask = await ctx.input_mask(shape, owner)
    tag = ctx.next_tag(f"input/{owner}")
    if ctx.party == owner:
        if values is None or mask.clear is None:
            raise ValueError(f"party {owner} owns this input and must pass its values")
        d = ctx.domain.sub(ctx.xp.asarray(values, dtype=ctx.xp.uint64).reshape(shape), mask.clear)
        payload = encode_payload(d)
        await ctx.channel.send_many(tag, {p: payload for p in ctx.peers})
    else:
        payload = (await ctx.channel.receive_many(tag, [owner]))[owner]
        d = ctx.elements_from(owner, payload, math.prod(shape), tag).reshape(shape)
    if ctx.malicious:
        ctx.broadcasts.append((tag, payload))
    return ctx.add_public(mask.mask, d)


async def open_values(ctx: MPCContext, xs: Sequence[Shared], label: str = "open") -> list[Array]:
    """Open several sharings in one round (see :meth:`MPCContext.open`)."""
    return await ctx.open(xs, label)


async def multiply_many(ctx: MPCContext, pairs: Sequence[tuple[Shared, Shared]]) -> list[Shared]:
    """Elementwise products of all pairs in one round, with Beaver triples [Beaver91].

    1. Take triples ``([a], [b], [c = ab])`` of the total size.
    2. Open ``e = x - a`` and ``f = y - b`` together.
    3. ``[xy] = [c] + e [b] + f [a] + e f``.

    A provider that multiplies itself (:class:`~pqmpc_node.mpc.preprocessing.DirectProducts`,
    honest majority) does instead, also in one round: degree reduction of the local
    products, checked at the next MAC check.
    """
    if not pairs:
        return []
    for x, y in pairs:
        if x.shape != y.shape:
            raise ValueError(f"multiply needs equal shapes, got {x.shape} and {y.shape}")
    xs = ctx.concat([x.reshape(-1) for x, _ in pairs]) if len(pairs) > 1 else pairs[0][0].reshape(-1)
    ys = ctx.concat([y.reshape(-1) for _, y in pairs]) if len(pairs) > 1 else pairs[0][1].reshape(-1)
    if isinstance(ctx.provider, DirectProducts):
        z = await ctx.provider.direct_multiply(xs, ys)
    else:
        t = await ctx.triples(xs.shape)
        e, f = await ctx.open([ctx.sub(xs, t.a), ctx.sub(ys, t.b)], "beaver")
        z = _beaver_combine(ctx, t.a, t.b, t.c, e, f)
    out: list[Shared] = []
    start = 0
    for x, _ in pairs:
        out.append(z[start : start + x.size].reshape(*x.shape))
        start += x.size
    return out


def _beaver_combine(ctx: MPCContext, a: Shared, b: Shared, c: Shared, e: Array, f: Array) -> Shared:
    """``[c] + e [b] + f [a] + e f`` (the constant term at constant holders, ``alpha e f`` on MACs).

    Accumulates in place in fresh arrays: on large batches allocations dominate.
    """
    d = ctx.domain
    value = d.iadd(d.iadd(d.mul(b.value, e), d.mul(a.value, f)), c.value)
    ef = d.mul(e, f)
    if ctx.scheme.holds_constants(ctx.party):
        value = d.iadd(value, ef)
    mac = None
    if a.mac is not None and b.mac is not None and c.mac is not None:
        assert ctx.mac_key is not None  # invariant: MAC shares exist only with a MAC key
        mac = d.iadd(d.iadd(d.iadd(d.mul(b.mac, e), d.mul(a.mac, f)), c.mac), d.mul(ef, ctx.mac_key))
    return Shared(value, mac)


async def multiply(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Elementwise product ``[x y]`` (integer; see :func:`fx_multiply` for fixed point)."""
    return (await multiply_many(ctx, [(x, y)]))[0]


async def matmul(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Matrix product ``[X @ Y]`` with a matrix triple ``(A, B, C = AB)`` [MZ17]: one round.

    1. Open ``E = X - A`` and ``F = Y - B``.
    2. ``[XY] = [C] + E [B] + [A] F + E F`` (public products by limb GEMM).
    """
    if len(x.shape) != 2 or len(y.shape) != 2 or x.shape[1] != y.shape[0]:
        raise ValueError(f"matmul needs (m,k) @ (k,n) sharings, got {x.shape} @ {y.shape}")
    if isinstance(ctx.provider, DirectProducts):
        return await ctx.provider.direct_matmul(x, y)
    t = await ctx.matrix_triple((x.shape[0], x.shape[1]), (y.shape[0], y.shape[1]))
    e, f = await ctx.open([ctx.sub(x, t.a), ctx.sub(y, t.b)], "matmul")
    d = ctx.domain
    # E [B] + E F = E ([B] + F): two GEMM products per share instead of three. On MACs the
    # constant term is alpha_i E F = E (alpha_i F).
    b_plus = t.b.value
    if ctx.scheme.holds_constants(ctx.party):
        b_plus = d.add(b_plus, f)
    value = d.iadd(d.iadd(d.matmul(e, b_plus), d.matmul(t.a.value, f)), t.c.value)
    mac = None
    if t.a.mac is not None and t.b.mac is not None and t.c.mac is not None:
        assert ctx.mac_key is not None  # invariant: MAC shares exist only with a MAC key
        mac_b = d.add(t.b.mac, d.mul(f, ctx.mac_key))
        mac = d.iadd(d.iadd(d.matmul(e, mac_b), d.matmul(t.a.mac, f)), t.c.mac)
    return Shared(value, mac)


async def truncate(ctx: MPCContext, x: Shared, bits: int | None = None) -> Shared:
    """Divide by ``2^bits`` (default ``frac_bits``) with rounding; error at most 1.5 units.

    Needs ``|x| < 2^62`` (ring) or ``|x| < 2^59`` (field). Result ``y`` satisfies
    ``|y - x / 2^bits| <= 1.5``.

    Ring (probabilistic truncation with an exact wrap bit, after [EGK+20] Sec. 5):
    1. ``x' = x + 2^62 + 2^(bits-1)`` is in [0, 2^63); open ``c = x' + r``.
    2. The wrap bit of the low 63 bits is ``b = msb(c) XOR msb(r)`` (linear).
    3. ``y = (c mod 2^63) >> bits - [(r mod 2^63) >> bits] + 2^(63-bits) [b] - 2^(62-bits)``,
       off by at most one unit from ``floor(x' / 2^bits)`` (the dropped low-bit borrow).

    Field (exact wrap by comparison, after [CS10]):
    1. ``x' = x + 2^59 + 2^(bits-1)`` in [0, 2^60); open ``c = x' + r`` for an edaBit ``r``.
    2. ``w = [c < r]`` by :func:`bit_less_than_public`, so ``x' = c - r + p w``.
    3. ``y = c >> bits - [r >> bits] + (p >> bits) [w] - 2^(59-bits)``, off by at most one unit.
    """
    f = ctx.fixed.frac_bits if bits is None else bits
    if f == 0:
        return x
    d, xp = ctx.domain, ctx.xp
    flat = x.reshape(-1)
    if d.name == "ring64":
        pair = await ctx.truncation_pairs(flat.shape, f)
        shifted = ctx.add_public(flat, d.scalar((1 << 62) + (1 << (f - 1))))
        (c,) = await ctx.open([ctx.add(shifted, pair.r)], "trunc")
        c_msb = c >> xp.uint64(63)
        b = ctx.add_public(ctx.mul_public(pair.r_msb, d.sub(d.scalar(1), d.add(c_msb, c_msb))), c_msb)
        low = (c & xp.uint64((1 << 63) - 1)) >> xp.uint64(f)
        y = ctx.sub(ctx.mul_public(b, d.scalar(1 << (63 - f))), pair.r_trunc)
        y = ctx.add_public(y, d.sub(low, d.scalar(1 << (62 - f))))
        return y.reshape(*x.shape)
    bits_r = await ctx.edabits(flat.shape)
    weights = xp.asarray([1 << i for i in range(d.bits)], dtype=xp.uint64)[:, None]
    r = ctx.sum(ctx.mul_public(bits_r, weights), axis=0)
    hi_weights = xp.asarray([0] * f + [1 << (i - f) for i in range(f, d.bits)], dtype=xp.uint64)[:, None]
    r_hi = ctx.sum(ctx.mul_public(bits_r, hi_weights), axis=0)
    shifted = ctx.add_public(flat, d.scalar((1 << 59) + (1 << (f - 1))))
    (c,) = await ctx.open([ctx.add(shifted, r)], "trunc")
    w = await bit_less_than_public(ctx, c, bits_r)
    y = ctx.sub(ctx.mul_public(w, d.scalar(P61 >> f)), r_hi)
    y = ctx.add_public(y, d.sub(c >> xp.uint64(f), d.scalar(1 << (59 - f))))
    return y.reshape(*x.shape)


async def fx_multiply(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Fixed-point product: Beaver product, then :func:`truncate` (error <= 1.5 ulp + encoding)."""
    return await truncate(ctx, await multiply(ctx, x, y))


async def fx_matmul(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Fixed-point matrix product: :func:`matmul`, then one batched :func:`truncate`."""
    return await truncate(ctx, await matmul(ctx, x, y))


async def dot(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Row-wise dot products over the last axis (integer; truncate for fixed point)."""
    return ctx.sum(await multiply(ctx, x, y), axis=len(x.shape) - 1)


async def bit_less_than_public(ctx: MPCContext, c: Array, r_bits: Shared) -> Shared:
    """``[c < r]`` for public ``c`` (shape (N,)) and shared bits of ``r`` (shape (K, N)).

    Comparison tree [CdH10, GSV07]: per bit ``lt_i = (1 - c_i) r_i`` and
    ``eq_i = 1 - (c_i XOR r_i)`` are linear; pairs merge as
    ``lt = lt_hi + eq_hi lt_lo``, ``eq = eq_hi eq_lo``: ceil(log2 K) rounds, 2K products.
    """
    lt, _ = await _compare_tree(ctx, c, r_bits, want_eq=False)
    return lt


async def bit_compare_public(ctx: MPCContext, c: Array, r_bits: Shared) -> tuple[Shared, Shared]:
    """``([c < r], [c == r])`` by the same tree as :func:`bit_less_than_public` (no extra round)."""
    lt, eq = await _compare_tree(ctx, c, r_bits, want_eq=True)
    assert eq is not None  # invariant: want_eq keeps eq
    return lt, eq


async def _compare_tree(ctx: MPCContext, c: Array, r_bits: Shared, *, want_eq: bool) -> tuple[Shared, Shared | None]:
    d, xp = ctx.domain, ctx.xp
    k = r_bits.shape[0]
    flat_r = r_bits.reshape(k, -1)
    shifts = xp.arange(k, dtype=xp.uint64)[:, None]
    c_bits = (xp.asarray(c, dtype=xp.uint64).reshape(1, -1) >> shifts) & xp.uint64(1)
    one = xp.uint64(1)
    lt = ctx.mul_public(flat_r, one - c_bits)
    eq = ctx.add_public(ctx.mul_public(flat_r, d.sub(d.add(c_bits, c_bits), d.scalar(1))), one - c_bits)
    while lt.shape[0] > 1:
        if lt.shape[0] % 2:
            width = lt.shape[1]
            lt = ctx.concat([lt, ctx.constant(d.zeros((1, width)))])
            eq = ctx.concat([eq, ctx.constant(d.from_signed(xp.ones((1, width), dtype=xp.int64)))])
        lo_lt, hi_lt, lo_eq, hi_eq = lt[0::2], lt[1::2], eq[0::2], eq[1::2]
        if lt.shape[0] == 2 and not want_eq:
            (prod,) = await multiply_many(ctx, [(hi_eq, lo_lt)])
            lt = ctx.add(hi_lt, prod)
        else:
            prod_lt, eq = await multiply_many(ctx, [(hi_eq, lo_lt), (hi_eq, lo_eq)])
            lt = ctx.add(hi_lt, prod_lt)
    shape = r_bits.shape[1:]
    return lt.reshape(*shape), (eq.reshape(*shape) if want_eq else None)


async def split_limbs(ctx: MPCContext, x: Shared, k: int, limbs: int) -> list[Shared]:
    """Exact base-``2^k`` limbs of shared integers ``0 <= x < 2^64`` (ring) or ``< p`` (field).

    Returns ``[a_0, ..., a_(L-1)]`` (least significant first) with ``x = sum a_j 2^(jk)``,
    ``0 <= a_j < 2^k`` below the top limb. Unlike :func:`truncate` (off by up to one
    unit) every limb is exact, so sums of limbs can be carried from one into the next.
    An exact Mod2m [CdH10] at each boundary ``m = k, 2k, ...``, all from one opening with
    a full-width edaBit mask (as in :func:`truncate`; the opening hides ``x`` perfectly in
    the ring and up to statistical distance about 2^-60 in the field, whose mask spans
    61 uniform bits) and one comparison tree:

    1. Take edaBits ``[r_i]``, ``[r] = sum 2^i [r_i]``; open ``c = x + r``.
    2. In one tree: ``w = [c < r]`` (so ``x = c - r + M w``, ``M`` the modulus) and, per
       boundary, ``u_m = [c mod 2^m < r mod 2^m]``, ``e_m = [c mod 2^m == r mod 2^m]``.
    3. Ring: ``x mod 2^m = c_m - r_m + 2^m u_m`` and
       ``x >> m = (c >> m) - (r >> m) - u_m + 2^(64-m) w``. Field (``p = -1 mod 2^m``):
       ``x mod 2^m = (c_m - r_m - w) mod 2^m``, whose borrow is ``u_m + e_m w`` (``u_m``
       and ``e_m`` exclude each other), and ``x >> m = (x - x mod 2^m) / 2^m`` (exact).
    4. ``a_0 = x mod 2^k``, ``a_j = (x >> jk) - 2^k (x >> (j+1)k)``, top ``x >> (L-1)k``.

    Rounds: 1 opening, the comparison tree, and (field) one product for every ``e_m w``.
    """
    d, xp = ctx.domain, ctx.xp
    bounds = [k * j for j in range(1, limbs)]
    if limbs < 2 or not 0 < k or bounds[-1] >= d.bits - 1:
        raise ValueError(f"split_limbs needs 2 or more limbs of k > 0 bits below {d.bits - 1} bits, got {limbs} x {k}")
    flat = x.reshape(-1)
    n = flat.shape[0]
    bits_r = await ctx.edabits(flat.shape)
    nbits = bits_r.shape[0]
    weights = xp.asarray([(1 << i) % (1 << 64) for i in range(nbits)], dtype=xp.uint64)[:, None]
    r = ctx.sum(ctx.mul_public(bits_r, weights), axis=0)
    (c,) = await ctx.open([ctx.add(flat, r)], "split")
    # One tree for every comparison: a low-m comparison pads r's bits with shared zeros.
    publics, shared = [c], [bits_r]
    for m in bounds:
        publics.append(c & xp.uint64((1 << m) - 1))
        shared.append(ctx.concat([bits_r[:m], ctx.constant(d.zeros((nbits - m, n)))]))
    lt, eq = await bit_compare_public(ctx, xp.concatenate(publics), ctx.concat(shared, axis=1))
    w = lt[:n]
    per = [(lt[(i + 1) * n:(i + 2) * n], eq[(i + 1) * n:(i + 2) * n]) for i in range(len(bounds))]
    highs: list[Shared] = []
    low_first: Shared | None = None
    if d.name == "ring64":
        for m, (u, _) in zip(bounds, per, strict=True):
            r_hi = ctx.sum(ctx.mul_public(bits_r[m:], weights[: nbits - m]), axis=0)
            hi = ctx.sub(ctx.add(ctx.neg(r_hi), ctx.mul_public(w, d.scalar(1 << (64 - m)))), u)
            highs.append(ctx.add_public(hi, c >> xp.uint64(m)))
            if low_first is None:
                r_lo = ctx.sum(ctx.mul_public(bits_r[:m], weights[:m]), axis=0)
                low_first = ctx.add_public(ctx.sub(ctx.mul_public(u, d.scalar(1 << m)), r_lo), publics[1])
    else:
        ews = await multiply_many(ctx, [(e, w) for _, e in per])
        for i, (m, (u, _)) in enumerate(zip(bounds, per, strict=True)):
            r_lo = ctx.sum(ctx.mul_public(bits_r[:m], weights[:m]), axis=0)
            lo = ctx.add_public(ctx.sub(ctx.sub(ctx.mul_public(ctx.add(u, ews[i]), d.scalar(1 << m)), r_lo), w),
                                publics[i + 1])
            highs.append(ctx.mul_public(ctx.sub(flat, lo), d.scalar(pow(1 << m, -1, P61))))
            if low_first is None:
                low_first = lo
    assert low_first is not None  # invariant: at least one boundary
    out = [low_first]
    for j in range(len(highs) - 1):
        out.append(ctx.sub(highs[j], ctx.mul_public(highs[j + 1], d.scalar(1 << k))))
    out.append(highs[-1])
    return [a.reshape(*x.shape) for a in out]


async def _xor(ctx: MPCContext, a: Shared, b: Shared) -> Shared:
    """``a XOR b = a + b - 2ab`` for shared bits."""
    (ab,) = await multiply_many(ctx, [(a, b)])
    return ctx.sub(ctx.add(a, b), ctx.mul_public(ab, ctx.domain.scalar(2)))


async def less_than_zero(ctx: MPCContext, x: Shared) -> Shared:
    """``[x < 0]`` as a shared 0/1 value, exact for every signed element.

    1. Take edaBits ``[r_i]`` and ``[r] = sum 2^i [r_i]``.
    2. Ring: open ``c = x + r``; ``msb(x) = msb(c) XOR r_63 XOR [c mod 2^63 < r mod 2^63]``.
       Field: open ``c = 2x + r``; ``x < 0`` iff ``2x mod p`` is odd, and
       ``lsb(2x) = c_0 XOR r_0 XOR [c < r]`` because p is odd [NO07].
    3. Compare with :func:`bit_less_than_public`, then one XOR.
    """
    d, xp = ctx.domain, ctx.xp
    flat = x.reshape(-1)
    bits_r = await ctx.edabits(flat.shape)
    weights = xp.asarray([(1 << i) % (1 << 64) for i in range(d.bits)], dtype=xp.uint64)[:, None]
    r = ctx.sum(ctx.mul_public(bits_r, weights), axis=0)
    one = xp.uint64(1)
    if d.name == "ring64":
        (c,) = await ctx.open([ctx.add(flat, r)], "ltz")
        top, r_top = c >> xp.uint64(63), bits_r[63]
        lt = await bit_less_than_public(ctx, c & xp.uint64((1 << 63) - 1), bits_r[:63])
    else:
        (c,) = await ctx.open([ctx.add(ctx.add(flat, flat), r)], "ltz")
        top, r_top = c & one, bits_r[0]
        lt = await bit_less_than_public(ctx, c, bits_r)
    a = ctx.add_public(ctx.mul_public(r_top, d.sub(d.scalar(1), d.add(top, top))), top)
    return (await _xor(ctx, a, lt)).reshape(*x.shape)


async def less_than(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """``[x < y]`` (needs ``x - y`` in the signed range)."""
    return await less_than_zero(ctx, ctx.sub(x, y))


async def relu(ctx: MPCContext, x: Shared) -> Shared:
    """``max(x, 0) = x (1 - [x < 0])``."""
    neg = await less_than_zero(ctx, x)
    keep = ctx.add_public(ctx.neg(neg), ctx.domain.scalar(1))
    return await multiply(ctx, x, keep)


async def maximum(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Elementwise ``max(x, y) = y + relu(x - y)``."""
    return ctx.add(y, await relu(ctx, ctx.sub(x, y)))


async def minimum(ctx: MPCContext, x: Shared, y: Shared) -> Shared:
    """Elementwise ``min(x, y) = x - relu(x - y)``."""
    return ctx.sub(x, await relu(ctx, ctx.sub(x, y)))


async def _reduce(ctx: MPCContext, x: Shared, take_max: bool) -> Shared:
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        a, b, rest = x[:half], x[half : 2 * half], x[2 * half :]
        r = await relu(ctx, ctx.sub(a, b))
        m = ctx.add(b, r) if take_max else ctx.sub(a, r)
        x = ctx.concat([m, rest]) if rest.shape[0] else m
    return x[0] if len(x.shape) > 1 else x  # a 1-D input keeps shape (1,)


async def max_reduce(ctx: MPCContext, x: Shared) -> Shared:
    """Maximum over axis 0 by a tournament tree: ceil(log2 N) comparison layers (1-D input: shape (1,))."""
    return await _reduce(ctx, x, True)


async def min_reduce(ctx: MPCContext, x: Shared) -> Shared:
    """Minimum over axis 0 by a tournament tree."""
    return await _reduce(ctx, x, False)


async def divide_public(ctx: MPCContext, x: Shared, divisor: float, *, quotient_bound: float | None = None) -> Shared:
    """Fixed-point ``x / divisor``: multiply by the reciprocal encoded with ``f + g`` bits, truncate by ``f + g``.

    ``g`` extra bits of the reciprocal are used when ``quotient_bound`` (a bound on
    ``|x / divisor|``) leaves room under the truncation limit (``|x/d| 2^(2f+g) < 2^b``
    with b = 62 ring, 59 field); ``g = 0`` without a bound. Error at most
    ``|x| 2^-(f+g+1) + 1.5 ulp`` (``x`` in real units).
    """
    if divisor == 0 or not math.isfinite(divisor):
        raise ValueError(f"divide_public needs a finite non-zero divisor, got {divisor!r}")
    f = ctx.fixed.frac_bits
    g = 0
    if quotient_bound is not None and quotient_bound > 0:
        limit = truncation_input_bits(ctx.domain) - 2 * f - math.ceil(math.log2(quotient_bound + 1)) - 1
        g = max(0, min(limit, 40 - f))
    recip = ctx.domain.from_signed(ctx.xp.asarray([round((1 << (f + g)) / divisor)], dtype=ctx.xp.int64))
    return await truncate(ctx, ctx.mul_public(x, recip), f + g)


SIGMOID_KNOTS = tuple(float(k) for k in range(-8, 9))
SIGMOID_MAX_ERROR = 0.0125
"""Bound on ``|sigmoid_approx(x) - 1/(1+e^-x)|``: linear interpolation on knots -8..8 step 1
errs by at most h^2 max|s''| / 8 < 0.0121, the flat tails by < 3.4e-4; plus a few ulp."""


async def sigmoid(ctx: MPCContext, x: Shared) -> Shared:
    """Piecewise-linear logistic function on knots -8..8 (error <= :data:`SIGMOID_MAX_ERROR`).

    ``s(x) = s(b_0) + sum_k (m_k - m_{k-1}) relu(x - b_k)`` with slopes ``m_k`` between
    knots (``m_{-1} = m_K = 0``):
    1. All ``x - b_k`` compared with 0 in one batched less-than.
    2. ``relu(x - b_k) = (x - b_k) [x >= b_k]`` in one batched product.
    3. Public slope changes, one sum and one truncation.
    """
    d, xp = ctx.domain, ctx.xp
    knots = np.array(SIGMOID_KNOTS)
    vals = 1.0 / (1.0 + np.exp(-knots))
    slopes = np.concatenate([[0.0], np.diff(vals) / np.diff(knots), [0.0]])
    coef = np.diff(slopes)
    flat = x.reshape(-1)
    k = len(knots)
    rows = ctx.broadcast_rows(flat, k)
    offsets = ctx.encode_fixed(-knots)[:, None]
    diffs = ctx.add_public(rows, xp.broadcast_to(offsets, rows.shape))
    neg = await less_than_zero(ctx, diffs)
    keep = ctx.add_public(ctx.neg(neg), d.scalar(1))
    relus = await multiply(ctx, diffs, keep)
    weighted = ctx.sum(ctx.mul_public(relus, ctx.encode_fixed(coef)[:, None]), axis=0)
    y = await truncate(ctx, weighted)
    y = ctx.add_public(y, ctx.encode_fixed(vals[:1]))
    return y.reshape(*x.shape)
