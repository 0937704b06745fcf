"""One party's state in one MPC session: domain, sharing, channel, preprocessing, MACs.

:class:`MPCContext` holds what every protocol needs and performs the local (linear)
operations on :class:`~pqmpc_node.mpc.shares.Shared` values, which need no messages:
additions, public scalars and public constants, and products with public matrices. Each
linear map is applied to the value share and, in malicious mode, to the MAC share too;
a public constant ``c`` adds ``alpha_i * c`` to the MAC share.

Communication goes through :meth:`MPCContext.open`, which allocates one round tag per
call, so independent openings batched into one call cost one round.

Large openings. A share longer than :data:`MAX_MESSAGE_BYTES` (32 MiB) goes to each peer
as several messages of at most that size, under the sub-tags ``f"{tag}#{i}"`` of the
round's tag; the receiver derives the same split from the length of its own share (every
party's share of one opening has the same shape), receives the parts concurrently and
joins them. Waits on the parts are posted before the sends, so no part sits unconsumed
in a link's buffer while both sides are sending. One round either way; openings up to the
bound keep their single message and tag, so a transport's per-message limit (a peer
link's ``max_message``) never caps the size of a session.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import numpy as np

from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.channel import Channel, ChannelError, LostPartyError, receive_first
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import MacCheckError, NonCanonicalError
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.preprocessing import AnyProvider, InputMask, Triple, TruncationPair
from pqmpc_node.mpc.randomness import RandomSource
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import InconsistentSharesError, SharingScheme

__all__ = ["MAX_MESSAGE_BYTES", "MPCContext", "Security", "OpenedRecord", "SecurityConfigError", "part_tags"]

MAX_MESSAGE_BYTES = 32 * 2**20
"""The largest single message an opening sends; longer shares go as several (module docstring)."""

Security = Literal["semi-honest", "malicious"]

_T = TypeVar("_T")


async def _resolved(value: _T | Awaitable[_T]) -> _T:
    """A dealt provider's material as is; an interactive provider's once its messages are done."""
    if inspect.isawaitable(value):
        return await cast(Awaitable[_T], value)
    return value


class SecurityConfigError(ValueError):
    """The combination of domain, sharing and security is not supported."""


@dataclass(frozen=True)
class OpenedRecord:
    """An opening awaiting its MAC check: the label, the opened values and this party's MAC shares."""

    label: str
    values: Array
    macs: Array


def encode_payload(array: Array) -> bytes:
    """uint64 array -> bytes for the channel."""
    return to_host(array).astype(np.uint64, copy=False).tobytes()


def payload_for(channel: Channel, array: Array) -> bytes:
    """The wire form of a uint64 array: a zero-copy memoryview where the channel takes raw
    buffers (``channel.accepts_buffers``), else ``bytes``. The array must stay unchanged
    until the send completes (``send_many`` returns)."""
    if getattr(channel, "accepts_buffers", False):
        host = np.ascontiguousarray(to_host(array), dtype=np.uint64)
        return host.data.cast("B")  # type: ignore[return-value]  # a bytes-like buffer
    return encode_payload(array)


