"""The README stays true: its set-up commands, links, CLI reference and metric names exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PQMPC = str(Path(sys.executable).parent / "pqmpc")


def test_the_two_setup_commands_are_make_targets() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci, ".ci/run must call exactly the README's test command"


def test_relative_links_point_to_files() -> None:
    links = re.findall(r"\]\(((?!https?://)[^)#]+)\)", README)
    assert links
    for link in links:
        assert (REPO / link).exists(), f"README links to missing {link}"


@pytest.mark.parametrize(
    "args",
    [["identity", "new"], ["keys", "fetch"], ["keys", "verify"], ["submit"], ["result"]],
)
def test_cli_reference_commands_exist(args: list[str]) -> None:
    line = next(l for l in README.splitlines() if l.startswith("pqmpc " + " ".join(args)))
    result = subprocess.run([PQMPC, *args, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in re.findall(r"(--[a-z-]+)", line):
        assert option in result.stdout, f"README documents {option} for `pqmpc {' '.join(args)}`, the CLI lacks it"


def test_metric_names_in_readme_are_exported() -> None:
    sources = "".join(p.read_text() for p in [*(REPO / "operator").rglob("*.py"), *(REPO / "node").rglob("*.py")])
    for name in set(re.findall(r"`(pqmpc_[a-z_]+)", README)):
        base = name.removesuffix("_total")
        assert base in sources, f"README names metric {name}, which nothing exports"


def test_alert_names_in_readme_exist() -> None:
    rules = (REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml").read_text()
    for alert in set(re.findall(r"`(Pqmpc[A-Za-z]+)`", README)):
        assert f"alert: {alert}" in rules, alert
