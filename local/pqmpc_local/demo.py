"""``make demo``: the whole pqmpc loop on one machine, with progress at every step.

1. start a local control plane (etcd, kube-apiserver, kube-controller-manager);
2. start the node agent: it plays kubelet for three fake Nodes (eu-west-1a, eu-west-1b,
   us-east-1a) and runs every pod as a local process on its own loopback address;
3. ``helm install`` the chart: CRDs, RBAC, the operator Deployment (whose pod the agent
   runs with its in-cluster ServiceAccount token);
4. ``kubectl apply`` the NodePool ``banks`` (three banks, three trust domains, two
   regions) and wait until it is Ready with three certified nodes;
5. start Prometheus (Debian's package) with the pqmpc alert rules, scraping the
   operator and the three nodes;
6. make identities for bank-a, bank-b, bank-c, the auditor and the insurer
   (``pqmpc identity new``) and fetch the pool's trust files;
7. ``kubectl apply`` the two example sessions with those identities: fraud statistics
   over two EU banks (EU data locality) and an MLP scoring session (Shamir, 3 parties);
8. the data owners submit synthetic CSVs (and the insurer its model) with ``pqmpc submit``;
9. wait until both sessions Succeeded; print the results with ``pqmpc result`` next to
   the plaintext answer computed with numpy;
10. query Prometheus for the key series and render the key panels to a PNG;
11. tear everything down (or, with ``--keep``, stay up until Ctrl-C).

Everything the demo writes (CSVs, identities, logs, ``summary.json``, the PNG) lives
under ``--out`` (default ``out/demo``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from pqmpc_local.agent_runner import DEFAULT_NODES, NodeAgentProcess, start_agent, stop_agent, wait_nodes_ready
from pqmpc_local.controlplane import ControlPlane, binaries_dir
from pqmpc_local.processes import ManagedProcess, Stopped, free_port, stop_on
from pqmpc_local.prometheus_config import prometheus_config
from pqmpc_local.pytest_plugin import Kubectl, kubectl_binary

__all__ = ["DemoError", "main"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pqmpc"
EXAMPLES = REPO / "examples"
ALERT_RULES = REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml"
RELEASE = "pqmpc"
SYSTEM_NS = "pqmpc-system"
NS = "default"
POOL = "banks"
PARTIES = ("bank-a", "bank-b", "bank-c", "auditor", "insurer")
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=pqmpc-operator"
NODE_SELECTOR = "app.kubernetes.io/name=pqmpc-node"
SESSION_FILES = {"fraud-stats": "mpcsession-fraud-stats.yaml", "fraud-mlp": "mpcsession-mlp.yaml"}
STEPS = 11
T = TypeVar("T")

# Key series: (label, instant query) for the table.
KEY_SERIES: tuple[tuple[str, str], ...] = (
    ("targets up", "sum(up)"),
    ("pool ready replicas", f'sum(pqmpc_pool_replicas{{pool="{POOL}",state="ready"}})'),
    ("certified nodes", "sum(pqmpc_node_certified)"),
    ("sessions Succeeded (operator)", 'sum(pqmpc_session_phase{phase="Succeeded"})'),
    ("node sessions total (succeeded)", 'sum(pqmpc_node_sessions_total{outcome="succeeded"})'),
    ("KEM key age, max (s)", "max(pqmpc_node_kem_key_age_seconds)"),
    ("round latency p95 (s)", "histogram_quantile(0.95, sum by (le) (pqmpc_node_round_latency_seconds_bucket))"),
    ("handshake failures", "sum(pqmpc_node_handshake_failures_total) or vector(0)"),
    ("MAC-check failures", "sum(pqmpc_node_mac_check_failures_total) or vector(0)"),
)

# Panels of the PNG: (title, [(legend label template, range query)]).
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("NodePool ready replicas", (("{pool}", "sum by (pool) (pqmpc_pool_replicas{state=\"ready\"})"),)),
    ("Certified nodes", (("certified", "sum(pqmpc_node_certified)"),)),
    ("Sessions by phase / node sessions", (
        ("sessions {phase}", "sum by (phase) (pqmpc_session_phase == 1)"),
        ("node sessions {outcome}", "sum by (outcome) (pqmpc_node_sessions_total)"),
    )),
    ("KEM key age (s)", (("{pod}", "max by (pod) (pqmpc_node_kem_key_age_seconds)"),)),
    ("Round latency p95 (s)", (
        ("p95", "histogram_quantile(0.95, sum by (le) (rate(pqmpc_node_round_latency_seconds_bucket[20s])))"),
    )),
    ("Handshake failures (by reason)", (("{reason}", "sum by (reason) (pqmpc_node_handshake_failures_total) or vector(0)"),)),
)


class DemoError(RuntimeError):
    """A step failed: what went wrong, and the log lines that explain it."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URLs only
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def helm_binary() -> str:
    """helm from ``scripts/build-control-plane.sh``'s cache, else one on PATH."""
    candidate = binaries_dir() / "helm"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("helm")
    if found is None:
        raise DemoError("helm not found: run `make control-plane` (scripts/build-control-plane.sh) first")
    return found


