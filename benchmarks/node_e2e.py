"""Node end-to-end benchmark: prints ONE JSON object on stdout (progress on stderr).

Keys:

* ``pq_overhead_ratio_aggregate`` / ``pq_overhead_ratio_mlp``: 3 REAL node processes
  (``python -m pqmpc_node``, started and certified by the test harness
  ``tests/node/harness.py``, which plays the operator and the dealer) computing the engine
  benchmark's workloads (``benchmarks/mpc_vs_mpyc.py``): aggregate = mean and variance over
  3 owners x 100k fixed-point values (with the plan's range check on every input), MLP =
  30-64-32-1 at batch 100 with the model owner's parameters. Time over PQ mutual-TLS peer
  links divided by the time over plain TCP, measured in the same run: two trios of nodes
  run side by side and the repeats alternate between them; each figure is the median of
  ``REPEATS`` sessions after one warm-up session per workload and mode.
* ``envelopes_accepted_per_s``: sealed input envelopes one node process accepts over
  HTTP (verify signature, open, validate, store), 1 row each.
* ``sessions_per_min``: small aggregate sessions, end to end across 3 node processes
  (plan post, owner submission, the harness dealing each party its own preprocessing,
  computation, recipient collection), run back to back.

What is timed. Per session: the owners' inputs are sealed and posted, the harness deals
the preprocessing (``deal_s``, not timed) and posts each party its material at once; the
clock starts when every party holds everything (inputs and material: the last
preprocessing POST answered; a node starts computing on its answer) and stops when every
party reports ``Succeeded`` (status polled every 10 ms). That covers the peer mesh (the
handshakes of the session's links), the computation, the closing barrier and the sealing
of outputs; node start-up and certification are outside.

The plain-TCP trio runs ``benchmarks/_plain_tcp_node.py``: a benchmark-only wrapper that
monkeypatches the node's peer-link dial and accept to plain, unauthenticated TCP — a
measuring stick, not a product mode. The PQ trio runs ``benchmarks/_node_main.py``, which
is ``python -m pqmpc_node`` (with ``PQMPC_BENCH_PROFILE=<dir>``, the PQ trio's party 0 runs
under cProfile and writes ``<dir>/pq-node0.prof``; the plain trio's to ``tcp-node0.prof``).

Run: ``.venv/bin/python benchmarks/node_e2e.py`` (``PQMPC_BENCH_AGGREGATE_ROWS``, default
15000 per owner; ``PQMPC_BENCH_REPEATS``, default 3;
``PQMPC_BENCH_SKIP_SERVICE=1`` skips the last two figures).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests" / "node"))

from harness import NodeProc, Operator  # noqa: E402

from pqmpc_node.client import Identity, SessionClient  # noqa: E402
from pqmpc_node.mpc.context import MAX_MESSAGE_BYTES  # noqa: E402
from pqmpc_node.plan import FieldDecl, SessionPlan  # noqa: E402

# Per owner, 3 owners. The engine benchmark uses 100k; through the node service that needs
# a dealt-preprocessing upload of more than 256 MiB for party 0 and ~15 GiB of memory
# here, so the default is 15k (set PQMPC_BENCH_AGGREGATE_ROWS=100000 on a larger machine).
AGGREGATE_ROWS = int(os.environ.get("PQMPC_BENCH_AGGREGATE_ROWS", "15000"))
MLP_BATCH = 100
MLP_LAYERS = (30, 64, 32, 1)
REPEATS = int(os.environ.get("PQMPC_BENCH_REPEATS", "3"))
NODE_ENV = {"PQMPC_ROUND_TIMEOUT": "300", "PQMPC_MESH_TIMEOUT": "60"}
MODES = {
    "pq": [sys.executable, str(BENCH / "_node_main.py")],
    "tcp": [sys.executable, str(BENCH / "_plain_tcp_node.py")],
}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Workload:
    """One of the engine benchmark's workloads as a node session: plan, owners and their inputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        rng = np.random.default_rng(7)
        self.auditor = Identity.generate("auditor")
        self.model_owner: Identity | None = None
        self.model: dict[str, Any] | None = None
        if name == "aggregate":
            self.fields = [FieldDecl("amount", 0, 1000)]
            self.program: dict[str, Any] = {
                "aggregate": [{"op": "mean", "field": "amount"}, {"op": "variance", "field": "amount"}]}
            self.allow = ["mean(amount)", "variance(amount)"]
            self.owners = [Identity.generate(f"bank-{i}") for i in range(3)]
            self.columns = [{"amount": [f"{v:.3f}" for v in rng.uniform(0, 1000, AGGREGATE_ROWS)]} for _ in self.owners]
            return
        d_in, *hidden = MLP_LAYERS
        self.fields = [FieldDecl(f"f{i}", -5, 5) for i in range(d_in)]
        self.program = {"mlp": {"modelOwner": "insurer", "features": [f.name for f in self.fields],
                                "layers": list(hidden)}}
        self.allow = ["score"]
        self.owners = [Identity.generate("bank-0")]
        self.columns = [{f.name: [f"{v:.4f}" for v in rng.uniform(-1, 1, MLP_BATCH)] for f in self.fields}]
        self.model_owner = Identity.generate("insurer")
        dims = list(MLP_LAYERS)
        self.model = {}
        for k in range(len(dims) - 1):
            self.model[f"W{k}"] = rng.uniform(-.2, .2, (dims[k], dims[k + 1])).round(4).tolist()
            self.model[f"b{k}"] = rng.uniform(-.2, .2, dims[k + 1]).round(4).tolist()


