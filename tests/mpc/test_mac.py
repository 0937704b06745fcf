"""Malicious security: batched MAC checks catch a tampered share, a tampered triple and a
wrong opening, naming the failed check; semi-honest sessions skip the check."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pytest

from pqmpc_local.mpc_simulation import make_contexts, run_local
from pqmpc_node.mpc import protocols as P
from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.mac import MacCheckError, check_macs
from pqmpc_node.mpc.preprocessing import DealerProvider, Triple
from pqmpc_node.mpc.shares import Shared

SEED = b"mac-tests-seed-0123456789abcdef0"
CONFIGS = [EngineConfig(3, security="malicious"), EngineConfig(3, threshold=1, sharing="shamir", security="malicious")]


class TamperingProvider:
    """Delegates to a dealer provider but adds 1 to this party's share of the first triple's ``a``."""

    def __init__(self, inner: DealerProvider) -> None:
        self._inner = inner
        self.authenticated = inner.authenticated
        self.done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def triples(self, shape: tuple[int, ...]) -> Triple:
        t = self._inner.triples(shape)
        if self.done:
            return t
        self.done = True
        d = self._inner.dealer.domain
        return Triple(Shared(d.add(t.a.value, d.scalar(1)), t.a.mac), t.b, t.c)


class LyingChannel:
    """Wraps a channel and changes the first element of every share this party opens under a matching tag."""

    def __init__(self, inner: Channel, match: str) -> None:
        self._inner = inner
        self._match = match

    @property
    def party(self) -> int:
        return self._inner.party

    @property
    def n(self) -> int:
        return self._inner.n

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if self._match in tag:
            payloads = {p: (int.from_bytes(b[:8], "little") ^ 1).to_bytes(8, "little") + b[8:] for p, b in payloads.items()}
        await self._inner.send_many(tag, payloads)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await self._inner.receive_many(tag, peers)


def _session(config: EngineConfig, cheat: str) -> list[Any]:
    contexts, dealer = make_contexts(config, seed=SEED)
    d, fx = contexts[0].domain, contexts[0].fixed
    cheater = contexts[1]
    if cheat == "triple":
        cheater.provider = TamperingProvider(cheater.provider)  # type: ignore[arg-type]
    if cheat == "opening":
        cheater.channel = LyingChannel(cheater.channel, "result")

    async def program(ctx: MPCContext) -> Any:
        x = dealer.share_input(ctx.party, fx.encode([1.0, 2.0, 3.0], d), "x")
        if cheat == "share" and ctx.party == 1:
            x = Shared(d.add(x.value, d.scalar(5)), x.mac)
        y = await P.multiply(ctx, x, x)
        out = await ctx.open([y], "result")
        await check_macs(ctx, "final")
        return out

    return asyncio.run(run_local(contexts, program))


@pytest.mark.parametrize("config", CONFIGS, ids=["additive", "shamir"])
def test_honest_run_passes(config: EngineConfig) -> None:
    results = _session(config, "none")
    assert len(results) == config.parties


@pytest.mark.parametrize("config", CONFIGS, ids=["additive", "shamir"])
@pytest.mark.parametrize("cheat", ["share", "triple", "opening"])
def test_cheating_is_caught(config: EngineConfig, cheat: str) -> None:
    with pytest.raises(MacCheckError) as info:
        _session(config, cheat)
    # Shamir openings with all shares present are also checked for consistency at once
    assert info.value.check in ("final", "opening-consistency")
    assert info.value.check in str(info.value) and "abort" in str(info.value)
    assert any("beaver" in label or "result" in label for label in info.value.labels)


def test_semi_honest_skips_macs() -> None:
    contexts, dealer = make_contexts(EngineConfig(3), seed=SEED)
    d = contexts[0].domain

    async def program(ctx: MPCContext) -> Any:
        x = dealer.share_input(ctx.party, d.from_signed(np.array([4])), "x")
        assert x.mac is None
        if ctx.party == 1:
            x = Shared(d.add(x.value, d.scalar(1)), None)
        (out,) = await ctx.open([x])
        await check_macs(ctx)  # no MACs: nothing to check, no error
        return out

    out = asyncio.run(run_local(contexts, program))[0]
    assert int(d.to_signed(out)[0]) == 5  # the lie goes through undetected, as semi-honest allows
