"""Benchmark: pqmpc's MPC engine (3 party processes, plain TCP on loopback) against MPyC 0.11.

Usage: .venv/bin/python benchmarks/mpc_vs_mpyc.py [--quick]
Prints ONE JSON object on stdout (progress on stderr): ``workloads``, a list of
``{name, pqmpc_s, mpyc_s, speedup}`` with one entry per workload, security mode and phase
(``<workload>/<semi-honest|malicious>/<online|with_dealer>``), ``beaver_mults_per_s``
(semi-honest online, 1M batch), ``matmul1024_vs_plain_ratio`` (secure 1024x1024
fixed-point product, online, over numpy's float64 product timed in the same run) and a
``details`` object (setup, per-mode Beaver rates, MPyC scale factors). Runs in about
5 minutes on 2 cores.

pqmpc: each workload runs twice per mode: first with the live dealer (time includes
preprocessing), then replaying the recorded material (online time only).
MPyC: 3 parties as subprocesses (-M3, loopback), SecFxp/SecInt 64-bit; workloads are
scaled down and MPyC's time extrapolated linearly in the op count (cubically in n for
matrix products); the JSON states each scale factor.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pqmpc_local.processes import free_ports

ROOT = Path(__file__).resolve().parent.parent
QUICK = "--quick" in sys.argv


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pqmpc party
class Recorder:
    """Provider wrapper: records material (live dealer run) and replays it (online run)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.authenticated = inner.authenticated
        self.tape: list[Any] = []
        self.replay = False
        self.pos = 0

    def mac_key_share(self) -> Any:
        return self.inner.mac_key_share()

    def _get(self, name: str, *args: Any) -> Any:
        if self.replay:
            self.pos += 1
            return self.tape[self.pos - 1]
        item = getattr(self.inner, name)(*args)
        self.tape.append(item)
        return item

    def triples(self, *a: Any) -> Any:
        return self._get("triples", *a)

    def matrix_triple(self, *a: Any) -> Any:
        return self._get("matrix_triple", *a)

    def edabits(self, *a: Any) -> Any:
        return self._get("edabits", *a)

    def truncation_pairs(self, *a: Any) -> Any:
        return self._get("truncation_pairs", *a)

    def input_mask(self, *a: Any) -> Any:
        return self._get("input_mask", *a)


def pq_workloads() -> list[tuple[str, Any]]:
    from pqmpc_node.mpc import protocols as P

    def w_mult(n: int) -> Any:
        async def f(ctx: Any, sh: Any) -> None:
            x = sh((n,))
            await P.multiply(ctx, x, x)
        return f

    async def seq(ctx: Any, sh: Any) -> None:
        x = sh((1000,))
        for _ in range(100):
            x = await P.multiply(ctx, x, x)

    def w_matmul(n: int) -> Any:
        async def f(ctx: Any, sh: Any) -> None:
            x = sh((n, n))
            await P.fx_matmul(ctx, x, x)
        return f

    def w_cmp(n: int) -> Any:
        async def f(ctx: Any, sh: Any) -> None:
            x = sh((n,))
            await P.less_than(ctx, x, sh((n,)))
        return f

    def w_relu(n: int) -> Any:
        async def f(ctx: Any, sh: Any) -> None:
            await P.relu(ctx, sh((n,)))
        return f

    async def meanvar(ctx: Any, sh: Any) -> None:
        # 3 owners x 100k values: sum and sum of squares (Beaver products summed before one
        # truncation, like MPyC's in_prod), then two public divisions and one fx product.
        xs = [sh((100_000,)) for _ in range(3)]
        x = ctx.concat(xs)
        n = 300_000
        mean = await P.divide_public(ctx, ctx.sum(x), n, quotient_bound=100.0)
        sumsq = await P.truncate(ctx, ctx.sum(await P.multiply(ctx, x, x)))
        ex2 = await P.divide_public(ctx, sumsq, n, quotient_bound=1e4)
        var = ctx.sub(ex2, await P.fx_multiply(ctx, mean, mean))
        await ctx.open([mean, var], "result")

    def w_mlp(batch: int) -> Any:
        async def f(ctx: Any, sh: Any) -> None:
            h = sh((batch, 30))
            for i, (a, b) in enumerate([(30, 64), (64, 32), (32, 1)]):
                h = ctx.add(await P.fx_matmul(ctx, h, sh((a, b))), sh((b,)))
                if i < 2:
                    h = await P.relu(ctx, h)
        return f

    return [
        ("mult_10k", w_mult(10_000)),
        ("mult_100k", w_mult(100_000)),
        ("seq_100x1k_mult", seq),
        ("fx_matmul_64", w_matmul(64)),
        ("fx_matmul_128", w_matmul(128)),
        ("cmp_1k", w_cmp(1000)),
        ("cmp_10k", w_cmp(10_000)),
        ("relu_1k", w_relu(1000)),
        ("relu_10k", w_relu(10_000)),
        ("mean_var_3x100k", meanvar),
        ("mlp_30_64_32_1_b1", w_mlp(1)),
        ("mlp_30_64_32_1_b100", w_mlp(100)),
    ]


