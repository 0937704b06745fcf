"""Fixtures for the adversarial wire tests: the node tests' operator harness (tests/node/harness.py)
with real node processes on loopback, one harness per test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NODE_TESTS = Path(__file__).resolve().parent.parent / "node"
if str(NODE_TESTS) not in sys.path:
    sys.path.insert(0, str(NODE_TESTS))

from harness import Operator  # noqa: E402


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(tmp_path_factory.mktemp("pool"))
    try:
        yield op
    finally:
        op.stop_all()
