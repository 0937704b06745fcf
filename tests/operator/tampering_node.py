"""Test-only node command: ``python tampering_node.py VICTIM`` runs the node, tampering
with its result shares (tests/node/faulty_node.py's hook) when it is the pod VICTIM."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    victim = sys.argv[1] if len(sys.argv) > 1 else ""
    if os.environ.get("PQMPC_NODE_ID") == victim:
        os.environ["PQMPC_TEST_FAULT"] = "tamper"
    sys.argv = [sys.argv[0]]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "node" / "faulty_node.py"), run_name="__main__")
