"""A node process whose peer links are plain TCP: a MEASURING STICK for benchmarks only.

``benchmarks/node_e2e.py`` divides the time of a session over PQ mutual-TLS links by the
time of the same session over plain TCP, with everything else (the node service, the
engine, the dealer, the HTTP API) unchanged. The product has no classical or plaintext
peer-link mode, and this file does not add one: it lives in ``benchmarks/``, is never
imported by the node, and works by monkeypatching (the way ``tests/node/faulty_node.py``
patches ``pq_channel``) :meth:`PeerLink.connect` and :meth:`PeerLink.accept` in this one
process to return a :class:`PlainLink`.

:class:`PlainLink` has the surface the session code uses (``send``/``recv`` by integer
round tag, ``attestation``, ``peer_node_id``, ``closed``, ``close``). On connect, each
side sends its node id and certificate fingerprint in clear and checks the peer's claim
against what it expects — nothing is authenticated or encrypted. Frames are
``tag u64 | length u64 | payload``; payloads are written in 4 MiB slices straight from
the caller's buffer and read into one preallocated buffer per message.

NEVER use this for anything but measurements on loopback.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections import deque
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pqmpc_node.crypto.pki import NodeId, certificate_fingerprint, node_id_of
from pqmpc_node.net import link as link_mod
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.link import STREAM_LIMIT, LinkClosed, LinkConfig, LinkRefused, TransportAttestation

_HEADER = struct.Struct(">QQ")
_HELLO_LEN = struct.Struct(">I")
_WRITE_SLICE = 4 << 20
_READ_SLICE = 1 << 20


class PlainLink:
    """Plain-TCP stand-in for :class:`~pqmpc_node.net.link.PeerLink` (no TLS: a measuring stick)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, fingerprint: str) -> None:
        self._reader, self._writer = reader, writer
        self._peer, self._fingerprint = peer, fingerprint
        self._queues: dict[int, deque[bytes]] = {}
        self._waiters: dict[int, asyncio.Future[bytes]] = {}
        self._lock = asyncio.Lock()
        self._closed: BaseException | None = None
        self._pump = asyncio.create_task(self._read_loop())

    # -- the hello: node id and fingerprint in clear ------------------------------------

    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: LinkConfig,
                        expected: Collection[str]) -> tuple[str, str]:
        cert = config.tls.certificate
        me = json.dumps({"id": str(node_id_of(cert)), "fp": certificate_fingerprint(cert)}).encode()
        writer.write(_HELLO_LEN.pack(len(me)) + me)
        await writer.drain()
        (size,) = _HELLO_LEN.unpack(await reader.readexactly(_HELLO_LEN.size))
        if size > 4096:
            raise LinkRefused("plain hello too long", "bad_frame")
        peer = json.loads(await reader.readexactly(size))
        if peer["id"] not in expected:
            raise LinkRefused(f"unexpected peer {peer['id']}", "unexpected_peer")
        return str(peer["id"]), str(peer["fp"])

    @classmethod
    async def connect(cls, host: str, port: int, *, config: LinkConfig, expected_peer: NodeId,
                      counters: RefusalCounters) -> PlainLink:
        reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        try:
            peer, fp = await asyncio.wait_for(cls._exchange(reader, writer, config, {expected_peer}),
                                              config.handshake_timeout_s)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, peer, fp)

    @classmethod
    async def accept(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, config: LinkConfig,
                     expected_peers: Collection[NodeId], counters: RefusalCounters) -> PlainLink:
        try:
            peer, fp = await asyncio.wait_for(cls._exchange(reader, writer, config, set(expected_peers)),
                                              config.handshake_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
            writer.close()
            raise LinkRefused(f"plain hello failed: {exc}", "handshake_failed") from None
        return cls(reader, writer, peer, fp)

    # -- messages --------------------------------------------------------------------------

    async def send(self, tag: int, payload: Any) -> None:
        if self._closed is not None:
            raise self._closed
        view = memoryview(payload).cast("B")
        async with self._lock:
            self._writer.write(_HEADER.pack(tag, len(view)))
            for i in range(0, len(view), _WRITE_SLICE):
                self._writer.write(view[i : i + _WRITE_SLICE])
                await self._writer.drain()
            if not len(view):
                await self._writer.drain()

    async def recv(self, tag: int) -> bytes:
        q = self._queues.get(tag)
        if q:
            payload = q.popleft()
            if not q:
                del self._queues[tag]
            return payload
        if self._closed is not None:
            raise self._closed
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[tag] = fut
        try:
            return await fut
        finally:
            self._waiters.pop(tag, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    tag, length = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
                except asyncio.IncompleteReadError:
                    raise LinkClosed("peer closed the link") from None
                buf = bytearray(length)
                view, got = memoryview(buf), 0
                while got < length:
                    chunk = await self._reader.read(min(length - got, _READ_SLICE))
                    if not chunk:
                        raise LinkClosed("peer closed the link inside a message")
                    view[got : got + len(chunk)] = chunk
                    got += len(chunk)
                fut = self._waiters.pop(tag, None)
                if fut is not None and not fut.done():
                    fut.set_result(buf)  # type: ignore[arg-type]  # a bytes-like buffer
                else:
                    self._queues.setdefault(tag, deque()).append(buf)  # type: ignore[arg-type]
        except (LinkClosed, ConnectionError, OSError) as exc:
            self._fail(exc if isinstance(exc, LinkClosed) else LinkClosed(f"link failed: {exc}"))

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- what the session code reads -----------------------------------------------------------

    def attestation(self) -> TransportAttestation:
        return TransportAttestation(protocol="plain-tcp (benchmark)", group="none", cipher="none",
                                    signature_algorithm="none", peer_node_id=NodeId(self._peer),
                                    peer_fingerprint=self._fingerprint, handshakes=0)

    @property
    def peer_node_id(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self, reason: BaseException | None = None) -> None:
        if self._closed is None:
            self._fail(reason if reason is not None else LinkClosed("link closed locally"))
            try:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            except (OSError, RuntimeError):
                pass
            try:  # read until the peer closes too, so no unread input turns the close into a reset
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            except (TimeoutError, Exception):
                pass
        self._pump.cancel()
        try:
            await self._pump
        except (asyncio.CancelledError, Exception):
            pass
        self._writer.close()


def patch() -> None:
    """Make this process's peer links plain TCP (see the module docstring)."""
    link_mod.PeerLink.connect = PlainLink.connect  # type: ignore[method-assign,assignment]
    link_mod.PeerLink.accept = PlainLink.accept  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    patch()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _node_main import run

    sys.exit(run())
