"""The gateway's TCP server on real sockets: SNI routing to two upstreams, bytes unchanged both ways
(the ClientHello included), refusals with a TLS alert and a log line, timeouts, half-close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from pqmpc_node.gateway.proxy import GatewayTimeouts, SniGateway
from pqmpc_node.gateway.routing import Endpoint, Refusal, route

from tests.gateway.test_clienthello import stdlib_hello

DOMAIN = "banks.example.com"


class Upstream:
    """A node stand-in: records what it received, answers ``<name>:`` + the bytes, closes on EOF."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = b""
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                self.received += chunk
                writer.write(self.name.encode() + b":" + chunk)
                await writer.drain()
            writer.write(b"<eof>")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def world() -> AsyncIterator[tuple[SniGateway, dict[str, Upstream]]]:
    ups = {n: Upstream(n) for n in ("banks-a-0", "banks-b-0")}
    table = {n: Endpoint(n, "127.0.0.1", await u.start()) for n, u in ups.items()}

    def resolve(name: str) -> Endpoint | Refusal:
        return route(name, domain=DOMAIN, endpoints=table)

    gw = SniGateway(resolve, timeouts=GatewayTimeouts(hello_s=1.0, connect_s=2.0, idle_s=30.0))
    await gw.start("127.0.0.1", 0)
    yield gw, ups
    await gw.close()
    for u in ups.values():
        assert u.server is not None
        u.server.close()


async def _exchange(port: int, first: bytes, then: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    if then:
        await writer.drain()
        writer.write(then)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_routes_by_sni_and_passes_every_byte(world: tuple[SniGateway, dict[str, Upstream]]) -> None:
    gw, ups = world
    for node in ("banks-a-0", "banks-b-0"):
        hello = stdlib_hello(f"{node}.{DOMAIN}")
        answer = await _exchange(gw.port, hello, b"after-hello" * 10000)
        assert ups[node].received == hello + b"after-hello" * 10000  # the ClientHello reaches the node as sent
        assert answer.startswith(node.encode() + b":" + hello[:10])
        assert answer.endswith(b"<eof>")  # the client's half-close reached the node, and the node's close came back
    assert gw.routed == {"banks-a-0": 1, "banks-b-0": 1}


async def test_hello_in_small_pieces(world: tuple[SniGateway, dict[str, Upstream]]) -> None:
    gw, ups = world
    hello = stdlib_hello(f"banks-b-0.{DOMAIN}")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    for i in range(0, len(hello), 7):
        writer.write(hello[i:i + 7])
        await writer.drain()
    writer.write_eof()
    assert (await asyncio.wait_for(reader.read(), 10)).endswith(b"<eof>")
    assert ups["banks-b-0"].received == hello
    writer.close()


@pytest.mark.parametrize(("first", "reason", "alert"), [
    (stdlib_hello(f"banks-z-9.{DOMAIN}"), "unknown_node", 112),
    (stdlib_hello("banks-a-0.example.org"), "unknown_sni", 112),
    (stdlib_hello(None), "no_sni", 112),
    (b"GET / HTTP/1.1\r\nHost: banks-a-0\r\n\r\n", "not_tls", None),
    (stdlib_hello(f"banks-a-0.{DOMAIN}")[:40], "hello_truncated", None),
])
async def test_refusals_close_with_a_reason(world: tuple[SniGateway, dict[str, Upstream]], caplog: pytest.LogCaptureFixture,
                                            first: bytes, reason: str, alert: int | None) -> None:
    gw, ups = world
    with caplog.at_level(logging.WARNING, logger="pqmpc_node.gateway.proxy"):
        answer = await _exchange(gw.port, first)
    assert answer == (b"" if alert is None else bytes([0x15, 3, 3, 0, 2, 2, alert]))
    assert gw.refusals == {reason: 1}
    assert any(reason in r.getMessage() for r in caplog.records)
    assert all(u.received == b"" for u in ups.values())


async def test_silent_client_times_out(world: tuple[SniGateway, dict[str, Upstream]]) -> None:
    gw, _ = world
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(stdlib_hello(f"banks-a-0.{DOMAIN}")[:20])
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the 1 s hello timeout, not by us
    assert gw.refusals == {"hello_timeout": 1}
    writer.close()


async def test_unreachable_node(caplog: pytest.LogCaptureFixture) -> None:
    gw = SniGateway(lambda name: Endpoint("banks-a-0", "127.0.0.1", 1), timeouts=GatewayTimeouts(hello_s=5))
    await gw.start("127.0.0.1", 0)
    try:
        assert await _exchange(gw.port, stdlib_hello(f"banks-a-0.{DOMAIN}")) == b""
        assert gw.refusals == {"node_unreachable": 1}
    finally:
        await gw.close()
