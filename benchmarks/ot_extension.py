"""Random-OT extension (IKNP + KOS check, :mod:`pqmpc_node.mpc.ot.extension`): extended OTs per second.

Both parties in one process on one asyncio loop, over the in-process channel (no network,
no TLS: the protocol's computation only, both sides' work on one core one after the
other), ideal base OTs (random seeds handed out as the base OTs would). One ``extend`` call
of ``--ots`` random OTs (the sender's m0, m1 and the receiver's m_x, 128 bits each,
consistency check included), after one warm-up call; best and median of ``--repeat``.
Each run's outputs are checked (outside the timing). ``step_ms`` times the protocol's
pure steps (best of 3 each) on one chunk of the same size, to show where the time goes.

    .venv/bin/python benchmarks/ot_extension.py [--ots 1048576] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, in ms, and the last result."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, out


async def measure(ots: int, repeat: int, chunk_rows: int) -> dict[str, Any]:
    from pqmpc_node.mpc.channel import InProcessHub
    from pqmpc_node.mpc.ot import extension as E

    delta = os.urandom(16)
    pairs = [(os.urandom(32), os.urandom(32)) for _ in range(E.KAPPA)]
    chosen = [pair[bit] for pair, bit in zip(pairs, E.delta_bits(delta), strict=True)]
    sender = E.OtExtensionSender(delta, chosen, context=b"bench", chunk_rows=chunk_rows)
    receiver = E.OtExtensionReceiver(pairs, context=b"bench", chunk_rows=chunk_rows)
    hub = InProcessHub(2)
    rng = np.random.default_rng()
    times = []
    for r in range(repeat + 1):
        x = rng.integers(0, 2, ots).astype(np.bool_)
        t0 = time.perf_counter()
        (m0, m1), mx = await asyncio.gather(sender.extend(hub.channel(0), 1, f"r{r}", ots),
                                            receiver.extend(hub.channel(1), 0, f"r{r}", x))
        elapsed = time.perf_counter() - t0
        if not np.array_equal(mx, np.where(x[:, None], m1, m0)):
            raise RuntimeError("the receiver's messages are not the chosen ones")
        log(f"{'warm-up' if r == 0 else f'run {r}'}: {ots} OTs in {elapsed * 1e3:.1f} ms ({ots / elapsed:,.0f}/s)")
        if r == 0:
            cold = elapsed
        else:
            times.append(elapsed)

    # where the time goes: the pure steps, best of 3 each, on one chunk of the same size
    rows = min(ots, chunk_rows)
    n = E.padded_rows(rows)
    keys0 = E.column_keys([k0 for k0, _ in pairs], b"bench")
    keys1 = E.column_keys([k1 for _, k1 in pairs], b"bench")
    keys = E.column_keys(chosen, b"bench")
    xp = rng.integers(0, 2, n).astype(np.bool_)
    challenge = os.urandom(E.CHALLENGE_BYTES)
    steps: dict[str, float] = {}
    steps["receiver_columns (PRG, transpose)"], (u, t) = timed(lambda: E.receiver_columns(keys0, keys1, 0, xp))
    steps["u_message"], message = timed(lambda: E.u_message(E.Chunk(0, 0, rows), u))
    steps["sender_rows (PRG, transpose)"], q = timed(lambda: E.sender_rows(keys, delta, 0, u))
    steps["check_response (2 GHASH)"], response = timed(lambda: E.check_response(challenge, t, xp))
    steps["check_verify (1 GHASH)"], ok = timed(lambda: E.check_verify(challenge, q, delta, response))
    steps["hash_rows receiver (TCCR)"], _ = timed(lambda: E.hash_rows(t[:rows], 0, 1))
    steps["hash_rows sender m0 (TCCR)"], _ = timed(lambda: E.hash_rows(q[:rows], 0, 1))
    steps["xor_rows sender q^delta"], qd = timed(lambda: E.xor_rows(q[:rows], delta))
    steps["hash_rows sender m1 (TCCR)"], _ = timed(lambda: E.hash_rows(qd, 0, 1))
    if not ok:
        raise RuntimeError("the honest check failed")
    best = min(times)
    return {
        "ot_extension_per_s": round(ots / best),
        "ot_extension_per_s_median": round(ots / statistics.median(times)),
        "best_s": round(best, 4),
        "cold_first_call_s": round(cold, 4),
        "u_bytes_per_ot": round(len(message) / rows, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_ms": {k: round(v, 2) for k, v in steps.items()},
    }


def main() -> None:
    from pqmpc_node.mpc.backend import tune_allocator
    from pqmpc_node.mpc.ot.extension import CHUNK_ROWS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ots", type=int, default=1 << 20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    args = ap.parse_args()
    tune_allocator()  # as the party processes do: large temporaries reuse heap pages
    result = asyncio.run(measure(args.ots, args.repeat, args.chunk_rows))
    result["setup"] = {"ots": f"{args.ots} random 1-of-2 OTs (128-bit messages) per extend call, best of "
                              f"{args.repeat} after one warm-up; chunks of {args.chunk_rows} rows per KOS check",
                       "how": "sender and receiver in one process, one asyncio loop, in-process channel (no network), "
                              "ideal base OTs; IKNP, kappa=128, KOS check via GHASH, TCCR outputs",
                       "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
