"""Batched SPDZ MAC checks [DPSZ12, DKL+13] over F_p, p = 2^61 - 1.

Choice: MACs over the prime field, not SPDZ2k over Z_2^(64+s). Every opened value ``v``
comes with MAC shares of ``alpha * v`` for a secret key ``alpha`` uniform in F_p. A party
that adds an error ``e != 0`` to an opened value (by changing a share, a triple share or
its message) must also shift the MAC sum by ``alpha * e`` without knowing ``alpha``: it
succeeds with probability 1/p. Checking many openings at once by a random linear
combination with coefficients fixed only after the openings (coin tossing) fails to
notice a non-zero error vector with probability at most 1/p more. Together a cheat
passes with probability at most 2/p < 2^-59, better than the 2^-40 target; SPDZ2k would
need 104-bit ring arithmetic that numpy lacks.

Steps of :func:`check_macs` (all pending openings in one batch):

1. Coin tossing: every party commits to 32 random bytes (SHA-256), then reveals them;
   the seed is the hash of all reveals, the coefficients ``rho_j`` are AES-CTR output.
2. Each party computes ``sigma_i = sum_j rho_j (m_ij - alpha_i v_j)``.
3. Commit to ``sigma_i``, then reveal; the parties check the sigmas recombine to 0
   (additive: sum; Shamir: interpolation, with all shares on one degree-t polynomial).
4. Broadcast consistency: digests of public inputs each party received are compared.

Before step 1, a provider that multiplies without triples (honest majority,
:class:`~pqmpc_node.mpc.preprocessing.DirectProducts`) checks every product made since
the last check (:meth:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider.verify_products`).

Semi-honest sessions have no MAC shares and skip the check.

Where the checks run: before every opening that no fresh random mask hides (the
valid-row count, the owners' input check, the outputs; see docs/mpc.md), so an error on
an earlier opening never reaches an unmasked value.

Blame. A reveal that does not open its own commitment (step 1 or 3), and a sigma of the
wrong length or not a canonical element (:class:`~pqmpc_node.mpc.errors.NonCanonicalError`),
identify a cheater: the links are authenticated, so that party sent the message. Such
failures raise a :class:`~pqmpc_node.mpc.errors.BlamedCheckError` whose
``blamed_parties`` names it; every other failure (sigmas that do not recombine to 0,
differing broadcast digests) proves that *someone* cheated, not who. A committed party
that never reveals is not skipped like a party lost earlier: a party that saw the
others' reveals could otherwise pick between two outcomes of the coins. The attempt
ends with :class:`~pqmpc_node.mpc.channel.LostPartyError` instead, and a Shamir session
restarts without that party.
"""

from __future__ import annotations

import hashlib
import hmac

from pqmpc_node.mpc.channel import LostPartyError
from pqmpc_node.mpc.context import MPCContext, encode_payload
from pqmpc_node.mpc.domain import Array
from pqmpc_node.mpc.errors import BlamedCheckError, MacCheckError
from pqmpc_node.mpc.preprocessing import DirectProducts
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.sharing import InconsistentSharesError

__all__ = ["CommitmentMismatchError", "MacCheckError", "check_macs", "commit_reveal", "toss_coins"]


class CommitmentMismatchError(BlamedCheckError):
    """A :class:`BlamedCheckError`: ``blamed_parties`` revealed values that do not open
    their commitments (party indexes, ascending)."""


def _commitment(party: int, tag: str, nonce: bytes, data: bytes) -> bytes:
    h = hashlib.sha256(b"pqmpc/mpc/commit/v1")
    for part in (party.to_bytes(4, "big"), tag.encode(), nonce, data):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


