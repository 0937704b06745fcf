"""Benchmark: what the engine-security fixes cost, before vs after, side by side in one run.

Usage: .venv/bin/python benchmarks/security_cost.py [--baseline REV] [--rows N]
Prints ONE JSON object on stdout (progress on stderr). ``REV`` (default ``d4a292d``, the
engine before the fixes) is checked out into a temporary git worktree; both trees run
under this virtualenv, each in its own subprocess, alternately on the same machine:

* ``mpc_vs_mpyc``: the malicious rows of ``benchmarks/mpc_vs_mpyc.py`` (its pqmpc party
  role: 3 party processes over plain TCP, online time, MAC checks included) — the cost
  of canonical-element checks and of the checks' new places on protocol workloads;
* ``sessions``: a whole malicious session run at all parties in one process (the node's
  ``execute``: owners' inputs authenticated, program, outputs delivered; before: opened
  to every party), additive n = 3 and Shamir n = 3, t = 1, with the trusted-dealer
  provider in-process, for an aggregate (sum, mean, variance, min, histogram) over 3
  owners x ``N`` rows and a linear score over 3 x ``N / 4`` rows.

Each figure is the best of 3 runs; ``ratio`` = after / before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SESSION_RUNNER = r'''
import asyncio, inspect, json, sys, time
import numpy as np
try:  # the engine run moved from pqmpc_node.dealing to pqmpc_node.engine; older checkouts have dealing
    from pqmpc_node import engine as dealing
except ImportError:
    from pqmpc_node import dealing  # type: ignore[no-redef]
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.programs import compile_program, model_shapes
from pqmpc_node.mpc.randomness import AesCtrRandom
try:  # trees from before the simulation left the shipped package
    from pqmpc_node.mpc.simulation import make_contexts
except ImportError:
    from pqmpc_local.mpc_simulation import make_contexts
from pqmpc_node.mpc.fixedpoint import FixedPoint

rows = int(sys.argv[1])
NEW = "requests" in inspect.signature(dealing.execute).parameters
FIELDS = [{"name": "amount", "min": 0, "max": 1e4}, {"name": "age", "min": 18, "max": 100}]
CASES = {
    "aggregate": ({"aggregate": [{"op": "sum", "field": "amount"}, {"op": "mean", "field": "amount"},
                                 {"op": "variance", "field": "amount"}, {"op": "min", "field": "age"},
                                 {"op": "histogram", "field": "amount", "bins": [0, 100, 1000, 10000]}]}, rows),
    "linear_score": ({"linearScore": {"modelOwner": "m", "features": ["amount", "age"]}}, max(rows // 4, 1)),
}
CONFIGS = {"additive": EngineConfig(3, security="malicious"),
           "shamir": EngineConfig(3, threshold=1, sharing="shamir", security="malicious")}

def one(config, program, n_rows):
    from pqmpc_node.mpc import programs
    exact = hasattr(programs, "encode_column")  # trees with compile-time numerics (per-field encodings, row bounds)
    if exact:
        from pqmpc_node.mpc.numerics import RowBound
        plan = compile_program(program, FIELDS, rows=RowBound(3, n_rows))
    else:
        plan = compile_program(program, FIELDS)
    contexts, _ = make_contexts(config, seed=b"security-cost-seed-0123456789abc")
    d, scheme, fx = contexts[0].domain, contexts[0].scheme, FixedPoint(config.frac_bits)
    rng = np.random.default_rng(1)
    rng_s = AesCtrRandom(b"s" * 32)
    def enc(name, v):
        return programs.encode_column(plan, name, v, d) if exact else fx.encode(v, d)
    tables = [np.stack([enc("amount", rng.uniform(0, 1e4, n_rows)), enc("age", rng.uniform(18, 100, n_rows))])
              for _ in range(3)]
    shapes = model_shapes(plan)
    params = {k: (programs.encode_model(plan, k, np.full(s, 0.01), d) if exact else fx.encode(np.full(s, 0.01), d))
              for k, s in shapes.items()}
    names = sorted(params)
    if NEW:
        from pqmpc_node.mpc.inputs import OwnerShares, share_owner_input
        per = [[] for _ in range(3)]
        for o, t in enumerate(tables):
            for i, (x, tg, k) in enumerate(share_owner_input(d, scheme, t, rng_s, keyed=True)):
                per[i].append(OwnerShares(f"o{o}", x.reshape(t.shape), tg, k))
        model = [None] * 3
        if names:
            flat = np.concatenate([params[k].reshape(-1) for k in names])
            for i, (x, tg, k) in enumerate(share_owner_input(d, scheme, flat, rng_s, keyed=True)):
                model[i] = OwnerShares("m", x, tg, k)
        from pqmpc_node.mpc.outputs import OutputRequest
        req = [OutputRequest("r", tuple(["score"] if names else [op.output_name for op in plan.ops]))]
        run = lambda ctx: dealing.execute(ctx, plan, ["amount", "age"], dealing.PartyInputs(per[ctx.party], model[ctx.party]), req)
    else:
        shares = [scheme.share(d, np.concatenate(tables, axis=1), rng_s)]
        pshares = {k: scheme.share(d, v, rng_s) for k, v in params.items()}
        run = lambda ctx: dealing.execute(ctx, plan, ["amount", "age"], shares[0][ctx.party],
                                          {k: v[ctx.party] for k, v in pshares.items()})
    async def main():
        await asyncio.gather(*(run(c) for c in contexts))
    t0 = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t0

out = {}
for cname, config in CONFIGS.items():
    for pname, (program, n_rows) in CASES.items():
        out[f"{pname}/{cname}"] = min(one(config, program, n_rows) for _ in range(3))
print(json.dumps(out))
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tree_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(tree / d) for d in ("node", "operator", "local")),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def mpc_rows(tree: Path) -> dict[str, Any]:
    """The malicious pqmpc rows of the tree's own mpc_vs_mpyc.py (its party role, 3 processes)."""
    script = tree / "benchmarks" / "mpc_vs_mpyc.py"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mpc_vs_mpyc import free_ports, run_pq_parties  # this tree's launcher; the party role is the same in both

    env = dict(tree_env(tree), PQMPC_BENCH_ROLE="pqmpc", PQMPC_MODE="malicious",
               PQMPC_PORTS=",".join(map(str, free_ports(3))))
    return run_pq_parties(script, env, cwd=tree, timeout=600)


