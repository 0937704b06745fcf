"""Review (fixed): a single node tested a session OUTPUT against a guess, though no node may ever learn an output.

Fixed by checking every random value's MAC with the products and by secret coefficients
(``honest_majority.verify_products``): the attack below (kept, with the post-coin error now
blind to the coefficients) must end in an abort whatever the output. The finding as reported:

Output delivery (:func:`pqmpc_node.mpc.outputs.deliver_outputs`) takes fresh triples ``(a, b, c)`` after the
"before-outputs" check, opens ``e = y - b`` and only then runs the product check of ``c = a b``
(check "output-keys"). The MAC of ``a`` comes from ``_macs`` and is never checked; a cheater that shifts
its share of that reduction gives ``[alpha a]`` an error ``e_a``, so the MAC of ``c`` carries
``e_a * b = e_a * (y - e)``. In the product check the cheater already knows ``e`` (opened) and ``rho``
(coins), and its share of the post-coin reduction ``[alpha w]`` adds ``rho * e_a * (guess - e)``:
``T = rho * e_a * (y - guess)``. The honest parties finish delivering iff the output ``y`` equals the
cheater's guess, and abort otherwise.
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
from pqmpc_node.mpc.outputs import OutputRequest, deliver_outputs  # noqa: E402
from pqmpc_node.mpc.programs import SessionResult  # noqa: E402
from pqmpc_node.mpc.protocols import multiply, share_input  # noqa: E402

N3 = EngineConfig(3, threshold=1, sharing="shamir", security="malicious")
CHEATER = 2


def _deliver(x_value: int, guess: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    def cheat(ctx) -> None:
        provider, original_degree, original_open = ctx.provider, ctx.provider._open_degree, ctx.open
        state: dict[str, int] = {}

        async def spy_open(xs, label="open"):
            values = await original_open(xs, label)
            if label == "output-keys":
                state["e"] = int(values[0].reshape(-1)[0])
            return values

        async def shifted(share, label, degree, check):
            shift = None
            if label == "triple" and "a" not in state:  # the MAC reduction of the output triple's [a], [b]
                state["a"] = 1
                shift = 1
            elif label == "product-check-alpha" and "e" in state and "done" not in state:
                state["done"] = 1
                shift = (guess - state["e"]) % P61  # blind to the secret coefficients: the best it can do
            if shift is not None:
                share = share.copy()
                share[0] = np.uint64((int(share[0]) + shift) % P61)
            return await original_degree(share, label, degree, check)

        ctx.open = spy_open
        provider._open_degree = shifted

    async def program(ctx):
        x = await share_input(ctx, 0, np.array([x_value], dtype=np.uint64) if ctx.party == 0 else None, (1,))
        y = await share_input(ctx, 1, np.array([3], dtype=np.uint64) if ctx.party == 1 else None, (1,))
        z = await multiply(ctx, x, y)  # the output: 3 x
        if ctx.party == CHEATER:
            cheat(ctx)  # only from output delivery on
        try:
            await deliver_outputs(ctx, SessionResult({}, {"z": z}, 0), [OutputRequest("auditor", ("z",))])
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return type(exc).__name__
        return "delivered"

    return asyncio.run(run_hm(N3, program))[:CHEATER]


def test_a_node_learns_whether_the_output_equals_its_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    right = _deliver(1000, 3000, monkeypatch)   # output 3000 == guess
    wrong = _deliver(1001, 3000, monkeypatch)   # output 3003 != guess
    # Expected (secure): the cheat is caught in both runs. Observed: delivered iff the output equals the guess.
    assert right == wrong, f"output == guess -> {right}, output != guess -> {wrong}"
    assert set(right) == {"ProductCheckError"}, right
