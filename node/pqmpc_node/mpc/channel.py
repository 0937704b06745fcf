"""The message interface protocols talk to, and an in-process implementation for tests.

A :class:`Channel` moves opaque byte payloads between the ``n`` parties of one session,
addressed by peer index and a round tag. Messages that arrive before anyone asks for them
are buffered by (peer, tag) in a :class:`Mailbox`; a receiver waiting for a tag is woken
when it arrives (a la MPyC's round-keyed futures). A tag may be delivered once per peer;
a second delivery is a replay and raises :class:`ChannelError`.

Implementations: :class:`InProcessChannel` (one asyncio loop, via :class:`InProcessHub`),
the plain-TCP channel of the benchmarks (:mod:`pqmpc_local.tcp_channel`, not shipped),
and the PQ-TLS channel of the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Protocol

__all__ = ["Channel", "ChannelError", "LostPartyError", "Mailbox", "InProcessHub", "InProcessChannel", "receive_all", "receive_first"]


class ChannelError(RuntimeError):
    """A message could not be delivered or was delivered twice (replay)."""


class LostPartyError(ChannelError):
    """Party ``peer`` is gone for this attempt (its link broke, or it stopped answering mid-protocol).

    A Shamir session may restart without it (fresh material, fresh coins); an additive
    session ends.
    """

    def __init__(self, peer: int, detail: str) -> None:
        super().__init__(f"lost party {peer}: {detail}")
        self.peer = peer


class Channel(Protocol):
    """Send and receive byte payloads by peer index and round tag."""

    @property
    def party(self) -> int:
        """This party's index."""
        ...

    @property
    def n(self) -> int:
        """Number of parties."""
        ...

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        """Send ``payloads[peer]`` to each peer under ``tag`` (one batch, one round)."""
        ...

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        """Wait for the payload of ``tag`` from every peer in ``peers``."""
        ...


class Mailbox:
    """Buffer of early messages and waiters, keyed by (peer, tag)."""

    def __init__(self) -> None:
        self._slots: dict[tuple[int, str], asyncio.Future[bytes]] = {}
        self._seen: set[tuple[int, str]] = set()
        self._dropped: set[tuple[int, str]] = set()
        self._closed: BaseException | None = None
        self._lost: dict[int, BaseException] = {}

    def _slot(self, key: tuple[int, str]) -> asyncio.Future[bytes]:
        fut = self._slots.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            error = self._closed if self._closed is not None else self._lost.get(key[0])
            if error is not None:
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may ever await a failed slot
            self._slots[key] = fut
        return fut

    def deliver(self, peer: int, tag: str, payload: bytes) -> None:
        """Hand over a message; raises :class:`ChannelError` on a replayed tag."""
        key = (peer, tag)
        if key in self._seen:
            raise ChannelError(f"replayed message: tag {tag!r} from party {peer} was already delivered")
        self._seen.add(key)
        if key in self._dropped:
            self._dropped.discard(key)
            return
        fut = self._slot(key)
        if not fut.done():
            fut.set_result(payload)

    async def take(self, peer: int, tag: str) -> bytes:
        """Wait for and remove the message ``tag`` from ``peer``."""
        key = (peer, tag)
        fut = self._slot(key)
        try:
            return await fut
        finally:
            self._slots.pop(key, None)

    def fail(self, error: BaseException, peer: int | None = None) -> None:
        """Wake waiters (current and future) with ``error``: all of them (channel closed), or
        only those waiting on ``peer`` (that peer is lost; the others may still answer)."""
        if peer is None:
            self._closed = error
        else:
            self._lost.setdefault(peer, error)
        for key, fut in self._slots.items():
            if not fut.done() and (peer is None or key[0] == peer):
                fut.set_exception(error)

    def discard(self, peer: int, tag: str) -> None:
        """Forget ``tag`` from ``peer``: drop it if buffered, or when it arrives."""
        key = (peer, tag)
        fut = self._slots.pop(key, None)
        if fut is not None and not fut.done():
            fut.cancel()
        if key not in self._seen:
            self._dropped.add(key)


