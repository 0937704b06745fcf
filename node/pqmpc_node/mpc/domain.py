"""The arithmetic domain interface shared by the ring Z_2^64 and the prime field.

Protocols are written once against :class:`Domain`; elements are xp arrays of uint64.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["Domain", "DomainName", "Array"]

Array = Any  # an xp (numpy or cupy) array of uint64 elements
DomainName = Literal["ring64", "mersenne61"]


class Domain(Protocol):
    """Elementwise arithmetic, matrix products and encodings for one domain.

    Arrays are at least one-dimensional (``sum`` keeps one axis) so that numpy's
    wrap-around arithmetic on uint64 never meets its scalar overflow warnings.
    """

    name: DomainName
    xp: Any
    bits: int  # bit length of an element (edaBits have this many bits)
    signed_bound: int  # |x| < signed_bound for to_signed / from_signed round trips

    def asarray(self, values: Any) -> Array: ...
    def zeros(self, shape: tuple[int, ...]) -> Array: ...
    def add(self, a: Array, b: Array) -> Array: ...
    def iadd(self, a: Array, b: Array) -> Array:
        """``a + b`` written into ``a`` (a writable array of the result's shape); returns ``a``."""
        ...

    def sub(self, a: Array, b: Array) -> Array: ...
    def neg(self, a: Array) -> Array: ...
    def mul(self, a: Array, b: Array) -> Array: ...
    def matmul(self, a: Array, b: Array) -> Array: ...
    def sum(self, a: Array, axis: int | None = None) -> Array: ...
    def scalar(self, value: int) -> Any: ...
    def from_signed(self, values: Any) -> Array: ...
    def to_signed(self, values: Array) -> np.ndarray[Any, np.dtype[np.int64]]: ...
    def from_words(self, words: Any) -> Array: ...
    def is_canonical(self, values: Array) -> bool:
        """Whether every element of ``values`` is a canonical domain element (F_p: ``< p``)."""
        ...
