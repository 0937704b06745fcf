"""Pseudo-random secret sharing [CDI05] for honest-majority Shamir sessions, keys agreed by the parties.

Source: R. Cramer, I. Damgård, Y. Ishai, "Share conversion, pseudorandom secret-sharing
and applications to secure computation", TCC 2005, sections 3-4 (PRSS and PRZS).

Setting: n parties, Shamir threshold t with 2t < n, evaluation point of party i is
x_i = i + 1 (:class:`~pqmpc_node.mpc.sharing.ShamirScheme`). A *maximal unqualified set*
is a set A of exactly t parties; there are C(n, t) of them (35 at n = 7, t = 3). Each A
has a key k_A known exactly to the parties outside A.

Random sharing (PRSS). With f_A the degree-t polynomial f_A(X) = prod_{a in A} (x_a - X),
which vanishes at x_a for a in A and has f_A(0) = prod_{a in A} x_a != 0, party i's share
of a fresh random value is

    r_i = sum_{A not containing i} f_A(x_i) * PRF(k_A, counter)

and because f_A(x_i) = 0 whenever i is in A, r_i = F(x_i) for the single degree-t
polynomial F = sum_A f_A * PRF(k_A, counter): a consistent degree-t sharing of
F(0) = sum_A f_A(0) PRF(k_A, counter). Any t parties T miss the key of A = T (they are all
in it), and f_T(0) != 0, so the value is pseudo-random to them. CDI05 normalizes f_A(0) = 1;
any nonzero constant keeps the value uniform, and without the division the weights
f_A(x_i) = prod_{a in A} (a - i) are small integers (at most 2 in absolute value at n = 3),
which the field multiplies without a 61-bit split (:class:`~pqmpc_node.mpc.field.LinearCombination`).

Zero sharing of degree 2t (PRZS). Party i's share of zero is

    z_i = sum_{A not containing i} sum_{j=1..t} PRF_j(k_A, counter) * x_i^j * f_A(x_i),

the evaluation of a degree-2t polynomial with constant term 0. ``[r]_t + [0]_2t`` is the
double sharing (degree t and 2t of one r) that Damgård-Nielsen multiplication needs.

Key agreement (:func:`agree_keys`, over the session's PQ links, never the operator):

1. For every set A, the lowest live party outside A (its *leader*) draws k_A from the
   operating system's CSPRNG and sends it to every other live party outside A, one
   message per peer holding all keys for that peer, after the sender's view of the live
   set: parties that disagree on who is live (a party silent toward some parties only
   can cause that) stop the attempt without blaming anyone
   (:class:`LiveSetMismatchError`), since the leaders and lengths depend on that view. The links are authenticated and
   encrypted with the session's post-quantum key exchange (ML-KEM-768 hybrid), so only
   the addressee reads a key; the operator relays nothing.
2. Key confirmation: every party sends each peer SHA-256 over the keys they share (in
   set order); a mismatch means some leader sent two members different keys, and the
   session aborts (:class:`PrssKeyMismatchError`) before any sharing uses them. A message
   of the wrong length blames its sender.

Why a leader may be corrupted: for the set A = T of the corrupted parties, every party
outside A is honest, so its leader is honest and k_A stays secret — the only key that
matters for privacy. A corrupted leader of another set only learns a key it was entitled
to anyway. Keys are agreed afresh for every attempt of a session.

Streams. Each key feeds two AES-256-CTR streams (random and zero), read in request order;
every party makes the same requests in the same order, so members of a set stay in step.
A request for ``count`` elements reads the next ``count`` words of each random stream
(word e for element e) and the next ``t * count`` words of each zero stream (words
``t e .. t e + t - 1`` are PRF_1..PRF_t of element e), whatever the block size the
computation runs in: the values depend only on the keys and the sequence of requests.
Words become field elements as their low 61 bits
(:meth:`~pqmpc_node.mpc.field.MersenneField61.from_words`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import BlamedCheckError, MacCheckError
from pqmpc_node.mpc.field import BLOCK, P61, LinearCombination
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key

__all__ = ["KEY_BYTES", "MAX_PARTIES", "LiveSetMismatchError", "PrssKeys", "PrssKeyMismatchError", "agree_keys", "unqualified_sets", "vanishing_weight"]

KEY_BYTES = 32
MAX_PARTIES = 10
"""PRSS needs C(n, t) keys per party's sets (126 at n = 9, t = 4; 210 at n = 10): beyond this, use the dealer."""
Subset = tuple[int, ...]


