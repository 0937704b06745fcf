"""The numbers a program computes on, bounded at compile time so that no result can wrap.

Every value the engine holds is an integer modulo ``p = 2^61 - 1`` (malicious and
Shamir sessions) or ``2^64`` (additive semi-honest): exact as long as every intermediate
stays inside the signed range. This module decides, from the declared ranges, the row
bound and the model's shapes, how each number is encoded, and proves each intermediate
fits; a program that cannot fit is refused before any data arrives
(:class:`NumericsError`, naming the field, the bound and what to change).

**Aggregates** (``count``, ``sum``, ``mean``, ``variance``, ``min``, ``max``,
``histogram``) encode each field as an integer in units of ``10^-decimals`` (the
field's declared or automatic resolution; a value is rounded to the nearest unit on
the data owner's machine). Everything the engine computes on them is integer
arithmetic, so the results are exact:

* ``sum``, ``min``, ``max`` are the exact sums/extremes of the units; ``count`` and
  ``histogram`` exact counts;
* ``mean`` is delivered as the exact sum and divided by the public valid-row count at
  the recipient (information-equivalent to the mean, since the count is public);
* ``variance`` (population) is delivered as the exact integer
  ``V = N sum(y^2) - (sum y)^2`` over the valid rows (``y = x - min``, shifted into
  ``[0, R]``), divided by ``N^2`` at the recipient; ``V`` is a function of the variance
  and the public ``N``, so it reveals nothing more. ``V`` reaches ``(N R)^2 / 4``, far
  beyond one element (2^92 for 100 000 rows of cents in ``[0, 10^6]``), so it is
  computed in **two-limb arithmetic** (:class:`VarianceLimbs`): each ``y`` is split
  exactly into ``a 2^k + b`` (:func:`~pqmpc_node.mpc.protocols.split_low`), the three
  limb products are summed, and ``V = C2 2^(2k) + 2 C1 2^k + C0`` with
  ``C2 = N sum a^2 - (sum a)^2``, ``C1 = N sum ab - (sum a)(sum b)``,
  ``C0 = N sum b^2 - (sum b)^2``, each of which fits; carrying ``C0`` and ``2 C1``
  into the next limb with exact splits gives the canonical digits
  ``[floor(V / 2^2k), digit 1, digit 0]`` (a function of ``V`` alone), which is what the
  recipient receives.

Bounds (``N`` rows at most, ``U = max(|min|, |max|)``, ``R = max - min`` and
``H = ceil(R / 2)``, all in units; ``2^cap`` the exact signed range, cap = 60 in the
field, 63 in the ring):

* comparisons (range checks, min/max, histogram): ``R < 2^(cap-1)``;
* ``sum`` and ``mean``: ``N U < 2^cap``;
* ``variance``: every limb quantity of :func:`variance_limbs` below ``2^cap``, for
  some limb size ``k``;
* encoding on the owner's machine (float64): ``U < 2^53``.

``decimals`` left out is chosen automatically: the largest in ``[d0, 6]`` that fits,
where ``d0`` is the fewest decimals that represent the field's bounds and histogram
edges exactly.

**Models** (``linearScore``, ``mlp``) compute in binary fixed point with ``f``
fractional bits (truncation after each product). Products accumulate ``2f`` fractional
bits before truncation, so every layer needs ``fan_in * |h| * W * 2^(2f) < 2^(tb-1)``
(``tb`` = 59 field, 62 ring, :func:`~pqmpc_node.mpc.fixedpoint.truncation_input_bits`)
with ``|h|`` the bound of the layer's inputs (features: their declared range; hidden
layers: the previous bound ``fan_in |h| W + W``) and ``W`` the declared
``weightBound``, which the engine checks on the model owner's parameters inside MPC.
``f`` is the largest in ``[8, 16]`` that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "AUTO_MAX_DECIMALS",
    "MAX_DECIMALS",
    "DEFAULT_MAX_ROWS_PER_OWNER",
    "DEFAULT_WEIGHT_BOUND",
    "MODEL_FRAC_BITS",
    "NumericsError",
    "RowBound",
    "FieldNumerics",
    "OutputDecoding",
    "bits_text",
    "variance_limbs",
    "VarianceLimbs",
    "capacity_bits",
    "decimals_needed",
    "decode_exact",
]

MAX_DECIMALS = 9
AUTO_MAX_DECIMALS = 6
DEFAULT_MAX_ROWS_PER_OWNER = 10_000
DEFAULT_WEIGHT_BOUND = 16.0
MODEL_FRAC_BITS = (16, 8)
"""Largest and smallest fractional bits the model compiler picks from."""
FLOAT_EXACT_BITS = 53


class NumericsError(ValueError):
    """A program whose numbers cannot be computed exactly; says where, why and what to change."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"spec.{path}: {problem}; {fix}")


def capacity_bits(ring: bool) -> int:
    """``cap`` such that every signed integer with ``|v| < 2^cap`` is exact in the domain."""
    return 63 if ring else 60


def bits_text(x: int | float) -> str:
    """``x`` as a power of two, for messages (``2^60.0``)."""
    return f"2^{math.log2(x):.1f}" if x > 0 else "0"


def decimals_needed(x: float) -> int | None:
    """Fewest decimals that write ``x`` exactly (up to :data:`MAX_DECIMALS`); None if more."""
    for d in range(MAX_DECIMALS + 1):
        scaled = x * 10**d
        if abs(scaled - round(scaled)) <= 1e-9 * max(1.0, abs(scaled)):
            return d
    return None


