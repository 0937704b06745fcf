"""Benchmark of the PQ trust and transport layer; prints ONE JSON object on stdout.

Run: .venv/bin/python benchmarks/crypto.py
Keys: handshakes_per_s, handshake_vs_primitives_ratio, link_mib_per_s, link_vs_tcp_ratio,
node_api (the node API's PQ-TLS handshake), envelopes_sealed_per_s, envelopes_opened_per_s, backends.

``node_api``: what a client (CLI, operator) pays to reach a node API — a GET over a fresh
PQ-TLS connection (TLS 1.3, X25519MLKEM768, server-authenticated ML-DSA-65, the client's
node-certificate and log check) through the node's TLS front to its aiohttp app, against
the same GET on a kept-alive connection; their difference is the handshake, compared
with the public-key operations it performs (``NODE_API_PRIMITIVES``), measured in the
same rounds.

What the handshake figure measures (the issue's definition): one full peer-link
handshake, both sides in this one thread — ``PeerLink.connect_stream`` and
``PeerLink.accept`` run to completion over an already connected loopback socket: TLS
1.3 with X25519MLKEM768 and ML-DSA-65 mutual authentication, both identity and
transparency-log checks, the link's tasks started. TCP connect and the link's close are
outside it (reported separately as ``handshake_with_tcp_connect_close_ms``). SSL contexts
are cached per identity, as in the node service. ``primitives`` lists the public-key
operations that handshake performs; their summed single-thread time is the ratio's
denominator. The machine may be shared, so the two are measured in interleaved rounds
(primitives, then a batch of handshakes, ``BENCH_ROUNDS`` times): both see the same
load. ``handshake_vs_primitives_ratio`` is total over total; the per-round ratios are
listed too. The same figures in process CPU time (``*_cpu_*``) are what a loaded,
shared machine distorts least: time spent descheduled is not counted in either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding

from pqmpc_node.crypto import envelopes as E
from pqmpc_node.crypto.backends import available_backends
from pqmpc_node.crypto.kemkeys import KemKeyRing, KeyRotationPolicy, KeyState, kem_public_key_from_bytes
from pqmpc_node.crypto.pki import NodeId, NodeIdentity, PoolCA
from pqmpc_node.crypto.suites import MLKemParameterSet, SignatureAlgorithm, SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogVerifier, TransparencyLog
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.crypto.pki import verify_node_certificate
from pqmpc_node.net.https import TlsFront, async_pq_transport
from pqmpc_node.net.link import LinkConfig, PeerLink
from pqmpc_node.net.tls import TlsIdentity, server_context

SUITE = get_suite(SuiteName.PQ_DEFAULT)
MIB = 1 << 20
PLAN = bytes(range(32))  # the plan digest envelopes are bound to (any 32 bytes here)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rate(fn: Callable[[], object], seconds: float = 0.5) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def op_seconds(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Wall and CPU (process) seconds per call of ``fn``."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def pool() -> tuple[TlsIdentity, TlsIdentity, LogVerifier]:
    ca = PoolCA.create(SUITE, name="bench-ca", now=now() - dt.timedelta(hours=1), lifetime=dt.timedelta(days=1), rng=os.urandom)
    log = TransparencyLog(ca)
    out = []
    for name in ("node-a", "node-b"):
        ident = NodeIdentity.generate(SUITE, os.urandom)
        cert = ca.issue(ident.build_csr(NodeId(name)), node_id=NodeId(name), dns_name=name, now=now() - dt.timedelta(minutes=1),
                        lifetime=dt.timedelta(hours=2), rng=os.urandom)
        log.append(EntryKind.NODE_CERTIFICATE, cert.public_bytes(Encoding.DER), now=now())
        out.append(TlsIdentity(ident, cert, ca.certificate))
    v = LogVerifier(ca.public_key)
    v.update(log.entries, log.signed_tree_head(now=now()))
    return out[0], out[1], v


async def handshake_rounds(cfg_a: LinkConfig, cfg_b: LinkConfig, rounds: int, per_round: int) -> dict[str, Any]:
    """Interleaved rounds: primitives (summed), then ``per_round`` handshakes over pre-connected sockets."""
    streams: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await streams.put((r, w))

    srv = await asyncio.start_server(on, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]

    cpu: list[float] = []

    async def one() -> float:
        cr, cw = await asyncio.open_connection("127.0.0.1", port)
        sr, sw = await streams.get()
        t0, c0 = time.perf_counter(), time.process_time()
        c, s = await asyncio.gather(
            PeerLink.connect_stream(cr, cw, config=cfg_b, expected_peer=NodeId("node-a"), counters=RefusalCounters()),
            PeerLink.accept(sr, sw, config=cfg_a, expected_peers={NodeId("node-b")}, counters=RefusalCounters()),
        )
        elapsed = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        await c.close()
        await s.close()
        return elapsed

    for _ in range(3):  # warm-up: contexts cached, code paths hot
        await one()
    cpu.clear()
    times: list[float] = []
    prims: list[float] = []
    prims_cpu: list[float] = []
    round_ratios: list[float] = []
    per_op: dict[str, list[float]] = {}
    for _ in range(rounds):
        prim, per, prim_cpu = primitive_seconds(seconds=0.1)
        batch = [await one() for _ in range(per_round)]
        prims.append(prim)
        prims_cpu.append(prim_cpu)
        times.extend(batch)
        round_ratios.append(statistics.fmean(batch) / prim)
        for op, t in per.items():
            per_op.setdefault(op, []).append(t)
    cpu_times = cpu[:]
    n_tcp = max(per_round, 5)
    t0 = time.perf_counter()
    for _ in range(n_tcp):
        await one()
    with_tcp = (time.perf_counter() - t0) / n_tcp
    srv.close()
    await srv.wait_closed()
    return {"times": times, "primitives": prims, "round_ratios": round_ratios, "with_tcp": with_tcp,
            "cpu_times": cpu_times, "primitives_cpu": prims_cpu,
            "per_op": {op: statistics.fmean(v) for op, v in per_op.items()}}


async def links(a: TlsIdentity, b: TlsIdentity, v: LogVerifier, rounds: int, per_round: int, messages: int) -> dict[str, Any]:
    accepted: asyncio.Queue[PeerLink] = asyncio.Queue()
    cfg_a = LinkConfig(tls=a, log=v, clock=now)
    cfg_b = LinkConfig(tls=b, log=v, clock=now)
    hs = await handshake_rounds(cfg_a, cfg_b, rounds, per_round)

    async def on(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put(await PeerLink.accept(r, w, config=cfg_a, expected_peers={NodeId("node-b")}, counters=RefusalCounters()))

    srv = await asyncio.start_server(on, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = await PeerLink.connect("127.0.0.1", port, config=cfg_b, expected_peer=NodeId("node-a"), counters=RefusalCounters())
    s = await accepted.get()
    payload = os.urandom(MIB)

    async def produce() -> None:
        for i in range(messages):
            await c.send(i, payload)

    t0 = time.perf_counter()
    task = asyncio.create_task(produce())
    for i in range(messages):
        await s.recv(i)
    await task
    link_s = time.perf_counter() - t0
    await c.close()
    await s.close()
    srv.close()
    await srv.wait_closed()

    # plain loopback TCP, same framing sizes
    done = asyncio.Event()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(messages * MIB)
        done.set()
        w.close()

    tsrv = await asyncio.start_server(sink, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", tsrv.sockets[0].getsockname()[1])
    t0 = time.perf_counter()
    for _ in range(messages):
        w.write(payload)
        await w.drain()
    await done.wait()
    tcp_s = time.perf_counter() - t0
    w.close()
    tsrv.close()
    await tsrv.wait_closed()
    return {"handshakes": hs, "link_mib_per_s": messages / link_s, "tcp_mib_per_s": messages / tcp_s}


# The public-key operations of one full mutual peer-link handshake (both sides).
HANDSHAKE_PRIMITIVES = {
    "x25519_keygen": (2, "client key share; server key share"),
    "x25519_exchange": (2, "shared secret on each side"),
    "ml_kem_768_keygen": (1, "client key share (X25519MLKEM768)"),
    "ml_kem_768_encaps": (1, "server"),
    "ml_kem_768_decaps": (1, "client"),
    "ml_dsa_65_sign": (2, "CertificateVerify, each side"),
    "ml_dsa_65_verify": (6, "per side: peer CertificateVerify, CA signature on the peer certificate (OpenSSL chain "
                            "check), CA signature again in verify_node_certificate (identity + log check)"),
}


# The public-key operations of one node-API handshake (server-authenticated; both sides).
NODE_API_PRIMITIVES = {
    "x25519_keygen": (2, "client key share; server key share"),
    "x25519_exchange": (2, "shared secret on each side"),
    "ml_kem_768_keygen": (1, "client key share (X25519MLKEM768)"),
    "ml_kem_768_encaps": (1, "server"),
    "ml_kem_768_decaps": (1, "client"),
    "ml_dsa_65_sign": (1, "server CertificateVerify"),
    "ml_dsa_65_verify": (3, "client: CertificateVerify, CA signature (OpenSSL chain), CA signature again in "
                            "verify_node_certificate (identity + log)"),
}


async def node_api(a: TlsIdentity, v: LogVerifier, rounds: int, per_round: int) -> dict[str, Any]:
    """Fresh-connection vs kept-alive GETs through the node's TLS front, interleaved with the primitives."""
    app = web.Application()

    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"nodeId": "node-a"})

    app.router.add_get("/v1/keys", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = os.path.join(tempfile.mkdtemp(prefix="pqmpc-bench-"), "api.sock")
    await web.UnixSite(runner, sock).start()
    ctx = server_context(a)
    front = TlsFront(lambda _sni: ctx, sock)
    await front.start("127.0.0.1", 0)
    url = f"https://127.0.0.1:{front.port}/v1/keys"

    def check(cert: Any, _host: str) -> None:
        verify_node_certificate(cert, ca_certificate=a.ca_certificate, suite=SUITE, now=now(), expected_node_ids=None,
                                log=v)

    fresh: list[float] = []
    kept: list[float] = []
    prims: list[float] = []
    per_op: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(transport=async_pq_transport(a.ca_certificate, SUITE, verify_peer=check)) as c:
            await c.get(url)
            for _ in range(rounds):
                wall, per_op, _cpu = primitive_seconds(0.1, NODE_API_PRIMITIVES)
                prims.append(wall)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r = await c.get(url, headers={"Connection": "close"})  # the next GET needs a new handshake
                    fresh.append(time.perf_counter() - t0)
                    r.raise_for_status()
                await c.get(url)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    (await c.get(url)).raise_for_status()
                    kept.append(time.perf_counter() - t0)
    finally:
        await front.close()
        await runner.cleanup()
    handshake = statistics.median(fresh) - statistics.median(kept)
    primitives = statistics.fmean(prims)
    return {
        "get_fresh_connection_median_ms": round(statistics.median(fresh) * 1000, 3),
        "get_kept_alive_median_ms": round(statistics.median(kept) * 1000, 3),
        "handshake_ms": round(handshake * 1000, 3),
        "handshakes_per_s": round(1 / statistics.median(fresh), 1),
        "primitives_ms": round(primitives * 1000, 3),
        "primitives": {op: {"count": n, "what": what, "each_ms": round(per_op[op] * 1000, 4)}
                       for op, (n, what) in NODE_API_PRIMITIVES.items()},
        "handshake_vs_primitives_ratio": round(handshake / primitives, 2),
        "measured": len(fresh),
    }


def primitive_seconds(seconds: float = 0.5, ops: dict[str, tuple[int, str]] | None = None) -> tuple[float, dict[str, float], float]:
    """Summed single-thread wall time of HANDSHAKE_PRIMITIVES (pyca backend), each op's wall time, summed CPU time."""
    b = available_backends()[0][0]
    pk, sk = b.kem_keypair(MLKemParameterSet.ML_KEM_768)
    _, ct = b.kem_encapsulate(MLKemParameterSet.ML_KEM_768, pk)
    vk, signer = b.sign_keypair(SignatureAlgorithm.ML_DSA_65)
    sig = b.sign(signer, b"m" * 64, b"")
    xa, xb = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate().public_key()
    both = {
        "ml_kem_768_keygen": op_seconds(lambda: b.kem_keypair(MLKemParameterSet.ML_KEM_768), seconds),
        "ml_kem_768_encaps": op_seconds(lambda: b.kem_encapsulate(MLKemParameterSet.ML_KEM_768, pk), seconds),
        "ml_kem_768_decaps": op_seconds(lambda: b.kem_decapsulate(sk, ct), seconds),
        "x25519_keygen": op_seconds(x25519.X25519PrivateKey.generate, seconds),
        "x25519_exchange": op_seconds(lambda: xa.exchange(xb), seconds),
        "ml_dsa_65_sign": op_seconds(lambda: b.sign(signer, b"m" * 64, b""), 2 * seconds),  # rejection sampling: noisy
        "ml_dsa_65_verify": op_seconds(lambda: b.verify(SignatureAlgorithm.ML_DSA_65, vk, b"m" * 64, sig, b""), seconds),
    }
    per = {op: w for op, (w, _) in both.items()}
    counted = HANDSHAKE_PRIMITIVES if ops is None else ops
    wall = sum(n * both[op][0] for op, (n, _) in counted.items())
    cpu = sum(n * both[op][1] for op, (n, _) in counted.items())
    return wall, per, cpu


def envelope_rates() -> tuple[float, float]:
    ident = NodeIdentity.generate(SUITE, os.urandom)
    ring = KemKeyRing(node_id=NodeId("node-a"), identity=ident, rng=os.urandom,
                      policy=KeyRotationPolicy(dt.timedelta(hours=24), dt.timedelta(hours=8), dt.timedelta(hours=1)))
    t = now()
    ring.step(t)
    kc = ring.certificate(KeyState.CURRENT)
    assert kc is not None
    pk = kem_public_key_from_bytes(SUITE.envelope_kem, kc.public_key)
    owner = SUITE.signature.generate(os.urandom(32))
    fp = E.key_fingerprint(owner.public_key())
    counter = iter(range(10**9))

    def header() -> E.EnvelopeHeader:
        return E.EnvelopeHeader(SUITE.name, "s", "node-a", 0, f"in-{next(counter)}", kc.epoch, "bank-a", fp,
                                PLAN, 1)

    def seal() -> bytes:
        return E.seal_envelope(b"x" * 1024, suite=SUITE, header=header(), recipient_key=pk, sender_key=owner)

    sealed_rate = rate(seal)
    batch = [seal() for _ in range(200)]
    guard = E.ReplayGuard()
    it = iter(batch)
    t0 = time.perf_counter()
    n = 0
    for env in it:
        E.open_envelope(env, suite=SUITE, session_id="s", plan=(PLAN, 1), node_id="node-a", party_index=0, senders={"bank-a": owner.public_key()},
                        keys=ring, replay_guard=guard, now=t)
        n += 1
    return sealed_rate, n / (time.perf_counter() - t0)


def backend_rates() -> dict[str, Any]:
    found, missing = available_backends()
    out: dict[str, Any] = {}
    for b in found:
        pk, sk = b.kem_keypair(MLKemParameterSet.ML_KEM_768)
        _, ct = b.kem_encapsulate(MLKemParameterSet.ML_KEM_768, pk)
        vk, signer = b.sign_keypair(SignatureAlgorithm.ML_DSA_65)
        sig = b.sign(signer, b"msg", b"")
        out[b.name] = {
            "ml_kem_768_keygen_per_s": round(rate(lambda: b.kem_keypair(MLKemParameterSet.ML_KEM_768)), 1),
            "ml_kem_768_encaps_per_s": round(rate(lambda: b.kem_encapsulate(MLKemParameterSet.ML_KEM_768, pk)), 1),
            "ml_kem_768_decaps_per_s": round(rate(lambda: b.kem_decapsulate(sk, ct)), 1),
            "ml_dsa_65_sign_per_s": round(rate(lambda: b.sign(signer, b"msg", b"")), 1),
            "ml_dsa_65_verify_per_s": round(rate(lambda: b.verify(SignatureAlgorithm.ML_DSA_65, vk, b"msg", sig, b"")), 1),
        }
    for name, why in missing.items():
        out[name] = {"available": False, "reason": why}
    return out


def main() -> None:
    a, b, v = pool()
    print("peer links and primitives ...", file=sys.stderr)
    net = asyncio.run(links(a, b, v, rounds=int(os.environ.get("BENCH_ROUNDS", "10")),
                            per_round=int(os.environ.get("BENCH_HANDSHAKES_PER_ROUND", "20")),
                            messages=int(os.environ.get("BENCH_MESSAGES", "128"))))
    h = net["handshakes"]
    times, prims = h["times"], h["primitives"]
    hs, prim = statistics.fmean(times), statistics.fmean(prims)
    print("node API handshakes ...", file=sys.stderr)
    api = asyncio.run(node_api(a, v, rounds=int(os.environ.get("BENCH_ROUNDS", "10")),
                               per_round=int(os.environ.get("BENCH_HANDSHAKES_PER_ROUND", "20"))))
    print("envelopes ...", file=sys.stderr)
    sealed, opened = envelope_rates()
    print("backends ...", file=sys.stderr)
    result = {
        "suite": SUITE.name.value,
        "handshakes_per_s": round(1 / hs, 1),
        "handshake_ms": round(hs * 1000, 3),
        "handshake_median_ms": round(statistics.median(times) * 1000, 3),
        "handshakes_measured": len(times),
        "handshake_with_tcp_connect_close_ms": round(h["with_tcp"] * 1000, 3),
        "primitives_ms": round(prim * 1000, 3),
        "primitives": {op: {"count": n, "what": what, "each_ms": round(h["per_op"][op] * 1000, 4)}
                       for op, (n, what) in HANDSHAKE_PRIMITIVES.items()},
        "handshake_vs_primitives_ratio": round(hs / prim, 2),
        "handshake_vs_primitives_round_ratios": [round(r, 2) for r in h["round_ratios"]],
        "handshake_vs_primitives_aim": 1.5,
        "handshake_cpu_ms": round(statistics.fmean(h["cpu_times"]) * 1000, 3),
        "primitives_cpu_ms": round(statistics.fmean(h["primitives_cpu"]) * 1000, 3),
        "handshake_vs_primitives_cpu_ratio": round(statistics.fmean(h["cpu_times"]) / statistics.fmean(h["primitives_cpu"]), 2),
        "link_mib_per_s": round(net["link_mib_per_s"], 1),
        "tcp_mib_per_s": round(net["tcp_mib_per_s"], 1),
        "link_vs_tcp_ratio": round(net["link_mib_per_s"] / net["tcp_mib_per_s"], 3),
        "node_api": api,
        "envelopes_sealed_per_s": round(sealed, 1),
        "envelopes_opened_per_s": round(opened, 1),
        "envelope_plaintext_bytes": 1024,
        "backends": backend_rates(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