async def pq_party(party: int, ports: list[int], mode: str) -> dict[str, Any]:
    from pqmpc_node.mpc import protocols as P
    from pqmpc_node.mpc.config import EngineConfig
    from pqmpc_node.mpc.context import MPCContext
    from pqmpc_node.mpc.mac import check_macs
    from pqmpc_node.mpc.preprocessing import Dealer, DealerProvider
    from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
    from pqmpc_local.tcp_channel import TcpChannel  # benchmarks only: plain TCP, not shipped

    from pqmpc_node.mpc.backend import tune_allocator

    tune_allocator()
    config = EngineConfig(3, security=mode)  # type: ignore[arg-type]
    domain, scheme = config.domain(), config.scheme()
    dealer = Dealer(domain, scheme, b"benchmark-dealer-seed-0123456789", authenticated=mode == "malicious")
    channel = await TcpChannel.connect(party, [("127.0.0.1", p) for p in ports])
    results: dict[str, Any] = {}
    rng = np.random.default_rng(party)
    fx_enc = None

    def make_ctx(provider: Any, session: str) -> Any:
        return MPCContext(session=session, party=party, channel=channel, domain=domain, scheme=scheme, provider=provider,
                          rng=AesCtrRandom(derive_key(b"bench", party, mode)), security=mode)  # type: ignore[arg-type]

    counter = [0]

    def sharer(ctx: Any) -> Any:
        def sh(shape: tuple[int, ...]) -> Any:
            counter[0] += 1
            vals = np.full(shape, 1.5 if len(shape) == 1 else 0.01)
            return dealer.share_input(party, ctx.fixed.encode(vals, domain), f"b{counter[0]}")
        return sh

    async def barrier(ctx: Any) -> None:
        await ctx.open([ctx.constant(domain.zeros((1,)))], "barrier")

    workloads = pq_workloads()
    async def beaver(ctx: Any, sh: Any) -> None:
        await P.multiply(ctx, sh((1_000_000,)), sh((1_000_000,)))

    extra: list[tuple[str, Any]] = [("beaver_1M", beaver)]
    if mode == "semi-honest":
        async def mm1024(ctx: Any, sh: Any) -> None:
            x = sh((1024, 1024))
            await P.fx_matmul(ctx, x, x)
        extra.append(("fx_matmul_1024", mm1024))
    for name, fn in workloads + extra:
        rec = Recorder(DealerProvider(dealer, party))
        times = []
        for phase in ("with_dealer", "online"):
            rec.replay = phase == "online"
            rec.pos = 0
            ctx = make_ctx(rec, f"{name}/{phase}")
            counter[0] = 0
            sh = sharer(ctx)
            await barrier(ctx)
            t0 = time.perf_counter()
            await fn(ctx, sh)
            await check_macs(ctx)
            await barrier(ctx)
            times.append(time.perf_counter() - t0)
        results[name] = {"with_dealer_s": times[0], "online_s": times[1]}
        if party == 0:
            log(f"pqmpc {mode} {name}: online {times[1]:.4f}s, with dealer {times[0]:.4f}s")
    await channel.close()
    return results


# ---------------------------------------------------------------- MPyC party
MPYC_SCALE = {
    "mult_10k": ("10000 mults", 1), "mult_100k": ("10000 mults", 10),
    "seq_100x1k_mult": ("100 rounds x 100 mults", 10),
    "fx_matmul_64": ("16x16", 64), "fx_matmul_128": ("16x16", 512),
    "cmp_1k": ("100 comparisons", 10), "cmp_10k": ("100 comparisons", 100),
    "relu_1k": ("100 relus", 10), "relu_10k": ("100 relus", 100),
    "mean_var_3x100k": ("3000 values", 100),
    "mlp_30_64_32_1_b1": ("batch 1", 1), "mlp_30_64_32_1_b100": ("batch 1", 100),
}


