"""Review of square-and-open random bits (:func:`pqmpc_node.mpc.derived.square_and_open_bits`) under a
rushing cheater, with the OT provider.

A zero square (probability 1/p for honest parties) makes the element be drawn again. A
*rushing* cheater (it waits for the honest shares of the opened square before sending
its own, which any network peer can do) can make every square open to 0: it sends minus
the honest shares. With the MAC check only after the redraw loop, the honest parties
redraw, round after round, as long as the triple pool holds verified spares (up to
``MAX_BATCH`` = 65536 triples, about a thousand rounds for one 61-bit request); only
the next refill's sacrifice, whose MAC check happens to cover the pending openings,
ends it. The secure behaviour: a zero square is MAC-checked before anything is redrawn,
so the forced zero is caught at once, whatever the provider's pool holds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import label_of  # noqa: E402
from pqmpc_node.mpc.channel import Channel, InProcessHub  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.context import MPCContext  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.field import P61  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mpc"))
from hm_run import run_hm  # noqa: E402

CONFIG = EngineConfig(2, sharing="additive", security="malicious")
HONEST, CHEATER = 0, 1
SPARE = 3000
"""Triples made before the bits: the pool then holds about this many spares (49 redraws of 61 bits)."""


class RushingZeroSquares:
    """The cheater's channel: in every ``bit-open`` round it first takes the honest share, then sends its negation."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._early: dict[str, dict[int, bytes]] = {}
        self.forced = 0

    @property
    def party(self) -> int:
        return int(self._inner.party)

    @property
    def n(self) -> int:
        return int(self._inner.n)

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if label_of(tag) == "bit-open":
            got = await self._inner.receive_many(tag, [HONEST])
            honest = np.frombuffer(got[HONEST], dtype=np.uint64)
            mine = ((np.uint64(P61) - honest) % np.uint64(P61)).tobytes()
            # The cheater follows the honest party's view (a zero square) so both stay in step:
            # its own engine sees "the honest share" as minus its true share.
            true_share = np.frombuffer(bytes(next(iter(payloads.values()))), dtype=np.uint64)
            self._early[tag] = {HONEST: ((np.uint64(P61) - true_share) % np.uint64(P61)).tobytes()}
            payloads = {p: mine for p in payloads}
            self.forced += 1
        await self._inner.send_many(tag, payloads)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        if tag in self._early:
            return self._early.pop(tag)
        return dict(await self._inner.receive_many(tag, peers))


def test_forced_zero_squares_are_caught_before_any_redraw() -> None:
    cheats: list[RushingZeroSquares] = []

    def channels(hub: InProcessHub, i: int) -> Channel:
        if i != CHEATER:
            return hub.channel(i)
        cheats.append(RushingZeroSquares(hub.channel(i)))
        return cheats[0]  # type: ignore[return-value]

    async def program(ctx: MPCContext) -> Any:
        try:
            # Fill the triple pool first (a session that already made triples): redraws then
            # take verified spares, and no refill's sacrifice MAC-checks on the loop's behalf.
            await ctx.triples((SPARE,))
            await ctx.triples((1,))
            return await ctx.edabits((1,))
        except MacCheckError as exc:
            return exc

    async def main() -> list[Any]:
        # Bounded in case a change makes the redraws unbounded.
        return await asyncio.wait_for(run_hm(CONFIG, program, channels=channels), 60)

    outcomes = asyncio.run(main())
    err = outcomes[HONEST]
    assert isinstance(err, MacCheckError), err
    assert cheats[0].forced == 1, f"{cheats[0].forced} bit-open rounds: the forced zero was redrawn before the MAC check"
