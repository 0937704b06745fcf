"""Sessions through the operator: apply -> Succeeded, and sessions per minute.

Starts the local control plane, the node agent and the operator (under its
ServiceAccount), applies ``examples/nodepool.yaml`` and waits for its nodes to be
certified. Then:

- ``apply_to_succeeded_s``: the aggregate example (two EU parties, malicious security;
  two owners with 1,000 rows each) from ``kubectl apply`` to ``Succeeded``, the owners
  submitting as soon as the plan is delivered (median of ``--repeat`` runs);
- ``sessions_per_min``: ``--concurrent`` such sessions applied at once, owners submitting
  as each plan lands, until all have succeeded.

Prints one JSON object; progress goes to stderr.

    .venv/bin/python benchmarks/sessions.py [--repeat 3] [--concurrent 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from kubernetes import client as k8s

from pqmpc_local.cluster import LocalCluster
from pqmpc_local.kubeconfig import api_client
from pqmpc_local.operator_runner import REPO, start_operator
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary
from pqmpc_node.client import Identity, SessionClient

NS = "bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def session_doc(name: str, ids: dict[str, Identity]) -> dict[str, Any]:
    fields = [{"name": "amount", "min": 0, "max": 100000}]
    return {
        "apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "poolRef": "banks", "parties": 2, "threshold": 1, "sharing": "additive", "security": "malicious",
            "inputs": [{"owner": o, "identity": ids[o].public_document()["identity"], "fields": fields,
                        "locality": {"regions": ["eu-west"]}} for o in ("bank-a", "bank-b")],
            "program": {"aggregate": [{"op": "count", "field": "amount"}, {"op": "mean", "field": "amount"}]},
            "outputs": [{"recipient": "auditor", "identity": ids["auditor"].public_document()["kemPublicKey"],
                         "allow": ["count(amount)", "mean(amount)"]}],
            "deadline": "10m", "ttlSecondsAfterFinished": 30,
        },
    }


class Bench:
    def __init__(self, kubeconfig: Path, kubectl: Kubectl, ids: dict[str, Identity], ca: Any, signer: Any) -> None:
        self.kubectl, self.ids, self.ca, self.signer = kubectl, ids, ca, signer
        self.api = api_client(kubeconfig)
        self.custom = k8s.CustomObjectsApi(self.api)
        rng = np.random.default_rng(1)
        self.rows = {o: [str(float(v)) for v in rng.integers(0, 10000, 1000)] for o in ("bank-a", "bank-b")}

    def status(self, name: str) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object("pqmpc.io", "v1alpha1", NS, "mpcsessions", name)
        return dict(obj.get("status") or {})

    def submit(self, st: dict[str, Any]) -> None:
        for owner in ("bank-a", "bank-b"):
            c = SessionClient(node_url=st["result"]["nodes"][0], session_id=st["sessionId"], ca_certificate=self.ca,
                              plan_signer=self.signer)
            try:
                c.post_sealed(c.seal_rows(self.ids[owner], {"amount": self.rows[owner]}))
            finally:
                c.close()

    def run(self, names: list[str], timeout: float = 600.0) -> float:
        t0 = time.monotonic()
        for name in names:
            self.kubectl("apply", "-f", "-", input=json.dumps(session_doc(name, self.ids)))
        submitted: set[str] = set()
        done: set[str] = set()
        while len(done) < len(names):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{len(done)}/{len(names)} sessions finished in {timeout}s")
            for name in names:
                if name in done:
                    continue
                st = self.status(name)
                if st.get("phase") == "Failed":
                    raise RuntimeError(f"session {name} failed: {st.get('reason')}: {st.get('message')}")
                if st.get("phase") == "Succeeded":
                    done.add(name)
                elif st.get("phase") == "AwaitingInputs" and name not in submitted:
                    self.submit(st)
                    submitted.add(name)
            time.sleep(0.05)
        return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pqmpc-bench-sessions-"))
    cluster = LocalCluster(work / "cluster")
    operator = None
    try:
        log("starting control plane, node agent, operator ...")
        cluster.start()
        plane = cluster.control_plane
        operator = start_operator(plane, work, args=["--namespace", NS], resync_seconds=5)
        kubectl = Kubectl(kubeconfig=plane.kubeconfig, binary=kubectl_binary())
        kubectl("create", "namespace", NS)
        kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "nodepool.yaml"))
        deadline = time.monotonic() + 180
        while True:
            pool = json.loads(kubectl("get", "mpcpool", "banks", "-n", NS, "-o", "json").stdout)
            nodes = (pool.get("status") or {}).get("nodes") or []
            if len(nodes) == 3 and all(n.get("ready") and n.get("certFingerprint") for n in nodes):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("pool banks not certified in 180s")
            time.sleep(0.5)
        trust = json.loads(kubectl("get", "configmap", "banks-trust", "-n", NS, "-o", "json").stdout)["data"]
        ca = x509.load_pem_x509_certificate(trust["ca.pem"].encode())
        signer = load_pem_public_key(trust["plan-signer.pub"].encode())
        ids = {n: Identity.generate(n) for n in ("bank-a", "bank-b", "auditor")}
        bench = Bench(plane.kubeconfig, kubectl, ids, ca, signer)
        singles = []
        for i in range(args.repeat):
            singles.append(bench.run([f"single-{i}"]))
            log(f"  single session {i}: {singles[-1]:.2f}s")
        batch = bench.run([f"batch-{i:02d}" for i in range(args.concurrent)])
        log(f"  {args.concurrent} concurrent sessions: {batch:.2f}s")
        print(json.dumps({
            "apply_to_succeeded_s": round(statistics.median(singles), 3),
            "apply_to_succeeded_runs_s": [round(s, 3) for s in singles],
            "sessions_per_min": round(args.concurrent / batch * 60, 1),
            "concurrent_sessions": args.concurrent,
            "rows_per_session": 2000,
            "workload": "aggregate count+mean, 2 parties, additive, malicious, through the operator",
        }))
        return 0
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
