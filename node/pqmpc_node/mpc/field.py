"""The prime field F_p with the Mersenne prime p = 2^61 - 1 on uint64 arrays.

Why this prime: elements fit a uint64 with three spare bits, reduction is a shift and an
add (``x mod p = (x & p) + (x >> 61)``), a MAC key drawn from it makes a forged opening
pass a check with probability at most 2/p < 2^-59, which meets the 2^-40 target with
room to spare (see :mod:`pqmpc_node.mpc.mac`), and Shamir sharing needs a field.

Signed values live in (-p/2, p/2): ``x -> x mod p``.  Products use a 31/30-bit split so
every partial product fits 64 bits. A product by a public constant is cheaper: a small
one (``|k| <= 7``) needs no split (``k x <= 7p < 2^64``), one below 2^31 splits only x,
and a larger one has its own split computed once. Sums of such products
(:class:`LinearCombination`: Lagrange interpolation, PRSS) reduce lazily, once the next
term could wrap 64 bits.

Speed on the CPU. Each operation is a sequence of whole-array numpy passes (a product
takes about twenty), so on large arrays every pass streams its temporaries through main
memory. With numpy the passes therefore run over blocks of :data:`BLOCK` elements written
into one preallocated output: the block's temporaries stay in the core's cache, which
makes a million-element product about twice as fast. Blocking changes no result; cupy
(``xp`` not numpy) and operands whose shapes neither match nor are a single element run
each pass over the whole array instead. Conditional subtraction is ``min(x, x - p)`` in
unsigned arithmetic (below p, ``x - p`` wraps above x): branch-free, two passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, DomainName
from pqmpc_node.mpc.matmul import mersenne_matmul

__all__ = ["BLOCK", "LinearCombination", "MersenneField61", "P61", "SMALL_FACTOR"]

P61 = (1 << 61) - 1
_M31 = (1 << 31) - 1
_M30 = (1 << 30) - 1
_M32 = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

BLOCK = 1 << 14
"""Elements per block of a numpy kernel: a product's seven block arrays (operands, output,
four temporaries) take 896 KiB, inside a 1 MiB L2 cache; larger blocks spill it, smaller ones
pay more Python dispatch per element."""

SMALL_FACTOR = 7
"""Largest ``|k|`` multiplied without a split: ``k x <= 7p``, which still fits beside a folded
sum (``<= p + 7``) below 2^64: ``8p + 7 = 2^64 - 1``."""

_MEDIUM_FACTOR = 1 << 31  # |k| below this splits only x: x0 k < 2^62, x1 k < 2^61


class _Ops:
    """An array namespace with the field's constants in the form its ufuncs take fastest.

    numpy converts a 0-d array operand in about half the time of a numpy scalar (which
    matters on small arrays, where a product is twenty calls of under a microsecond each);
    cupy refuses numpy arrays and takes numpy scalars.
    """

    __slots__ = ("xp", "p", "s61", "s31", "s30", "one", "m31", "m30")

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.p, self.s61, self.s31, self.s30 = self.const(P61), self.const(61), self.const(31), self.const(30)
        self.one, self.m31, self.m30 = self.const(1), self.const(_M31), self.const(_M30)

    def const(self, value: int) -> Any:
        if self.xp is not np:
            return np.uint64(value)
        c = np.array(value, dtype=np.uint64)
        c.flags.writeable = False  # shared by every kernel call
        return c


@functools.cache
def _ops(xp: Any) -> _Ops:
    return _Ops(xp)


Kernel = Callable[..., None]
"""``kernel(ops, out, *operands, *temporaries)``: one operation written into ``out`` with ufunc passes."""


# -- kernels: every pass writes into ``out`` or a temporary of out's shape -------------------


def _csub(o: _Ops, out: Array, t: Array) -> None:
    """``out -= p`` where ``out >= p``, for ``out < 2p``: the unsigned minimum of ``out`` and ``out - p``."""
    o.xp.subtract(out, o.p, out=t)
    o.xp.minimum(out, t, out=out)


def _fold(o: _Ops, out: Array, x: Array, t: Array) -> None:
    """``out = (x & p) + (x >> 61) <= p + 7``, congruent to any uint64 ``x`` (``out`` may be ``x``)."""
    o.xp.right_shift(x, o.s61, out=t)
    o.xp.bitwise_and(x, o.p, out=out)
    out += t


def _add_kernel(o: _Ops, out: Array, a: Array, b: Array, t: Array) -> None:
    o.xp.add(a, b, out=out)
    _csub(o, out, t)


def _iadd_kernel(o: _Ops, out: Array, b: Array, t: Array) -> None:
    out += b
    _csub(o, out, t)


def _sub_kernel(o: _Ops, out: Array, a: Array, b: Array, t: Array) -> None:
    # a >= b: d < p <= d + p. a < b: d wraps above 2^63 and d + p wraps to p - (b - a) < d.
    o.xp.subtract(a, b, out=out)
    o.xp.add(out, o.p, out=t)
    o.xp.minimum(out, t, out=out)


def _neg_kernel(o: _Ops, out: Array, a: Array, t: Array) -> None:
    o.xp.subtract(o.p, a, out=out)
    _csub(o, out, t)


def _from_words_kernel(o: _Ops, out: Array, words: Array, t: Array) -> None:
    # A 61-bit word equals p with probability 2^-61 and then maps to 0: bias 2^-61, negligible.
    o.xp.bitwise_and(words, o.p, out=out)
    _csub(o, out, t)  # only p itself is >= p


def _reduce_kernel(o: _Ops, out: Array, x: Array, t: Array) -> None:
    _fold(o, out, x, t)
    _csub(o, out, t)


def _mul_kernel(o: _Ops, out: Array, a: Array, b: Array, t1: Array, t2: Array, t3: Array, t4: Array) -> None:
    """``a * b mod p`` for ``a, b <= p``: a = a1 2^31 + a0, b likewise (a0, b0 < 2^31; a1, b1 < 2^30)."""
    xp = o.xp
    xp.bitwise_and(a, o.m31, out=t1)  # a0
    xp.right_shift(a, o.s31, out=t2)  # a1
    xp.bitwise_and(b, o.m31, out=t3)  # b0
    xp.right_shift(b, o.s31, out=t4)  # b1
    # a*b = a1 b1 2^62 + mid 2^31 + a0 b0, with 2^62 = 2 and 2^61 = 1 (mod p).
    xp.multiply(t2, t3, out=out)  # a1 b0
    xp.multiply(t3, t1, out=t3)  # lo = a0 b0 < 2^62
    xp.multiply(t1, t4, out=t1)  # a0 b1
    out += t1  # mid < 2^62
    xp.multiply(t2, t4, out=t2)
    t2 <<= o.one  # 2 a1 b1 < 2^61
    t2 += t3
    xp.right_shift(out, o.s30, out=t1)
    t2 += t1
    out &= o.m30
    out <<= o.s31
    t2 += out  # < 2^61 + 2^62 + 2^32 + 2^61: no wrap
    _fold(o, out, t2, t1)
    _csub(o, out, t1)


# -- products by public constants: each writes a value congruent to k x into ``out`` and
#    returns an upper bound on it; ``out`` may be ``x`` (x is read before out is written).


def _times_small(o: _Ops, out: Array, x: Array, k: int) -> int:
    """``k x`` for ``1 <= |k| <= SMALL_FACTOR``, as ``|k| (p - x)`` when k < 0."""
    src = x
    if k < 0:
        o.xp.subtract(o.p, x, out=out)
        src = out
    if abs(k) != 1:
        o.xp.multiply(src, o.const(abs(k)), out=out)
    elif src is not out:
        o.xp.copyto(out, src)
    return abs(k) * P61


def _medium_bound(m: int) -> int:
    """An upper bound on :func:`_times_medium`'s output for ``|k| = m < 2^31`` (below 3 * 2^61)."""
    return _M31 * m + (_M30 << 31) + ((_M30 * m) >> 30)


