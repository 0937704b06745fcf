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
  beyond one element (2^93 for 100 000 rows in ``[-10^9, 10^9]``), so it is computed in
  **multi-limb arithmetic** (:class:`VarianceLimbs`): each ``y`` is split exactly into
  limbs ``a_j`` of ``k`` bits (:func:`~pqmpc_node.mpc.protocols.split_limbs`), the limb
  products are summed, and ``V = sum_m 2^(mk) T_m`` with
  ``T_m = sum_(i+j=m) w_ij (N sum a_i a_j - A_i A_j)`` (``A_i = sum a_i``), each of which
  fits; carrying each ``T_m`` into the next position with exact splits gives the
  canonical base-``2^k`` digits of ``V`` (a function of ``V`` alone), most significant
  first, which is what the recipient receives. Two limbs when they fit, up to four.

Bounds (``N`` rows at most, ``U = max(|min|, |max|)`` and ``R = max - min``, all in
units; ``2^cap`` the exact signed range, cap = 60 in the field, 63 in the ring):

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

import decimal
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "AUTO_MAX_DECIMALS",
    "MAX_DECIMALS",
    "MAX_VARIANCE_LIMBS",
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
    "decode_fractions",
    "exact_text",
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
    """Fewest decimals that write ``x`` exactly (up to :data:`MAX_DECIMALS`); None if more.

    Judged on the shortest decimal that round-trips the float (``repr``), i.e. what the
    user wrote: ``1e9 + 0.5`` needs 1, ``123456789.25`` needs 2, ``1e-10`` more than 9.
    """
    if not math.isfinite(x):
        return None
    exponent = decimal.Decimal(repr(float(x))).normalize().as_tuple().exponent
    needed = max(0, -exponent) if isinstance(exponent, int) else 0
    return needed if needed <= MAX_DECIMALS else None


@dataclass(frozen=True)
class RowBound:
    """How many rows a session can hold: ``owners`` data owners, each at most ``per_owner`` rows."""

    owners: int = 1
    per_owner: int = DEFAULT_MAX_ROWS_PER_OWNER

    @property
    def total(self) -> int:
        return self.owners * self.per_owner

    def describe(self) -> str:
        return f"{self.total} rows ({self.owners} owner{'' if self.owners == 1 else 's'} x maxRowsPerOwner {self.per_owner})"


@dataclass(frozen=True)
class VarianceLimbs:
    """Multi-limb variance parameters: ``limbs`` limbs of ``k`` bits, and the public
    offsets ``K_m`` that make digit position ``m`` non-negative before its carry is split off."""

    k: int
    limbs: int
    offsets: tuple[int, ...]


MAX_VARIANCE_LIMBS = 4


def variance_limbs(rows: int, span: int, cap: int) -> VarianceLimbs | None:
    """The fewest limbs (then the limb size with the most headroom) that keep every digit exact.

    With ``y = sum a_j 2^(jk)`` (``a_j <= aM_j``: ``2^k - 1`` below the top limb,
    ``span >> (L-1)k`` for it), ``V = sum_m 2^(mk) T_m`` with
    ``T_m = sum_(i+j=m) w_ij (N sum a_i a_j - A_i A_j)`` (``w_ii = 1``, ``w_ij = 2``):
    diagonal terms lie in ``[0, N^2 aM_i^2]``, cross terms in ``+-2 N^2 aM_i aM_j``.
    Carrying position ``m`` splits ``X_m = T_m + carry_(m-1) + K_m 2^k``, with ``K_m``
    the least offset making ``X_m >= 0``; every ``X_m`` and the top digit must stay
    below ``2^cap``. None if no ``L <= 4``, ``k`` fits.
    """
    n2 = rows * rows
    for limbs in range(2, MAX_VARIANCE_LIMBS + 1):
        best: tuple[int, VarianceLimbs] | None = None
        for k in range(1, cap - 1):
            if k * (limbs - 1) >= cap - 1 or (limbs > 2 and span >> (k * (limbs - 2)) < (1 << k)):
                break  # past the domain, or fewer limbs would do
            beta = 1 << k
            a_max = [min(beta - 1, span >> (k * j)) for j in range(limbs - 1)] + [span >> (k * (limbs - 1))]
            pos, neg = [0] * (2 * limbs - 1), [0] * (2 * limbs - 1)
            for i in range(limbs):
                for j in range(i, limbs):
                    term = n2 * a_max[i] * a_max[j] * (1 if i == j else 2)
                    pos[i + j] += term
                    if i != j:
                        neg[i + j] += term
            offsets, worst, carry_lo, carry_hi = [], 0, 0, 0
            for m in range(2 * limbs - 2):
                low = carry_lo - neg[m]
                offset = max(0, -(low // beta))  # K_m: the least with low + K_m 2^k >= 0
                high = pos[m] + carry_hi + offset * beta
                worst = max(worst, high, neg[m])
                carry_lo, carry_hi = (low + offset * beta) // beta - offset, high // beta - offset
                offsets.append(offset)
            worst = max(worst, pos[-1] + carry_hi)
            if worst < 2**cap and (best is None or worst < best[0]):
                best = (worst, VarianceLimbs(k, limbs, tuple(offsets)))
        if best is not None:
            return best[1]
    return None


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
        """``value`` in units, refused unless it is a whole number of units (a bound, a bin edge).

        Exact: decided on the decimal the float stands for (its ``repr``), not with a tolerance.
        """
        needed = decimals_needed(value)
        if needed is None or needed > self.decimals:
            raise NumericsError(
                f"inputs[].fields[{self.name}].decimals",
                f"{what} {value!r} is not a whole number of units 10^-{self.decimals}",
                f"declare decimals: {needed if needed is not None else MAX_DECIMALS} (or leave decimals out to choose "
                "automatically)" if needed is not None else "round it to at most 9 decimals",
            )
        return int(decimal.Decimal(repr(float(value))).scaleb(self.decimals))

    @property
    def lo(self) -> int:
        return self.units(self.min, "min")

    @property
    def hi(self) -> int:
        return self.units(self.max, "max")

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


def decode_fractions(decoding: OutputDecoding, values: list[int], valid_rows: int) -> list[Fraction]:
    """The exact values of an output's signed integers; a zero count (undefined statistic) divides by 1."""
    denominator = decoding.scale * max(valid_rows, 1) ** decoding.count_power
    if decoding.limb_bits:
        whole = 0
        for digit in values:
            whole = (whole << decoding.limb_bits) + digit
        values = [whole]
    return [Fraction(v, denominator) for v in values]


def decode_exact(decoding: OutputDecoding, values: list[int], valid_rows: int) -> list[int | float]:
    """:func:`decode_fractions` as numbers: an ``int`` when integral, else the nearest float."""
    return [int(q) if q.denominator == 1 else float(q) for q in decode_fractions(decoding, values, valid_rows)]


def exact_text(q: Fraction) -> str:
    """``q`` written exactly: a terminating decimal when it has one (``"12.345"``), else ``"p/q"``."""
    den, twos, fives = q.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{q.numerator}/{q.denominator}"
    places = max(twos, fives)
    scaled = abs(q.numerator) * (10**places // q.denominator)
    sign = "-" if q < 0 else ""
    if not places:
        return f"{sign}{scaled}"
    digits = str(scaled).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
