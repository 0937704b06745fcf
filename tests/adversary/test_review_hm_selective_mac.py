"""Review: a MAC-only error on a PRSS value's MAC makes the product check's abort depend on secret data.

``HonestMajorityProvider._macs`` (random_authenticated: input masks, triple a/b) reduces
``[alpha r]`` by degree reduction but never adds the pair to ``_unverified``. A cheater that
shifts its degree-reduction share of the MAC of owner 0's input mask gives ``x`` a MAC
``alpha x + e``. ``direct_multiply`` then makes the MAC of ``z = x y`` as
``reduce([alpha x + e][y]) = alpha z + e y``, and the product check computes
``T = rho (e y)``: zero iff ``y = 0``. So the session aborts iff the honest party 1's
secret ``y`` is non-zero -- a selective-failure leak (Chida et al. include every input
wire's MAC in the check, with its own random coefficient, exactly to prevent this).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mpc"))

from hm_run import run_hm  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.mac import check_macs  # noqa: E402
from pqmpc_node.mpc.protocols import multiply, share_input  # noqa: E402

N3 = EngineConfig(3, threshold=1, sharing="shamir", security="malicious")
CHEATER = 2


def shift_own_reduction(ctx, label: str, delta: int) -> None:
    """The cheater adds ``delta`` to its degree-2t share in the first reduction labelled ``label``
    and keeps using the shifted share itself (a consistent additive attack: every party,
    the cheater included, reconstructs ``d + lambda * delta``)."""
    provider = ctx.provider
    original = provider._open_degree
    done = [False]

    async def cheat(share, lbl, degree, check):
        if lbl == label and not done[0]:
            done[0] = True
            share = share.copy()
            share[0] = np.uint64((int(share[0]) + delta) % (2**61 - 1))
        return await original(share, lbl, degree, check)

    provider._open_degree = cheat


def _outcome(y_value: int, delta: int | None) -> list[object]:
    """x (party 0) * y (party 1) + w (party 1), then the MAC check that precedes any output."""

    async def program(ctx):
        if delta is not None and ctx.party == CHEATER:
            shift_own_reduction(ctx, "random", delta)  # the first MAC reduction: owner 0's input mask
        x = await share_input(ctx, 0, np.array([7], dtype=np.uint64) if ctx.party == 0 else None, (1,))
        y = await share_input(ctx, 1, np.array([y_value], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        w = await share_input(ctx, 1, np.array([1000], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        z = ctx.add(await multiply(ctx, x, y), w)
        try:
            await check_macs(ctx, "before-outputs")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return type(exc).__name__
        return "ok"

    return asyncio.run(run_hm(N3, program))


def test_baseline_no_cheat_passes() -> None:
    assert _outcome(0, None) == ["ok"] * 3
    assert _outcome(5, None) == ["ok"] * 3


@pytest.mark.parametrize("delta", [1, 12345])
def test_abort_does_not_depend_on_an_honest_input(delta: int) -> None:
    """Security with abort: whether the honest parties abort must not depend on y. It does."""
    zero = _outcome(0, delta)
    nonzero = _outcome(5, delta)
    honest_zero, honest_nonzero = zero[:CHEATER], nonzero[:CHEATER]
    # Expected (secure): the cheat is caught whatever y is. Observed: y = 0 passes, y = 5 aborts.
    assert honest_zero == honest_nonzero, f"y=0 -> {honest_zero}, y=5 -> {honest_nonzero}: abort reveals y == 0"


def _full_run(y_value: int, guess: int) -> list[object]:
    """As above, then z + w is opened and MAC-checked (an output): the whole run passes or aborts.

    The cheater shifts (1) its share of the MAC reduction of owner 0's input mask by 1 (x's MAC
    error e = lambda_2) and (2) its share of the product's MAC reduction by -guess (the MAC of z
    gets -e * guess). z's MAC is then alpha z + e (y - guess): right iff y == guess.
    """
    p = 2**61 - 1

    async def program(ctx):
        if ctx.party == CHEATER:
            provider, original = ctx.provider, ctx.provider._open_degree
            done: set[str] = set()

            async def cheat(share, lbl, degree, check):
                if lbl in ("random", "mul") and lbl not in done:
                    done.add(lbl)
                    share = share.copy()
                    i, shift = (0, 1) if lbl == "random" else (1, -guess)  # "mul" reduces [value, MAC]
                    share[i] = np.uint64((int(share[i]) + shift) % p)
                return await original(share, lbl, degree, check)

            provider._open_degree = cheat
        x = await share_input(ctx, 0, np.array([7], dtype=np.uint64) if ctx.party == 0 else None, (1,))
        y = await share_input(ctx, 1, np.array([y_value], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        w = await share_input(ctx, 1, np.array([1000], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        z = ctx.add(await multiply(ctx, x, y), w)
        try:
            await check_macs(ctx, "before-outputs")
            (opened,) = await ctx.open([z], "output")
            await check_macs(ctx, "output")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return type(exc).__name__
        return int(opened[0])

    return asyncio.run(run_hm(N3, program))


def test_a_whole_run_succeeds_iff_an_honest_input_equals_the_cheaters_guess() -> None:
    right = _full_run(4242, 4242)[:CHEATER]
    wrong = _full_run(4243, 4242)[:CHEATER]
    # Expected (secure): the cheater deviated, so both runs abort. Observed: y == guess succeeds (with the
    # right result, 7 * 4242 + 1000 = 30694) and y != guess aborts.
    assert all(isinstance(o, str) for o in right + wrong), (
        f"y == guess -> {right}, y != guess -> {wrong}: success/abort answers 'is y == guess?'")
