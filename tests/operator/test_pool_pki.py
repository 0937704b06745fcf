"""The operator's pool PKI: CA and signer storage, log replay, node certification checks."""

from __future__ import annotations

import base64
import datetime as dt
import os

import pytest

from pqmpc_node.crypto.kemkeys import KemKeyCertificate, KemKeyPair
from pqmpc_node.crypto.pki import NodeId, NodeIdentity, ProofOfPossessionError, certificate_fingerprint, parse_certificate
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.crypto.transparency import EntryKind
from pqmpc_operator import pool_pki

SUITE = get_suite("pq-default")
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def kem_cert(identity: NodeIdentity, node_id: str, epoch: int = 1) -> str:
    pair = KemKeyPair.from_seed(SUITE.envelope_kem, os.urandom(32))
    cert = KemKeyCertificate.issue(identity, node_id=NodeId(node_id), epoch=epoch, keypair=pair,
                                   not_before=NOW, not_after=NOW + dt.timedelta(hours=24))
    return base64.b64encode(cert.to_bytes()).decode()


def csr_doc(node_id: str, dns: str, identity: NodeIdentity | None = None, kem_for: str | None = None) -> dict[str, object]:
    identity = identity or NodeIdentity.generate(SUITE, os.urandom)
    return {"nodeId": node_id, "dnsName": dns, "csr": base64.b64encode(identity.build_csr(NodeId(node_id))).decode(),
            "kemKeyCertificates": [kem_cert(identity, kem_for or node_id)], "certified": False}


def test_secret_round_trip_keeps_keys_and_log() -> None:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    issued = pool_pki.certify_node(pki, csr_doc("banks-a-0", "banks-a-0.banks-nodes.ns.svc"), pod_name="banks-a-0",
                                   expected_dns_name="banks-a-0.banks-nodes.ns.svc", now=NOW,
                                   lifetime=dt.timedelta(hours=24), rng=os.urandom)
    data = pool_pki.pki_secret_data(pki)
    entries = pool_pki.keylog_data(pki.log)["entries"].splitlines()
    again = pool_pki.pki_from_secret(data, SUITE, entries)
    assert again.ca.public_key == pki.ca.public_key
    assert again.plan_signer.public_key() == pki.plan_signer.public_key()
    assert again.log.head_hash == pki.log.head_hash and len(again.log.entries) == 2
    assert [e.kind for e in again.log.entries] == [EntryKind.KEM_KEY_CERTIFICATE, EntryKind.NODE_CERTIFICATE]
    cert = parse_certificate(issued.certificate_der)
    assert certificate_fingerprint(cert) == issued.fingerprint
    assert abs((issued.not_after - NOW) - dt.timedelta(hours=24)) <= dt.timedelta(seconds=1)  # counts from now
    # public bundle carries no key material
    bundle = pool_pki.trust_bundle_data(pki)
    assert set(bundle) == {"ca.pem", "plan-signer.pub"}
    assert "PRIVATE" not in "".join(bundle.values())
    assert "seed" not in repr(pki) and data["ca.seed"] not in repr(pki)


def test_tampered_log_is_detected() -> None:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    for i in range(3):
        pki.log.append(EntryKind.KEM_KEY_CERTIFICATE, b"k%d" % i, now=NOW)
    entries = pool_pki.keylog_data(pki.log)["entries"].splitlines()
    with pytest.raises(ValueError, match="does not chain|altered"):
        pool_pki.restore_log(pki.ca, [entries[0], entries[2]])


def test_damaged_secret_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="delete it to make a new CA"):
        pool_pki.pki_from_secret({"ca.seed": "!!"}, SUITE)


@pytest.mark.parametrize(
    ("doc_node", "doc_dns", "message"),
    [
        ("banks-a-1", "banks-a-0.banks-nodes.ns.svc", "says it is 'banks-a-1'"),
        ("banks-a-0", "evil.example.com", "asks for DNS name"),
    ],
)
def test_csr_must_match_the_pod(doc_node: str, doc_dns: str, message: str) -> None:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    with pytest.raises(pool_pki.CertificationRefused, match=message):
        pool_pki.certify_node(pki, csr_doc(doc_node, doc_dns), pod_name="banks-a-0",
                              expected_dns_name="banks-a-0.banks-nodes.ns.svc", now=NOW,
                              lifetime=dt.timedelta(hours=1), rng=os.urandom)
    assert pki.log.entries == ()  # nothing logged for a refused CSR


def test_csr_without_proof_of_possession_is_refused() -> None:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    doc = csr_doc("banks-a-0", "d")
    raw = bytearray(base64.b64decode(str(doc["csr"])))
    raw[-5] ^= 0xFF  # break the CSR's self-signature
    doc["csr"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises((ProofOfPossessionError, Exception)) as err:
        pool_pki.certify_node(pki, doc, pod_name="banks-a-0", expected_dns_name="d", now=NOW,
                              lifetime=dt.timedelta(hours=1), rng=os.urandom)
    assert "CSR" in str(err.value)
    assert not any(e.kind == EntryKind.NODE_CERTIFICATE for e in pki.log.entries)


def test_rotated_kem_keys_are_logged_once_and_only_for_their_node() -> None:
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    identity = NodeIdentity.generate(SUITE, os.urandom)
    doc = csr_doc("banks-a-0", "d", identity)
    pool_pki.certify_node(pki, doc, pod_name="banks-a-0", expected_dns_name="d", now=NOW,
                          lifetime=dt.timedelta(hours=1), rng=os.urandom)
    assert pool_pki.log_kem_keys(pki, doc, pod_name="banks-a-0", now=NOW) == []  # already logged
    doc["kemKeyCertificates"] = [*doc["kemKeyCertificates"], kem_cert(identity, "banks-a-0", epoch=2)]  # type: ignore[misc]
    assert pool_pki.log_kem_keys(pki, doc, pod_name="banks-a-0", now=NOW) == [2]
    size = len(pki.log.entries)
    foreign = csr_doc("banks-a-0", "d", identity, kem_for="banks-b-0")
    with pytest.raises(pool_pki.CertificationRefused, match="KEM key certificate of 'banks-b-0'"):
        pool_pki.log_kem_keys(pki, foreign, pod_name="banks-a-0", now=NOW)
    assert len(pki.log.entries) == size


def test_kem_schedule_picks_the_started_key_not_the_published_next_one() -> None:
    identity = NodeIdentity.generate(SUITE, os.urandom)

    def cert(epoch: int, start: dt.datetime, hours: int) -> str:
        pair = KemKeyPair.from_seed(SUITE.envelope_kem, os.urandom(32))
        c = KemKeyCertificate.issue(identity, node_id=NodeId("n"), epoch=epoch, keypair=pair,
                                    not_before=start, not_after=start + dt.timedelta(hours=hours))
        return base64.b64encode(c.to_bytes()).decode()

    doc = {"kemKeyCertificates": [cert(1, NOW - dt.timedelta(hours=20), 24), cert(2, NOW + dt.timedelta(hours=3), 24)]}
    epoch, rotates = pool_pki.kem_schedule(doc, now=NOW, grace_s=3600) or (0, NOW)
    assert epoch == 1, "epoch 2 is published but has not started"
    assert rotates == NOW + dt.timedelta(hours=3)
    assert pool_pki.kem_schedule({"kemKeyCertificates": ["garbage"]}, now=NOW, grace_s=0) is None
