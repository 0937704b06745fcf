"""``make demo`` end to end: the demo runs as a subprocess and its outcome is checked.

One run of ``python -m pqmpc_local.demo --keep --out DIR`` (the same steps as ``make demo``,
then it stays up): while it is up, its printed ``export KUBECONFIG=…`` reaches the API
server and both sessions read Succeeded, and its processes (etcd, kube-apiserver, the
node agent, the operator pod, the node pods, Prometheus) are alive; after Ctrl-C it exits
0 and no process that belongs to it is left. Its results are checked here against numpy
on the very CSVs and model file it submitted (not against the demo's own plaintext), its
Prometheus series and alert rules from ``summary.json``, and its PNG.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqmpc_local.controlplane import REQUIRED_BINARIES, binaries_dir
from pqmpc_local.demo import helm_binary, leftover_processes
from pqmpc_local.pytest_plugin import kubectl_binary
from pqmpc_node.output_scale import rounded_text

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

WARM_LIMIT_S = 600.0


@dataclass
class DemoRun:
    out: Path
    returncode: int
    stdout: str
    summary: dict[str, Any]
    while_up: dict[str, Any]


def _require_tools() -> None:
    missing = [b for b in REQUIRED_BINARIES if not (binaries_dir() / b).exists()]
    if missing:
        pytest.skip(f"control plane not built ({', '.join(missing)}): run `make control-plane`")
    try:
        helm_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed: run `make prometheus`")


def _wait_output(log: Path, proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(pattern, text)
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the demo exited {proc.returncode} before printing {pattern!r}:\n{text[-6000:]}")
        time.sleep(1)
    pytest.fail(f"the demo did not print {pattern!r} within {timeout:.0f}s:\n{log.read_text(errors='replace')[-6000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    _require_tools()
    base = tmp_path_factory.mktemp("demo")
    out = base / "out"
    log = base / "demo.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    started = time.monotonic()
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pqmpc_local.demo", "--keep", "--out", str(out)],
                                stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        kubeconfig = _wait_output(log, proc, r"export KUBECONFIG=(\S+)", WARM_LIMIT_S).group(1)
        up_after = time.monotonic() - started
        kubectl = [kubectl_binary(), "--kubeconfig", kubeconfig]
        sessions = json.loads(subprocess.run([*kubectl, "get", "mpcs", "-A", "-o", "json"], capture_output=True,
                                             text=True, check=True, timeout=60).stdout)["items"]
        while_up = {
            "seconds": up_after,
            "processes": leftover_processes(out),
            "sessions": {s["metadata"]["name"]: s["status"]["phase"] for s in sessions},
        }
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stdout = log.read_text(errors="replace")
    summary_path = out / "summary.json"
    assert summary_path.exists(), stdout[-6000:]
    yield DemoRun(out, proc.returncode, stdout, json.loads(summary_path.read_text()), while_up)


def test_demo_exits_0_within_the_warm_time_limit(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.stdout[-8000:]
    assert demo.summary["ok"] is True, demo.summary.get("error") or demo.summary.get("failures")
    assert demo.summary["failures"] == [] and demo.summary["teardown_problems"] == []
    assert demo.while_up["seconds"] < WARM_LIMIT_S
    # Every step reported its progress, and the total time is printed.
    for step in range(1, 12):
        assert f"✓ [{step}/11]" in demo.stdout, step
    assert re.search(r"done in \d+s", demo.stdout)


def test_the_kept_cluster_answers_on_the_printed_kubeconfig(demo: DemoRun) -> None:
    assert demo.while_up["sessions"] == {"fraud-stats": "Succeeded", "fraud-mlp": "Succeeded"}


def test_sessions_succeeded_with_eu_locality(demo: DemoRun) -> None:
    sessions = demo.summary["sessions"]
    assert {name: s["phase"] for name, s in sessions.items()} == {"fraud-stats": "Succeeded", "fraud-mlp": "Succeeded"}
    fraud = sessions["fraud-stats"]["placement"]
    assert {p["region"] for p in fraud} == {"eu-west"} and len({p["trustDomain"] for p in fraud}) == 2
    mlp = sessions["fraud-mlp"]["placement"]
    assert len({p["trustDomain"] for p in mlp}) == 3 and {p["region"] for p in mlp} == {"eu-west", "us-east"}


def test_both_sessions_ran_dealer_free(demo: DemoRun) -> None:
    """The additive fraud-stats session runs on auto, now ot; the Shamir MLP on prss: the operator dealt nothing."""
    sessions = demo.summary["sessions"]
    assert sessions["fraud-stats"]["preprocessing"] == {
        "provider": "ot", "dealerFree": "true",
        "note": "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)"}
    assert sessions["fraud-mlp"]["preprocessing"]["provider"] == "prss"
    assert sessions["fraud-mlp"]["preprocessing"]["dealerFree"] == "true"
    assert "preprocessing ot: dealer-free" in demo.stdout and "preprocessing prss: dealer-free" in demo.stdout
    assert "trusted dealer" not in demo.stdout


def _csv(path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.atleast_2d(np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64).T).T


def test_fraud_stats_result_equals_numpy_on_the_submitted_csvs(demo: DemoRun) -> None:
    data = demo.out / "data"
    amounts = np.concatenate([_csv(data / f"fraud-stats.{bank}.csv")[:, 0] for bank in ("bank-a", "bank-b")])
    assert len(amounts) > 10
    got = demo.summary["sessions"]["fraud-stats"]["results"]
    # exactly what the auditor may see
    assert set(got) == {"count(amount)", "mean(amount)", "variance(amount)", "histogram(amount)",
                        "histogram(amount).below", "histogram(amount).above"}
    assert got["count(amount)"] == len(amounts)
    cents = [int(round(v * 100)) for v in amounts]  # the example declares decimals: 2, so the result is exact
    n, total, squares = len(cents), sum(cents), sum(c * c for c in cents)
    # `pqmpc result --json` shows each value rounded exactly to its declared scale: decimals 2 + 2 places.
    assert got["mean(amount)"] == float(rounded_text(Fraction(total, n * 100), 4))
    assert got["variance(amount)"] == float(rounded_text(Fraction(n * squares - total * total, n * n * 100**2), 4))
    assert got["histogram(amount)"] == np.histogram(amounts, bins=[0, 100, 1000, 10000, 100000])[0].tolist()
    # The rows outside the edges are reported, not dropped: every row is in one count.
    assert got["histogram(amount).below"] == int(np.count_nonzero(amounts < 0))
    assert got["histogram(amount).above"] == int(np.count_nonzero(amounts > 100000))
    assert sum(got["histogram(amount)"]) + got["histogram(amount).below"] + got["histogram(amount).above"] == len(amounts)
    assert "histogram(amount) above 100000" in demo.stdout
    # The printed comparison agrees.
    assert demo.stdout.count("matches the plaintext answer") == 2 and "does not match" not in demo.stdout
    assert "plaintext (numpy" in demo.stdout


def test_mlp_scores_equal_numpy_on_the_submitted_rows_and_model(demo: DemoRun) -> None:
    data = demo.out / "data"
    rows = np.concatenate([_csv(data / f"fraud-mlp.{bank}.csv") for bank in ("bank-a", "bank-b", "bank-c")])
    model = {k: np.asarray(v, dtype=np.float64) for k, v in
             json.loads((data / "fraud-mlp.insurer.model.json").read_text()).items()}
    assert rows.shape[1] == 3 and model["W0"].shape == (3, 8) and model["W1"].shape == (8, 1)
    expected = (np.maximum(rows @ model["W0"] + model["b0"], 0) @ model["W1"] + model["b1"]).reshape(-1)
    got = demo.summary["sessions"]["fraud-mlp"]["results"]
    scores = np.asarray(got["score"], dtype=np.float64).reshape(-1)
    assert scores.shape == expected.shape
    np.testing.assert_allclose(scores, expected, atol=1e-3)
    assert np.ptp(expected) > 0.1  # the model is not trivially constant


def test_prometheus_scraped_the_operator_and_nodes(demo: DemoRun) -> None:
    prom = demo.summary["prometheus"]
    series = prom["series"]
    assert series["targets up"] == 4  # the operator pod and three node pods
    assert series["pool ready replicas"] == 3
    assert series["certified nodes"] == 3
    assert series["sessions Succeeded (operator)"] == 2
    assert series["node sessions total (succeeded)"] == 5  # 2 parties of fraud-stats + 3 of fraud-mlp
    assert series["KEM key age, max (s)"] is not None and series["KEM key age, max (s)"] > 0
    assert series["round latency p95 (s)"] is not None and series["round latency p95 (s)"] > 0
    assert series["handshake failures"] == 0 and series["MAC-check failures"] == 0
    assert {"PqmpcMacCheckFailures", "PqmpcPeerLinkNotPostQuantum", "PqmpcKeyRotationOverdue"} <= set(prom["rules"])
    assert prom["firing"] == []
    for title in ("NodePool ready replicas", "Certified nodes", "Sessions by phase / node sessions", "KEM key age (s)",
                  "Round latency p95 (s)", "Handshake failures (by reason)"):
        assert prom["panels"][title] >= 1, title
    assert prom["panels"]["KEM key age (s)"] == 3
    assert prom["panels"]["Sessions by phase / node sessions"] >= 2  # operator phases and node outcomes


def test_panels_png_is_a_real_png(demo: DemoRun) -> None:
    png = Path(demo.summary["png"])
    assert png == demo.out / "pqmpc-panels.png"
    blob = png.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR"
    width, height = struct.unpack(">II", blob[16:24])
    assert width >= 1000 and height >= 500, (width, height)
    assert 30_000 < len(blob) < 5_000_000


def test_no_process_left_behind(demo: DemoRun) -> None:
    # While up, the marker finds the demo's processes: the check below is not vacuous.
    names = " ".join(demo.while_up["processes"])
    for name in ("etcd", "kube-apiserver", "kube-controller", "prometheus", "python"):
        assert name in names, (name, demo.while_up["processes"])
    assert len(demo.while_up["processes"]) >= 9  # 3 control plane + agent + operator + 3 nodes + prometheus
    assert leftover_processes(demo.out) == []
    assert "no process left behind" in demo.stdout
