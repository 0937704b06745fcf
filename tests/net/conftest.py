"""Fixtures for the net tests: a pool CA with a log, node TLS credentials, a loopback server."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pqmpc_node.crypto.pki import NodeId, NodeIdentity, PoolCA
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogVerifier, TransparencyLog
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.link import LinkConfig, LinkRefused, PeerLink, RekeyPolicy
from pqmpc_node.net.tls import TlsIdentity


def wall_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class NetPool:
    ca: PoolCA
    log: TransparencyLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = TransparencyLog(self.ca)

    def creds(self, name: str, *, start: dt.datetime | None = None, lifetime: dt.timedelta = dt.timedelta(hours=1),
              logged: bool = True, ca: PoolCA | None = None) -> TlsIdentity:
        issuer = ca or self.ca
        ident = NodeIdentity.generate(issuer.suite, os.urandom)
        cert = issuer.issue(ident.build_csr(NodeId(name)), node_id=NodeId(name), dns_name=f"{name}.pool.svc",
                            now=start or wall_now() - dt.timedelta(minutes=5), lifetime=lifetime, rng=os.urandom)
        if logged:
            self.log.append(EntryKind.NODE_CERTIFICATE, cert.public_bytes(Encoding.DER), now=wall_now())
        return TlsIdentity(ident, cert, self.ca.certificate)

    def verifier(self) -> LogVerifier:
        v = LogVerifier(self.ca.public_key)
        v.update(self.log.entries, self.log.signed_tree_head(now=wall_now()))
        return v

    def config(self, tls: TlsIdentity, **kw: Any) -> LinkConfig:
        return LinkConfig(tls=tls, log=self.verifier(), clock=wall_now, **kw)


def new_ca(cn: str = "pool-ca") -> PoolCA:
    return PoolCA.create(get_suite(SuiteName.PQ_DEFAULT), name=cn, now=wall_now() - dt.timedelta(days=1),
                         lifetime=dt.timedelta(days=10), rng=os.urandom)


@pytest.fixture(scope="session")
def netpool() -> NetPool:
    return NetPool(new_ca())


@pytest.fixture
def other_ca() -> PoolCA:
    return new_ca()


@dataclass
class Server:
    port: int
    counters: RefusalCounters
    links: "asyncio.Queue[PeerLink | LinkRefused]"
    server: asyncio.base_events.Server


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Server] = []
    accepted: list[PeerLink] = []

    async def start(config: LinkConfig, expected: set[str]) -> Server:
        counters = RefusalCounters()
        q: asyncio.Queue[PeerLink | LinkRefused] = asyncio.Queue()

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                link = await PeerLink.accept(r, w, config=config, expected_peers={NodeId(e) for e in expected},
                                             counters=counters)
                accepted.append(link)
                await q.put(link)
            except LinkRefused as exc:
                await q.put(exc)

        srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        s = Server(srv.sockets[0].getsockname()[1], counters, q, srv)
        servers.append(s)
        return s

    yield start
    for link in accepted:
        await link.close()
    for s in servers:
        s.server.close()
        await s.server.wait_closed()


__all__ = ["NetPool", "RekeyPolicy", "Server", "wall_now"]
