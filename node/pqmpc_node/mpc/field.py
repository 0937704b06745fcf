"""The prime field F_p with the Mersenne prime p = 2^61 - 1 on uint64 arrays.

Why this prime: elements fit a uint64 with three spare bits, reduction is a shift and an
add (``x mod p = (x & p) + (x >> 61)``), a MAC key drawn from it makes a forged opening
pass a check with probability at most 2/p < 2^-59, which meets the 2^-40 target with
room to spare (see :mod:`pqmpc_node.mpc.mac`), and Shamir sharing needs a field.

Signed values live in (-p/2, p/2): ``x -> x mod p``.  Products use a 31/30-bit split so
every partial product fits 64 bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, DomainName
from pqmpc_node.mpc.matmul import mersenne_matmul

__all__ = ["MersenneField61", "P61"]

P61 = (1 << 61) - 1
_M31 = (1 << 31) - 1
_M30 = (1 << 30) - 1
_M32 = (1 << 32) - 1


class MersenneField61:
    """F_p, p = 2^61 - 1; elements are reduced uint64 xp arrays in [0, p)."""

    name: DomainName = "mersenne61"
    bits = 61
    signed_bound = P61 // 2 + 1
    modulus = P61

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp
        self._p = xp.uint64(P61)

    def __repr__(self) -> str:
        return "MersenneField61()"

    def _csub(self, x: Array) -> Array:
        """In place: ``x - p`` where ``x >= p``, for ``x < 2p`` (branch-free: the borrow bit selects ``+p``).

        ``np.where`` on a random mask costs ~10x more than arithmetic (branch mispredictions),
        so conditional subtraction is ``x -= p; x += (x >> 63) * p``: below p the difference
        wraps past 2^63 and the top bit adds p back.
        """
        xp = self.xp
        x -= self._p
        m = x >> xp.uint64(63)
        m *= self._p
        x += m
        return x

    def _reduce(self, x: Array) -> Array:
        """``x mod p`` for any uint64 ``x`` (a new array; ``x`` is left alone)."""
        xp = self.xp
        y = x & self._p
        y += x >> xp.uint64(61)
        return self._csub(y)

    def asarray(self, values: Any) -> Array:
        return self._reduce(self.xp.asarray(values, dtype=self.xp.uint64))

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self.xp.zeros(shape, dtype=self.xp.uint64)

    def add(self, a: Array, b: Array) -> Array:
        return self._csub(self.xp.add(a, b, dtype=self.xp.uint64))

    def iadd(self, a: Array, b: Array) -> Array:
        """``a + b`` written into ``a`` (which must be a writable uint64 array); returns ``a``."""
        a += b
        return self._csub(a)

    def sub(self, a: Array, b: Array) -> Array:
        xp = self.xp
        d = xp.subtract(a, b, dtype=xp.uint64)
        m = d >> xp.uint64(63)  # borrow: a < b
        m *= self._p
        d += m
        return d

    def neg(self, a: Array) -> Array:
        return self._csub(self.xp.subtract(self._p, a, dtype=self.xp.uint64))

    def mul(self, a: Array, b: Array) -> Array:
        xp = self.xp
        a = xp.asarray(a, dtype=xp.uint64)
        b = xp.asarray(b, dtype=xp.uint64)
        s31 = xp.uint64(31)
        m31 = xp.uint64(_M31)
        a0, a1 = a & m31, a >> s31
        b0, b1 = b & m31, b >> s31
        # a*b = a1 b1 2^62 + mid 2^31 + a0 b0, with 2^62 = 2 and 2^61 = 1 (mod p). In-place on
        # the full-shape temporaries (operands may broadcast): fresh pages dominate large arrays.
        mid = a1 * b0
        t = a0 * b1
        mid += t  # < 2^62
        xp.multiply(a1, b1, out=t)
        t <<= xp.uint64(1)  # 2 a1 b1 < 2^61
        lo = a0 * b0  # < 2^62
        t += lo
        xp.right_shift(mid, xp.uint64(30), out=lo)
        t += lo
        mid &= xp.uint64(_M30)
        mid <<= s31
        t += mid  # < 2^61 + 2^62 + 2^32 + 2^61: no wrap
        y = xp.bitwise_and(t, self._p, out=mid)
        t >>= xp.uint64(61)
        y += t
        return self._csub(y)

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
        # A 61-bit word equals p with probability 2^-61 and then maps to 0: bias 2^-61, negligible.
        return self._csub(self.xp.asarray(words, dtype=self.xp.uint64) & self._p)  # only p itself is >= p
