"""The pool's trust root as the operator holds it: CA, plan signer, transparency log.

Contract: pure. Key material is made from injected randomness, (de)serialised to the
data of Kubernetes objects, and node CSRs are turned into certificates and log entries;
the handler reads and writes the objects. Where each piece lives:

- Secret ``<pool>-pki``: the ML-DSA CA key seed and certificate, the plan-signing key
  seed. Only the operator reads it; it never reaches a node, a log line or a status.
- ConfigMap ``<pool>-trust`` (mounted into node pods at ``/etc/pqmpc/trust``): the CA
  certificate (``ca.pem``) and the plan signer's public key (``plan-signer.pub``).
- ConfigMap ``<pool>-keylog``: the hash-chained transparency log of every issued node
  certificate and certified KEM key, public by design (clients verify against it).

Certification (docs/architecture.md "Cryptography", row "Node identity"): the node
pushes its CSR with a pod-bound token (:mod:`pqmpc_operator.bootstrap_server`); once
the attestation holds, the CSR must name that pod, proof of possession is verified (in
:meth:`PoolCA.issue`), and a short-lived certificate is issued and logged with the
node's KEM key certificates.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pqmpc_node.crypto.kemkeys import KemKeyCertificate
from pqmpc_node.crypto.wire import WireFormatError
from pqmpc_node.crypto.pki import NodeId, PoolCA, certificate_fingerprint
from pqmpc_node.crypto.suites import MLDSAPrivateKey, Suite
from pqmpc_node.crypto.transparency import EntryKind, LogEntry, LogVerifier, TransparencyLog

__all__ = [
    "CertificationRefused",
    "Issued",
    "PoolPKI",
    "certify_node",
    "keylog_data",
    "kem_schedule",
    "log_kem_keys",
    "keylog_name",
    "new_pool_pki",
    "pki_from_secret",
    "pki_secret_data",
    "pki_secret_name",
    "restore_log",
    "trust_bundle_data",
]

Rng = Callable[[int], bytes]
CA_LIFETIME = dt.timedelta(days=3650)
# Certificates start a minute early (clock skew between operator and nodes); the
# lifetime still counts from now.
CLOCK_SKEW = dt.timedelta(minutes=1)


class CertificationRefused(ValueError):
    """A CSR the operator will not sign; the message says why."""


def pki_secret_name(pool: str) -> str:
    """Secret that holds the pool CA and plan-signing keys."""
    return f"{pool}-pki"


def keylog_name(pool: str) -> str:
    """ConfigMap that stores the pool's transparency log."""
    return f"{pool}-keylog"


@dataclass
class PoolPKI:
    """CA, plan signer and log of one pool (lives only in the operator's memory)."""

    ca: PoolCA
    plan_signer: MLDSAPrivateKey
    log: TransparencyLog
    ca_seed: bytes

    def __repr__(self) -> str:  # never print key material (ca_seed, plan_signer)
        return f"PoolPKI(ca={self.ca!r}, log_size={len(self.log.entries)})"


def new_pool_pki(pool: str, suite: Suite, *, now: dt.datetime, rng: Rng) -> PoolPKI:
    """A fresh CA (ten years), plan signer and empty log for ``pool``.

    The CA key is stored as its 32-byte ML-DSA seed (FIPS 204 key generation is
    deterministic from it), so the seed :meth:`PoolCA.create` draws is recorded and
    checked against the key it made.
    """
    draws: list[bytes] = []

    def recording(n: int) -> bytes:
        data = rng(n)
        draws.append(data)
        return data

    ca = PoolCA.create(suite, name=f"pqmpc pool {pool} CA", now=now - dt.timedelta(minutes=5), lifetime=CA_LIFETIME, rng=recording)
    seed = next((d for d in draws if len(d) == 32), b"")
    if not seed or suite.signature.generate(seed).public_key() != ca.public_key:
        raise RuntimeError("could not record the CA key seed; PoolCA.create changed how it draws its key")
    return PoolPKI(ca=ca, plan_signer=suite.signature.generate(rng(32)), log=TransparencyLog(ca), ca_seed=seed)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pki_secret_data(pki: PoolPKI) -> dict[str, str]:
    """``data`` of the ``<pool>-pki`` Secret (base64 values, as the API wants them)."""
    return {
        "ca.seed": _b64(pki.ca_seed),
        "ca.pem": _b64(pki.ca.certificate.public_bytes(Encoding.PEM)),
        "plan-signer.seed": _b64(pki.plan_signer.private_bytes_raw()),
    }