def run_in_tree(tree: Path, code: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run ``code`` with ``tree``'s packages; its last stdout line is the JSON result."""
    res = subprocess.run([sys.executable, "-c", code, *args], env=tree_env(tree), cwd=tree,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode:
        raise SystemExit(f"the runner failed in {tree}:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    """``rev`` checked out into a temporary git worktree, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="pqmpc-baseline-"))
    before = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), rev],
                   check=True, capture_output=True)
    try:
        yield before
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True,
                       check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def session_rows(tree: Path, rows: int) -> dict[str, float]:
    return run_in_tree(tree, SESSION_RUNNER, str(rows))


def main() -> None:
    args = sys.argv[1:]
    baseline = args[args.index("--baseline") + 1] if "--baseline" in args else "d4a292d"
    rows = int(args[args.index("--rows") + 1]) if "--rows" in args else 5000
    with baseline_tree(baseline) as before:
        trees = {"before": before, "after": ROOT}
        mpc: dict[str, dict[str, Any]] = {}
        sessions: dict[str, dict[str, float]] = {}
        for name, tree in trees.items():
            log(f"== {name}: mpc_vs_mpyc malicious rows ({tree})")
            mpc[name] = mpc_rows(tree)
            log(f"== {name}: whole malicious sessions, {rows} rows per owner")
            sessions[name] = session_rows(tree, rows)
        table = []
        for w in mpc["after"]:
            if w in mpc["before"]:
                b, a = mpc["before"][w]["online_s"], mpc["after"][w]["online_s"]
                table.append({"name": f"{w}/malicious/online", "before_s": round(b, 4), "after_s": round(a, 4),
                              "ratio": round(a / b, 3)})
        for w, a in sessions["after"].items():
            b = sessions["before"][w]
            table.append({"name": f"session_{w}", "before_s": round(b, 4), "after_s": round(a, 4), "ratio": round(a / b, 3)})
        print(json.dumps({"baseline": baseline, "rows_per_owner": rows, "workloads": table}, indent=1))


if __name__ == "__main__":
    main()
