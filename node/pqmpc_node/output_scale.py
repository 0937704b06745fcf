"""At which scale a result is shown: each output's decimal places, from the compiled program.

The engine's aggregates are exact (:mod:`pqmpc_node.mpc.numerics`), and the recipient
holds each value as a fraction; what a person reads is that fraction rounded to the
resolution the session declared, never the float nearest to it (``233.27999877929688``
for a fixed-point 233.28). Pure: data in, text out.
"""

from __future__ import annotations

import math
from fractions import Fraction

from pqmpc_node.mpc.programs import AggregatePlan, ExecutionPlan

__all__ = ["output_decimals", "rounded_text"]


def output_decimals(plan: ExecutionPlan) -> dict[str, int]:
    """Decimal places each output is shown with, from the compiled program's declarations.

    ``sum``, ``min`` and ``max`` at their field's ``decimals`` (exact there); ``mean`` and
    ``variance`` two places more (the mean of the whole numbers 1 and 2 is 1.5; a
    variance, in squared units, would need ``2 * decimals`` places to be exact, which
    reads as noise again: ``exact`` has it); counts, histograms and a histogram's
    ``.below``/``.above`` range counts are integers (0). A model's
    ``score`` at the places its fixed point resolves (``ceil(frac_bits * log10 2)``: 5 for
    16 fractional bits).
    """
    if not isinstance(plan, AggregatePlan):
        return {"score": math.ceil(plan.frac_bits * math.log10(2))}
    places: dict[str, int] = {}
    for op in plan.ops:
        d = plan.numerics[op.field].decimals if op.field in plan.numerics else 0
        places[op.output_name] = {"count": 0, "histogram": 0, "mean": d + 2, "variance": d + 2}.get(op.op, d)
        if op.op == "histogram":
            places.update((name, 0) for name in op.range_outputs)
    return places


def rounded_text(q: Fraction, places: int) -> str:
    """``q`` rounded half to even to ``places`` decimals, written exactly (``Fraction(69984, 300), 2 -> "233.28"``)."""
    units = round(q * 10**places)  # exact: Fraction.__round__ rounds half to even on the integers
    sign = "-" if units < 0 else ""
    digits = str(abs(units))
    if not places:
        return f"{sign}{digits}"
    digits = digits.rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
