"""The MPC :class:`~pqmpc_node.mpc.channel.Channel` over PQ mutual-TLS :class:`PeerLink` s.

Adapter between the engine (string round tags, peers by party index) and the
transport (integer round tags, one authenticated link per peer):

* A round tag ``t`` of attempt ``a`` travels as the 64-bit integer
  ``SHA-256("pqmpc/v1/round" ‖ a ‖ t)[:8]`` with the top bit set, so it never collides
  with :data:`HELLO_TAG` (a collision between two rounds of one session has
  probability about ``rounds² / 2^64``).
* The first message on a link, under :data:`HELLO_TAG`, is the dialer's
  :class:`Hello` (session id, its party index): one listener serves every session.
* A lost link surfaces as :class:`PeerLostError` naming the party, so the session
  can abort (additive) or carry on without it (Shamir).
* Bytes are counted per peer and direction, and the time each round waits (in all and
  for each peer's message), for the node's behavioural metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pqmpc_node.mpc.channel import ChannelError, LostPartyError
from pqmpc_node.mpc.errors import PeerAbortedError
from pqmpc_node.net.link import LinkClosed, LinkRefused, PeerLink

__all__ = ["HELLO_TAG", "Hello", "PeerLostError", "PqChannel", "TrafficCounters", "round_tag"]

HELLO_TAG = 1
_MAX_HELLO = 1024


class PeerLostError(LostPartyError):
    """The link to party ``peer`` broke or timed out."""


@dataclass(frozen=True)
class Hello:
    """The first message each way on a link: which session and party, and the sender's view of the log.

    The dialer sends it; the acceptor answers with its own (same session). ``log_size``
    and ``log_head`` are the sender's verified transparency log (entry count, hash of the
    last entry): the side whose log is at least as long checks that the other's head is
    in its own history, so two nodes shown different CA-signed histories never link
    (:func:`~pqmpc_node.crypto.transparency.require_same_history`).
    """

    session_id: str
    party: int
    log_size: int = 0
    log_head: bytes = b""

    def encode(self) -> bytes:
        return json.dumps({"session": self.session_id, "party": self.party, "logSize": self.log_size,
                           "logHead": self.log_head.hex()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        """Strict parse; ``ValueError`` on anything unexpected."""
        if len(data) > _MAX_HELLO:
            raise ValueError("hello message too long")
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("session"), str) or not isinstance(raw.get("party"), int):
            raise ValueError("hello must be {session: str, party: int, logSize: int, logHead: hex}")
        size, head = raw.get("logSize", 0), raw.get("logHead", "")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not isinstance(head, str):
            raise ValueError("hello logSize must be a non-negative integer and logHead hex")
        return cls(raw["session"], raw["party"], size, bytes.fromhex(head))


ABORT_TAG = "session/abort"
"""The round an abort notice travels in (payload: the name of the check that caught a deviation)."""


def _consume(fut: asyncio.Future[bytes]) -> None:
    """Retrieve a finished abort wait's outcome so a closed link is not reported as unhandled."""
    if not fut.cancelled():
        fut.exception()


def round_tag(attempt: int, tag: str) -> int:
    """The link tag of engine round ``tag`` in attempt ``attempt`` (see the module docstring)."""
    digest = hashlib.sha256(b"pqmpc/v1/round" + attempt.to_bytes(4, "big") + tag.encode()).digest()
    return int.from_bytes(digest[:8], "big") | (1 << 63)


@dataclass
class TrafficCounters:
    """Bytes per peer and direction, and wait times per round and per peer, of one session attempt.

    ``peer_waits[p]`` holds, for every round that received from ``p``, the time from the
    start of the round until ``p``'s message was there.
    """

    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    round_waits: list[float] = field(default_factory=list)
    peer_waits: dict[int, list[float]] = field(default_factory=dict)


