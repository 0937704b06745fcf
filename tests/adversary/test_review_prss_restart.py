"""Review: a cheater that withholds one message from *some* honest parties splits their view of who is lost.

Each party decides alone which peer is lost (a round timeout in ``PqChannel`` raises
``PeerLostError(peer)``), and ``SessionManager._attempts`` restarts without ``exc.peer``.
A cheater that withholds its PRSS key message from a subset of the honest parties makes
that subset drop the cheater and every other honest party drop an *honest* party (the
one stuck waiting on the cheater, which never sends its key confirmation). Consequences
shown here with the real ``agree_keys`` and the session runner's restart rule:

1. the cheater is not the party excluded from the next attempt; an honest one is;
2. with the honest parties' next attempts on different live sets, two honest parties
   raise a :class:`BlamedCheckError` naming a third honest party (its correct key
   message has the "wrong" length for their view), i.e. corroborated ``blamedParties``
   against an honest node — the evidence ``pqmpc_operator.anomaly`` trusts for
   ``named_by_coparties``.

The honest channels model ``PqChannel``: a per-peer round timeout raises
``PeerLostError`` naming that peer (waits posted in peer order, as ``receive_many`` does).
"""

from __future__ import annotations

import pytest

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pqmpc_node.mpc.channel import InProcessHub, LostPartyError
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.prss import agree_keys
from pqmpc_node.net.pq_channel import PeerLostError

N, T, CHEATER = 5, 1, 4  # n >= 2t + 2: a dealer-free session is meant to survive one lost party
TIMEOUT = 0.3


class TimedChannel:
    """An honest party's channel as ``PqChannel`` behaves: a peer silent for ``timeout`` is lost."""

    def __init__(self, inner: Any, timeout: float = TIMEOUT) -> None:
        self._inner = inner
        self._timeout = timeout

    @property
    def party(self) -> int:
        return int(self._inner.party)

    @property
    def n(self) -> int:
        return int(self._inner.n)

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        await self._inner.send_many(tag, payloads)

    async def _one(self, tag: str, peer: int) -> bytes:
        try:
            got = await asyncio.wait_for(self._inner.receive_many(tag, [peer]), self._timeout)
        except TimeoutError:
            raise PeerLostError(peer, f"no message within {self._timeout}s") from None
        return bytes(got[peer])

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        wanted = list(peers)
        tasks = [asyncio.ensure_future(self._one(tag, p)) for p in wanted]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return dict(zip(wanted, results, strict=True))


class Withholding(TimedChannel):
    """The cheater: its messages of rounds ending in ``suffix`` never reach ``victims``."""

    def __init__(self, inner: Any, suffix: str, victims: set[int]) -> None:
        super().__init__(inner)
        self._suffix = suffix
        self._victims = victims

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if tag.endswith(self._suffix):
            payloads = {p: d for p, d in payloads.items() if p not in self._victims}
        await self._inner.send_many(tag, payloads)


def _attempt(views: Mapping[int, Sequence[int]], session: str, victims: set[int] | None = None) -> dict[int, Any]:
    """Every party in ``views`` runs ``agree_keys`` over its own view of the live parties."""
    hub = InProcessHub(N)

    async def one(i: int) -> Any:
        inner = hub.channel(i)
        ch = Withholding(inner, "/prss-keys", victims) if (i == CHEATER and victims) else TimedChannel(inner)
        return await agree_keys(ch, party=i, t=T, live=views[i], session=session)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(one(i) for i in views), return_exceptions=True))

    return dict(zip(views, asyncio.run(main()), strict=True))


def _restart_views(outcomes: Mapping[int, Any], live: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """``SessionManager._attempts``: a party that raised ``LostPartyError(peer)`` restarts without ``peer``."""
    views = {}
    for p, out in outcomes.items():
        if isinstance(out, LostPartyError):
            views[p] = tuple(q for q in live if q != out.peer)
        else:
            views[p] = tuple(live)
    return views


@pytest.mark.xfail(strict=True, reason='KNOWN LIMITATION (README, Limitations: survivors of a lost party do not agree on the live set before a Shamir restart): each node decides alone whom it lost, so a cheater silent toward some parties can get an honest party dropped; results stay correct and private, liveness suffers. strict: when agreement on the lost party lands this xpass fails and the marker must go.')
def test_review_withheld_prss_keys_expel_an_honest_party_not_the_cheater() -> None:
    """The cheater withholds its keys from party 1 only: 1 drops the cheater, 0, 2, 3 drop 1."""
    out = _attempt({i: range(N) for i in range(N)}, "s/attempt-1", victims={1})
    lost = {p: o.peer for p, o in out.items() if p != CHEATER and isinstance(o, LostPartyError)}
    assert lost.get(1) == CHEATER, out  # the victim sees the cheater go silent
    # Every honest party that restarts should exclude the cheater; 0, 2 and 3 exclude honest party 1.
    assert all(peer == CHEATER for peer in lost.values()), f"honest parties excluded: {lost}"


def test_review_withheld_prss_keys_get_an_honest_party_blamed_by_two_honest_parties() -> None:
    """Withheld from 0 and 1: they drop the cheater; 2 and 3 drop 0. In the next attempt (the
    restart rule of the session runner) 2 and 3 blame honest party 1 with a BlamedCheckError."""
    first = _attempt({i: range(N) for i in range(N)}, "s/attempt-1", victims={0, 1})
    assert {p: getattr(o, "peer", None) for p, o in first.items() if p != CHEATER} == {0: CHEATER, 1: CHEATER,
                                                                                     2: 0, 3: 0}, first
    views = _restart_views({p: o for p, o in first.items() if p != CHEATER}, range(N))
    views[CHEATER] = (1, 2, 3, 4)  # the cheater joins the group that kept it
    second = _attempt(views, "s/attempt-2")
    blamed = {p: o.blamed_parties for p, o in second.items()
              if p != CHEATER and isinstance(o, BlamedCheckError)}
    honest_blamed = {p: b for p, b in blamed.items() if set(b) - {CHEATER}}
    assert not honest_blamed, (f"honest parties {sorted(honest_blamed)} blame honest parties {honest_blamed} "
                               f"(views {views}; outcomes {second})")
