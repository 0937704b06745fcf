"""Correlated randomness behind one interface, and the trusted-dealer provider.

Protocol code asks a :class:`PreprocessingProvider` for material and never learns how it
was made, so a dealer-free provider (oblivious transfer with ML-KEM base OTs and OT
extension, a later issue) replaces :class:`DealerProvider` without touching protocols.
Material (all shares of this party, with MAC shares when ``authenticated``):

* Beaver triples ``c = a * b`` and matrix triples ``C = A @ B`` [Beaver91];
* edaBits: arithmetic shares of the bits ``r_0..r_{k-1}`` of a uniform ``r`` in the
  domain (``k = domain.bits``); ``[r] = sum_i 2^i [r_i]`` is local [EGK+20];
* ring truncation pairs ``(r, msb(r), (r mod 2^63) >> f)``;
* input masks ``[r]`` with ``r`` in the clear for the input's owner;
* this party's share of the MAC key ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import SharingScheme

__all__ = [
    "Triple",
    "TruncationPair",
    "InputMask",
    "PreprocessingProvider",
    "InteractiveProvider",
    "AnyProvider",
    "Dealer",
    "DealerProvider",
]


@dataclass(frozen=True)
class Triple:
    """Shares of ``a``, ``b`` and ``c = a * b`` (elementwise) or ``C = A @ B`` (matrix)."""

    a: Shared
    b: Shared
    c: Shared


@dataclass(frozen=True)
class TruncationPair:
    """Ring truncation material: ``r`` uniform, ``r_msb = r >> 63``, ``r_trunc = (r mod 2^63) >> f``."""

    r: Shared
    r_msb: Shared
    r_trunc: Shared


@dataclass(frozen=True)
class InputMask:
    """Shares of a random mask; ``clear`` holds the mask itself for the input's owner only."""

    mask: Shared
    clear: Array | None


class PreprocessingProvider(Protocol):
    """Source of this party's correlated randomness; calls must come in the same order at every party."""

    @property
    def authenticated(self) -> bool:
        """Whether material carries MAC shares (malicious security)."""
        ...

    def mac_key_share(self) -> Array | None:
        """This party's share of the MAC key (shape (1,)), or None without MACs."""
        ...

    def triples(self, shape: tuple[int, ...]) -> Triple:
        """Elementwise Beaver triples of ``shape``."""
        ...

    def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """A matrix triple with ``A`` of shape ``left``, ``B`` of shape ``right``."""
        ...

    def edabits(self, shape: tuple[int, ...]) -> Shared:
        """Shares of random bits, shape ``(domain.bits, *shape)``, bit i of r on axis 0."""
        ...

    def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        """Ring truncation pairs for ``frac_bits`` (ring domain only)."""
        ...

    def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        """A random mask for an input of party ``owner``."""
        ...


class InteractiveProvider(Protocol):
    """A :class:`PreprocessingProvider` whose material is made by the parties together, as it is consumed.

    Same requests, same order, same results; each call may exchange messages with the
    other parties (so it is a coroutine). The dealer-free honest-majority provider
    (:mod:`pqmpc_node.mpc.honest_majority`) is one. Protocols never call a provider
    directly: they await :meth:`MPCContext.triples` and its siblings, which serve both kinds.
    """

    @property
    def authenticated(self) -> bool:
        """Whether material carries MAC shares (malicious security)."""
        ...

    def mac_key_share(self) -> Array | None:
        """This party's share of the MAC key (shape (1,)), or None without MACs."""
        ...

    async def triples(self, shape: tuple[int, ...]) -> Triple:
        """Elementwise Beaver triples of ``shape``."""
        ...

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """A matrix triple with ``A`` of shape ``left``, ``B`` of shape ``right``."""
        ...

    async def edabits(self, shape: tuple[int, ...]) -> Shared:
        """Shares of random bits, shape ``(domain.bits, *shape)``, bit i of r on axis 0."""
        ...

    async def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        """Ring truncation pairs for ``frac_bits`` (ring domain only)."""
        ...

    async def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        """A random mask for an input of party ``owner``."""
        ...


