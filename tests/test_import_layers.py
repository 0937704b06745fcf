"""The layer contract: pure modules (placement, builders, status, protocol math) import no I/O."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_contract_covers_the_pure_modules() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".importlinter")
    contract = cfg["importlinter:contract:pure-core"]
    sources = contract["source_modules"].split()
    forbidden = contract["forbidden_modules"].split()
    for module in ("pqmpc_node.crypto", "pqmpc_node.mpc", "pqmpc_operator.model", "pqmpc_operator.builders",
                   "pqmpc_operator.rollout", "pqmpc_operator.status"):
        assert module in sources, f"{module} is not under the pure-core contract"
    for module in ("kopf", "kubernetes", "socket", "prometheus_client", "aiohttp", "httpx"):
        assert module in forbidden


def test_import_linter_keeps_the_contract() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
