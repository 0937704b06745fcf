"""``make demo``: the whole loop on one machine, with progress at every step.

1. start the local control plane (etcd, kube-apiserver, kube-controller-manager);
2. start the node agent (three fake Nodes in two regions, three zones);
3. install the CRDs and the operator's ClusterRole, run the operator under its
   ServiceAccount;
4. ``kubectl apply -f examples/nodepool.yaml`` and watch the pool become Ready, its
   node pods running as local processes on their own loopback addresses;
5. print the pool, its pods and node processes; tear everything down (or, with
   ``--keep``, stay up until Ctrl-C and print how to point kubectl at it).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from pqmpc_local.agent_runner import DEFAULT_NODES, start_agent, stop_agent, wait_nodes_ready
from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import REPO, start_operator
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary

__all__ = ["main"]


class _Interrupted(Exception):
    pass


def _raise(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def _wait_ready(kubectl: Kubectl, console: Console, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = ""
    with console.status("waiting for NodePool banks to become Ready") as spinner:
        while time.monotonic() < deadline:
            pool = json.loads(kubectl("get", "mpcpool", "banks", "-o", "json").stdout)
            st = pool.get("status") or {}
            conds = {c["type"]: c for c in st.get("conditions") or []}
            line = f"{st.get('readyReplicas', 0)}/{len(pool['spec']['groups'])} node pods ready"
            if "Progressing" in conds:
                line += f" — {conds['Progressing']['reason']}: {conds['Progressing']['message']}"
            if line != last:
                spinner.update(line)
                last = line
            if conds.get("Ready", {}).get("status") == "True":
                return dict(pool)
            if conds.get("Degraded", {}).get("status") == "True":
                console.print(f"[yellow]Degraded: {conds['Degraded']['message']}")
            time.sleep(0.5)
    raise TimeoutError(f"pool banks not Ready after {timeout:.0f}s ({last})")


def _pid_of(node_id: str) -> str:
    """The pid of the local process that runs a node pod (found by its environment)."""
    needle = f"PQMPC_NODE_ID={node_id}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                return proc.name
        except OSError:
            continue
    return ""


def _show(kubectl: Kubectl, console: Console, pool: dict[str, object]) -> None:
    table = Table(title="NodePool banks — node pods (each a local process)")
    for col in ("pod", "trust domain", "region / zone", "pod IP", "ready", "pid"):
        table.add_column(col)
    pods = {p["metadata"]["name"]: p for p in json.loads(kubectl("get", "pods", "-o", "json").stdout)["items"]}
    status = pool.get("status")
    nodes = status.get("nodes", []) if isinstance(status, dict) else []
    for node in nodes:
        pod = pods.get(node["name"], {})
        ip = (pod.get("status") or {}).get("podIP", "")
        pid = _pid_of(node["name"])
        table.add_row(node["name"], node["trustDomain"], f"{node['region']} / {node['zone']}", ip,
                      "yes" if node["ready"] else "no", pid or "(see agent log)")
    console.print(table)
    console.print(kubectl("get", "mpcpool", "-o", "wide").stdout)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when the pool became Ready and everything was torn down."""
    parser = argparse.ArgumentParser(prog="pqmpc-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C instead of tearing down")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the pool to be Ready")
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    signal.signal(signal.SIGTERM, _raise)
    workdir = Path(tempfile.mkdtemp(prefix="pqmpc-demo-"))
    console.rule("[bold]pqmpc demo")
    console.print(f"work dir: {workdir}")
    plane = ControlPlane(workdir / "control-plane")
    agent = operator = None
    try:
        with console.status("[1/4] starting etcd, kube-apiserver, kube-controller-manager"):
            plane.start()
        console.print(f"[green]✓[/] [1/4] control plane up at {plane.server}")
        kubectl = Kubectl(kubeconfig=plane.kubeconfig, binary=kubectl_binary())
        console.print(kubectl("version").stdout.strip())
        with console.status("[2/4] starting the node agent (3 fake Nodes)"):
            agent = start_agent(plane.kubeconfig, workdir / "agent", DEFAULT_NODES)
            wait_nodes_ready(plane.kubeconfig, agent)
        console.print(f"[green]✓[/] [2/4] node agent playing kubelet for {', '.join(n.name for n in DEFAULT_NODES)}")
        with console.status("[3/4] installing CRDs and RBAC, starting the operator under its ServiceAccount"):
            operator = start_operator(plane, workdir)
        console.print(f"[green]✓[/] [3/4] operator running (pid {operator.process.pid}), log {workdir / 'operator.log'}")
        console.print(kubectl("apply", "-f", str(REPO / "examples" / "nodepool.yaml")).stdout.strip())
        started = time.monotonic()
        pool = _wait_ready(kubectl, console, args.timeout)
        console.print(f"[green]✓[/] [4/4] NodePool banks Ready in {time.monotonic() - started:.1f}s")
        _show(kubectl, console, pool)
        if args.keep:
            console.print(f"\nexport KUBECONFIG={plane.kubeconfig}\n[bold]up until Ctrl-C[/]")
            signal.signal(signal.SIGINT, _raise)
            while True:
                time.sleep(3600)
        return 0
    except (_Interrupted, KeyboardInterrupt):
        return 0
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure and still tears down
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        with console.status("tearing down"):
            if operator is not None:
                operator.stop()
            if agent is not None:
                stop_agent(agent)
            plane.stop()
        console.print("[green]✓[/] torn down: no process left behind")


if __name__ == "__main__":
    sys.exit(main())
