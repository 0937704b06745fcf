"""The tweakable circular correlation-robust hash of Guo, Katz, Wang and Yu (S&P 2020) from fixed-key AES.

TCCR(i, x) = π(π(x) ⊕ i) ⊕ π(x), with π = AES-128 under a fixed, public key (the
ideal-permutation model). Correlation robustness is what random-OT extension needs: for an
unknown Δ, the values TCCR(i, q_i ⊕ Δ) look random to whoever knows the q_i and the
tweaks, as long as no (tweak, input) pair repeats; so every row gets its own tweak.

A batch runs as two AES-ECB passes of OpenSSL (pyca) over the whole array, written into
preallocated buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["TCCR_KEY", "tccr_hash"]

# π's key: public and fixed; the first 16 bytes of SHA-256(b"pqmpc/mpc/ot/tccr/fixed-key/v1").
TCCR_KEY = bytes.fromhex("18157b0a4dc44490227007e549732142")

U8 = np.ndarray[Any, np.dtype[np.uint8]]
U64 = np.ndarray[Any, np.dtype[np.uint64]]


def _permute(src: U8, dst: U8) -> None:
    """π over the first ``len(src)`` bytes of ``src`` into ``dst``, which has 16 bytes of slack (pyca's rule)."""
    enc = Cipher(algorithms.AES(TCCR_KEY), modes.ECB()).encryptor()
    enc.update_into(src.reshape(-1).data, dst.reshape(-1).data)
    enc.finalize()


def tccr_hash(rows: U8, first_index: int, label: int, *, out: U64 | None = None) -> U64:
    """TCCR over ``rows`` ((m, 16) uint8): row ``j`` gets tweak (``label`` << 64) | (``first_index`` + j).

    Returns (m, 2) uint64, written into ``out`` when given: each 128-bit output as two
    little-endian words. The low tweak word XORs into the first 8 bytes of π(x) read as a
    little-endian integer.
    """
    if rows.ndim != 2 or rows.shape[1] != 16 or rows.dtype != np.uint8:
        raise ValueError(f"expected (m, 16) uint8 rows, got {rows.dtype} {rows.shape}")
    m = rows.shape[0]
    if not (0 <= first_index and first_index + m <= 1 << 64 and 0 <= label < 1 << 64):
        raise ValueError("tweaks are 64-bit row indexes and a 64-bit label")
    if out is None:
        out = np.empty((m, 2), dtype=np.uint64)
    elif out.shape != (m, 2) or out.dtype != np.uint64:
        raise ValueError(f"out must be ({m}, 2) uint64, got {out.dtype} {out.shape}")
    first = np.empty((m + 1, 2), dtype=np.uint64)  # one spare row each: update_into's slack
    second = np.empty((m + 1, 2), dtype=np.uint64)
    _permute(np.ascontiguousarray(rows), first.view(np.uint8))
    a, b = first[:m], second[:m]  # a = π(x)
    np.bitwise_xor(a[:, 0], np.arange(first_index, first_index + m, dtype=np.uint64), out=b[:, 0])
    np.bitwise_xor(a[:, 1], np.uint64(label), out=b[:, 1])
    _permute(b.view(np.uint8), second.view(np.uint8))  # π(π(x) ⊕ i), in place
    np.bitwise_xor(b, a, out=out)
    return out
