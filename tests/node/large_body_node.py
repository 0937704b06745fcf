"""A node process whose preprocessing upload limit is 1 GiB instead of 256 MiB; tests and benchmarks only.

Party 0's dealt material for 3 owners x 100k rows (range checks included) is larger than
the service's 256 MiB ``_PREPROCESSING_LIMIT``; until the service streams or raises it,
the large-session test and the benchmark start their nodes through this wrapper. The
peer links, the engine and every check are the product's own.
"""

from __future__ import annotations

import sys

from pqmpc_node import service
from pqmpc_node.__main__ import main

LIMIT = 1 << 30


def patch() -> None:
    service._PREPROCESSING_LIMIT = max(service._PREPROCESSING_LIMIT, LIMIT)  # read at build_app and per request


if __name__ == "__main__":
    patch()
    sys.exit(main())
