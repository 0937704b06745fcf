"""Dealer-free honest-majority preprocessing: multiplications per second, and a whole session vs the dealer.

Two measurements, printed as one JSON object (progress on stderr):

1. ``honest_majority_mults_per_s_{semi_honest,malicious}``: 3 party processes on
   loopback (plain TCP channel: the engine only, no TLS), Shamir n = 3, t = 1, each with
   its own :class:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider` (PRSS keys
   agreed between the processes). One batch of ``--batch`` elementwise multiplications
   ``[x][y]`` with Beaver triples made *for* it (PRSS, degree reduction and, malicious,
   MACs, the sacrifice and the MAC check), then the Beaver step; best of ``--repeat``.
   ``peak_rss_mib_per_node`` is the largest party's peak resident set.
2. ``prss_vs_dealer_session_ratio``: the Shamir example's program (the demo's MLP,
   n = 3, t = 1, malicious) end to end on 3 real node processes (``python -m
   pqmpc_node`` over PQ-TLS, the harness of tests/node playing the operator), once with
   the dealer (the harness deals and posts each party its material) and once dealer-free;
   timed from the plan's post to Succeeded at every party, owners submitting at once;
   median of ``--sessions`` runs each, alternating.

    .venv/bin/python benchmarks/preprocessing.py [--batch 1000000] [--repeat 2] [--sessions 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pqmpc_local.processes import free_ports

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- party process (role "party")
async def party_main(party: int, ports: list[int], batch: int, repeat: int) -> dict[str, Any]:
    from pqmpc_node.mpc import protocols as P
    from pqmpc_node.mpc.backend import tune_allocator
    from pqmpc_node.mpc.config import EngineConfig
    from pqmpc_node.mpc.context import MPCContext
    from pqmpc_node.mpc.honest_majority import HonestMajorityProvider
    from pqmpc_node.mpc.mac import check_macs
    from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
    from pqmpc_node.mpc.shares import Shared
    from pqmpc_node.mpc.sharing import ShamirScheme
    from pqmpc_local.tcp_channel import TcpChannel

    tune_allocator()
    channel = await TcpChannel.connect(party, [("127.0.0.1", p) for p in ports])
    out: dict[str, Any] = {}
    for mode in ("semi-honest", "malicious"):
        config = EngineConfig(3, threshold=1, sharing="shamir", security=mode)  # type: ignore[arg-type]
        domain, scheme = config.domain(), config.scheme()
        assert isinstance(scheme, ShamirScheme)
        best = float("inf")
        for r in range(repeat):
            session = f"{mode}/{r}"
            t_keys = time.perf_counter()
            provider = await HonestMajorityProvider.create(channel, domain=domain, scheme=scheme, live=[0, 1, 2],
                                                           session=session, authenticated=mode == "malicious")
            keys_s = time.perf_counter() - t_keys
            ctx = MPCContext(session=session, party=party, channel=channel, domain=domain, scheme=scheme,
                             provider=provider, rng=AesCtrRandom(derive_key(b"bench", party, session)), security=mode)  # type: ignore[arg-type]
            provider.bind(ctx)
            xs = provider.keys.random(domain, (batch,))  # random sharings as inputs (no input protocol timed)
            ys = provider.keys.random(domain, (batch,))
            x = Shared(xs, None if ctx.mac_key is None else domain.mul(xs, ctx.mac_key))  # MACs: not checked below
            y = Shared(ys, None if ctx.mac_key is None else domain.mul(ys, ctx.mac_key))
            await ctx.open([ctx.constant(domain.zeros((1,)))], "barrier")
            t0 = time.perf_counter()
            await P.multiply_many(ctx, [(x, y)])
            elapsed = time.perf_counter() - t0
            ctx.pending.clear()  # the inputs' MACs above are not real MACs; the triples' were checked
            await check_macs(ctx, "end")
            await ctx.open([ctx.constant(domain.zeros((1,)))], "barrier")
            best = min(best, elapsed)
            if party == 0:
                log(f"{mode} r{r}: {batch} mults in {elapsed:.3f}s ({batch / elapsed:,.0f}/s), keys {keys_s * 1e3:.1f} ms, "
                    f"{provider.stats.rounds} degree-reduction rounds")
        out[mode] = {"best_s": best, "mults_per_s": batch / best, "keys_ms": keys_s * 1e3}
    await channel.close()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out



def run_parties(batch: int, repeat: int) -> list[dict[str, Any]]:
    ports = free_ports(3)
    env = dict(os.environ, PQMPC_BENCH_ROLE="party", PQMPC_PORTS=",".join(map(str, ports)),
               PQMPC_BATCH=str(batch), PQMPC_REPEAT=str(repeat), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, env=dict(env, PQMPC_PARTY=str(i)),
                              cwd=REPO) for i in range(3)]
    outs = []
    try:
        for p in procs:
            outs.append(json.loads(p.communicate(timeout=900)[0].decode()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


# ---------------------------------------------------------------- sessions on real nodes
def session_ratio(sessions: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests" / "node"))
    sys.path.insert(0, str(REPO / "local"))
    from harness import Operator  # type: ignore[import-not-found]
    from pqmpc_local.demo import MLP_FEATURES, mlp_model, mlp_rows  # the demo's Shamir example session
    from pqmpc_node.client import Identity, SessionClient
    from pqmpc_node.plan import FieldDecl

    import yaml

    spec = yaml.safe_load((REPO / "examples" / "mpcsession-mlp.yaml").read_text())["spec"]
    fields = [FieldDecl(f["name"], f["min"], f["max"]) for f in spec["inputs"][0]["fields"]]
    program = spec["program"]
    model = {k: v.tolist() for k, v in mlp_model().items()}
    owners = {o: Identity.generate(o) for o in ("bank-a", "bank-b", "bank-c")}
    insurer = Identity.generate("insurer")
    times: dict[str, list[float]] = {"dealer": [], "prss": []}
    with tempfile.TemporaryDirectory() as tmp:
        op = Operator(Path(tmp), "bench")
        try:
            nodes = op.start_nodes(3)
            op.certify(nodes)
            for i in range(sessions):
                for kind in ("dealer", "prss"):
                    sid = f"{kind}-{i}"
                    plan = op.plan(sid, nodes, program=program, owners=list(owners.values()), fields=fields,
                                   recipients={insurer: ["score"]}, model_owner=insurer, sharing="shamir",
                                   threshold=1, security="malicious", preprocessing=kind)
                    t0 = time.perf_counter()
                    op.post_plan(plan, nodes)
                    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                                       plan_signer=op.signer.public_key()) as c:
                        for name, ident in owners.items():
                            rows = mlp_rows(name)
                            c.submit_rows(ident, {f: [str(v) for v in rows[:, j]] for j, f in enumerate(MLP_FEATURES)})
                        c.submit_model(insurer, model)
                        for n in nodes:
                            st = op.wait_phase(n, sid, {"Succeeded", "Failed"}, timeout=600)
                            if st["phase"] != "Succeeded":
                                raise RuntimeError(f"{sid}: {st}")
                    times[kind].append(time.perf_counter() - t0)
                    log(f"session {sid}: {times[kind][-1]:.2f}s")
        finally:
            op.stop_all()
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = sum(len(mlp_rows(o)) for o in owners)
    return {"prss_vs_dealer_session_ratio": round(med["prss"] / med["dealer"], 3),
            "session_s_median": {k: round(v, 3) for k, v in med.items()},
            "session_s_raw": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "session": f"examples/mpcsession-mlp.yaml's program ({len(MLP_FEATURES)}-8-1, {rows} rows from 3 owners), n=3, t=1, malicious, "
                       "3 node processes over PQ-TLS; plan post to Succeeded everywhere, dealing included"}


def main() -> None:
    if os.environ.get("PQMPC_BENCH_ROLE") == "party":
        ports = [int(p) for p in os.environ["PQMPC_PORTS"].split(",")]
        res = asyncio.run(party_main(int(os.environ["PQMPC_PARTY"]), ports, int(os.environ["PQMPC_BATCH"]),
                                     int(os.environ["PQMPC_REPEAT"])))
        print(json.dumps(res))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=3)
    args = ap.parse_args()
    parties = run_parties(args.batch, args.repeat)
    semi = min(p["semi-honest"]["mults_per_s"] for p in parties)
    mal = min(p["malicious"]["mults_per_s"] for p in parties)
    result: dict[str, Any] = {
        "honest_majority_mults_per_s_semi_honest": round(semi),
        "honest_majority_mults_per_s_malicious": round(mal),
        "malicious_vs_semi_honest_cost_ratio": round(semi / mal, 3),
        "peak_rss_mib_per_node": round(max(p["peak_rss_mib"] for p in parties), 1),
        "prss_keys_ms": round(max(p["malicious"]["keys_ms"] for p in parties), 2),
    }
    result.update(session_ratio(args.sessions))
    result["setup"] = {"mults": f"{args.batch} elementwise products in one batch, best of {args.repeat}; 3 party "
                                "processes, plain TCP on loopback (engine only), Shamir n=3 t=1, F_p p=2^61-1",
                       "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
