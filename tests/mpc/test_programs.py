"""Declarative programs (aggregate, linearScore, mlp) compiled and run on CSV-shaped inputs of
several owners, against numpy on the plaintext; in-MPC range checks exclude bad rows and open
only their count; outputs are delivered to a recipient and verified there (never opened
to the parties); malformed programs are rejected with precise errors."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest

from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.programs import ProgramError, compile_program, model_shapes
from program_run import Revealed, run_compiled

FIELDS = [{"name": "amount", "min": 0, "max": 1000}, {"name": "age", "min": 18, "max": 100}]


def owner_csv(seed: int, rows: int) -> str:
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["amount", "age"])
    for _ in range(rows):
        writer.writerow([f"{rng.uniform(-100, 1100):.4f}", f"{rng.uniform(10, 110):.2f}"])
    return out.getvalue()


def load_tables(count: int) -> dict[str, np.ndarray[Any, Any]]:
    cols: dict[str, list[float]] = {"amount": [], "age": []}
    for owner in range(count):
        for row in csv.DictReader(io.StringIO(owner_csv(owner, 40))):
            for k in cols:
                cols[k].append(float(row[k]))
    return {k: np.array(v) for k, v in cols.items()}


def run_plan(config: EngineConfig, program: dict[str, Any], model: dict[str, np.ndarray[Any, Any]] | None = None) -> tuple[Revealed, dict[str, np.ndarray[Any, Any]]]:
    table = load_tables(3)
    plan = compile_program(program, FIELDS, ring=config.domain().name == "ring64")
    return run_compiled(config, plan, table, model), table


def valid_mask(table: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    ok = np.ones(len(table["amount"]), dtype=bool)
    for f in FIELDS:
        col = table[str(f["name"])]
        ok &= (col >= f["min"]) & (col <= f["max"])
    return ok


AGG = {
    "aggregate": [
        {"op": "count", "field": "amount"},
        {"op": "sum", "field": "amount"},
        {"op": "mean", "field": "amount"},
        {"op": "variance", "field": "amount"},
        {"op": "min", "field": "age"},
        {"op": "max", "field": "age"},
        {"op": "histogram", "field": "amount", "bins": [100, 500, 900]},  # valid amounts below 100 and above 900 too
    ]
}


@pytest.mark.parametrize("config", [EngineConfig(3), EngineConfig(3, security="malicious"), EngineConfig(4, threshold=1, sharing="shamir")], ids=["ring", "malicious", "shamir"])
def test_aggregate_matches_numpy(config: EngineConfig) -> None:
    result, table = run_plan(config, AGG)
    ok = valid_mask(table)
    a, g = table["amount"][ok], table["age"][ok]
    assert result.rejected_rows == int((~ok).sum()) > 0
    o = result.opened
    assert o["count(amount)"] == ok.sum()
    assert o["sum(amount)"] == pytest.approx(a.sum(), abs=1e-3 * len(a))
    assert o["mean(amount)"] == pytest.approx(a.mean(), abs=1e-3)
    assert o["variance(amount)"] == pytest.approx(a.var(), rel=1e-4, abs=0.05)
    assert o["min(age)"] == pytest.approx(g.min(), abs=1e-4)
    assert o["max(age)"] == pytest.approx(g.max(), abs=1e-4)
    assert o["histogram(amount)"] == np.histogram(a, [100, 500, 900])[0].tolist()
    assert o["histogram(amount).below"] == int((a < 100).sum()) > 0
    assert o["histogram(amount).above"] == int((a > 900).sum()) > 0


@pytest.mark.parametrize("output", ["score", "sigmoid", "threshold"])
def test_linear_score_matches_numpy(output: str) -> None:
    body: dict[str, Any] = {"modelOwner": "insurer", "features": ["amount", "age"]}
    if output == "threshold":
        body["threshold"] = 0.5
    else:
        body["output"] = output
    model = {"weights": np.array([2.0**-8, -5 * 2.0**-8]), "bias": np.array([0.6875])}  # exact in fixed point
    result, table = run_plan(EngineConfig(3), {"linearScore": body}, model)
    ok = valid_mask(table)
    score = np.stack([table["amount"], table["age"]], 1) @ model["weights"] + model["bias"]
    if output == "sigmoid":
        ref = 1 / (1 + np.exp(-score))
        tol = 0.0125
    elif output == "threshold":
        ref = (score >= 0.5).astype(float)
        ref[np.abs(score - 0.5) < 1e-3] = np.nan  # ties within fixed-point error are either way
        tol = 0.0
    else:
        ref, tol = score, 1e-3
    got = result.opened["score"]
    mask = ok & ~np.isnan(ref)
    assert np.all(np.abs(got[mask] - ref[mask]) <= tol + 1e-9)
    assert np.all(got[~ok] == 0)


def test_mlp_matches_numpy() -> None:
    program = {"mlp": {"modelOwner": "insurer", "features": ["amount", "age"], "layers": [8, 4, 1]}}
    rng = np.random.default_rng(7)
    shapes = model_shapes(compile_program(program, FIELDS))
    model = {k: np.rint(rng.normal(size=s) * 0.05 * 2**16) / 2**16 for k, s in shapes.items()}  # on the fixed-point grid
    result, table = run_plan(EngineConfig(3), program, model)
    h = np.stack([table["amount"], table["age"]], 1)
    for i in range(3):
        h = h @ model[f"W{i}"] + model[f"b{i}"]
        if i < 2:
            h = np.maximum(h, 0)
    ok = valid_mask(table)
    assert np.allclose(result.opened["score"][ok], h[ok], atol=1e-3)
    assert np.all(result.opened["score"][~ok] == 0)


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ({}, "exactly one of"),
        ({"aggregate": [{"op": "median", "field": "amount"}]}, "median"),
        ({"aggregate": [{"op": "sum", "field": "salary"}]}, "undeclared fields"),
        ({"aggregate": [{"op": "histogram", "field": "amount", "bins": [5, 1]}]}, "increasing"),
        ({"mlp": {"features": ["amount"], "layers": [0]}}, "positive widths"),
        ({"linearScore": {"features": []}}, "non-empty"),
    ],
)
def test_malformed_programs_rejected(program: dict[str, Any], message: str) -> None:
    with pytest.raises(ProgramError, match=message):
        compile_program(program, FIELDS)
