"""docs/crd-reference.md is exactly what scripts/gen-crd-docs.py generates from the
CRDs, and it documents every spec field and CEL rule of both kinds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen-crd-docs.py"
DOC = REPO / "docs" / "crd-reference.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crd_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_matches_the_generator() -> None:
    assert DOC.read_text(encoding="utf-8") == load_generator().render(), (
        "docs/crd-reference.md is stale; run: python scripts/gen-crd-docs.py --write"
    )


def test_check_mode_flags_a_stale_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    generator = load_generator()
    stale = tmp_path / "crd-reference.md"
    stale.write_text("# stale\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    monkeypatch.setattr(generator, "REPO", tmp_path)
    assert generator.main(["--check"]) == 1


def test_reference_lists_every_spec_field_and_rule() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in ("nodepools.pqmpc.io.yaml", "mpcsessions.pqmpc.io.yaml"):
        crd = yaml.safe_load((REPO / "crds" / name).read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, _node, _required in load_generator().walk(schema["properties"]["spec"], "spec"):
            if path != "spec":
                assert f"| `{path}` |" in text, path
        assert f"## {crd['spec']['names']['kind']}" in text
    assert "self.threshold < self.parties" in text
    assert "isCIDR(self)" in text
