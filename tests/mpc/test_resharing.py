"""Share redistribution to a replacement party (:mod:`pqmpc_node.mpc.resharing`): any t + 1 holders give the
replacement exactly the share a fresh evaluation of the owner's polynomial would, the masks cancel only in the
sum (no single message is a scaled share), and too few holders are refused."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest

from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.field import P61, MersenneField61
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.resharing import (
    NotEnoughHoldersError,
    combine,
    contribution,
    lagrange_at,
    resharing_senders,
    zero_mask,
)
from pqmpc_node.mpc.sharing import InconsistentSharesError, ShamirScheme


def _pair_keys(senders: tuple[int, ...]) -> dict[int, dict[int, bytes]]:
    """Step 1: one key per pair, known to both ends (what the PQ links carry)."""
    keys: dict[int, dict[int, bytes]] = {i: {} for i in senders}
    for a, b in itertools.combinations(senders, 2):
        k = os.urandom(32)
        keys[a][b] = keys[b][a] = k
    return keys


def _reshare(field: MersenneField61, shares: list[Any], senders: tuple[int, ...], recipient: int,
             label: str = "s/owner/columns/x") -> tuple[Any, dict[int, Any]]:
    keys = _pair_keys(senders)
    msgs = {i: contribution(field, shares[i], me=i, senders=senders, recipient=recipient, keys=keys[i], label=label)
            for i in senders}
    return combine(field, msgs, senders), msgs


@pytest.mark.parametrize(("n", "t"), [(3, 1), (5, 2), (7, 3)])
def test_any_t_plus_1_holders_give_the_fresh_share(xp: Any, n: int, t: int) -> None:
    field = MersenneField61(xp)
    scheme = ShamirScheme(n, t)
    secret = field.asarray(np.arange(1, 65, dtype=np.uint64) * np.uint64(1_000_003))
    shares = scheme.share(field, secret, AesCtrRandom(b"\x01" * 32))
    for lost in range(n):
        holders = [p for p in range(n) if p != lost]
        for subset in itertools.combinations(holders, t + 1):
            got, _ = _reshare(field, shares, subset, lost)
            assert np.array_equal(to_host(got), to_host(shares[lost])), (lost, subset)
    # The replacement's share joins the others on one polynomial: any t + 1 including it reconstruct the secret.
    got, _ = _reshare(field, shares, resharing_senders(range(1, n), t), 0)
    mixed = {0: got, **{p: shares[p] for p in range(1, t + 1)}}
    assert np.array_equal(to_host(scheme.reconstruct(field, mixed)), to_host(secret))


def test_senders_are_the_lowest_t_plus_1_holders() -> None:
    assert resharing_senders([4, 0, 2, 3], 2) == (0, 2, 3)
    assert resharing_senders([1, 0], 1) == (0, 1)
    with pytest.raises(NotEnoughHoldersError, match="t \\+ 1 = 3"):
        resharing_senders([0, 4], 2)


def test_lagrange_at_interpolates() -> None:
    w = lagrange_at([0, 2], 1)  # points 1 and 3, evaluated at 2: the midpoint
    half = pow(2, -1, P61)
    assert w == {0: half, 2: half}
    with pytest.raises(ValueError, match="distinct"):
        lagrange_at([1, 1], 0)


def test_messages_are_masked(xp: Any) -> None:
    """No message is the scaled share it would be unmasked; the masks sum to zero, and each differs per label."""
    field = MersenneField61(xp)
    scheme = ShamirScheme(3, 1)
    shares = scheme.share(field, field.asarray(np.full(256, 7, dtype=np.uint64)), AesCtrRandom(b"\x02" * 32))
    senders = (0, 1)
    keys = _pair_keys(senders)
    weights = lagrange_at(senders, 2)
    msgs = {i: contribution(field, shares[i], me=i, senders=senders, recipient=2, keys=keys[i], label="a")
            for i in senders}
    for i in senders:
        plain = to_host(field.mul(shares[i], field.scalar(weights[i])))
        assert int(np.count_nonzero(to_host(msgs[i]) == plain)) <= 1  # ~256/p matches by chance
    masks = [zero_mask(field, me=i, senders=senders, keys=keys[i], label="a", size=256) for i in senders]
    assert not np.any(to_host(field.add(masks[0], masks[1])))
    other = zero_mask(field, me=0, senders=senders, keys=keys[0], label="b", size=256)
    assert not np.array_equal(to_host(other), to_host(masks[0]))


def test_a_wrong_contribution_moves_the_share_off_the_polynomial(xp: Any) -> None:
    """What the next attempt's degree check sees: a holder adding 1 leaves the replacement's share off f."""
    field = MersenneField61(xp)
    scheme = ShamirScheme(3, 1)
    shares = scheme.share(field, field.asarray(np.arange(8, dtype=np.uint64)), AesCtrRandom(b"\x03" * 32))
    senders = (0, 1)
    keys = _pair_keys(senders)
    msgs = {i: contribution(field, shares[i], me=i, senders=senders, recipient=2, keys=keys[i], label="a")
            for i in senders}
    bumped = to_host(msgs[1]).copy()
    bumped[0] = (int(bumped[0]) + 1) % P61
    msgs[1] = field.asarray(bumped)
    got = combine(field, msgs, senders)
    with pytest.raises(InconsistentSharesError):
        scheme.reconstruct(field, {0: shares[0], 1: shares[1], 2: got}, check=True)


def test_combine_needs_every_sender(xp: Any) -> None:
    field = MersenneField61(xp)
    with pytest.raises(NotEnoughHoldersError, match=r"\[1\]"):
        combine(field, {0: field.zeros((4,))}, (0, 1))
    with pytest.raises(ValueError, match="differ in length"):
        combine(field, {0: field.zeros((4,)), 1: field.zeros((5,))}, (0, 1))
