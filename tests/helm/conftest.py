"""Fixtures of the chart tests: the helm binary and rendering the chart."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_helpers import CHART, KUBE_VERSION, helm_binary, load_manifests  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``helm(*args, check=True)`` runs helm and returns a text ``CompletedProcess``."""
    binary = helm_binary()
    if binary is None:
        pytest.skip("helm not found; build it with `make control-plane` (scripts/build-control-plane.sh)")

    def run(*args: str, check: bool = True, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def render(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[..., list[dict[str, Any]]]:
    """``render(*set_args, monitoring=False)``: the chart's manifests as dicts."""

    def run(*set_args: str, monitoring: bool = False, namespace: str = "pqmpc-system",
            release: str = "pqmpc") -> list[dict[str, Any]]:
        extra: Sequence[str] = ("--api-versions", "monitoring.coreos.com/v1") if monitoring else ()
        sets = [arg for s in set_args for arg in ("--set", s)]
        out = helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                   "--include-crds", *extra, *sets).stdout
        return load_manifests(out)

    return run
