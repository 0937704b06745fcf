"""F_p kernels on the CPU: the blocked numpy kernels against the unblocked ones they replaced.

Side by side in one process, at ``--elements`` (default 2^20) elements, best of ``--repeat``:

* ``mul``: elementwise product of two arrays (:meth:`MersenneField61.mul`);
* ``prss``: one party's ``PrssKeys.random`` plus ``PrssKeys.zero`` (n = 3, t = 1: two keys);
  the mean over the three parties, whose weights differ (1, 2 / -1, 1 / -2, -1);
* ``reconstruct_t1`` and ``reconstruct_t2``: ``ShamirScheme.reconstruct`` at n = 3 from
  t + 1 shares (t = 2 is the degree-2t opening of Damgård-Nielsen degree reduction).

The baseline (``old``) is the code before blocking, kept here and only here: whole-array
passes, conditional subtraction by the borrow bit, PRSS polynomials normalized to
f_A(0) = 1 (so weights are full 61-bit constants) with one general product per key,
keystream via ``update(bytes(8 * count))``, Lagrange interpolation as general products
and additions. Results are checked equal (mul, reconstruct) or consistent (PRSS: old and
new share values differ by design, both must recombine and the zero sharing must open to
zero) before timing. The allocator is tuned first, as party processes do.

    .venv/bin/python benchmarks/field_kernels.py [--elements 1048576] [--repeat 7] [--block 16384]

``--block`` overrides the kernels' block size (to tune :data:`pqmpc_node.mpc.field.BLOCK`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pqmpc_node.mpc import field as field_module
from pqmpc_node.mpc import prss as prss_module
from pqmpc_node.mpc.backend import tune_allocator
from pqmpc_node.mpc.field import P61, MersenneField61
from pqmpc_node.mpc.prss import PrssKeys, unqualified_sets
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_node.mpc.sharing import ShamirScheme

U64 = np.ndarray[Any, np.dtype[np.uint64]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_s(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# -- the baseline: the unblocked kernels as they were -----------------------------------------

_P = np.uint64(P61)


def _old_csub(x: U64) -> U64:
    x -= _P
    m = x >> np.uint64(63)
    m *= _P
    x += m
    return x


def _old_iadd(a: U64, b: U64) -> U64:
    a += b
    return _old_csub(a)


def _old_add(a: U64, b: U64) -> U64:
    return _old_csub(np.add(a, b, dtype=np.uint64))


def _old_mul(a: Any, b: Any) -> U64:
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    s31, m31 = np.uint64(31), np.uint64((1 << 31) - 1)
    a0, a1 = a & m31, a >> s31
    b0, b1 = b & m31, b >> s31
    mid = a1 * b0
    t = a0 * b1
    mid += t
    np.multiply(a1, b1, out=t)
    t <<= np.uint64(1)
    lo = a0 * b0
    t += lo
    np.right_shift(mid, np.uint64(30), out=lo)
    t += lo
    mid &= np.uint64((1 << 30) - 1)
    mid <<= s31
    t += mid
    y = np.bitwise_and(t, _P, out=mid)
    t >>= np.uint64(61)
    y += t
    return _old_csub(y)


def _old_from_words(words: U64) -> U64:
    return _old_csub(np.asarray(words, dtype=np.uint64) & _P)


def _old_weight(subset: Sequence[int], party: int) -> int:
    """CDI05's normalized f_A(x_party), f_A(0) = 1."""
    x = party + 1
    num, den = 1, 1
    for a in subset:
        num = num * (a + 1 - x) % P61
        den = den * (a + 1) % P61
    return num * pow(den, -1, P61) % P61


class OldPrss:
    """One party's PRSS as it was: per key, the whole request's words, a general product, an addition."""

    def __init__(self, party: int, n: int, t: int, keys: Mapping[tuple[int, ...], bytes]) -> None:
        self.party, self.t = party, t
        self.streams = [(AesCtrRandom(derive_key(k, "pqmpc/prss/random")), AesCtrRandom(derive_key(k, "pqmpc/prss/zero-2t")),
                         _old_weight(s, party)) for s, k in sorted(keys.items())]

    @staticmethod
    def _words(stream: AesCtrRandom, count: int) -> U64:
        return np.frombuffer(stream.bytes(8 * count), dtype=np.uint64)

    def random(self, count: int) -> U64:
        acc = np.zeros(count, dtype=np.uint64)
        for stream, _, weight in self.streams:
            acc = _old_iadd(acc, _old_mul(_old_from_words(self._words(stream, count)), np.uint64(weight)))
        return acc

    def zero(self, count: int) -> U64:
        x = self.party + 1
        acc = np.zeros(count, dtype=np.uint64)
        for _, stream, weight in self.streams:
            for j in range(1, self.t + 1):
                coeff = pow(x, j, P61) * weight % P61
                acc = _old_iadd(acc, _old_mul(_old_from_words(self._words(stream, count)), np.uint64(coeff)))
        return acc


