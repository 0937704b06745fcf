"""Placement benchmark: time to place n parties among N nodes with the pure solver.

Builds a synthetic pool for each size (regions x 3 zones, trust domains spread across
them, a quarter of the nodes with GPUs, 2% not ready, 1% quarantined, loads 0..7 from a
seeded generator), a session whose inputs allow all but one region, distinct trust
domains and at most one party per zone, and times ``place_parties`` (the node
candidates are built beforehand, as the operator builds them once per reconcile). Each
figure is the median of ``--runs`` runs after one warm-up. Prints one JSON object:
``place_<N>x<n>_ms`` per size, the solver name and the run's parameters.

    .venv/bin/python benchmarks/placement.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import scipy

from pqmpc_operator.placement import (
    SOLVER_NAME,
    InputLocality,
    NodeCandidate,
    NodeName,
    Placement,
    PlacementRequest,
    place_parties,
)

# (nodes, parties, regions, trust domains)
SIZES = ((100, 3, 3, 6), (1000, 7, 4, 12), (10000, 16, 8, 40))


def synthetic_pool(count: int, regions: int, trust_domains: int, seed: int = 7) -> list[NodeCandidate]:
    """A pool of ``count`` nodes over ``regions`` regions with 3 zones each."""
    rng = np.random.default_rng(seed)
    region = rng.integers(0, regions, count)
    zone = rng.integers(0, 3, count)
    domain = rng.integers(0, trust_domains, count)
    gpu = rng.random(count) < 0.25
    health = rng.random(count)
    load = rng.integers(0, 8, count)
    return [
        NodeCandidate(
            name=NodeName(f"pool-td{domain[i]}-r{region[i]}-{i:05d}"),
            group=f"td{domain[i]}-r{region[i]}",
            region=f"region-{region[i]}",
            zone=f"region-{region[i]}-{'abc'[zone[i]]}",
            trust_domain=f"org-{domain[i]}",
            ready=bool(health[i] >= 0.02),
            quarantined=bool(0.02 <= health[i] < 0.03),
            gpus=1 if gpu[i] else 0,
            load=int(load[i]),
        )
        for i in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    result: dict[str, object] = {"solver": SOLVER_NAME, "scipy": scipy.__version__, "python": platform.python_version(),
                                 "runs": args.runs}
    for count, parties, regions, domains in SIZES:
        nodes = synthetic_pool(count, regions, domains)
        allowed = frozenset(f"region-{r}" for r in range(regions - 1))
        request = PlacementRequest(
            parties=parties,
            inputs=(InputLocality("bank-a", allowed), InputLocality("bank-b", None)),
            distinct_trust_domains=True,
            max_shares_per_zone=1,
        )
        first = place_parties(nodes, request)
        if not isinstance(first, Placement):
            raise SystemExit(f"benchmark pool {count}x{parties} is infeasible: {first}")
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            place_parties(nodes, request)
            times.append((time.perf_counter() - start) * 1000.0)
        result[f"place_{count}x{parties}_ms"] = round(statistics.median(times), 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
