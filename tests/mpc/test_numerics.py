"""Numbers users can trust: every statistic is exact (or the program is refused at compile time).

Aggregates compute on integers in units of each field's decimals, the variance in two
exact limbs, and a recipient divides by the public count as an exact fraction; models
run in fixed point whose precision is proven to fit, with the model owner's weights
range-checked inside MPC. The engine's answers are compared with exact rational
arithmetic (:class:`fractions.Fraction`) over the same rounded inputs — equality, not
a tolerance — on hypothesis-drawn ranges up to ``[-1e9, 1e9]`` and row bounds up to
100 000, and at the row bound itself with the values that maximise every intermediate.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pqmpc_local.mpc_simulation import make_contexts, run_local
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.numerics import NumericsError, RowBound
from pqmpc_node.mpc.programs import (
    AggregatePlan,
    ModelOutOfRangeError,
    ProgramError,
    SessionInputs,
    compile_program,
    encode_column,
    run_session,
)
from program_run import run_compiled

OPS = ("count", "sum", "mean", "variance", "min", "max", "histogram")
CONFIGS = {
    "ring-semi-honest": EngineConfig(2),
    "field-malicious": EngineConfig(3, security="malicious"),
    "shamir-malicious": EngineConfig(3, threshold=1, sharing="shamir", security="malicious"),
}


def exact_fractions(plan: AggregatePlan, values: np.ndarray[Any, Any]) -> dict[str, Fraction]:
    """The exact value of every scalar statistic of ``values`` (one field ``x``) over its valid rows."""
    num = plan.numerics["x"]
    valid = [u for u in (int(v) for v in np.rint(values * num.scale)) if num.lo <= u <= num.hi]
    n, s, q = len(valid), sum(valid), sum(u * u for u in valid)
    if not n:
        return {}
    return {"sum(x)": Fraction(s, num.scale), "mean(x)": Fraction(s, n * num.scale),
            "variance(x)": Fraction(n * q - s * s, n * n * num.scale**2),
            "min(x)": Fraction(min(valid), num.scale), "max(x)": Fraction(max(valid), num.scale)}


def exact_answers(plan: AggregatePlan, values: np.ndarray[Any, Any]) -> dict[str, Any]:
    """What every op must return for ``values`` (one field ``x``), by exact rational arithmetic."""
    num = plan.numerics["x"]
    units = [int(u) for u in np.rint(values * num.scale)]
    valid = [u for u in units if num.lo <= u <= num.hi]
    n, s = len(valid), sum(valid)
    q = sum(u * u for u in valid)

    def out(f: Fraction) -> int | float:
        return int(f) if f.denominator == 1 else float(f)

    answers: dict[str, Any] = {}
    for op in plan.ops:
        name = op.output_name
        if op.op == "count":
            answers[name] = n
        elif op.op == "sum":
            answers[name] = out(Fraction(s, num.scale))
        elif op.op == "histogram":
            edges = [num.units(b, "bin") for b in op.bins]
            answers[name] = [sum(1 for u in valid if edges[k] <= u < edges[k + 1] or (k == len(edges) - 2 and u == edges[-1]))
                             for k in range(len(edges) - 1)]
            below, above = op.range_outputs
            answers[below] = sum(1 for u in valid if u < edges[0])
            answers[above] = sum(1 for u in valid if u > edges[-1])
        elif not n:
            answers[name] = None
        elif op.op == "mean":
            answers[name] = out(Fraction(s, n * num.scale))
        elif op.op == "variance":
            answers[name] = out(Fraction(n * q - s * s, n * n * num.scale**2))
        elif op.op == "min":
            answers[name] = out(Fraction(min(valid), num.scale))
        elif op.op == "max":
            answers[name] = out(Fraction(max(valid), num.scale))
    return answers


def program_of(ops: list[str], lo: float, hi: float) -> dict[str, Any]:
    body: list[dict[str, Any]] = []
    for op in ops:
        item: dict[str, Any] = {"op": op, "field": "x"}
        if op == "histogram":
            mid = float((int(lo) + int(hi)) // 2)
            item["bins"] = [lo, mid, hi] if lo < mid < hi else [lo, hi]
        body.append(item)
    return {"aggregate": body}


@st.composite
def sessions(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[dict[str, Any]], RowBound, np.ndarray[Any, Any]]:
    """A config, an aggregate program over one field, its row bound and a small table drawn at the extremes."""
    config = draw(st.sampled_from(sorted(CONFIGS)))
    lo = float(draw(st.integers(-10**9, 10**9 - 1)))
    hi = float(draw(st.integers(int(lo) + 1, 10**9)))
    decimals = draw(st.one_of(st.none(), st.integers(0, 4)))
    ops = draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=len(OPS), unique=True))
    rows = RowBound(draw(st.integers(1, 3)), draw(st.integers(1, 100_000)))
    n = draw(st.integers(0, min(24, rows.total)))
    picks = draw(st.lists(st.sampled_from(["lo", "hi", "mid", "frac", "below", "above"]), min_size=n, max_size=n))
    base = {"lo": lo, "hi": hi, "mid": (lo + hi) / 2, "frac": lo + (hi - lo) / 3, "below": lo - 1, "above": hi + 1}
    values = np.array([base[p] for p in picks] or [lo], dtype=np.float64)
    field: dict[str, Any] = {"name": "x", "min": lo, "max": hi, **({} if decimals is None else {"decimals": decimals})}
    return config, program_of(ops, lo, hi), [field], rows, values


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_every_aggregate_is_exact_or_refused_at_compile_time(
        case: tuple[str, dict[str, Any], list[dict[str, Any]], RowBound, np.ndarray[Any, Any]]) -> None:
    name, program, fields, rows, values = case
    config = CONFIGS[name]
    try:
        plan = compile_program(program, fields, rows=rows, ring=config.domain().name == "ring64")
    except NumericsError as exc:
        # A refusal names where, why, and what to change.
        assert str(exc).startswith(f"spec.{exc.path}: ") and exc.fix and ("maxRowsPerOwner" in exc.fix or "range" in exc.fix
                                                                          or "decimals" in exc.fix)
        event(f"refused: {exc.path.split('[')[0]}")
        return
    event("computed exactly")
    assert isinstance(plan, AggregatePlan)
    revealed = run_compiled(config, plan, {"x": values})
    want = exact_answers(plan, values)
    for op_name, value in want.items():
        assert revealed.opened[op_name] == value, (op_name, revealed.opened[op_name], value, plan.numerics)
    for op_name, fraction in exact_fractions(plan, values).items():
        if op_name in revealed.exact:  # the exact rational itself, not only its nearest float
            assert revealed.exact[op_name] == [fraction], (op_name, revealed.exact[op_name], fraction)


# -- at the row bound, with the values that maximise every intermediate ---------------------


@pytest.mark.parametrize(
    ("config", "lo", "hi", "rows", "ops"),
    [
        # 100 000 rows of [-1e9, 1e9] at 4 decimals: sums of 2^59.8 units, a variance numerator
        # of 2^119 in four limbs.
        (EngineConfig(2), -1e9, 1e9, 100_000, ["count", "sum", "mean", "variance", "min", "max"]),
        # 20 000 rows of amounts in [0, 1e6] at 6 decimals: malicious field arithmetic, three limbs.
        (EngineConfig(2, security="malicious"), 0.0, 1e6, 20_000, ["sum", "mean", "variance"]),
    ],
    ids=["ring-100k-rows-1e9", "field-20k-rows"],
)
def test_exact_at_the_row_bound_with_extreme_values(config: EngineConfig, lo: float, hi: float, rows: int,
                                                    ops: list[str]) -> None:
    plan = compile_program(program_of(ops, lo, hi), [{"name": "x", "min": lo, "max": hi}], rows=RowBound(1, rows),
                           ring=config.domain().name == "ring64")
    assert isinstance(plan, AggregatePlan)
    rng = np.random.default_rng(11)
    values = np.where(rng.random(rows) < 0.5, lo, hi)  # the largest variance and sums the bound allows
    values[:3] = [hi, hi - 10**-plan.numerics["x"].decimals, lo]
    revealed = run_compiled(config, plan, {"x": values})
    want = exact_answers(plan, values)
    assert {k: revealed.opened[k] for k in want} == want
    assert {k: revealed.exact[k] for k in exact_fractions(plan, values) if k in revealed.exact} == {
        k: [f] for k, f in exact_fractions(plan, values).items() if k in revealed.exact}


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_the_issues_failing_cases_are_exact(config: EngineConfig) -> None:
    """Reported wrong before: variance over [0, 1e6] of 4 rows (was 17,751,288), and means off by up to 22.4."""
    ring = config.domain().name == "ring64"
    fields = [{"name": "x", "min": 0, "max": 1e6}]
    plan = compile_program(program_of(["mean", "variance"], 0, 1e6), fields, rows=RowBound(2, 500), ring=ring)
    out = run_compiled(config, plan, {"x": np.array([100000.0, 200000.0, 300000.0, 400000.0])}).opened
    assert out["variance(x)"] == 12_500_000_000 and out["mean(x)"] == 250_000
    rng = np.random.default_rng(3)
    values = np.round(rng.uniform(0, 1e5, 500), 2)
    plan = compile_program(program_of(["mean", "variance"], 0, 1e5), [{"name": "x", "min": 0, "max": 1e5}],
                           rows=RowBound(1, 500), ring=ring)
    out = run_compiled(config, plan, {"x": values}).opened
    assert out == exact_answers(plan, values) and out["variance(x)"] > 0


# -- refusals, word for word ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "program", "rows", "message"),
    [
        ({"name": "x", "min": -1e9, "max": 1e9, "decimals": 6}, program_of(["variance"], -1e9, 1e9),
         RowBound(1, 100_000),
         "spec.program.aggregate[variance(x)]: the variance of up to 100000 rows (1 owner x maxRowsPerOwner 100000) "
         "of x spanning 2000000000000000 units of 10^-6 ([-1e+09, 1e+09]) needs (rows x span)^2 / 4 = 2^132.9, "
         "beyond what 4 60-bit limbs carry exactly; set spec.maxRowsPerOwner to at most 54540, declare fewer "
         "decimals, or narrow [min, max] of x"),
        ({"name": "x", "min": -1e9, "max": 1e9, "decimals": 6}, program_of(["sum"], -1e9, 1e9), RowBound(2, 100_000),
         "spec.program.aggregate[sum(x)]: the sum of up to 200000 rows (2 owners x maxRowsPerOwner 100000) of |x| <= "
         "1000000000000000 units of 10^-6 can reach 2^67.4, beyond the exact range 2^60; set spec.maxRowsPerOwner to "
         "at most 576, declare fewer decimals, or narrow [min, max] of x"),
        ({"name": "x", "min": 0, "max": 10, "decimals": 1}, {"aggregate": [{"op": "histogram", "field": "x",
                                                                            "bins": [0, 2.25, 10]}]}, RowBound(),
         "spec.inputs[].fields[x].decimals: histogram bin edge 2.25 is not a whole number of units 10^-1; declare "
         "decimals: 2 (or leave decimals out to choose automatically)"),
        ({"name": "x", "min": 0, "max": 1e12, "decimals": 4}, program_of(["max"], 0, 1e12), RowBound(),
         "spec.inputs[].fields[x]: [0, 1e+12] at 4 decimals reaches 2^53.2 units of 10^-4, more than the 2^53 a "
         "float64 encodes exactly; declare fewer decimals or narrow the range"),
    ],
    ids=["variance-too-wide", "sum-too-many-rows", "bin-edge-finer-than-decimals", "beyond-float64"],
)
def test_refusals_say_what_is_wrong_and_what_to_change(field: dict[str, Any], program: dict[str, Any], rows: RowBound,
                                                       message: str) -> None:
    with pytest.raises(NumericsError) as caught:
        compile_program(program, [field], rows=rows)
    assert str(caught.value) == message


def test_automatic_decimals_take_the_most_that_fit() -> None:
    fields = [{"name": "x", "min": -1e9, "max": 1e9}]
    plan = compile_program(program_of(["sum", "variance"], -1e9, 1e9), fields, rows=RowBound(1, 100_000))
    assert isinstance(plan, AggregatePlan)
    num = plan.numerics["x"]
    assert num.decimals == 4  # 100 000 sums of 1e13 units fit 2^60; at 5 decimals they would not
    assert num.variance is not None and num.variance.limbs == 4
    with pytest.raises(NumericsError, match=r"^spec\.program\.aggregate\[sum\(x\)\]"):
        compile_program(program_of(["sum", "variance"], -1e9, 1e9), [{**fields[0], "decimals": 5}],
                        rows=RowBound(1, 100_000))
    small = compile_program(program_of(["variance"], 0, 1e6), [{"name": "x", "min": 0, "max": 1e6}],
                            rows=RowBound(2, 10_000))
    assert small.numerics["x"].decimals == 6 and small.numerics["x"].variance.limbs == 3  # type: ignore[union-attr]


def test_histogram_edges_far_outside_the_range_count_exactly() -> None:
    """An edge far beyond [min, max] (2e18 units here) is clamped, not allowed to wrap the comparison."""
    fields = [{"name": "x", "min": 0, "max": 1}]
    plan = compile_program({"aggregate": [{"op": "histogram", "field": "x", "bins": [-5e12, 0.5, 2e12]}]}, fields)
    out = run_compiled(EngineConfig(3, security="malicious"), plan, {"x": np.array([0.0, 0.25, 0.5, 1.0])}).opened
    assert out["histogram(x)"] == [2, 2]
    assert out["histogram(x).below"] == 0 and out["histogram(x).above"] == 0
    with pytest.raises(ProgramError, match="not a finite number"):
        compile_program({"aggregate": [{"op": "histogram", "field": "x", "bins": [0, float("inf")]}]}, fields)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_histogram_reports_the_valid_rows_below_and_above_its_edges(config: str) -> None:
    """Rows inside [min, max] but outside the edges are counted, not dropped; rows outside [min, max] are neither.

    Edges at 0.5 and 3.5 of [-2, 10] (decimals 1): a value at the first edge is in bin 0,
    one at the last edge in the last bin (closed, as numpy's), one a unit beyond either
    edge is below or above; every valid row lands in exactly one count.
    """
    fields = [{"name": "x", "min": -2, "max": 10, "decimals": 1}]
    plan = compile_program({"aggregate": [{"op": "histogram", "field": "x", "bins": [0.5, 2, 3.5]}]}, fields,
                           ring=CONFIGS[config].domain().name == "ring64")
    x = np.array([-2.0, -1.0, 0.4, 0.5, 1.9, 2.0, 3.5, 3.6, 9.9, 10.0, -2.1, 10.1, 0.0])
    out = run_compiled(CONFIGS[config], plan, {"x": x}).opened
    valid = x[(x >= -2) & (x <= 10)]
    assert out["histogram(x)"] == np.histogram(valid, [0.5, 2, 3.5])[0].tolist() == [2, 2]
    assert out["histogram(x).below"] == int(np.count_nonzero(valid < 0.5)) == 4  # -2, -1, 0.4, 0
    assert out["histogram(x).above"] == int(np.count_nonzero(valid > 3.5)) == 3  # 3.6, 9.9, 10
    assert sum(out["histogram(x)"]) + out["histogram(x).below"] + out["histogram(x).above"] == len(valid)


# -- models ---------------------------------------------------------------------------------------


def test_model_precision_is_chosen_to_fit_or_refused() -> None:
    fields = [{"name": "a", "min": 0, "max": 1e5}, {"name": "b", "min": 0, "max": 100}]
    small = compile_program({"linearScore": {"features": ["a", "b"], "weightBound": 1}}, fields)
    wide = compile_program({"mlp": {"features": ["a", "b"], "layers": [64, 64, 1], "weightBound": 4}}, fields)
    assert small.frac_bits == 16 and 8 <= wide.frac_bits < 16  # type: ignore[union-attr]
    with pytest.raises(NumericsError) as caught:
        compile_program({"mlp": {"features": ["a", "b"], "layers": [1024, 1024, 1], "weightBound": 16}}, fields)
    assert str(caught.value) == (
        "spec.program.mlp.weightBound: layers[2] of the mlp can accumulate |sum| <= 4.29931e+14 (1024 inputs, "
        "weightBound 16), and products need |sum| x 2^(2f) < 2^58 (here 2^64.6 with f = 8 fractional bits); lower "
        "weightBound, narrow the features' ranges, or use narrower layers")


@pytest.mark.parametrize("inside", [True, False])
def test_model_weights_outside_their_bound_abort_inside_mpc(inside: bool) -> None:
    """A model owner that bypasses the client's check and shares a weight of 5 under weightBound 4 is refused
    by the parties before any product is computed."""
    config = EngineConfig(3, security="malicious")
    fields = [{"name": "a", "min": 0, "max": 10}]
    plan = compile_program({"linearScore": {"features": ["a"], "weightBound": 4}}, fields)
    contexts, dealer = make_contexts(config, seed=b"model-bound-seed-0123456789abcde")
    d = contexts[0].domain
    fx = FixedPoint(plan.frac_bits)  # type: ignore[union-attr]
    weight = 3.5 if inside else 5.0

    async def party(ctx: MPCContext) -> Any:
        cols = {"a": dealer.share_input(ctx.party, encode_column(plan, "a", np.array([1.0, 2.0]), d), "a")}
        model = {"weights": dealer.share_input(ctx.party, fx.encode([weight], d), "w"),
                 "bias": dealer.share_input(ctx.party, fx.encode([0.5], d), "b")}
        try:
            return await run_session(ctx, plan, SessionInputs(cols, model))
        except ModelOutOfRangeError as exc:
            return exc

    outcomes = asyncio.run(run_local(contexts, party))
    if inside:
        assert not any(isinstance(o, BaseException) for o in outcomes)
    else:
        assert all(isinstance(o, ModelOutOfRangeError) for o in outcomes)
        assert str(outcomes[0]) == ("some of the model owner's 2 parameters lie outside weightBound [-4, 4]; nothing "
                                    "was computed: the model owner must resubmit a model within the bound (or the "
                                    "session must declare a larger one)")
