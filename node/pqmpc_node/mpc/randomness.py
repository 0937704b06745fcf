"""Cryptographic randomness as uint64 words, injected everywhere (never a global RNG).

:class:`AesCtrRandom` expands a 32-byte key with AES-256-CTR (pyca/cryptography). Production
code seeds it from the OS CSPRNG (:meth:`AesCtrRandom.from_os`); tests of the math pass a
fixed key. The same construction derives the dealer's per-party streams.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["RandomSource", "AesCtrRandom", "derive_key"]


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
        return np.frombuffer(self.bytes(8 * count), dtype=np.uint64)
