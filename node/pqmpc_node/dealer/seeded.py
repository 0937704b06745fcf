"""Split dealer: every party learns only its own preprocessing shares.

The engine's :class:`~pqmpc_node.mpc.preprocessing.Dealer` derives all parties' material
from one seed, which is fine inside one process but must never be handed to several
nodes (any one of them could then derive every share and unmask every Beaver opening).
Here each party ``i`` gets its *own* seed ``s_i`` and, where its shares cannot be
pseudo-random, an explicit *correction stream* computed by the dealer.

Trust assumption (unchanged from the single-seed dealer): the dealer — in this system
the operator — knows every seed and therefore every preprocessed value; it is trusted
not to collude with any node and to deal correct material. It never sees inputs or
outputs. A node sees its own seed and stream only.

Slots. Every piece of material is a sharing of some value ``v`` (a "slot", named by the
request counter and a label):

* *random* slots (``a``, ``b``, ``A``, ``B``, truncation ``r``, the MAC key ``alpha``):
  ``v`` is uniform, so the shares of the parties in :meth:`Layout.random_seeded` are
  pseudo-random from their own seeds and ``v`` is whatever they recombine to
  (additive: all n parties, no correction at all; Shamir: parties 0..t, the others get
  their point of the polynomial through those t+1 points as a correction);
* *derived* slots (``c = a*b``, ``C = A@B``, edaBits, ``msb(r)``, ``r >> f``, input
  masks, every MAC share ``alpha * v``): the parties in :meth:`Layout.derived_seeded`
  (additive: 1..n-1; Shamir: 0..t-1) expand their shares from their seeds, and the
  dealer computes the others' shares (additive: party 0 gets ``v - sum_{j>=1} x_j``;
  Shamir: parties t..n-1 get their point of the polynomial through ``(0, v)`` and the
  t seeded points).

A correction is the true share masked by the other parties' pseudo-random shares, so it
reveals nothing about them: a party's seed and stream do not determine any other
party's material. Input masks ``r`` for owner ``k`` are expanded from ``s_k`` (label
``clear``), so the owner knows ``r`` and nobody else does.

Order. Protocols request material in the same order at every party and the order does
not depend on secret data, so the dealer records the requests by running the program
once with all parties simulated locally on dummy inputs (:class:`DealingProvider`), and
appends each correction to its party's stream as it is made. A party's
:class:`SplitProvider` consumes its stream in the same order and checks every request
against the dealer's manifest (:class:`PreprocessingMismatchError` on any difference);
consuming only a prefix is fine (a run may stop early, e.g. no valid rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.field import P61
from pqmpc_node.mpc.preprocessing import InputMask, Triple, TruncationPair
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import SharingScheme

__all__ = [
    "DealingProvider",
    "Layout",
    "PreprocessingMismatchError",
    "Request",
    "SplitProvider",
]

Request = tuple[Any, ...]
"""A request descriptor: the provider method's name and its shape arguments (JSON-able)."""

_LABEL = "pqmpc/mpc/split-dealer/v1"


class PreprocessingMismatchError(ValueError):
    """A party asked for material other than what the dealer dealt (a different program or inputs)."""


@dataclass(frozen=True)
class Layout:
    """Which parties expand their shares of a slot from their own seed."""

    n: int
    kind: str
    t: int

    @classmethod
    def of(cls, scheme: SharingScheme) -> Layout:
        return cls(scheme.n, scheme.kind, scheme.threshold)

    def random_seeded(self) -> range:
        return range(self.n) if self.kind == "additive" else range(self.t + 1)

    def derived_seeded(self) -> range:
        return range(1, self.n) if self.kind == "additive" else range(self.t)


def _prg(domain: Domain, seed: bytes, shape: tuple[int, ...], parts: Sequence[str | int]) -> Array:
    words = AesCtrRandom(derive_key(seed, _LABEL, *parts)).words(math.prod(shape))
    return domain.from_words(domain.xp.asarray(words).reshape(shape))


