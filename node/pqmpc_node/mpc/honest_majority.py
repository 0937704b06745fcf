"""Dealer-free preprocessing for honest-majority Shamir sessions (2t < n): the parties make it together.

No dealer, no operator: every random value comes from pseudo-random secret sharing with
keys the parties agree among themselves (:mod:`pqmpc_node.mpc.prss`), and every product
from Damgård-Nielsen degree reduction. Material is made when the computation asks for
it, in exactly the requested size, so a node never holds more than the current request.

Sources and steps.

* **Random sharings** [CDI05]: ``[r]`` by PRSS, no messages.
* **Products** (:meth:`HonestMajorityProvider._reduce`), Damgård-Nielsen [DN07] with the
  double sharing made by PRSS/PRZS (as in Chida et al., CRYPTO 2018, section 2):
  1. each party multiplies its shares locally: a degree-2t sharing of ``x*y``;
  2. it subtracts ``[r]_t + [0]_2t`` (a fresh double sharing of a random ``r``) and sends
     the result to every live party;
  3. every party interpolates ``d = xy - r`` from all the degree-2t shares it received
     (at least 2t + 1; more are checked to lie on one degree-2t polynomial) and sets
     ``[xy]_t = d + [r]_t``.
  Deviation from DN07, and why it is safe: DN07 sends the masked shares to one *king*,
  which reconstructs and sends ``d`` back (2 rounds, O(n) messages). Here every party
  reconstructs ``d`` itself (1 round, O(n^2) messages; n <= 7 in this system). ``d`` is
  the same public value either way, masked by the uniform ``r``; the high coefficients
  of the degree-2t polynomial are masked by the PRZS. A cheater can only shift what some
  honest parties reconstruct, which is an *additive attack* (Genkin-Ishai-Prabhakaran-
  Sahai-Tromer, STOC 2014; Chida et al., lemma 2.x): the product comes out as
  ``xy + e`` for an ``e`` the cheater fixed without knowing any secret, or the honest
  parties' shares are inconsistent and the next opening's degree check fails.
* **MACs** (malicious sessions): the MAC key ``[alpha]`` is a PRSS sharing; the MAC of a
  value ``[x]`` is the product ``[alpha * x]`` made as above. Its additive error, if any,
  is fixed before and independently of ``alpha``.
* **Verified triples** (:meth:`triples`), the SPDZ *sacrifice* [DPSZ12, section 3; KOS16,
  "sacrifice"] with this engine's MAC-checked, degree-checked openings:
  1. PRSS ``[a], [b], [f]``; products ``[c] = [a][b]``, ``[h] = [f][b]`` and MACs of all
     five (two rounds); the spent triple ``(f, b, h)`` shares ``b`` with the checked one
     (as SPDZ2k's sacrifice does), which saves a sharing, a MAC and an opening;
  2. a public coin ``s`` by commit-and-reveal, drawn after step 1 fixed every error;
  3. open ``rho = s[a] - [f]``, then ``v = s[c] - [h] - rho[b] = s(c - ab) - (h - fb)``;
  4. check every MAC of every opening so far (:func:`~pqmpc_node.mpc.mac.check_macs`)
     and that ``v = 0``; ``(a, b, c)`` is returned, ``(f, b, h)`` is spent.
  A wrong ``c`` passes only if ``s`` hits one value (1/p), and an opening shifted to hide
  it needs a MAC error equal to ``alpha`` times the shift (1/p, alpha is never opened):
  a bad triple is caught except with probability 2/p < 2^-59.
* **Matrix triples** (:meth:`matrix_triple`): the same with matrix products
  (the local product of two degree-t share matrices is a degree-2t sharing of the
  product), a spent triple ``(F, G, H)`` of its own, ``sigma = B - G`` opened too and
  ``v = sC - H - rho G - F sigma - rho sigma``.
* **Random bits** (:meth:`edabits`), square-and-open [DFK+06, section 5 (TCC 2006)] over
  F_p, p = 2^61 - 1 = 3 mod 4: with a verified triple ``(a, b, c)`` open ``a - b`` (b is
  uniform, so it reveals nothing), ``[a^2] = [c] + (a - b)[a]``, open ``a^2``; if it is 0
  (probability 1/p) the element is drawn again; ``s = sqrt(a^2)`` (the power
  ``(p + 1)/4``), and ``[bit] = ([a]/s + 1)/2`` is 0 or 1 uniformly (the sign of ``a`` is
  hidden). Opened values are MAC-checked before the bits are returned.
* **Input masks** (:meth:`input_mask`): the ``a`` of a verified triple; every live party
  sends its share to the owner, which interpolates and checks that all shares lie on one
  degree-t polynomial (at least 2t + 1 live parties, so t wrong shares cannot agree).

Liveness. Degree reduction needs 2t + 1 shares: the provider refuses to start with fewer
live parties (:class:`TooFewPartiesError`), and a party lost mid-way raises
:class:`~pqmpc_node.mpc.channel.LostPartyError`, so the session restarts without it only
where n >= 2t + 2.

Trust. Nothing here comes from or goes to the operator: keys are drawn by the parties,
travel only on the PQ links between them, and live in this process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pqmpc_node.mpc.channel import Channel, LostPartyError
from pqmpc_node.mpc.context import MPCContext, encode_payload
from pqmpc_node.mpc.derived import (
    MAX_BATCH,
    BitCheckError,
    TripleCheckError,
    TriplePool,
    sacrifice_shared_b,
    sacrifice_verdict,
    square_and_open_bits,
)
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import MacCheckError
from pqmpc_node.mpc.mac import toss_coins
from pqmpc_node.mpc.preprocessing import InputMask, Triple, TruncationPair
from pqmpc_node.mpc.prss import PrssKeys, agree_keys
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import InconsistentSharesError, ShamirScheme


__all__ = ["MAX_BATCH", "HonestMajorityProvider", "ProviderStats", "TooFewPartiesError", "TripleCheckError", "BitCheckError"]


class TooFewPartiesError(LostPartyError):
    """Fewer than 2t + 1 live parties: degree reduction, and so this provider, cannot run."""


@dataclass
class ProviderStats:
    """What this provider made (public counts; for metrics and benchmarks)."""

    reduced_elements: int = 0
    triples: int = 0
    bits: int = 0
    rounds: int = 0


@dataclass
class HonestMajorityProvider:
    """This party's dealer-free material (module docstring); bind it to its context before use."""

    domain: Domain
    scheme: ShamirScheme
    keys: PrssKeys = field(repr=False)
    authenticated: bool
    stats: ProviderStats = field(default_factory=ProviderStats)
    _alpha: Array | None = field(default=None, repr=False)
    _ctx: MPCContext | None = field(default=None, repr=False)
    _pool: TriplePool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.scheme.honest_majority:
            raise ValueError(f"the honest-majority provider needs 2t < n, got n={self.scheme.n}, t={self.scheme.t}")
        if self.authenticated:
            self._alpha = self.keys.random(self.domain, (1,))

    @classmethod
    async def create(cls, channel: Channel, *, domain: Domain, scheme: ShamirScheme, live: Sequence[int],
                     session: str, authenticated: bool) -> HonestMajorityProvider:
        """Agree this attempt's PRSS keys with the live parties, then make the MAC key share."""
        need = 2 * scheme.t + 1
        if len(live) < need:
            missing = sorted(set(range(scheme.n)) - set(live))
            raise TooFewPartiesError(missing[0] if missing else channel.party,
                                     f"only {len(live)} of {scheme.n} parties are live; dealer-free multiplication "
                                     f"(degree reduction) needs 2t + 1 = {need}")
        keys = await agree_keys(channel, party=channel.party, t=scheme.t, live=live, session=session)
        return cls(domain, scheme, keys, authenticated)

    def bind(self, ctx: MPCContext) -> None:
        """Use ``ctx``'s channel, coins and MAC checks (the context that took this provider)."""
        if ctx.provider is not self:
            raise ValueError("bind the provider to the context that uses it")
        self._ctx = ctx
        self._pool = TriplePool(lambda count: self._make_triples((count,)), ctx.concat)

    @property
    def ctx(self) -> MPCContext:
        if self._ctx is None:
            raise RuntimeError("HonestMajorityProvider.bind(ctx) was not called")
        return self._ctx

    def mac_key_share(self) -> Array | None:
        return self._alpha

    # -- building blocks ----------------------------------------------------------
    def _random(self, shape: tuple[int, ...]) -> Array:
        return self.keys.random(self.domain, shape)

    async def _reduce(self, products: Sequence[Array], label: str) -> list[Array]:
        """Degree reduction of local degree-2t products, all in one round (module docstring, steps 1-3)."""
        ctx, d = self.ctx, self.domain
        flat = ctx.xp.concatenate([p.reshape(-1) for p in products]) if len(products) > 1 else products[0].reshape(-1)
        total = int(flat.size)
        out = d.zeros((total,))
        chunk = max(1, ctx.max_message_bytes // 8)
        for start in range(0, total, chunk):
            part = flat[start:start + chunk]
            r = self.keys.random(d, (int(part.size),))
            masked = d.sub(d.sub(part, r), self.keys.zero(d, (int(part.size),)))
            opened = await self._open_2t(masked, label)
            out[start:start + int(part.size)] = d.add(opened, r)
        self.stats.reduced_elements += total
        results: list[Array] = []
        offset = 0
        for p in products:
            results.append(out[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        return results

    async def _open_2t(self, share: Array, label: str) -> Array:
        """Send this degree-2t share to every live party and interpolate ``d`` (checked when redundant)."""
        ctx = self.ctx
        tag = ctx.next_tag(f"dn/{label}")
        payload = encode_payload(share)
        await ctx.channel.send_many(tag, {p: payload for p in ctx.peers})
        received = await ctx._receive_reachable(tag)
        self.stats.rounds += 1
        need = 2 * self.scheme.t
        if len(received) < need:
            lost = sorted(set(ctx.peers) - set(received))
            raise LostPartyError(lost[0], f"only {len(received) + 1} parties answered degree reduction {tag!r}; "
                                 f"2t + 1 = {need + 1} are needed (no answer from parties {lost})")
        shares = {ctx.party: share}
        for peer, data in sorted(received.items()):
            shares[peer] = ctx.elements_from(peer, data, int(share.size), tag)
        try:
            return ShamirScheme(self.scheme.n, 2 * self.scheme.t).reconstruct(self.domain, shares, check=True)
        except InconsistentSharesError as exc:
            raise MacCheckError("degree-reduction", [tag], str(exc)) from exc

    async def _authenticated(self, values: Sequence[Array], products: Sequence[Array], label: str) -> list[Shared]:
        """``values`` (random, no MAC yet) and local ``products`` reduced; MACs of the values made alongside."""
        if self._alpha is None:
            reduced = await self._reduce(list(products), label) if products else []
            return [Shared(v, None) for v in values] + [Shared(p, None) for p in reduced]
        d, alpha = self.domain, self._alpha
        macs_and_products = await self._reduce([*(d.mul(v, alpha) for v in values), *products], label)
        macs, reduced = macs_and_products[:len(values)], macs_and_products[len(values):]
        reduced_macs = await self._reduce([d.mul(p, alpha) for p in reduced], f"{label}-mac") if reduced else []
        return ([Shared(v, m) for v, m in zip(values, macs, strict=True)]
                + [Shared(p, m) for p, m in zip(reduced, reduced_macs, strict=True)])

    async def _coin(self, label: str) -> Array:
        return await toss_coins(self.ctx, label, 1)

    # -- material -----------------------------------------------------------------
    async def triples(self, shape: tuple[int, ...]) -> Triple:
        """Verified elementwise triples (module docstring, "Verified triples"), served from a bounded
        pool (:class:`~pqmpc_node.mpc.derived.TriplePool`)."""
        if self._pool is None:
            raise RuntimeError("HonestMajorityProvider.bind(ctx) was not called")
        return await self._pool.take(shape)

    async def _make_triples(self, shape: tuple[int, ...]) -> Triple:
        """Make and verify ``shape`` fresh triples."""
        d = self.domain
        a, b = self._random(shape), self._random(shape)
        if not self.authenticated:
            (c,) = await self._reduce([d.mul(a, b)], "triple")
            self.stats.triples += math.prod(shape)
            return Triple(Shared(a, None), Shared(b, None), Shared(c, None))
        f = self._random(shape)  # the spent triple (f, b, h = f*b) shares b with the checked one
        sa, sb, sf, sc, sh = await self._authenticated([a, b, f], [d.mul(a, b), d.mul(f, b)], "triple")
        await sacrifice_shared_b(self.ctx, sa, sb, sc, sf, sh, blame="degree reduction")
        self.stats.triples += math.prod(shape)
        return Triple(sa, sb, sc)

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """A verified matrix triple ``C = A @ B`` (module docstring, "Matrix triples")."""
        d = self.domain
        if left[1] != right[0]:
            raise ValueError(f"matrix triple shapes {left} @ {right} do not chain")
        a, b = self._random(left), self._random(right)
        if not self.authenticated:
            (c,) = await self._reduce([d.matmul(a, b)], "matrix-triple")
            return Triple(Shared(a, None), Shared(b, None), Shared(c, None))
        f, g = self._random(left), self._random(right)
        sa, sb, sf, sg, sc, sh = await self._authenticated([a, b, f, g], [d.matmul(a, b), d.matmul(f, g)],
                                                           "matrix-triple")
        await self._sacrifice(sa, sb, sc, sf, sg, sh, matrix=True)
        return Triple(sa, sb, sc)

    async def _sacrifice(self, a: Shared, b: Shared, c: Shared, f: Shared, g: Shared, h: Shared, *,
                         matrix: bool) -> None:
        """Steps 2-4 of "Verified triples": check ``(a, b, c)`` by spending ``(f, g, h)``."""
        ctx, d = self.ctx, self.domain
        (s,) = (await self._coin("sacrifice-coin")).reshape(1)[:1]
        rho_s, sigma_s = ctx.sub(ctx.mul_public(a, s), f), ctx.sub(b, g)
        rho, sigma = await ctx.open([rho_s, sigma_s], "sacrifice")
        if matrix:
            v = ctx.sub(ctx.sub(ctx.mul_public(c, s), h),
                        ctx.add(ctx.matmul_public_right(f, sigma), ctx.matmul_public_left(rho, g)))
            v = ctx.add_public(v, d.neg(d.matmul(rho, sigma)))
        else:
            v = ctx.sub(ctx.sub(ctx.mul_public(c, s), h), ctx.add(ctx.mul_public(f, sigma), ctx.mul_public(g, rho)))
            v = ctx.add_public(v, d.neg(d.mul(rho, sigma)))
        (opened,) = await ctx.open([v], "sacrifice-check")
        await sacrifice_verdict(ctx, opened, blame="degree reduction")

    async def edabits(self, shape: tuple[int, ...]) -> Shared:
        """Random bits by square-and-open (module docstring, "Random bits"), shape ``(bits, *shape)``."""
        bits = await square_and_open_bits(self.ctx, self.triples, shape)
        self.stats.bits += bits.size
        return bits

    async def truncation_pairs(self, shape: tuple[int, ...], frac_bits: int) -> TruncationPair:
        raise ValueError("truncation pairs belong to the ring; honest-majority sessions compute over F_p")

    async def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        """A verified random ``[r]``, opened to ``owner`` only (module docstring, "Input masks")."""
        ctx = self.ctx
        mask = (await self.triples(shape)).a
        tag = ctx.next_tag(f"mask/{owner}")
        if owner not in ctx.live:
            return InputMask(mask, None)  # a party missing from this attempt: the mask is drawn, never used
        if ctx.party != owner:
            await ctx.channel.send_many(tag, {owner: encode_payload(mask.value)})
            return InputMask(mask, None)
        received = await ctx._receive_reachable(tag)
        if len(received) < 2 * self.scheme.t:
            lost = sorted(set(ctx.peers) - set(received))
            raise LostPartyError(lost[0], f"only {len(received) + 1} parties sent input-mask shares (no answer from "
                                 f"parties {lost})")
        shares = {ctx.party: mask.value.reshape(-1)}
        for peer, data in sorted(received.items()):
            shares[peer] = ctx.elements_from(peer, data, int(mask.value.size), tag)
        try:
            clear = self.scheme.reconstruct(self.domain, shares, check=True)
        except InconsistentSharesError as exc:
            raise MacCheckError("input-mask-consistency", [tag], str(exc)) from exc
        return InputMask(mask, clear.reshape(shape))


