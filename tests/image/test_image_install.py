"""The image's Python install step, run for real in a clean virtual environment.

There is no Docker engine here, so this runs the build stage's own ``RUN`` (taken from the
Dockerfile, not retyped) in a folder holding only what the stage ``COPY``s, with the
image's ``VENV``/``VARIANT``/``WITH_OQS`` set; then checks the entry points the image
documents: ``pqmpc-operator --help``, ``python -m pqmpc_node`` exiting 2 with its
configuration error, ``pqmpc --help``; the CRDs shipped in the wheel; no test-only
package (``pqmpc_local``) in the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dockerfile_model import DOCKERFILE, REPO, Stage, parse

pytestmark = pytest.mark.slow


def build_stage() -> Stage:
    _, stages = parse(DOCKERFILE.read_text())
    return next(s for s in stages if s.name == "build")


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = build_stage()
    context = tmp_path_factory.mktemp("context")
    for copy in stage.all("COPY"):
        *sources, _dest = copy.split()
        for source in sources:
            src = REPO / source.rstrip("/")
            if src.is_dir():
                shutil.copytree(src, context / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(src, context / src.name)
    runs = [r for r in stage.all("RUN") if "pip" in r and "install" in r]
    assert len(runs) == 1, runs
    venv = tmp_path_factory.mktemp("image") / "opt-pqmpc"
    env = {
        **os.environ,
        "VENV": str(venv),
        "VARIANT": "cpu",
        "WITH_OQS": "false",
        # The base image's interpreter; here the one that made the project's venv.
        "PQMPC_PYTHON": getattr(sys, "_base_executable", sys.executable),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["/bin/sh", "-c", runs[0]], cwd=context, env=env, capture_output=True, text=True,
                            timeout=540, check=False)
    assert result.returncode == 0, f"the image's install step failed:\n{result.stdout}\n{result.stderr}"
    return venv


def run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv.parent), "LANG": "C.UTF-8"}
    return subprocess.run(list(argv), env=env, cwd=venv.parent, capture_output=True, text=True, timeout=120,
                          check=False)


def test_operator_entry_point(image_venv: Path) -> None:
    result = run(image_venv, "pqmpc-operator", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: pqmpc-operator" in result.stdout and "--namespace" in result.stdout
    # The chart's command: `python` on the image's PATH is the venv's.
    result = run(image_venv, "python", "-m", "pqmpc_operator", "--help")
    assert result.returncode == 0 and "--namespace" in result.stdout


def test_node_entry_point_reports_its_configuration_error(image_venv: Path) -> None:
    result = run(image_venv, "python", "-m", "pqmpc_node")
    assert result.returncode == 2
    assert "pqmpc-node: PQMPC_POOL, PQMPC_NODE_ID not set" in result.stderr
    assert run(image_venv, "pqmpc-node").returncode == 2


def test_cli_entry_point(image_venv: Path) -> None:
    result = run(image_venv, "pqmpc", "--help")
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout


def test_wheel_ships_the_crds_and_no_test_code(image_venv: Path) -> None:
    probe = ("import importlib.util, pathlib, pqmpc_operator; "
             "print(sorted(p.name for p in (pathlib.Path(pqmpc_operator.__file__).parent / 'crds').glob('*.yaml'))); "
             "print(importlib.util.find_spec('pqmpc_local') is None)")
    result = run(image_venv, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    crds, no_local = result.stdout.splitlines()
    assert crds == str(sorted(p.name for p in (REPO / "crds").glob("*.yaml")))
    assert no_local == "True"
    # Not an editable install: the package lives in the venv, not in the source tree.
    where = run(image_venv, "python", "-c", "import pqmpc_node; print(pqmpc_node.__file__)").stdout
    assert where.startswith(str(image_venv))
