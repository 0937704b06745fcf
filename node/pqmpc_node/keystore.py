"""A node's keys and certification state: identity, CSR, certificate, KEM key ring, log.

Lifecycle (the CSR exchange with the operator, docs/node.md):

1. :meth:`NodeKeys.generate` makes the ML-DSA identity key and the first KEM key
   (epoch 1, certified by the identity key) in memory; nothing is written anywhere.
2. The operator pulls :meth:`NodeKeys.csr` and :meth:`NodeKeys.kem_certificates`,
   issues the node certificate, appends both to the transparency log and pushes the
   certificate with the log (:meth:`NodeKeys.install_certificate`), which verifies
   CA → certificate → node id → log, and that the current KEM key is logged too.
3. From then on the node is *certified* (ready) and :meth:`NodeKeys.keys_document`
   is what ``GET /v1/keys`` serves: certificate, CA, KEM key certificates that are in
   the log, and the log itself so clients can check inclusion.
4. :meth:`NodeKeys.rotate` advances the KEM key ring; new key certificates show up in
   :meth:`kem_certificates` for the operator to log, and are published once logged.

Pure: the clock is a ``now`` argument, randomness an ``rng`` callable.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pqmpc_node.crypto.kemkeys import KemKeyCertificate, KemKeyRing, KeyRotationPolicy, KeyState, RotationReport
from pqmpc_node.crypto.pki import (
    CertificateError,
    NodeId,
    NodeIdentity,
    NotInLogError,
    Rng,
    VerifiedNode,
    verify_node_certificate,
)
from pqmpc_node.crypto.suites import Suite
from pqmpc_node.crypto.transparency import EntryKind, LogBundle, LogVerifier

__all__ = ["CertificationError", "NodeKeys", "NotCertifiedError"]


class CertificationError(ValueError):
    """A pushed certificate or log was refused; ``reason`` is the metric / error label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotCertifiedError(RuntimeError):
    """The node has no certificate yet (the operator has not answered its CSR)."""


