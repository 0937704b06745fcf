"""Review: a cheater silent toward one honest party makes the honest parties use different coins.

``commit_reveal`` (and so ``toss_coins``) skips a peer whose messages time out
(``_receive_reachable``), so a cheater that sends neither its commitment nor its reveal
to party 0 -- but both to the others -- makes party 0 derive the input check's coins
from a different set of seeds than the other honest parties. This is the scenario
"honest parties reconstruct from different subsets"; the claim under test is that it
fails safe: the check's values are then not one consistent sharing and the session
aborts, no honest party accepts a wrong output.

Honest channels time out like ``PqChannel`` (``PeerLostError`` naming the silent peer).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import FIELDS, PROGRAM, RECIPIENTS, decoded, label_of, owner_shares, plaintext  # noqa: E402
from hm_run import hm_context  # noqa: E402
from test_review_prss_restart import TimedChannel  # noqa: E402
from pqmpc_node.engine import PartyInputs, RunOutcome, execute  # noqa: E402
from pqmpc_node.mpc.channel import ChannelError, InProcessHub, LostPartyError  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.inputs import InconsistentInputError, InputTamperedError  # noqa: E402
from pqmpc_node.mpc.outputs import OutputForgeryError, verify_delivered  # noqa: E402
from pqmpc_node.mpc.programs import compile_program  # noqa: E402

COIN = {"input-coins/commit", "input-coins/reveal"}
"""The coin toss of the owners' input check (mpc.inputs, step 2): the first public coins of a run."""

TIMEOUT = 2.0
FAST = 0.5  # a victim that gives up on a silent peer sooner than its co-parties wait for it


class SilentToward(TimedChannel):
    """The cheater: the first ``count`` rounds labelled in ``labels`` never reach ``victim``."""

    def __init__(self, inner: Any, labels: set[str], victim: int, count: int = 2) -> None:
        super().__init__(inner, TIMEOUT)
        self._labels = labels
        self._victim = victim
        self._left = count

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if self._left > 0 and label_of(tag) in self._labels:
            self._left -= 1
            payloads = {p: d for p, d in payloads.items() if p != self._victim}
        await self._inner.send_many(tag, payloads)


def _run(config: EngineConfig, cheater: int, victim: int, labels: set[str],
         victim_timeout: float = TIMEOUT) -> dict[int, Any]:
    """``victim_timeout``: the victim's round timeout (a node setting, ``round_timeout_s``; nodes may differ)."""
    plan = compile_program(PROGRAM, FIELDS)
    shares = owner_shares(config, {"bank-a": [5.0, 250.5, 999.0, 1200.0], "bank-b": [17.25, 400.0, -3.0]})
    hub = InProcessHub(config.parties)

    async def party(i: int) -> RunOutcome:
        inner = hub.channel(i)
        timeout = victim_timeout if i == victim else TIMEOUT
        ch = SilentToward(inner, labels, victim) if i == cheater else TimedChannel(inner, timeout)
        ctx = await hm_context(config, ch, live=range(config.parties))
        return await execute(ctx, plan, ["amount"], PartyInputs(shares[i]), RECIPIENTS)

    async def main() -> dict[int, Any]:
        tasks = {i: asyncio.ensure_future(party(i)) for i in range(config.parties)}
        honest = [t for i, t in tasks.items() if i != cheater]
        await asyncio.wait(honest, timeout=240)
        out: dict[int, Any] = {}
        for i, t in tasks.items():
            if not t.done():
                t.cancel()
            try:
                out[i] = await t
            except BaseException as exc:  # noqa: BLE001 - the outcome under test
                out[i] = exc
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("parties", [3, 4])
def test_review_coin_seen_by_different_subsets_fails_safe(parties: int) -> None:
    """The victim times out sooner than the others wait for it, so it goes on with a coin ``s``
    made without the cheater's seed while the other honest parties use one made with it."""
    config = EngineConfig(parties, threshold=1, sharing="shamir", security="malicious")
    cheater, victim = parties - 1, 0
    out = _run(config, cheater, victim, COIN, victim_timeout=FAST)
    honest = [p for p in out if p != cheater]
    finished = {p: o for p, o in out.items() if p in honest and isinstance(o, RunOutcome)}
    for p in honest:
        if p not in finished:
            assert isinstance(out[p], (MacCheckError, ChannelError)), f"party {p}: {out[p]!r}"  # an abort
    if len(finished) > config.threshold:  # enough honest deliveries to reconstruct: they must be right
        ctx_domain, scheme = config.domain(), config.scheme()
        shares = {p: o.delivered["auditor"]["sum(amount)"] for p, o in finished.items()}
        try:
            y = verify_delivered(ctx_domain, scheme, shares, authenticated=True)
        except OutputForgeryError:
            return
        assert decoded("sum(amount)", y, ctx_domain) == plaintext()["sum(amount)"]


