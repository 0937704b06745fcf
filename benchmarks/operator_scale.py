"""Operator scale benchmark: 20 NodePools x 3 pods applied at once, time to Ready.

Starts the local control plane, the node agent and the operator (under its
ServiceAccount), applies all pools in one ``kubectl apply``, and records for each pool
the time from the apply to its Ready condition (polled every 100 ms). Prints one JSON
object: ``apply_to_ready_p50_s``, ``apply_to_ready_p99_s``, ``operator_peak_rss_mib``
(the operator process's VmHWM), and the run's parameters. Progress goes to stderr.

    .venv/bin/python benchmarks/operator_scale.py [--pools 20] [--pods 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from kubernetes import client as k8s

from pqmpc_local.agent_runner import DEFAULT_NODES
from pqmpc_local.cluster import LocalCluster
from pqmpc_local.kubeconfig import api_client
from pqmpc_local.operator_runner import start_operator
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _pools(count: int, pods: int) -> str:
    zones = [(n.region, n.zone) for n in DEFAULT_NODES]
    docs = []
    for i in range(count):
        groups = [
            {"name": f"g{j}", "replicas": 1, "region": zones[j % len(zones)][0], "zone": zones[j % len(zones)][1],
             "trustDomain": f"org-{j}"}
            for j in range(pods)
        ]
        docs.append({"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": f"bench-{i:02d}"},
                     "spec": {"engine": {"backend": "numpy"}, "groups": groups}})
    return yaml.safe_dump_all(docs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pqmpc-bench-"))
    cluster = LocalCluster(work / "cluster")
    operator = None
    try:
        print("starting control plane, agent, operator ...", file=sys.stderr)
        cluster.start()
        plane = cluster.control_plane
        operator = start_operator(plane, work)
        kubectl = Kubectl(kubeconfig=plane.kubeconfig, binary=kubectl_binary())
        kubectl("create", "namespace", "bench")
        manifest = _pools(args.pools, args.pods)
        t0 = time.monotonic()
        kubectl("apply", "-n", "bench", "-f", "-", input=manifest)
        ready_at: dict[str, float] = {}
        with api_client(plane.kubeconfig) as api:
            custom = k8s.CustomObjectsApi(api)
            while len(ready_at) < args.pools:
                if time.monotonic() - t0 > args.timeout:
                    raise TimeoutError(f"only {len(ready_at)}/{args.pools} pools Ready after {args.timeout}s")
                listing: Any = custom.list_namespaced_custom_object("pqmpc.io", "v1alpha1", "bench", "nodepools")
                items = listing["items"]
                now = time.monotonic() - t0
                for pool in items:
                    name = pool["metadata"]["name"]
                    conds = {c["type"]: c["status"] for c in (pool.get("status") or {}).get("conditions") or []}
                    if name not in ready_at and conds.get("Ready") == "True":
                        ready_at[name] = now
                        print(f"  {name} Ready at {now:.2f}s ({len(ready_at)}/{args.pools})", file=sys.stderr)
                time.sleep(0.1)
        times = np.array(sorted(ready_at.values()))
        result = {
            "pools": args.pools,
            "pods_per_pool": args.pods,
            "apply_to_ready_p50_s": round(float(np.percentile(times, 50)), 3),
            "apply_to_ready_p99_s": round(float(np.percentile(times, 99)), 3),
            "apply_to_ready_max_s": round(float(times.max()), 3),
            "operator_peak_rss_mib": round(_peak_rss_mib(operator.process.pid), 1),
        }
        print(json.dumps(result))
        return 0
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