class PrssKeyMismatchError(MacCheckError):
    """Two parties hold different keys for one set: a leader sent inconsistent keys."""


class LiveSetMismatchError(MacCheckError):
    """A peer starts the attempt with another set of live parties than this party (nobody is blamed:
    a party that went silent toward some parties only can cause it)."""


def unqualified_sets(n: int, t: int) -> list[Subset]:
    """Every maximal unqualified set (t parties out of n), in lexicographic order."""
    if not (0 < t and 2 * t < n <= MAX_PARTIES):
        raise ValueError(f"PRSS needs 0 < t, 2t < n and n <= {MAX_PARTIES}, got n={n}, t={t}")
    return list(itertools.combinations(range(n), t))


def vanishing_weight(subset: Subset, party: int) -> int:
    """``f_A(x_party) mod p`` for ``f_A(X) = prod_{a in A} (x_a - X)`` (f_A(x_a) = 0, f_A(0) = prod x_a != 0)."""
    return _signed_weight(subset, party) % P61


def _signed_weight(subset: Subset, party: int) -> int:
    """``f_A(x_party)`` as an integer: ``prod_{a in A} (a - party)`` (evaluation points are index + 1)."""
    weight = 1
    for a in subset:
        weight *= a - party
    return weight


@dataclass
class PrssKeys:
    """This party's PRSS keys (one per set it is outside of) and their streams."""

    party: int
    n: int
    t: int
    keys: dict[Subset, bytes] = field(repr=False)
    _random: list[tuple[AesCtrRandom, tuple[int, ...]]] = field(default_factory=list, repr=False)
    _zero: list[tuple[AesCtrRandom, tuple[int, ...]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        x = self.party + 1
        for subset, key in sorted(self.keys.items()):
            if self.party in subset:
                raise ValueError(f"party {self.party} must not hold the key of a set it belongs to ({subset})")
            if len(key) != KEY_BYTES:
                raise ValueError(f"PRSS keys have {KEY_BYTES} bytes")
            weight = _signed_weight(subset, self.party)
            # Per stream: the coefficient of each word of an element (one for PRSS, PRF_1..PRF_t for PRZS).
            self._random.append((AesCtrRandom(derive_key(key, "pqmpc/prss/random")), (weight,)))
            self._zero.append((AesCtrRandom(derive_key(key, "pqmpc/prss/zero-2t")),
                               tuple(x**j * weight for j in range(1, self.t + 1))))
        expected = [s for s in unqualified_sets(self.n, self.t) if self.party not in s]
        if sorted(self.keys) != expected:
            raise ValueError(f"party {self.party} needs a key for each of the {len(expected)} sets it is outside of")

    def random(self, domain: Domain, shape: tuple[int, ...]) -> Array:
        """This party's share of a fresh pseudo-random degree-t sharing (PRSS)."""
        _require_field(domain)
        return domain.xp.asarray(_combine(self._random, _count(shape), 1)).reshape(shape)

    def zero(self, domain: Domain, shape: tuple[int, ...]) -> Array:
        """This party's share of a fresh pseudo-random degree-2t sharing of zero (PRZS)."""
        _require_field(domain)
        return domain.xp.asarray(_combine(self._zero, _count(shape), self.t)).reshape(shape)


def _combine(streams: Sequence[tuple[AesCtrRandom, tuple[int, ...]]], count: int,
             per_element: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """``sum over streams, j < per_element of coeffs[j] * word[per_element * e + j]`` for each element e < count (host).

    Block by block (:data:`~pqmpc_node.mpc.field.BLOCK` elements): each stream's words for
    the block are drawn into one reused buffer and added into the block at once, so words,
    sum and temporaries stay in cache. Every stream is read sequentially, whatever the block
    size (module docstring, "Streams").
    """
    out = np.empty(count, dtype=np.uint64)
    size = min(count, BLOCK)
    words = np.empty(size * per_element, dtype=np.uint64)
    temps = [np.empty(size, dtype=np.uint64) for _ in range(4)]
    for lo in range(0, count, BLOCK):
        m = min(count, lo + BLOCK) - lo
        comb = LinearCombination(np, out[lo:lo + m], [t[:m] for t in temps])
        block = words[: m * per_element]
        for stream, coeffs in streams:
            stream.words_into(block)
            for j, c in enumerate(coeffs):
                comb.add(c, block[j::per_element] if per_element > 1 else block, words=True)
        comb.finish()
    return out


def _require_field(domain: Domain) -> None:
    """PRSS shares elements of the prime field: its weights and the Shamir points live there."""
    if domain.name != "mersenne61":
        raise ValueError(f"PRSS shares elements of the prime field (MersenneField61), not {domain.name}")


def _count(shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _live_bitmap(live: Sequence[int]) -> bytes:
    """The live set as 8 bytes (bit i: party i); every key message starts with the sender's view."""
    return sum(1 << p for p in live).to_bytes(8, "big")


def _live_parties(bitmap: bytes) -> list[int]:
    value = int.from_bytes(bitmap.ljust(8, b"\0"), "big")
    return [i for i in range(64) if value >> i & 1]


def _leader(subset: Subset, live: Sequence[int]) -> int:
    return min(p for p in live if p not in subset)


def _confirmation(session: str, subset_keys: Sequence[tuple[Subset, bytes]]) -> bytes:
    h = hashlib.sha256(b"pqmpc/prss/confirm/v1\0" + session.encode() + b"\0")
    for subset, key in subset_keys:
        h.update(bytes(subset) + b"\xff" + key)
    return h.digest()


async def agree_keys(channel: Channel, *, party: int, t: int, live: Sequence[int], session: str,
                     entropy: Callable[[int], bytes] = os.urandom) -> PrssKeys:
    """Steps 1-2 of the module docstring over ``channel`` among the ``live`` parties."""
    n = channel.n
    live = sorted(live)
    peers = [p for p in live if p != party]
    sets = unqualified_sets(n, t)
    mine: dict[Subset, bytes] = {}
    outgoing: dict[int, list[bytes]] = {p: [] for p in peers}
    expected: dict[int, list[Subset]] = {p: [] for p in peers}
    for subset in sets:
        if party in subset:
            continue
        leader = _leader(subset, live)
        members = [p for p in live if p not in subset]
        if leader == party:
            key = entropy(KEY_BYTES)
            mine[subset] = key
            for p in members:
                if p != party:
                    outgoing[p].append(key)
        else:
            expected[leader].append(subset)
    tag = f"{session}/prss-keys"
    view = _live_bitmap(live)
    await channel.send_many(tag, {p: view + b"".join(outgoing[p]) for p in peers})
    received = await channel.receive_many(tag, peers)
    for peer in peers:
        theirs, data = received[peer][:8], received[peer][8:]
        if theirs != view:
            raise LiveSetMismatchError("prss-live-set", [tag], f"party {peer} starts this attempt with live parties "
                                       f"{_live_parties(theirs)}, this party with {list(live)}: the parties disagree "
                                       "on who was lost (nobody is blamed); the attempt stops")
        want = expected[peer]
        if len(data) != KEY_BYTES * len(want):
            raise BlamedCheckError("prss-keys", [tag], f"party {peer} sent {len(data)} bytes of PRSS keys, expected "
                                   f"{KEY_BYTES * len(want)}", blamed_parties=[peer])
        for i, subset in enumerate(want):
            mine[subset] = data[i * KEY_BYTES:(i + 1) * KEY_BYTES]
    # Step 2: key confirmation with every peer over the sets both are outside of.
    ctag = f"{session}/prss-confirm"
    shared = {p: [(s, mine[s]) for s in sets if party not in s and p not in s] for p in peers}
    await channel.send_many(ctag, {p: _confirmation(session, shared[p]) for p in peers})
    confirms = await channel.receive_many(ctag, peers)
    bad = [p for p in peers if not hmac.compare_digest(confirms[p], _confirmation(session, shared[p]))]
    if bad:
        raise PrssKeyMismatchError("prss-key-confirmation", [ctag],
                                   f"PRSS keys shared with parties {bad} differ: a set's leader sent its members "
                                   "different keys; the session stops before any sharing uses them")
    return PrssKeys(party, n, t, mine)