@dataclass(frozen=True)
class RowBound:
    """How many rows a session can hold: ``owners`` data owners, each at most ``per_owner`` rows."""

    owners: int = 1
    per_owner: int = DEFAULT_MAX_ROWS_PER_OWNER

    @property
    def total(self) -> int:
        return self.owners * self.per_owner

    def describe(self) -> str:
        return f"{self.total} rows ({self.owners} owners x maxRowsPerOwner {self.per_owner})"


@dataclass(frozen=True)
class VarianceLimbs:
    """Two-limb variance parameters: limb size ``k`` bits and the public offset ``K`` that
    makes the middle limb non-negative before its carry is split off."""

    k: int
    offset: int


def variance_limbs(rows: int, span: int, cap: int) -> VarianceLimbs | None:
    """The limb size with the most headroom for ``rows`` values in ``[0, span]``, or None if none fits.

    Bounds (``aM = span >> k``, ``bM = min(2^k - 1, span)``, ``N = rows``):
    ``0 <= C2 <= N^2 aM^2``, ``|C1| <= N^2 aM bM``, ``0 <= C0 <= N^2 bM^2``; the middle
    limb ``T1 = 2 C1 + (C0 >> k) + K 2^k`` with ``K 2^k >= 2 N^2 aM bM`` lies in
    ``[0, 2^cap)``, and the top digit ``C2 + (T1 >> k) - K`` too.
    """
    best: tuple[int, VarianceLimbs] | None = None
    n2 = rows * rows
    for k in range(1, cap - 1):
        beta = 1 << k
        a_max, b_max = span >> k, min(beta - 1, span)
        c2, c1, c0 = n2 * a_max * a_max, n2 * a_max * b_max, n2 * b_max * b_max
        offset = (2 * c1 + beta - 1) // beta + 1
        t1 = 2 * c1 + (c0 >> k) + offset * beta
        t2 = c2 + (t1 >> k)
        worst = max(c2, c1, c0, t1, t2)
        if worst < 2**cap and (best is None or worst < best[0]):
            best = (worst, VarianceLimbs(k, offset))
    return None if best is None else best[1]


@dataclass(frozen=True)
class FieldNumerics:
    """One field's integer encoding: a value ``v`` is the integer ``round(v * 10^decimals)``."""

    name: str
    min: float
    max: float
    decimals: int
    variance: VarianceLimbs | None = None
    """Set when the program computes the field's variance."""

    @property
    def scale(self) -> int:
        return int(10**self.decimals)

    def units(self, value: float, what: str) -> int:
        """``value`` in units, refused unless it is a whole number of units (a bound, a bin edge)."""
        scaled = value * self.scale
        exact = int(round(scaled))
        if abs(scaled - exact) > 1e-9 * max(1.0, abs(scaled)):
            raise NumericsError(
                f"inputs[].fields[{self.name}].decimals",
                f"{what} {value!r} is not a whole number of units 10^-{self.decimals}",
                f"declare decimals: {decimals_needed(value) or MAX_DECIMALS} (or leave decimals out to choose automatically)",
            )
        return exact

    @property
    def lo(self) -> int:
        return self.units(self.min, "min")

    @property
    def hi(self) -> int:
        return self.units(self.max, "max")

    @property
    def center(self) -> int:
        return (self.lo + self.hi) // 2

    @property
    def half_range(self) -> int:
        """``H``: every in-range value is within ``H`` units of :attr:`center`."""
        return max(self.hi - self.center, self.center - self.lo)

    @property
    def magnitude(self) -> int:
        """``U``: the largest absolute value in units of an in-range value."""
        return max(abs(self.lo), abs(self.hi))

    def encode(self, values: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Values rounded to the nearest unit, as int64; refuses NaN, infinity and values that overflow."""
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"field {self.name!r} holds NaN or infinity; every value must be a finite number")
        scaled = v * self.scale
        limit = float(2**FLOAT_EXACT_BITS)
        if scaled.size and float(np.max(np.abs(scaled))) >= limit:
            worst = float(v.reshape(-1)[int(np.argmax(np.abs(scaled)))])
            raise ValueError(f"field {self.name!r} value {worst!r} is too large to encode with {self.decimals} decimals "
                             f"(|v| must be < {limit / self.scale:.6g}); values outside [{self.min:g}, {self.max:g}] "
                             "would be rejected anyway: drop or fix the row")
        return np.rint(scaled).astype(np.int64)


@dataclass(frozen=True)
class OutputDecoding:
    """How a recipient turns an output's reconstructed integers into numbers.

    ``value = y / (scale * valid_rows^count_power)``, exact as a fraction; an integral
    value is returned as ``int``, any other as the nearest float.
    """

    scale: int
    count_power: int = 0
    limb_bits: int = 0
    """Non-zero: the output's integers are digits, most significant first, in base ``2^limb_bits``."""


def decode_exact(decoding: OutputDecoding, values: list[int], valid_rows: int) -> list[int | float]:
    """Apply ``decoding`` to signed integers; a zero count (undefined statistic) divides by 1."""
    denominator = decoding.scale * max(valid_rows, 1) ** decoding.count_power
    if decoding.limb_bits:
        whole = 0
        for digit in values:
            whole = (whole << decoding.limb_bits) + digit
        values = [whole]
    out: list[int | float] = []
    for v in values:
        q = Fraction(v, denominator)
        out.append(int(q) if q.denominator == 1 else float(q))
    return out
