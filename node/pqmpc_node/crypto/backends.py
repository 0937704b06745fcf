"""ML-KEM / ML-DSA backends behind one interface: pyca/cryptography and liboqs.

The interface works on raw bytes so that two backends can be checked against each
other (a public key from one, a ciphertext from the other). Private material stays in
opaque handle objects whose ``repr`` never shows it.

liboqs is optional. ``liboqs-python`` tries to download and build liboqs when it cannot
find the shared library at import time, so :class:`OqsBackend` looks for the library
first (on the loader path, or in ``$OQS_INSTALL_PATH/lib``) and reports
:class:`BackendUnavailable` instead of ever importing ``oqs`` without it.
``liboqs-python`` zero-pads a short key or ciphertext and rejects a long one with a bare
``ValueError`` from ctypes; :class:`OqsBackend` checks lengths itself, so both backends
refuse a malformed key or ciphertext the same way.
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
    if ctypes.util.find_library("oqs") is None and not _install_path_has_liboqs():
        # liboqs-python would try to git-clone and build liboqs here; we never let it.
        raise BackendUnavailable(
            "liboqs backend unavailable: the liboqs shared library (liboqs.so) was not found; "
            "install liboqs system-wide or set OQS_INSTALL_PATH to a folder whose lib/ holds it "
            "(pqmpc never downloads or builds it)"
        )
    return importlib.import_module("oqs")


def _install_path_has_liboqs() -> bool:
    """True when ``$OQS_INSTALL_PATH`` holds the library where liboqs-python looks (lib/, lib64/).

    Merely setting the variable is not enough: liboqs-python clones and builds liboqs
    into that folder when the library is not there.
    """
    root = os.environ.get("OQS_INSTALL_PATH")
    if not root:
        return False
    return any(os.path.isfile(os.path.join(root, d, "liboqs.so")) for d in ("lib", "lib64"))


def _require_length(what: str, data: bytes, expected: int) -> None:
    """Raise ``ValueError`` (as the pyca backend does) for input of the wrong length."""
    if len(data) != expected:
        raise ValueError(f"{what} must be {expected} bytes, got {len(data)}")


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
            _require_length("an ML-KEM encapsulation key", public_key, int(kem.length_public_key))
            try:
                ct, ss = kem.encap_secret(public_key)
            except RuntimeError as exc:  # liboqs refuses a key that fails the FIPS 203 modulus check
                raise ValueError(f"invalid ML-KEM encapsulation key: {exc}") from exc
        return bytes(ss), bytes(ct)

    def kem_decapsulate(self, handle: KemPrivateHandle, ciphertext: bytes) -> bytes:
        """See :class:`PQBackend`."""
        _require_length("an ML-KEM ciphertext", ciphertext, int(handle.key.length_ciphertext))
        return bytes(handle.key.decap_secret(ciphertext))

    def sign_keypair(self, alg: SignatureAlgorithm, seed: bytes | None = None) -> tuple[bytes, SignPrivateHandle]:
        """See :class:`PQBackend`."""
        if seed is not None:
            raise BackendUnavailable("liboqs-python cannot derive ML-DSA keys from a seed; use the pyca backend")
        sig = self._oqs.Signature(_OQS_SIG[alg])
        return bytes(sig.generate_keypair()), SignPrivateHandle(alg, sig)

    def sign(self, handle: SignPrivateHandle, message: bytes, context: bytes = b"") -> bytes:
        """See :class:`PQBackend`."""
        if len(context) > 255:  # FIPS 204: liboqs only returns an error code; pyca raises ValueError
            raise ValueError(f"an ML-DSA context is at most 255 bytes, got {len(context)}")
        return bytes(handle.key.sign_with_ctx_str(message, context))

    def verify(self, alg: SignatureAlgorithm, public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """See :class:`PQBackend`."""
        with self._oqs.Signature(_OQS_SIG[alg]) as sig:
            if len(public_key) != int(sig.length_public_key):
                return False
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
