"""Material any interactive provider derives the same way from its verified triples.

One home for the steps the dealer-free providers share (honest majority,
:mod:`pqmpc_node.mpc.honest_majority`, and dishonest majority, :mod:`pqmpc_node.mpc.ot.provider`):

* :class:`TriplePool` — serve triple requests from a bounded pool, refilled by one
  generation (and one check) for many small requests;
* :func:`sacrifice_shared_b` — the SPDZ sacrifice [DPSZ12, section 3; KOS16, "sacrifice"]
  of ``(f, b, h)`` to check ``(a, b, c)`` with a shared ``b``, as SPDZ2k does:
  1. a public coin ``s`` by commit-and-reveal, drawn after the triples' errors are fixed;
  2. open ``rho = s[a] - [f]``, then ``v = s[c] - [h] - rho[b] = s(c - ab) - (h - fb)``;
  3. check every MAC of every opening so far, then ``v = 0``.
  A wrong ``c`` passes only if ``s`` hits one value (1/p); an opening shifted to hide it
  needs a MAC error equal to ``alpha`` times the shift (1/p): caught except with
  probability 2/p < 2^-59;
* :func:`square_and_open_bits` — random bits over F_p, p = 2^61 - 1 = 3 mod 4 [DFK+06,
  section 5 (TCC 2006)]: with a verified triple ``(a, b, c)`` open ``a - b`` (b is
  uniform, so it reveals nothing), ``[a^2] = [c] + (a - b)[a]``, open ``a^2``; if it is 0
  (probability 1/p) every opening so far is MAC-checked and the element drawn again (the
  check first: a rushing cheater could force a zero square every time and so stall the
  parties in the redraw loop, where it would never be caught); ``s = sqrt(a^2)`` (the power
  ``(p + 1)/4``), and ``[bit] = ([a]/s + 1)/2`` is 0 or 1 uniformly (the sign of ``a`` is
  hidden). Opened values are MAC-checked before the bits are returned. It needs no
  honest majority: SPDZ makes its bits the same way [DKL+13].
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import MacCheckError
from pqmpc_node.mpc.field import P61
from pqmpc_node.mpc.mac import check_macs, toss_coins
from pqmpc_node.mpc.preprocessing import Triple
from pqmpc_node.mpc.shares import Shared

__all__ = ["MAX_BATCH", "BitCheckError", "TripleCheckError", "TriplePool", "field_pow", "sacrifice_shared_b",
           "square_and_open_bits"]

MAX_BATCH = 1 << 16
"""The most triples one refill of a pool makes beyond what the request needs (memory bound)."""


class TripleCheckError(MacCheckError):
    """A sacrificed triple did not verify: some party deviated while the triples were made."""


class BitCheckError(MacCheckError):
    """An opened square was not a square: some party deviated while random bits were made."""


class TriplePool:
    """Elementwise triples served from a bounded pool that one generation refills.

    Every request takes the next triples of the pool, refilled, when short, with
    ``max(need, min(MAX_BATCH, made so far))`` fresh ones: many small requests (the
    rounds of a comparison) then share one generation and one check, the pool grows
    with demand (never more than :data:`MAX_BATCH` beyond a request), and a small
    session makes little more than it uses. Every party makes the same requests in the
    same order, so the pools stay in step.
    """

    def __init__(self, make: Callable[[int], Awaitable[Triple]], concat: Callable[[list[Shared]], Shared]) -> None:
        self._make = make
        self._concat = concat
        self._pool: Triple | None = None
        self._used = 0
        self.made = 0

    async def take(self, shape: tuple[int, ...]) -> Triple:
        count = math.prod(shape)
        available = 0 if self._pool is None else self._pool.a.size - self._used
        if available < count:
            fresh = await self._make(max(count - available, min(MAX_BATCH, self.made)))
            self.made += fresh.a.size
            if self._pool is None or available == 0:
                self._pool = fresh
            else:
                rest = self._pool
                self._pool = Triple(*(self._concat([getattr(rest, k)[self._used:], getattr(fresh, k)])
                                      for k in ("a", "b", "c")))
            self._used = 0
        pool = self._pool
        if pool is None:  # invariant: filled above
            raise RuntimeError("triple pool empty")
        lo, hi = self._used, self._used + count
        self._used = hi
        return Triple(pool.a[lo:hi].reshape(*shape), pool.b[lo:hi].reshape(*shape), pool.c[lo:hi].reshape(*shape))


async def sacrifice_shared_b(ctx: MPCContext, a: Shared, b: Shared, c: Shared, f: Shared, h: Shared, *,
                             blame: str) -> None:
    """Check ``(a, b, c)`` by spending ``(f, b, h)`` (module docstring); ``blame`` names the step that
    made the triples, for the error message."""
    (s,) = (await toss_coins(ctx, "sacrifice-coin", 1)).reshape(1)[:1]
    (rho,) = await ctx.open([ctx.sub(ctx.mul_public(a, s), f)], "sacrifice")
    v = ctx.sub(ctx.sub(ctx.mul_public(c, s), h), ctx.mul_public(b, rho))
    (opened,) = await ctx.open([v], "sacrifice-check")
    await sacrifice_verdict(ctx, opened, blame=blame)


async def sacrifice_verdict(ctx: MPCContext, opened: Array, *, blame: str) -> None:
    """Every MAC of every opening so far, then ``v = 0``."""
    await check_macs(ctx, "sacrifice")
    if bool(ctx.xp.any(opened != 0)):
        bad = int(ctx.xp.count_nonzero(opened))
        raise TripleCheckError("triple-sacrifice", [], f"{bad} of {opened.size} sacrificed triples did not verify "
                               f"(c != a*b): a party deviated in {blame}")


async def square_and_open_bits(ctx: MPCContext, triples: Callable[[tuple[int, ...]], Awaitable[Triple]],
                               shape: tuple[int, ...]) -> Shared:
    """Random bits by square-and-open (module docstring), shape ``(domain.bits, *shape)``."""
    d = ctx.domain
    count = d.bits * math.prod(shape)
    bits, zero = await _square_bits(ctx, triples, count)
    while bool(zero.any()):  # a zero square (probability 1/p each): draw those elements again
        # MAC-check first: a rushing cheater can make any square open to 0 (minus the
        # honest shares); redrawing unchecked would let it loop the parties forever.
        await check_macs(ctx, "bits-zero-square")
        redo = ctx.xp.nonzero(zero)[0]
        fresh, fresh_zero = await _square_bits(ctx, triples, int(redo.size))
        value = bits.value.copy()
        value[redo] = fresh.value
        mac = None
        if bits.mac is not None and fresh.mac is not None:
            mac = bits.mac.copy()
            mac[redo] = fresh.mac
        bits = Shared(value, mac)
        zero = zero.copy()
        zero[redo] = fresh_zero
    await check_macs(ctx, "bits")
    return bits.reshape(d.bits, *shape)


async def _square_bits(ctx: MPCContext, triples: Callable[[tuple[int, ...]], Awaitable[Triple]],
                       count: int) -> tuple[Shared, Array]:
    """``count`` random bits, and where the opened square was 0 (those are not bits; draw again)."""
    d = ctx.domain
    t = await triples((count,))
    (e,) = await ctx.open([ctx.sub(t.a, t.b)], "bit-square")
    (v,) = await ctx.open([ctx.add(t.c, ctx.mul_public(t.a, e))], "bit-open")  # a^2
    root = field_pow(d, v, (P61 + 1) // 4)
    if not bool(ctx.xp.all(d.mul(root, root) == v)):
        raise BitCheckError("bit-square", [], "an opened square is not a square modulo p: a party deviated while "
                            "random bits were made")
    zero = v == 0
    inverse = field_pow(d, ctx.xp.where(zero, ctx.xp.uint64(1), root), P61 - 2)
    bit = ctx.mul_public(ctx.add_public(ctx.mul_public(t.a, inverse), d.scalar(1)), d.scalar((P61 + 1) // 2))
    return bit, zero


def field_pow(domain: Domain, base: Array, exponent: int) -> Array:
    """``base ** exponent`` elementwise in the field (square-and-multiply)."""
    result = domain.asarray(domain.xp.ones(base.shape, dtype=domain.xp.uint64))
    acc = base
    e = exponent
    while e:
        if e & 1:
            result = domain.mul(result, acc)
        e >>= 1
        if e:
            acc = domain.mul(acc, acc)
    return result
