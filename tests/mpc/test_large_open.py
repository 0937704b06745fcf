"""Openings larger than one message go as several parts (MPCContext.max_message_bytes), transparently."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import numpy as np
import pytest

from pqmpc_node.mpc.channel import ChannelError, InProcessChannel, InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MAX_MESSAGE_BYTES, MPCContext, part_tags
from pqmpc_node.mpc.preprocessing import Dealer, DealerProvider
from pqmpc_node.mpc.randomness import AesCtrRandom, derive_key

BOUND = 1000  # bytes: 125 elements per message


class CappedChannel:
    """An in-process channel that refuses any message over ``BOUND`` bytes, like a link's max_message."""

    def __init__(self, inner: InProcessChannel) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.tags: list[str] = []

    @property
    def party(self) -> int:
        return self.inner.party

    @property
    def n(self) -> int:
        return self.inner.n

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        for data in payloads.values():
            if len(data) > BOUND:
                raise ChannelError(f"oversized_message: {len(data)} bytes")
            self.sizes.append(len(data))
        self.tags.append(tag)
        await asyncio.sleep(0)  # let the other parties run between parts
        await self.inner.send_many(tag, {p: bytes(d) for p, d in payloads.items()})

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await self.inner.receive_many(tag, peers)

    def discard(self, tag: str, peers: Iterable[int]) -> None:
        self.inner.discard(tag, peers)


def test_part_tags() -> None:
    assert part_tags("7:open", 1000, 1000) == ["7:open"]
    assert part_tags("7:open", 1001, 1000) == ["7:open#0", "7:open#1"]
    assert len(part_tags("t", 614 * 10**6)) == -(-614 * 10**6 // MAX_MESSAGE_BYTES) == 19
    with pytest.raises(ValueError):
        part_tags("t", 10, 4)


@pytest.mark.parametrize("config", [EngineConfig(3), EngineConfig(3, sharing="shamir", threshold=1),
                                    EngineConfig(3, security="malicious")])
async def test_large_opening_goes_in_parts(config: EngineConfig) -> None:
    domain, scheme = config.domain(), config.scheme()
    authenticated = config.security == "malicious"
    dealer = Dealer(domain, scheme, b"large-open-seed-0123456789abcdef", authenticated=authenticated)
    hub = InProcessHub(3)
    chans = [CappedChannel(hub.channel(i)) for i in range(3)]
    values = np.arange(1000, dtype=np.uint64) * np.uint64(3)  # 8000 bytes: 8 parts of <= 1000
    small = np.arange(5, dtype=np.uint64)
    x = [dealer.share_input(i, values, "x") for i in range(3)]
    y = [dealer.share_input(i, small, "y") for i in range(3)]

    async def party(i: int) -> tuple[np.ndarray, np.ndarray]:
        ctx = MPCContext(party=i, channel=chans[i], domain=domain, scheme=scheme, provider=DealerProvider(dealer, i),
                         rng=AesCtrRandom(derive_key(b"large", i)), security=config.security)
        ctx.max_message_bytes = BOUND
        (big,) = await ctx.open([x[i]])
        (little,) = await ctx.open([y[i]])
        assert ctx.rounds_used == 2
        if authenticated:
            assert [r.values.size for r in ctx.pending] == [1000, 5]
        return big, little

    results = await asyncio.gather(*(party(i) for i in range(3)))
    for big, little in results:
        assert np.array_equal(big, values)
        assert np.array_equal(little, small)
    for ch in chans:
        assert max(ch.sizes) <= BOUND
        assert sum(t.startswith("1:open#") for t in ch.tags) == 8  # the large opening: 8 parts
        assert "2:open" in ch.tags  # the small one: its usual single message and tag


async def test_without_parts_the_cap_is_hit() -> None:
    """The same opening with the bound above the cap fails: the parts are what makes it fit."""
    config = EngineConfig(3)
    domain, scheme = config.domain(), config.scheme()
    dealer = Dealer(domain, scheme, b"large-open-seed-0123456789abcdef", authenticated=False)
    hub = InProcessHub(3)
    chans = [CappedChannel(hub.channel(i)) for i in range(3)]
    x = [dealer.share_input(i, np.arange(1000, dtype=np.uint64), "x") for i in range(3)]

    async def party(i: int) -> None:
        ctx = MPCContext(party=i, channel=chans[i], domain=domain, scheme=scheme, provider=DealerProvider(dealer, i),
                         rng=AesCtrRandom(derive_key(b"large", i)))
        await ctx.open([x[i]])

    with pytest.raises(ChannelError, match="oversized_message"):
        await asyncio.gather(*(party(i) for i in range(3)))
