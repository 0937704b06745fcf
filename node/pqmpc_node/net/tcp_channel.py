"""A plain-TCP :class:`~pqmpc_node.mpc.channel.Channel` for benchmarks on loopback.

No encryption and no authentication: for measuring the engine only. Production links use
the PQ mutual-TLS channel. Frames: ``tag length (u16) | payload length (u64) | tag | payload``.
Parties form a full mesh: party i dials every j > i and accepts every j < i; the first
frame on a link is the dialer's index.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Mapping, Sequence

from pqmpc_node.mpc.channel import ChannelError, Mailbox, receive_all

__all__ = ["TcpChannel"]

_HEADER = struct.Struct("!HQ")
_HELLO = struct.Struct("!I")


class TcpChannel:
    """Full-mesh TCP channel; create with :meth:`connect`, release with :meth:`close`."""

    def __init__(self, party: int, n: int) -> None:
        self._party = party
        self._n = n
        self.mailbox = Mailbox()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
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
        accepted: asyncio.Queue[tuple[int, asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            (peer,) = _HELLO.unpack(await reader.readexactly(_HELLO.size))
            await accepted.put((peer, reader, writer))

        host, port = addresses[party]
        self._server = await asyncio.start_server(on_accept, host, port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for peer in range(party + 1, self._n):
            while True:
                try:
                    reader, writer = await asyncio.open_connection(*addresses[peer])
                    break
                except OSError:
                    if loop.time() > deadline:
                        raise ChannelError(f"party {party} could not reach party {peer} at {addresses[peer]}") from None
                    await asyncio.sleep(0.05)
            writer.write(_HELLO.pack(party))
            self._attach(peer, reader, writer)
        for _ in range(party):
            peer, reader, writer = await asyncio.wait_for(accepted.get(), max(0.1, deadline - loop.time()))
            self._attach(peer, reader, writer)
        return self

    def _attach(self, peer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if peer in self._writers or not 0 <= peer < self._n or peer == self._party:
            raise ChannelError(f"unexpected link from party {peer}")
        self._writers[peer] = writer
        self._readers.append(asyncio.create_task(self._read(peer, reader)))

    async def _read(self, peer: int, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                tag_len, length = _HEADER.unpack(header)
                tag = (await reader.readexactly(tag_len)).decode()
                payload = await reader.readexactly(length)
                self.mailbox.deliver(peer, tag, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.mailbox.fail(ChannelError(f"party {peer} closed the connection"))
        except ChannelError as exc:
            self.mailbox.fail(exc)

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        raw_tag = tag.encode()
        writers = []
        for peer, payload in payloads.items():
            writer = self._writers.get(peer)
            if writer is None:
                raise ChannelError(f"party {self._party} has no link to peer {peer}")
            writer.write(_HEADER.pack(len(raw_tag), len(payload)) + raw_tag)
            writer.write(payload)
            self.bytes_sent += len(payload)
            writers.append(writer)
        for writer in writers:
            await writer.drain()

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return await receive_all(self.mailbox, tag, peers)

    async def close(self) -> None:
        """Close every link and the listener."""
        for task in self._readers:
            task.cancel()
        for writer in self._writers.values():
            writer.close()
        for writer in self._writers.values():
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._readers, return_exceptions=True)
