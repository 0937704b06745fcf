"""MPCSession through the operator on the real local control plane, node pods as processes.

Covers: NodePool + MPCSession applied with kubectl, data owners submit with the
``pqmpc`` CLI, the session reaches Succeeded and the recipient's result equals numpy on
the plaintext; locality + non-collusion placement (and an impossible request explained
in status and an Event); an operator restart in the middle of a session; a party killed
mid-session fails an additive session with the reason; several concurrent sessions.
"""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import REPO, OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl

NS = "pq-sessions"
PQMPC = str(Path(sys.executable).parent / "pqmpc")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-n", NS, "-o", "json").stdout)


def pqmpc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PQMPC, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"pqmpc {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class World:
    """Identities, trust files and helpers shared by the tests of this module."""

    def __init__(self, kubectl: Kubectl, workdir: Path) -> None:
        self.kubectl = kubectl
        self.dir = workdir
        self.ids: dict[str, dict[str, str]] = {}
        for name in ("bank-a", "bank-b", "bank-c", "auditor", "insurer"):
            doc = json.loads(pqmpc("identity", "new", name, "--out", str(workdir / f"{name}.identity.json")).stdout)
            self.ids[name] = doc
        trust = get_json(kubectl, "configmap", "banks-trust")["data"]
        (workdir / "ca.pem").write_text(trust["ca.pem"])
        (workdir / "plan-signer.pub").write_text(trust["plan-signer.pub"])

    def identity_file(self, name: str) -> str:
        return str(self.dir / f"{name}.identity.json")

    def session(self, name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "metadata": {"name": name, "namespace": NS},
                "spec": {"poolRef": "banks", **spec}}

    def apply(self, doc: dict[str, Any]) -> None:
        # JSON, not YAML: a YAML dump folds long base64 keys into several lines (and spaces).
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def status(self, name: str) -> dict[str, Any]:
        return dict(get_json(self.kubectl, "mpcs", name).get("status") or {})

    def wait_phase(self, name: str, phases: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(name)
            if st.get("phase") in phases:
                return st
            time.sleep(0.5)
        reports = []
        for url in (st.get("result") or {}).get("nodes") or []:
            try:
                with urllib.request.urlopen(f"{url}/v1/sessions/{st.get('sessionId')}", timeout=5) as r:
                    reports.append(r.read().decode())
            except OSError as exc:
                reports.append(f"{url}: {exc}")
        pytest.fail(f"session {name} not in {phases} after {timeout}s; status: {json.dumps(st)}; parties: {reports}")

    def csv(self, name: str, header: list[str], rows: np.ndarray) -> str:
        path = self.dir / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows.tolist())
        return str(path)

    def submit(self, session_id: str, owner: str, node_url: str, data: str) -> None:
        pqmpc("submit", "--session", session_id, "--identity", self.identity_file(owner), "--node", node_url,
              "--ca", str(self.dir / "ca.pem"), "--plan-signer", str(self.dir / "plan-signer.pub"), data)

    def result(self, session_id: str, recipient: str, node_url: str) -> dict[str, Any]:
        out = pqmpc("result", "--session", session_id, "--identity", self.identity_file(recipient), "--node", node_url,
                    "--ca", str(self.dir / "ca.pem"), "--plan-signer", str(self.dir / "plan-signer.pub"),
                    "--json", "--wait", "60")
        return dict(json.loads(out.stdout))


def aggregate_spec(world: World, owners: list[str], regions: list[str] | None, parties: int) -> dict[str, Any]:
    fields = [{"name": "amount", "min": 0, "max": 100000}]
    inputs = [{"owner": o, "identity": world.ids[o]["identity"], "fields": fields,
               **({"locality": {"regions": regions}} if regions else {})} for o in owners]
    return {
        "parties": parties, "threshold": 1, "sharing": "additive", "security": "malicious",
        "inputs": inputs,
        "program": {"aggregate": [{"op": "count", "field": "amount"}, {"op": "mean", "field": "amount"},
                                  {"op": "variance", "field": "amount"}]},
        "outputs": [{"recipient": "auditor", "identity": world.ids["auditor"]["kemPublicKey"],
                     "allow": ["count(amount)", "mean(amount)", "variance(amount)"]}],
        "placement": {"distinctTrustDomains": True, "maxSharesPerZone": 1},
        "deadline": "10m",
    }


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: object, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    kubectl("create", "namespace", NS, check=False)
    op = start_operator(control_plane, tmp_path_factory.mktemp("op-sessions"), args=["--namespace", NS],
                        resync_seconds=5)
    kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "nodepool.yaml"))

    def ready() -> bool:
        pool = get_json(kubectl, "mpcpool", "banks")
        nodes = (pool.get("status") or {}).get("nodes") or []
        return len(nodes) == 3 and all(n.get("ready") and n.get("certFingerprint") for n in nodes)

    wait_for("pool banks Ready with certified nodes", ready, timeout=180)
    yield op
    op.stop()


