"""The ring Z_2^64 on uint64 arrays: wrap-around arithmetic is the hardware's own.

Signed values use two's complement: ``from_signed`` maps int64 to uint64 and
``to_signed`` back, exact for ``-2^63 <= x < 2^63``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, DomainName
from pqmpc_node.mpc.matmul import ring_matmul

__all__ = ["Ring64"]


class Ring64:
    """Z_2^64; elements are uint64 xp arrays."""

    name: DomainName = "ring64"
    bits = 64
    signed_bound = 1 << 63

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp

    def __repr__(self) -> str:
        return "Ring64()"

    def asarray(self, values: Any) -> Array:
        return self.xp.asarray(values, dtype=self.xp.uint64)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self.xp.zeros(shape, dtype=self.xp.uint64)

    def add(self, a: Array, b: Array) -> Array:
        return a + b

    def iadd(self, a: Array, b: Array) -> Array:
        a += b
        return a

    def sub(self, a: Array, b: Array) -> Array:
        return a - b

    def neg(self, a: Array) -> Array:
        return self.xp.uint64(0) - a

    def mul(self, a: Array, b: Array) -> Array:
        return a * b

    def matmul(self, a: Array, b: Array) -> Array:
        return ring_matmul(self.xp, a, b)

    def sum(self, a: Array, axis: int | None = None) -> Array:
        return self.xp.atleast_1d(self.xp.sum(a, axis=axis, dtype=self.xp.uint64))

    def scalar(self, value: int) -> Any:
        return self.xp.uint64(value % (1 << 64))

    def from_signed(self, values: Any) -> Array:
        return self.xp.asarray(values, dtype=self.xp.int64).view(self.xp.uint64)

    def to_signed(self, values: Array) -> np.ndarray[Any, np.dtype[np.int64]]:
        from pqmpc_node.mpc.backend import to_host

        return to_host(values).view(np.int64)

    def is_canonical(self, values: Array) -> bool:
        """Every uint64 word is an element of Z_2^64."""
        return True

    def from_words(self, words: Any) -> Array:
        return self.xp.asarray(words, dtype=self.xp.uint64)