def wait_all_inputs(op: Operator, nodes: list[NodeProc], sid: str, timeout: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [op.http.get(f"{n.url}/v1/sessions/{sid}").json() for n in nodes]
        if all(s.get("awaitingPreprocessing") for s in states):
            return dict(states[0]["inputRows"])
        time.sleep(0.05)
    raise RuntimeError(f"session {sid}: inputs not in after {timeout}s: {states}")


def post_material_at_once(op: Operator, plan: SessionPlan, bodies: Mapping[str, bytes]) -> None:
    """Each party's preprocessing POST on its own thread, so all start computing together."""
    codes: dict[str, int] = {}

    def post(node: NodeProc) -> None:
        r = op.http.post(f"{node.url}/v1/sessions/{plan.session_id}/preprocessing", content=bodies[node.node_id],
                         headers={"Content-Type": "application/octet-stream"}, timeout=120.0)
        codes[node.node_id] = r.status_code

    threads = [threading.Thread(target=post, args=(op.node_of(p.node_id),)) for p in plan.parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(c not in (200, 202) for c in codes.values()):
        raise RuntimeError(f"preprocessing refused: {codes}")


def run_session(op: Operator, nodes: list[NodeProc], w: Workload, sid: str) -> dict[str, float]:
    """One session of ``w``; returns the timed figure and the untimed phases (seconds)."""
    plan = op.plan(sid, nodes, program=w.program, owners=w.owners, fields=w.fields, recipients={w.auditor: w.allow},
                   model_owner=w.model_owner, lifetime_s=1800,
                   max_rows_per_owner=max(len(next(iter(c.values()))) for c in w.columns))
    op.post_plan(plan, nodes, dealer=False)
    t_in = time.perf_counter()
    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                       plan_signer=op.signer.public_key()) as c:
        for owner, cols in zip(w.owners, w.columns, strict=True):
            c.submit_rows(owner, cols)
        if w.model_owner is not None and w.model is not None:
            c.submit_model(w.model_owner, w.model)
        rows = wait_all_inputs(op, nodes, sid)
        t_deal = time.perf_counter()
        dealt = op.deal(plan, rows)
        t_post = time.perf_counter()
        post_material_at_once(op, plan, dealt.bodies)
        t0 = time.perf_counter()
        pending = set(range(len(nodes)))
        while pending:
            for i in sorted(pending):
                st = op.http.get(f"{nodes[i].url}/v1/sessions/{sid}").json()
                if st["phase"] == "Succeeded":
                    pending.discard(i)
                elif st["phase"] == "Failed":
                    raise RuntimeError(f"session {sid} failed at {nodes[i].node_id}: {st['reason']}: {st['message']}")
            if pending:
                time.sleep(0.01)
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"session {sid} still running after 900s")
        t1 = time.perf_counter()
        out = c.collect_result(w.auditor, wait_s=60)["outputs"]
    if not all(k in out for k in w.allow):
        raise RuntimeError(f"session {sid}: result lacks {w.allow}: {sorted(out)}")
    return {"session_s": t1 - t0, "inputs_s": t_deal - t_in, "deal_s": t_post - t_deal, "post_material_s": t0 - t_post}


