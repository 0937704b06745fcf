"""The ``ot`` provider: dealer-free preprocessing for additive (dishonest-majority) sessions.

No dealer and no honest majority: every pair of parties makes its correlations with
oblivious transfer. A little post-quantum public-key work at the start (base OTs from
ML-KEM-768, :mod:`.base`) is stretched by OT extension (:mod:`.extension`, symmetric
primitives only, so it stays post-quantum) into as many random OTs as the computation
consumes, which Gilboa's OLE and MASCOT's COPE (:mod:`.gilboa`) turn into Beaver
triples, MACs and random bits. Nothing comes from or goes to the operator.

Sources and steps.

* **Set-up** (:meth:`OtProvider.create`), for every other live party, concurrently:
  1. two IKNP instances, one per direction: as the extension *sender* this party draws
     ``Delta`` and runs :data:`~.base.BASE_OT_COUNT` base OTs as their *receiver* with
     ``Delta``'s bits; as the extension *receiver* it runs them as the base-OT *sender*;
  2. malicious sessions: this party draws its MAC-key share ``alpha_i`` (uniform in F_p)
     and takes 61 extended OTs with ``alpha_i``'s bits as choices: the seeds of COPE
     under its key; the peer takes the 61 seed pairs of the same OTs.
* **Semi-honest triples** over Z_2^64 (Gilboa, [KOS16] section 4 without the checks):
  each party draws ``a_i, b_i``; for every ordered pair ``(i, j)`` an OLE with ``i`` as
  receiver (choice bits: ``a_i``'s 64 bits) and ``j`` as sender (``b_j``) gives shares of
  ``a_i b_j``; ``c_i = a_i b_i + `` the party's shares of every cross product.
* **Authenticated triples** over F_p, MASCOT [KOS16, figure 9 (Pi_Triple)]:
  1. *Multiply*: each party draws ``a_i`` in F_p^tau (:data:`TAU` = 4) and ``b_i``; OLEs as
     above (61 choice bits per element of ``a_i``) give ``[c_k] = [a_k b]``, k < tau;
  2. *Combine*: public coins ``r, r^`` in F_p^tau by commit-and-reveal, drawn after the
     OLEs; ``a = sum r_k a_k``, ``c = sum r_k c_k`` and the spare ``f = sum r^_k a_k``,
     ``h = sum r^_k c_k`` (so ``h = f b``);
  3. *Authenticate* ``a, b, c, f, h`` (:meth:`OtProvider._authenticate`): every party's
     share ``x_i`` gets ``alpha_i x_i`` plus COPE shares of ``alpha_j x_i`` with every
     ``j`` [KOS16, figure 7 (Pi_[[.]])]; the MAC shares add up to ``alpha * x``;
  4. *Sacrifice* (:func:`~pqmpc_node.mpc.derived.sacrifice_shared_b`): open
     ``rho = s a - f`` and ``s c - h - rho b`` for a public coin ``s``, MAC-check every
     opening, and require 0. An error fixed before the coin that no honest secret bit
     switches off (a wrong share of ``c`` or ``h``; the same shift ``e`` in every row of
     a COPE message, a MAC error ``alpha_i e``) survives with probability at most
     2/p < 2^-59. The
     MASCOT paper's own check of step 3 (open a random combination of the new values and
     check its MAC) is covered by these openings, whose MACs are checked with fresh
     coefficients before any triple is used.
  *Selective failures* (what the checks cannot rule out, as in MASCOT): an error that an
  honest party's secret bit selects passes exactly when that bit is 0, so the cheater
  learns the bit at the price of a 1/2 chance of being caught. A wrong OLE correction
  for bit ``j`` of an honest ``a_k`` probes that bit (the reason for ``tau``, below); a
  COPE message shifted in row ``j`` only shifts the honest key holder's MAC share by
  ``2^j alpha_j e``, so it probes bit ``j`` of the honest MAC-key share (MASCOT's
  F_[[.]] allows this leak: after ``l`` probes survived, with probability ``2^-l``, a
  forgery still needs the other ``61 - l`` bits, so it succeeds with probability at
  most 2^-61 overall). Both are pinned by ``tests/adversary/test_review_ot_*.py``.
  Why ``tau = 4``: the leak is a set ``S`` of values of ``(a_k)`` (244 bits) that the
  cheater fixes with its OLE corrections, before the coins ``r, r^``; it survives with
  probability ``2^-l = |S| / p^tau``. The sacrifice opens
  ``rho = s a - f``, a public linear function of ``(a_k)``, so what must look uniform is
  the *pair* ``(a, f) = (<r, (a_k)>, <r^, (a_k)>)``: a universal hash of 244 bits to
  122. By the leftover hash lemma, given survival it is within ``2^-((244 - l - 122)/2)``
  of uniform, so the cheater's advantage is at most
  ``2^-l * 2^-((122 - l)/2) = 2^-((122 + l)/2) <= 2^-61``. (Counting ``a`` alone, 61
  output bits, would ignore the opened ``rho``.) With ``tau = 3`` the hash would map 183
  bits to 122 and the bound would be only ``2^-((61 + l)/2)``, about 2^-30; MASCOT's
  ``N = 3`` is for 128-bit fields, where it gives ``2^-((128 + l)/2)``. This sketch
  takes ``S`` fixed before the coins; a cheater that also shifts its own shares of ``c``
  and ``h`` after seeing them bets on the hashed errors, so its ``S`` depends on the
  coins: MASCOT's simulation proof [KOS16, section 5] covers that case, this note does not.
* **Random bits**: malicious F_p sessions by square-and-open with verified triples
  (:func:`~pqmpc_node.mpc.derived.square_and_open_bits`); semi-honest Z_2^64 sessions as
  the XOR of one private bit per party, ``[b] <- [b] + [beta_k] - 2[b beta_k]`` for each
  party ``k`` in turn, where ``[b beta_k]`` needs one OT per other party (an OLE on one
  bit, with ``beta_k`` as the choice).
* **Truncation pairs** (ring): 64 random bits ``r_i``; ``r = sum 2^i r_i``,
  ``msb = r_63``, ``(r mod 2^63) >> f = sum_{f <= i < 63} 2^(i-f) r_i``.
* **Matrix triples**: from elementwise triples by Beaver's trick on random ``[A]``,
  ``[B]``: one triple per scalar product ``A[r,s] B[s,c]``, summed over ``s``.
* **Input masks**: a random ``[r]`` (the ``a`` of a verified triple when authenticated)
  whose shares every party sends to the owner, which adds them. A wrong share shifts
  the owner's input; the owner-keyed input check (:mod:`pqmpc_node.mpc.inputs`) catches
  that in malicious sessions.

Liveness: additive sharing needs every party, so a lost party ends the attempt with
:class:`~pqmpc_node.mpc.channel.LostPartyError` and the session fails (inputs kept).

Memory: every request is made in chunks of at most :data:`OLE_CHUNK_OTS` OTs per pair
and direction, from a pool of at most :data:`~pqmpc_node.mpc.derived.MAX_BATCH` triples
beyond the request, so a node never holds more than a bounded window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pqmpc_node.mpc.channel import Channel, LostPartyError
from pqmpc_node.mpc.context import MPCContext, encode_payload
from pqmpc_node.mpc.derived import TriplePool, sacrifice_shared_b, square_and_open_bits
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.mac import toss_coins
from pqmpc_node.mpc.ot.base import BASE_OT_COUNT, base_ot_receive, base_ot_send
from pqmpc_node.mpc.ot.extension import OtExtensionReceiver, OtExtensionSender, delta_bits
from pqmpc_node.mpc.ot.gilboa import (
    CopeKeyHolder,
    CopeValueHolder,
    bit_decompose,
    ole_receiver_share,
    ole_sender,
    ot_elements,
)
from pqmpc_node.mpc.preprocessing import InputMask, Triple, TruncationPair
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import AdditiveScheme

__all__ = ["OLE_CHUNK_OTS", "TAU", "OtProvider", "OtProviderStats"]

TAU = 4
"""Products combined into one MASCOT triple (module docstring, "Why tau = 4")."""

OLE_CHUNK_OTS = 1 << 20
"""The most OTs one OLE message covers (per pair and direction): bounds memory and message sizes."""

COPE_CHUNK = 1 << 15
"""The most values one COPE message authenticates (61 elements each: 16 MiB)."""

FIELD_BITS = 61


@dataclass
class OtProviderStats:
    """What this provider made (public counts; for metrics and benchmarks)."""

    base_ots: int = 0
    extended_ots: int = 0
    triples: int = 0
    bits: int = 0
    base_ot_seconds: list[float] = field(default_factory=list)
    """Wall time of the base OTs with each peer (both directions at once)."""


@dataclass
class _Pair:
    """This party's OT state with one peer (never printed)."""

    sender: OtExtensionSender = field(repr=False)
    """This party is the extension sender (holds Delta); the peer receives."""
    receiver: OtExtensionReceiver = field(repr=False)
    cope_out: CopeValueHolder | None = field(default=None, repr=False)
    """MACs of this party's values under the peer's key share."""
    cope_in: CopeKeyHolder | None = field(default=None, repr=False)
    """MACs of the peer's values under this party's key share."""


