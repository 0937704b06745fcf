"""Exact 64-bit integer matrix products as float64 GEMM over 16-bit limbs.

Each operand is split into four 16-bit limbs, ``A = sum_i A_i 2^(16 i)``. A limb product
``A_i @ B_j`` has entries ``sum_k a_ik b_kj <= K (2^16 - 1)^2``, which float64 represents
exactly while that is at most 2^53, i.e. for inner dimension ``K <= MAX_INNER_DIM = 2^21``.
Larger ``K`` is cut into chunks of ``MAX_INNER_DIM`` and the partial products are added in
the domain, so the result is always exact. BLAS (numpy) or cuBLAS (cupy) does the work.

* :func:`ring_matmul`: product mod 2^64, needs the 10 limb pairs with ``i + j < 4``.
* :func:`mersenne_matmul`: product mod p = 2^61 - 1, all 16 limb pairs, each shifted by
  ``2^(16 (i+j)) mod p`` (a rotation inside 61 bits) and added mod p.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_INNER_DIM", "LIMB_BITS", "ring_matmul", "mersenne_matmul"]

LIMB_BITS = 16
MAX_INNER_DIM = 1 << 21
_MASK16 = 0xFFFF
_P61 = (1 << 61) - 1


def _check(a: Any, b: Any) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (m,k) @ (k,n) operands, got {a.shape} @ {b.shape}")


def _limbs(xp: Any, a: Any, count: int) -> list[Any]:
    return [((a >> xp.uint64(LIMB_BITS * i)) & xp.uint64(_MASK16)).astype(xp.float64) for i in range(count)]


def _ring_chunk(xp: Any, a: Any, b: Any) -> Any:
    m = a.shape[0]
    al = _limbs(xp, a, 4)
    bl = _limbs(xp, b, 4)
    out = xp.zeros((m, b.shape[1]), dtype=xp.uint64)
    for j in range(4):
        stacked = xp.concatenate(al[: 4 - j], axis=0) if j < 3 else al[0]
        prod = (stacked @ bl[j]).astype(xp.uint64)
        for i in range(4 - j):
            out += prod[i * m : (i + 1) * m] << xp.uint64(LIMB_BITS * (i + j))
    return out


def ring_matmul(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b mod 2^64`` for uint64 matrices, exact (see module docstring)."""
    _check(a, b)
    k = a.shape[1]
    out = _ring_chunk(xp, a[:, :MAX_INNER_DIM], b[:MAX_INNER_DIM])
    for start in range(MAX_INNER_DIM, k, MAX_INNER_DIM):
        out += _ring_chunk(xp, a[:, start : start + MAX_INNER_DIM], b[start : start + MAX_INNER_DIM])
    return out


def _reduce61(xp: Any, x: Any) -> Any:
    x = (x & xp.uint64(_P61)) + (x >> xp.uint64(61))
    return xp.where(x >= xp.uint64(_P61), x - xp.uint64(_P61), x)


def _rotate61(xp: Any, x: Any, e: int) -> Any:
    """``x * 2^e mod p`` for x < p, 0 <= e < 61: a rotation inside 61 bits."""
    if e == 0:
        return x
    lo = (x << xp.uint64(e)) & xp.uint64(_P61)
    return _reduce61(xp, lo + (x >> xp.uint64(61 - e)))


def _mersenne_chunk(xp: Any, a: Any, b: Any) -> Any:
    m = a.shape[0]
    al = _limbs(xp, a, 4)
    bl = _limbs(xp, b, 4)
    stacked = xp.concatenate(al, axis=0)
    out = xp.zeros((m, b.shape[1]), dtype=xp.uint64)
    for j in range(4):
        prod = (stacked @ bl[j]).astype(xp.uint64)  # entries < 2^53 < p: already reduced
        for i in range(4):
            out = _reduce61(xp, out + _rotate61(xp, prod[i * m : (i + 1) * m], (LIMB_BITS * (i + j)) % 61))
    return out


def mersenne_matmul(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b mod (2^61 - 1)`` for reduced uint64 matrices, exact (see module docstring)."""
    _check(a, b)
    k = a.shape[1]
    out = _mersenne_chunk(xp, a[:, :MAX_INNER_DIM], b[:MAX_INNER_DIM])
    for start in range(MAX_INNER_DIM, k, MAX_INNER_DIM):
        out = _reduce61(xp, out + _mersenne_chunk(xp, a[:, start : start + MAX_INNER_DIM], b[start : start + MAX_INNER_DIM]))
    return out
