"""Run all parties of a session in one process over an in-process channel (tests, benchmarks).

One trusted dealer in the same process hands every party its preprocessing, so this is
a test/benchmark stand-in for a whole session, never shipped in ``pqmpc_node``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.preprocessing import Dealer, DealerProvider
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key

__all__ = ["make_contexts", "run_local"]

T = TypeVar("T")


def make_contexts(
    config: EngineConfig, *, seed: bytes, live: Sequence[int] | None = None, xp: Any | None = None
) -> tuple[list[MPCContext], Dealer]:
    """Contexts for the ``live`` parties (default all) sharing one hub and one dealer."""
    domain = config.domain(xp)
    scheme = config.scheme()
    dealer = Dealer(domain, scheme, derive_key(seed, "dealer"), authenticated=config.security == "malicious")
    hub = InProcessHub(config.parties)
    parties = list(range(config.parties)) if live is None else sorted(live)
    contexts = [
        MPCContext(
            party=i,
            channel=hub.channel(i),
            domain=domain,
            scheme=scheme,
            provider=DealerProvider(dealer, i),
            rng=AesCtrRandom(derive_key(seed, "party", i)),
            security=config.security,
            fixed=FixedPoint(config.frac_bits),
            live=parties,
        )
        for i in parties
    ]
    return contexts, dealer


async def run_local(contexts: Sequence[MPCContext], program: Callable[[MPCContext], Awaitable[T]]) -> list[T]:
    """Run ``program`` at every context concurrently; results in party order."""
    return list(await asyncio.gather(*(program(ctx) for ctx in contexts)))
