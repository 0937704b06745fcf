"""Review of the OT provider's authenticated triples: what one deviation buys, measured exactly.

Against the real provider (real base OTs, OT extension, Gilboa, COPE, sacrifice) over an
in-process hub, with the honest party's secrets read back to aim the attack:

* Gilboa selective failure: a cheating OLE sender shifts the correction of one bit ``k``
  of one honest ``a`` element. The honest share moves only if that bit is 1. So the
  attack goes unnoticed exactly when the bit is 0 (the cheater learns it), and is caught
  by the sacrifice when it is 1: each bit learned costs probability 1/2, the premise of
  the ``tau``-combining argument. The bit is of one uncombined ``a_k``, not of the
  triple's ``a``.
* A party that uses another MAC-key share than the bits it chose in the COPE set-up
  (changes ``alpha_i`` after the seeds are fixed): its MAC shares no longer match the
  other parties' COPE shares of its key, and the first MAC check (the sacrifice) fails.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import CheatingChannel, label_of  # noqa: E402
from pqmpc_node.mpc.channel import Channel, InProcessHub  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.context import MPCContext  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.field import P61  # noqa: E402
from pqmpc_node.mpc.mac import check_macs  # noqa: E402
from pqmpc_node.mpc.ot.provider import FIELD_BITS, TAU, OtProvider  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mpc"))
from hm_run import run_hm  # noqa: E402

CONFIG = EngineConfig(2, sharing="additive", security="malicious")
HONEST, CHEATER = 0, 1
COUNT = 8


async def _use_triples(ctx: MPCContext) -> Any:
    """Make triples, open their ``a`` (MAC-checked): the opened values, or the check that failed."""
    try:
        t = await ctx.triples((COUNT,))
        (a,) = await ctx.open([t.a], "use-a")
        await check_macs(ctx, "use")
        return a
    except MacCheckError as exc:
        return exc


def _run(tamper: Any, before: Any = None) -> dict[int, Any]:
    def channels(hub: InProcessHub, i: int) -> Channel:
        inner = hub.channel(i)
        return CheatingChannel(inner, tamper, []) if (i == CHEATER and tamper is not None) else inner  # type: ignore[return-value]

    async def program(ctx: MPCContext) -> Any:
        if before is not None:
            before(ctx)
        return await _use_triples(ctx)

    return dict(enumerate(asyncio.run(asyncio.wait_for(run_hm(CONFIG, program, channels=channels), 120))))


def _gilboa_one_bit(want: int) -> tuple[dict[int, Any], int]:
    """The cheater shifts the correction of the first honest ``a`` element's bit ``k``, where that bit is ``want``."""
    drawn: list[Any] = []
    chosen: list[int] = []

    def record(ctx: MPCContext) -> None:
        if ctx.party != HONEST:
            return
        provider = ctx.provider
        assert isinstance(provider, OtProvider)
        original = provider._random

        def spy(shape: tuple[int, ...]) -> Any:
            out = original(shape)
            if shape[1:] == (TAU,) and not drawn:
                drawn.append(out.copy())
            return out

        provider._random = spy  # type: ignore[method-assign]

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if label_of(tag) != "mascot-multiply/corr" or chosen:
            return data
        first = int(drawn[0].reshape(-1)[0])
        k = [(first >> j) & 1 for j in range(FIELD_BITS)].index(want)
        chosen.append(k)
        corr = np.frombuffer(data, dtype=np.uint64).copy()
        corr[k] = (corr[k] + np.uint64(1)) % np.uint64(P61)  # element 0, bit k
        return corr.tobytes()

    outcomes = _run(tamper, record)
    assert chosen, "the attack never ran"
    return outcomes, chosen[0]


def test_gilboa_shift_under_a_zero_bit_goes_unnoticed() -> None:
    outcomes, k = _gilboa_one_bit(0)
    assert not isinstance(outcomes[HONEST], BaseException), (k, outcomes[HONEST])


def test_gilboa_shift_under_a_one_bit_is_caught_by_the_sacrifice() -> None:
    outcomes, k = _gilboa_one_bit(1)
    err = outcomes[HONEST]
    assert isinstance(err, MacCheckError) and err.check == "triple-sacrifice", (k, err)


def test_mac_key_share_changed_after_the_cope_setup_is_caught() -> None:
    """The cheater keeps its COPE choice bits (alpha) but MACs and checks with alpha + 1 from then on."""

    def swap_key(ctx: MPCContext) -> None:
        if ctx.party != CHEATER:
            return
        provider = ctx.provider
        assert isinstance(provider, OtProvider) and provider._alpha is not None
        other = ctx.domain.add(provider._alpha, ctx.domain.asarray(np.ones(1, dtype=np.uint64)))
        provider._alpha = other
        ctx.mac_key = other

    outcomes = _run(None, swap_key)
    err = outcomes[HONEST]
    assert isinstance(err, MacCheckError) and err.check in {"sacrifice", "peer-abort"}, err


def test_honest_run_of_this_harness_passes() -> None:
    """Without any deviation the same harness ends with both parties' openings equal (the attacks above are the cause)."""
    outcomes = _run(None)
    assert not isinstance(outcomes[HONEST], BaseException) and not isinstance(outcomes[CHEATER], BaseException)
    assert np.array_equal(outcomes[HONEST], outcomes[CHEATER])


