"""Shared fixtures: where the known-answer vectors live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("PQMPC_VECTORS", REPO / "tests" / "vectors"))  # the project's own copy (README there)


@pytest.fixture(scope="session", autouse=True)
def client_history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clients (and CLI subprocesses) keep their transparency-log history here, not in the user's home."""
    path = tmp_path_factory.mktemp("pqmpc-config")
    os.environ["PQMPC_CONFIG_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The folder of Wycheproof / X-Wing known-answer files; skips, saying why, if absent."""
    if not VECTORS.is_dir():
        pytest.skip(f"known-answer vectors not found at {VECTORS} (set PQMPC_VECTORS to their folder)")
    return VECTORS

pytest_plugins = ["pqmpc_local.pytest_plugin"]
