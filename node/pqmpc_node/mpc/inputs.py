"""Owners' inputs that no node can alter: owner-keyed input authentication and a degree check.

Data owners are not parties: they secret-share their table (or model) to the nodes in
sealed envelopes. A node that simply re-inputs its share ``x_i`` into the MAC'd world
could shift the owner's value by anything it likes (bias, a per-row range oracle through
the rejected-row count, differencing across restarts). Handing the owner shares of a
MAC'd mask is not enough either: the owner cannot check MACs, so a wrong mask share
shifts the input just the same.

The owner therefore authenticates its own input with a key of its own, the way SPDZ's
MACs authenticate values with ``alpha`` [DPSZ12], with the owner in the dealer's role
for its own data (the owner is the party whose input is at stake, so it is trusted with
it). Owner side (:func:`share_owner_input`, pure):

1. Draw a key ``k`` uniform in F_p.
2. Secret-share ``x`` (the flattened table), ``k * x`` (elementwise, the "tags") and the
   key with its own tag, ``(k, k^2)``; node i receives ``(x_i, (kx)_i, (k_i, (k^2)_i))``
   sealed to its certified KEM key.

Node side (:func:`authenticate_inputs`, every owner in one batch):

1. Re-input: every live party inputs its raw shares of every owner with the masked input
   protocol (:func:`~pqmpc_node.mpc.protocols.share_input`), and the parties recombine
   them (sum, or Lagrange weights of the live set): ``[x], [kx], [k], [k^2]`` with SPDZ
   MACs. A cheater can shift these by ``(e, f, d, f_0)`` of its choice, fixed now.
2. Coins: ``rho`` uniform in F_p^(N+1) per owner by commit-and-reveal
   (:func:`~pqmpc_node.mpc.mac.toss_coins`), drawn after step 1, so the shifts cannot
   depend on them. The key is checked as one more data element: ``x_0 = k`` with tag
   ``k^2``.
3. Shamir only, degree check (also for semi-honest sessions, whose owners may send
   inconsistent shares): each party opens ``u_i + r_i`` with ``u_i = sum_j rho_j x_ij`` of
   its *raw* shares and ``[r]`` a fresh random sharing, to every live party; all must lie
   on one degree-t polynomial (:class:`InconsistentInputError` otherwise), so every set
   of t + 1 parties reconstructs the same input (no differencing across restarts). ``r``
   masks ``u``: nothing about the data is revealed.
4. Malicious only, key check: ``[u] = rho_0 [k] + sum_j rho_j [x_j]``,
   ``[v] = rho_0 [k^2] + sum_j rho_j [kx_j]`` (local), ``[z] = [k][u] - [v]`` (Beaver),
   ``[w] = [s][z]`` with ``[s]`` fresh and random; every opening so far is MAC-checked,
   then ``w`` is opened and MAC-checked too; ``w != 0`` aborts with
   :class:`InputTamperedError` naming the owner.

Why the key check catches a shifted input: with ``E = sum_j rho_j e_j`` and
``F = sum_j rho_j f_j``,
``z = k (E + 2 rho_0 d) + d (U + E) + rho_0 d^2 - F - rho_0 f_0`` (``U = sum_j rho_j x_j``).
If ``e != 0`` or ``d != 0``, the coefficient ``E + 2 rho_0 d`` of the secret key vanishes
with probability at most 1/p over the coins (the shifts were fixed before them), and
otherwise ``z = 0`` needs the attacker to hit one value of ``k``, uniform and hidden from
any set of parties that cannot reconstruct (additive: n - 1, Shamir: t): 1/p. A cheater
is caught except with probability 2/p < 2^-59. Checking the key like a data element
matters: without it, shifting ``k`` by ``d`` and the tags by ``d * g`` would give
``z = d * sum_j rho_j (x_j - g_j)``, an abort exactly when the input differs from a guess
``g`` (a one-bit oracle); with it, whether the session aborts never depends on the data
(up to 2/p). ``w`` reveals nothing but whether ``z = 0``: ``s`` is uniform and secret, so
``w = s*z`` is uniform whenever ``z != 0``. A shift that changes no value (``e = 0``,
``d = 0``) may abort the session but never changes the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pqmpc_node.mpc import protocols as proto
from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.context import MPCContext, payload_for
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.errors import MacCheckError
from pqmpc_node.mpc.mac import check_macs, toss_coins
from pqmpc_node.mpc.randomness import RandomSource
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import InconsistentSharesError, ShamirScheme, SharingScheme

__all__ = [
    "InconsistentInputError",
    "InputTamperedError",
    "OwnerShares",
    "authenticate_inputs",
    "share_owner_input",
]


class InputTamperedError(MacCheckError):
    """An owner's authenticated input does not match the owner's own key: a node altered its share."""

    def __init__(self, owners: Sequence[str], labels: list[str]) -> None:
        self.owners = tuple(owners)
        super().__init__("owner-input-key", labels,
                         f"the inputs of {', '.join(repr(o) for o in owners)} do not match their owners' keys: "
                         "a node altered its share of them (or the owner sent inconsistent shares)")


class InconsistentInputError(MacCheckError):
    """An owner's Shamir shares do not lie on one degree-t polynomial."""

    def __init__(self, owners: Sequence[str], labels: list[str], detail: str) -> None:
        self.owners = tuple(owners)
        super().__init__("owner-input-degree", labels,
                         f"the shares of {', '.join(repr(o) for o in owners)} are not one degree-t sharing ({detail}): "
                         "the owner sent inconsistent shares, or a node altered its share")


