"""Private, verifiable outputs: every opening checked first, each result only to its recipients.

A run (:func:`pqmpc_node.mpc.programs.run_session`) leaves each output as a sharing. This
module hands each recipient its shares and nothing to anybody else, so a node learns an
output only if the policy names it (as a recipient identity it holds, which a node never
does).

Semi-honest sessions: each party sends the recipient its share ``y_i``.

Malicious sessions (output phase of SPDZ [DPSZ12, section 4: "check all openings, then
output"], with a fresh MAC key per delivered element so that one recipient's key says
nothing about another's, as in the client outputs of Damgård, Damgård, Nielsen,
Nordholt, Toft, "Confidential Benchmarking based on Multiparty Computation", FC 2016):

1. :func:`~pqmpc_node.mpc.mac.check_macs` over every opening of the run so far; a cheat
   aborts here, before any output share exists outside the engine.
2. For every (recipient, output) slot take a fresh Beaver triple ``([a], [b], [c])`` of
   the slot's size; open ``e = y - b`` (uniform: ``b`` masks ``y``) for all slots in one
   round and set ``[t] = [c] + e [a]`` (so ``t = a * y``).
3. MAC-check the ``e`` opening.
4. Each party sends the recipient ``(y_i, a_i, t_i)``; the recipient reconstructs ``y``,
   ``a`` and ``t`` and accepts only if ``t == a * y`` elementwise
   (:func:`verify_delivered`).

Why step 4 catches a node that sends a wrong share: shifts ``(dy, da, dt)`` of the three
reconstructions pass only if ``dt = a*dy + da*y + da*dy``. The key ``a`` is uniform and
unknown to any set of parties that cannot reconstruct (at most t for Shamir, n - 1
additive), so for ``dy != 0`` this holds with probability 1/p per element
(p = 2^61 - 1, so < 2^-60). A wrong ``da`` or ``dt`` alone changes no value (``dy = 0``):
the recipient may refuse, but never accepts a wrong result.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array, Domain
from pqmpc_node.mpc.mac import check_macs
from pqmpc_node.mpc.programs import SessionResult
from pqmpc_node.mpc.sharing import AdditiveScheme, InconsistentSharesError, SharingScheme

__all__ = ["DeliveredShare", "OutputForgeryError", "OutputRequest", "deliver_outputs", "verify_delivered"]


class OutputForgeryError(ValueError):
    """The shares a recipient received do not verify: some node sent a wrong share; refuse the result."""


@dataclass(frozen=True)
class OutputRequest:
    """One recipient and the outputs the policy allows it (the names a run may produce)."""

    recipient: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class DeliveredShare:
    """This party's share of one output for one recipient; ``key`` and ``tag`` in malicious sessions."""

    value: Array
    key: Array | None = None
    tag: Array | None = None


async def deliver_outputs(
    ctx: MPCContext, result: SessionResult, requests: Sequence[OutputRequest]
) -> dict[str, dict[str, DeliveredShare]]:
    """Check every opening, then make each recipient's shares (see the module docstring).

    Returns ``{recipient: {output name: share}}`` for the outputs the run produced; the
    material consumed depends only on the policy and the program, never on the data.
    """
    await check_macs(ctx, "before-outputs")
    slots = [(r.recipient, name, result.outputs[name]) for r in requests for name in r.names if name in result.outputs]
    out: dict[str, dict[str, DeliveredShare]] = {r.recipient: {} for r in requests}
    if not ctx.malicious or not slots:
        for recipient, name, y in slots:
            out[recipient][name] = DeliveredShare(y.value)
        return out
    flat = ctx.concat([y.reshape(-1) for _, _, y in slots]) if len(slots) > 1 else slots[0][2].reshape(-1)
    triple = await ctx.triples(flat.shape)
    (e,) = await ctx.open([ctx.sub(flat, triple.b)], "output-keys")
    tag = ctx.add(triple.c, ctx.mul_public(triple.a, e))
    await check_macs(ctx, "output-keys")
    start = 0
    for recipient, name, y in slots:
        stop = start + y.size
        out[recipient][name] = DeliveredShare(
            y.value, triple.a.value[start:stop].reshape(y.shape), tag.value[start:stop].reshape(y.shape)
        )
        start = stop
    return out


def _reconstruct(domain: Domain, scheme: SharingScheme, shares: Mapping[int, Array]) -> Array:
    if isinstance(scheme, AdditiveScheme):
        return scheme.reconstruct(domain, shares)
    return scheme.reconstruct(domain, shares, check=True)


def verify_delivered(
    domain: Domain, scheme: SharingScheme, shares: Mapping[int, DeliveredShare], *, authenticated: bool
) -> Array:
    """The output ``y`` from the parties' delivered shares, or :class:`OutputForgeryError`.

    ``shares`` must come from every party (additive) or at least ``t + 1`` parties
    (Shamir; all of them are checked to lie on one polynomial). With ``authenticated``
    the key check of step 4 runs; every element must be canonical.
    """
    need = scheme.n if scheme.kind == "additive" else scheme.threshold + 1
    if len(shares) < need:
        raise OutputForgeryError(f"{len(shares)} parties delivered; {need} are needed to verify the result")
    shapes = {tuple(s.value.shape) for s in shares.values()}
    if len(shapes) != 1:
        raise OutputForgeryError(f"the parties delivered shares of different shapes {sorted(shapes)}")
    for party, s in shares.items():
        for part in (s.value, s.key, s.tag):
            if part is not None and not domain.is_canonical(part):
                raise OutputForgeryError(f"party {party} delivered a value that is not a {domain.name} element")
        if authenticated and (s.key is None or s.tag is None or s.key.shape != s.value.shape
                              or s.tag.shape != s.value.shape):
            raise OutputForgeryError(f"party {party} delivered no output key or tag of the output's shape")
    try:
        y = _reconstruct(domain, scheme, {p: s.value for p, s in shares.items()})
        if not authenticated:
            return y
        a = _reconstruct(domain, scheme, {p: s.key for p, s in shares.items() if s.key is not None})
        t = _reconstruct(domain, scheme, {p: s.tag for p, s in shares.items() if s.tag is not None})
    except InconsistentSharesError as exc:
        raise OutputForgeryError(f"the delivered shares are inconsistent: {exc}") from None
    except ValueError as exc:
        raise OutputForgeryError(f"the delivered shares do not fit together: {exc}") from None
    expected = to_host(domain.mul(a, y)).tobytes()
    if not hmac.compare_digest(expected, to_host(t).tobytes()):
        raise OutputForgeryError("the output's MAC does not verify: a node sent a wrong share of the result")
    return y