def pqmpc_binary() -> str:
    """The ``pqmpc`` CLI of this virtual environment."""
    candidate = Path(sys.executable).parent / "pqmpc"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("pqmpc")
    if found is None:
        raise DemoError("the pqmpc CLI is not installed: run `make venv`")
    return found


def _run(argv: list[str], what: str, *, input: str | None = None, timeout: float = 180.0,  # noqa: A002
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if result.returncode != 0:
        raise DemoError(f"{what} exited {result.returncode}", f"{result.stdout}\n{result.stderr}".strip())
    return result


# -- synthetic data and the plaintext answers ------------------------------------------------

MLP_FEATURES = ("amount", "txPerDay", "chargebacks")
MLP_ROWS = {"bank-a": 10, "bank-b": 8, "bank-c": 6}
FRAUD_ROWS = {"bank-a": 40, "bank-b": 25}
QUANTUM = 2.0 ** -12  # model weights are multiples of this: exact in the engine's 16-bit fixed point


def fraud_amounts(owner: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Deterministic transaction amounts of one EU bank (cents precision, 5 .. 90 000)."""
    rng = np.random.default_rng(1000 + PARTIES.index(owner))
    raw = rng.lognormal(mean=6.5, sigma=1.6, size=FRAUD_ROWS[owner])
    return np.asarray(np.round(np.clip(raw, 5.0, 90_000.0), 2), dtype=np.float64)


def mlp_rows(owner: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Deterministic (amount, txPerDay, chargebacks) rows of one bank."""
    rng = np.random.default_rng(2000 + PARTIES.index(owner))
    n = MLP_ROWS[owner]
    amount = np.round(np.clip(rng.lognormal(6.0, 1.2, n), 1, 50_000))
    tx = rng.integers(0, 60, n)
    chargebacks = rng.integers(0, 6, n)
    return np.column_stack([amount, tx, chargebacks]).astype(np.float64)


def mlp_model(hidden: int = 8) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    """The insurer's model for ``layers: [8, 1]``: W0 (3, 8), b0 (8,), W1 (8, 1), b1 (1,)."""
    rng = np.random.default_rng(3000)
    scale = np.array([[2e-4], [0.02], [0.25]])  # per feature: amounts are large, chargebacks small

    def q(a: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray(np.round(a / QUANTUM) * QUANTUM, dtype=np.float64)

    return {
        "W0": q(rng.uniform(-1, 1, (3, hidden)) * scale),
        "b0": q(rng.uniform(-0.5, 0.5, hidden)),
        "W1": q(rng.uniform(-1, 1, (hidden, 1))),
        "b1": q(rng.uniform(-0.2, 0.2, 1)),
    }


def plaintext_fraud(spec: dict[str, Any]) -> dict[str, Any]:
    """numpy's answer to the fraud-stats program on the concatenated plaintext inputs."""
    x = np.concatenate([fraud_amounts(i["owner"]) for i in spec["inputs"]])
    out: dict[str, Any] = {}
    for op in spec["program"]["aggregate"]:
        name = f"{op['op']}({op['field']})"
        if op["op"] == "count":
            out[name] = len(x)
        elif op["op"] == "mean":
            out[name] = float(x.mean())
        elif op["op"] == "variance":
            out[name] = float(x.var())
        elif op["op"] == "histogram":
            # numpy's bins: [e_k, e_k+1), the last one closed; the MPC histogram also reports
            # the rows outside its edges (which np.histogram drops silently).
            out[name] = [int(c) for c in np.histogram(x, bins=op["bins"])[0]]
            out[f"{name}.below"] = int(np.count_nonzero(x < op["bins"][0]))
            out[f"{name}.above"] = int(np.count_nonzero(x > op["bins"][-1]))
    return out


def plaintext_mlp(spec: dict[str, Any]) -> dict[str, Any]:
    """numpy's forward pass (ReLU between layers) over every bank's rows, in input order."""
    x = np.concatenate([mlp_rows(i["owner"]) for i in spec["inputs"] if i["owner"] in MLP_ROWS])
    m = mlp_model()
    scores = np.maximum(x @ m["W0"] + m["b0"], 0) @ m["W1"] + m["b1"]
    return {"score": [float(v) for v in scores.reshape(-1)], "count": len(x)}


def results_match(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    """True when every output the recipient received equals the plaintext (fixed-point tolerance)."""
    if not got:
        return False
    for name, value in got.items():
        want = expected.get(name)
        if want is None:
            return False
        a = np.asarray(value, dtype=np.float64).reshape(-1)
        b = np.asarray(want, dtype=np.float64).reshape(-1)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=2e-2):
            return False
    return True


def write_csv(path: Path, header: tuple[str, ...], rows: np.ndarray[Any, np.dtype[np.float64]]) -> Path:
    """Write ``rows`` under ``header``; integral values without a decimal point."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows.reshape(len(rows), -1):
            writer.writerow([f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}" for v in row])
    return path


# -- the demo -----------------------------------------------------------------------------------


@dataclass
class Demo:
    """State of one demo run; :meth:`run` drives the steps, :meth:`teardown` undoes them."""

    out: Path
    console: Console
    plane: ControlPlane | None = None
    agent: NodeAgentProcess | None = None
    kubectl: Kubectl | None = None
    helm: str = ""
    helm_installed: bool = False
    prometheus: ManagedProcess | None = None
    prom_url: str = ""
    prom_started: float = 0.0
    ports: dict[str, int] = field(default_factory=dict)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    step_no: int = 0
    failures: list[str] = field(default_factory=list)
    diagnose: Callable[[], str] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def step(self, title: str, diagnose: Callable[[], str] | None = None) -> Iterator[None]:
        """One numbered step: a spinner while it runs, a check mark and its time when done."""
        self.step_no += 1
        label = f"[{self.step_no}/{STEPS}] {title}"
        self.diagnose = diagnose
        started = time.monotonic()
        with self.console.status(f"{label} …"):
            yield
        self.console.print(f"[green]✓[/] {label} [dim]({time.monotonic() - started:.1f}s)[/]")

    def k(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:  # noqa: A002
        assert self.kubectl is not None
        result = self.kubectl(*args, input=input, check=False, timeout=120)
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} exited {result.returncode}", result.stderr.strip())
        return result

    def get(self, *args: str) -> Any:
        return json.loads(self.k("get", *args, "-o", "json").stdout)

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float, every: float = 0.5,
                 show: Callable[[], str] | None = None) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        detail = show() if show is not None else ""
        raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {detail}" if detail else ""))

    def operator_pods(self) -> list[dict[str, Any]]:
        pods = self.get("pods", "-n", SYSTEM_NS, "-l", OPERATOR_SELECTOR)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def operator_logs(self, lines: int = 40) -> str:
        if self.agent is None or self.kubectl is None:
            return ""
        try:
            names = [p["metadata"]["name"] for p in self.operator_pods()]
        except DemoError:
            names = []
        logs = "\n".join(self.agent.pod_logs(SYSTEM_NS, n, lines) for n in names)
        return f"operator pod log:\n{logs}\n\nnode agent log:\n{self.agent.log_tail(15)}"

    def node_logs(self, lines: int = 15) -> str:
        if self.agent is None:
            return ""
        pods = sorted({p.parent.name.split("_")[1] for p in self.agent.workdir.glob(f"pods/{NS}_{POOL}-*/*.log")})
        return "\n".join(self.agent.pod_logs(NS, p, lines) for p in pods)

    # -- steps -------------------------------------------------------------------------------

    def run(self) -> None:
        """Every step up to the PNG; raises :class:`DemoError` naming what failed."""
        work = self.out / "cluster"
        with self.step("local control plane: etcd, kube-apiserver, kube-controller-manager",
                       lambda: "\n".join(f"{p.name}: " + _tail(p) for p in (work / "control-plane" / "logs").glob("*.log"))):
            self.plane = ControlPlane(work / "control-plane")
            self.plane.start()
            self.kubectl = Kubectl(kubeconfig=self.plane.kubeconfig, binary=kubectl_binary())
        self.console.print(f"    API server {self.plane.server}, kubeconfig {self.plane.kubeconfig}")

        with self.step("node agent: three fake Nodes, pods run as local processes",
                       lambda: self.agent.log_tail(30) if self.agent else ""):
            self.agent = start_agent(self.plane.kubeconfig, work / "node-agent", DEFAULT_NODES)
            wait_nodes_ready(self.plane.kubeconfig, self.agent, timeout=60)
        self.console.print("    " + ", ".join(f"{n.name} ({n.region}/{n.zone})" for n in DEFAULT_NODES))

        with self.step("helm install pqmpc: CRDs, RBAC, operator Deployment", self.operator_logs):
            self.install_chart()

        with self.step(f"kubectl apply -f examples/nodepool.yaml: pool {POOL} Ready, nodes certified",
                       lambda: self.operator_logs() + "\n\nnode pods:\n" + self.node_logs()):
            self.apply_pool()
        self.show_pool()

        with self.step("Prometheus with the pqmpc alert rules, scraping the operator and the nodes",
                       lambda: _tail(self.out / "prometheus" / "prometheus.log")):
            self.start_prometheus()

        with self.step("identities for bank-a, bank-b, bank-c, auditor, insurer (pqmpc identity new)"):
            self.make_identities()

        with self.step("kubectl apply the sessions fraud-stats (EU locality, additive) and fraud-mlp (Shamir MLP), "
                       "both dealer-free",
                       lambda: self.operator_logs()):
            self.apply_sessions()
        self.show_placement()

        with self.step("data owners submit sample CSVs, the insurer its model (pqmpc submit)",
                       lambda: self.operator_logs(20) + "\n\nnode pods:\n" + self.node_logs()):
            self.submit_inputs()

        with self.step("sessions compute: waiting for Succeeded",
                       lambda: self.operator_logs(20) + "\n\nnode pods:\n" + self.node_logs()):
            self.wait_sessions()

        with self.step("results (pqmpc result) and the plaintext answer (numpy)"):
            self.collect_results()

        with self.step("Prometheus: key series, alert rules, panels PNG",
                       lambda: _tail(self.out / "prometheus" / "prometheus.log")):
            self.observe()

    def install_chart(self) -> None:
        assert self.plane is not None and self.agent is not None
        self.helm = helm_binary()
        # The operator binds 0.0.0.0 on this shared machine: free ports avoid clashes.
        self.ports = {"liveness": free_port(), "metrics": free_port(), "bootstrap": free_port()}
        _run([self.helm, "install", RELEASE, str(CHART), "--kubeconfig", str(self.plane.kubeconfig),
              "--namespace", SYSTEM_NS, "--create-namespace",
              "--set", f"operator.livenessPort={self.ports['liveness']}",
              "--set", f"operator.metricsPort={self.ports['metrics']}",
              # No cluster DNS here: node processes dial the operator's bootstrap port on this host.
              "--set", f"operator.bootstrapPort={self.ports['bootstrap']}",
              "--set", f"operator.bootstrapUrl=https://127.0.0.1:{self.ports['bootstrap']}",
              "--set", "operator.resyncSeconds=5",
              "--set", "operator.livenessProbe.initialDelaySeconds=2",
              "--set", "operator.livenessProbe.periodSeconds=5"], "helm install")
        self.helm_installed = True

        def ready() -> dict[str, Any] | None:
            pods = self.operator_pods()
            if len(pods) != 1:
                return None
            pod = pods[0]
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
            return pod if pod["status"].get("phase") == "Running" and conds.get("Ready") == "True" else None

        pod = self.wait_for("the operator pod to run and pass kopf's liveness probe", ready, 120)
        ip = pod["status"]["podIP"]
        self.summary["operator"] = {"pod": pod["metadata"]["name"], "ip": ip, "metricsPort": self.ports["metrics"]}
        self.wait_for("the operator's /metrics", lambda: _http_get(f"http://{ip}:{self.ports['metrics']}/metrics")[0] == 200, 60)
        self.console.print(f"    release {RELEASE} in {SYSTEM_NS}; operator pod {pod['metadata']['name']} at {ip} "
                           "(a local process using only its ServiceAccount token), metrics on "
                           f":{self.ports['metrics']}")

    def apply_pool(self) -> None:
        self.k("apply", "-n", NS, "-f", str(EXAMPLES / "nodepool.yaml"))
        last = {"line": ""}

        def ready() -> dict[str, Any] | None:
            pool = self.get("mpcpool", POOL, "-n", NS)
            st = pool.get("status") or {}
            nodes = st.get("nodes") or []
            conds = {c["type"]: c for c in st.get("conditions") or []}
            last["line"] = (f"{st.get('readyReplicas', 0)}/3 ready, "
                            f"{sum(1 for n in nodes if n.get('certFingerprint'))} certified; "
                            + "; ".join(f"{t}={c['status']} {c.get('reason', '')}" for t, c in conds.items()))
            ok = (conds.get("Ready", {}).get("status") == "True" and len(nodes) == 3
                  and all(n.get("ready") and n.get("certFingerprint") for n in nodes))
            return pool if ok else None

        pool = self.wait_for(f"NodePool {POOL} Ready with three certified nodes", ready, 180, every=1.0,
                             show=lambda: last["line"])
        self.summary["pool"] = {"readyReplicas": pool["status"].get("readyReplicas"),
                                "nodes": pool["status"]["nodes"]}

    def show_pool(self) -> None:
        pool = self.summary["pool"]
        pods = {p["metadata"]["name"]: p for p in self.get("pods", "-n", NS, "-l", NODE_SELECTOR)["items"]}
        table = Table(title=f"NodePool {POOL}: node pods (each a local process)", title_justify="left")
        for col in ("node pod", "trust domain", "region / zone", "pod IP", "certificate (ML-DSA-65)", "KEM epoch"):
            table.add_column(col)
        for node in pool["nodes"]:
            ip = (pods.get(node["name"], {}).get("status") or {}).get("podIP", "")
            table.add_row(node["name"], node["trustDomain"], f"{node['region']} / {node['zone']}", ip,
                          str(node.get("certFingerprint", ""))[:16] + "…", str(node.get("kemEpoch", "")))
        self.console.print(table)

    def start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise DemoError("prometheus not found: run `make prometheus` (Debian's prometheus package)")
        op = self.summary["operator"]
        pods = self.get("pods", "-n", NS, "-l", NODE_SELECTOR)["items"]
        pdir = self.out / "prometheus"
        pdir.mkdir(parents=True, exist_ok=True)
        # The operator job honours the operator's own namespace label (the session's or pool's).
        config = prometheus_config(
            operator_target=f"{op['ip']}:{op['metricsPort']}",
            operator_labels={"namespace": SYSTEM_NS, "pod": op["pod"]},
            node_targets=[(f"{p['status']['podIP']}:9100",  # plain-HTTP metrics port
                           {"namespace": NS, "pod": p["metadata"]["name"]}) for p in pods],
            rule_files=[str(ALERT_RULES)],
        )
        (pdir / "prometheus.yml").write_text(json.dumps(config, indent=2))
        port = free_port()
        self.prom_url = f"http://127.0.0.1:{port}"
        self.prometheus = ManagedProcess(
            "prometheus",
            [binary, f"--config.file={pdir / 'prometheus.yml'}", f"--storage.tsdb.path={pdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
            log_path=pdir / "prometheus.log", cwd=pdir,
        )
        self.prom_started = time.time()
        want = 1 + len(pods)

        def all_up() -> bool:
            if self.prometheus is not None and self.prometheus.poll() is not None:
                raise DemoError(f"prometheus exited {self.prometheus.poll()}")
            up = self.query("up == 1")
            return len(up) == want

        self.wait_for(f"Prometheus to scrape the operator and {len(pods)} nodes", all_up, 60,
                      show=lambda: json.dumps(self.query("up")))
        self.console.print(f"    Prometheus {self.prom_url} (rules {ALERT_RULES.relative_to(REPO)}), {want} targets up")

    def query(self, q: str) -> list[dict[str, Any]]:
        status, body = _http_get(f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        return list(json.loads(body)["data"]["result"]) if status == 200 else []

    def query_range(self, q: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        status, body = _http_get(f"{self.prom_url}/api/v1/query_range?{params}", timeout=15)
        if status != 200:
            raise DemoError(f"query_range {q!r} answered {status}", body[-500:])
        return list(json.loads(body)["data"]["result"])

    def make_identities(self) -> None:
        pqmpc = pqmpc_binary()
        ids = self.out / "identities"
        ids.mkdir(parents=True, exist_ok=True)
        for name in PARTIES:
            path = ids / f"{name}.identity.json"
            path.unlink(missing_ok=True)
            doc = json.loads(_run([pqmpc, "identity", "new", name, "--out", str(path)], f"pqmpc identity new {name}").stdout)
            self.ids[name] = doc
        trust = self.get("configmap", f"{POOL}-trust", "-n", NS)["data"]
        (self.out / "ca.pem").write_text(trust["ca.pem"])
        (self.out / "plan-signer.pub").write_text(trust["plan-signer.pub"])
        self.console.print(f"    identities under {ids}; pool CA and plan-signing key from ConfigMap {POOL}-trust")

    def session_doc(self, name: str) -> dict[str, Any]:
        doc = dict(yaml.safe_load((EXAMPLES / SESSION_FILES[name]).read_text()))
        doc["metadata"]["namespace"] = NS
        spec = doc["spec"]
        for item in spec["inputs"]:
            item["identity"] = self.ids[item["owner"]]["identity"]
        for out in spec["outputs"]:
            out["identity"] = self.ids[out["recipient"]]["kemPublicKey"]
        return doc

    def apply_sessions(self) -> None:
        for name in SESSION_FILES:
            doc = self.session_doc(name)
            self.specs[name] = doc["spec"]
            # JSON, not YAML: a YAML dump folds the long base64 keys.
            self.k("apply", "-f", "-", input=json.dumps(doc))
        for name in SESSION_FILES:
            st = self.wait_for(f"session {name} to be placed and await inputs",
                               self.phase_in(name, {"AwaitingInputs", "Failed"}), 120, show=self.show_status(name))
            if st["phase"] == "Failed":
                raise DemoError(f"session {name} Failed: {st.get('reason')}: {st.get('message')}")

    def phase_in(self, name: str, phases: set[str]) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            st = self.status(name)
            return st if st.get("phase") in phases else None
        return check

    def show_status(self, name: str) -> Callable[[], str]:
        return lambda: json.dumps(self.status(name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("mpcs", name, "-n", NS).get("status") or {})

    def show_placement(self) -> None:
        table = Table(title="placement (data locality + one share per trust domain and zone)", title_justify="left")
        for col in ("session", "party", "node pod", "trust domain", "region / zone"):
            table.add_column(col)
        for name in SESSION_FILES:
            for p in self.status(name).get("placement") or []:
                table.add_row(name, str(p["party"]), p["node"], p["trustDomain"], f"{p['region']} / {p['zone']}")
        self.console.print(table)

    def trust_args(self, name: str, owner: str) -> list[str]:
        st = self.status(name)
        return ["--session", st["sessionId"], "--identity", str(self.out / "identities" / f"{owner}.identity.json"),
                "--node", st["result"]["nodes"][0], "--ca", str(self.out / "ca.pem"),
                "--plan-signer", str(self.out / "plan-signer.pub")]

    def submit_inputs(self) -> None:
        pqmpc = pqmpc_binary()
        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        files: list[tuple[str, str, Path, str]] = []
        for item in self.specs["fraud-stats"]["inputs"]:
            owner = item["owner"]
            path = write_csv(data / f"fraud-stats.{owner}.csv", ("amount",), fraud_amounts(owner))
            files.append(("fraud-stats", owner, path, f"{FRAUD_ROWS[owner]} rows"))
        for item in self.specs["fraud-mlp"]["inputs"]:
            owner = item["owner"]
            if owner in MLP_ROWS:
                path = write_csv(data / f"fraud-mlp.{owner}.csv", MLP_FEATURES, mlp_rows(owner))
                files.append(("fraud-mlp", owner, path, f"{MLP_ROWS[owner]} rows"))
            else:
                model = {k: v.tolist() for k, v in mlp_model().items()}
                path = data / f"fraud-mlp.{owner}.model.json"
                path.write_text(json.dumps(model, indent=1))
                files.append(("fraud-mlp", owner, path, "model W0 3×8, b0, W1 8×1, b1"))
        for session, owner, path, what in files:
            _run([pqmpc, "submit", *self.trust_args(session, owner), str(path)], f"pqmpc submit ({owner} → {session})")
            self.console.print(f"    {owner:8} → {session:12} {path.relative_to(self.out)} ({what})")

    def wait_sessions(self) -> None:
        for name in SESSION_FILES:
            st = self.wait_for(f"session {name} to finish", self.phase_in(name, {"Succeeded", "Failed"}), 300,
                               show=self.show_status(name))
            prep = dict(st.get("preprocessing") or {})
            self.summary.setdefault("sessions", {})[name] = {"phase": st["phase"], "placement": st.get("placement"),
                                                             "preprocessing": prep}
            if st["phase"] != "Succeeded":
                raise DemoError(f"session {name} {st['phase']}: {st.get('reason')}: {st.get('message')}")
            start, end = st.get("startTime", ""), st.get("completionTime", "")
            self.console.print(f"    {name}: Succeeded (started {start}, completed {end})")
            self.console.print(f"      preprocessing {prep.get('provider', '?')}: " + (
                "dealer-free, the parties made their own triples (the operator dealt nothing)"
                if prep.get("dealerFree") == "true" else "dealt by the operator (trusted dealer)"))

    def collect_results(self) -> None:
        pqmpc = pqmpc_binary()
        plaintext = {"fraud-stats": plaintext_fraud(self.specs["fraud-stats"]),
                     "fraud-mlp": plaintext_mlp(self.specs["fraud-mlp"])}
        for name in SESSION_FILES:
            recipient = self.specs[name]["outputs"][0]["recipient"]
            args = self.trust_args(name, recipient)
            shown = _run([pqmpc, "result", *args, "--wait", "60"], f"pqmpc result ({recipient}, {name})").stdout
            self.console.print(f"[bold]$ pqmpc result --session {name} --identity {recipient}.identity.json …[/]")
            self.console.print(shown.rstrip(), markup=False, highlight=False)
            raw = _run([pqmpc, "result", *args, "--json", "--wait", "60"], f"pqmpc result --json ({name})").stdout
            doc = json.loads(raw)
            outputs = dict(doc["outputs"])
            labels = dict(doc.get("labels", {}))
            expected = {k: v for k, v in plaintext[name].items() if k in outputs}
            table = Table(title=f"{name}: MPC result vs plaintext (numpy, computed here for comparison only)",
                          title_justify="left")
            table.add_column("output")
            table.add_column("MPC (recipient " + recipient + ")")
            table.add_column("plaintext (numpy)")
            for key, value in outputs.items():
                table.add_row(labels.get(key, key), _fmt(value), _fmt(plaintext[name].get(key)))
            self.console.print(table)
            match = results_match(plaintext[name], outputs)
            session = self.summary["sessions"][name]
            session.update({"recipient": recipient, "results": outputs, "plaintext": expected, "match": match})
            self.console.print(("[green]✓ matches[/]" if match else "[red]✗ does not match[/]") + " the plaintext answer")
            if not match:
                # Keep going (Prometheus and the panels still show what happened); the demo exits 1.
                self.failures.append(f"session {name}: the MPC result {_fmt(outputs)} does not match "
                                     f"the plaintext answer {_fmt(plaintext[name])}")

    def observe(self) -> None:
        series: dict[str, float | None] = {}
        table = Table(title="Prometheus: key series", title_justify="left")
        table.add_column("series")
        table.add_column("query", style="dim")
        table.add_column("value", justify="right")
        for label, q in KEY_SERIES:
            result = self.query(q)
            value = float(result[0]["value"][1]) if result else None
            series[label] = value
            table.add_row(label, q, "—" if value is None else f"{value:g}")
        self.console.print(table)
        status, body = _http_get(f"{self.prom_url}/api/v1/rules")
        rules = [r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]] if status == 200 else []
        status, body = _http_get(f"{self.prom_url}/api/v1/alerts")
        alerts = json.loads(body)["data"]["alerts"] if status == 200 else []
        firing = sorted({a["labels"]["alertname"] for a in alerts if a.get("state") == "firing"})
        self.console.print(f"    {len(rules)} alert rules loaded; firing: {', '.join(firing) or 'none'}")
        png = self.out / "pqmpc-panels.png"
        panels = self.render_png(png)
        self.console.print(f"    panels: {png}")
        self.summary["prometheus"] = {"url": self.prom_url, "series": series, "rules": rules, "firing": firing,
                                      "panels": panels}
        self.summary["png"] = str(png)

    def render_png(self, path: Path) -> dict[str, int]:
        """Render :data:`PANELS` from ``query_range`` over the time Prometheus has been up."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
        from datetime import datetime

        time.sleep(3)  # one more scrape after the last session
        end = time.time()
        start = self.prom_started
        step = max(1.0, (end - start) / 300)
        fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
        fig.suptitle(f"pqmpc demo — pool {POOL}, sessions fraud-stats + fraud-mlp "
                     f"({datetime.fromtimestamp(start):%H:%M:%S}–{datetime.fromtimestamp(end):%H:%M:%S})")
        counts: dict[str, int] = {}
        for ax, (title, queries) in zip(axes.flat, PANELS, strict=True):
            n = 0
            for legend, q in queries:
                for s in self.query_range(q, start, end, step):
                    xs = [datetime.fromtimestamp(float(t)) for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    label = legend.format_map(_Labels(s["metric"]))
                    ax.plot(xs, ys, label=label, drawstyle="steps-post" if "latency" not in title else "default")
                    n += 1
            counts[title] = n
            ax.set_title(title)
            ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
            if "latency" not in title and "age" not in title:
                ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1] * 1.15))
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
            ax.tick_params(axis="x", labelrotation=30)
            ax.grid(alpha=0.3)
            if n:
                ax.legend(fontsize=8, loc="best")
            else:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return counts

    # -- teardown ----------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Delete the sessions and the pool while the operator runs, uninstall, stop every process."""
        problems: list[str] = []
        if self.kubectl is not None and self.plane is not None and self.plane.running:
            if self.helm_installed:
                # Pools and sessions carry kopf's finalizer: delete them while the operator still runs.
                for kind in ("mpcs", "mpcpool"):
                    r = self.k("delete", kind, "--all", "-n", NS, "--wait=true", "--timeout=60s", check=False)
                    if r.returncode != 0:
                        problems.append(f"kubectl delete {kind}: {r.stderr.strip()}")
                r = subprocess.run([self.helm, "uninstall", RELEASE, "--kubeconfig", str(self.plane.kubeconfig),
                                    "--namespace", SYSTEM_NS, "--wait", "--timeout", "60s"],
                                   capture_output=True, text=True, timeout=120, check=False)
                if r.returncode != 0:
                    problems.append(f"helm uninstall: {r.stderr.strip()}")
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.agent is not None:
            stop_agent(self.agent)
        if self.plane is not None:
            self.plane.stop()
        left = leftover_processes(self.out)
        if left:
            problems.append(f"processes left behind: {left}")
        return problems


class _Labels(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "all"


def _fmt(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = [v for row in value for v in row]
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        shown = ", ".join(f"{v:.3f}" for v in value[:6])
        return f"[{shown}{', …' if len(value) > 6 else ''}] ({len(value)})"
    return json.dumps(value)


def leftover_processes(marker: Path) -> list[str]:
    """``pid name`` of live processes whose command line or environment mentions ``marker``."""
    needle = str(marker.resolve()).encode()
    ancestors = set()
    pid = os.getpid()
    while pid > 1:  # this process and whoever started it (their command lines name the folder too)
        ancestors.add(pid)
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in ancestors:
            continue
        try:
            if (proc / "stat").read_text().split(") ")[-1].startswith("Z"):
                continue
            cwd = os.readlink(proc / "cwd").encode()
            if needle in cwd or needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                found.append(f"{proc.name} {(proc / 'comm').read_text().strip()}")
        except OSError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when every step passed and everything was torn down."""
    parser = argparse.ArgumentParser(prog="python -m pqmpc_local.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C, then tear down")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    stop_on(signal.SIGTERM)
    started = time.monotonic()
    console.rule("[bold]pqmpc demo: post-quantum MPC on a local Kubernetes control plane")
    console.print(f"output folder: {out}")
    demo = Demo(out=out, console=console)
    ok = False
    try:
        demo.run()
        ok = True
        if args.keep:
            assert demo.plane is not None
            console.print(Panel(f"export KUBECONFIG={demo.plane.kubeconfig}\nkubectl get mpcpool,mpcs -A\n"
                                f"Prometheus: {demo.prom_url}\nCtrl-C tears everything down.",
                                title="up until Ctrl-C"))
            stop_on(signal.SIGINT)
            while True:
                time.sleep(3600)
    except (Stopped, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure, then tears down
        logs = exc.logs if isinstance(exc, DemoError) else ""
        if not logs and demo.diagnose is not None:
            try:
                logs = demo.diagnose()
            except Exception as diag:  # noqa: BLE001
                logs = f"(could not collect logs: {diag})"
        console.print(Panel(f"[bold]{type(exc).__name__}: {exc}[/]", title=f"[red]step {demo.step_no} failed",
                            border_style="red"))
        if logs:
            console.print(Panel(logs.strip()[-6000:], title="relevant log tail", border_style="red"),
                          markup=False, highlight=False)
        demo.summary["error"] = f"step {demo.step_no}: {exc}"
    finally:
        with console.status("tearing down: delete sessions and pool, helm uninstall, stop every process"):
            problems = demo.teardown()
        if problems:
            console.print("[red]teardown problems:[/]\n" + "\n".join(problems))
        else:
            console.print("[green]✓[/] torn down: helm release uninstalled, no process left behind")
    if demo.failures:
        console.print(Panel("\n".join(demo.failures), title="[red]failed checks", border_style="red"))
    total = time.monotonic() - started
    demo.summary.update({"ok": ok and not problems and not demo.failures, "failures": demo.failures, "total_seconds": round(total, 1),
                         "teardown_problems": problems, "out": str(out)})
    (out / "summary.json").write_text(json.dumps(demo.summary, indent=2, default=str))
    console.rule(f"[bold]{'done' if demo.summary['ok'] else 'FAILED'} in {total:.0f}s[/] — summary {out / 'summary.json'}")
    return 0 if demo.summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
