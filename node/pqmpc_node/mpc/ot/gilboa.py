"""Products of two parties' private values from random OT: Gilboa's OLE, and MASCOT's COPE.

Pure functions over one domain (Z_2^64 or F_p, p = 2^61 - 1); the provider
(:mod:`pqmpc_node.mpc.ot.provider`) moves their messages.

**Gilboa OLE** (Gilboa, CRYPTO 1999; MASCOT [KOS16] section 4 uses it for triples). The
receiver holds ``x`` with bits ``x_0..x_{l-1}``, the sender holds ``y``; from ``l`` random
OTs ``(r0_k, r1_k)`` where the receiver chose ``r_{x_k}``:

1. sender: ``d_k = r0_k - r1_k + 2^k y`` (sent), share ``-sum_k r0_k``;
2. receiver: ``r_{x_k} + x_k d_k = r0_k + x_k 2^k y``, share ``sum_k (r_{x_k} + x_k d_k)``;
3. the shares add up to ``sum_k x_k 2^k y = x y``.

``d_k`` is ``r0_k - r1_k`` (one of the two is unknown to the receiver, so uniform) plus
the sender's term: the receiver learns nothing of ``y``; the sender sees only random
OT outputs, never ``x``. A sender that sends a wrong ``d_k`` shifts the product by an
error the receiver's bit ``x_k`` selects (a *selective failure*): MASCOT's triples
combine ``tau`` products so that the bits it may learn this way do not reveal the
triple (:mod:`pqmpc_node.mpc.ot.provider`).

**COPE** (correlated oblivious product evaluation, [KOS16] figure 6). The key holder
chose, once, the seeds ``k_{alpha_k}`` of ``l`` random OTs by the bits of its MAC-key
share ``alpha``; the value holder has both seeds ``(k0_k, k1_k)``. For a vector ``x``:

1. value holder: ``t0_k = PRG(k0_k)``, ``t1_k = PRG(k1_k)`` (next ``len(x)`` elements of
   each stream), sends ``u_k = t0_k - t1_k + x``, keeps ``-sum_k 2^k t0_k``;
2. key holder: ``q_k = PRG(k_{alpha_k}) + alpha_k u_k = t0_k + alpha_k x``, keeps
   ``sum_k 2^k q_k = sum_k 2^k t0_k + alpha x``;
3. the two add up to ``alpha * x``: shares of the MAC of the holder's value under the
   other party's key share, with ``x`` hidden by the PRG output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key

__all__ = ["CopeKeyHolder", "CopeValueHolder", "bit_decompose", "ole_receiver_share", "ole_sender",
           "ot_elements", "sum_times_powers_of_two", "times_powers_of_two"]


def bit_decompose(values: Array, ell: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The ``ell`` low bits of every word of ``values``, least significant first: shape ``(*values.shape, ell)``."""
    words = np.asarray(values, dtype=np.uint64)
    shifts = np.arange(ell, dtype=np.uint64)
    return ((words[..., None] >> shifts) & np.uint64(1)).astype(np.uint8)


def _shift(domain: Domain, values: Array, k: Array) -> Array:
    """``values * 2^k`` (broadcasting): a shift in Z_2^64, a 61-bit rotation modulo p = 2^61 - 1
    (``2^61 = 1``, and a rotation keeps elements canonical). No multiplications."""
    if domain.name == "ring64":
        return values << k
    p = np.uint64((1 << 61) - 1)
    return ((values << k) & p) | (values >> (np.uint64(61) - k))


def times_powers_of_two(domain: Domain, values: Array, ell: int) -> Array:
    """``values[i] * 2^k`` for ``k < ell``: shape ``(N, ell)``."""
    if domain.name != "ring64" and ell > 61:
        raise ValueError("a field element has 61 bits")
    return _shift(domain, values[:, None], np.arange(ell, dtype=np.uint64)[None, :])