def mpyc_main() -> None:
    from mpyc.runtime import mpc

    secfxp = mpc.SecFxp(64)
    secint = mpc.SecInt(64)

    async def run() -> dict[str, float]:
        await mpc.start()
        out: dict[str, float] = {}

        async def timed(name: str, coro_fn: Any) -> None:
            await mpc.barrier()
            t0 = time.perf_counter()
            await coro_fn()
            await mpc.barrier()
            out[name] = time.perf_counter() - t0
            if mpc.pid == 0:
                log(f"mpyc {name} (scaled: {MPYC_SCALE[name][0]}): {out[name]:.3f}s")

        # Every result is output (opened), so MPyC's lazy evaluation cannot skip work.
        async def mult() -> None:
            x = [secint(i) for i in range(10_000)]
            y = [secint(i + 1) for i in range(10_000)]
            await mpc.output(mpc.schur_prod(x, y))

        async def seq() -> None:
            x = [secint(2) for _ in range(100)]
            for _ in range(100):
                x = mpc.schur_prod(x, x)
            await mpc.output(x)

        async def mm() -> None:
            a = [[secfxp(0.01) for _ in range(16)] for _ in range(16)]
            await mpc.output([v for row in mpc.matrix_prod(a, a) for v in row])

        async def cmp() -> None:
            x = [secint(i) for i in range(100)]
            await mpc.output([x[i] < x[99 - i] for i in range(100)])

        async def relu() -> None:
            x = [secfxp(i - 50.5) for i in range(100)]
            await mpc.output([mpc.max(v, 0) for v in x])

        async def meanvar() -> None:
            x = [secfxp(1.5) for _ in range(3000)]
            s = mpc.sum(x)
            mean = s / 3000
            var = mpc.in_prod(x, x) / 3000 - mean * mean
            await mpc.output(var)

        async def mlp() -> None:
            h = [[secfxp(0.5) for _ in range(30)]]
            for i, (a, b) in enumerate([(30, 64), (64, 32), (32, 1)]):
                w = [[secfxp(0.01) for _ in range(b)] for _ in range(a)]
                h = mpc.matrix_prod(h, w)
                if i < 2:
                    h = [[mpc.max(v, 0) for v in row] for row in h]
            await mpc.output([v for row in h for v in row])

        plan = [("mult_10k", mult), ("seq_100x1k_mult", seq), ("fx_matmul_64", mm), ("cmp_1k", cmp),
                ("relu_1k", relu), ("mean_var_3x100k", meanvar), ("mlp_30_64_32_1_b1", mlp)]
        for name, fn in plan:
            await timed(name, fn)
        await mpc.shutdown()
        return out

    result = mpc.run(run())
    if mpc.pid == 0:
        print(json.dumps(result))


# ---------------------------------------------------------------- driver

def run_parties(cmds: list[list[str]], env: dict[str, str], timeout: float) -> str:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=None if i == 0 else subprocess.DEVNULL, env=env, cwd=ROOT)
             for i, c in enumerate(cmds)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p in procs:
        if p.returncode != 0:
            raise RuntimeError(f"party process exited with {p.returncode}")
    return outs[0].decode()


def run_pq_parties(script: Path, env: dict[str, str], *, cwd: Path, timeout: float,
                   party0_stderr: bool = False) -> dict[str, Any]:
    """Run the pqmpc party role of ``script`` as 3 processes (``env`` sets role, mode and ports); party 0's JSON."""
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=None if i == 0 and party0_stderr else subprocess.DEVNULL,
                              env=dict(env, PQMPC_PARTY=str(i)), cwd=cwd) for i in range(3)]
    try:
        out = procs[0].communicate(timeout=timeout)[0]
        for p in procs[1:]:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return dict(json.loads(out.decode()))


