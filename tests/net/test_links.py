"""PQ mutual-TLS peer links on real loopback sockets: attestation, identity checks, refusals,
re-handshake, backpressure, frame limits, refusals counted against the peer where it is known,
and a capture proving nothing crosses in plaintext."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.framing import FrameKind, encode_frame
from pqmpc_node.net.link import LinkClosed, LinkRefused, PeerLink, RekeyPolicy
from pqmpc_node.net.tls import TlsIdentity

pytestmark = pytest.mark.timeout(60)


async def dial(netpool: Any, tls: TlsIdentity, port: int, expected: str = "node-a", counters: RefusalCounters | None = None,
               **cfg: Any) -> PeerLink:
    return await PeerLink.connect("127.0.0.1", port, config=netpool.config(tls, **cfg), expected_peer=NodeId(expected),
                                  counters=counters or RefusalCounters())


async def test_mutual_auth_attestation_and_tagged_messages(netpool: Any, serve: Any) -> None:
    a, b = netpool.creds("node-a"), netpool.creds("node-b")
    srv = await serve(netpool.config(a), {"node-b"})
    client = await dial(netpool, b, srv.port)
    server = await srv.links.get()
    att = client.attestation()
    assert (att.protocol, att.group, att.signature_algorithm, att.peer_node_id) == ("TLSv1.3", "X25519MLKEM768", "ML-DSA-65", "node-a")
    assert server.attestation().peer_node_id == "node-b"
    await client.send(2, b"round-two")  # arrives early: buffered under its tag
    await client.send(1, b"round-one")
    assert await server.recv(1) == b"round-one"
    assert await server.recv(2) == b"round-two"
    await server.send(5, b"back")
    assert await client.recv(5) == b"back"
    await client.close()


async def test_wrong_identity_refused_by_client(netpool: Any, serve: Any) -> None:
    srv = await serve(netpool.config(netpool.creds("node-c")), {"node-b"})
    counters = RefusalCounters()
    with pytest.raises(LinkRefused) as e:
        await dial(netpool, netpool.creds("node-b"), srv.port, expected="node-a", counters=counters)
    assert e.value.reason == "wrong_identity" and counters.get("wrong_identity") == 1
    # The dialer knows whom it dialed: the refusal counts against that node.
    assert counters.snapshot_by_peer() == {("wrong_identity", "node-a"): 1}


async def test_unexpected_client_refused_by_server(netpool: Any, serve: Any) -> None:
    srv = await serve(netpool.config(netpool.creds("node-a")), {"node-b"})
    with pytest.raises((LinkRefused, LinkClosed, ConnectionError)):
        c = await dial(netpool, netpool.creds("node-z"), srv.port)
        await c.recv(1)  # TLS 1.3: the client learns of the refusal after its Finished
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "wrong_identity"
    assert srv.counters.get("wrong_identity") == 1
    # Refused before authentication: the acceptor does not know who it was.
    assert srv.counters.snapshot_by_peer() == {("wrong_identity", ""): 1}


async def test_wrong_ca_refused(netpool: Any, serve: Any, other_ca: Any) -> None:
    srv = await serve(netpool.config(netpool.creds("node-a")), {"node-b"})
    rogue = netpool.creds("node-b", ca=other_ca, logged=False)
    rogue = TlsIdentity(rogue.identity, rogue.certificate, netpool.ca.certificate)
    with pytest.raises((LinkRefused, LinkClosed, ConnectionError)):
        c = await dial(netpool, rogue, srv.port)
        await c.recv(1)
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "wrong_ca"
    assert srv.counters.get("wrong_ca") == 1


async def test_expired_certificate_refused(netpool: Any, serve: Any) -> None:
    old = netpool.creds("node-a", start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3), lifetime=dt.timedelta(hours=1))
    srv = await serve(netpool.config(old), {"node-b"})
    counters = RefusalCounters()
    with pytest.raises(LinkRefused) as e:
        await dial(netpool, netpool.creds("node-b"), srv.port, counters=counters)
    assert e.value.reason == "expired" and counters.get("expired") == 1


async def test_certificate_missing_from_log_refused(netpool: Any, serve: Any) -> None:
    srv = await serve(netpool.config(netpool.creds("node-a", logged=False)), {"node-b"})
    counters = RefusalCounters()
    with pytest.raises(LinkRefused) as e:
        await dial(netpool, netpool.creds("node-b"), srv.port, counters=counters)
    assert e.value.reason == "not_in_log" and counters.get("not_in_log") == 1


async def test_classical_only_client_refused(netpool: Any, serve: Any) -> None:
    from OpenSSL import SSL

    from pqmpc_node.net import tls as tlsmod

    b = netpool.creds("node-b")
    srv = await serve(netpool.config(netpool.creds("node-a")), {"node-b"})
    ctx = tlsmod.make_context(b, offer_groups=["X25519", "P-256"])
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    with pytest.raises(SSL.Error):
        for _ in range(10):
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                writer.write(conn.bio_read(65536))
                data = await reader.read(65536)
                if not data:
                    break
                conn.bio_write(data)
    writer.close()
    await writer.wait_closed()
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "no_shared_group"
    assert srv.counters.get("no_shared_group") == 1


async def test_rehandshake_by_bytes_keeps_messages_flowing(netpool: Any, serve: Any) -> None:
    a, b = netpool.creds("node-a"), netpool.creds("node-b")
    srv = await serve(netpool.config(a), {"node-b"})
    client = await dial(netpool, b, srv.port, rekey=RekeyPolicy(interval_s=3600, max_bytes=100_000))
    server = await srv.links.get()
    for i in range(10):
        await client.send(i, bytes([i]) * 30_000)
        assert await server.recv(i) == bytes([i]) * 30_000
        await server.send(i, b"ack")
        assert await client.recv(i) == b"ack"
    assert client.attestation().handshakes >= 3
    for _ in range(200):  # a rekey the dialer's reader started may still be finishing
        if server.attestation().handshakes == client.attestation().handshakes:
            break
        await asyncio.sleep(0.01)
    assert server.attestation().handshakes == client.attestation().handshakes
    assert client.attestation().group == "X25519MLKEM768"
    await client.close()


async def test_rehandshake_by_time(netpool: Any, serve: Any) -> None:
    b = netpool.creds("node-b")
    srv = await serve(netpool.config(netpool.creds("node-a")), {"node-b"})
    client = await dial(netpool, b, srv.port, rekey=RekeyPolicy(interval_s=0.2))
    server = await srv.links.get()
    await asyncio.sleep(0.7)
    await client.send(1, b"x")
    assert await server.recv(1) == b"x"
    assert client.attestation().handshakes >= 2
    await client.close()


async def test_oversized_frame_refused_by_receiver(netpool: Any, serve: Any) -> None:
    b = netpool.creds("node-b")
    srv = await serve(netpool.config(netpool.creds("node-a"), max_frame=1024), {"node-b"})
    client = await dial(netpool, b, srv.port, max_frame=1 << 20)
    server = await srv.links.get()
    await client.send(1, b"x" * 4096)
    with pytest.raises(LinkRefused) as e:
        await server.recv(1)
    assert e.value.reason == "oversized_frame" and srv.counters.get("oversized_frame") == 1
    # Refused after authentication: counted against the authenticated peer.
    assert srv.counters.snapshot_by_peer() == {("oversized_frame", "node-b"): 1}
    await client.close()


async def test_truncated_frame_refused(netpool: Any, serve: Any) -> None:
    b = netpool.creds("node-b")
    srv = await serve(netpool.config(netpool.creds("node-a")), {"node-b"})
    client = await dial(netpool, b, srv.port)
    server = await srv.links.get()
    await client._write_plaintext(encode_frame(FrameKind.DATA, 1, b"0123456789")[:-3])
    await client.close()
    with pytest.raises(LinkRefused) as e:
        await server.recv(1)
    assert e.value.reason == "truncated_frame" and srv.counters.get("truncated_frame") == 1


async def test_backpressure_pauses_reading(netpool: Any, serve: Any) -> None:
    b = netpool.creds("node-b")
    srv = await serve(netpool.config(netpool.creds("node-a"), max_buffered=256 * 1024), {"node-b"})
    client = await dial(netpool, b, srv.port)
    server = await srv.links.get()
    payload = b"p" * (1 << 20)

    async def flood() -> None:
        for i in range(64):
            await client.send(1000 + i, payload)

    task = asyncio.create_task(flood())
    await asyncio.sleep(1.0)
    assert not task.done()  # 64 MiB cannot be in flight: the receiver stopped reading
    assert server._buffered <= 256 * 1024 + len(payload)
    for i in range(64):
        assert len(await server.recv(1000 + i)) == len(payload)
    await task
    await client.close()


async def test_capture_shows_no_plaintext_share_or_key(netpool: Any, serve: Any) -> None:
    """A relay on loopback records every byte: no share, no private key, only TLS records."""
    a, b = netpool.creds("node-a"), netpool.creds("node-b")
    srv = await serve(netpool.config(a), {"node-b"})
    captured = bytearray()

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                captured.extend(data)
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", srv.port)
        await asyncio.gather(pipe(cr, sw), pipe(sr, cw), return_exceptions=True)

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    client = await dial(netpool, b, proxy.sockets[0].getsockname()[1])
    server = await srv.links.get()
    share = b"SECRET-SHARE:" + bytes(range(256)) * 4
    await client.send(1, share)
    assert await server.recv(1) == share
    await client.rekey()
    await client.send(2, share)
    assert await server.recv(2) == share
    await client.close()
    proxy.close()
    await proxy.wait_closed()
    assert len(captured) > 2 * len(share)
    assert captured[:1] == b"\x16"  # a TLS handshake record opens the stream
    assert b"SECRET-SHARE" not in captured and bytes(range(64)) not in captured
    for ident in (a.identity, b.identity):
        assert ident.private_key.private_bytes_raw() not in captured
