"""ML-KEM / ML-DSA backends behind one interface: pyca/cryptography and liboqs.

The interface works on raw bytes so that two backends can be checked against each
other (a public key from one, a ciphertext from the other). Private material stays in
opaque handle objects whose ``repr`` never shows it.

liboqs is optional. ``liboqs-python`` tries to download and build liboqs when it cannot
find the shared library at import time, so :class:`OqsBackend` looks for the library
first and reports :class:`BackendUnavailable` instead of ever importing ``oqs`` without it.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mlkem

from pqmpc_node.crypto.suites import MLKemParameterSet, SignatureAlgorithm

__all__ = [
    "BackendUnavailable",
    "KemPrivateHandle",
    "OqsBackend",
    "PQBackend",
    "PycaBackend",
    "SignPrivateHandle",
    "available_backends",
]


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and how to get it."""


@dataclass(frozen=True)
class KemPrivateHandle:
    """A KEM decapsulation key held by a backend (never printed)."""

    parameter_set: MLKemParameterSet
    key: Any = field(repr=False)


@dataclass(frozen=True)
class SignPrivateHandle:
    """An ML-DSA signing key held by a backend (never printed)."""

    algorithm: SignatureAlgorithm
    key: Any = field(repr=False)


class PQBackend(Protocol):
    """What the benchmark and the conformance tests need from a PQ backend."""

    name: str

    def kem_keypair(self, ps: MLKemParameterSet, seed: bytes | None = None) -> tuple[bytes, KemPrivateHandle]:
        """(encapsulation key bytes, decapsulation handle); ``seed`` is d||z (64 bytes)."""
        ...

    def kem_encapsulate(self, ps: MLKemParameterSet, public_key: bytes) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext)."""
        ...

    def kem_decapsulate(self, handle: KemPrivateHandle, ciphertext: bytes) -> bytes:
        """The shared secret (implicit rejection on a bad ciphertext)."""
        ...

    def sign_keypair(self, alg: SignatureAlgorithm, seed: bytes | None = None) -> tuple[bytes, SignPrivateHandle]:
        """(public key bytes, signing handle); ``seed`` is xi (32 bytes)."""
        ...

    def sign(self, handle: SignPrivateHandle, message: bytes, context: bytes = b"") -> bytes:
        """An ML-DSA signature under ``context``."""
        ...

    def verify(self, alg: SignatureAlgorithm, public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """True when the signature is valid; False for any invalid input."""
        ...


class PycaBackend:
    """The default backend: pyca/cryptography on its bundled OpenSSL."""

    name = "pyca"

    def kem_keypair(self, ps: MLKemParameterSet, seed: bytes | None = None) -> tuple[bytes, KemPrivateHandle]:
        """See :class:`PQBackend`."""
        seed = os.urandom(64) if seed is None else seed
        key: mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey
        if ps is MLKemParameterSet.ML_KEM_768:
            key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        else:
            key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)
        return key.public_key().public_bytes_raw(), KemPrivateHandle(ps, key)

    def kem_encapsulate(self, ps: MLKemParameterSet, public_key: bytes) -> tuple[bytes, bytes]:
        """See :class:`PQBackend`."""
        pub: mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey
        if ps is MLKemParameterSet.ML_KEM_768:
            pub = mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
        else:
            pub = mlkem.MLKEM1024PublicKey.from_public_bytes(public_key)
        return pub.encapsulate()

    def kem_decapsulate(self, handle: KemPrivateHandle, ciphertext: bytes) -> bytes:
        """See :class:`PQBackend`."""
        result: bytes = handle.key.decapsulate(ciphertext)
        return result

    def sign_keypair(self, alg: SignatureAlgorithm, seed: bytes | None = None) -> tuple[bytes, SignPrivateHandle]:
        """See :class:`PQBackend`."""
        key = alg.generate(os.urandom(32) if seed is None else seed)
        return key.public_key().public_bytes_raw(), SignPrivateHandle(alg, key)

    def sign(self, handle: SignPrivateHandle, message: bytes, context: bytes = b"") -> bytes:
        """See :class:`PQBackend`."""
        sig: bytes = handle.key.sign(message, context)
        return sig

    def verify(self, alg: SignatureAlgorithm, public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """See :class:`PQBackend`."""
        try:
            alg.public_key_from_bytes(public_key).verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True


_OQS_KEM = {MLKemParameterSet.ML_KEM_768: "ML-KEM-768", MLKemParameterSet.ML_KEM_1024: "ML-KEM-1024"}
_OQS_SIG = {
    SignatureAlgorithm.ML_DSA_44: "ML-DSA-44",
    SignatureAlgorithm.ML_DSA_65: "ML-DSA-65",
    SignatureAlgorithm.ML_DSA_87: "ML-DSA-87",
}


def _load_oqs() -> Any:
    """Import liboqs-python only when both it and the liboqs shared library are present."""
    if importlib.util.find_spec("oqs") is None:
        raise BackendUnavailable(
            "liboqs backend unavailable: the Python package liboqs-python is not installed "
            "(install the optional extra: pip install 'pqmpc[oqs]', plus the liboqs shared library)"
        )
    if ctypes.util.find_library("oqs") is None and not os.environ.get("OQS_INSTALL_PATH"):
        # liboqs-python would try to git-clone and build liboqs here; we never let it.
        raise BackendUnavailable(
            "liboqs backend unavailable: the liboqs shared library (liboqs.so) was not found; "
            "install liboqs system-wide or set OQS_INSTALL_PATH (pqmpc never downloads or builds it)"
        )
    return importlib.import_module("oqs")


class OqsBackend:
    """liboqs through liboqs-python; construct it to find out whether it is available."""

    name = "liboqs"

    def __init__(self) -> None:
        self._oqs = _load_oqs()

    def kem_keypair(self, ps: MLKemParameterSet, seed: bytes | None = None) -> tuple[bytes, KemPrivateHandle]:
        """See :class:`PQBackend`."""
        kem = self._oqs.KeyEncapsulation(_OQS_KEM[ps])
        if seed is None:
            public = bytes(kem.generate_keypair())
        else:
            public = bytes(kem.generate_keypair_seed(seed))
        return public, KemPrivateHandle(ps, kem)

    def kem_encapsulate(self, ps: MLKemParameterSet, public_key: bytes) -> tuple[bytes, bytes]:
        """See :class:`PQBackend`."""
        with self._oqs.KeyEncapsulation(_OQS_KEM[ps]) as kem:
            ct, ss = kem.encap_secret(public_key)
        return bytes(ss), bytes(ct)

    def kem_decapsulate(self, handle: KemPrivateHandle, ciphertext: bytes) -> bytes:
        """See :class:`PQBackend`."""
        return bytes(handle.key.decap_secret(ciphertext))

    def sign_keypair(self, alg: SignatureAlgorithm, seed: bytes | None = None) -> tuple[bytes, SignPrivateHandle]:
        """See :class:`PQBackend`."""
        if seed is not None:
            raise BackendUnavailable("liboqs-python cannot derive ML-DSA keys from a seed; use the pyca backend")
        sig = self._oqs.Signature(_OQS_SIG[alg])
        return bytes(sig.generate_keypair()), SignPrivateHandle(alg, sig)

    def sign(self, handle: SignPrivateHandle, message: bytes, context: bytes = b"") -> bytes:
        """See :class:`PQBackend`."""
        return bytes(handle.key.sign_with_ctx_str(message, context))

    def verify(self, alg: SignatureAlgorithm, public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """See :class:`PQBackend`."""
        with self._oqs.Signature(_OQS_SIG[alg]) as sig:
            return bool(sig.verify_with_ctx_str(message, signature, context, public_key))


def available_backends() -> tuple[list[PQBackend], dict[str, str]]:
    """The backends that run here, and for each that does not, the reason."""
    found: list[PQBackend] = [PycaBackend()]
    missing: dict[str, str] = {}
    try:
        found.append(OqsBackend())
    except BackendUnavailable as exc:
        missing[OqsBackend.name] = str(exc)
    return found, missing