class NodeKeys:
    """Identity, KEM keys, certificate and the verified log of one node (one per process)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        dns_name: str,
        identity: NodeIdentity,
        ring: KemKeyRing,
        ca_certificate: x509.Certificate,
    ) -> None:
        self.node_id = node_id
        self.dns_name = dns_name
        self.identity = identity
        self.ring = ring
        self.ca_certificate = ca_certificate
        self.log = LogVerifier(ca_certificate.public_key())  # type: ignore[arg-type]
        self._bundle: LogBundle | None = None
        self._certificate: VerifiedNode | None = None

    def __repr__(self) -> str:
        return f"NodeKeys(node_id={self.node_id!r}, certified={self.certified})"

    @classmethod
    def generate(
        cls,
        *,
        suite: Suite,
        node_id: NodeId,
        dns_name: str,
        ca_certificate: x509.Certificate,
        policy: KeyRotationPolicy,
        rng: Rng,
        now: dt.datetime,
    ) -> NodeKeys:
        """Fresh identity and first KEM key (epoch 1)."""
        identity = NodeIdentity.generate(suite, rng)
        ring = KemKeyRing(node_id=node_id, identity=identity, policy=policy, rng=rng)
        ring.step(now)
        return cls(node_id=node_id, dns_name=dns_name, identity=identity, ring=ring, ca_certificate=ca_certificate)

    @property
    def suite(self) -> Suite:
        return self.identity.suite

    @property
    def certified(self) -> bool:
        """Whether a verified certificate is installed."""
        return self._certificate is not None

    @property
    def certificate(self) -> VerifiedNode:
        """The verified node certificate; :class:`NotCertifiedError` before the CSR is answered."""
        if self._certificate is None:
            raise NotCertifiedError(f"node {self.node_id} is not certified yet: the operator has not answered its CSR")
        return self._certificate

    def csr(self) -> bytes:
        """The DER CSR (subject CN = node id, self-signed)."""
        return self.identity.build_csr(self.node_id)

    def kem_certificates(self) -> list[KemKeyCertificate]:
        """Certificates of every KEM key held (the operator logs those not yet in the log)."""
        out = []
        for state in (KeyState.RETIRING, KeyState.CURRENT, KeyState.NEXT):
            c = self.ring.certificate(state)
            if c is not None:
                out.append(c)
        return out

    def _kem_certificates_with_state(self) -> list[tuple[KeyState, KemKeyCertificate]]:
        out = []
        for state in (KeyState.RETIRING, KeyState.CURRENT, KeyState.NEXT):
            c = self.ring.certificate(state)
            if c is not None:
                out.append((state, c))
        return out

    def update_log(self, bundle: LogBundle) -> None:
        """Accept an append-only extension of the log (CA-signed tree head)."""
        try:
            self.log.update(bundle.entries, bundle.tree_head)
        except CertificateError as exc:
            raise CertificationError(f"log refused: {exc}", exc.reason) from None
        self._bundle = bundle

    def install_certificate(self, der: bytes, bundle: LogBundle, *, now: dt.datetime) -> VerifiedNode:
        """Verify and install this node's certificate (see the module docstring, step 2)."""
        self.update_log(bundle)
        try:
            verified = verify_node_certificate(
                der, ca_certificate=self.ca_certificate, suite=self.suite, now=now,
                expected_node_ids={self.node_id}, log=self.log,
            )
        except CertificateError as exc:
            raise CertificationError(f"certificate refused: {exc}", exc.reason) from None
        if verified.public_key != self.identity.public_key:
            raise CertificationError("certificate is for another identity key than this node's", "wrong_key")
        if self._certificate is not None and verified.not_after <= self._certificate.not_after:
            # Anyone who reaches the API could post back an older logged certificate of this
            # node: a renewal must extend the validity, never roll it back.
            raise CertificationError(
                f"certificate valid until {verified.not_after.isoformat()} does not extend the installed one "
                f"(until {self._certificate.not_after.isoformat()}); only a renewal replaces it", "stale_certificate")
        current = self.ring.certificate(KeyState.CURRENT)
        if current is not None and not self.log.contains(EntryKind.KEM_KEY_CERTIFICATE, current.to_bytes()):
            raise CertificationError(
                f"KEM key epoch {current.epoch} is not in the pushed log; log the key certificates from GET /v1/csr",
                NotInLogError.reason,
            )
        self._certificate = verified
        return verified

    def rotate(self, now: dt.datetime) -> RotationReport:
        """Advance the KEM key ring to ``now``."""
        return self.ring.step(now)

    def current_epoch(self) -> int:
        """The epoch of the current KEM key."""
        c = self.ring.certificate(KeyState.CURRENT)
        if c is None:
            raise NotCertifiedError("no current KEM key")
        return c.epoch

    def current_key_not_before(self) -> int:
        """Unix time the current KEM key became valid (for the key-age metric)."""
        c = self.ring.certificate(KeyState.CURRENT)
        return 0 if c is None else c.not_before

    def keys_document(self) -> dict[str, Any]:
        """``GET /v1/keys``: certificate, CA, logged KEM key certificates, log."""
        cert = self.certificate
        if self._bundle is None:
            raise NotCertifiedError("no log installed")
        keys = [
            {"epoch": c.epoch, "state": state.value, "notAfter": c.not_after,
             "certificate": base64.b64encode(c.to_bytes()).decode()}
            for state, c in self._kem_certificates_with_state()
            if self.log.contains(EntryKind.KEM_KEY_CERTIFICATE, c.to_bytes())
        ]
        return {
            "nodeId": self.node_id,
            "suite": self.suite.name.value,
            "certificate": base64.b64encode(cert.certificate.public_bytes(Encoding.DER)).decode(),
            "certFingerprint": cert.fingerprint,
            "caCertificate": base64.b64encode(self.ca_certificate.public_bytes(Encoding.DER)).decode(),
            "kemKeys": keys,
            "log": self._bundle.to_json(),
        }

    def csr_document(self) -> dict[str, Any]:
        """``GET /v1/csr``: the CSR and the KEM key certificates to log."""
        return {
            "nodeId": self.node_id,
            "dnsName": self.dns_name,
            "suite": self.suite.name.value,
            "csr": base64.b64encode(self.csr()).decode(),
            "kemKeyCertificates": [base64.b64encode(c.to_bytes()).decode() for c in self.kem_certificates()],
            "certified": self.certified,
        }