class PqChannel:
    """One party's channel over established links to the other live parties.

    ``accepts_buffers``: payloads may be any contiguous byte buffer (a memoryview of the
    engine's array); :meth:`PeerLink.send` encrypts straight from it and returns only
    once all of it is written, so the engine saves a copy per message.
    """

    accepts_buffers = True

    def __init__(
        self,
        *,
        party: int,
        n: int,
        links: Mapping[int, PeerLink],
        attempt: int = 0,
        round_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._party = party
        self._n = n
        self._links = dict(links)
        self._attempt = attempt
        self._timeout = round_timeout_s
        self._clock = clock
        self._aborts: dict[int, asyncio.Future[bytes]] = {}
        self.traffic = TrafficCounters()

    @property
    def party(self) -> int:
        return self._party

    @property
    def n(self) -> int:
        return self._n

    def _link(self, peer: int) -> PeerLink:
        link = self._links.get(peer)
        if link is None:
            raise PeerLostError(peer, "no link to this party in the current attempt")
        return link

    async def _send(self, peer: int, wire: int, payload: bytes) -> None:
        try:
            await self._link(peer).send(wire, payload)
        except (LinkClosed, LinkRefused, ConnectionError, OSError) as exc:
            raise PeerLostError(peer, str(exc)) from None
        self.traffic.sent[peer] = self.traffic.sent.get(peer, 0) + len(payload)

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        """Send to every peer; the links are written concurrently, so a slow peer's backpressure
        does not hold back the others (the engine's rounds send the same payload to all)."""
        wire = round_tag(self._attempt, tag)
        for peer in payloads:
            if not 0 <= peer < self._n or peer == self._party:
                raise ChannelError(f"party {self._party} cannot send to peer {peer} (n={self._n})")
        if len(payloads) == 1:
            ((peer, payload),) = payloads.items()
            await self._send(peer, wire, payload)
            return
        await asyncio.gather(*(self._send(peer, wire, payload) for peer, payload in payloads.items()))

    def _abort_notice(self, peer: int) -> asyncio.Future[bytes]:
        """The (lazily started) wait for ``peer``'s abort notice in this attempt."""
        fut = self._aborts.get(peer)
        if fut is None:
            fut = asyncio.ensure_future(self._link(peer).recv(round_tag(self._attempt, ABORT_TAG)))
            fut.add_done_callback(_consume)
            self._aborts[peer] = fut
        return fut

    async def _recv(self, peer: int, wire: int, start: float) -> bytes:
        link = self._link(peer)
        data_task = asyncio.ensure_future(link.recv(wire))
        abort = self._abort_notice(peer)
        try:
            done, _ = await asyncio.wait({data_task, abort}, timeout=self._timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if data_task not in done and abort in done and not abort.cancelled() and abort.exception() is None:
                raise PeerAbortedError(peer, abort.result()[:200].decode("utf-8", "replace"))
            if data_task not in done and abort in done:  # the link failed: the data wait says how
                done, _ = await asyncio.wait({data_task}, timeout=max(0.0, self._timeout - (self._clock() - start)))
            if data_task not in done:
                raise PeerLostError(peer, f"no message within {self._timeout:.0f}s")
            data = data_task.result()
        except (LinkClosed, LinkRefused, ConnectionError, OSError) as exc:
            raise PeerLostError(peer, str(exc)) from None
        finally:
            if not data_task.done():
                data_task.cancel()
        self.traffic.received[peer] = self.traffic.received.get(peer, 0) + len(data)
        self.traffic.peer_waits.setdefault(peer, []).append(self._clock() - start)
        return data

    async def abort(self, check: str, timeout_s: float = 2.0) -> None:
        """Tell every peer this party stops because its check ``check`` caught a deviation (best effort).

        Every party that stops on a check sends one (one that stops on a peer's notice sends
        ``peer-abort``), so each waits, at most ``timeout_s``, until every peer's notice is
        in before the links close: a close right behind the notice could cut it off.
        """
        wire = round_tag(self._attempt, ABORT_TAG)

        async def one(link: PeerLink) -> None:
            try:
                await asyncio.wait_for(link.send(wire, check.encode()[:200]), timeout_s)
            except (TimeoutError, LinkClosed, LinkRefused, ConnectionError, OSError):
                pass  # the peer is gone anyway

        await asyncio.gather(*(one(link) for link in self._links.values()))
        notices = [self._abort_notice(p) for p in self._links]
        if notices:
            await asyncio.wait(notices, timeout=timeout_s)

    def release(self) -> None:
        """Stop waiting for abort notices of this attempt (the links live on for the next one)."""
        for fut in self._aborts.values():
            fut.cancel()
        self._aborts.clear()

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        wire = round_tag(self._attempt, tag)
        wanted = list(peers)
        start = self._clock()
        tasks = [asyncio.ensure_future(self._recv(p, wire, start)) for p in wanted]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        self.traffic.round_waits.append(self._clock() - start)
        return dict(zip(wanted, results, strict=True))