def service_figures(op: Operator, nodes: list[NodeProc]) -> tuple[float, float]:
    """Envelopes one node accepts per second, and small sessions per minute (PQ nodes)."""
    if True:
        fields = [FieldDecl("amount", 0, 1000)]
        owners = [Identity.generate(f"owner-{i}") for i in range(200)]
        auditor = Identity.generate("auditor")
        plan = op.plan("env-bench", nodes, program={"aggregate": [{"op": "sum", "field": "amount"}]}, owners=owners,
                       fields=fields, recipients={auditor: ["sum(amount)"]})
        op.post_plan(plan, nodes[:1])
        with SessionClient(node_url=nodes[0].url, session_id="env-bench", ca_certificate=op.ca.certificate,
                           plan_signer=op.signer.public_key()) as c:
            party = c.parties()[0]
            envs = []
            for o in owners:
                sealed = c.seal_rows(o, {"amount": ["1"]})
                envs.append(next(e for p, e in sealed if p.plan.index == 0))
            start = time.perf_counter()
            for e in envs:
                assert party.client.post_input("env-bench", e).status_code == 202
            env_rate = len(envs) / (time.perf_counter() - start)
        progress(f"envelopes accepted: {env_rate:.1f}/s")
        owner = Identity.generate("bank-a")
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 20 or count < 3:
            sid = f"s-{count}"
            plan = op.plan(sid, nodes, program={"aggregate": [{"op": "mean", "field": "amount"}]}, owners=[owner],
                           fields=fields, recipients={auditor: ["mean(amount)"]})
            op.post_plan(plan, nodes)
            with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                               plan_signer=op.signer.public_key()) as c:
                c.submit_rows(owner, {"amount": ["1", "2", "3"]})
                c.collect_result(auditor, wait_s=30)
            count += 1
        per_min = count / (time.perf_counter() - start) * 60
        progress(f"sessions: {per_min:.1f}/min")
        return env_rate, per_min


def main() -> None:
    profile_dir = os.environ.get("PQMPC_BENCH_PROFILE")
    workloads = [Workload("aggregate"), Workload("mlp")]
    times: dict[str, dict[str, list[float]]] = {w.name: {m: [] for m in MODES} for w in workloads}
    phases: dict[str, dict[str, list[dict[str, float]]]] = {w.name: {m: [] for m in MODES} for w in workloads}
    env_rate: float | None = None
    per_min: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        op = Operator(Path(tmp))
        try:
            trios: dict[str, list[NodeProc]] = {}
            for mode, cmd in MODES.items():
                per_node = {0: {"PQMPC_BENCH_PROFILE": str(Path(profile_dir) / f"{mode}-node0.prof")}} if profile_dir else None
                trios[mode] = op.start_nodes(3, command=cmd, extra_env=NODE_ENV, per_node_env=per_node)
            op.certify([n for trio in trios.values() for n in trio])
            count = 0
            for w in workloads:
                for rep in range(REPEATS + 1):  # the first round is a warm-up
                    order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
                    for mode in order:
                        count += 1
                        figures = run_session(op, trios[mode], w, f"{w.name}-{mode}-{rep}")
                        progress(f"{w.name} over {mode} #{rep}{' (warm-up)' if rep == 0 else ''}: "
                                 + ", ".join(f"{k} {v:.3f}s" for k, v in figures.items()))
                        if rep:
                            times[w.name][mode].append(figures["session_s"])
                            phases[w.name][mode].append(figures)
            if not os.environ.get("PQMPC_BENCH_SKIP_SERVICE"):
                env_rate, per_min = service_figures(op, trios["pq"])
        finally:
            op.stop_all()
    med = {w: {m: statistics.median(v) for m, v in by.items()} for w, by in times.items()}
    print(json.dumps({
        "pq_overhead_ratio_aggregate": round(med["aggregate"]["pq"] / med["aggregate"]["tcp"], 3),
        "pq_overhead_ratio_mlp": round(med["mlp"]["pq"] / med["mlp"]["tcp"], 3),
        "envelopes_accepted_per_s": None if env_rate is None else round(env_rate, 1),
        "sessions_per_min": None if per_min is None else round(per_min, 1),
        "session_s_median": {w: {m: round(v, 3) for m, v in by.items()} for w, by in med.items()},
        "session_s_raw": {w: {m: [round(x, 3) for x in v] for m, v in by.items()} for w, by in times.items()},
        "untimed_s_median": {w: {m: {k: round(statistics.median(f[k] for f in v), 3) for k in ("inputs_s", "deal_s",
                                                                                              "post_material_s")}
                                 for m, v in by.items()} for w, by in phases.items()},
        "setup": {
            "parties": "3 node processes (python -m pqmpc_node) per mode on 127.0.0.x loopback, operator and dealer "
                       "played by tests/node/harness.py; both trios up at once, repeats alternate between modes",
            "pq": "PQ mutual-TLS PeerLinks (TLS 1.3, X25519MLKEM768, ML-DSA certificates), the product's links",
            "tcp": "benchmarks/_plain_tcp_node.py: same node, peer links monkeypatched to plain unauthenticated TCP "
                   "(a benchmark-only measuring stick)",
            "aggregate": f"mean and variance over 3 owners x {AGGREGATE_ROWS} values, range [0, 1000] checked",
            "mlp": f"MLP {'-'.join(map(str, MLP_LAYERS))} (ReLU), batch {MLP_BATCH}, model owner's parameters",
            "timed": "from the last preprocessing POST answered (every party holds inputs and material) to Succeeded "
                     "at every party; median of the repeats, after one warm-up per workload and mode",
            "repeats": REPEATS,
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "sharing": "additive, semi-honest",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }))


if __name__ == "__main__":
    main()
