"""The session report's ``blamedParties``: a party whose reveal does not open its commitment
is named by a structured field on the MAC-check error (:class:`CommitmentMismatchError`,
still a :class:`MacCheckError` for existing callers), and the node's status document
carries it; failures that prove cheating but not who (sigmas that do not sum to 0) name
nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from pqmpc_local.mpc_simulation import make_contexts
from pqmpc_node.mpc.channel import Channel
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.mac import CommitmentMismatchError, MacCheckError, check_macs
from pqmpc_node.mpc.shares import Shared
from pqmpc_node.sessions import Phase, SessionRuntime

SEED = b"report-tests-seed-0123456789abcd"
CONFIGS = [EngineConfig(3, security="malicious"), EngineConfig(3, threshold=1, sharing="shamir", security="malicious")]


class BadRevealChannel:
    """Flips a bit of the nonce this party reveals under a matching tag (its commitment no longer opens)."""

    def __init__(self, inner: Channel, match: str) -> None:
        self._inner, self._match = inner, match

    @property
    def party(self) -> int:
        return self._inner.party

    @property
    def n(self) -> int:
        return self._inner.n

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if self._match in tag:
            payloads = {p: bytes([b[0] ^ 1]) + b[1:] for p, b in payloads.items()}
        await self._inner.send_many(tag, payloads)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await self._inner.receive_many(tag, peers)


def _run(config: EngineConfig, cheat: str) -> list[Any]:
    contexts, dealer = make_contexts(config, seed=SEED)
    d, fx = contexts[0].domain, contexts[0].fixed
    if cheat == "reveal":
        contexts[1].channel = BadRevealChannel(contexts[1].channel, "sigma/reveal")

    async def program(ctx: MPCContext) -> Any:
        x = dealer.share_input(ctx.party, fx.encode([1.0, 2.0], d), "x")
        if cheat == "share" and ctx.party == 1:
            x = Shared(d.add(x.value, d.scalar(5)), x.mac)
        out = await ctx.open([x], "result")
        await check_macs(ctx, "final")
        return out

    async def all_parties() -> list[Any]:
        return list(await asyncio.gather(*(program(c) for c in contexts), return_exceptions=True))

    return asyncio.run(all_parties())


@pytest.mark.parametrize("config", CONFIGS, ids=["additive", "shamir"])
def test_bad_reveal_names_the_party(config: EngineConfig) -> None:
    results = _run(config, "reveal")
    for party in (0, 2):
        exc = results[party]
        assert isinstance(exc, CommitmentMismatchError) and isinstance(exc, MacCheckError), results
        assert exc.blamed_parties == (1,)
        assert exc.check == "final/sigma" and "party 1" in str(exc) and "abort" in str(exc)


@pytest.mark.parametrize("config", CONFIGS, ids=["additive", "shamir"])
def test_unattributable_failure_names_nobody(config: EngineConfig) -> None:
    results = _run(config, "share")
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors and all(isinstance(e, MacCheckError) for e in errors), results
    assert not any(isinstance(e, CommitmentMismatchError) for e in errors)


def test_status_document_reports_blamed_parties() -> None:
    plan: Any = type("Plan", (), {
        "session_id": "s1", "generation": 1, "digest": lambda self: "d", "parties": [1, 2, 3], "sharing": "additive",
        "security": "malicious", "inputs": [], "deadline": 0.0, "preprocessing": "dealer", "inputs_held_by": ()})()
    rt = SessionRuntime(plan=plan, body=b"", party=0, started=0.0, compiled=None)  # type: ignore[arg-type]
    assert rt.status()["blamedParties"] == []
    rt.phase, rt.reason, rt.blamed_parties = Phase.FAILED, "mac_check_failed", (2,)
    doc = rt.status()
    assert doc["blamedParties"] == [2] and doc["reason"] == "mac_check_failed"
