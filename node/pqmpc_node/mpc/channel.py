"""The message interface protocols talk to, and an in-process implementation for tests.

A :class:`Channel` moves opaque byte payloads between the ``n`` parties of one session,
addressed by peer index and a round tag. Messages that arrive before anyone asks for them
are buffered by (peer, tag) in a :class:`Mailbox`; a receiver waiting for a tag is woken
when it arrives (a la MPyC's round-keyed futures). A tag may be delivered once per peer;
a second delivery is a replay and raises :class:`ChannelError`.

Implementations: :class:`InProcessChannel` (one asyncio loop, via :class:`InProcessHub`),
the plain-TCP channel in :mod:`pqmpc_node.net.tcp_channel`, and the PQ-TLS channel of the
transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Protocol

__all__ = ["Channel", "ChannelError", "Mailbox", "InProcessHub", "InProcessChannel"]


class ChannelError(RuntimeError):
    """A message could not be delivered or was delivered twice (replay)."""


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
        self._closed: BaseException | None = None

    def _slot(self, key: tuple[int, str]) -> asyncio.Future[bytes]:
        fut = self._slots.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            if self._closed is not None:
                fut.set_exception(self._closed)
            self._slots[key] = fut
        return fut

    def deliver(self, peer: int, tag: str, payload: bytes) -> None:
        """Hand over a message; raises :class:`ChannelError` on a replayed tag."""
        key = (peer, tag)
        if key in self._seen:
            raise ChannelError(f"replayed message: tag {tag!r} from party {peer} was already delivered")
        self._seen.add(key)
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

    def fail(self, error: BaseException) -> None:
        """Wake every waiter (current and future) with ``error`` (peer lost, channel closed)."""
        self._closed = error
        for fut in self._slots.values():
            if not fut.done():
                fut.set_exception(error)


async def receive_all(mailbox: Mailbox, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
    """Collect one message per peer for ``tag`` from ``mailbox``."""
    peers = list(peers)
    if len(peers) == 1:
        return {peers[0]: await mailbox.take(peers[0], tag)}
    results = await asyncio.gather(*(mailbox.take(p, tag) for p in peers))
    return dict(zip(peers, results, strict=True))


class InProcessHub:
    """Connects ``n`` :class:`InProcessChannel` objects living on one event loop."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"a hub needs at least 2 parties, got {n}")
        self.channels = [InProcessChannel(self, i, n) for i in range(n)]

    def channel(self, party: int) -> InProcessChannel:
        """The channel endpoint of ``party``."""
        return self.channels[party]


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
            self.bytes_sent += len(payload)
            self._hub.channels[peer].mailbox.deliver(self._party, tag, payload)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await receive_all(self.mailbox, tag, peers)
