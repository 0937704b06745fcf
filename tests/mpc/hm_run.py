"""In-process parties with a dealer-free provider (tests and benchmarks).

Shamir sessions: each party agrees its PRSS keys with the others over an in-process hub
(:class:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider`); additive sessions: each
pair runs its base OTs (:class:`~pqmpc_node.mpc.ot.provider.OtProvider`). Then every party
runs with an :class:`~pqmpc_node.mpc.context.MPCContext` bound to its own provider.
Nothing is dealt: the same code path the nodes run, minus the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from pqmpc_node.mpc.channel import Channel, InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.honest_majority import HonestMajorityProvider
from pqmpc_node.mpc.numerics import decode_fractions
from pqmpc_node.mpc.ot.provider import OtProvider
from pqmpc_node.mpc.outputs import OutputRequest, deliver_outputs, verify_delivered
from pqmpc_node.mpc.programs import (
    AggregatePlan,
    ExecutionPlan,
    SessionInputs,
    encode_column,
    output_decodings,
    run_session,
)
from pqmpc_node.mpc.protocols import share_input
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.mpc.sharing import AdditiveScheme, ShamirScheme

T = TypeVar("T")


async def hm_context(config: EngineConfig, channel: Channel, *, live: Sequence[int] | None = None,
                     session: str = "hm", seed: bytes = b"hm-seed") -> MPCContext:
    """One party's context with a freshly made dealer-free provider (PRSS for Shamir, OT for additive)."""
    scheme = config.scheme()
    parties = list(range(config.parties)) if live is None else sorted(live)
    domain = config.domain()
    provider: HonestMajorityProvider | OtProvider
    if isinstance(scheme, ShamirScheme):
        provider = await HonestMajorityProvider.create(channel, domain=domain, scheme=scheme, live=parties,
                                                       session=session, authenticated=config.security == "malicious")
    elif isinstance(scheme, AdditiveScheme):
        provider = await OtProvider.create(channel, domain=domain, scheme=scheme, live=parties, session=session,
                                           authenticated=config.security == "malicious")
    else:
        raise ValueError(f"no dealer-free provider for {scheme!r}")
    ctx = MPCContext(party=channel.party, channel=channel, domain=domain, scheme=scheme, provider=provider,
                     rng=AesCtrRandom(derive_key(seed, "party", channel.party)), security=config.security,
                     fixed=FixedPoint(config.frac_bits), live=parties, session=session)
    provider.bind(ctx)
    return ctx


async def run_hm(config: EngineConfig, program: Callable[[MPCContext], Awaitable[T]], *,
                 live: Sequence[int] | None = None,
                 channels: Callable[[InProcessHub, int], Channel] | None = None) -> list[T]:
    """Every (live) party makes its context and runs ``program``; results in party order."""
    hub = InProcessHub(config.parties)
    parties = list(range(config.parties)) if live is None else sorted(live)

    async def one(i: int) -> T:
        channel = hub.channel(i) if channels is None else channels(hub, i)
        ctx = await hm_context(config, channel, live=parties)
        return await program(ctx)

    return list(await asyncio.gather(*(one(i) for i in parties)))


def run_program_hm(config: EngineConfig, plan: ExecutionPlan, table: Mapping[str, Any]) -> dict[str, Any]:
    """Party 0 inputs ``table``; every party runs ``plan``; one recipient's exact decoded outputs."""
    if not isinstance(plan, AggregatePlan):
        raise ValueError("aggregate programs only")

    async def party(ctx: MPCContext) -> Any:
        cols: dict[str, Shared] = {}
        for k, v in table.items():
            values = encode_column(plan, k, np.asarray(v), ctx.domain)
            cols[k] = await share_input(ctx, 0, values if ctx.party == 0 else None, tuple(values.shape))
        result = await run_session(ctx, plan, SessionInputs(cols, {}))
        delivered = await deliver_outputs(ctx, result, [OutputRequest("r", tuple(result.outputs))])
        return result, delivered["r"], ctx

    runs = asyncio.run(run_hm(config, party))
    first, _, ctx0 = runs[0]
    d = ctx0.domain
    decodings = output_decodings(plan)
    out: dict[str, Any] = {"valid_rows": first.valid_rows}
    for name in first.outputs:
        y = verify_delivered(d, ctx0.scheme, {ctx.party: dl[name] for _, dl, ctx in runs},
                             authenticated=config.security == "malicious")
        out[name] = decode_fractions(decodings[name], [int(v) for v in d.to_signed(y).reshape(-1).tolist()],
                                     first.valid_rows)
    return out