def pki_from_secret(data: Mapping[str, str], suite: Suite, log_entries: Sequence[str] = ()) -> PoolPKI:
    """Rebuild the pool PKI from its Secret data and the stored log entries."""
    try:
        ca_key = suite.signature.generate(base64.b64decode(data["ca.seed"]))
        cert = x509.load_pem_x509_certificate(base64.b64decode(data["ca.pem"]))
        signer = suite.signature.generate(base64.b64decode(data["plan-signer.seed"]))
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"the pool's PKI Secret is damaged ({type(exc).__name__}); delete it to make a new CA "
            f"(every node is then certified again)"
        ) from None
    ca = PoolCA(suite, ca_key, cert)
    seed = base64.b64decode(data["ca.seed"])
    return PoolPKI(ca=ca, plan_signer=signer, log=restore_log(ca, log_entries), ca_seed=seed)


def restore_log(ca: PoolCA, entries_b64: Sequence[str]) -> TransparencyLog:
    """Replay stored entries into a log and check that the chain is intact."""
    log = TransparencyLog(ca)
    for i, raw in enumerate(entries_b64):
        stored = LogEntry.from_bytes(base64.b64decode(raw))
        again = log.append(stored.kind, stored.payload, now=dt.datetime.fromtimestamp(stored.timestamp, dt.timezone.utc))
        if again.entry_hash != stored.entry_hash or stored.index != i:
            raise ValueError(f"transparency log entry {i} does not chain; the keylog ConfigMap was altered")
    return log


def keylog_data(log: TransparencyLog) -> dict[str, str]:
    """``data`` of the ``<pool>-keylog`` ConfigMap: one base64 entry per line."""
    return {"entries": "\n".join(_b64(e.to_bytes()) for e in log.entries), "size": str(len(log.entries))}


def trust_bundle_data(pki: PoolPKI) -> dict[str, str]:
    """``data`` of the ``<pool>-trust`` ConfigMap (public material only)."""
    return {
        "ca.pem": pki.ca.certificate.public_bytes(Encoding.PEM).decode(),
        "plan-signer.pub": pki.plan_signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
    }


def own_log_verifier(pki: PoolPKI, *, now: dt.datetime) -> LogVerifier:
    """A verifier over the operator's own log: the authoritative copy, which no node can fork."""
    verifier = LogVerifier(pki.ca.public_key)
    verifier.update(pki.log.entries, pki.log.signed_tree_head(now=now))
    return verifier


MAX_KEM_CERTIFICATES = 8
"""Most KEM key certificates one document may offer (a node holds current, next and retiring keys)."""


def _new_kem_entries(pki: PoolPKI, csr_document: Mapping[str, Any], pod_name: str) -> list[tuple[bytes, int]]:
    """The KEM key certificates of ``csr_document`` not logged yet, every one checked (nothing is appended)."""
    offered = csr_document.get("kemKeyCertificates") or []
    if not isinstance(offered, list) or len(offered) > MAX_KEM_CERTIFICATES:
        raise CertificationRefused(f"node {pod_name} must offer a list of at most {MAX_KEM_CERTIFICATES} KEM key "
                                   "certificates")
    logged = {e.payload for e in pki.log.entries}
    new: list[tuple[bytes, int]] = []
    for raw in offered:
        try:
            data = base64.b64decode(str(raw), validate=True)
            cert = KemKeyCertificate.from_bytes(data)
        except (ValueError, WireFormatError):
            raise CertificationRefused(f"node {pod_name} offers a malformed KEM key certificate") from None
        if cert.node_id != pod_name:
            raise CertificationRefused(f"node {pod_name} offers a KEM key certificate of {cert.node_id!r}")
        if data not in logged and all(data != d for d, _ in new):
            new.append((data, cert.epoch))
    return new


