"""Dealer-free preprocessing, honest majority (PRSS) and dishonest majority (OT), against the dealer.

Four measurements, printed as one JSON object (progress on stderr):

1. ``honest_majority_mults_per_s_{semi_honest,malicious}``: 3 party processes on
   loopback (plain TCP channel: the engine only, no TLS), Shamir n = 3, t = 1, each with
   its own :class:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider` (PRSS keys
   agreed between the processes). One batch of ``--batch`` elementwise multiplications
   ``[x][y]`` of random authenticated sharings (made, and their MACs checked, before the
   clock starts: in a deep circuit the operands are earlier products, checked once each),
   as the engine multiplies in a ``prss`` session: degree reduction of the local products
   (malicious: of the MACs too, in the same round), then ``check_macs`` (malicious: the
   product check over the batch, the CheckZero included); best of ``--repeat``. ``peak_rss_mib_per_node`` is the largest
   party's peak resident set.
2. ``prss_vs_dealer_session_ratio``: the Shamir example's program (the demo's MLP,
   n = 3, t = 1, malicious) end to end on 3 real node processes (``python -m
   pqmpc_node`` over PQ-TLS, the harness of tests/node playing the operator), once with
   the dealer (the harness deals and posts each party its material) and once dealer-free;
   timed from the plan's post to Succeeded at every party, owners submitting at once;
   median of ``--sessions`` runs each, alternating.
3. The OT provider between 2 party processes (plain TCP on loopback, engine only):
   ``base_ot_128_ms`` (128 ML-KEM-768 base OTs, one direction, median of 5),
   ``ot_extension_per_s`` (``2^20`` random OTs per call, IKNP with the KOS check, best
   of ``--repeat``), ``triples_per_s_semi_honest`` (Gilboa over Z_2^64) and
   ``triples_per_s_malicious`` (MASCOT over F_p: tau = 4 products, MACs, sacrifice,
   MAC check), ``--ot-batch`` triples per pair and best of ``--repeat``, and
   ``bytes_per_triple`` (both parties' bytes on the wire per triple, each mode).
4. ``ot_vs_dealer_session_ratio``: the additive example's program
   (examples/mpcsession-fraud-stats.yaml: count, mean, variance, histogram; 2 parties,
   malicious) end to end on 2 real node processes over PQ-TLS, dealer vs ``ot``, as in 2;
   ``base_ot_ms_in_session`` is the nodes' own measure of the session's base OTs
   (both directions at once, over the PQ links).

    .venv/bin/python benchmarks/preprocessing.py [--batch 1000000] [--repeat 2] [--sessions 3] [--ot-batch 100000]
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
            # Random authenticated sharings as inputs (PRSS and, malicious, their MACs; not timed).
            x = await provider.random_authenticated((batch,))
            y = await provider.random_authenticated((batch,))
            await check_macs(ctx, "inputs")  # their MACs checked before the clock starts
            await barrier(channel, f"{session}/start")
            t0 = time.perf_counter()
            await P.multiply_many(ctx, [(x, y)])
            await check_macs(ctx, "end")  # malicious: the product check over the batch
            elapsed = time.perf_counter() - t0
            await barrier(channel, f"{session}/end")
            best = min(best, elapsed)
            if party == 0:
                log(f"{mode} r{r}: {batch} mults in {elapsed:.3f}s ({batch / elapsed:,.0f}/s), keys {keys_s * 1e3:.1f} ms, "
                    f"{provider.stats.rounds} degree-reduction rounds, {provider.stats.checked_products} products checked")
        out[mode] = {"best_s": best, "mults_per_s": batch / best, "keys_ms": keys_s * 1e3}
    await channel.close()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


async def ot_party_main(party: int, ports: list[int], batch: int, repeat: int) -> dict[str, Any]:
    """One of 2 OT parties: base OTs, OT extension and triples per pair (module docstring, 3)."""
    from pqmpc_node.mpc.backend import tune_allocator
    from pqmpc_node.mpc.config import EngineConfig
    from pqmpc_node.mpc.context import MPCContext
    from pqmpc_node.mpc.ot.base import BASE_OT_COUNT, base_ot_receive, base_ot_send
    from pqmpc_node.mpc.ot.extension import OtExtensionReceiver, OtExtensionSender, delta_bits
    from pqmpc_node.mpc.ot.provider import OtProvider
    from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
    from pqmpc_node.mpc.sharing import AdditiveScheme
    from pqmpc_local.tcp_channel import TcpChannel

    tune_allocator()
    channel = await TcpChannel.connect(party, [("127.0.0.1", p) for p in ports])
    peer = 1 - party
    out: dict[str, Any] = {}
    base_ms: list[float] = []
    delta = os.urandom(16)
    chosen: list[bytes] = []
    pairs: list[tuple[bytes, bytes]] = []
    for r in range(5):
        await barrier(channel, f"base-{r}")
        t0 = time.perf_counter()
        if party == 0:
            chosen = await base_ot_receive(channel, peer, f"bench-base-{r}", delta_bits(delta), context=b"bench")
        else:
            pairs = await base_ot_send(channel, peer, f"bench-base-{r}", BASE_OT_COUNT, context=b"bench")
        base_ms.append((time.perf_counter() - t0) * 1e3)
    out["base_ot_128_ms"] = statistics.median(base_ms)
    count = 1 << 20
    best = float("inf")
    for r in range(repeat):
        await barrier(channel, f"ext-{r}")
        t0 = time.perf_counter()
        if party == 0:
            await OtExtensionSender(delta, chosen, context=b"bench").extend(channel, peer, f"bench-ext-{r}", count)
        else:
            choices = np.frombuffer(os.urandom(count), dtype=np.uint8) & np.uint8(1)
            await OtExtensionReceiver(pairs, context=b"bench").extend(channel, peer, f"bench-ext-{r}", choices)
        best = min(best, time.perf_counter() - t0)
    out["ot_extension_per_s"] = count / best
    for mode in ("semi-honest", "malicious"):
        config = EngineConfig(2, sharing="additive", security=mode)  # type: ignore[arg-type]
        domain, scheme = config.domain(), config.scheme()
        assert isinstance(scheme, AdditiveScheme)
        session = f"ot-{mode}"
        provider = await OtProvider.create(channel, domain=domain, scheme=scheme, live=[0, 1], session=session,
                                           authenticated=mode == "malicious")
        ctx = MPCContext(session=session, party=party, channel=channel, domain=domain, scheme=scheme,
                         provider=provider, rng=AesCtrRandom(derive_key(b"bench", party, session)), security=mode)  # type: ignore[arg-type]
        provider.bind(ctx)
        best, sent = float("inf"), 0
        for r in range(repeat):
            await barrier(channel, f"{mode}-{r}")
            before = channel.bytes_sent
            t0 = time.perf_counter()
            await provider._make_triples(batch)
            elapsed = time.perf_counter() - t0
            sent = channel.bytes_sent - before
            best = min(best, elapsed)
            if party == 0:
                log(f"ot {mode} r{r}: {batch} triples in {elapsed:.3f}s ({batch / elapsed:,.0f}/s)")
        out[mode] = {"triples_per_s": batch / best, "bytes_sent": sent, "batch": batch}
    await channel.close()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


async def barrier(channel: Any, label: str) -> None:
    """Both parties start the timed step together."""
    peers = [p for p in range(channel.n) if p != channel.party]
    await channel.send_many(f"barrier/{label}", {p: b"" for p in peers})
    await channel.receive_many(f"barrier/{label}", peers)


def run_parties(batch: int, repeat: int, *, role: str = "party", parties: int = 3) -> list[dict[str, Any]]:
    """Start ``parties`` processes of this script in ``role`` on loopback ports; their JSON results."""
    ports = free_ports(parties)
    env = dict(os.environ, PQMPC_BENCH_ROLE=role, PQMPC_PORTS=",".join(map(str, ports)),
               PQMPC_BATCH=str(batch), PQMPC_REPEAT=str(repeat), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, env=dict(env, PQMPC_PARTY=str(i)),
                              cwd=REPO) for i in range(parties)]
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


def ot_session_ratio(sessions: int, rows: int = 200) -> dict[str, Any]:
    """The additive example's program on 2 real nodes, dealer vs ot (module docstring, 4)."""
    sys.path.insert(0, str(REPO / "tests" / "node"))
    sys.path.insert(0, str(REPO / "local"))
    from harness import Operator  # type: ignore[import-not-found]
    from pqmpc_node.client import Identity, SessionClient
    from pqmpc_node.plan import FieldDecl

    import yaml

    spec = yaml.safe_load((REPO / "examples" / "mpcsession-fraud-stats.yaml").read_text())["spec"]
    f = spec["inputs"][0]["fields"][0]
    fields = [FieldDecl(f["name"], f["min"], f["max"], f.get("decimals"))]
    owners = {o: Identity.generate(o) for o in ("bank-a", "bank-b")}
    auditor = Identity.generate("auditor")
    rng = np.random.default_rng(5)
    times: dict[str, list[float]] = {"dealer": [], "ot": []}
    base_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        op = Operator(Path(tmp), "bench-ot")
        try:
            nodes = op.start_nodes(2)
            op.certify(nodes)
            for i in range(sessions):
                for kind in ("dealer", "ot"):
                    sid = f"fraud-{kind}-{i}"
                    plan = op.plan(sid, nodes, program=spec["program"], owners=list(owners.values()), fields=fields,
                                   recipients={auditor: spec["outputs"][0]["allow"]}, sharing="additive",
                                   security="malicious", preprocessing=kind, max_rows_per_owner=spec["maxRowsPerOwner"])
                    t0 = time.perf_counter()
                    op.post_plan(plan, nodes)
                    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                                       plan_signer=op.signer.public_key()) as c:
                        for ident in owners.values():
                            amounts = np.round(rng.uniform(0, 200_000, rows), 2)
                            c.submit_rows(ident, {"amount": [f"{v:.2f}" for v in amounts]})
                        for n in nodes:
                            st = op.wait_phase(n, sid, {"Succeeded", "Failed"}, timeout=900)
                            if st["phase"] != "Succeeded":
                                raise RuntimeError(f"{sid}: {st}")
                    times[kind].append(time.perf_counter() - t0)
                    if kind == "ot":
                        base_ms.append(max(node_base_ot_ms(n) for n in nodes))
                    log(f"session {sid}: {times[kind][-1]:.2f}s")
        finally:
            op.stop_all()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ot_vs_dealer_session_ratio": round(med["ot"] / med["dealer"], 3),
            "ot_session_s_median": {k: round(v, 3) for k, v in med.items()},
            "ot_session_s_raw": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "base_ot_ms_in_session": round(statistics.median(base_ms), 2) if base_ms else None,
            "ot_session": f"examples/mpcsession-fraud-stats.yaml's program (count, mean, variance, 5-bin histogram), "
                          f"{rows} rows from each of 2 owners, additive, malicious, 2 node processes over PQ-TLS; plan "
                          "post to Succeeded everywhere, dealing included"}


