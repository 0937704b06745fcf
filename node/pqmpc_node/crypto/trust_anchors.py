"""The trust anchors a node and a data owner start from: the pool CA and the plan-signing key.

Both come from the pool's ``<pool>-trust`` ConfigMap (``ca.pem``, ``plan-signer.pub``,
docs/node.md). The node reads them through :func:`pqmpc_node.config.load_trust`, the
``pqmpc`` CLI from files the user names; both parse them here, so the client side
needs nothing from the node's server modules.

``plan-signer.pub`` is a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo of an ML-DSA key) or
the raw key in base64; its algorithm must be the pool suite's signature algorithm.

Pure: bytes in, keys out; the callers read the files.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from pqmpc_node.crypto.suites import MLDSAPublicKey, Suite, signature_algorithm_of

__all__ = ["TrustAnchorError", "parse_ca_certificate", "parse_plan_signer"]


class TrustAnchorError(ValueError):
    """A trust anchor's bytes are not what the trust bundle holds; the message says which and why."""


def parse_ca_certificate(raw: bytes) -> x509.Certificate:
    """The pool CA certificate from its PEM (``ca.pem``)."""
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError as exc:
        raise TrustAnchorError(f"the pool CA certificate is not PEM X.509: {exc}") from None


def parse_plan_signer(raw: bytes, suite: Suite) -> MLDSAPublicKey:
    """The operator's plan-signing public key (PEM or base64 raw), checked to be ``suite``'s algorithm."""
    expected = suite.signature
    try:
        if b"-----BEGIN" in raw:
            key = load_pem_public_key(raw)
            alg = signature_algorithm_of(key)  # type: ignore[arg-type]
            if alg is not expected:
                raise ValueError(f"it is {alg.label}, the suite needs {expected.label}")
            signer: MLDSAPublicKey = key  # type: ignore[assignment]
        else:
            signer = expected.public_key_from_bytes(base64.b64decode(raw.strip(), validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise TrustAnchorError(f"the plan-signing public key is not a PEM or base64 {expected.label} key: {exc}") from None
    return signer
