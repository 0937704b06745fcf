"""Share redistribution: t + 1 holders of a Shamir sharing give a new party its share, and no more.

Used when a session re-runs with a replacement for a lost party (:mod:`pqmpc_node.input_resharing`):
the survivors hold shares ``s_i = f(i + 1)`` of every owner's input on one degree-t
polynomial ``f`` (the owner made them), and the replacement ``j`` needs ``f(j + 1)``.
Any ``t + 1`` shares define ``f``, so ``f(j + 1) = sum_{i in S} lambda_i^S(j + 1) s_i``
with the Lagrange weights of the set ``S`` at ``j + 1`` — the share-redistribution step
of proactive secret sharing (Herzberg, Jarecki, Krawczyk, Yung, "Proactive secret
sharing", CRYPTO 1995; a la [BGW88] and the resharing of Damgård–Nielsen, CRYPTO 2007).
Sent as is, each term would hand ``j`` a survivor's share times a public constant, so the
terms are masked with a zero-sharing among ``S``:

1. *Pairwise keys*: for each pair ``i < i'`` in ``S``, ``i`` draws a 32-byte key
   ``k_ii'`` and sends it to ``i'`` over their authenticated, confidential PQ link.
2. *Contribution*: each ``i`` in ``S`` sends ``j``
   ``c_i = lambda_i^S(j + 1) * s_i + m_i`` with
   ``m_i = sum_{i' > i} PRG(k_ii') - sum_{i' < i} PRG(k_i'i)`` (:func:`contribution`;
   the PRG is AES-256-CTR keyed by ``k`` and a label naming ``j``, the owner and the array).
3. *Combine*: ``j`` sums what it received (:func:`combine`): the masks cancel
   (``sum_i m_i = 0``), leaving ``f(j + 1)``.

What ``j`` learns: its own share, a uniformly looking vector per message otherwise
(every ``m_i`` contains a PRG term keyed by a key ``j`` never sees, ``|S| = t + 1 >= 2``).
A holder that sends a wrong ``c_i`` only moves ``j``'s share off ``f``; nothing here
checks that — the next attempt's input authentication does, before anything is opened
(:mod:`pqmpc_node.mpc.inputs`: the degree check over all live parties, and in malicious
sessions the owner-key check), so a corrupted replacement share aborts the run naming the
owner. Pure math: no I/O, randomness injected (the keys are drawn by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.field import P61
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key

__all__ = ["NotEnoughHoldersError", "combine", "contribution", "lagrange_at", "resharing_senders", "zero_mask"]


class NotEnoughHoldersError(ValueError):
    """Fewer than t + 1 parties hold shares: the value is no longer defined by what is left."""


def resharing_senders(holders: Sequence[int], threshold: int) -> tuple[int, ...]:
    """The ``t + 1`` lowest holders: the set ``S`` that reshares (every party computes the same set)."""
    ordered = sorted(set(holders))
    if len(ordered) < threshold + 1:
        raise NotEnoughHoldersError(f"resharing needs t + 1 = {threshold + 1} holders of the shares, "
                                    f"only parties {ordered} hold them")
    return tuple(ordered[: threshold + 1])


def lagrange_at(parties: Sequence[int], party: int) -> dict[int, int]:
    """The Lagrange weights of ``parties``' evaluation points (index + 1) at ``party + 1``.

    ``sum_i w_i f(i + 1) = f(party + 1)`` for every ``f`` of degree below ``len(parties)``.
    """
    xs = {p: p + 1 for p in parties}
    if len(xs) != len(parties):
        raise ValueError(f"parties must be distinct, got {list(parties)}")
    at = party + 1
    out: dict[int, int] = {}
    for p, xi in xs.items():
        num, den = 1, 1
        for q, xq in xs.items():
            if q != p:
                num = num * (at - xq) % P61
                den = den * (xi - xq) % P61
        out[p] = num * pow(den, -1, P61) % P61
    return out


def _prg(domain: Domain, key: bytes, label: str, size: int) -> Array:
    return domain.from_words(AesCtrRandom(derive_key(b"pqmpc/resharing/mask/v1", key, label)).words(size))


def zero_mask(domain: Domain, *, me: int, senders: Sequence[int], keys: Mapping[int, bytes], label: str,
              size: int) -> Array:
    """``m_me``: this sender's part of a zero-sharing among ``senders`` (step 2; ``keys[i']`` is ``k`` with ``i'``)."""
    mask = domain.zeros((size,))
    for other in senders:
        if other == me:
            continue
        term = _prg(domain, keys[other], label, size)
        mask = domain.add(mask, term) if me < other else domain.sub(mask, term)
    return mask


def contribution(domain: Domain, share: Array, *, me: int, senders: Sequence[int], recipient: int,
                 keys: Mapping[int, bytes], label: str) -> Array:
    """``c_me = lambda_me^S(recipient + 1) * share + m_me`` for a flat ``share`` (step 2)."""
    if me not in senders:
        raise ValueError(f"party {me} is not among the resharing parties {list(senders)}")
    weight = lagrange_at(senders, recipient)[me]
    flat = share.reshape(-1)
    mask = zero_mask(domain, me=me, senders=senders, keys=keys, label=label, size=int(flat.size))
    return domain.add(domain.mul(flat, domain.scalar(weight)), mask)


def combine(domain: Domain, contributions: Mapping[int, Array], senders: Sequence[int]) -> Array:
    """The recipient's share: the sum of every sender's contribution (step 3); all of ``senders`` must be there."""
    missing = sorted(set(senders) - set(contributions))
    if missing:
        raise NotEnoughHoldersError(f"resharing contributions missing from parties {missing}")
    sizes = {int(c.size) for c in contributions.values()}
    if len(sizes) != 1:
        raise ValueError(f"resharing contributions differ in length: {sorted(sizes)}")
    acc = domain.zeros((sizes.pop(),))
    for p in senders:
        acc = domain.add(acc, contributions[p].reshape(-1))
    return acc