def _pqmpc_runs(me: Path) -> dict[str, Any]:
    """Every pqmpc workload, semi-honest and malicious, 3 party processes each (party 0's figures)."""
    pq: dict[str, Any] = {}
    for mode in ("semi-honest", "malicious"):
        ports = free_ports(3)
        # One BLAS thread per party: 3 processes share the cores, and OpenBLAS's spinning
        # worker threads make small GEMMs ~15x slower when oversubscribed.
        env = dict(os.environ, PQMPC_BENCH_ROLE="pqmpc", PQMPC_MODE=mode, PQMPC_PORTS=",".join(map(str, ports)),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        pq[mode] = run_pq_parties(me, env, cwd=ROOT, timeout=300, party0_stderr=True)
    return pq


def _mpyc_runs(me: Path) -> tuple[dict[str, float], str]:
    """MPyC's figures with 3 parties (-M3), or with one (-M1) if that fails; and a note saying which."""
    py = sys.executable
    base = free_ports(1)[0]
    env = dict(os.environ, PQMPC_BENCH_ROLE="mpyc")
    try:
        cmds = [[py, str(me), "-M3", f"-I{i}", f"-B{base}", "--no-log"] for i in range(3)]
        mp = json.loads(run_parties(cmds, env, 240).strip().splitlines()[-1])
        return mp, "MPyC 0.11, 3 parties as subprocesses with -M3 on loopback, SecInt(64)/SecFxp(64)"
    except Exception as exc:  # noqa: BLE001 - fall back to one party, and say so
        log(f"MPyC -M3 failed ({exc}); running -M1")
        mp = json.loads(run_parties([[py, str(me), "-M1", "--no-log"]], env, 240).strip().splitlines()[-1])
        return mp, f"MPyC 0.11 with -M1 (multi-party run failed: {exc})"


def _side_by_side(pq: dict[str, Any], mp: dict[str, float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per workload, mode and phase (pqmpc vs MPyC, scaled where MPyC ran a smaller size)."""
    measured = {
        "mult_10k": "mult_10k", "mult_100k": "mult_10k", "seq_100x1k_mult": "seq_100x1k_mult",
        "fx_matmul_64": "fx_matmul_64", "fx_matmul_128": "fx_matmul_64", "cmp_1k": "cmp_1k", "cmp_10k": "cmp_1k",
        "relu_1k": "relu_1k", "relu_10k": "relu_1k", "mean_var_3x100k": "mean_var_3x100k",
        "mlp_30_64_32_1_b1": "mlp_30_64_32_1_b1", "mlp_30_64_32_1_b100": "mlp_30_64_32_1_b1",
    }
    workloads = []
    mpyc_scaling = {}
    for name, _ in pq_workloads():
        scaled, factor = MPYC_SCALE[name]
        mpyc_s = mp[measured[name]] * factor
        mpyc_scaling[name] = {"measured": scaled, "measured_s": round(mp[measured[name]], 4), "scale_factor": factor}
        for mode in ("semi-honest", "malicious"):
            for phase, key in (("online", "online_s"), ("with_dealer", "with_dealer_s")):
                t = pq[mode][name][key]
                workloads.append({
                    "name": f"{name}/{mode}/{phase}",
                    "pqmpc_s": round(t, 6),
                    "mpyc_s": round(mpyc_s, 4),
                    "speedup": round(mpyc_s / t, 1),
                })
    return workloads, mpyc_scaling


def _plain_matmul_1024_s() -> float:
    """Plaintext reference for the 1024x1024 product, measured in this run.

    numpy float64 GEMM (what BLAS does for the plaintext model); numpy's own uint64
    matmul, the exact analogue of the secure product, would be far slower, so float64
    is the fair "plain" baseline.
    """
    a = np.random.default_rng(0).standard_normal((1024, 1024))
    a @ a
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return (time.perf_counter() - t0) / reps


def main() -> None:
    role = os.environ.get("PQMPC_BENCH_ROLE")
    if role == "pqmpc":
        party, mode = int(os.environ["PQMPC_PARTY"]), os.environ["PQMPC_MODE"]
        ports = [int(p) for p in os.environ["PQMPC_PORTS"].split(",")]
        res = asyncio.run(pq_party(party, ports, mode))
        if party == 0:
            print(json.dumps(res))
        return
    if role == "mpyc":
        mpyc_main()
        return
    me = Path(__file__).resolve()
    pq = _pqmpc_runs(me)
    mp, mpyc_note = _mpyc_runs(me)
    workloads, mpyc_scaling = _side_by_side(pq, mp)
    plain = _plain_matmul_1024_s()
    secure = pq["semi-honest"]["fx_matmul_1024"]["online_s"]
    secure_dealer = pq["semi-honest"]["fx_matmul_1024"]["with_dealer_s"]
    beaver = {f"{mode}/{phase}": round(1e6 / pq[mode]["beaver_1M"][key])
              for mode in ("semi-honest", "malicious") for phase, key in (("online", "online_s"), ("with_dealer", "with_dealer_s"))}
    speedups = [w["speedup"] for w in workloads]
    print(json.dumps({
        "workloads": workloads,
        "beaver_mults_per_s": beaver["semi-honest/online"],
        "matmul1024_vs_plain_ratio": round(secure / plain, 1),
        "details": {
            "setup": "pqmpc: 3 processes, plain TCP on 127.0.0.1, numpy backend, additive sharing; semi-honest in "
                     "Z_2^64, malicious in F_(2^61-1) with SPDZ MACs (MAC check included in every timing); dealer = "
                     "seeded trusted dealer inside each party process (with_dealer includes generating the material, "
                     "online replays it). " + mpyc_note,
            "cpu_cores": os.cpu_count(),
            "beaver_mults_per_s": beaver,
            "beaver_batch": 1_000_000,
            "matmul1024": {"secure_fx_online_s": round(secure, 4), "secure_fx_with_dealer_s": round(secure_dealer, 4),
                           "numpy_float64_s": round(plain, 5)},
            "mpyc_scaling": mpyc_scaling,
            "min_speedup": min(speedups),
            "workloads_below_50x": [w["name"] for w in workloads if w["speedup"] < 50],
        },
    }))


if __name__ == "__main__":
    main()