@pytest.mark.xfail(strict=True, reason='KNOWN LIMITATION (README, Limitations: survivors of a lost party do not agree on the live set before a Shamir restart): each node decides alone whom it lost, so a cheater silent toward some parties can get an honest party dropped; results stay correct and private, liveness suffers. strict: when agreement on the lost party lands this xpass fails and the marker must go.')
def test_review_silence_toward_one_party_on_a_coin_expels_that_honest_party() -> None:
    """n = 4 = 2t + 2 (a session meant to survive a lost party): the cheater is silent toward
    party 0 on one coin toss. Party 0 waits out the cheater's commitment and reveal, so its own
    reveal comes late and parties 1 and 2 raise ``LostPartyError(0)`` ("committed ... but never
    revealed (lost, or withholding to bias the coins)"): the session runner restarts them
    *with the cheater and without honest party 0*."""
    config = EngineConfig(4, threshold=1, sharing="shamir", security="malicious")
    out = _run(config, 3, 0, COIN)
    named = {p: o.peer for p, o in out.items() if p != 3 and isinstance(o, LostPartyError)}
    assert all(peer == 3 for peer in named.values()), f"honest parties name honest parties as lost: {named} ({out})"


class RushingOnTheLine(SilentToward):
    """As :class:`SilentToward`, and in the input check's degree-t opening the cheater first
    reads the honest shares, then sends the point on the line through them (n = 3, t = 1), so
    no consistency check can see that the honest parties used different coins."""

    ADAPT = {"input-degree"}

    def __init__(self, inner: Any, labels: set[str], victim: int) -> None:
        super().__init__(inner, labels, victim)
        self._stash: dict[str, dict[int, bytes]] = {}

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if label_of(tag) not in self.ADAPT or tag in self._stash:
            await super().send_many(tag, payloads)
            return
        peers = sorted(payloads)
        got = await self._inner.receive_many(tag, peers)
        self._stash[tag] = dict(got)
        p61 = (1 << 61) - 1
        (a, xa), (b, xb) = [(np.frombuffer(got[q], dtype=np.uint64).astype(object), q + 1) for q in peers]
        xc = self.party + 1
        la = (xc - xb) * pow(xa - xb, -1, p61) % p61
        lb = (xc - xa) * pow(xb - xa, -1, p61) % p61
        mine = np.array([(int(u) * la + int(v) * lb) % p61 for u, v in zip(a, b, strict=True)], dtype=np.uint64)
        await self._inner.send_many(tag, {q: mine.tobytes() for q in peers})
        # The cheater's own engine reconstructs with its original share: hand it peer shares on
        # the line through (x_c, original) with the honest opened value at 0, so it goes on.
        orig = np.frombuffer(payloads[peers[0]], dtype=np.uint64).astype(object)
        l0a = (0 - xb) * pow(xa - xb, -1, p61) % p61
        l0b = (0 - xa) * pow(xb - xa, -1, p61) % p61
        value = [(int(u) * l0a + int(v) * l0b) % p61 for u, v in zip(a, b, strict=True)]
        slope = [(int(o) - v) * pow(xc, -1, p61) % p61 for o, v in zip(orig, value, strict=True)]
        self._stash[tag] = {q: np.array([(v + m * (q + 1)) % p61 for v, m in zip(value, slope, strict=True)],
                                        dtype=np.uint64).tobytes() for q in peers}

    async def receive_many(self, tag: str, peers: Any) -> dict[int, bytes]:
        wanted = list(peers)
        if tag in self._stash:
            return {q: self._stash[tag][q] for q in wanted}
        return await super().receive_many(tag, wanted)


def test_review_rushing_cheater_hides_the_coin_split_from_the_degree_checks_and_is_still_caught() -> None:
    """n = 3 = 2t + 1: the honest parties' input checks use different coins; a rushing cheater
    keeps the degree check's opening on one degree-1 polynomial. The MAC and product checks
    (alpha, beta unknown) must still abort, and blame no owner."""
    config = EngineConfig(3, threshold=1, sharing="shamir", security="malicious")
    plan = compile_program(PROGRAM, FIELDS)
    shares = owner_shares(config, {"bank-a": [5.0, 250.5, 999.0, 1200.0], "bank-b": [17.25, 400.0, -3.0]})
    hub = InProcessHub(3)

    async def party(i: int) -> RunOutcome:
        inner = hub.channel(i)
        if i == 2:
            ch: Any = RushingOnTheLine(inner, COIN, 0)
        else:
            ch = TimedChannel(inner, FAST if i == 0 else TIMEOUT)
        ctx = await hm_context(config, ch, live=range(3))
        return await execute(ctx, plan, ["amount"], PartyInputs(shares[i]), RECIPIENTS)

    async def main() -> dict[int, Any]:
        tasks = {i: asyncio.ensure_future(party(i)) for i in range(3)}
        await asyncio.wait([tasks[0], tasks[1]], timeout=120)
        out: dict[int, Any] = {}
        for i, t in tasks.items():
            if not t.done():
                t.cancel()
            try:
                out[i] = await t
            except BaseException as exc:  # noqa: BLE001 - the outcome under test
                out[i] = exc
        return out

    out = asyncio.run(main())
    for p in (0, 1):
        assert isinstance(out[p], (MacCheckError, ChannelError)), f"party {p}: {out[p]!r}"
        assert not isinstance(out[p], (InputTamperedError, InconsistentInputError)), f"an owner was blamed: {out[p]!r}"
        assert getattr(out[p], "check", None) not in {"opening-consistency", "product-check-consistency"}, \
            f"the split was not hidden: {out[p]!r}"
