"""Pool PKI: issuance with proof of possession, chain verification refusals, renewal, transparency log."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings, strategies as st

from pqmpc_node.crypto import pki
from pqmpc_node.crypto.pki import NodeId, NodeIdentity
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.crypto.transparency import EntryKind, LogEntry, LogIntegrityError, LogVerifier, SignedTreeHead
from pqmpc_node.crypto.wire import WireFormatError

from typing import Any

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)  # the same instant as conftest.NOW
Pool = Any


def verify(pool: Pool, cert: x509.Certificate | bytes, expected: str = "node-a", now: dt.datetime = NOW,
           log: bool = True) -> pki.VerifiedNode:
    return pki.verify_node_certificate(cert, ca_certificate=pool.ca.certificate, suite=pool.suite, now=now,
                                       expected_node_ids={NodeId(expected)}, log=pool.verifier() if log else None)


def test_issue_and_verify(pool: Pool) -> None:
    ident, cert = pool.node("node-a")
    v = verify(pool, cert)
    assert v.node_id == "node-a" and v.dns_names == ("node-a.pool.ns.svc",)
    assert v.public_key == ident.public_key
    assert "private" not in repr(ident)


def test_pq_high_suite_uses_mldsa87(pool_factory: Any) -> None:
    p = pool_factory(SuiteName.PQ_HIGH)
    _, cert = p.node("node-a")
    assert cert.signature_algorithm_oid.dotted_string == "2.16.840.1.101.3.4.3.19"
    assert verify(p, cert).node_id == "node-a"


def test_wrong_ca_refused(pool: Pool, pool_factory: Any) -> None:
    other = pool_factory(cn="pool-ca")  # same name, different key: signature must decide
    _, cert = other.node("node-a")
    with pytest.raises(pki.WrongCAError) as e:
        verify(pool, cert, log=False)
    assert e.value.reason == "wrong_ca"


def test_expired_refused(pool: Pool) -> None:
    _, cert = pool.node("node-a", lifetime=dt.timedelta(hours=1))
    with pytest.raises(pki.ExpiredCertificateError) as e:
        verify(pool, cert, now=NOW + dt.timedelta(hours=2))
    assert e.value.reason == "expired"


def test_right_ca_wrong_identity_refused(pool: Pool) -> None:
    _, cert = pool.node("node-b")
    with pytest.raises(pki.WrongIdentityError, match="node-b"):
        verify(pool, cert, expected="node-a")


def test_not_in_log_refused(pool: Pool) -> None:
    pool.node("node-x")  # the log is not empty
    _, rogue = pool.node("node-a", logged=False)
    with pytest.raises(pki.NotInLogError) as e:
        verify(pool, rogue)
    assert e.value.reason == "not_in_log"


def test_csr_without_proof_of_possession_refused(pool: Pool) -> None:
    ident = NodeIdentity.generate(pool.suite, os.urandom)
    der = bytearray(ident.build_csr(NodeId("node-a")))
    der[-5] ^= 0x01  # corrupt the self-signature
    with pytest.raises((pki.ProofOfPossessionError, pki.MalformedCertificateError)):
        pool.ca.issue(bytes(der), node_id=NodeId("node-a"), dns_name="a", now=NOW, lifetime=dt.timedelta(hours=1), rng=os.urandom)


def test_csr_for_other_node_refused(pool: Pool) -> None:
    ident = NodeIdentity.generate(pool.suite, os.urandom)
    with pytest.raises(pki.ProofOfPossessionError, match="CN=node-a"):
        pool.ca.issue(ident.build_csr(NodeId("node-b")), node_id=NodeId("node-a"), dns_name="a", now=NOW,
                      lifetime=dt.timedelta(hours=1), rng=os.urandom)


def test_csr_with_wrong_algorithm_refused(pool: Pool) -> None:
    ident = NodeIdentity.generate(get_suite(SuiteName.PQ_HIGH), os.urandom)
    with pytest.raises(pki.WrongAlgorithmError):
        pool.ca.issue(ident.build_csr(NodeId("node-a")), node_id=NodeId("node-a"), dns_name="a", now=NOW,
                      lifetime=dt.timedelta(hours=1), rng=os.urandom)


def test_renewal_window(pool: Pool) -> None:
    _, cert = pool.node("node-a", lifetime=dt.timedelta(hours=24))
    assert not pki.needs_renewal(cert, now=NOW + dt.timedelta(hours=15), renew_before=dt.timedelta(hours=8))
    assert pki.needs_renewal(cert, now=NOW + dt.timedelta(hours=17), renew_before=dt.timedelta(hours=8))


def test_log_detects_rewrite_and_bad_signature(pool: Pool) -> None:
    pool.node("node-a")
    pool.node("node-b")
    entries = list(pool.log.entries)
    sth = pool.log.signed_tree_head(now=NOW)
    v = LogVerifier(pool.ca.public_key)
    v.update(entries, sth)
    forged = LogEntry(1, entries[1].kind, entries[1].timestamp, entries[1].prev_hash, b"rogue")
    with pytest.raises(LogIntegrityError):
        LogVerifier(pool.ca.public_key).update([entries[0], forged], sth)
    bad = SignedTreeHead(sth.size, sth.head_hash, sth.timestamp, bytes(len(sth.signature)))
    with pytest.raises(LogIntegrityError, match="signature"):
        LogVerifier(pool.ca.public_key).update(entries, bad)
    with pytest.raises(LogIntegrityError, match="shrank"):
        v.update(entries[:1], sth)
    # round trip of the wire formats
    assert [LogEntry.from_bytes(e.to_bytes()) for e in entries] == entries
    assert SignedTreeHead.from_bytes(sth.to_bytes()) == sth


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_log_entry_parser_never_crashes(data: bytes) -> None:
    try:
        e = LogEntry.from_bytes(data)
    except WireFormatError:
        return
    assert e.to_bytes() == data


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255))
def test_fuzz_certificate_parser_and_mutations(shared_pool: Pool, junk: bytes, pos: int, flip: int) -> None:
    pool = shared_pool
    if not hasattr(pool, "fuzz_cert"):
        pool.fuzz_cert = pool.node("node-a")[1].public_bytes(Encoding.DER)
    with pytest.raises(pki.CertificateError):
        verify(pool, junk, log=False)
    der = bytearray(pool.fuzz_cert)
    der[pos % len(der)] ^= flip or 1
    with pytest.raises(pki.CertificateError):
        verify(pool, bytes(der))



def test_certificate_with_bad_x509_version_is_malformed(shared_pool: Pool) -> None:
    """Regression (found by the fuzzer): cryptography raises InvalidVersion, not ValueError."""
    der = bytearray(shared_pool.node("node-a")[1].public_bytes(Encoding.DER))
    assert der[8:12] == b"\xa0\x03\x02\x01"  # [0] EXPLICIT version INTEGER
    der[12] = 3  # v4: no such X.509 version
    with pytest.raises(pki.MalformedCertificateError) as e:
        verify(shared_pool, bytes(der))
    assert e.value.reason == "malformed"
