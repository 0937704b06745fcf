"""HTTP over PQ TLS: a real aiohttp app on a Unix socket behind TlsFront, real httpx clients.

Round trips (async and sync clients), keep-alive, a 32 MiB body both ways, concurrency;
refusals: a classical-only client, a client of another CA, a verify_peer hook, an unknown
server name, plain HTTP, a silent and an aborting client. Each refusal leaves the front serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from OpenSSL import SSL

from pqmpc_node.net.https import TlsFront, async_pq_transport, peer_certificate, pq_transport
from pqmpc_node.net.tls import TlsIdentity, server_context

pytestmark = pytest.mark.timeout(60)


@dataclass
class Refusals:
    reasons: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.changed.set()

    async def wait_for(self, reason: str, timeout: float = 10.0) -> None:
        async def until() -> None:
            while reason not in self.reasons:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {reason!r} refusal; saw {self.reasons}") from None


@dataclass
class Front:
    front: TlsFront
    tls: TlsIdentity
    refusals: Refusals
    names: list[str | None]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.front.port}"

    def client(self, ca: x509.Certificate | None = None, **kw: Any) -> httpx.AsyncClient:
        transport = async_pq_transport(ca or self.tls.ca_certificate, self.tls.suite, **kw)
        return httpx.AsyncClient(transport=transport, base_url=self.url, timeout=30)

    def sync_client(self, ca: x509.Certificate | None = None, **kw: Any) -> httpx.Client:
        transport = pq_transport(ca or self.tls.ca_certificate, self.tls.suite, **kw)
        return httpx.Client(transport=transport, base_url=self.url, timeout=30)


RELEASE = web.AppKey("release", asyncio.Event)


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[RELEASE] = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await request.app[RELEASE].wait()
        return web.Response(text="late")

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "pq", "conn": id(request.transport)})

    async def echo_json(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json(), "conn": id(request.transport)})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Sha256": hashlib.sha256(body).hexdigest()})

    app.router.add_get("/hello", hello)
    app.router.add_post("/json", echo_json)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stall", stall)
    return app


@pytest.fixture
async def start_front(netpool: Any) -> AsyncIterator[Callable[..., Any]]:
    sockdir = tempfile.mkdtemp(prefix="pqhttps", dir="/tmp")  # short: Unix socket paths are <= 107 bytes
    app = make_app()
    runner = web.AppRunner(app)
    await runner.setup()
    path = os.path.join(sockdir, "api.sock")
    await web.UnixSite(runner, path).start()
    fronts: list[TlsFront] = []

    async def start(
        context_for: Callable[[str | None], SSL.Context | None] | None = None, **kw: Any
    ) -> Front:
        tls = netpool.creds("web-a")
        ctx = server_context(tls)
        names: list[str | None] = []

        def serve_all(name: str | None) -> SSL.Context | None:
            names.append(name)
            return ctx

        refusals = Refusals()
        front = TlsFront(context_for or serve_all, path, on_refusal=refusals, **kw)
        await front.start("127.0.0.1", 0)
        fronts.append(front)
        return Front(front, tls, refusals, names)

    yield start
    app[RELEASE].set()
    for f in fronts:
        await f.close()
    await runner.cleanup()
    shutil.rmtree(sockdir, ignore_errors=True)


async def assert_serves(f: Front) -> None:
    async with f.client() as c:
        r = await c.get("/hello")
        assert r.status_code == 200 and r.json()["hello"] == "pq"


async def test_async_round_trip_keep_alive_and_peer_certificate(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        responses = [await c.get("/hello") for _ in range(3)]
        responses.append(await c.post("/json", json={"a": [1, 2, 3]}))
    assert [r.status_code for r in responses] == [200] * 4
    assert responses[-1].json()["got"] == {"a": [1, 2, 3]}
    # One TLS connection, one upstream connection, for all four requests (keep-alive).
    assert len({r.json()["conn"] for r in responses}) == 1
    assert len({id(r.extensions["network_stream"]) for r in responses}) == 1
    assert peer_certificate(responses[0]) == f.tls.certificate
    stream = responses[0].extensions["network_stream"]
    assert stream.get_extra_info("tls_version") == "TLSv1.3"
    assert stream.get_extra_info("tls_group") == f.tls.suite.tls_group.value
    assert f.refusals.reasons == []


async def test_sync_client_round_trip_and_keep_alive(start_front: Any) -> None:
    f = await start_front()

    def run() -> list[httpx.Response]:
        with f.sync_client() as c:
            out = [c.get("/hello"), c.post("/json", json={"x": "y"}), c.get("/hello")]
            for r in out:
                r.read()
            return out

    responses = await asyncio.to_thread(run)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[1].json()["got"] == {"x": "y"}
    assert len({r.json()["conn"] for r in responses}) == 1
    assert peer_certificate(responses[0]) == f.tls.certificate


async def test_large_body_both_ways_async_and_sync(start_front: Any) -> None:
    f = await start_front()
    body = os.urandom(32 * 2**20 + 17)
    digest = hashlib.sha256(body).hexdigest()
    async with f.client() as c:
        r = await c.post("/echo", content=body)
    assert r.status_code == 200 and r.headers["X-Sha256"] == digest and r.content == body

    def run() -> httpx.Response:
        with f.sync_client() as c:
            resp: httpx.Response = c.post("/echo", content=body)
            resp.read()
            return resp

    r = await asyncio.to_thread(run)
    assert r.status_code == 200 and r.headers["X-Sha256"] == digest and r.content == body


async def test_twenty_concurrent_requests(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        responses = await asyncio.gather(*(c.post("/json", json={"i": i}) for i in range(20)))
    assert [r.json()["got"]["i"] for r in responses] == list(range(20))
    assert len({r.json()["conn"] for r in responses}) > 1  # really in parallel, over several connections


async def test_classical_only_client_is_refused(start_front: Any) -> None:
    f = await start_front()
    async with f.client(offer_groups=["X25519"]) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/hello")
    await f.refusals.wait_for("no_shared_group")

    def run() -> None:
        with f.sync_client(offer_groups=["X25519"]) as c, pytest.raises(httpx.ConnectError):
            c.get("/hello")

    await asyncio.to_thread(run)
    await assert_serves(f)


async def test_client_of_another_ca_refuses_the_server(start_front: Any, other_ca: Any) -> None:
    f = await start_front()
    async with f.client(ca=other_ca.certificate) as c:
        with pytest.raises(httpx.ConnectError, match=r"127\.0\.0\.1.*refused the server certificate \(wrong_ca\)"):
            await c.get("/hello")
    # The other CA has the same name, so the client's check fails on the signature and its
    # alert is decrypt_error, which the front can only report as a failed handshake.
    await f.refusals.wait_for("handshake_failed")

    def run() -> None:
        with f.sync_client(ca=other_ca.certificate) as c, pytest.raises(httpx.ConnectError, match="wrong_ca"):
            c.get("/hello")

    await asyncio.to_thread(run)
    await assert_serves(f)


async def test_verify_peer_hook_sees_the_certificate_and_can_refuse(start_front: Any) -> None:
    f = await start_front()
    seen: list[tuple[x509.Certificate, str]] = []

    def accept(cert: x509.Certificate, host: str) -> None:
        seen.append((cert, host))

    def refuse(cert: x509.Certificate, host: str) -> None:
        raise ValueError(f"{host} is not node-b")

    async with f.client(verify_peer=accept) as c:
        assert (await c.get("/hello")).status_code == 200
    assert seen == [(f.tls.certificate, "127.0.0.1")]
    async with f.client(verify_peer=refuse) as c:
        with pytest.raises(httpx.ConnectError, match=r"refused by verify_peer: 127\.0\.0\.1 is not node-b"):
            await c.get("/hello")

    def run() -> None:
        with f.sync_client(verify_peer=refuse) as c, pytest.raises(httpx.ConnectError, match="verify_peer"):
            c.get("/hello")

    await asyncio.to_thread(run)
    await assert_serves(f)


async def test_sni_reaches_context_for(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        assert (await c.get("/hello", extensions={"sni_hostname": "x.example"})).status_code == 200
    async with f.client() as c:
        assert (await c.get("/hello")).status_code == 200  # an IP literal: no SNI sent
    assert f.names == ["x.example", None]


async def test_unknown_server_name_is_refused(netpool: Any, start_front: Any) -> None:
    ctx = server_context(netpool.creds("web-b"))
    f = await start_front(lambda name: ctx if name == "api.pool.svc" else None)
    async with f.client() as c:
        with pytest.raises(httpx.ConnectError, match="unrecognized name"):
            await c.get("/hello", extensions={"sni_hostname": "other.example"})
    await f.refusals.wait_for("unknown_server_name")
    async with f.client() as c:
        assert (await c.get("/hello", extensions={"sni_hostname": "api.pool.svc"})).status_code == 200
    assert f.refusals.reasons == ["unknown_server_name"]


async def test_not_certified_refuses_everything(start_front: Any) -> None:
    f = await start_front(lambda name: None)
    async with f.client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/hello")
    await f.refusals.wait_for("unknown_server_name")


async def test_plain_http_to_the_tls_port_fails_cleanly(start_front: Any) -> None:
    f = await start_front()
    reader, writer = await asyncio.open_connection("127.0.0.1", f.front.port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the front closes: at most a TLS alert comes back
    assert b"HTTP/1.1" not in answer
    writer.close()
    await f.refusals.wait_for("handshake_failed")
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{f.front.port}/hello")
    await assert_serves(f)


async def test_plain_http_url_is_not_sent_by_the_pq_transport(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get(f"http://127.0.0.1:{f.front.port}/hello")


async def test_silent_and_aborting_clients_are_refused(start_front: Any) -> None:
    f = await start_front(handshake_timeout_s=0.3)
    _, silent = await asyncio.open_connection("127.0.0.1", f.front.port)
    await f.refusals.wait_for("handshake_timeout")
    silent.close()
    _, aborting = await asyncio.open_connection("127.0.0.1", f.front.port)
    aborting.close()
    await f.refusals.wait_for("peer_aborted")
    await assert_serves(f)


async def test_connections_end_when_the_client_closes(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        await asyncio.gather(*(c.get("/hello") for _ in range(5)))
        assert f.front._tasks
    tasks = set(f.front._tasks)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert not f.front._tasks


async def test_server_closing_the_connection_is_followed(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        first = await c.get("/hello", headers={"Connection": "close"})
        second = await c.get("/hello")
    assert first.json()["conn"] != second.json()["conn"]
    await asyncio.wait_for(asyncio.gather(*set(f.front._tasks), return_exceptions=True), 10)


async def test_read_timeouts_are_honoured(start_front: Any) -> None:
    f = await start_front()
    async with f.client() as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/stall", timeout=0.3)

    def run() -> None:
        with f.sync_client() as c, pytest.raises(httpx.ReadTimeout):
            c.get("/stall", timeout=0.3)

    await asyncio.to_thread(run)
    await assert_serves(f)