def _times_medium(o: _Ops, out: Array, x: Array, k: int, t1: Array, t2: Array) -> int:
    """``k x`` for ``|k| < 2^31``: with x = x1 2^31 + x0 and h = x1 |k| < 2^61,
    ``h 2^31 = (h >> 30) 2^61 + (h & (2^30 - 1)) 2^31`` and 2^61 = 1 (mod p); negative k via p - x."""
    xp, m = o.xp, abs(k)
    if k < 0:
        xp.subtract(o.p, x, out=t2)
        x = t2
    xp.right_shift(x, o.s31, out=t1)
    xp.bitwise_and(x, o.m31, out=out)
    factor = o.const(m)
    out *= factor  # x0 |k| <= (2^31 - 1) |k|
    t1 *= factor  # h
    xp.left_shift(t1, o.s31, out=t2)
    t2 &= o.p  # (h & (2^30 - 1)) << 31
    out += t2
    t1 >>= o.s30
    out += t1
    return _medium_bound(m)


def _times_const(o: _Ops, out: Array, x: Array, c: int, t1: Array, t2: Array, t3: Array) -> int:
    """``c x`` for any ``0 <= c < p``, c split like the general product (its halves computed once)."""
    xp = o.xp
    c0, c1, c1x2 = o.const(c & _M31), o.const(c >> 31), o.const(2 * (c >> 31))
    xp.right_shift(x, o.s31, out=t2)  # x1
    xp.bitwise_and(x, o.m31, out=t1)  # x0
    xp.multiply(t2, c0, out=out)
    xp.multiply(t1, c0, out=t3)  # lo
    t1 *= c1
    out += t1  # mid < 2^62
    t2 *= c1x2  # 2 x1 c1 < 2^62
    t2 += t3
    xp.right_shift(out, o.s30, out=t1)
    t2 += t1
    out &= o.m30
    out <<= o.s31
    t2 += out  # < 2^63
    _fold(o, out, t2, t1)
    return P61 + 7


