"""Fixtures for the crypto tests: a pool CA, its transparency log and certified nodes."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pqmpc_node.crypto.kemkeys import KemKeyRing, KeyRotationPolicy
from pqmpc_node.crypto.pki import NodeId, NodeIdentity, PoolCA
from pqmpc_node.crypto.suites import Suite, SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogVerifier, TransparencyLog
from cryptography import x509

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@dataclass
class Pool:
    suite: Suite
    ca: PoolCA
    log: TransparencyLog

    def node(self, name: str, *, now: dt.datetime = NOW, lifetime: dt.timedelta = dt.timedelta(hours=24),
             logged: bool = True) -> tuple[NodeIdentity, x509.Certificate]:
        ident = NodeIdentity.generate(self.suite, os.urandom)
        cert = self.ca.issue(ident.build_csr(NodeId(name)), node_id=NodeId(name), dns_name=f"{name}.pool.ns.svc",
                             now=now, lifetime=lifetime, rng=os.urandom)
        if logged:
            from cryptography.hazmat.primitives.serialization import Encoding
            self.log.append(EntryKind.NODE_CERTIFICATE, cert.public_bytes(Encoding.DER), now=now)
        return ident, cert

    def verifier(self, now: dt.datetime = NOW) -> LogVerifier:
        v = LogVerifier(self.ca.public_key)
        v.update(self.log.entries, self.log.signed_tree_head(now=now))
        return v


def make_pool(name: SuiteName = SuiteName.PQ_DEFAULT, cn: str = "pool-ca") -> Pool:
    suite = get_suite(name)
    ca = PoolCA.create(suite, name=cn, now=NOW - dt.timedelta(days=1), lifetime=dt.timedelta(days=30), rng=os.urandom)
    return Pool(suite, ca, TransparencyLog(ca))


@pytest.fixture
def pool() -> Pool:
    return make_pool()


@pytest.fixture(scope="module")
def shared_pool() -> Pool:
    """One pool per module, for hypothesis tests (function fixtures reset per example)."""
    return make_pool()


@pytest.fixture
def pool_factory() -> Callable[..., Pool]:
    return make_pool


@pytest.fixture
def ring_factory() -> Callable[[Pool, str, NodeIdentity], KemKeyRing]:
    return make_ring


@pytest.fixture
def now() -> dt.datetime:
    return NOW


POLICY = KeyRotationPolicy(duration=dt.timedelta(hours=24), renew_before=dt.timedelta(hours=8),
                           grace_period=dt.timedelta(hours=1))


def make_ring(pool: Pool, name: str, ident: NodeIdentity) -> KemKeyRing:
    return KemKeyRing(node_id=NodeId(name), identity=ident, policy=POLICY, rng=os.urandom)
