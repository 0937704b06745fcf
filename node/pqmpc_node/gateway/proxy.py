"""The gateway's TCP server: peek the ClientHello, route by its server name, splice bytes both ways.

TLS is never terminated: the bytes read to find the server name are forwarded to the
node unchanged, followed by everything else, in both directions, until either side
closes. Bounds: the ClientHello may be at most
:data:`~pqmpc_node.gateway.clienthello.MAX_CLIENT_HELLO_BYTES` and must arrive within
``hello_timeout_s``; the node must accept within ``connect_timeout_s``; a connection
with no bytes either way for ``idle_timeout_s`` is closed; each direction moves at most
:data:`CHUNK` bytes at a time and waits for the other side to drain (no unbounded
buffering). Every refused connection is logged with its reason and counted in
:attr:`SniGateway.refusals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pqmpc_node.gateway.clienthello import MAX_CLIENT_HELLO_BYTES, ClientHelloError, Incomplete, server_name
from pqmpc_node.gateway.routing import Endpoint, Refusal

__all__ = ["CHUNK", "GatewayTimeouts", "Resolver", "SniGateway"]

_log = logging.getLogger(__name__)

CHUNK = 64 * 1024
"""Bytes read per step in each direction."""

Resolver = Callable[[str], Endpoint | Refusal]
"""``resolve(server_name)``: the node to route to, or why not."""

# A plaintext fatal alert (RFC 8446 §6): lets the client say "unrecognized_name" instead of "connection reset".
_ALERT_UNRECOGNIZED_NAME = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112])
_ALERT_DECODE_ERROR = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50])


@dataclass(frozen=True)
class GatewayTimeouts:
    """Seconds: for the whole ClientHello, for the connection to the node, and without traffic."""

    hello_s: float = 10.0
    connect_s: float = 5.0
    idle_s: float = 600.0


class _Refused(Exception):
    def __init__(self, reason: str, detail: str, alert: bytes | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.alert = reason, detail, alert


class SniGateway:
    """Listens on one port and passes each TLS connection through to the node its SNI names."""

    def __init__(self, resolve: Resolver, *, timeouts: GatewayTimeouts = GatewayTimeouts()) -> None:
        self.resolve = resolve
        self.timeouts = timeouts
        self.refusals: dict[str, int] = {}
        self.routed: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port, see :attr:`port`)."""
        self._server = await asyncio.start_server(self._on_client, host, port, limit=CHUNK)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the gateway is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = "%s:%s" % tuple(writer.get_extra_info("peername") or ("?", "?"))[:2]
        try:
            await self._serve(reader, writer, peer)
        except _Refused as exc:
            self.refusals[exc.reason] = self.refusals.get(exc.reason, 0) + 1
            # A connection that sent nothing at all is a TCP probe (kubelet, load balancer health check).
            level = logging.DEBUG if exc.reason == "empty" else logging.WARNING
            _log.log(level, "refused %s: %s (%s)", peer, exc.reason, exc.detail)
            if exc.alert is not None:
                with contextlib.suppress(OSError):
                    writer.write(exc.alert)
                    await asyncio.wait_for(writer.drain(), 1.0)
        except (OSError, asyncio.IncompleteReadError) as exc:
            _log.info("connection from %s ended: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _hello(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        """The server name and every byte read to find it (forwarded to the node as they are)."""
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.hello_s
        while True:
            try:
                name = server_name(data)
            except ClientHelloError as exc:
                alert = None if exc.reason == "not_tls" else (
                    _ALERT_UNRECOGNIZED_NAME if exc.reason in ("no_sni", "bad_sni") else _ALERT_DECODE_ERROR)
                raise _Refused(exc.reason, str(exc), alert) from None
            if not isinstance(name, Incomplete):
                return name, data
            left = deadline - loop.time()
            if left <= 0:
                raise _Refused("hello_timeout", f"no complete ClientHello within {self.timeouts.hello_s:g}s "
                                                f"({len(data)} bytes)")
            try:
                chunk = await asyncio.wait_for(reader.read(min(CHUNK, MAX_CLIENT_HELLO_BYTES + 64)), left)
            except TimeoutError:
                raise _Refused("empty" if not data else "hello_timeout",
                               f"no complete ClientHello within {self.timeouts.hello_s:g}s ({len(data)} bytes)") from None
            if not chunk:
                raise _Refused("empty" if not data else "hello_truncated",
                               f"the client closed after {len(data)} bytes, before a complete ClientHello")
            data += chunk

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        name, head = await self._hello(reader)
        target = self.resolve(name)
        if isinstance(target, Refusal):
            raise _Refused(target.reason, target.detail, _ALERT_UNRECOGNIZED_NAME)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(target.ip, target.port, limit=CHUNK), self.timeouts.connect_s)
        except (OSError, TimeoutError) as exc:
            raise _Refused("node_unreachable", f"{name} -> {target.ip}:{target.port}: {exc or 'timed out'}") from None
        self.routed[target.node_id] = self.routed.get(target.node_id, 0) + 1
        _log.info("%s -> %s (%s:%d)", peer, target.node_id, target.ip, target.port)
        try:
            up_writer.write(head)
            await up_writer.drain()
            await self._splice(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await up_writer.wait_closed()

    async def _splice(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter,
                      u_reader: asyncio.StreamReader, u_writer: asyncio.StreamWriter) -> None:
        """Copy both directions until both have ended (a half-close travels on) or one idles out."""
        idle = self.timeouts.idle_s
        loop = asyncio.get_running_loop()
        last = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                try:
                    chunk = await asyncio.wait_for(src.read(CHUNK), idle)
                except TimeoutError:
                    if loop.time() - last[0] < idle:
                        continue  # the other direction was busy
                    raise
                if not chunk:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                last[0] = loop.time()
                dst.write(chunk)
                await dst.drain()

        pumps = [asyncio.ensure_future(pump(c_reader, u_writer)), asyncio.ensure_future(pump(u_reader, c_writer))]
        try:
            await asyncio.gather(*pumps)
        except TimeoutError:
            _log.info("closing a connection idle for %gs", idle)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
