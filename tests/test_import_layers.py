"""The import contracts: pure modules import no I/O, the node is layered, client and operator keep out of its server."""

from __future__ import annotations

import configparser
import os
import shutil
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


def test_layer_and_boundary_contracts_are_declared() -> None:
    """The rules docs/architecture.md states are contracts, not prose (and name today's modules)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".importlinter")
    server = [line.strip() for line in cfg["importlinter:contract:node-server-layers"]["layers"].strip().splitlines()]
    assert server[1:3] == ["pqmpc_node.service", "pqmpc_node.api_errors"]
    assert server[-1] == "pqmpc_node.mpc | pqmpc_node.crypto"
    client = cfg["importlinter:contract:client-without-server"]
    assert set(client["source_modules"].split()) == {"pqmpc_node.client", "pqmpc_node.cli"}
    assert {"pqmpc_node.service", "pqmpc_node.sessions", "pqmpc_node.config", "pqmpc_node.keystore"} <= set(
        client["forbidden_modules"].split())
    operator = cfg["importlinter:contract:operator-outside-node-server"]
    assert {"pqmpc_node.service", "pqmpc_node.sessions", "pqmpc_node.config", "pqmpc_node.metrics",
            "pqmpc_node.bootstrap"} <= set(operator["forbidden_modules"].split())


def test_import_linter_breaks_on_an_upward_import(tmp_path: Path) -> None:
    """A copy of the packages with three forbidden imports planted: exactly the contracts they break report them."""
    for pkg in ("node/pqmpc_node", "operator/pqmpc_operator"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    for module, line in (("node/pqmpc_node/client.py", "import pqmpc_node.config"),
                         ("node/pqmpc_node/config.py", "import pqmpc_node.api_errors"),
                         ("operator/pqmpc_operator/bootstrap_server.py", "import pqmpc_node.config")):
        path = tmp_path / module
        path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    lint = Path(sys.executable).parent / "lint-imports"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(tmp_path / d) for d in ("node", "operator")))
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0, result.stdout
    broken = {line.rsplit(" ", 1)[0] for line in result.stdout.splitlines() if line.endswith(" BROKEN")}
    assert broken == {
        "Node server: service > sessions > dealer > engine > plan | net > mpc | crypto",
        "The client SDK and the CLI import nothing of the node's server side",
        "The operator imports nothing of the node's server internals",
    }, result.stdout