def part_tags(tag: str, nbytes: int, bound: int = MAX_MESSAGE_BYTES) -> list[str]:
    """The tags of the messages carrying ``nbytes`` under round ``tag``: ``[tag]`` up to ``bound``."""
    if bound < 8:
        raise ValueError("the message bound must hold at least one element")
    if nbytes <= bound:
        return [tag]
    return [f"{tag}#{i}" for i in range(-(-nbytes // bound))]


class _PartedChannel:
    """A view of ``channel`` where one round's message travels as several parts (see the module docstring).

    Only for the round ``tag`` it was made for, of ``nbytes`` bytes per peer.
    """

    def __init__(self, channel: Channel, tag: str, nbytes: int, bound: int) -> None:
        self._channel = channel
        self._tag = tag
        self._bound = bound
        self._tags = part_tags(tag, nbytes, bound)

    @property
    def party(self) -> int:
        return self._channel.party

    @property
    def n(self) -> int:
        return self._channel.n

    def _check(self, tag: str) -> None:
        if tag != self._tag:
            raise ChannelError(f"a parted view of round {self._tag!r} cannot carry round {tag!r}")

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        self._check(tag)
        views = {p: memoryview(data).cast("B") for p, data in payloads.items()}
        for i, part in enumerate(self._tags):
            lo = i * self._bound
            await self._channel.send_many(part, {p: v[lo : lo + self._bound] for p, v in views.items()})  # type: ignore[misc]

    async def _receive_one(self, peer: int) -> bytes:
        parts = await asyncio.gather(*(self._channel.receive_many(t, [peer]) for t in self._tags))
        return b"".join(p[peer] for p in parts)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        self._check(tag)
        wanted = list(peers)
        results = await asyncio.gather(*(self._receive_one(p) for p in wanted))
        return dict(zip(wanted, results, strict=True))

    def discard(self, tag: str, peers: Iterable[int]) -> None:
        self._check(tag)
        discard = getattr(self._channel, "discard", None)
        if discard is not None:
            peers = list(peers)
            for t in self._tags:
                discard(t, peers)


class MPCContext:
    """A party's view of a session (not thread-safe; one per party per session)."""

    def __init__(
        self,
        *,
        party: int,
        channel: Channel,
        domain: Domain,
        scheme: SharingScheme,
        provider: AnyProvider,
        rng: RandomSource,
        security: Security = "semi-honest",
        fixed: FixedPoint | None = None,
        live: Sequence[int] | None = None,
        session: str = "",
    ) -> None:
        if security not in ("semi-honest", "malicious"):
            raise SecurityConfigError(f"security must be 'semi-honest' or 'malicious', got {security!r}")
        if security == "malicious" and domain.name != "mersenne61":
            raise SecurityConfigError(
                "malicious security uses SPDZ MACs over the prime field: use MersenneField61, not the ring"
            )
        if scheme.kind == "shamir" and domain.name != "mersenne61":
            raise SecurityConfigError("Shamir sharing needs the prime field MersenneField61")
        if (security == "malicious") != provider.authenticated:
            raise SecurityConfigError(
                f"security {security!r} needs a provider with authenticated={security == 'malicious'}"
            )
        self.session = session
        self.party = party
        self.n = scheme.n
        self.channel = channel
        self.domain = domain
        self.xp = domain.xp
        self.scheme = scheme
        self.provider = provider
        self.rng = rng
        self.security: Security = security
        self.fixed = fixed or FixedPoint()
        self.live = tuple(sorted(live)) if live is not None else tuple(range(self.n))
        if party not in self.live:
            raise ValueError(f"party {party} is not among the live parties {self.live}")
        if len(self.live) < self.n and scheme.kind == "additive":
            raise SecurityConfigError("additive sharing needs all parties; use Shamir to tolerate missing parties")
        if len(self.live) < scheme.threshold + 1:
            raise SecurityConfigError(f"{len(self.live)} live parties cannot open a threshold-{scheme.threshold} sharing")
        self.peers = tuple(p for p in self.live if p != party)
        self.mac_key = provider.mac_key_share()
        self.pending: list[OpenedRecord] = []
        self.broadcasts: list[tuple[str, bytes]] = []
        self._round = 0
        self._holds_constants = scheme.holds_constants(party)
        self.rounds_used = 0
        self.max_message_bytes = MAX_MESSAGE_BYTES  # the same at every party (a protocol constant)

    @property
    def malicious(self) -> bool:
        return self.security == "malicious"

    def next_tag(self, label: str) -> str:
        """A fresh round tag, unique per session on a shared channel (identical across parties)."""
        self._round += 1
        return f"{self.session}/{self._round}:{label}" if self.session else f"{self._round}:{label}"

    # -- preprocessing (dealt or interactive; protocols await these) -----
    async def triples(self, shape: tuple[int, ...]) -> Triple:
        """Elementwise Beaver triples of ``shape`` from the provider."""
        return await _resolved(self.provider.triples(shape))

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """A matrix triple from the provider."""
        return await _resolved(self.provider.matrix_triple(left, right))

    async def edabits(self, shape: tuple[int, ...]) -> Shared:
        """Random shared bits ``(domain.bits, *shape)`` from the provider."""
        return await _resolved(self.provider.edabits(shape))

    async def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        """Ring truncation pairs from the provider."""
        return await _resolved(self.provider.truncation_pairs(shape, frac_bits))

    async def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        """An input mask for party ``owner`` from the provider."""
        return await _resolved(self.provider.input_mask(shape, owner))

    # -- constants and conversions ---------------------------------------
    def public(self, values: Any) -> Array:
        """Signed integers as domain elements (a public array)."""
        return self.domain.from_signed(self.xp.asarray(values))

    def constant(self, values: Array) -> Shared:
        """A sharing of the public domain array ``values`` (no communication)."""
        zero = self.domain.zeros(tuple(values.shape))
        return self.add_public(Shared(zero, None if self.mac_key is None else zero), values)

    def encode_fixed(self, values: Any) -> Array:
        """Public reals as fixed-point domain elements."""
        return self.fixed.encode(values, self.domain)

    # -- linear operations -------------------------------------------------
    def _mac2(self, x: Shared, y: Shared, op: Any) -> Array | None:
        if x.mac is None or y.mac is None:
            return None
        return op(x.mac, y.mac)

    def add(self, x: Shared, y: Shared) -> Shared:
        d = self.domain
        return Shared(d.add(x.value, y.value), self._mac2(x, y, d.add))

    def sub(self, x: Shared, y: Shared) -> Shared:
        d = self.domain
        return Shared(d.sub(x.value, y.value), self._mac2(x, y, d.sub))

    def neg(self, x: Shared) -> Shared:
        d = self.domain
        return Shared(d.neg(x.value), None if x.mac is None else d.neg(x.mac))

    def mul_public(self, x: Shared, c: Array) -> Shared:
        """``c * x`` for a public domain array or scalar ``c`` (broadcasting)."""
        d = self.domain
        return Shared(d.mul(x.value, c), None if x.mac is None else d.mul(x.mac, c))

    def add_public(self, x: Shared, c: Array) -> Shared:
        """``x + c`` for a public domain array ``c`` (broadcasting)."""
        d = self.domain
        c = self.xp.broadcast_to(c, x.shape)
        value = d.add(x.value, c) if self._holds_constants else x.value
        mac = None
        if x.mac is not None:
            assert self.mac_key is not None  # invariant: MAC shares exist only with a MAC key
            mac = d.add(x.mac, d.mul(c, self.mac_key))
        return Shared(value, mac)

    def sum(self, x: Shared, axis: int | None = None) -> Shared:
        d = self.domain
        return Shared(d.sum(x.value, axis=axis), None if x.mac is None else d.sum(x.mac, axis=axis))

    def matmul_public_right(self, x: Shared, b: Array) -> Shared:
        """``x @ b`` for a public matrix ``b``."""
        d = self.domain
        return Shared(d.matmul(x.value, b), None if x.mac is None else d.matmul(x.mac, b))

    def matmul_public_left(self, a: Array, x: Shared) -> Shared:
        """``a @ x`` for a public matrix ``a``."""
        d = self.domain
        return Shared(d.matmul(a, x.value), None if x.mac is None else d.matmul(a, x.mac))

    def concat(self, xs: Sequence[Shared], axis: int = 0) -> Shared:
        """Concatenation along ``axis``."""
        xp = self.xp
        value = xp.concatenate([x.value for x in xs], axis=axis)
        mac = None if xs[0].mac is None else xp.concatenate([x.mac for x in xs], axis=axis)
        return Shared(value, mac)

    def stack(self, xs: Sequence[Shared]) -> Shared:
        """Stack along a new leading axis."""
        xp = self.xp
        value = xp.stack([x.value for x in xs])
        mac = None if xs[0].mac is None else xp.stack([x.mac for x in xs])
        return Shared(value, mac)

    def broadcast_rows(self, x: Shared, rows: int) -> Shared:
        """Repeat ``x`` along a new leading axis ``rows`` times."""
        xp = self.xp
        value = xp.broadcast_to(x.value, (rows, *x.shape)).copy()
        mac = None if x.mac is None else xp.broadcast_to(x.mac, (rows, *x.shape)).copy()
        return Shared(value, mac)

    # -- received elements -------------------------------------------------
    def elements_from(self, peer: int, data: bytes, count: int, label: str) -> Array:
        """``peer``'s message as ``count`` domain elements, or :class:`NonCanonicalError` blaming it.

        Every element that crosses a channel goes through here: a wrong length or a word
        ``>= p`` is the sender's own authenticated message, so the sender is named.
        """
        if len(data) != 8 * count:
            raise NonCanonicalError("element-format", [label], f"party {peer} sent {len(data)} bytes, expected {count} "
                                    f"elements ({8 * count} bytes)", blamed_parties=[peer])
        arr = self.xp.asarray(np.frombuffer(data, dtype=np.uint64))
        if not self.domain.is_canonical(arr):
            raise NonCanonicalError("canonical-element", [label], f"party {peer} sent a value that is not a canonical element "
                                    f"of {self.domain.name} (a word >= the modulus)", blamed_parties=[peer])
        return arr

    # -- opening -----------------------------------------------------------
    async def _receive_reachable(self, tag: str, channel: Channel | None = None) -> dict[int, bytes]:
        """Every live peer's reply, skipping peers whose link failed (at least t must answer)."""
        chan = self.channel if channel is None else channel
        results = await asyncio.gather(
            *(chan.receive_many(tag, [p]) for p in self.peers), return_exceptions=True
        )
        got: dict[int, bytes] = {}
        for peer, res in zip(self.peers, results, strict=True):
            if isinstance(res, ChannelError):
                continue  # a lost party: the opening is still determined by the others
            if isinstance(res, BaseException):
                raise res
            got.update(res)
        if len(got) < self.scheme.threshold:
            missing = sorted(set(self.peers) - set(got))
            # A lost party like any other (the session decides whether survivors can go on), not an engine error.
            raise LostPartyError(missing[0], f"only {len(got)} peers answered {tag!r}; {self.scheme.threshold} needed "
                                 f"(no answer from parties {missing})")
        return got

    async def _receive_opening(self, channel: Channel, tag: str) -> dict[int, bytes]:
        if self.scheme.kind == "shamir" and not self.malicious:
            # Robust opening: the first t replies (plus our share) determine the value, so a
            # slow or lost party does not block. Malicious mode waits for every reachable
            # party, to check that all shares lie on one polynomial.
            return await receive_first(channel, tag, self.peers, self.scheme.threshold)
        if self.scheme.kind == "shamir":
            return await self._receive_reachable(tag, channel)
        return await channel.receive_many(tag, self.peers)

    async def open(self, xs: Sequence[Shared], label: str = "open") -> list[Array]:
        """Open ``xs`` in one round; in malicious mode the opening is queued for a MAC check."""
        xp = self.xp
        flat = xp.concatenate([x.value.reshape(-1) for x in xs]) if len(xs) > 1 else xs[0].value.reshape(-1)
        tag = self.next_tag(label)
        payload = payload_for(self.channel, flat)
        nbytes = int(flat.size) * 8
        if nbytes <= self.max_message_bytes:
            await self.channel.send_many(tag, {p: payload for p in self.peers})
            received = await self._receive_opening(self.channel, tag)
        else:
            chan = _PartedChannel(self.channel, tag, nbytes, self.max_message_bytes)
            receiving = asyncio.ensure_future(self._receive_opening(chan, tag))
            try:
                await chan.send_many(tag, {p: payload for p in self.peers})
                received = await receiving
            finally:
                if not receiving.done():
                    receiving.cancel()
                    await asyncio.gather(receiving, return_exceptions=True)
        self.rounds_used += 1
        shares: dict[int, Array] = {self.party: flat}
        for peer, data in sorted(received.items()):
            shares[peer] = self.elements_from(peer, data, int(flat.size), tag)
        if self.scheme.kind == "additive":
            opened = self.scheme.reconstruct(self.domain, shares)
        else:
            try:
                opened = self.scheme.reconstruct(self.domain, shares, check=self.malicious)
            except InconsistentSharesError as exc:
                raise MacCheckError("opening-consistency", [tag], str(exc)) from exc
        if self.malicious:
            macs = xp.concatenate([x.mac.reshape(-1) for x in xs if x.mac is not None])
            if macs.shape != flat.shape:
                raise ValueError("malicious opening of a share without its MAC share")
            self.pending.append(OpenedRecord(tag, opened, macs))
        out: list[Array] = []
        start = 0
        for x in xs:
            out.append(opened[start : start + x.size].reshape(x.shape))
            start += x.size
        return out