@dataclass(frozen=True)
class OwnerShares:
    """This party's raw shares of one owner's input, as the owner sealed them.

    ``values``: the flattened input; ``tags``: shares of ``k * values``; ``key``: the shares
    of the owner's key and its tag ``(k, k^2)`` (shape (2,)). ``tags`` and ``key`` are
    None in semi-honest sessions, where owners do not key their inputs.
    """

    owner: str
    values: Array
    tags: Array | None = None
    key: Array | None = None


def share_owner_input(
    domain: Domain, scheme: SharingScheme, values: Array, rng: RandomSource, *, keyed: bool
) -> list[tuple[Array, Array | None, Array | None]]:
    """The owner's side: per party ``(x_i, (kx)_i, (k, k^2)_i)`` of the domain array ``values`` (flat).

    ``keyed`` (malicious sessions) draws the owner's key ``k`` and shares the tags and the key.
    """
    flat = values.reshape(-1)
    xs = scheme.share(domain, flat, rng)
    if not keyed:
        return [(x, None, None) for x in xs]
    key = domain.from_words(domain.xp.asarray(rng.words(1)))
    tags = scheme.share(domain, domain.mul(flat, key), rng)
    keys = scheme.share(domain, domain.xp.concatenate([key, domain.mul(key, key)]), rng)
    return list(zip(xs, tags, keys, strict=True))


def _combine(ctx: MPCContext, parts: dict[int, Shared]) -> Shared:
    """Recombine the parties' re-input shares: sum (additive) or Lagrange weights of the live set."""
    live = list(ctx.live)
    weights = ctx.scheme.weights(live)
    d = ctx.domain
    acc: Shared | None = None
    for p in live:
        term = parts[p] if ctx.scheme.kind == "additive" else ctx.mul_public(parts[p], d.scalar(weights[p]))
        acc = term if acc is None else ctx.add(acc, term)
    assert acc is not None  # invariant: the live set is never empty
    return acc


async def _reinput(ctx: MPCContext, local: Array) -> Shared:
    """Every live party inputs its ``local`` share with the masked input protocol; recombined.

    A party missing from a Shamir restart still has its input mask drawn, so the order of
    preprocessing requests never depends on which parties are live.
    """
    parts: dict[int, Shared] = {}
    for owner in range(ctx.n):
        if owner in ctx.live:
            parts[owner] = await proto.share_input(ctx, owner, local if owner == ctx.party else None, tuple(local.shape))
        else:
            await ctx.input_mask(tuple(local.shape), owner)
    return _combine(ctx, parts)


def _segment_sums(ctx: MPCContext, rho: Array, flat: Array, sizes: Sequence[int]) -> Array:
    """``[sum_j rho_j x_j]`` per owner segment of ``flat`` (shape (owners,))."""
    d, xp = ctx.domain, ctx.xp
    prod = d.mul(rho, flat)
    out = []
    start = 0
    for size in sizes:
        out.append(d.sum(prod[start : start + size]))
        start += size
    return xp.concatenate(out) if out else d.zeros((0,))


