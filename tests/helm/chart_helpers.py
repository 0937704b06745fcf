"""Helpers of the chart tests (imported by tests/helm/conftest.py and the test modules)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pqmpc_local.controlplane import binaries_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pqmpc"
KUBE_VERSION = "1.35.0"


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys (the API server would keep only one)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {dupes}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The documents of a rendered chart, refusing duplicate keys."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]


def helm_binary() -> str | None:
    """helm from ``scripts/build-control-plane.sh``'s cache, else one on PATH."""
    candidate = binaries_dir() / "helm"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("helm")


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one kind."""
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single document of ``kind``; fails if there is not exactly one."""
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]
