"""Benchmark: pqmpc's MPC engine (3 party processes, plain TCP on loopback) against MPyC 0.11.

Usage: .venv/bin/python benchmarks/mpc_vs_mpyc.py [--quick]
Prints ONE JSON object on stdout (progress on stderr): ``workloads`` with
``{name, pqmpc_s, mpyc_s, speedup}`` (pqmpc semi-honest online time vs MPyC), per-mode
online and online+dealer times, ``beaver_mults_per_s`` and ``matmul1024_vs_plain_ratio``.

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
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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
        x = sh((300_000,))
        total = ctx.sum(x)
        mean = await P.divide_public(ctx, total, 300_000, quotient_bound=100.0)
        ex2 = await P.divide_public(ctx, ctx.sum(await P.fx_multiply(ctx, x, x)), 300_000, quotient_bound=1e4)
        ctx.sub(ex2, await P.fx_multiply(ctx, mean, mean))

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
    from pqmpc_node.net.tcp_channel import TcpChannel

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
    extra = [("beaver_1M", lambda ctx, sh: P.multiply(ctx, sh((1_000_000,)), sh((1_000_000,))))]
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
    "mult_10k": ("1000 mults", 10), "mult_100k": ("1000 mults", 100),
    "seq_100x1k_mult": ("10 rounds x 100 mults", 100),
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

        async def mult() -> None:
            x = [secint(i) for i in range(1000)]
            await mpc.output(mpc.schur_prod(x, x)[0])

        async def seq() -> None:
            x = [secint(2) for _ in range(100)]
            for _ in range(10):
                x = mpc.schur_prod(x, x)
            await mpc.output(x[0])

        async def mm() -> None:
            a = [[secfxp(0.01) for _ in range(16)] for _ in range(16)]
            await mpc.output(mpc.matrix_prod(a, a)[0][0])

        async def cmp() -> None:
            x = [secint(i) for i in range(100)]
            await mpc.output([x[i] < x[99 - i] for i in range(100)][0])

        async def relu() -> None:
            x = [secfxp(i - 50.5) for i in range(100)]
            await mpc.output([mpc.max(v, 0) for v in x][0])

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
            await mpc.output(h[0][0])

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
def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
    py = sys.executable
    me = str(Path(__file__).resolve())
    pq: dict[str, Any] = {}
    for mode in ("semi-honest", "malicious"):
        ports = free_ports(3)
        env = dict(os.environ, PQMPC_BENCH_ROLE="pqmpc", PQMPC_MODE=mode, PQMPC_PORTS=",".join(map(str, ports)))
        cmds = [[py, me] for _ in range(3)]
        envs = []
        out = None
        procs = []
        for i in range(3):
            e = dict(env, PQMPC_PARTY=str(i))
            envs.append(e)
            procs.append(subprocess.Popen(cmds[i], stdout=subprocess.PIPE, stderr=None if i == 0 else subprocess.DEVNULL, env=e, cwd=ROOT))
        try:
            out = procs[0].communicate(timeout=400)[0]
            for p in procs[1:]:
                p.wait(timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        pq[mode] = json.loads(out.decode())
    base = free_ports(1)[0]
    mpyc_note = "MPyC 0.11, 3 parties as subprocesses with -M3 on loopback, SecInt(64)/SecFxp(64)"
    try:
        env = dict(os.environ, PQMPC_BENCH_ROLE="mpyc")
        cmds = [[py, me, "-M3", f"-I{i}", f"-B{base}", "--no-log"] for i in range(3)]
        mp = json.loads(run_parties(cmds, env, 400).strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - fall back to one party, and say so
        log(f"MPyC -M3 failed ({exc}); running -M1")
        mpyc_note = f"MPyC 0.11 with -M1 (multi-party run failed: {exc})"
        env = dict(os.environ, PQMPC_BENCH_ROLE="mpyc")
        mp = json.loads(run_parties([[py, me, "-M1", "--no-log"]], env, 400).strip().splitlines()[-1])
    measured = {
        "mult_10k": "mult_10k", "mult_100k": "mult_10k", "seq_100x1k_mult": "seq_100x1k_mult",
        "fx_matmul_64": "fx_matmul_64", "fx_matmul_128": "fx_matmul_64", "cmp_1k": "cmp_1k", "cmp_10k": "cmp_1k",
        "relu_1k": "relu_1k", "relu_10k": "relu_1k", "mean_var_3x100k": "mean_var_3x100k",
        "mlp_30_64_32_1_b1": "mlp_30_64_32_1_b1", "mlp_30_64_32_1_b100": "mlp_30_64_32_1_b1",
    }
    workloads = []
    for name, _ in pq_workloads():
        scaled, factor = MPYC_SCALE[name]
        mpyc_s = mp[measured[name]] * factor
        sh = pq["semi-honest"][name]
        workloads.append({
            "name": name,
            "pqmpc_s": round(sh["online_s"], 6),
            "mpyc_s": round(mpyc_s, 4),
            "speedup": round(mpyc_s / sh["online_s"], 1),
            "pqmpc_semi_honest": {k: round(v, 6) for k, v in sh.items()},
            "pqmpc_malicious": {k: round(v, 6) for k, v in pq["malicious"][name].items()},
            "mpyc_measured": f"{scaled}: {mp[measured[name]]:.4f}s, extrapolated x{factor}",
        })
    t0 = time.perf_counter()
    a = np.random.default_rng(0).standard_normal((1024, 1024))
    reps = 5
    for _ in range(reps):
        a @ a
    plain = (time.perf_counter() - t0) / reps
    secure = pq["semi-honest"]["fx_matmul_1024"]["online_s"]
    print(json.dumps({
        "setup": "pqmpc: 3 processes, plain TCP on 127.0.0.1, numpy backend, additive sharing; semi-honest in Z_2^64, "
                 "malicious in F_(2^61-1) with SPDZ MACs; dealer = in-process seeded trusted dealer. " + mpyc_note,
        "cpu_cores": os.cpu_count(),
        "workloads": workloads,
        "beaver_mults_per_s": {
            "semi_honest_online": round(1e6 / pq["semi-honest"]["beaver_1M"]["online_s"]),
            "semi_honest_with_dealer": round(1e6 / pq["semi-honest"]["beaver_1M"]["with_dealer_s"]),
            "malicious_online": round(1e6 / pq["malicious"]["beaver_1M"]["online_s"]),
        },
        "matmul1024_vs_plain_ratio": round(secure / plain, 1),
        "matmul1024": {"secure_fx_online_s": round(secure, 4), "numpy_float64_s": round(plain, 5)},
    }))


if __name__ == "__main__":
    main()
