"""Fixed-point encoding of reals as integers scaled by 2^f (default f = 16 fractional bits).

``encode(v) = round(v * 2^f)`` as a signed integer in the domain; ``decode`` divides back.

Bounds (``ulp = 2^-f``; with f = 16 an ulp is about 1.5e-5):

* Encoding error: at most ulp/2 per value; values must satisfy ``|v| < 2^(62 - f)``
  (ring, about 7.0e13 at f = 16) or ``|v| < 2^(59 - f)`` (field, about 8.8e12), checked.
* A product of two encodings carries 2f fractional bits before truncation, so a
  fixed-point product needs ``|a * b| < 2^(62 - 2f)`` (ring: 2^30, about 1.07e9) or
  ``|a * b| < 2^(59 - 2f)`` (field: 2^27, about 1.34e8). Sums of products (dot products,
  matrix products) must respect the same bound on the accumulated value.
* Truncation adds an error of at most 1.5 ulp (see
  :func:`pqmpc_node.mpc.protocols.truncate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, Domain

__all__ = ["FixedPoint", "FixedPointRangeError", "DEFAULT_FRAC_BITS", "truncation_input_bits"]

DEFAULT_FRAC_BITS = 16


class FixedPointRangeError(ValueError):
    """A value does not fit the fixed-point range of the domain."""


def truncation_input_bits(domain: Domain) -> int:
    """``b`` such that truncation and products need ``|x| < 2^b`` in the integer encoding."""
    return 62 if domain.name == "ring64" else 59


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point parameters: ``frac_bits`` fractional bits."""

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 28:
            raise ValueError(f"frac_bits must be in [0, 28], got {self.frac_bits}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def ulp(self) -> float:
        return 1.0 / self.scale

    def max_abs(self, domain: Domain) -> float:
        """Largest magnitude (exclusive) that :meth:`encode` accepts for ``domain``."""
        return float(2 ** (truncation_input_bits(domain) - self.frac_bits))

    def encode_int(self, values: Any, domain: Domain) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Scaled, rounded signed integers (host int64), range-checked."""
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise FixedPointRangeError("fixed-point encoding needs finite values (found NaN or infinity)")
        limit = self.max_abs(domain)
        if v.size and float(np.max(np.abs(v))) >= limit:
            raise FixedPointRangeError(
                f"value {float(np.max(np.abs(v)))!r} does not fit {domain.name} fixed point with "
                f"{self.frac_bits} fractional bits (|v| must be < {limit:.3g}); lower frac_bits or rescale the data"
            )
        return np.rint(v * self.scale).astype(np.int64)

    def encode(self, values: Any, domain: Domain) -> Array:
        """Domain elements encoding ``values``."""
        return domain.from_signed(domain.xp.asarray(self.encode_int(values, domain)))

    def decode(self, elements: Array, domain: Domain) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Reals (host float64) from domain elements."""
        return domain.to_signed(elements).astype(np.float64) / self.scale