def _interpolate(domain: Domain, points: dict[int, Array], at: int) -> Array:
    """The degree-(len(points)-1) polynomial through ``points`` (x -> values) evaluated at ``at``, over F_p."""
    xs = list(points)
    acc: Array | None = None
    for xi in xs:
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = num * (at - xj) % P61
                den = den * (xi - xj) % P61
        term = domain.mul(points[xi], domain.scalar(num * pow(den, -1, P61) % P61))
        acc = term if acc is None else domain.add(acc, term)
    assert acc is not None  # points is never empty
    return acc


def _once(fn: Callable[[], Array]) -> Callable[[], Array]:
    cache: list[Array] = []

    def get() -> Array:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def _no_value() -> Array:
    raise AssertionError("a party never computes slot values; only the dealer does")


class _SplitBase:
    """The provider methods, written once over four slot primitives (party or dealer side)."""

    def __init__(self, domain: Domain, scheme: SharingScheme, party: int, *, authenticated: bool) -> None:
        if not 0 <= party < scheme.n:
            raise ValueError(f"party {party} out of range for n={scheme.n}")
        self.domain = domain
        self.scheme = scheme
        self.party = party
        self.layout = Layout.of(scheme)
        self._authenticated = authenticated
        self._counter = 0
        self.requests: list[Request] = []
        self._alpha_share: Array | None = None
        self._alpha_value: Callable[[], Array] = _no_value

    def _start(self) -> None:
        """Deal the MAC key first (every stream starts with it)."""
        if self._authenticated:
            share, value = self._random((1,), ("alpha",))
            self._alpha_share, self._alpha_value = share, _once(value)

    # -- slot primitives (subclasses) ----------------------------------------------
    def _random(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> tuple[Array, Callable[[], Array]]:
        raise NotImplementedError

    def _derived(self, shape: tuple[int, ...], parts: tuple[str | int, ...], value: Callable[[], Array]) -> Array:
        raise NotImplementedError

    def _owner_clear(self, owner: int, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Array | None:
        raise NotImplementedError

    def _dealer_bits(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Callable[[], Array]:
        return _no_value

    def _request(self, *desc: Any) -> int:
        self.requests.append(tuple(desc))
        self._counter += 1
        return self._counter

    # -- sharings with MACs --------------------------------------------------------
    def _mac(self, shape: tuple[int, ...], parts: tuple[str | int, ...], value: Callable[[], Array]) -> Array | None:
        if not self._authenticated:
            return None
        d = self.domain
        return self._derived(shape, (*parts, "mac"), lambda: d.mul(value(), self._alpha_value()))

    def _shared_random(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> tuple[Shared, Callable[[], Array]]:
        share, value = self._random(shape, parts)
        value = _once(value)
        return Shared(share, self._mac(shape, parts, value)), value

    def _shared_derived(self, shape: tuple[int, ...], parts: tuple[str | int, ...], value: Callable[[], Array]) -> Shared:
        value = _once(value)
        share = self._derived(shape, parts, value)
        return Shared(share, self._mac(shape, parts, value))

    # -- PreprocessingProvider -----------------------------------------------------
    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def mac_key_share(self) -> Array | None:
        return self._alpha_share

    def triples(self, shape: tuple[int, ...]) -> Triple:
        ctr, d = self._request("triples", *shape), self.domain
        a, va = self._shared_random(shape, (ctr, "a"))
        b, vb = self._shared_random(shape, (ctr, "b"))
        c = self._shared_derived(shape, (ctr, "c"), lambda: d.mul(va(), vb()))
        return Triple(a, b, c)

    def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        if left[1] != right[0]:
            raise ValueError(f"matrix triple shapes do not chain: {left} @ {right}")
        ctr, d = self._request("matrix_triple", *left, *right), self.domain
        a, va = self._shared_random(left, (ctr, "A"))
        b, vb = self._shared_random(right, (ctr, "B"))
        c = self._shared_derived((left[0], right[1]), (ctr, "C"), lambda: d.matmul(va(), vb()))
        return Triple(a, b, c)

    def edabits(self, shape: tuple[int, ...]) -> Shared:
        ctr = self._request("edabits", *shape)
        full = (self.domain.bits, *shape)
        return self._shared_derived(full, (ctr, "eda"), self._dealer_bits(full, (ctr, "bits")))

    def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        if self.domain.name != "ring64":
            raise ValueError("truncation pairs are ring material; the field protocol uses edaBits")
        ctr, xp = self._request("truncation_pairs", frac_bits, *shape), self.domain.xp
        r, vr = self._shared_random(shape, (ctr, "r"))
        msb = self._shared_derived(shape, (ctr, "msb"), lambda: vr() >> xp.uint64(63))
        low = self._shared_derived(shape, (ctr, "trunc"),
                                   lambda: (vr() & xp.uint64((1 << 63) - 1)) >> xp.uint64(frac_bits))
        return TruncationPair(r, msb, low)

    def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        if not 0 <= owner < self.scheme.n:
            raise ValueError(f"input owner {owner} out of range for n={self.scheme.n}")
        ctr = self._request("input_mask", owner, *shape)
        clear = self._owner_clear(owner, shape, (ctr, "mask"))

        def value() -> Array:
            assert clear is not None  # the dealer always knows the mask
            return clear

        shared = self._shared_derived(shape, (ctr, "im"), value)
        return InputMask(shared, clear if self.party == owner else None)


class SplitProvider(_SplitBase):
    """A party's provider: its own seed, its correction stream and the dealer's manifest.

    ``stream`` is the flat uint64 correction stream (host array); ``manifest`` the list
    of requests the dealer dealt for (checked one by one; None skips the check).
    """

    def __init__(
        self,
        domain: Domain,
        scheme: SharingScheme,
        party: int,
        *,
        seed: bytes,
        stream: np.ndarray[Any, np.dtype[np.uint64]],
        manifest: Sequence[Request] | None,
        authenticated: bool,
    ) -> None:
        super().__init__(domain, scheme, party, authenticated=authenticated)
        if len(seed) < 16:
            raise ValueError("a party seed must have at least 16 bytes of entropy")
        self._seed = seed
        self._stream = np.ascontiguousarray(stream, dtype=np.uint64).reshape(-1)
        self._cursor = 0
        self._manifest = None if manifest is None else [tuple(m) for m in manifest]
        self._start()

    def __repr__(self) -> str:
        return f"SplitProvider(party={self.party}, requests={len(self.requests)})"  # never the seed

    def _request(self, *desc: Any) -> int:
        i = len(self.requests)
        if self._manifest is not None and (i >= len(self._manifest) or self._manifest[i] != tuple(desc)):
            dealt = self._manifest[i] if i < len(self._manifest) else "nothing more"
            raise PreprocessingMismatchError(
                f"request {i + 1} asks for {desc}, but the dealer dealt {dealt}; "
                "the preprocessing was dealt for another program or other input sizes"
            )
        return super()._request(*desc)

    def _pop(self, shape: tuple[int, ...]) -> Array:
        count = math.prod(shape)
        if self._cursor + count > self._stream.size:
            raise PreprocessingMismatchError(
                f"the correction stream is exhausted ({self._stream.size} words) at request {len(self.requests)}"
            )
        chunk = self.domain.xp.asarray(self._stream[self._cursor : self._cursor + count].reshape(shape))
        self._cursor += count
        if not self.domain.is_canonical(chunk):
            raise PreprocessingMismatchError(
                f"the correction stream holds a value that is not a canonical {self.domain.name} element "
                f"at request {len(self.requests)}; the material is corrupt, deal again")
        return chunk

    def _random(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> tuple[Array, Callable[[], Array]]:
        if self.party in self.layout.random_seeded():
            return _prg(self.domain, self._seed, shape, (*parts, "share")), _no_value
        return self._pop(shape), _no_value

    def _derived(self, shape: tuple[int, ...], parts: tuple[str | int, ...], value: Callable[[], Array]) -> Array:
        if self.party in self.layout.derived_seeded():
            return _prg(self.domain, self._seed, shape, (*parts, "share"))
        return self._pop(shape)

    def _owner_clear(self, owner: int, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Array | None:
        if self.party != owner:
            return None
        return _prg(self.domain, self._seed, shape, (*parts, "clear"))


class DealingProvider(_SplitBase):
    """The dealer's simulation of party ``party``: it knows every seed and records ``party``'s corrections.

    ``seeds[i]`` is party i's seed; ``dealer_seed`` feeds values only the dealer draws
    (the bits of edaBits). After the run, :attr:`stream` is the party's correction
    stream and :attr:`requests` the manifest.
    """

    def __init__(
        self,
        domain: Domain,
        scheme: SharingScheme,
        party: int,
        *,
        seeds: Sequence[bytes],
        dealer_seed: bytes,
        authenticated: bool,
    ) -> None:
        super().__init__(domain, scheme, party, authenticated=authenticated)
        if len(seeds) != scheme.n or any(len(s) < 16 for s in seeds):
            raise ValueError(f"the dealer needs one seed of at least 16 bytes per party ({scheme.n})")
        self._seeds = list(seeds)
        self._dealer_seed = dealer_seed
        self._chunks: list[np.ndarray[Any, np.dtype[np.uint64]]] = []
        self._start()

    def __repr__(self) -> str:
        return f"DealingProvider(party={self.party}, requests={len(self.requests)})"  # never the seeds

    @property
    def stream(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        if not self._chunks:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate(self._chunks)

    def _emit(self, share: Array) -> Array:
        from pqmpc_node.mpc.backend import to_host

        self._chunks.append(np.asarray(to_host(share), dtype=np.uint64).reshape(-1).copy())
        return share

    def _seeded(self, j: int, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Array:
        return _prg(self.domain, self._seeds[j], shape, (*parts, "share"))

    def _random(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> tuple[Array, Callable[[], Array]]:
        d, lay = self.domain, self.layout

        def value() -> Array:
            shares = {j: self._seeded(j, shape, parts) for j in lay.random_seeded()}
            if lay.kind == "additive":
                acc = shares[0]
                for j in range(1, lay.n):
                    acc = d.add(acc, shares[j])
                return acc
            return _interpolate(d, {j + 1: s for j, s in shares.items()}, 0)

        if self.party in lay.random_seeded():
            return self._seeded(self.party, shape, parts), value
        points = {j + 1: self._seeded(j, shape, parts) for j in lay.random_seeded()}
        return self._emit(_interpolate(d, points, self.party + 1)), value

    def _derived(self, shape: tuple[int, ...], parts: tuple[str | int, ...], value: Callable[[], Array]) -> Array:
        d, lay = self.domain, self.layout
        if self.party in lay.derived_seeded():
            return self._seeded(self.party, shape, parts)
        v = value()
        if lay.kind == "additive":
            acc = v
            for j in lay.derived_seeded():
                acc = d.sub(acc, self._seeded(j, shape, parts))
            return self._emit(acc)
        points = {0: v, **{j + 1: self._seeded(j, shape, parts) for j in lay.derived_seeded()}}
        return self._emit(_interpolate(d, points, self.party + 1))

    def _owner_clear(self, owner: int, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Array | None:
        return _prg(self.domain, self._seeds[owner], shape, (*parts, "clear"))

    def _dealer_bits(self, shape: tuple[int, ...], parts: tuple[str | int, ...]) -> Callable[[], Array]:
        def bits() -> Array:
            count = math.prod(shape)
            raw = AesCtrRandom(derive_key(self._dealer_seed, _LABEL, *parts, "bits")).bytes((count + 7) // 8)
            out = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:count].astype(np.uint64)
            return self.domain.xp.asarray(out.reshape(shape))

        return bits