@runtime_checkable
class DirectProducts(Protocol):
    """An :class:`InteractiveProvider` that multiplies shared values itself, without triples.

    The honest-majority provider does (degree reduction with MACs, checked in batches:
    :mod:`pqmpc_node.mpc.honest_majority`). Protocols multiply through it when the
    context's provider is one, and every MAC check runs :meth:`verify_products` first.
    """

    async def direct_multiply(self, x: Shared, y: Shared) -> Shared:
        """``[x * y]`` elementwise (equal shapes)."""
        ...

    async def direct_matmul(self, x: Shared, y: Shared) -> Shared:
        """``[X @ Y]`` for ``(m, k) @ (k, n)`` sharings."""
        ...

    async def verify_products(self, check: str) -> None:
        """Check every product made since the last call; raise a MAC check error if one is wrong."""
        ...


AnyProvider = PreprocessingProvider | InteractiveProvider
"""What an :class:`~pqmpc_node.mpc.context.MPCContext` takes: dealt or made interactively."""


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class Dealer:
    """A trusted dealer that derives every party's material from one secret seed.

    Trust assumption: the dealer sees every preprocessed value (triples, masks, the MAC
    key), so it must not collude with any party and must follow the protocol; if it does
    collude, privacy is lost, and if it deals bad material, the MAC checks do not help
    (the MACs come from the dealer too). It never sees inputs or outputs. Deploy it as a
    separate trust domain, or replace it with the OT provider.

    Material is random-access: share ``j`` of request ``counter`` is a pure function of
    ``(seed, counter, label, j)``, so each party can be handed a seed-derived stream
    (additive sharing: parties ``j >= 1`` get pure PRG output and party 0 a correction,
    as in CrypTen's TTP provider). In one process it simulates the dealer for all.
    """

    def __init__(self, domain: Domain, scheme: SharingScheme, seed: bytes, *, authenticated: bool) -> None:
        if len(seed) < 16:
            raise ValueError("dealer seed must have at least 16 bytes of entropy")
        self.domain = domain
        self.scheme = scheme
        self._seed = seed
        self.authenticated = authenticated
        self._alpha: Array | None = None

    # -- randomness -------------------------------------------------------
    def _words(self, count: int, *parts: str | int) -> np.ndarray[Any, np.dtype[np.uint64]]:
        return AesCtrRandom(derive_key(self._seed, *parts)).words(count)

    def _uniform(self, shape: tuple[int, ...], *parts: str | int) -> Array:
        return self.domain.from_words(self.domain.xp.asarray(self._words(_count(shape), *parts)).reshape(shape))

    def _bits(self, shape: tuple[int, ...], *parts: str | int) -> Array:
        count = _count(shape)
        raw = AesCtrRandom(derive_key(self._seed, *parts)).bytes((count + 7) // 8)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:count].astype(np.uint64)
        return self.domain.xp.asarray(bits.reshape(shape))

    @property
    def alpha(self) -> Array:
        """The MAC key (shape (1,)); known only to the dealer."""
        if self._alpha is None:
            self._alpha = self._uniform((1,), "alpha")
        return self._alpha

    # -- sharing ----------------------------------------------------------
    def share_for(self, party: int, shape: tuple[int, ...], values: Callable[[], Array], *parts: str | int) -> Array:
        """``party``'s share of ``values()`` under request ``parts``; lazy for additive parties >= 1."""
        d = self.domain
        if self.scheme.kind == "additive":
            if party != 0:
                return self._uniform(shape, *parts, "share", party)
            acc = values()
            for j in range(1, self.scheme.n):
                acc = d.sub(acc, self._uniform(shape, *parts, "share", j))
            return acc
        coeffs = [self._uniform(shape, *parts, "coef", k) for k in range(1, self.scheme.t + 1)]
        return self.scheme.evaluate(d, values(), coeffs, party)

    def shared_for(self, party: int, shape: tuple[int, ...], values: Callable[[], Array], *parts: str | int) -> Shared:
        """:meth:`share_for` plus the MAC share of ``alpha * values()`` when authenticated."""
        cache: list[Array] = []

        def once() -> Array:
            if not cache:
                cache.append(values())
            return cache[0]

        value = self.share_for(party, shape, once, *parts)
        mac = None
        if self.authenticated:
            mac = self.share_for(party, shape, lambda: self.domain.mul(once(), self.alpha), *parts, "mac")
        return Shared(value, mac)

    def mac_key_share(self, party: int) -> Array | None:
        if not self.authenticated:
            return None
        return self.share_for(party, (1,), lambda: self.alpha, "alpha-share")

    def share_input(self, party: int, values: Array, label: str) -> Shared:
        """``party``'s share of a data owner's ``values`` (the dealer acts as the input channel).

        For tests and simulations of owners outside the computation; a real owner uses
        :meth:`DealerProvider.input_mask` and publishes ``x - r`` instead.
        """
        return self.shared_for(party, tuple(values.shape), lambda: values, "input", label)


class DealerProvider:
    """One party's view of a :class:`Dealer`: a request counter and the dealer's shares."""

    def __init__(self, dealer: Dealer, party: int) -> None:
        if not 0 <= party < dealer.scheme.n:
            raise ValueError(f"party {party} out of range for n={dealer.scheme.n}")
        self.dealer = dealer
        self.party = party
        self._counter = 0

    @property
    def authenticated(self) -> bool:
        return self.dealer.authenticated

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def mac_key_share(self) -> Array | None:
        return self.dealer.mac_key_share(self.party)

    def triples(self, shape: tuple[int, ...]) -> Triple:
        ctr, dl, d = self._next(), self.dealer, self.dealer.domain
        def a() -> Array:
            return dl._uniform(shape, ctr, "a")

        def b() -> Array:
            return dl._uniform(shape, ctr, "b")

        return Triple(
            dl.shared_for(self.party, shape, a, ctr, "ta"),
            dl.shared_for(self.party, shape, b, ctr, "tb"),
            dl.shared_for(self.party, shape, lambda: d.mul(a(), b()), ctr, "tc"),
        )

    def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        if left[1] != right[0]:
            raise ValueError(f"matrix triple shapes do not chain: {left} @ {right}")
        ctr, dl, d = self._next(), self.dealer, self.dealer.domain
        def a() -> Array:
            return dl._uniform(left, ctr, "A")

        def b() -> Array:
            return dl._uniform(right, ctr, "B")

        return Triple(
            dl.shared_for(self.party, left, a, ctr, "tA"),
            dl.shared_for(self.party, right, b, ctr, "tB"),
            dl.shared_for(self.party, (left[0], right[1]), lambda: d.matmul(a(), b()), ctr, "tC"),
        )

    def edabits(self, shape: tuple[int, ...]) -> Shared:
        ctr, dl = self._next(), self.dealer
        full = (dl.domain.bits, *shape)
        return dl.shared_for(self.party, full, lambda: dl._bits(full, ctr, "bits"), ctr, "eda")

    def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        dl = self.dealer
        if dl.domain.name != "ring64":
            raise ValueError("truncation pairs are ring material; the field protocol uses edaBits")
        ctr, xp = self._next(), dl.domain.xp
        def r() -> Array:
            return dl._uniform(shape, ctr, "r")

        return TruncationPair(
            dl.shared_for(self.party, shape, r, ctr, "tr"),
            dl.shared_for(self.party, shape, lambda: r() >> xp.uint64(63), ctr, "tmsb"),
            dl.shared_for(
                self.party, shape, lambda: (r() & xp.uint64((1 << 63) - 1)) >> xp.uint64(frac_bits), ctr, "ttr"
            ),
        )

    def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        ctr, dl = self._next(), self.dealer
        def r() -> Array:
            return dl._uniform(shape, ctr, "mask")

        shared = dl.shared_for(self.party, shape, r, ctr, "im")
        return InputMask(shared, r() if self.party == owner else None)