def _old_reconstruct(shares: Mapping[int, U64], base: Sequence[int]) -> U64:
    xs = [p + 1 for p in base]
    acc = np.zeros(shares[base[0]].shape, dtype=np.uint64)
    for p, xi in zip(base, xs, strict=True):
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = num * (-xj) % P61
                den = den * (xi - xj) % P61
        acc = _old_add(acc, _old_mul(shares[p], np.uint64(num * pow(den, -1, P61) % P61)))
    return acc


# -- the comparison ---------------------------------------------------------------------------


def compare(old_s: float, new_s: float, elements: int) -> dict[str, float]:
    return {"old_ns_per_element": round(old_s / elements * 1e9, 2), "new_ns_per_element": round(new_s / elements * 1e9, 2),
            "speedup": round(old_s / new_s, 2)}


def measure(elements: int, repeat: int) -> dict[str, Any]:
    f = MersenneField61()
    rng = np.random.default_rng(1)
    a = rng.integers(0, P61, elements, dtype=np.uint64)
    b = rng.integers(0, P61, elements, dtype=np.uint64)
    out: dict[str, Any] = {"elements": elements}

    log("mul: checking, then timing")
    if not np.array_equal(_old_mul(a, b), f.mul(a, b)):
        raise SystemExit("mul: the blocked product differs from the unblocked one")
    out["mul"] = compare(best_s(lambda: _old_mul(a, b), repeat), best_s(lambda: f.mul(a, b), repeat), elements)
    log(f"  {out['mul']}")

    log("prss random + zero (n=3, t=1): checking, then timing each party")
    n, t = 3, 1
    sets = unqualified_sets(n, t)
    master = {s: os.urandom(32) for s in sets}
    held = [{s: k for s, k in master.items() if i not in s} for i in range(n)]
    scheme, double = ShamirScheme(n, t), ShamirScheme(n, 2 * t)
    for label, make in (("old", lambda i: OldPrss(i, n, t, held[i])), ("new", lambda i: PrssKeys(i, n, t, held[i]))):
        parties = [make(i) for i in range(n)]
        r = {i: (p.random(1000) if isinstance(p, OldPrss) else p.random(f, (1000,))) for i, p in enumerate(parties)}
        z = {i: (p.zero(1000) if isinstance(p, OldPrss) else p.zero(f, (1000,))) for i, p in enumerate(parties)}
        scheme.reconstruct(f, r, check=True)  # raises unless the shares lie on one degree-t polynomial
        if double.reconstruct(f, z).any():
            raise SystemExit(f"prss ({label}): the zero sharing does not open to zero")
    old_s = new_s = 0.0
    for i in range(n):
        old, new = OldPrss(i, n, t, held[i]), PrssKeys(i, n, t, held[i])
        old_s += best_s(lambda: (old.random(elements), old.zero(elements)), repeat) / n
        new_s += best_s(lambda: (new.random(f, (elements,)), new.zero(f, (elements,))), repeat) / n
    out["prss_random_zero"] = {**compare(old_s, new_s, elements), "old_ms": round(old_s * 1e3, 2), "new_ms": round(new_s * 1e3, 2)}
    log(f"  {out['prss_random_zero']}")

    for t in (1, 2):
        log(f"shamir reconstruct n=3 from {t + 1} shares: checking, then timing")
        shares = {i: rng.integers(0, P61, elements, dtype=np.uint64) for i in range(t + 1)}
        scheme = ShamirScheme(3, t)
        if not np.array_equal(_old_reconstruct(shares, list(range(t + 1))), scheme.reconstruct(f, shares)):
            raise SystemExit("reconstruct: the linear combination differs from the general products")
        out[f"reconstruct_t{t}"] = compare(best_s(lambda: _old_reconstruct(shares, list(range(t + 1))), repeat),
                                           best_s(lambda: scheme.reconstruct(f, shares), repeat), elements)
        log(f"  {out[f'reconstruct_t{t}']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--block", type=int, default=field_module.BLOCK)
    args = parser.parse_args()
    field_module.BLOCK = prss_module.BLOCK = args.block
    tuned = tune_allocator()
    result = measure(args.elements, args.repeat)
    result["setup"] = {"block_elements": field_module.BLOCK, "repeat": f"best of {args.repeat} after a warm-up",
                       "allocator_tuned": tuned, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "numpy": np.__version__, "machine": platform.machine()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