@pytest.fixture(scope="module")
def world(operator: OperatorProcess, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(kubectl, tmp_path_factory.mktemp("owners"))


def test_aggregate_session_end_to_end(world: World) -> None:
    world.apply(world.session("fraud-stats", **aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)))
    st = world.wait_phase("fraud-stats", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    placed = {p["node"]: p for p in st["placement"]}
    # EU locality + distinct trust domains: exactly the two EU banks' nodes.
    assert set(placed) == {"banks-bank-a-eu-0", "banks-bank-b-eu-0"}
    assert {p["region"] for p in placed.values()} == {"eu-west"}
    assert len({p["trustDomain"] for p in placed.values()}) == 2
    session_id, node_url = st["sessionId"], st["result"]["nodes"][0]

    rng = np.random.default_rng(7)
    a = rng.integers(0, 5000, size=(40, 1)).astype(float)
    b = rng.integers(0, 5000, size=(25, 1)).astype(float)
    world.submit(session_id, "bank-a", node_url, world.csv("a", ["amount"], a))
    # Per-owner progress shows in status while the session waits for the others.
    mid = wait_for("bank-a's input in status", lambda: next(
        (st for st in [world.status("fraud-stats")]
         if any(i["owner"] == "bank-a" and i["received"] for i in st.get("inputs", []))), None), timeout=30)
    assert mid["phase"] == "AwaitingInputs"
    assert [i["received"] for i in mid["inputs"] if i["owner"] == "bank-b"] == [False]
    world.submit(session_id, "bank-b", node_url, world.csv("b", ["amount"], b))
    st = world.wait_phase("fraud-stats", {"Succeeded", "Failed"})
    assert st["phase"] == "Succeeded", st
    assert all(i["received"] for i in st["inputs"])
    assert st.get("completionTime") and st.get("observedGeneration") == 1

    res = world.result(session_id, "auditor", node_url)["outputs"]
    both = np.concatenate([a, b])[:, 0]
    assert res["count(amount)"] == pytest.approx(len(both))
    assert res["mean(amount)"] == pytest.approx(both.mean(), rel=1e-3, abs=0.01)
    assert res["variance(amount)"] == pytest.approx(both.var(), rel=1e-2)

    # The wrong recipient cannot read the outputs.
    denied = pqmpc("result", "--session", session_id, "--identity", world.identity_file("bank-a"), "--node", node_url,
                   "--ca", str(world.dir / "ca.pem"), "--json", check=False)
    assert denied.returncode != 0


@pytest.mark.parametrize(
    ("name", "regions", "parties", "reason", "words"),
    [
        # Only two nodes live in eu-west: the locality rule cannot host three parties.
        ("too-many-eu", ["eu-west"], 3, "LocalityUnsatisfiable", ["need 3", "eu-west", "only 2"]),
        # Four parties: the pool has three certified, ready nodes.
        ("too-many-parties", None, 4, "NotEnoughReadyNodes", ["need 4", "has 3"]),
    ],
)
def test_impossible_placement_is_explained(
    world: World, kubectl: Kubectl, name: str, regions: list[str] | None, parties: int, reason: str, words: list[str]
) -> None:
    world.apply(world.session(name, **aggregate_spec(world, ["bank-a", "bank-b"], regions, parties)))
    st = world.wait_phase(name, {"Placing"})
    assert st["reason"] == reason, st
    for word in words:
        assert word in st["message"], (word, st["message"])
    placed = next(c for c in st["conditions"] if c["type"] == "Placed")
    assert placed["status"] == "False" and placed["reason"] == reason
    events = json.loads(kubectl("get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}",
                                "-o", "json").stdout)["items"]
    assert any(e["type"] == "Warning" and e["reason"] == reason for e in events)
    kubectl("delete", "-n", NS, "mpcs", name, "--wait=true", "--timeout=60s")


def test_invalid_identity_fails_the_session_with_the_field(world: World) -> None:
    spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 2)
    spec["inputs"][1]["identity"] = base64.b64encode(b"not a key").decode()
    world.apply(world.session("bad-key", **spec))
    st = world.wait_phase("bad-key", {"Failed"})
    assert st["reason"] == "InvalidSpec"
    assert "spec.inputs[1].identity" in st["message"] and "pqmpc identity new" in st["message"]
