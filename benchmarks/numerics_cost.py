"""Benchmark: what exact statistics cost, before vs after, side by side in one run.

Usage: .venv/bin/python benchmarks/numerics_cost.py [--baseline REV] [--rows N]
Prints ONE JSON object on stdout (progress on stderr). ``REV`` (default ``4f5f253``, the
engine with one session-wide 16-bit fixed point) is checked out into a temporary git
worktree; both trees run under this virtualenv, each in its own subprocess, on the same
machine and the same data: an aggregate (count, sum, mean, variance, min, max,
histogram) over 3 owners x ``N`` rows of amounts in cents in ``[0, 10^4]``, at every
party in one process (the node's ``execute``: owners' inputs authenticated in malicious
sessions, the program, outputs delivered and reconstructed as a recipient does).

For each configuration (semi-honest additive over Z_2^64, malicious additive and
malicious Shamir over F_p) it reports the best of 3 wall times, ``ratio`` = after /
before, and each tree's largest error against exact rational arithmetic on the same
cents (``max_abs_error`` per op; after: 0 by construction, which the run checks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from security_cost import ROOT, baseline_tree, log, run_in_tree  # noqa: E402  (one before/after recipe for both)

RUNNER = r'''
import asyncio, json, sys, time
from fractions import Fraction
import numpy as np
try:  # the engine run moved from pqmpc_node.dealing to pqmpc_node.engine; older checkouts have dealing
    from pqmpc_node import engine as dealing
except ImportError:
    from pqmpc_node import dealing  # type: ignore[no-redef]
from pqmpc_node.mpc import programs
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.inputs import OwnerShares, share_owner_input
from pqmpc_node.mpc.outputs import OutputRequest, verify_delivered
from pqmpc_node.mpc.randomness import AesCtrRandom
try:  # trees from before the simulation left the shipped package
    from pqmpc_node.mpc.simulation import make_contexts
except ImportError:
    from pqmpc_local.mpc_simulation import make_contexts

rows = int(sys.argv[1])
EXACT = hasattr(programs, "encode_column")
FIELDS = [{"name": "amount", "min": 0, "max": 1e4}]
OPS = ["count", "sum", "mean", "variance", "min", "max", "histogram"]
PROGRAM = {"aggregate": [{"op": o, "field": "amount", **({"bins": [0, 100, 1000, 10000]} if o == "histogram" else {})}
                         for o in OPS]}
CONFIGS = {"semi-honest-additive": EngineConfig(3), "malicious-additive": EngineConfig(3, security="malicious"),
           "malicious-shamir": EngineConfig(3, threshold=1, sharing="shamir", security="malicious")}
rng = np.random.default_rng(1)
TABLES = [np.round(rng.uniform(0, 1e4, rows), 2) for _ in range(3)]
cents = [int(round(v * 100)) for t in TABLES for v in t]
n, s, q = len(cents), sum(cents), sum(c * c for c in cents)
WANT = {"sum(amount)": Fraction(s, 100), "mean(amount)": Fraction(s, 100 * n),
        "variance(amount)": Fraction(n * q - s * s, n * n * 10**4), "min(amount)": Fraction(min(cents), 100),
        "max(amount)": Fraction(max(cents), 100)}

def one(config):
    if EXACT:
        from pqmpc_node.mpc.numerics import RowBound
        plan = programs.compile_program(PROGRAM, FIELDS, rows=RowBound(3, rows), ring=config.domain().name == "ring64")
    else:
        plan = programs.compile_program(PROGRAM, FIELDS)
    contexts, _ = make_contexts(config, seed=b"numerics-cost-seed-0123456789abc")
    d, scheme, fx = contexts[0].domain, contexts[0].scheme, FixedPoint(config.frac_bits)
    keyed = config.security == "malicious"
    per = [[] for _ in range(3)]
    for o, t in enumerate(TABLES):
        enc = (programs.encode_column(plan, "amount", t, d) if EXACT else fx.encode(t, d)).reshape(1, -1)
        for i, (x, tg, k) in enumerate(share_owner_input(d, scheme, enc, AesCtrRandom(b"s" * 32), keyed=keyed)):
            per[i].append(OwnerShares(f"o{o}", x.reshape(enc.shape), tg, k))
    req = [OutputRequest("r", tuple(op.output_name for op in plan.ops if op.op != "count"))]
    async def main():
        return await asyncio.gather(*(dealing.execute(c, plan, ["amount"], dealing.PartyInputs(per[c.party], None), req)
                                      for c in contexts))
    t0 = time.perf_counter()
    outcomes = asyncio.run(main())
    elapsed = time.perf_counter() - t0
    errors = {}
    for name, want in WANT.items():
        y = verify_delivered(d, scheme, {c.party: o.delivered["r"][name] for c, o in zip(contexts, outcomes)},
                             authenticated=keyed)
        if EXACT:
            dec = programs.output_decodings(plan)[name]  # the recipient's exact fraction, before it becomes a float
            whole = 0
            for digit in (int(v) for v in d.to_signed(y).reshape(-1)):
                whole = (whole << dec.limb_bits) + digit if dec.limb_bits else digit
            got = Fraction(whole, dec.scale * outcomes[0].result.valid_rows ** dec.count_power)
        else:
            got = Fraction(float(fx.decode(y, d).reshape(-1)[0]))
        errors[name] = float(abs(got - want))
    return elapsed, errors

out = {}
for cname, config in CONFIGS.items():
    runs = [one(config) for _ in range(3)]
    out[cname] = {"seconds": min(r[0] for r in runs), "max_abs_error": runs[0][1]}
print(json.dumps(out))
'''


def main() -> None:
    args = sys.argv[1:]
    baseline = args[args.index("--baseline") + 1] if "--baseline" in args else "4f5f253"
    rows = int(args[args.index("--rows") + 1]) if "--rows" in args else 2000
    with baseline_tree(baseline) as before:
        got: dict[str, dict[str, Any]] = {}
        for name, tree in {"before": before, "after": ROOT}.items():
            log(f"== {name}: 3 owners x {rows} rows, all aggregate ops ({tree})")
            got[name] = run_in_tree(tree, RUNNER, str(rows), timeout=3600)
        table = []
        for config, after in got["after"].items():
            b = got["before"][config]
            table.append({"config": config, "before_s": round(b["seconds"], 3), "after_s": round(after["seconds"], 3),
                          "ratio": round(after["seconds"] / b["seconds"], 3),
                          "before_max_abs_error": b["max_abs_error"], "after_max_abs_error": after["max_abs_error"]})
        exact = all(e == 0.0 for row in table for e in row["after_max_abs_error"].values())
        print(json.dumps({"baseline": baseline, "rows_per_owner": rows, "after_exact": exact, "configs": table}, indent=1))


if __name__ == "__main__":
    main()
