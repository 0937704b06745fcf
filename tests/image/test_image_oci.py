"""The real image (``make image``): a valid OCI layout whose config is the Dockerfile's, and
the operator, node and CLI entry points run from its layers.

The image is built on demand by ``scripts/build-image.sh``, the script ``make image``
runs, so this never judges a stale image: it is cached (a no-op when nothing changed, the
app layer only when the code changed, a full debootstrap only on a cold cache). The layout
is then checked by hand (:mod:`oci_layout`, not umoci, which wrote it), the layers are
unpacked here, and each command runs in a bubblewrap sandbox the way a runtime (and the
chart) runs the image: read-only root, fresh /tmp, no network, the config's User, Env,
WorkingDir, and HOME from the image's /etc/passwd.

Skips, saying which, only where this machine cannot: the build needs root (the script
exits 3 and says why); running as the image's user needs bubblewrap, and root (which
switches to the user with the image's own ``setpriv``) or unprivileged user namespaces
(bwrap maps the caller to the user).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockerfile_model import DOCKERFILE, REPO, Stage, arg_defaults, exec_form, parse
from oci_layout import Image, read_image, referenced_blobs, unpack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

LAYOUT = REPO / "build" / "image" / "pqmpc"
CANNOT = 3  # scripts/build-image.sh: "this machine cannot build it"
Run = Callable[..., "subprocess.CompletedProcess[str]"]


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="module")
def image() -> Image:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1100, check=False)
    if result.returncode == CANNOT:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, f"make image failed:\n{result.stdout}\n{result.stderr}"
    return read_image(LAYOUT, project_version())


@pytest.fixture(scope="module")
def runtime_stage() -> tuple[dict[str, str], Stage]:
    preamble, stages = parse(DOCKERFILE.read_text())
    return arg_defaults(preamble), stages[-1]


def userns_works() -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def sandbox_prefix(*, uid: int, gid: int, is_root: bool, have_bwrap: bool, userns: bool) -> list[str] | str:
    """The bwrap arguments that run a command as ``uid:gid``, or why this machine cannot."""
    if not have_bwrap:
        return "bubblewrap (bwrap) is not installed: scripts/build-image.sh installs it as root"
    if is_root:
        # Real ids: root enters the sandbox, the image's setpriv drops to the user.
        return ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--", "/usr/bin/setpriv",
                f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    if userns:
        return ["--unshare-all", "--unshare-user", "--uid", str(uid), "--gid", str(gid), "--"]
    return f"not root and user namespaces are disabled (unshare --user failed), uid {os.getuid()}"


def test_sandbox_prefix_choice() -> None:
    root = sandbox_prefix(uid=10001, gid=10001, is_root=True, have_bwrap=True, userns=False)
    assert isinstance(root, list) and "--reuid=10001" in root and "--unshare-user" not in root
    rootless = sandbox_prefix(uid=10001, gid=10001, is_root=False, have_bwrap=True, userns=True)
    assert isinstance(rootless, list) and rootless[rootless.index("--uid") + 1] == "10001"
    assert "user namespaces" in str(sandbox_prefix(uid=1, gid=1, is_root=False, have_bwrap=True, userns=False))
    assert "bwrap" in str(sandbox_prefix(uid=1, gid=1, is_root=True, have_bwrap=False, userns=True))


@pytest.fixture(scope="module")
def rootfs(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("image") / "rootfs"
    unpack(image, root)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~630 MiB: not kept among pytest's last three runs


def home_of(rootfs: Path, uid: int) -> str:
    for line in (rootfs / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if int(fields[2]) == uid:
            return fields[5]
    raise AssertionError(f"uid {uid} is not in the image's /etc/passwd")


@pytest.fixture(scope="module")
def run_in_image(image: Image, rootfs: Path) -> Run:
    cfg = image.config["config"]
    uid, _, gid = cfg["User"].partition(":")
    prefix = sandbox_prefix(uid=int(uid), gid=int(gid or uid), is_root=os.geteuid() == 0,
                            have_bwrap=shutil.which("bwrap") is not None, userns=userns_works())
    if isinstance(prefix, str):
        pytest.skip(f"cannot run the image here: {prefix}")
    env_args = [a for e in [*cfg["Env"], f"HOME={home_of(rootfs, int(uid))}"]
                for a in ("--setenv", *e.split("=", 1))]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = ["bwrap", "--ro-bind", str(rootfs), "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                   "--die-with-parent", "--clearenv", *env_args, "--chdir", cfg["WorkingDir"], *prefix, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    return run


def test_layout_is_valid_and_holds_only_the_image(image: Image) -> None:
    # read_image verified every digest, size, media type and diff_id; nothing else is stored.
    stored = {p for p in (image.layout / "blobs" / "sha256").iterdir()}
    assert stored == referenced_blobs(image)
    assert (REPO / "build" / "image" / "pqmpc.digest").read_text().strip() == image.manifest_digest
    assert image.config["os"] == "linux" and image.config["architecture"] in {"amd64", "arm64"}
    assert len(image.layers) == 2  # Debian base, then the venv and the user
    with tarfile.open(image.layers[1], "r:gz") as app:
        home = app.getmember("var/lib/pqmpc")
        assert (home.uid, home.gid, home.isdir()) == (10001, 10001, True)
        names = app.getnames()
    assert "opt/pqmpc/bin/pqmpc-operator" in names
    assert not any(n.startswith(("tmp/", "root/.cache", "etc/resolv.conf", "etc/hostname")) for n in names)


def test_config_is_the_dockerfiles(image: Image, runtime_stage: tuple[dict[str, str], Stage]) -> None:
    args, final = runtime_stage
    cfg = image.config["config"]
    assert cfg["User"] == final.all("USER")[-1]
    assert cfg["Cmd"] == exec_form(final.all("CMD")[-1]) and "Entrypoint" not in cfg
    assert cfg["WorkingDir"] == final.all("WORKDIR")[-1]
    assert set(cfg["ExposedPorts"]) == {f"{p}/tcp" for e in final.all("EXPOSE") for p in e.split()}
    env = dict(e.split("=", 1) for e in cfg["Env"])
    for key, value in (kv.split("=", 1) for line in final.all("ENV") for kv in shlex.split(line)):
        if "${PATH}" in value:  # PATH=/opt/pqmpc/bin:${PATH}: the venv first, then the base's
            assert env[key].startswith(value.replace("${PATH}", "")) and env[key].endswith(":/usr/bin:/sbin:/bin")
        else:
            assert env[key] == value, key
    build_args = {**args, "VARIANT": "cpu", "WITH_OQS": "false"}  # the image make image builds
    for line in final.all("LABEL"):
        for kv in shlex.split(line):
            key, value = kv.split("=", 1)
            for name, default in build_args.items():
                value = value.replace("${" + name + "}", default)
            assert cfg["Labels"][key] == value, key


def test_node_entry_point_reports_its_configuration_error(run_in_image: Run) -> None:
    run = run_in_image
    result = run("python", "-m", "pqmpc_node")
    assert result.returncode == 2, result.stderr
    assert "pqmpc-node: PQMPC_POOL, PQMPC_NODE_ID not set" in result.stderr
    assert run("pqmpc-node").returncode == 2


def test_operator_entry_points(run_in_image: Run, image: Image) -> None:
    run = run_in_image
    result = run(*image.config["config"]["Cmd"], "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: pqmpc-operator" in result.stdout and "--namespace" in result.stdout
    chart = run("python", "-m", "pqmpc_operator", "--help")
    assert chart.returncode == 0 and "--namespace" in chart.stdout, chart.stderr


def test_cli_entry_point(run_in_image: Run) -> None:
    result = run_in_image("pqmpc", "--help")
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout


def test_runs_as_the_image_user_on_debians_python(run_in_image: Run) -> None:
    probe = ("import os, sys, importlib.util, pqmpc_node; "
             "print(os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME']); print(sys.base_prefix, sys.version_info[:2]); "
             "print(pqmpc_node.__file__); print(importlib.util.find_spec('pqmpc_local') is None)")
    result = run_in_image("python", "-c", probe)
    assert result.returncode == 0, result.stderr
    ids, interpreter, package, no_local = result.stdout.splitlines()
    assert ids == "10001 10001 /var/lib/pqmpc /var/lib/pqmpc"
    assert interpreter == "/usr (3, 11)"  # the venv sits on Debian's python3.11, not the host's
    assert package.startswith("/opt/pqmpc/lib/python3.11/site-packages/pqmpc_node/")
    assert no_local == "True"
