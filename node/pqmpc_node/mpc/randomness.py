"""Cryptographic randomness as uint64 words, injected everywhere (never a global RNG).

:class:`AesCtrRandom` expands a 32-byte key with AES-256-CTR (pyca/cryptography). Production
code seeds it from the OS CSPRNG (:meth:`AesCtrRandom.from_os`); tests of the math pass a
fixed key. The same construction derives the dealer's per-party streams.

Keystream is written straight into the caller's buffer (:meth:`AesCtrRandom.words_into`,
pyca's ``update_into`` over a shared read-only zero buffer): no plaintext or ciphertext
``bytes`` is allocated per call, so a consumer that draws block by block keeps its words
in cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["RandomSource", "AesCtrRandom", "derive_key"]

_ZERO_CHUNK = 1 << 18  # bytes of plaintext zeros per update_into call


@functools.cache
def _zeros() -> memoryview:
    """The plaintext of a keystream (CTR encrypts zeros to the keystream itself), made on first use."""
    return memoryview(bytes(_ZERO_CHUNK))


class RandomSource(Protocol):
    """A source of uniformly random 64-bit words and bytes."""

    def words(self, count: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """``count`` uniform uint64 words (host array)."""
        ...

    def bytes(self, count: int) -> bytes:
        """``count`` uniform bytes."""
        ...


def derive_key(*parts: bytes | str | int) -> bytes:
    """A 32-byte key bound to ``parts`` (SHA-256 over length-prefixed parts)."""
    h = hashlib.sha256(b"pqmpc/mpc/derive-key/v1")
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part.to_bytes(16, "big", signed=True) if isinstance(part, int) else part
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.digest()


class AesCtrRandom:
    """AES-256-CTR keystream as a random source; one instance per consumer, never shared."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"AesCtrRandom needs a 32-byte key, got {len(key)} bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()

    @classmethod
    def from_os(cls) -> AesCtrRandom:
        """Seeded from the operating system CSPRNG."""
        return cls(os.urandom(32))

    def bytes(self, count: int) -> bytes:
        if count < 0:
            raise ValueError("count must be non-negative")
        return self._enc.update(bytes(count))

    def words(self, count: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
        if count < 0:
            raise ValueError("count must be non-negative")
        out = np.empty(count, dtype=np.uint64)
        self.words_into(out)
        return out

    def words_into(self, out: np.ndarray[Any, np.dtype[np.uint64]]) -> None:
        """Fill ``out`` (a C-contiguous uint64 host array) with the next ``out.size`` words of the stream.

        The same words, in the same order, as :meth:`words` would return.
        """
        if out.dtype != np.uint64 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("words_into needs a writable C-contiguous uint64 array")
        view = out.data.cast("B")
        zeros = _zeros()
        for start in range(0, len(view), _ZERO_CHUNK):
            chunk = view[start:start + _ZERO_CHUNK]
            self._enc.update_into(zeros[: len(chunk)], chunk)