async def commit_reveal(ctx: MPCContext, label: str, data: bytes) -> dict[int, bytes]:
    """Commit to ``data``, then reveal; returns every live party's verified data (own included)."""
    nonce = ctx.rng.bytes(32)
    tag = ctx.next_tag(f"{label}/commit")
    await ctx.channel.send_many(tag, {p: _commitment(ctx.party, tag, nonce, data) for p in ctx.peers})
    shamir = ctx.scheme.kind == "shamir"
    # Shamir sessions go on without lost parties (every survivor sees the same set, else
    # the coins or the sigmas disagree and the check fails safe); additive needs everyone.
    commits = await ctx._receive_reachable(tag) if shamir else await ctx.channel.receive_many(tag, ctx.peers)
    rtag = ctx.next_tag(f"{label}/reveal")
    await ctx.channel.send_many(rtag, {p: nonce + data for p in ctx.peers})
    reveals = await ctx._receive_reachable(rtag) if shamir else await ctx.channel.receive_many(rtag, ctx.peers)
    withheld = sorted(set(commits) - set(reveals))
    if withheld:
        # A party that committed and then saw the others' reveals could otherwise choose
        # between two outcomes of the coins by withholding its own. These coins are never
        # used: the attempt ends, and a Shamir session restarts without that party (fresh
        # material and coins), where it has no say any more.
        raise LostPartyError(withheld[0], f"committed in {label!r} but never revealed (lost, or withholding to "
                                          "bias the coins); this attempt's coins are discarded")
    out = {ctx.party: data}
    for peer, blob in reveals.items():
        if peer not in commits:
            # Its commitment was skipped as lost (a timeout): a slow party, not a proven cheat.
            raise LostPartyError(peer, f"its commitment in {label!r} never arrived in time, its reveal did")
        their_nonce, their_data = blob[:32], blob[32:]
        if len(blob) < 32 or not hmac.compare_digest(_commitment(peer, tag, their_nonce, their_data), commits[peer]):
            raise CommitmentMismatchError(label, [], f"party {peer} opened a value that does not match its commitment",
                                          blamed_parties=[peer])
        out[peer] = their_data
    return out


async def toss_coins(ctx: MPCContext, label: str, count: int) -> Array:
    """``count`` public uniform field elements no party can bias or predict before it committed.

    Every party commits to 32 random bytes, then reveals (:func:`commit_reveal`); the
    seed is the hash of all reveals in party order, expanded with AES-CTR.
    """
    seeds = await commit_reveal(ctx, label, ctx.rng.bytes(32))
    seed = hashlib.sha256(b"".join(seeds[p] for p in sorted(seeds))).digest()
    return ctx.domain.from_words(ctx.xp.asarray(AesCtrRandom(seed).words(count)))


async def check_macs(ctx: MPCContext, check: str = "mac-check") -> None:
    """Verify every pending opening (and broadcast) in one batch; raise :class:`MacCheckError`."""
    if not ctx.malicious:
        ctx.pending.clear()
        ctx.broadcasts.clear()
        return
    if isinstance(ctx.provider, DirectProducts):
        await ctx.provider.verify_products(check)
    records, ctx.pending = ctx.pending, []
    broadcasts, ctx.broadcasts = ctx.broadcasts, []
    labels = [r.label for r in records] + [b[0] for b in broadcasts]
    d, xp = ctx.domain, ctx.xp
    if broadcasts:
        digest = hashlib.sha256(b"".join(hashlib.sha256(tag.encode() + data).digest() for tag, data in broadcasts)).digest()
        digests = await commit_reveal(ctx, f"{check}/broadcast", digest)
        for peer, theirs in digests.items():
            if not hmac.compare_digest(theirs, digest):
                raise MacCheckError(f"{check}/broadcast", labels, f"party {peer} saw different public inputs")
    if not records:
        return
    values = xp.concatenate([r.values for r in records])
    macs = xp.concatenate([r.macs for r in records])
    rho = await toss_coins(ctx, f"{check}/coins", int(values.size))
    assert ctx.mac_key is not None  # invariant: malicious contexts always hold a MAC key share
    sigma = d.sum(d.mul(rho, d.sub(macs, d.mul(values, ctx.mac_key))))
    sigmas = await commit_reveal(ctx, f"{check}/sigma", encode_payload(sigma))
    # Length and canonicity first: a short or out-of-field sigma names its sender.
    shares = {p: sigma if p == ctx.party else ctx.elements_from(p, b, 1, f"{check}/sigma")
              for p, b in sorted(sigmas.items())}
    try:
        if ctx.scheme.kind == "additive":
            total = ctx.scheme.reconstruct(d, shares)
        else:
            total = ctx.scheme.reconstruct(d, shares, check=True)
    except InconsistentSharesError as exc:
        raise MacCheckError(check, labels, str(exc)) from exc
    if int(total[0]) != 0:
        raise MacCheckError(check, labels, "the MAC shares do not match the opened values")