def log_kem_keys(pki: PoolPKI, csr_document: Mapping[str, Any], *, pod_name: str, now: dt.datetime) -> list[int]:
    """Log the KEM key certificates a certified node offers that are not logged yet.

    Each must be a key certificate for ``pod_name`` (a node cannot get another node's key
    logged); all are checked before the first is logged, so a refusal leaves the log as
    it was. Returns the epochs newly logged.
    """
    if csr_document.get("nodeId") != pod_name:
        raise CertificationRefused(f"the node at this pod's IP says it is {csr_document.get('nodeId')!r}, not {pod_name!r}")
    new = _new_kem_entries(pki, csr_document, pod_name)
    for data, _ in new:
        pki.log.append(EntryKind.KEM_KEY_CERTIFICATE, data, now=now)
    return [epoch for _, epoch in new]


def kem_schedule(csr_document: Mapping[str, Any], *, now: dt.datetime, grace_s: float) -> tuple[int, dt.datetime] | None:
    """The node's current KEM key epoch and when it rotates, from its key certificates.

    The current key is the newest whose validity has begun (a next key is published
    ahead of its start); it rotates ``grace_s`` before it expires.
    """
    started = []
    for raw in csr_document.get("kemKeyCertificates") or []:
        try:
            cert = KemKeyCertificate.from_bytes(base64.b64decode(str(raw), validate=True))
        except (ValueError, WireFormatError):
            continue
        if cert.not_before <= now.timestamp():
            started.append(cert)
    if not started:
        return None
    current = max(started, key=lambda c: c.epoch)
    rotates = dt.datetime.fromtimestamp(current.not_after - grace_s, dt.timezone.utc)
    return current.epoch, rotates


@dataclass(frozen=True)
class Issued:
    """A node certificate and what it took to log it."""

    certificate_der: bytes
    fingerprint: str
    not_after: dt.datetime


def certify_node(
    pki: PoolPKI,
    csr_document: Mapping[str, Any],
    *,
    pod_name: str,
    expected_dns_name: str,
    now: dt.datetime,
    lifetime: dt.timedelta,
    rng: Rng,
    external_dns_names: Sequence[str] = (),
) -> Issued:
    """Check a node's CSR document against the pod it came from, issue and log its certificate.

    Steps: (1) the document names the pod the operator asked (node id = pod name) and
    the DNS name the pod template gave it (the certificate also names ``external_dns_names``,
    the node's names behind the pool's gateway, which the operator decides); (2) the KEM key certificates the node offers
    are checked; (3) the CSR's proof of possession is checked and a certificate with
    ``lifetime`` issued; (4) the new KEM key certificates and the certificate are logged.
    Every check comes before the first append: a refused document leaves the log as it was.
    """
    if csr_document.get("nodeId") != pod_name:
        raise CertificationRefused(
            f"the node at this pod's IP says it is {csr_document.get('nodeId')!r}, not {pod_name!r}; not certifying"
        )
    if csr_document.get("dnsName") != expected_dns_name:
        raise CertificationRefused(
            f"node {pod_name} asks for DNS name {csr_document.get('dnsName')!r}, expected {expected_dns_name!r}"
        )
    try:
        csr = base64.b64decode(str(csr_document["csr"]), validate=True)
    except (KeyError, ValueError):
        raise CertificationRefused(f"node {pod_name} sent a malformed CSR document") from None
    kem = _new_kem_entries(pki, csr_document, pod_name)
    cert = pki.ca.issue(csr, node_id=NodeId(pod_name), dns_name=expected_dns_name,
                        now=now - CLOCK_SKEW, lifetime=lifetime + CLOCK_SKEW, rng=rng,
                        extra_dns_names=external_dns_names)
    for data, _ in kem:
        pki.log.append(EntryKind.KEM_KEY_CERTIFICATE, data, now=now)
    der = cert.public_bytes(Encoding.DER)
    pki.log.append(EntryKind.NODE_CERTIFICATE, der, now=now)
    return Issued(der, certificate_fingerprint(cert), cert.not_valid_after_utc)
