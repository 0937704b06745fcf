"""A plain-TCP :class:`~pqmpc_node.mpc.channel.Channel` for benchmarks on loopback.

No encryption and no authentication: for measuring the engine only, so it lives in the
test/benchmark support package, never in the shipped ``pqmpc_node``. Production links use
the PQ mutual-TLS channel (:mod:`pqmpc_node.net.pq_channel`). Frames: ``tag length (u16) | payload length (u64) | tag | payload``.
Parties form a full mesh: party i dials every j > i and accepts every j < i; the first
frame on a link is the dialer's index.

Raw buffers, no copies per element: payloads may be any contiguous buffer (bytes,
bytearray, a memoryview of a numpy array); they go out with ``loop.sock_sendall`` (which
keeps a memoryview, no user-space copy) and come in with ``recv_into`` straight into a
preallocated buffer of the announced length (an uninitialised numpy
buffer for large frames), which is handed to the mailbox (so
``np.frombuffer`` on it is writable and in-place arithmetic needs no copy). Small frames
are parsed out of one 1 MiB receive buffer. ``accepts_buffers`` tells the engine it may
pass memoryviews instead of ``bytes``.

A lost peer fails only the waits on that peer (see :meth:`Mailbox.fail`); sends to a lost
peer are dropped, so a Shamir session can go on without it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pqmpc_node.mpc.channel import ChannelError, Mailbox, receive_all

__all__ = ["TcpChannel"]

_HEADER = struct.Struct("!HQ")
_HELLO = struct.Struct("!I")
_RECV_CHUNK = 1 << 20
_SOCK_BUF = 4 << 20
_SMALL = 64 << 10


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)
        except OSError:  # pragma: no cover - a kernel limit; the default still works
            pass


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise ConnectionError("connection closed during the handshake")
        got += n
    return bytes(buf)


class TcpChannel:
    """Full-mesh TCP channel; create with :meth:`connect`, release with :meth:`close`."""

    accepts_buffers = True

    def __init__(self, party: int, n: int) -> None:
        self._party = party
        self._n = n
        self.mailbox = Mailbox()
        self._socks: dict[int, socket.socket] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._lost: set[int] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._server: socket.socket | None = None
        self._closing = False
        self.bytes_sent = 0

    @property
    def party(self) -> int:
        return self._party

    @property
    def n(self) -> int:
        return self._n

    @classmethod
    async def connect(cls, party: int, addresses: Sequence[tuple[str, int]], *, timeout: float = 30.0) -> TcpChannel:
        """Listen on ``addresses[party]`` and link to every other party."""
        self = cls(party, len(addresses))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        host, port = addresses[party]
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(max(1, self._n))
        server.setblocking(False)
        self._server = server
        try:
            for peer in range(party + 1, self._n):
                while True:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    _tune(sock)
                    try:
                        await loop.sock_connect(sock, addresses[peer])
                        break
                    except OSError:
                        sock.close()
                        if loop.time() > deadline:
                            raise ChannelError(f"party {party} could not reach party {peer} at {addresses[peer]}") from None
                        await asyncio.sleep(0.05)
                await loop.sock_sendall(sock, _HELLO.pack(party))
                self._attach(peer, sock)
            for _ in range(party):
                sock, _addr = await asyncio.wait_for(loop.sock_accept(server), max(0.1, deadline - loop.time()))
                _tune(sock)
                (peer,) = _HELLO.unpack(await _recv_exactly(loop, sock, _HELLO.size))
                self._attach(peer, sock)
        except BaseException:
            await self.close()
            raise
        return self

    def _attach(self, peer: int, sock: socket.socket) -> None:
        if peer in self._socks or not 0 <= peer < self._n or peer == self._party:
            sock.close()
            raise ChannelError(f"unexpected link from party {peer}")
        self._socks[peer] = sock
        self._locks[peer] = asyncio.Lock()
        self._readers.append(asyncio.create_task(self._read(peer, sock)))

    def _lose(self, peer: int, error: ChannelError) -> None:
        self._lost.add(peer)
        self.mailbox.fail(error, peer=peer)

    async def _read(self, peer: int, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray(_RECV_CHUNK)
        view = memoryview(buf)
        start = end = 0  # unread bytes are buf[start:end]
        try:
            while True:
                while end - start < _HEADER.size:
                    if start:
                        buf[: end - start] = buf[start:end]
                        end, start = end - start, 0
                    n = await loop.sock_recv_into(sock, view[end:])
                    if n == 0:
                        raise ConnectionError("closed")
                    end += n
                tag_len, length = _HEADER.unpack_from(buf, start)
                start += _HEADER.size
                while end - start < tag_len:
                    if start:
                        buf[: end - start] = buf[start:end]
                        end, start = end - start, 0
                    n = await loop.sock_recv_into(sock, view[end:])
                    if n == 0:
                        raise ConnectionError("closed")
                    end += n
                tag = bytes(view[start : start + tag_len]).decode()
                start += tag_len
                # Large payloads land in uninitialised memory (np.empty: no zero-filling pass).
                payload = bytearray(length) if length <= _SMALL else np.empty(length, dtype=np.uint8).data
                have = min(length, end - start)
                payload[:have] = view[start : start + have]
                start += have
                if start == end:
                    start = end = 0
                if have < length:
                    pview = memoryview(payload)
                    while have < length:
                        n = await loop.sock_recv_into(sock, pview[have:])
                        if n == 0:
                            raise ConnectionError("closed")
                        have += n
                self.mailbox.deliver(peer, tag, payload)  # type: ignore[arg-type]  # bytearray is a bytes-like payload
        except (ConnectionError, OSError):
            self._lose(peer, ChannelError(f"party {peer} closed the connection"))
        except ChannelError as exc:
            self._lose(peer, exc)

    async def _send(self, peer: int, header: bytes, payload: memoryview) -> None:
        loop = asyncio.get_running_loop()
        sock = self._socks[peer]
        try:
            async with self._locks[peer]:
                if payload.nbytes <= _SMALL:
                    await loop.sock_sendall(sock, header + payload.tobytes())
                else:
                    await loop.sock_sendall(sock, header)
                    await loop.sock_sendall(sock, payload)
        except (ConnectionError, OSError):
            # A lost peer: drop the message; waits on that peer fail (Shamir sessions go on without it).
            self._lose(peer, ChannelError(f"party {peer} is unreachable"))

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        raw_tag = tag.encode()
        jobs = []
        for peer, payload in payloads.items():
            if peer not in self._socks:
                raise ChannelError(f"party {self._party} has no link to peer {peer}")
            if peer in self._lost:
                continue
            view = memoryview(payload).cast("B")  # byte offsets for partial sends
            self.bytes_sent += view.nbytes
            jobs.append(self._send(peer, _HEADER.pack(len(raw_tag), view.nbytes) + raw_tag, view))
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            await asyncio.gather(*jobs)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await receive_all(self.mailbox, tag, peers)

    def discard(self, tag: str, peers: Iterable[int]) -> None:
        """Drop ``tag`` from ``peers`` now or when it arrives (a reply no longer needed)."""
        for peer in peers:
            self.mailbox.discard(peer, tag)

    async def close(self) -> None:
        """Close every link and the listener."""
        self._closing = True
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for sock in self._socks.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._server is not None:
            self._server.close()