def _pair_context(session: str, sender: int, receiver: int) -> bytes:
    return f"pqmpc/ot/v1/{session}/{sender}>{receiver}".encode()


def _seed(words: np.ndarray[Any, np.dtype[np.uint64]]) -> bytes:
    return np.ascontiguousarray(words, dtype=np.uint64).tobytes()


@dataclass
class OtProvider:
    """This party's dealer-free material for an additive session (module docstring); bind it to its context."""

    domain: Domain
    scheme: AdditiveScheme
    authenticated: bool
    party: int = 0
    live: tuple[int, ...] = ()
    session: str = ""
    stats: OtProviderStats = field(default_factory=OtProviderStats)
    _pairs: dict[int, _Pair] = field(default_factory=dict, repr=False)
    _alpha: Array | None = field(default=None, repr=False)
    _rng: AesCtrRandom = field(default_factory=AesCtrRandom.from_os, repr=False)
    _ctx: MPCContext | None = field(default=None, repr=False)
    _pool: TriplePool | None = field(default=None, repr=False)
    _step: int = 0

    @classmethod
    async def create(cls, channel: Channel, *, domain: Domain, scheme: AdditiveScheme, live: Sequence[int],
                     session: str, authenticated: bool) -> OtProvider:
        """Set-up (module docstring): base OTs and the COPE seeds with every other live party."""
        if sorted(live) != list(range(scheme.n)):
            missing = sorted(set(range(scheme.n)) - set(live))
            raise LostPartyError(missing[0] if missing else channel.party,
                                 "an additive session needs every party; dealer-free OT preprocessing cannot "
                                 f"run without parties {missing}")
        provider = cls(domain, scheme, authenticated, party=channel.party, live=tuple(live), session=session)
        if authenticated:
            provider._alpha = provider._random((1,))
        peers = [p for p in live if p != channel.party]
        pairs = await asyncio.gather(*(provider._setup_pair(channel, peer, session) for peer in peers))
        provider._pairs = dict(zip(peers, pairs, strict=True))
        return provider

    async def _setup_pair(self, channel: Channel, peer: int, session: str) -> _Pair:
        me = self.party
        delta = self._rng.bytes(16)
        out_ctx, in_ctx = _pair_context(session, me, peer), _pair_context(session, peer, me)
        started = time.perf_counter()
        chosen, pairs = await asyncio.gather(
            base_ot_receive(channel, peer, f"ot-setup/{session}/{me}>{peer}:base", delta_bits(delta), context=out_ctx),
            base_ot_send(channel, peer, f"ot-setup/{session}/{peer}>{me}:base", BASE_OT_COUNT, context=in_ctx))
        self.stats.base_ot_seconds.append(time.perf_counter() - started)
        self.stats.base_ots += 2 * BASE_OT_COUNT
        pair = _Pair(OtExtensionSender(delta, chosen, context=out_ctx), OtExtensionReceiver(pairs, context=in_ctx))
        if self._alpha is not None:
            alpha_bits = bit_decompose(self._alpha, FIELD_BITS)[0]
            (m0, m1), mine = await asyncio.gather(
                pair.sender.extend(channel, peer, f"ot-setup/{session}/{me}>{peer}:cope-seeds", FIELD_BITS),
                pair.receiver.extend(channel, peer, f"ot-setup/{session}/{peer}>{me}:cope-seeds", alpha_bits))
            self.stats.extended_ots += 2 * FIELD_BITS
            pair.cope_out = CopeValueHolder(self.domain, [(_seed(m0[k]), _seed(m1[k])) for k in range(FIELD_BITS)],
                                            context=out_ctx)
            pair.cope_in = CopeKeyHolder(self.domain, alpha_bits, [_seed(mine[k]) for k in range(FIELD_BITS)],
                                         context=in_ctx)
        return pair

    def bind(self, ctx: MPCContext) -> None:
        """Use ``ctx``'s channel, coins and MAC checks (the context that took this provider)."""
        if ctx.provider is not self:
            raise ValueError("bind the provider to the context that uses it")
        self._ctx = ctx
        self._pool = TriplePool(self._make_triples, ctx.concat)

    @property
    def ctx(self) -> MPCContext:
        if self._ctx is None:
            raise RuntimeError("OtProvider.bind(ctx) was not called")
        return self._ctx

    def mac_key_share(self) -> Array | None:
        return self._alpha

    # -- building blocks ----------------------------------------------------------
    def _random(self, shape: tuple[int, ...]) -> Array:
        return self.domain.from_words(self._rng.words(math.prod(shape)).reshape(shape))

    def _tag(self, label: str) -> str:
        """A fresh provider step (the same at every party: all make the same requests in order).

        Messages of the step between ``a`` and ``b`` go under
        ``f"{session}/ot{step}/{a}>{b}/{part}:{label}/..."`` (unique on a channel several sessions share).
        """
        self._step += 1
        return f"{self.session}/ot{self._step}|{label}"

    @staticmethod
    def _sub(tag: str, sender: int, receiver: int, part: int, what: str) -> str:
        step, label = tag.rsplit("|", 1)
        return f"{step}/{sender}>{receiver}/{part}:{label}/{what}"

    async def _ole_receive(self, peer: int, bits: np.ndarray[Any, np.dtype[np.uint8]], tag: str) -> Array:
        """This party's share of ``x * y`` (Gilboa; ``bits`` are ``x``'s, shape ``(N, ell)``; the peer holds ``y``)."""
        ctx, d = self.ctx, self.domain
        count, ell = bits.shape
        out = d.zeros((count,))
        step = max(1, OLE_CHUNK_OTS // ell)
        for part, lo in enumerate(range(0, count, step)):
            chunk = bits[lo:lo + step]
            ext, corr = (self._sub(tag, peer, self.party, part, what) for what in ("ext", "corr"))
            chosen = await self._pairs[peer].receiver.extend(ctx.channel, peer, ext, chunk.reshape(-1))
            received = await ctx.channel.receive_many(corr, [peer])
            corrections = ctx.elements_from(peer, received[peer], int(chunk.size), corr)
            n = int(chunk.shape[0])
            out[lo:lo + n] = ole_receiver_share(d, ot_elements(d, chosen).reshape(n, ell), chunk,
                                                corrections.reshape(n, ell))
            self.stats.extended_ots += int(chunk.size)
        return out

    async def _ole_send(self, peer: int, y: Array, ell: int, tag: str) -> Array:
        """This party's share of ``x * y`` (Gilboa; the peer holds ``x`` and chooses by its bits)."""
        ctx, d = self.ctx, self.domain
        count = int(y.size)
        out = d.zeros((count,))
        step = max(1, OLE_CHUNK_OTS // ell)
        for part, lo in enumerate(range(0, count, step)):
            chunk = y[lo:lo + step]
            n = int(chunk.size)
            ext, corr = (self._sub(tag, self.party, peer, part, what) for what in ("ext", "corr"))
            m0, m1 = await self._pairs[peer].sender.extend(ctx.channel, peer, ext, n * ell)
            corrections, share = ole_sender(d, ot_elements(d, m0).reshape(n, ell), ot_elements(d, m1).reshape(n, ell),
                                            chunk, ell)
            await ctx.channel.send_many(corr, {peer: encode_payload(corrections)})
            out[lo:lo + n] = share
        return out

    async def _cross_products(self, x_bits: np.ndarray[Any, np.dtype[np.uint8]], y: Array, label: str) -> Array:
        """This party's share of ``sum_{i != j} x_i y_j`` over every ordered pair (``x_i``'s bits, ``y_j``)."""
        tag = self._tag(label)
        ell = int(x_bits.shape[1])
        jobs: list[Awaitable[Array]] = []
        for peer in self._pairs:
            jobs.append(self._ole_receive(peer, x_bits, tag))
            jobs.append(self._ole_send(peer, y, ell, tag))
        d = self.domain
        total = d.zeros((int(y.size),))
        for share in await asyncio.gather(*jobs):
            total = d.add(total, share)
        return total

    async def _authenticate(self, values: Array) -> Array:
        """MAC shares of the shared vector whose share here is ``values`` (module docstring, step 3)."""
        ctx, d = self.ctx, self.domain
        if self._alpha is None:
            raise RuntimeError("MACs need the malicious (authenticated) provider")
        flat = values.reshape(-1)
        macs = d.mul(flat, self._alpha)
        tag = self._tag("cope")
        for part, lo in enumerate(range(0, int(flat.size), COPE_CHUNK)):
            chunk = flat[lo:lo + COPE_CHUNK]
            n = int(chunk.size)

            async def towards(peer: int, chunk: Array = chunk, part: int = part) -> Array:
                cope = self._pairs[peer].cope_out
                if cope is None:
                    raise RuntimeError("COPE was not set up")
                u, share = cope.extend(chunk)
                await ctx.channel.send_many(self._sub(tag, self.party, peer, part, "u"), {peer: encode_payload(u)})
                return share

            async def under_mine(peer: int, n: int = n, part: int = part) -> Array:
                cope = self._pairs[peer].cope_in
                if cope is None:
                    raise RuntimeError("COPE was not set up")
                sub = self._sub(tag, peer, self.party, part, "u")
                received = await ctx.channel.receive_many(sub, [peer])
                u = ctx.elements_from(peer, received[peer], FIELD_BITS * n, sub).reshape(FIELD_BITS, n)
                return cope.extend(u)

            jobs = [job for peer in self._pairs for job in (towards(peer), under_mine(peer))]
            acc = macs[lo:lo + n]
            for share in await asyncio.gather(*jobs):
                acc = d.add(acc, share)
            macs[lo:lo + n] = acc
        return macs.reshape(values.shape)

    # -- material -----------------------------------------------------------------
    async def triples(self, shape: tuple[int, ...]) -> Triple:
        """Elementwise triples (module docstring), served from a bounded pool."""
        if self._pool is None:
            raise RuntimeError("OtProvider.bind(ctx) was not called")
        return await self._pool.take(shape)

    async def _make_triples(self, count: int) -> Triple:
        d = self.domain
        if not self.authenticated:
            a, b = self._random((count,)), self._random((count,))
            cross = await self._cross_products(bit_decompose(a, d.bits), b, "triple")
            self.stats.triples += count
            return Triple(Shared(a), Shared(b), Shared(d.add(d.mul(a, b), cross)))
        a, b = self._random((count, TAU)), self._random((count,))
        cross = await self._cross_products(bit_decompose(a.reshape(-1), FIELD_BITS),
                                           np.repeat(b, TAU), "mascot-multiply")
        c = d.add(d.mul(a, b[:, None]), cross.reshape(count, TAU))
        coins = await toss_coins(self.ctx, "mascot-combine", 2 * TAU)
        r, r_hat = coins[:TAU], coins[TAU:]
        combined = [d.sum(d.mul(v, w[None, :]), axis=1) for w in (r, r_hat) for v in (a, c)]
        values = np.stack([combined[0], b, combined[1], combined[2], combined[3]])  # a, b, c, f, h
        macs = await self._authenticate(values)
        sa, sb, sc, sf, sh = (Shared(values[k], macs[k]) for k in range(5))
        await sacrifice_shared_b(self.ctx, sa, sb, sc, sf, sh, blame="Gilboa multiplication or COPE (OT)")
        self.stats.triples += count
        return Triple(sa, sb, sc)

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """``C = A @ B`` for random ``[A]``, ``[B]`` from elementwise triples (module docstring)."""
        ctx, xp = self.ctx, self.ctx.xp
        (m, k), (k2, n) = left, right
        if k != k2:
            raise ValueError(f"matrix triple shapes {left} @ {right} do not chain")
        a = (await self.triples(left)).a
        b = (await self.triples(right)).a
        t = await self.triples((m, k, n))

        def spread(x: Shared, shape: tuple[int, ...], axis: int) -> Shared:
            def grow(v: Array) -> Array:
                return xp.ascontiguousarray(xp.broadcast_to(xp.expand_dims(v, axis), shape))
            return Shared(grow(x.value), None if x.mac is None else grow(x.mac))

        big_a, big_b = spread(a, (m, k, n), 2), spread(b, (m, k, n), 0)
        eps, delta = await ctx.open([ctx.sub(big_a, t.a), ctx.sub(big_b, t.b)], "matrix-triple")
        d = self.domain
        prod = ctx.add(ctx.add(t.c, ctx.mul_public(t.b, eps)), ctx.mul_public(t.a, delta))
        prod = ctx.add_public(prod, d.mul(eps, delta))
        return Triple(a, b, ctx.sum(prod, axis=1))

    async def edabits(self, shape: tuple[int, ...]) -> Shared:
        """Random bits, shape ``(domain.bits, *shape)`` (module docstring, "Random bits")."""
        d = self.domain
        if self.authenticated:
            bits = await square_and_open_bits(self.ctx, self.triples, shape)
        else:
            bits = Shared(await self._xor_bits(d.bits * math.prod(shape))).reshape(d.bits, *shape)
        self.stats.bits += bits.size
        return bits

    async def _xor_bits(self, count: int) -> Array:
        """Shares of ``count`` random bits, each the XOR of one private bit per party."""
        d = self.domain
        beta = d.asarray(np.unpackbits(np.frombuffer(self._rng.bytes((count + 7) // 8), dtype=np.uint8))[:count]
                         .astype(np.uint64))
        first, *others = self.live
        share = beta.copy() if self.party == first else d.zeros((count,))
        for k in others:
            tag = self._tag(f"xor-bit/{k}")
            if self.party == k:
                parts = await asyncio.gather(*(self._ole_receive(peer, beta.astype(np.uint8)[:, None], tag)
                                               for peer in self._pairs))
                product = d.mul(share, beta)
                for part in parts:
                    product = d.add(product, part)
                share = d.add(share, beta)
            else:
                product = await self._ole_send(k, share, 1, tag)
            share = d.sub(share, d.add(product, product))
        return share

    async def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        """Ring truncation pairs from 64 random bits each (module docstring)."""
        ctx, d = self.ctx, self.domain
        if d.name != "ring64":
            raise ValueError("truncation pairs belong to the ring; authenticated sessions compute over F_p")
        bits = await self.edabits(shape)
        flat = bits.reshape(d.bits, -1)

        def weighted(weights: list[int]) -> Shared:
            w = ctx.xp.asarray(weights, dtype=ctx.xp.uint64)[:, None]
            return ctx.sum(ctx.mul_public(flat, w), axis=0).reshape(*shape)

        r = weighted([1 << i for i in range(64)])
        msb = weighted([0] * 63 + [1])
        trunc = weighted([0] * frac_bits + [1 << (i - frac_bits) for i in range(frac_bits, 63)] + [0])
        return TruncationPair(r, msb, trunc)

    async def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        """A random ``[r]`` whose shares go to ``owner`` (module docstring, "Input masks")."""
        ctx, d = self.ctx, self.domain
        mask = (await self.triples(shape)).a if self.authenticated else Shared(self._random(shape))
        tag = ctx.next_tag(f"mask/{owner}")
        if ctx.party != owner:
            await ctx.channel.send_many(tag, {owner: encode_payload(mask.value)})
            return InputMask(mask, None)
        received = await ctx.channel.receive_many(tag, ctx.peers)  # additive: every party, or the attempt ends
        clear = mask.value.reshape(-1)
        for peer, data in sorted(received.items()):
            clear = d.add(clear, ctx.elements_from(peer, data, int(mask.value.size), tag))
        return InputMask(mask, clear.reshape(shape))
