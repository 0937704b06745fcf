"""Anomaly scoring and quarantine through the operator, on the real local control plane.

A pool whose node ``q-c-0`` tampers with its result shares (a test-only hook in the node
command) runs a malicious session: the MAC check aborts it, the operator scores the
nodes from their metrics and session reports, quarantines the tamperer (status,
condition, Warning Event, metric) and, with ``autoReplace``, replaces its pod; new
sessions are not placed on a quarantined node; the clear annotation lifts quarantine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl, wait_for

NS = "pq-anomaly"
HERE = Path(__file__).resolve().parent
PQMPC = str(Path(sys.executable).parent / "pqmpc")
VICTIM = "q-c-0"




def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-n", NS, "-o", "json").stdout)


def run(*args: str) -> str:
    import subprocess

    out = subprocess.run([PQMPC, *args], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: object, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    kubectl("create", "namespace", NS, check=False)
    op = start_operator(
        control_plane, tmp_path_factory.mktemp("op-anomaly"), args=["--namespace", NS], resync_seconds=3,
        extra_env={"PQMPC_NODE_COMMAND": f"{sys.executable} {HERE / 'tampering_node.py'} {VICTIM}"},
    )
    groups = [{"name": n, "replicas": 1, "region": r, "zone": z, "trustDomain": f"org-{n}"}
              for n, r, z in (("a", "eu-west", "eu-west-1a"), ("b", "eu-west", "eu-west-1b"), ("c", "us-east", "us-east-1a"))]
    pool = {"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": "q", "namespace": NS},
            "spec": {"engine": {"backend": "numpy"}, "groups": groups,
                     "anomaly": {"quarantineScore": 0.9, "autoReplace": False}}}
    kubectl("apply", "-f", "-", input=json.dumps(pool))

    def ready() -> bool:
        nodes = (get_json(kubectl, "mpcpool", "q").get("status") or {}).get("nodes") or []
        return len(nodes) == 3 and all(n.get("ready") and n.get("certFingerprint") for n in nodes)

    wait_for("pool q Ready and certified", ready, timeout=180)
    yield op
    kubectl("delete", "mpcpool", "q", "-n", NS, "--wait=true", "--timeout=60s", check=False)
    op.stop()


def session(name: str, ids: dict[str, dict[str, str]], parties: int) -> dict[str, Any]:
    fields = [{"name": "x", "min": 0, "max": 1000}]
    return {"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "metadata": {"name": name, "namespace": NS},
            "spec": {"poolRef": "q", "parties": parties, "threshold": 1, "sharing": "additive", "security": "malicious",
                     "inputs": [{"owner": "o", "identity": ids["o"]["identity"], "fields": fields}],
                     "program": {"aggregate": [{"op": "sum", "field": "x"}]},
                     "outputs": [{"recipient": "r", "identity": ids["r"]["kemPublicKey"], "allow": ["sum(x)"]}],
                     "placement": {"distinctTrustDomains": True}, "deadline": "10m"}}


def test_tampering_node_is_quarantined_and_released(operator: OperatorProcess, kubectl: Kubectl, tmp_path: Path) -> None:
    ids = {n: json.loads(run("identity", "new", n, "--out", str(tmp_path / f"{n}.json"))) for n in ("o", "r")}
    trust = get_json(kubectl, "configmap", "q-trust")["data"]
    (tmp_path / "ca.pem").write_text(trust["ca.pem"])
    (tmp_path / "plan-signer.pub").write_text(trust["plan-signer.pub"])
    kubectl("apply", "-f", "-", input=json.dumps(session("tampered", ids, 3)))

    def phase(name: str, phases: set[str]) -> Callable[[], Any]:
        def check() -> Any:
            st = get_json(kubectl, "mpcs", name).get("status") or {}
            return st if st.get("phase") in phases else None
        return check

    st = wait_for("plan delivered", phase("tampered", {"AwaitingInputs", "Failed"}))
    csv = tmp_path / "rows.csv"
    csv.write_text("x\n" + "\n".join(str(v) for v in np.arange(1, 9)) + "\n")
    run("submit", "--session", st["sessionId"], "--identity", str(tmp_path / "o.json"), "--node", st["result"]["nodes"][0],
        "--ca", str(tmp_path / "ca.pem"), "--plan-signer", str(tmp_path / "plan-signer.pub"), str(csv))
    st = wait_for("the session to end", phase("tampered", {"Failed", "Succeeded"}), timeout=120)
    assert st["phase"] == "Failed", "a tampered share must abort a malicious session"
    assert "mac" in (st["reason"] + st["message"]).lower(), st

    def quarantined() -> Any:
        nodes = {n["name"]: n for n in (get_json(kubectl, "mpcpool", "q").get("status") or {}).get("nodes") or []}
        return nodes if nodes.get(VICTIM, {}).get("quarantined") else None

    nodes = wait_for(f"{VICTIM} quarantined", quarantined, timeout=60)
    assert nodes[VICTIM]["anomalyScore"] >= 0.9
    assert all(not n.get("quarantined") for name, n in nodes.items() if name != VICTIM), nodes
    pool = get_json(kubectl, "mpcpool", "q")
    cond = next(c for c in pool["status"]["conditions"] if c["type"] == "Quarantine")
    assert cond["status"] == "True" and VICTIM in cond["message"]
    events = get_json(kubectl, "events", "--field-selector", "involvedObject.name=q")["items"]
    assert any(e["reason"] == "Quarantined" and VICTIM in e["message"] for e in events)
    metrics = operator.metrics()
    assert f'pqmpc_node_quarantined{{namespace="{NS}",node="{VICTIM}",pool="q"}} 1.0' in metrics

    # No new placement lands on the quarantined node: three parties cannot be placed now.
    kubectl("apply", "-f", "-", input=json.dumps(session("after", ids, 3)))
    st = wait_for("placement refused", phase("after", {"Placing"}))
    assert "quarantined" in st["message"], st
    # Two parties can, on the healthy nodes only.
    kubectl("apply", "-f", "-", input=json.dumps(session("healthy", ids, 2)))
    st = wait_for("healthy placement", phase("healthy", {"AwaitingInputs"}))
    assert VICTIM not in {p["node"] for p in st["placement"]}

    # The clear annotation lifts quarantine at once, and the operator removes it.
    kubectl("annotate", "mpcpool", "q", "-n", NS, f"pqmpc.io/clear-quarantine={VICTIM}")
    wait_for("quarantine lifted", lambda: None if quarantined() else True, timeout=60)
    wait_for("annotation removed", lambda: "pqmpc.io/clear-quarantine" not in
             (get_json(kubectl, "mpcpool", "q")["metadata"].get("annotations") or {}), timeout=30)
    events = get_json(kubectl, "events", "--field-selector", "involvedObject.name=q")["items"]
    assert any(e["reason"] == "QuarantineLifted" for e in events)
