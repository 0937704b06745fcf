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
  random value ``[r]`` is the product ``[alpha * r]`` made as above, and the pair
  ``([r], [alpha r])`` is kept for the product check like a product (Chida et al. check
  every input wire's MAC too, with its own coefficient: an unchecked MAC error ``e`` on
  ``r`` would turn into ``e * y`` on the MAC of a product ``r * y``, and an abort that
  depends on the secret ``y``).
* **Products with MACs** (:meth:`direct_multiply`, :meth:`direct_matmul`), the compiler of
  Chida, Genkin, Hamada, Ikarashi, Kikuchi, Lindell, Nof, "Fast large-scale
  honest-majority MPC for malicious adversaries" (CRYPTO 2018, section 3; the same idea
  as Damgård-Orlandi-Simkin, CRYPTO 2018): the semi-honest DN multiplication runs twice
  in one round, on the values and on the MACs:
  1. ``[z] = reduce([x][y])`` and ``[alpha z] = reduce([alpha x][y])`` (matrix products
     alike: ``X @ Y`` and ``(alpha X) @ Y``); semi-honest sessions reduce ``[x][y]`` only;
  2. the pair ``([z], [alpha z])`` is kept, unchecked, until the next check (bounded: at
     :data:`MAX_UNVERIFIED` elements the check runs early).
* **Product check** (:meth:`verify_products`, run by every
  :func:`~pqmpc_node.mpc.mac.check_macs`, so before any opening no random mask hides and
  before any output), over every kept pair ``(v_k, m_k)`` (random values and products):
  1. *secret* coefficients: a fresh PRSS sharing ``[rho]``, one element per pair, that no
     party knows (Chida et al. use public coins and then open the MAC key; this engine
     keeps ``alpha`` secret for later checks, so every error chosen after this point must
     be blind to the coefficients);
  2. ``[w] = sum_k [rho_k][v_k]`` and ``[u] = sum_k [rho_k][m_k]``: local inner products
     (degree 2t), both reduced in one round;
  3. ``[alpha w] = reduce([alpha][w])`` and ``[T] = [u] - [alpha w]``, 0 if all is well;
  4. CheckZero (Chida et al., section 2): a fresh PRSS ``[beta]``,
     ``[beta T] = reduce([beta][T])``, open it (degree t, every live share, all on one
     polynomial) and abort unless it is 0. Not a degree-2t opening: with n = 2t + 1 a
     rushing cheater that has read the honest shares picks its own last and so sets the
     opened value at will; a degree-t opening leaves it no say.
  Why it catches any deviation, and why whether it aborts reveals nothing: every value
  and MAC error is additive; values never involve ``alpha``, so each pair's
  ``delta_k = m_k - alpha v_k`` is ``a_k - alpha b_k`` with ``b_k`` the value errors (carried
  through later products by the secret data) and ``a_k`` the MAC errors. A deviation
  leaves some ``(a_k, b_k) != 0`` (the pair where it entered: a MAC shifted by ``alpha``
  times the value's shift needs ``alpha``). Then
  ``T = sum_k rho_k a_k + e_u - e_3 - alpha (sum_k rho_k b_k + e_w)``, where the errors
  ``e_w, e_u, e_3`` of steps 2-3 are chosen without knowing ``rho`` or ``alpha``: if some
  ``b_k != 0`` the bracket is uniform (``rho`` is), so non-zero but with 1/p, and
  ``T = 0`` needs ``alpha`` (1/p); otherwise ``sum_k rho_k a_k`` is uniform and ``T = 0``
  with 1/p. A non-zero ``T`` opens to 0 only if ``beta`` is the one value
  ``-e_4/T`` (1/p). So a cheater that deviates anywhere is caught except with
  probability at most 3/p < 2^-59 *whatever the data*: the abort depends on whether it
  cheated, never on a secret. ``beta T`` is uniform when ``T != 0``, so an abort reveals
  nothing either.
  This replaces the sacrifice for products: two reductions per product instead of
  seven, no extra triples (docs/benchmarks.md: 2.9x semi-honest, against 7x before).
* **Triples** (:meth:`triples`, for openings that need one: random bits, output keys):
  PRSS ``[a], [b]``, their MACs and ``[c] = [a][b]`` with its MAC as above (two rounds);
  ``c`` is checked with every other product.
* **Matrix triples** (:meth:`matrix_triple`): the same with a matrix product.
* **Random bits** (:meth:`edabits`), square-and-open [DFK+06, section 5 (TCC 2006)] over
  F_p, p = 2^61 - 1 = 3 mod 4: with a triple ``(a, b, c)`` open ``a - b`` (b is
  uniform, so it reveals nothing), ``[a^2] = [c] + (a - b)[a]``, open ``a^2``; if it is 0
  (probability 1/p) the element is drawn again; ``s = sqrt(a^2)`` (the power
  ``(p + 1)/4``), and ``[bit] = ([a]/s + 1)/2`` is 0 or 1 uniformly (the sign of ``a`` is
  hidden). Opened values are MAC-checked (with the products) before the bits are returned.
* **Input masks** (:meth:`input_mask`): a PRSS ``[r]`` with its MAC; every live party
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
    TriplePool,
    square_and_open_bits,
)
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import MacCheckError
from pqmpc_node.mpc.preprocessing import InputMask, Triple, TruncationPair
from pqmpc_node.mpc.prss import PrssKeys, agree_keys
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import InconsistentSharesError, ShamirScheme


