"""Table: op x range x rows, the MPC result a recipient gets next to the exact answer.

Usage: .venv/bin/python benchmarks/numerics_table.py [--max-rows N] [--semi-honest]
Prints ONE JSON object on stdout (progress on stderr): for each declared range and row
count (up to ``N``, default 100 000), the session is compiled with that row bound
(malicious, additive, n = 3, over F_p; with ``--semi-honest``: additive, n = 2, over
Z_2^64, which runs 100 000 rows in under a minute here) and
run in-process on the values that maximise every intermediate (half the rows at each
end of the range, plus the middle); every op's result is compared with exact rational
arithmetic on the same rounded inputs. A compile-time refusal is reported as such, with
its message. ``mpc`` is the recipient's exact value (written out), ``error`` is
|MPC - exact| as a fraction ("0" means equal), ``as_float`` the nearest float.
"""

from __future__ import annotations

import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "mpc"))

from program_run import run_compiled  # noqa: E402  (the tests' in-process runner: encode, run, deliver, decode)
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.numerics import NumericsError, RowBound, exact_text  # noqa: E402
from pqmpc_node.mpc.programs import AggregatePlan, compile_program  # noqa: E402

OPS = ["count", "sum", "mean", "variance", "min", "max", "histogram"]
RANGES = [(0.0, 1e3), (0.0, 1e6), (-1e9, 1e9)]


def exact(plan: AggregatePlan, values: np.ndarray[Any, Any]) -> dict[str, Any]:
    num = plan.numerics["x"]
    u = [int(v) for v in np.rint(values * num.scale)]
    n, s, q = len(u), sum(u), sum(v * v for v in u)
    edges = [num.units(b, "bin") for b in next(o.bins for o in plan.ops if o.op == "histogram")]
    hist = [sum(1 for v in u if edges[k] <= v < edges[k + 1] or (k == len(edges) - 2 and v == edges[-1]))
            for k in range(len(edges) - 1)]
    return {"count(x)": n, "sum(x)": Fraction(s, num.scale), "mean(x)": Fraction(s, n * num.scale),
            "variance(x)": Fraction(n * q - s * s, n * n * num.scale**2), "min(x)": Fraction(min(u), num.scale),
            "max(x)": Fraction(max(u), num.scale), "histogram(x)": hist}


def main() -> None:
    args = sys.argv[1:]
    max_rows = int(args[args.index("--max-rows") + 1]) if "--max-rows" in args else 100_000
    rows_list = [r for r in (1_000, 20_000, 100_000) if r <= max_rows]
    semi = "--semi-honest" in args
    config = EngineConfig(2) if semi else EngineConfig(3, security="malicious")
    table = []
    for lo, hi in RANGES:
        for rows in rows_list:
            program = {"aggregate": [{"op": o, "field": "x", **({"bins": [lo, (lo + hi) / 2, hi]} if o == "histogram" else {})}
                                     for o in OPS]}
            case = {"range": [lo, hi], "rows": rows}
            try:
                plan = compile_program(program, [{"name": "x", "min": lo, "max": hi}], rows=RowBound(1, rows), ring=semi)
            except NumericsError as exc:
                table.append({**case, "refused": str(exc)})
                print(f"{case}: refused", file=sys.stderr, flush=True)
                continue
            assert isinstance(plan, AggregatePlan)
            rng = np.random.default_rng(rows)
            values = np.where(rng.random(rows) < 0.5, lo, hi)
            values[:2] = [(lo + hi) / 2, lo + (hi - lo) / 3]
            t0 = time.perf_counter()
            revealed = run_compiled(config, plan, {"x": values})
            seconds = time.perf_counter() - t0
            want = exact(plan, values)
            ops = {}
            for name, w in want.items():
                if isinstance(w, list):  # histogram counts, integers
                    ops[name] = {"mpc": revealed.opened[name], "exact": w, "error": 0 if revealed.opened[name] == w else None}
                    continue
                g = revealed.exact[name][0] if name in revealed.exact else Fraction(revealed.opened[name])
                ops[name] = {"mpc": exact_text(g), "exact": exact_text(w), "error": str(abs(g - w)),
                             "as_float": revealed.opened[name]}
            table.append({**case, "decimals": plan.numerics["x"].decimals, "seconds": round(seconds, 2), "ops": ops})
            print(f"{case}: {seconds:.1f}s", file=sys.stderr, flush=True)
    name = "additive n=2 semi-honest (Z_2^64)" if semi else "additive n=3 malicious (F_p)"
    print(json.dumps({"config": name, "table": table}, indent=1))


if __name__ == "__main__":
    main()
