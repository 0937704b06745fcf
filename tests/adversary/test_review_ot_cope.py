"""Review of COPE (MASCOT's MACs in the OT provider): what an inconsistent COPE message buys.

COPE [KOS16, figure 6] lets the value holder send ``u_k = t0_k - t1_k + x`` for each of the
61 bits ``k`` of the peer's key share; nothing forces the same ``x`` in every row. A
cheater that adds ``e`` to row ``k`` only shifts the honest key holder's MAC share by
``2^k alpha_k e``: nothing at all when the honest key bit ``alpha_k`` is 0, a MAC error
(caught by the sacrifice's MAC check) when it is 1. So the attack is a selective failure
on one bit of the honest MAC-key share: it survives with probability 1/2 and tells the
cheater that bit. That is the leakage MASCOT's F_[[.]] allows (each bit learned halves the
cheater's chance of going unnoticed, so a MAC forgery still succeeds with probability at
most 2^-61 overall); but it is not what the provider's docstring claimed ("a MAC on a
wrong value (inconsistent COPE messages) survives with probability at most 2/p"). These
tests pin the real behaviour both ways, against the real provider over real base OTs and
OT extension.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import CheatingChannel, label_of  # noqa: E402
from pqmpc_node.mpc.channel import Channel, InProcessHub  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.context import MPCContext  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.field import P61  # noqa: E402
from pqmpc_node.mpc.mac import check_macs  # noqa: E402
from pqmpc_node.mpc.ot.provider import FIELD_BITS, OtProvider  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mpc"))
from hm_run import run_hm  # noqa: E402

CONFIG = EngineConfig(2, sharing="additive", security="malicious")
HONEST, CHEATER = 0, 1
COUNT = 8


def honest_key_bits(alphas: dict[int, Any]) -> list[int]:
    return [(int(alphas[HONEST][0]) >> k) & 1 for k in range(FIELD_BITS)]


def run_with_cope_row_shift(choose_row: Any) -> tuple[dict[int, Any], int]:
    """Party 1 adds 1 to row ``choose_row(honest key bits)`` of every COPE message it sends.

    Returns each party's outcome (the opened ``a`` of its triples, or the exception) and the row.
    """
    alphas: dict[int, Any] = {}
    chosen: list[int] = []

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if label_of(tag) != "cope/u":
            return data
        if not chosen:
            chosen.append(choose_row(honest_key_bits(alphas)))
        u = np.frombuffer(data, dtype=np.uint64).copy().reshape(FIELD_BITS, -1)
        u[chosen[0]] = (u[chosen[0]] + np.uint64(1)) % np.uint64(P61)
        return u.tobytes()

    def channels(hub: InProcessHub, i: int) -> Channel:
        inner = hub.channel(i)
        return CheatingChannel(inner, tamper, []) if i == CHEATER else inner  # type: ignore[return-value]

    async def program(ctx: MPCContext) -> Any:
        assert isinstance(ctx.provider, OtProvider)
        alphas[ctx.party] = ctx.provider.mac_key_share()
        try:
            t = await ctx.triples((COUNT,))
            (a,) = await ctx.open([t.a], "use-a")
            await check_macs(ctx, "use")
            return a
        except MacCheckError as exc:
            return exc

    outcomes = asyncio.run(asyncio.wait_for(run_hm(CONFIG, program, channels=channels), 120))
    return dict(enumerate(outcomes)), chosen[0]


def test_cope_row_shift_under_a_zero_key_bit_goes_unnoticed() -> None:
    """The cheater learns ``alpha_k = 0`` by not being caught: the MACs stay correct and every later check passes."""
    outcomes, row = run_with_cope_row_shift(lambda bits: bits.index(0))
    assert not isinstance(outcomes[HONEST], BaseException), (row, outcomes[HONEST])


def test_cope_row_shift_under_a_one_key_bit_is_caught() -> None:
    """Under ``alpha_k = 1`` the same shift is a MAC error of ``2^k``: the sacrifice's MAC check catches it
    before any triple is used (the price of the guess: probability 1/2)."""
    outcomes, row = run_with_cope_row_shift(lambda bits: bits.index(1))
    err = outcomes[HONEST]
    assert isinstance(err, MacCheckError), (row, err)
    assert err.check in {"sacrifice", "triple-sacrifice"}, err