async def _degree_check(ctx: MPCContext, owners: Sequence[OwnerShares], rho: Array) -> None:
    """Step 3: every live party's masked raw combination lies on one degree-t polynomial."""
    scheme = ctx.scheme
    if not isinstance(scheme, ShamirScheme):
        return
    # Drawn even when there is nothing to check, so the order of preprocessing requests
    # never depends on how many parties are live (the dealer simulated all of them).
    mask = (await ctx.triples((len(owners),))).a.value  # a fresh uniform degree-t sharing
    if len(ctx.live) <= scheme.threshold + 1:
        return  # t + 1 points always lie on one degree-t polynomial: nothing to check
    d = ctx.domain
    sizes = [int(o.values.size) for o in owners]
    u = _segment_sums(ctx, rho, ctx.xp.concatenate([o.values.reshape(-1) for o in owners]), sizes)
    mine = d.add(u, mask)
    tag = ctx.next_tag("input-degree")
    await ctx.channel.send_many(tag, {p: payload_for(ctx.channel, mine) for p in ctx.peers})
    received = await ctx.channel.receive_many(tag, ctx.peers)
    shares = {ctx.party: mine}
    for peer, data in sorted(received.items()):
        shares[peer] = ctx.elements_from(peer, data, len(owners), tag)
    bad = []
    for i, o in enumerate(owners):
        try:
            scheme.reconstruct(d, {p: s[i : i + 1] for p, s in shares.items()}, check=True)
        except InconsistentSharesError as exc:
            bad.append((o.owner, str(exc)))
    if bad:
        raise InconsistentInputError([b[0] for b in bad], [tag], bad[0][1])


async def authenticate_inputs(ctx: MPCContext, owners: Sequence[OwnerShares]) -> list[Shared]:
    """This party's engine sharings of every owner's input (flat, as given), checked as in the module docstring.

    Raises :class:`InputTamperedError`, :class:`InconsistentInputError` or a
    :class:`~pqmpc_node.mpc.errors.MacCheckError` from the checks; nothing about the
    inputs is opened on the way.
    """
    if not owners:
        return []
    xp = ctx.xp
    sizes = [int(o.values.size) for o in owners]
    if not ctx.malicious:
        if isinstance(ctx.scheme, ShamirScheme):
            rho = await toss_coins(ctx, "input-coins", sum(sizes))
            await _degree_check(ctx, owners, rho)
        return [Shared(o.values.reshape(-1), None) for o in owners]
    missing = [o.owner for o in owners if o.tags is None or o.key is None]
    if missing:
        raise ValueError(f"malicious sessions need keyed inputs; {missing} sent no tags or key")
    # Step 1: one re-input per party of [values | tags | key, key^2] of every owner.
    local = xp.concatenate([xp.concatenate([o.values.reshape(-1), o.tags.reshape(-1), o.key.reshape(-1)])  # type: ignore[union-attr]
                            for o in owners])
    authed = await _reinput(ctx, local)
    values, data, tags, keys = [], [], [], []
    start = 0
    for size in sizes:
        values.append(authed[start : start + size])
        key, key_tag = authed[start + 2 * size : start + 2 * size + 1], authed[start + 2 * size + 1 : start + 2 * size + 2]
        data.append(ctx.concat([key, authed[start : start + size]]))  # the key is checked as element 0
        tags.append(ctx.concat([key_tag, authed[start + size : start + 2 * size]]))
        keys.append(key)
        start += 2 * size + 2
    # Step 2: coins after every re-input is fixed (one more per owner, for its key).
    checked = [size + 1 for size in sizes]
    rho = await toss_coins(ctx, "input-coins", sum(checked))
    await _degree_check(ctx, owners, _without_key_coins(ctx, rho, checked))
    # Step 4: z = k*u - v per owner, w = s*z, opened between two MAC checks.
    u = _combine_segments(ctx, rho, ctx.concat(data), checked)
    v = _combine_segments(ctx, rho, ctx.concat(tags), checked)
    k = ctx.concat(keys)
    (ku,) = await proto.multiply_many(ctx, [(k, u)])
    z = ctx.sub(ku, v)
    s = (await ctx.triples((len(owners),))).a
    (w,) = await proto.multiply_many(ctx, [(s, z)])
    await check_macs(ctx, "before-input-check")
    (opened,) = await ctx.open([w], "input-check")
    await check_macs(ctx, "input-check")  # a forged share of w must not make an owner look guilty
    bad = [o.owner for o, wi in zip(owners, to_host(opened).tolist(), strict=True) if int(wi) != 0]
    if bad:
        raise InputTamperedError(bad, ["input-check"])
    return values


def _without_key_coins(ctx: MPCContext, rho: Array, checked: Sequence[int]) -> Array:
    """The coins of the data elements only (each owner's segment starts with its key's coin)."""
    parts = []
    start = 0
    for size in checked:
        parts.append(rho[start + 1 : start + size])
        start += size
    return ctx.xp.concatenate(parts)


def _combine_segments(ctx: MPCContext, rho: Array, flat: Shared, sizes: Sequence[int]) -> Shared:
    """``[sum_j rho_j x_j]`` per owner segment, with MAC shares (shape (owners,))."""
    value = _segment_sums(ctx, rho, flat.value, sizes)
    mac = None if flat.mac is None else _segment_sums(ctx, rho, flat.mac, sizes)
    return Shared(value, mac)