__all__ = ["MAX_BATCH", "MAX_UNVERIFIED", "HonestMajorityProvider", "ProductCheckError", "ProviderStats",
           "TooFewPartiesError", "BitCheckError"]

MAX_UNVERIFIED = 1 << 22
"""The most unchecked product elements held (two arrays of 8 bytes each) before the check runs early."""


class ProductCheckError(MacCheckError):
    """The product check failed: some party deviated while products were made (module docstring)."""


class TooFewPartiesError(LostPartyError):
    """Fewer than 2t + 1 live parties: degree reduction, and so this provider, cannot run."""


@dataclass
class ProviderStats:
    """What this provider made (public counts; for metrics and benchmarks)."""

    reduced_elements: int = 0
    products: int = 0
    checked_products: int = 0
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
    _unverified: list[tuple[Array, Array]] = field(default_factory=list, repr=False)
    _unverified_size: int = 0

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
        chunk = max(1, ctx.max_message_bytes // 8)
        out = d.zeros((total,)) if total > chunk else flat  # one chunk (the usual case): no copy
        for start in range(0, total, chunk):
            part = flat[start:start + chunk]
            size = int(part.size)
            r = self.keys.random(d, (size,))
            masked = d.sub(d.sub(part, r), self.keys.zero(d, (size,)))
            opened = await self._open_2t(masked, label)
            if total > chunk:
                out[start:start + size] = d.add(opened, r)
            else:
                out = d.add(opened, r)
        self.stats.reduced_elements += total
        results: list[Array] = []
        offset = 0
        for p in products:
            results.append(out[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        return results

    async def _open_2t(self, share: Array, label: str) -> Array:
        """Send this degree-2t share to every live party and interpolate ``d`` (checked when redundant)."""
        return await self._open_degree(share, label, 2 * self.scheme.t, "degree-reduction")

    async def _open_unauthenticated(self, share: Array, label: str) -> Array:
        """Open a degree-t sharing that has no MAC: at least 2t + 1 shares, all on one degree-t
        polynomial, so the t corrupted shares cannot move the value (only make the check fail)."""
        return await self._open_degree(share, label, self.scheme.t, "product-check-consistency")

    async def _open_degree(self, share: Array, label: str, degree: int, check: str) -> Array:
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
            return ShamirScheme(self.scheme.n, degree).reconstruct(self.domain, shares, check=True)
        except InconsistentSharesError as exc:
            raise MacCheckError(check, [tag], str(exc)) from exc

    async def _macs(self, values: Sequence[Array], label: str) -> list[Shared]:
        """``values`` (local PRSS shares, no MAC yet) with their MACs ``[alpha * v]``, one round; the
        pairs are kept for :meth:`verify_products` (module docstring, "MACs")."""
        if self._alpha is None:
            return [Shared(v, None) for v in values]
        alpha, d = self._alpha, self.domain
        macs = await self._reduce([d.mul(v, alpha) for v in values], label)
        out = [Shared(v, m) for v, m in zip(values, macs, strict=True)]
        await self._keep_for_check(out)
        return out

    async def _keep_for_check(self, pairs: Sequence[Shared]) -> None:
        """Keep ``(value, MAC)`` pairs for the next product check; run it now past :data:`MAX_UNVERIFIED`."""
        for z in pairs:
            if z.mac is not None:
                self._unverified.append((z.value.reshape(-1), z.mac.reshape(-1)))
                self._unverified_size += int(z.value.size)
        if self._unverified_size > MAX_UNVERIFIED:
            await self.verify_products("products-bound")

    async def random_authenticated(self, shape: tuple[int, ...]) -> Shared:
        """A fresh PRSS ``[r]`` with its MAC (one round in malicious sessions, none otherwise)."""
        (r,) = await self._macs([self._random(shape)], "random")
        return r

    async def _products(self, values: Sequence[Array], macs: Sequence[Array | None], label: str) -> list[Shared]:
        """Reduce local degree-2t products of values and, malicious, of MACs, in one round; keep
        the pairs for :meth:`verify_products` (module docstring, "Products with MACs")."""
        d = self.domain
        if self._alpha is None:
            return [Shared(z, None) for z in await self._reduce(list(values), label)]
        if any(m is None for m in macs):
            raise ValueError("a malicious product needs the MAC share of its left operand")
        reduced = await self._reduce([*values, *(m for m in macs if m is not None)], label)
        out = [Shared(z, mz) for z, mz in zip(reduced[:len(values)], reduced[len(values):], strict=True)]
        self.stats.products += sum(int(v.size) for v in values)
        await self._keep_for_check(out)
        return out

    async def direct_multiply(self, x: Shared, y: Shared) -> Shared:
        """``[x * y]`` elementwise (with its MAC), one round; checked at the next MAC check."""
        d = self.domain
        mac = None if x.mac is None else d.mul(x.mac, y.value)
        (z,) = await self._products([d.mul(x.value, y.value)], [mac], "mul")
        return z

    async def direct_matmul(self, x: Shared, y: Shared) -> Shared:
        """``[X @ Y]`` (with its MAC), one round; checked at the next MAC check."""
        d = self.domain
        mac = None if x.mac is None else d.matmul(x.mac, y.value)
        (z,) = await self._products([d.matmul(x.value, y.value)], [mac], "matmul")
        return z

    async def verify_products(self, check: str) -> None:
        """The product check over every kept pair since the last one (module docstring, steps 1-4)."""
        if self._alpha is None or not self._unverified:
            return
        ctx, d, alpha = self.ctx, self.domain, self._alpha
        pairs, self._unverified, self._unverified_size = self._unverified, [], 0
        v = ctx.xp.concatenate([p[0] for p in pairs]) if len(pairs) > 1 else pairs[0][0]
        m = ctx.xp.concatenate([p[1] for p in pairs]) if len(pairs) > 1 else pairs[0][1]
        rho = self._random((int(v.size),))  # step 1: secret coefficients
        w, u = await self._reduce([d.sum(d.mul(rho, v)), d.sum(d.mul(rho, m))], "product-check")  # step 2
        (alpha_w,) = await self._reduce([d.mul(alpha, w)], "product-check-alpha")  # step 3
        (beta_t,) = await self._reduce([d.mul(self._random((1,)), d.sub(u, alpha_w))], "product-check-zero")
        opened = await self._open_unauthenticated(beta_t, "product-check-open")  # step 4
        self.stats.checked_products += int(v.size)
        if int(opened[0]) != 0:
            raise ProductCheckError("product-check", [check],
                                    f"the product check over {v.size} values failed: a party deviated while "
                                    "products or MACs were made (degree reduction)")

    # -- material -----------------------------------------------------------------
    async def triples(self, shape: tuple[int, ...]) -> Triple:
        """Elementwise triples (module docstring, "Triples"), served from a bounded pool
        (:class:`~pqmpc_node.mpc.derived.TriplePool`)."""
        if self._pool is None:
            raise RuntimeError("HonestMajorityProvider.bind(ctx) was not called")
        return await self._pool.take(shape)

    async def _make_triples(self, shape: tuple[int, ...]) -> Triple:
        """Make ``shape`` fresh triples; their products are checked with every other product."""
        sa, sb = await self._macs([self._random(shape), self._random(shape)], "triple")
        sc = await self.direct_multiply(sa, sb)
        self.stats.triples += math.prod(shape)
        return Triple(sa, sb, sc)

    async def matrix_triple(self, left: tuple[int, int], right: tuple[int, int]) -> Triple:
        """A matrix triple ``C = A @ B`` (module docstring, "Matrix triples")."""
        if left[1] != right[0]:
            raise ValueError(f"matrix triple shapes {left} @ {right} do not chain")
        sa, sb = await self._macs([self._random(left), self._random(right)], "matrix-triple")
        return Triple(sa, sb, await self.direct_matmul(sa, sb))

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
        mask = await self.random_authenticated(shape)
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