class LinearCombination:
    """``out = sum_i c_i x_i mod p`` over public integers c_i, terms added one at a time.

    Each term is a product by a constant (small, medium or split, see the module
    docstring); the sum stays unreduced while an upper bound on it (tracked exactly in
    Python) leaves room for the next term below 2^64, and is folded to ``<= p + 7``
    otherwise (room for any term: ``p + 7 + 7p = 2^64 - 1``). :meth:`finish` makes every
    element canonical. ``x`` is an element ``<= p`` (p counts as 0) or, with
    ``words=True``, any uint64 word taken as its low 61 bits (like
    :meth:`MersenneField61.from_words`). ``out`` and four temporaries have one shape and
    are distinct from the terms.
    """

    __slots__ = ("_ops", "_out", "_t", "_bound")

    def __init__(self, xp: Any, out: Array, temps: Sequence[Array]) -> None:
        if len(temps) < 4:
            raise ValueError(f"LinearCombination needs 4 temporaries, got {len(temps)}")
        self._ops, self._out, self._t = _ops(xp), out, temps
        self._bound = -1  # no term yet

    def add(self, c: int, x: Array, *, words: bool = False) -> None:
        """Add ``c * x`` (mod p)."""
        o, t = self._ops, self._t
        c %= P61
        if c == 0:
            return
        k = c if c <= P61 // 2 else c - P61  # signed: -k x costs as little as k x
        m = abs(k)
        bound = m * P61 if m <= SMALL_FACTOR else _medium_bound(m) if m < _MEDIUM_FACTOR else P61 + 7
        if self._bound >= 0 and self._bound + bound > _U64_MAX:
            _fold(o, self._out, self._out, t[1])
            self._bound = P61 + 7
        if self._bound >= 0 and k == 1 and not words:
            self._out += x
            self._bound += P61
            return
        dst = self._out if self._bound < 0 else t[0]
        if words:
            o.xp.bitwise_and(x, o.p, out=dst)
            x = dst
        if m <= SMALL_FACTOR:
            _times_small(o, dst, x, k)
        elif m < _MEDIUM_FACTOR:
            _times_medium(o, dst, x, k, t[1], t[2])
        else:
            _times_const(o, dst, x, c, t[1], t[2], t[3])
        if dst is self._out:
            self._bound = bound
        else:
            self._out += dst
            self._bound += bound

    def finish(self) -> Array:
        """Reduce the sum to canonical elements in ``out`` (zeros for no terms); returns ``out``."""
        o, out, t = self._ops, self._out, self._t[0]
        if self._bound < 0:
            out[...] = 0
        elif self._bound >= 2 * P61:
            _fold(o, out, out, t)
            _csub(o, out, t)
        elif self._bound >= P61:
            _csub(o, out, t)
        self._bound = P61 - 1
        return out