async def receive_all(mailbox: Mailbox, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
    """Collect one message per peer for ``tag`` from ``mailbox``."""
    peers = list(peers)
    if len(peers) == 1:
        return {peers[0]: await mailbox.take(peers[0], tag)}
    results = await asyncio.gather(*(mailbox.take(p, tag) for p in peers))
    return dict(zip(peers, results, strict=True))


async def receive_first(channel: Channel, tag: str, peers: Iterable[int], count: int) -> dict[int, bytes]:
    """The first ``count`` replies for ``tag`` among ``peers`` (robust opening).

    Waits on each peer separately; returns as soon as ``count`` have answered, so a slow or
    lost peer does not block. A peer whose link fails counts as missing. Raises
    :class:`ChannelError` when fewer than ``count`` peers can still answer. Outstanding
    waits are cancelled and, where the channel has ``discard(tag, peers)``, late replies
    are dropped on arrival.
    """
    peers = list(peers)
    if count <= 0:
        return {}
    if count > len(peers):
        raise ChannelError(f"cannot wait for {count} replies from {len(peers)} peers")
    tasks = {asyncio.ensure_future(channel.receive_many(tag, [p])): p for p in peers}
    got: dict[int, bytes] = {}
    failed: dict[int, BaseException] = {}
    pending = set(tasks)
    try:
        while len(got) < count:
            if len(peers) - len(failed) < count:
                raise ChannelError(
                    f"only {len(peers) - len(failed)} of {len(peers)} peers can answer {tag!r}, {count} needed; "
                    f"lost: " + "; ".join(f"party {p}: {e}" for p, e in sorted(failed.items()))
                )
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                peer = tasks[task]
                exc = task.exception()
                if exc is None:
                    got[peer] = task.result()[peer]
                else:
                    failed[peer] = exc
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            late = [tasks[t] for t in pending]
            discard = getattr(channel, "discard", None)
            if discard is not None:
                discard(tag, late)
    if len(got) > count:  # several arrived in the same wake-up: keep the lowest indices, deterministic
        got = {p: got[p] for p in sorted(got)[:count]}
    return got


class InProcessHub:
    """Connects ``n`` :class:`InProcessChannel` objects living on one event loop."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"a hub needs at least 2 parties, got {n}")
        self.channels = [InProcessChannel(self, i, n) for i in range(n)]
        self.lost: set[int] = set()

    def channel(self, party: int) -> InProcessChannel:
        """The channel endpoint of ``party``."""
        return self.channels[party]

    def disconnect(self, party: int) -> None:
        """Simulate losing ``party`` mid-session: its messages stop, waits on it fail."""
        self.lost.add(party)
        error = ChannelError(f"party {party} closed the connection")
        for ch in self.channels:
            if ch.party != party:
                ch.mailbox.fail(error, peer=party)


class InProcessChannel:
    """A :class:`Channel` endpoint whose messages are handed over in memory."""

    def __init__(self, hub: InProcessHub, party: int, n: int) -> None:
        self._hub = hub
        self._party = party
        self._n = n
        self.mailbox = Mailbox()
        self.bytes_sent = 0

    @property
    def party(self) -> int:
        return self._party

    @property
    def n(self) -> int:
        return self._n

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        for peer, payload in payloads.items():
            if not 0 <= peer < self._n or peer == self._party:
                raise ChannelError(f"party {self._party} cannot send to peer {peer} (n={self._n})")
            if self._party in self._hub.lost or peer in self._hub.lost:
                continue  # a lost party's link is down both ways
            self.bytes_sent += len(payload)
            self._hub.channels[peer].mailbox.deliver(self._party, tag, payload)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await receive_all(self.mailbox, tag, peers)

    def discard(self, tag: str, peers: Iterable[int]) -> None:
        """Drop ``tag`` from ``peers`` now or when it arrives."""
        for peer in peers:
            self.mailbox.discard(peer, tag)
