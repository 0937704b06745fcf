"""Review (fixed): the product check's own multiplication ``[alpha w] = reduce([alpha][w])`` ran AFTER public coins.

Fixed by secret coefficients (``honest_majority.verify_products`` step 1: a PRSS ``[rho]``):
the cheater now picks ``e3`` blind to ``rho``, so the attack below can no longer aim; the test
keeps the attack (its best blind version: ``e3 = e * guess``) and requires the same outcome,
an abort, whatever the honest input. The finding as reported:

A cheater knows ``rho`` when it sends its share of that reduction, so its additive error ``e3`` is
chosen knowing the coins: ``T = A - alpha B - e3``. Any MAC-only error term ``A`` it can predict up
to a guess of secret data can be cancelled exactly when the guess is right. Combined with a MAC
error on an input mask (``A = rho * e * y``, see test_review_hm_selective_mac.py) the cheater picks
``e3 = rho * e * c`` and the session aborts iff ``y != c``: an equality test of an honest input
against any value the cheater chooses. (Chida et al. avoid this by opening the MAC key ``r``
after the coins, so ``T = u - r w`` is linear with no post-coin multiplication; keeping ``alpha``
secret across checks needs another construction, e.g. multiply every post-coin term by a fresh
random ``[beta]`` whose MAC-product ``[alpha beta]`` was fixed before the coins.)
Including the input wires' MACs in the check (the fix for the other finding) does not stop this:
the cheater then adds ``rho_x * e`` to ``e3`` as well.
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
from pqmpc_node.mpc.field import P61  # noqa: E402
from pqmpc_node.mpc.mac import check_macs  # noqa: E402
from pqmpc_node.mpc.protocols import multiply, share_input  # noqa: E402

N3 = EngineConfig(3, threshold=1, sharing="shamir", security="malicious")
CHEATER = 2
DELTA = 1  # the cheater's shift of its share of the MAC of owner 0's input mask


def _outcome(y_value: int, guess: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    def cheat(ctx) -> None:
        provider, original = ctx.provider, ctx.provider._open_degree
        done: set[str] = set()

        async def shifted(share, label, degree, check):
            shift = None
            if label == "random" and label not in done:
                shift = DELTA  # e = lambda_2 * DELTA on x's MAC
            elif label == "product-check-alpha" and label not in done:
                shift = DELTA * guess % P61  # e3 = e * guess: rho is secret now, so this is the cheater's best
            if shift is not None:
                done.add(label)
                share = share.copy()
                share[0] = np.uint64((int(share[0]) + shift) % P61)
            return await original(share, label, degree, check)

        provider._open_degree = shifted

    async def program(ctx):
        if ctx.party == CHEATER:
            cheat(ctx)
        x = await share_input(ctx, 0, np.array([7], dtype=np.uint64) if ctx.party == 0 else None, (1,))
        y = await share_input(ctx, 1, np.array([y_value], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        w = await share_input(ctx, 1, np.array([1000], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        ctx.add(await multiply(ctx, x, y), w)
        try:
            await check_macs(ctx, "before-outputs")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return type(exc).__name__
        return "ok"

    return asyncio.run(run_hm(N3, program))[:CHEATER]


def test_the_cheater_tests_an_honest_input_against_a_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expected (secure): the cheat is caught whatever y is. Observed: it passes exactly when y == guess."""
    right = _outcome(123456, 123456, monkeypatch)
    wrong = _outcome(123457, 123456, monkeypatch)
    assert right == wrong, f"y == guess -> {right}, y != guess -> {wrong}: the abort answers 'is y == guess?'"
    assert set(right) == {"ProductCheckError"}, right
