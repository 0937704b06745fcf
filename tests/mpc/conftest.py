"""Fixtures for the MPC engine tests: the array namespace (numpy, and cupy where a GPU is present)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # program_run, the in-process program runner

from pqmpc_node.mpc.backend import BackendUnavailableError, select_namespace


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request: pytest.FixtureRequest) -> Any:
    """The array namespace; the cupy variant skips, saying why, without cupy or a CUDA device."""
    try:
        return select_namespace(request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"cupy variant skipped: {exc}")