def _lincomb_kernel(coeffs: Sequence[int]) -> Kernel:
    def kernel(o: _Ops, out: Array, *rest: Array) -> None:
        arrays, temps = rest[: len(coeffs)], rest[len(coeffs):]
        comb = LinearCombination(o.xp, out, temps)
        for c, x in zip(coeffs, arrays, strict=True):
            comb.add(c, x)
        comb.finish()

    return kernel


# -- the domain --------------------------------------------------------------------------


def _broadcast_shape(operands: Sequence[Array]) -> tuple[int, ...]:
    """The shape of an elementwise result (operands of one shape skip numpy's general rule, 2 us a call)."""
    shape: tuple[int, ...] = operands[0].shape
    for o in operands[1:]:
        if o.shape != shape:
            return tuple(np.broadcast_shapes(*(x.shape for x in operands)))
    return shape


def _host_scalar(value: Any) -> int | None:
    """The integer of a single-element host operand (numpy or Python), else None (cupy arrays stay on the device)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        return int(value.reshape(-1)[0])
    return None


class MersenneField61:
    """F_p, p = 2^61 - 1; elements are reduced uint64 xp arrays in [0, p)."""

    name: DomainName = "mersenne61"
    bits = 61
    signed_bound = P61 // 2 + 1
    modulus = P61

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp
        self._p = xp.uint64(P61)
        self._host = xp is np
        self._ops = _ops(xp)

    def __repr__(self) -> str:
        return "MersenneField61()"

    # -- the block driver --------------------------------------------------------------
    def _apply(self, kernel: Kernel, operands: Sequence[Any], temps: int, out: Array | None = None) -> Array:
        """``kernel`` over ``operands`` into ``out`` (a fresh array of the broadcast shape when None).

        With numpy, when every operand has out's shape or a single element, the kernel runs
        block by block on flat views (block temporaries, reused); otherwise once over the whole
        shape (small arrays, cupy, or operands that broadcast against each other).
        """
        xp = self.xp
        if out is None:
            out = xp.empty(_broadcast_shape(operands), dtype=xp.uint64)
        if out.size <= BLOCK or not self._host or not self._blocked(kernel, out, operands, temps):
            shape = out.shape
            kernel(self._ops, out, *operands, *[xp.empty(shape, dtype=xp.uint64) for _ in range(temps)])
        return out

    def _blocked(self, kernel: Kernel, out: Array, operands: Sequence[Any], temps: int) -> bool:
        """Run ``kernel`` block by block when the operands allow it (numpy); whether it ran."""
        if not out.flags.c_contiguous:
            return False
        flat: list[tuple[Any, bool]] = []
        for o in operands:
            if np.shape(o) == out.shape:
                if o is not out and np.may_share_memory(o, out):
                    return False  # an overlapping operand: numpy's whole-array ufuncs buffer it
                flat.append((o.reshape(-1), True))
            elif np.size(o) == 1:
                flat.append((np.asarray(o).reshape(()), False))
            else:
                return False
        n = int(out.size)
        out_flat = out.reshape(-1)
        buf = [np.empty(BLOCK, dtype=np.uint64) for _ in range(temps)]
        for lo in range(0, n, BLOCK):
            hi = min(n, lo + BLOCK)
            kernel(self._ops, out_flat[lo:hi], *[o[lo:hi] if sliced else o for o, sliced in flat], *[t[: hi - lo] for t in buf])
        return True

    def _u64(self, a: Any) -> Array:
        return self.xp.asarray(a, dtype=self.xp.uint64)

    # -- the Domain interface -----------------------------------------------------------
    def _reduce(self, x: Array) -> Array:
        """``x mod p`` for any uint64 ``x`` (a new array; ``x`` is left alone)."""
        return self._apply(_reduce_kernel, [self._u64(x)], 1)

    def asarray(self, values: Any) -> Array:
        return self._reduce(self.xp.asarray(values, dtype=self.xp.uint64))

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self.xp.zeros(shape, dtype=self.xp.uint64)

    def add(self, a: Array, b: Array) -> Array:
        return self._apply(_add_kernel, [self._u64(a), self._u64(b)], 1)

    def iadd(self, a: Array, b: Array) -> Array:
        """``a + b`` written into ``a`` (which must be a writable uint64 array); returns ``a``."""
        return self._apply(_iadd_kernel, [self._u64(b)], 1, out=a)

    def sub(self, a: Array, b: Array) -> Array:
        return self._apply(_sub_kernel, [self._u64(a), self._u64(b)], 1)

    def neg(self, a: Array) -> Array:
        return self._apply(_neg_kernel, [self._u64(a)], 1)

    def mul(self, a: Array, b: Array) -> Array:
        """``a * b mod p``; a host constant operand (numpy or Python, one element) takes the constant paths.

        The path follows the constant's size. A secret single-element share (a MAC-key
        share) is uniform, so it takes the split path but with probability below 2^-29:
        the running time tells nothing about it that matters.
        """
        c = _host_scalar(b)
        if c is None:
            a, b, c = b, a, _host_scalar(a)
        if c is None or not 0 <= c <= P61:  # no host constant (or not an element): the general product
            return self._apply(_mul_kernel, [self._u64(a), self._u64(b)], 4)
        a = self._u64(a)
        shape = a.shape if np.ndim(b) == 0 else tuple(np.broadcast_shapes(a.shape, np.shape(b)))
        return self._apply(_lincomb_kernel([c]), [a.reshape(shape)], 4, out=self.xp.empty(shape, dtype=self.xp.uint64))

    def lincomb(self, coeffs: Sequence[int], arrays: Sequence[Array]) -> Array:
        """``sum_i coeffs[i] * arrays[i] mod p`` for public integer coefficients and arrays of one shape."""
        if len(coeffs) != len(arrays) or not arrays:
            raise ValueError(f"lincomb needs one coefficient per array and at least one array, got {len(coeffs)} "
                             f"coefficients for {len(arrays)} arrays")
        operands = [self._u64(x) for x in arrays]
        shape = operands[0].shape
        if any(x.shape != shape for x in operands):
            raise ValueError(f"lincomb needs arrays of one shape, got {[x.shape for x in operands]}")
        return self._apply(_lincomb_kernel([int(c) for c in coeffs]), operands, 4,
                           out=self.xp.empty(shape, dtype=self.xp.uint64))

    def matmul(self, a: Array, b: Array) -> Array:
        return mersenne_matmul(self.xp, a, b)

    def sum(self, a: Array, axis: int | None = None) -> Array:
        xp = self.xp
        lo = xp.sum(a & xp.uint64(_M32), axis=axis, dtype=xp.uint64)  # < 2^32 * count
        hi = xp.sum(a >> xp.uint64(32), axis=axis, dtype=xp.uint64)  # < 2^29 * count
        lo = self._reduce(self._reduce(xp.atleast_1d(lo)))
        hi = self._reduce(self._reduce(xp.atleast_1d(hi)))
        return self.add(self.mul(hi, xp.uint64(1 << 32)), lo)

    def scalar(self, value: int) -> Any:
        return self.xp.uint64(value % P61)

    def from_signed(self, values: Any) -> Array:
        xp = self.xp
        v = xp.asarray(values, dtype=xp.int64)
        return (v % xp.int64(P61)).astype(xp.uint64)

    def to_signed(self, values: Array) -> np.ndarray[Any, np.dtype[np.int64]]:
        from pqmpc_node.mpc.backend import to_host

        v = to_host(values).astype(np.uint64)
        half = np.uint64(P61 // 2)
        return np.where(v > half, v.astype(np.int64) - np.int64(P61), v.astype(np.int64))

    def is_canonical(self, values: Array) -> bool:
        """Every element ``< p`` (uint64 words ``>= p`` are not field elements; see :class:`NonCanonicalError`)."""
        return not bool(values.size) or bool((values < self._p).all())

    def from_words(self, words: Any) -> Array:
        """Uniform words to uniform elements: the low 61 bits, with p itself mapped to 0 (bias 2^-61)."""
        return self._apply(_from_words_kernel, [self._u64(words)], 1)
