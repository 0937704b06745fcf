"""Shamir sessions survive a party lost mid-session (openings wait for the first t+1
shares); the mailbox fails only waits on a lost peer; the allocator tuning is harmless."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from pqmpc_local.mpc_simulation import make_contexts
from pqmpc_node.mpc import protocols as P
from pqmpc_node.mpc.backend import tune_allocator
from pqmpc_node.mpc.channel import ChannelError, InProcessChannel, Mailbox, receive_first
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.field import MersenneField61, P61
from pqmpc_node.mpc.mac import check_macs

SEED = b"robust-tests-seed-0123456789abcd"


def _run_with_loss(config: EngineConfig, lose: int, after_round: int) -> tuple[list[Any], list[int]]:
    """Parties compute x*y, then (x*y)*y, ...; party ``lose`` disappears after ``after_round`` products."""
    contexts, dealer = make_contexts(config, seed=SEED)
    hub = contexts[0].channel._hub  # type: ignore[attr-defined]  # InProcessChannel's hub
    rng = np.random.default_rng(7)
    x = rng.integers(-1000, 1000, 8)
    y = rng.integers(-3, 4, 8)
    domain = contexts[0].domain

    async def party(ctx: MPCContext) -> Any:
        sx = dealer.share_input(ctx.party, domain.from_signed(x), "x")
        sy = dealer.share_input(ctx.party, domain.from_signed(y), "y")
        z = sx
        for r in range(4):
            if r == after_round and ctx.party == lose:
                hub.disconnect(lose)
                return None
            z = await P.multiply(ctx, z, sy)
        (opened,) = await ctx.open([z], "result")
        await check_macs(ctx)
        return domain.to_signed(opened)

    async def main() -> list[Any]:
        return list(await asyncio.wait_for(asyncio.gather(*(party(c) for c in contexts)), 20))

    results = asyncio.run(main())
    expected = (x * y**4).tolist()
    return results, expected


@pytest.mark.parametrize(
    "config",
    [EngineConfig(5, threshold=2, sharing="shamir"), EngineConfig(5, threshold=2, sharing="shamir", security="malicious")],
    ids=["semi-honest", "malicious"],
)
def test_shamir_session_survives_a_party_lost_mid_session(config: EngineConfig) -> None:
    results, expected = _run_with_loss(config, lose=3, after_round=2)
    assert results[3] is None
    for party, res in enumerate(results):
        if party != 3:
            assert res.tolist() == expected, f"party {party}"


def test_additive_session_fails_fast_when_a_party_is_lost() -> None:
    with pytest.raises(ChannelError, match="party 1"):
        _run_with_loss(EngineConfig(3), lose=1, after_round=1)


def test_too_many_lost_parties_is_an_error_not_a_hang() -> None:
    contexts, dealer = make_contexts(EngineConfig(5, threshold=2, sharing="shamir"), seed=SEED)
    hub = contexts[0].channel._hub  # type: ignore[attr-defined]
    domain = contexts[0].domain

    async def party(ctx: MPCContext) -> Any:
        s = dealer.share_input(ctx.party, domain.from_signed(np.arange(4)), "x")
        if ctx.party in (0, 1, 2):
            hub.disconnect(ctx.party)
            return None
        return await ctx.open([s], "open")

    async def main() -> list[Any]:
        return list(await asyncio.wait_for(asyncio.gather(*(party(c) for c in contexts), return_exceptions=True), 10))

    results = asyncio.run(main())
    assert all(isinstance(r, ChannelError) for r in results[3:]), results[3:]


def test_receive_first_returns_early_and_drops_late_replies() -> None:
    async def main() -> None:
        from pqmpc_node.mpc.channel import InProcessHub

        hub = InProcessHub(4)
        ch: InProcessChannel = hub.channel(0)
        await hub.channel(2).send_many("t", {0: b"two"})
        await hub.channel(3).send_many("t", {0: b"three"})
        got = await receive_first(ch, "t", [1, 2, 3], 2)
        assert got == {2: b"two", 3: b"three"}
        await hub.channel(1).send_many("t", {0: b"late"})  # dropped on arrival, not buffered
        assert (1, "t") not in ch.mailbox._slots
        with pytest.raises(ChannelError, match="cannot wait"):
            await receive_first(ch, "u", [1], 2)

    asyncio.run(main())


def test_mailbox_fails_only_the_lost_peer() -> None:
    async def main() -> None:
        box = Mailbox()
        waiting = asyncio.ensure_future(box.take(2, "a"))
        await asyncio.sleep(0)
        box.fail(ChannelError("party 1 lost"), peer=1)
        box.deliver(2, "a", b"ok")
        assert await waiting == b"ok"
        with pytest.raises(ChannelError, match="party 1 lost"):
            await box.take(1, "b")
        box.fail(ChannelError("closed"))
        with pytest.raises(ChannelError, match="closed"):
            await box.take(2, "c")

    asyncio.run(main())


def test_field_ops_branch_free_at_the_edges() -> None:
    """The branch-free conditional subtraction at 0, 1, p-1 and broadcast shapes."""
    f = MersenneField61()
    edge = np.array([0, 1, 2, P61 - 2, P61 - 1], dtype=np.uint64)
    grid_a, grid_b = np.meshgrid(edge, edge)
    a, b = grid_a.ravel(), grid_b.ravel()
    big_a, big_b = a.astype(object), b.astype(object)
    assert f.add(a, b).tolist() == ((big_a + big_b) % P61).tolist()
    assert f.sub(a, b).tolist() == ((big_a - big_b) % P61).tolist()
    assert f.mul(a, b).tolist() == ((big_a * big_b) % P61).tolist()
    assert f.neg(a).tolist() == ((-big_a) % P61).tolist()
    acc = a.copy()
    assert f.iadd(acc, b) is acc and acc.tolist() == ((big_a + big_b) % P61).tolist()
    col = np.array([[P61 - 1], [2]], dtype=np.uint64)
    assert f.mul(col, np.stack([a, b])).tolist() == ((col.astype(object) * np.stack([big_a, big_b])) % P61).tolist()


def test_tune_allocator_keeps_results_and_reports() -> None:
    applied = tune_allocator()
    assert isinstance(applied, bool)
    x = np.arange(1 << 20, dtype=np.uint64)
    assert int((x * x).sum(dtype=np.uint64)) == sum(i * i for i in range(0, 1 << 20)) % (1 << 64)