def sum_times_powers_of_two(domain: Domain, rows: Array) -> Array:
    """``sum_k 2^k rows[k]`` over the first axis."""
    k = np.arange(rows.shape[0], dtype=np.uint64).reshape((rows.shape[0],) + (1,) * (rows.ndim - 1))
    return domain.sum(_shift(domain, rows, k), axis=0)


def ot_elements(domain: Domain, messages: np.ndarray[Any, np.dtype[np.uint64]]) -> Array:
    """One uniform domain element per 128-bit OT message (its first 64-bit word; bias <= 2^-61)."""
    return domain.from_words(np.ascontiguousarray(messages[:, 0]))


def ole_sender(domain: Domain, r0: Array, r1: Array, y: Array, ell: int) -> tuple[Array, Array]:
    """Step 1: the corrections ``d`` (shape ``(N, ell)``, sent) and the sender's share (shape ``(N,)``).

    ``r0``, ``r1``: the random OT outputs as elements, shape ``(N, ell)``; ``y``: shape ``(N,)``.
    """
    d = domain
    corrections = d.add(d.sub(r0, r1), times_powers_of_two(d, y, ell))
    return corrections, d.neg(d.sum(r0, axis=1))


def ole_receiver_share(domain: Domain, chosen: Array, bits: np.ndarray[Any, np.dtype[np.uint8]],
                       corrections: Array) -> Array:
    """Step 2: the receiver's share from its chosen outputs, its bits and the sender's corrections."""
    d = domain
    return d.sum(d.add(chosen, np.where(bits.astype(bool), corrections, np.uint64(0))), axis=1)


def _streams(seeds: Sequence[bytes], context: bytes) -> list[AesCtrRandom]:
    return [AesCtrRandom(derive_key(b"pqmpc/ot/cope-prg/v1", context, k, seed)) for k, seed in enumerate(seeds)]


def _take(domain: Domain, streams: Sequence[AesCtrRandom], count: int) -> Array:
    """The next ``count`` elements of every stream, shape ``(len(streams), count)``."""
    return domain.from_words(np.stack([s.words(count) for s in streams]))


class CopeValueHolder:
    """COPE toward one peer's key share: this party holds both seeds of every OT."""

    def __init__(self, domain: Domain, seed_pairs: Sequence[tuple[bytes, bytes]], *, context: bytes) -> None:
        self.domain = domain
        self.ell = len(seed_pairs)
        self._t0 = _streams([p[0] for p in seed_pairs], context)
        self._t1 = _streams([p[1] for p in seed_pairs], context)

    def __repr__(self) -> str:
        return f"CopeValueHolder(ell={self.ell})"

    def extend(self, x: Array) -> tuple[Array, Array]:
        """Step 1 for the vector ``x``: the message ``u`` (shape ``(ell, N)``) and this party's share."""
        d, count = self.domain, int(x.size)
        t0, t1 = _take(d, self._t0, count), _take(d, self._t1, count)
        u = d.add(d.sub(t0, t1), x[None, :])
        share = d.neg(sum_times_powers_of_two(d, t0))
        return u, share


class CopeKeyHolder:
    """COPE under this party's key share ``alpha``: it chose one seed of every OT by alpha's bits."""

    def __init__(self, domain: Domain, alpha_bits: np.ndarray[Any, np.dtype[np.uint8]], chosen: Sequence[bytes], *,
                 context: bytes) -> None:
        if len(alpha_bits) != len(chosen):
            raise ValueError("one chosen seed per bit of the key share")
        self.domain = domain
        self.ell = len(chosen)
        self._bits = np.asarray(alpha_bits, dtype=np.uint8)
        self._t = _streams(chosen, context)

    def __repr__(self) -> str:
        return f"CopeKeyHolder(ell={self.ell})"

    def extend(self, u: Array) -> Array:
        """Step 2: this party's share of ``alpha * x`` from the holder's message ``u`` (shape ``(ell, N)``)."""
        d = self.domain
        t = _take(d, self._t, int(u.shape[1]))
        q = d.add(t, np.where(self._bits[:, None].astype(bool), u, np.uint64(0)))
        return sum_times_powers_of_two(d, q)
