"""Fixtures for the node tests: an operator harness with real node processes on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Operator  # noqa: E402


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(tmp_path_factory.mktemp("pool"))
    try:
        yield op
    finally:
        op.stop_all()


@pytest.fixture(scope="module")
def trio(operator: Operator) -> list:  # type: ignore[type-arg]
    """Three certified semi-honest nodes."""
    nodes = operator.start_nodes(3)
    operator.certify(nodes)
    return nodes
