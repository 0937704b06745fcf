"""Node end-to-end benchmark: prints ONE JSON object on stdout (progress on stderr).

Keys:

* ``pq_overhead_ratio_aggregate`` / ``pq_overhead_ratio_mlp``: 3 parties computing the
  engine benchmark's aggregate (mean and variance, over 3 x 10k values, not its 3 x 100k:
  see ``AGGREGATE_ROWS``; messages over the frame limit go as fragments) and MLP (30-64-32-1, batch 100) workloads over PQ
  mutual-TLS PeerLinks, divided by the same over plain TCP (TcpChannel), in the same run
  (best of 3 after a warm-up). ``parties_run_as`` says how: tasks of one process, since
  node processes speak only PQ links (there is no plain-TCP node to divide by); the
  session tests and ``sessions_per_min`` run real node processes.
* ``envelopes_accepted_per_s``: sealed input envelopes one node process accepts over
  HTTP (verify signature, open, validate, store), 1 row each.
* ``sessions_per_min``: small aggregate sessions, end to end across 3 node processes
  (plan post, owner submission, the harness dealing each party its own preprocessing,
  computation, recipient collection), run back to back.

The single-seed engine ``Dealer`` used for the overhead figures is fine here: all three
parties are tasks of this one process. Nodes never share a seed (``pqmpc_node.dealing``).

Run: ``.venv/bin/python benchmarks/node_e2e.py``
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.serialization import Encoding

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "node"))

from harness import Operator  # noqa: E402

from pqmpc_node.client import Identity, SessionClient  # noqa: E402
from pqmpc_node.crypto.pki import NodeId, NodeIdentity, PoolCA  # noqa: E402
from pqmpc_node.crypto.suites import SuiteName, get_suite  # noqa: E402
from pqmpc_node.crypto.transparency import EntryKind, LogVerifier, TransparencyLog  # noqa: E402
from pqmpc_node.mpc.channel import Channel  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.context import MPCContext  # noqa: E402
from pqmpc_node.mpc.fixedpoint import FixedPoint  # noqa: E402
from pqmpc_node.mpc.preprocessing import Dealer, DealerProvider  # noqa: E402
from pqmpc_node.mpc.programs import SessionInputs, compile_program, run_session  # noqa: E402
from pqmpc_node.mpc.randomness import AesCtrRandom  # noqa: E402
from pqmpc_node.mpc.shares import Shared  # noqa: E402
from pqmpc_node.net.counters import RefusalCounters  # noqa: E402
from pqmpc_node.net.link import STREAM_LIMIT, LinkConfig, PeerLink  # noqa: E402
from pqmpc_node.net.pq_channel import PqChannel  # noqa: E402
from pqmpc_node.net.tcp_channel import TcpChannel  # noqa: E402
from pqmpc_node.net.tls import TlsIdentity  # noqa: E402
from pqmpc_node.plan import FieldDecl  # noqa: E402

SUITE = get_suite(SuiteName.PQ_DEFAULT)
N = 3
# benchmarks/mpc_vs_mpyc.py uses 3 x 100k values; over links its range-check opening is one
# 614 MB message, past the links' 256 MiB max_message (the engine does not chunk openings
# yet), so this runs 3 x 10k: messages of ~61 MB, fragmented into 16 MiB frames.
AGGREGATE_ROWS = 3 * 10_000


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def pq_channels(host: str = "127.0.0.1") -> tuple[list[Channel], Callable[[], Awaitable[None]]]:
    ca = PoolCA.create(SUITE, name="bench", now=now() - dt.timedelta(minutes=1), lifetime=dt.timedelta(hours=1),
                       rng=os.urandom)
    log = TransparencyLog(ca)
    tls = []
    for i in range(N):
        ident = NodeIdentity.generate(SUITE, os.urandom)
        cert = ca.issue(ident.build_csr(NodeId(f"p{i}")), node_id=NodeId(f"p{i}"), dns_name=f"p{i}",
                        now=now() - dt.timedelta(minutes=1), lifetime=dt.timedelta(hours=1), rng=os.urandom)
        log.append(EntryKind.NODE_CERTIFICATE, cert.public_bytes(Encoding.DER), now=now())
        tls.append(TlsIdentity(ident, cert, ca.certificate))
    verifier = LogVerifier(ca.public_key)
    verifier.update(log.entries, log.signed_tree_head(now=now()))
    configs = [LinkConfig(tls=t, log=verifier, clock=now) for t in tls]
    links: dict[tuple[int, int], PeerLink] = {}
    servers = []
    for j in range(N):
        accepted: asyncio.Queue[PeerLink] = asyncio.Queue()

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter, j: int = j,
                          q: asyncio.Queue[PeerLink] = accepted) -> None:
            await q.put(await PeerLink.accept(r, w, config=configs[j], expected_peers={NodeId(f"p{i}") for i in range(N)},
                                              counters=RefusalCounters()))

        srv = await asyncio.start_server(on_conn, host, 0, limit=STREAM_LIMIT)
        servers.append((srv, accepted))
    for i in range(N):
        for j in range(i + 1, N):
            port = servers[j][0].sockets[0].getsockname()[1]
            links[(i, j)] = await PeerLink.connect(host, port, config=configs[i], expected_peer=NodeId(f"p{j}"),
                                                   counters=RefusalCounters())
            links[(j, i)] = await servers[j][1].get()
    channels: list[Channel] = [PqChannel(party=i, n=N, links={j: links[(i, j)] for j in range(N) if j != i})
                               for i in range(N)]

    async def close() -> None:
        for link in links.values():
            await link.close()
        for srv, _ in servers:
            srv.close()

    return channels, close


async def tcp_channels() -> tuple[list[Channel], Callable[[], Awaitable[None]]]:
    from harness import free_port

    addrs = [("127.0.0.1", free_port("127.0.0.1")) for _ in range(N)]
    chans = await asyncio.gather(*(TcpChannel.connect(i, addrs) for i in range(N)))

    async def close() -> None:
        for c in chans:
            await c.close()

    return list(chans), close


def workload(name: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray[Any, Any]],
                                 dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(7)
    if name == "aggregate":
        fields = [{"name": "amount", "min": 0, "max": 1000}]
        program = {"aggregate": [{"op": "mean", "field": "amount"}, {"op": "variance", "field": "amount"}]}
        return program, fields, {"amount": rng.uniform(0, 1000, AGGREGATE_ROWS)}, {}
    fields = [{"name": f"f{i}", "min": -5, "max": 5} for i in range(30)]
    program = {"mlp": {"modelOwner": "m", "features": [f["name"] for f in fields], "layers": [64, 32, 1]}}
    cols = {f["name"]: rng.uniform(-1, 1, 100) for f in fields}
    model = {"W0": rng.uniform(-.2, .2, (30, 64)), "b0": rng.uniform(-.2, .2, 64), "W1": rng.uniform(-.2, .2, (64, 32)),
             "b1": rng.uniform(-.2, .2, 32), "W2": rng.uniform(-.2, .2, (32, 1)), "b2": rng.uniform(-.2, .2, 1)}
    return program, fields, cols, model


async def run_parties(channels: Sequence[Channel], name: str) -> float:
    program, fields, cols, model = workload(name)
    cfg = EngineConfig(parties=N)
    domain, scheme = cfg.domain(), cfg.scheme()
    dealer = Dealer(domain, scheme, b"bench-seed-0123456789", authenticated=False)
    fx = FixedPoint(cfg.frac_bits)
    rng = AesCtrRandom.from_os()
    col_shares = {k: scheme.share(domain, fx.encode(v, domain), rng) for k, v in cols.items()}
    model_shares = {k: scheme.share(domain, fx.encode(v, domain), rng) for k, v in model.items()}
    plan = compile_program(program, fields)

    async def party(i: int) -> None:
        ctx = MPCContext(party=i, channel=channels[i], domain=domain, scheme=scheme, provider=DealerProvider(dealer, i),
                         rng=AesCtrRandom.from_os(), fixed=fx)
        inputs = SessionInputs({k: Shared(v[i], None) for k, v in col_shares.items()},
                               {k: Shared(v[i], None) for k, v in model_shares.items()})
        await run_session(ctx, plan, inputs, reveal=name == "aggregate")

    start = time.perf_counter()
    await asyncio.gather(*(party(i) for i in range(N)))
    return time.perf_counter() - start


async def overhead(name: str, reps: int = 3) -> float:
    times = {}
    for kind, make in (("pq", pq_channels), ("tcp", tcp_channels)):
        runs = []
        for _ in range(reps + 1):  # fresh channels per run (round tags restart); handshakes not timed
            chans, close = await make()
            runs.append(await run_parties(chans, name))
            await close()
        times[kind] = min(runs[1:])
        progress(f"{name} over {kind}: {times[kind]:.3f}s")
    return times["pq"] / times["tcp"]


def service_figures(workdir: Path) -> tuple[float, float]:
    op = Operator(workdir)
    try:
        nodes = op.start_nodes(3)
        op.certify(nodes)
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
    finally:
        op.stop_all()


def main() -> None:
    agg = asyncio.run(overhead("aggregate"))
    mlp = asyncio.run(overhead("mlp"))
    env_rate: float | None
    per_min: float | None
    if os.environ.get("PQMPC_BENCH_SKIP_SERVICE"):  # transport figures only
        env_rate = per_min = None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            env_rate, per_min = service_figures(Path(tmp))
    print(json.dumps({
        "pq_overhead_ratio_aggregate": round(agg, 3),
        "pq_overhead_ratio_mlp": round(mlp, 3),
        "aggregate_values": AGGREGATE_ROWS,
        "parties_run_as": "asyncio tasks of one process (node processes have no plain-TCP mode to compare with)",
        "envelopes_accepted_per_s": None if env_rate is None else round(env_rate, 1),
        "sessions_per_min": None if per_min is None else round(per_min, 1),
    }))


if __name__ == "__main__":
    main()
