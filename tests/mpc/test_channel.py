"""Channels: early messages buffered by round tag, replays refused, and a real multi-party
multiplication over the plain-TCP channel on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pqmpc_local.tcp_channel import TcpChannel
from pqmpc_node.mpc import protocols as P
from pqmpc_node.mpc.channel import ChannelError, InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.preprocessing import Dealer, DealerProvider
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key
from pqmpc_local.processes import free_ports


async def test_early_messages_are_buffered_and_replays_refused() -> None:
    hub = InProcessHub(3)
    a, b = hub.channel(0), hub.channel(1)
    await a.send_many("r2", {1: b"second"})
    await a.send_many("r1", {1: b"first"})
    assert await b.receive_many("r1", [0]) == {0: b"first"}
    assert await b.receive_many("r2", [0]) == {0: b"second"}
    with pytest.raises(ChannelError, match="replayed"):
        await a.send_many("r1", {1: b"again"})
    with pytest.raises(ChannelError, match="cannot send"):
        await a.send_many("r3", {0: b"self"})



async def test_tcp_channel_runs_a_session() -> None:
    config = EngineConfig(3, security="malicious")
    addresses = [("127.0.0.1", p) for p in free_ports(3)]
    domain, scheme = config.domain(), config.scheme()
    dealer = Dealer(domain, scheme, b"tcp-test-seed-0123456789abcdef01", authenticated=True)
    fx = FixedPoint()

    async def party(i: int) -> np.ndarray:
        channel = await TcpChannel.connect(i, addresses)
        try:
            ctx = MPCContext(
                party=i, channel=channel, domain=domain, scheme=scheme, provider=DealerProvider(dealer, i),
                rng=AesCtrRandom(derive_key(b"tcp", i)), security="malicious",
            )
            x = dealer.share_input(i, fx.encode(np.arange(1000) / 10 - 50, domain), "x")
            (out,) = await ctx.open([await P.relu(ctx, await P.fx_multiply(ctx, x, x))])
            return fx.decode(out, domain)
        finally:
            await channel.close()

    results = await asyncio.gather(*(party(i) for i in range(3)))
    ref = (np.arange(1000) / 10 - 50) ** 2
    for r in results:
        assert np.allclose(r, ref, atol=1e-3)
