"""Benchmark-only launcher of ``python -m pqmpc_node``, with an optional profile.

``PQMPC_BENCH_PROFILE=<path>``: run the node under :mod:`cProfile` and write the stats to
``<path>`` when it stops (SIGTERM ends ``web.run_app`` and ``main`` returns). Like
``tests/node/large_body_node.py``, it lifts the service's preprocessing upload limit to
1 GiB (party 0's material for 3 x 100k rows is over 256 MiB); otherwise this is exactly
``python -m pqmpc_node``. Used by ``benchmarks/node_e2e.py`` for its PQ
runs, and by :mod:`_plain_tcp_node` after its patch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "node"))

from large_body_node import patch as lift_preprocessing_limit  # noqa: E402

from pqmpc_node.__main__ import main  # noqa: E402


def run() -> int:
    lift_preprocessing_limit()
    path = os.environ.get("PQMPC_BENCH_PROFILE")
    if not path:
        return main()
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return main()
    finally:
        profiler.disable()
        profiler.dump_stats(path)


if __name__ == "__main__":
    sys.exit(run())