def node_base_ot_ms(node: Any) -> float:
    """The node's mean time for its base OTs with a peer (``pqmpc_node_ot_base_seconds``), in ms."""
    import httpx

    text = httpx.get(f"{node.metrics_url}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("pqmpc_node_ot_base_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("pqmpc_node_ot_base_seconds_count"):
            count = float(line.split()[-1])
    return 1e3 * total / count if count else float("nan")


def main() -> None:
    if os.environ.get("PQMPC_BENCH_ROLE") == "ot-party":
        ports = [int(p) for p in os.environ["PQMPC_PORTS"].split(",")]
        res = asyncio.run(ot_party_main(int(os.environ["PQMPC_PARTY"]), ports, int(os.environ["PQMPC_BATCH"]),
                                        int(os.environ["PQMPC_REPEAT"])))
        print(json.dumps(res))
        return
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
    ap.add_argument("--ot-batch", type=int, default=100_000)
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
    ot = run_parties(args.ot_batch, args.repeat, role="ot-party", parties=2)
    result.update({
        "base_ot_128_ms": round(max(p["base_ot_128_ms"] for p in ot), 2),
        "ot_extension_per_s": round(min(p["ot_extension_per_s"] for p in ot)),
        "triples_per_s_semi_honest": round(min(p["semi-honest"]["triples_per_s"] for p in ot)),
        "triples_per_s_malicious": round(min(p["malicious"]["triples_per_s"] for p in ot)),
        "bytes_per_triple": {m: round(sum(p[m]["bytes_sent"] for p in ot) / args.ot_batch)
                             for m in ("semi-honest", "malicious")},
        "ot_peak_rss_mib_per_node": round(max(p["peak_rss_mib"] for p in ot), 1),
    })
    result.update(session_ratio(args.sessions))
    result.update(ot_session_ratio(args.sessions))
    result["setup"] = {"mults": f"{args.batch} elementwise products in one batch, best of {args.repeat}; 3 party "
                                "processes, plain TCP on loopback (engine only), Shamir n=3 t=1, F_p p=2^61-1",
                       "ot": f"2 party processes, plain TCP on loopback; {args.ot_batch} triples per pair per run, best "
                             f"of {args.repeat}; malicious: MASCOT tau=4 over F_p, semi-honest: Gilboa over Z_2^64",
                       "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
