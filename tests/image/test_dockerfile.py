"""The Dockerfile read statically (there is no Docker engine here).

Covers: multi-stage build; the final stage runs as a numeric non-root USER that matches
the chart's runAsUser; CMD in exec form naming a documented entry point (a
``[project.scripts]`` command), no ENTRYPOINT, the venv first on PATH so the chart's
``python -m pqmpc_operator`` and the operator's node command resolve; the GPU variant
(CUDA runtime base, ``gpu`` extra) and the liboqs stage (pinned release, only the
algorithms the liboqs backend maps); the build copies every source the wheel needs and
.dockerignore lets them in; the exposed ports are the settings' defaults.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from dockerfile_model import DOCKERFILE, REPO, Stage, arg_defaults, exec_form, parse
from pqmpc_node.crypto import backends
from pqmpc_operator.settings import OperatorSettings


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    preamble, stages = parse(DOCKERFILE.read_text())
    return arg_defaults(preamble), stages


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert len(found) == 1, f"no single stage {name!r}"
    return found[0]


def test_parser_reads_continuations_and_refuses_shell_form() -> None:
    _, stages = parse("ARG X=1\nFROM a AS b\n# c\nRUN one \\\n  # inner\n  two\nCMD [\"x\"]\n")
    assert stages[0].all("RUN") == ["one two"]
    with pytest.raises(ValueError):
        exec_form("pqmpc-operator --help")


def test_multi_stage_with_a_final_runtime(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    assert len(stages) >= 4
    final = stages[-1]
    assert final.name == "runtime" and final.base == "base"
    # The runtime copies the built venv, never builds: no compilers, no pip install.
    assert any("--from=build /opt/pqmpc" in c for c in final.all("COPY"))
    assert not any("pip install" in r or "build-essential" in r for r in final.all("RUN"))


def test_runs_as_numeric_non_root_user_matching_the_chart(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    chart_values = yaml.safe_load((REPO / "helm" / "pqmpc" / "values.yaml").read_text())
    assert chart_values["operator"]["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart_values["operator"]["podSecurityContext"]["runAsNonRoot"] is True


def test_cmd_is_a_documented_entry_point(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, Any]
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    assert not final.all("ENTRYPOINT"), "an ENTRYPOINT would prefix the chart's and the operator's commands"
    cmd = exec_form(final.all("CMD")[-1])
    scripts = pyproject["project"]["scripts"]
    assert cmd[0] in scripts
    assert scripts[cmd[0]] == "pqmpc_operator.__main__:main"
    assert set(scripts) == {"pqmpc", "pqmpc-operator", "pqmpc-node"}
    # The commands pods run resolve to the venv: `python` and the scripts are on PATH.
    env = " ".join(final.all("ENV"))
    assert re.search(r"PATH=/opt/pqmpc/bin:", env)
    assert OperatorSettings().node_command == ("python", "-m", "pqmpc_node")
    chart_values = yaml.safe_load((REPO / "helm" / "pqmpc" / "values.yaml").read_text())
    assert chart_values["operator"]["command"] == ["python", "-m", "pqmpc_operator"]
    assert chart_values["node"]["command"] == list(OperatorSettings().node_command)


def test_gpu_variant_uses_cuda_runtime_and_the_gpu_extra(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, Any]
) -> None:
    args, stages = dockerfile
    assert args["VARIANT"] == "cpu"
    assert "cuda" in args["CUDA_IMAGE"] and "runtime" in args["CUDA_IMAGE"]
    assert stage(stages, "base-gpu").base == "${CUDA_IMAGE}"
    assert stage(stages, "base").base == "base-${VARIANT}"
    install = " ".join(stage(stages, "build").all("RUN"))
    assert 'extras="gpu"' in install and "oqs" in install
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("cupy-cuda12x") for d in extras["gpu"])
    assert any(d.startswith("liboqs-python") for d in extras["oqs"])


def test_liboqs_stage_is_pinned_and_minimal(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["LIBOQS_VERSION"])
    assert args["WITH_OQS"] == "false"
    assert stage(stages, "liboqs").base == "liboqs-${WITH_OQS}"
    build = " ".join(stage(stages, "liboqs-true").all("RUN"))
    assert "refs/tags/${LIBOQS_VERSION}" in build and "sha256sum -c" in build
    minimal = re.search(r'-DOQS_MINIMAL_BUILD="([^"]+)"', build)
    assert minimal is not None
    built = set(minimal.group(1).split(";"))
    # Exactly what the liboqs backend asks liboqs for (ML-KEM-768 -> KEM_ml_kem_768, ...).
    wanted = {"KEM_" + n.lower().replace("-", "_") for n in backends._OQS_KEM.values()}
    wanted |= {"SIG_" + n.lower().replace("-", "_") for n in backends._OQS_SIG.values()}
    assert built == wanted
    # liboqs-python ships no library; its minor must match the pinned liboqs release.
    oqs_pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                   ["optional-dependencies"]["oqs"])
    minor = re.search(r">=(\d+\.\d+)", oqs_pin)
    assert minor is not None and args["LIBOQS_VERSION"].startswith(minor.group(1) + ".")


def test_build_copies_what_the_wheel_needs(
    dockerfile: tuple[dict[str, str], list[Stage]], pyproject: dict[str, Any]
) -> None:
    _, stages = dockerfile
    copied = set()
    for c in stage(stages, "build").all("COPY"):
        *sources, _dest = c.split()
        copied |= {s.rstrip("/") for s in sources if not s.startswith("--")}
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {p.split("/")[0] for p in wheel["packages"]} | set(wheel["force-include"])
    needed |= {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]}
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**") if "**" in ignore else 0] == "**"
    for path in needed:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, f".dockerignore keeps {path} out of the context"


def test_exposed_ports_are_the_defaults(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    exposed = {int(p) for e in stages[-1].all("EXPOSE") for p in e.split()}
    s = OperatorSettings()
    assert exposed == {s.liveness_port, s.metrics_port, s.api_port, s.peer_port}
