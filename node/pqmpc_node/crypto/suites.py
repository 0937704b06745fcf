"""The suite registry: every algorithm pqmpc uses, named once (docs/architecture.md "Cryptography").

A :class:`Suite` is a frozen bundle of explicit algorithm objects; code asks the
registry for one by :class:`SuiteName` and never passes algorithm names around as
loose strings. ``pq-default`` is X25519MLKEM768 + ML-DSA-65 + X-Wing HPKE +
AES-256-GCM; ``pq-high`` (CNSA 2.0 profile) is SecP384r1MLKEM1024 + ML-DSA-87 +
HPKE with ML-KEM-1024/P-384 + AES-256-GCM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mldsa

__all__ = [
    "Aead",
    "EnvelopeKem",
    "MLDSAPrivateKey",
    "MLDSAPublicKey",
    "MLKemParameterSet",
    "SignatureAlgorithm",
    "Suite",
    "SuiteName",
    "TlsGroup",
    "UnknownSuiteError",
    "get_suite",
    "signature_algorithm_of",
]

MLDSAPrivateKey = Union[mldsa.MLDSA44PrivateKey, mldsa.MLDSA65PrivateKey, mldsa.MLDSA87PrivateKey]
MLDSAPublicKey = Union[mldsa.MLDSA44PublicKey, mldsa.MLDSA65PublicKey, mldsa.MLDSA87PublicKey]


class SuiteName(str, enum.Enum):
    """Names of the suites a NodePool may choose (``spec.keys.suite``)."""

    PQ_DEFAULT = "pq-default"
    PQ_HIGH = "pq-high"


class TlsGroup(str, enum.Enum):
    """TLS 1.3 key-exchange groups, spelled the way OpenSSL names them."""

    X25519MLKEM768 = "X25519MLKEM768"
    SECP384R1MLKEM1024 = "SecP384r1MLKEM1024"


class MLKemParameterSet(str, enum.Enum):
    """FIPS 203 parameter sets (used by the backends and conformance tests)."""

    ML_KEM_768 = "ML-KEM-768"
    ML_KEM_1024 = "ML-KEM-1024"


class SignatureAlgorithm(str, enum.Enum):
    """FIPS 204 parameter sets; the value is the OpenSSL TLS sigalg name."""

    ML_DSA_44 = "mldsa44"
    ML_DSA_65 = "mldsa65"
    ML_DSA_87 = "mldsa87"

    @property
    def label(self) -> str:
        """The FIPS 204 name, e.g. ``ML-DSA-65``."""
        return {"mldsa44": "ML-DSA-44", "mldsa65": "ML-DSA-65", "mldsa87": "ML-DSA-87"}[self.value]

    def generate(self, seed: bytes) -> MLDSAPrivateKey:
        """A private key from a 32-byte seed (the caller supplies the randomness)."""
        if len(seed) != 32:
            raise ValueError(f"an {self.label} seed is 32 bytes, got {len(seed)}")
        if self is SignatureAlgorithm.ML_DSA_44:
            return mldsa.MLDSA44PrivateKey.from_seed_bytes(seed)
        if self is SignatureAlgorithm.ML_DSA_65:
            return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        return mldsa.MLDSA87PrivateKey.from_seed_bytes(seed)

    def public_key_from_bytes(self, data: bytes) -> MLDSAPublicKey:
        """Parse a raw public key; raises ``ValueError`` when the length is wrong."""
        if self is SignatureAlgorithm.ML_DSA_44:
            return mldsa.MLDSA44PublicKey.from_public_bytes(data)
        if self is SignatureAlgorithm.ML_DSA_65:
            return mldsa.MLDSA65PublicKey.from_public_bytes(data)
        return mldsa.MLDSA87PublicKey.from_public_bytes(data)


def signature_algorithm_of(key: MLDSAPrivateKey | MLDSAPublicKey) -> SignatureAlgorithm:
    """Which ML-DSA parameter set a key object belongs to."""
    if isinstance(key, (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey)):
        return SignatureAlgorithm.ML_DSA_44
    if isinstance(key, (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey)):
        return SignatureAlgorithm.ML_DSA_65
    if isinstance(key, (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey)):
        return SignatureAlgorithm.ML_DSA_87
    raise TypeError(f"not an ML-DSA key: {type(key).__name__}")


class EnvelopeKem(str, enum.Enum):
    """HPKE KEMs for sealed envelopes (RFC 9180 + draft-ietf-hpke-pq)."""

    XWING = "MLKEM768-X25519"
    MLKEM1024_P384 = "MLKEM1024-P384"

    @property
    def hpke_kem(self) -> hpke.KEM:
        """pyca's HPKE KEM object."""
        return hpke.KEM.MLKEM768_X25519 if self is EnvelopeKem.XWING else hpke.KEM.MLKEM1024_P384


class Aead(str, enum.Enum):
    """AEADs for envelopes."""

    AES_256_GCM = "AES-256-GCM"

    @property
    def hpke_aead(self) -> hpke.AEAD:
        """pyca's HPKE AEAD object."""
        return hpke.AEAD.AES_256_GCM


@dataclass(frozen=True)
class Suite:
    """One named combination of algorithms; look it up with :func:`get_suite`."""

    name: SuiteName
    tls_group: TlsGroup
    signature: SignatureAlgorithm
    envelope_kem: EnvelopeKem
    aead: Aead
    kem: MLKemParameterSet

    def hpke_suite(self) -> hpke.Suite:
        """The HPKE suite for envelopes (KDF HKDF-SHA256 for X-Wing, SHA384 for P-384)."""
        kdf = hpke.KDF.HKDF_SHA256 if self.envelope_kem is EnvelopeKem.XWING else hpke.KDF.HKDF_SHA384
        return hpke.Suite(self.envelope_kem.hpke_kem, kdf, self.aead.hpke_aead)


_REGISTRY: dict[SuiteName, Suite] = {
    SuiteName.PQ_DEFAULT: Suite(
        name=SuiteName.PQ_DEFAULT,
        tls_group=TlsGroup.X25519MLKEM768,
        signature=SignatureAlgorithm.ML_DSA_65,
        envelope_kem=EnvelopeKem.XWING,
        aead=Aead.AES_256_GCM,
        kem=MLKemParameterSet.ML_KEM_768,
    ),
    SuiteName.PQ_HIGH: Suite(
        name=SuiteName.PQ_HIGH,
        tls_group=TlsGroup.SECP384R1MLKEM1024,
        signature=SignatureAlgorithm.ML_DSA_87,
        envelope_kem=EnvelopeKem.MLKEM1024_P384,
        aead=Aead.AES_256_GCM,
        kem=MLKemParameterSet.ML_KEM_1024,
    ),
}


class UnknownSuiteError(ValueError):
    """A suite name that is not in the registry."""


def get_suite(name: SuiteName | str) -> Suite:
    """The registered suite called ``name``; raises :class:`UnknownSuiteError` otherwise."""
    try:
        key = SuiteName(name)
    except ValueError:
        known = ", ".join(s.value for s in SuiteName)
        raise UnknownSuiteError(f"unknown suite {name!r}; choose one of: {known}") from None
    return _REGISTRY[key]
