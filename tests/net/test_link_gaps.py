"""Peer-link gaps: close_notify in the same read as data, acceptor-enforced re-handshake,
transparent fragmentation, a live transparency-log source, and the shared SSL context."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from OpenSSL import SSL

from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.crypto.transparency import LogVerifier
from pqmpc_node.net import tls as tlsmod
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.framing import FrameError, FrameKind, encode_frame
from pqmpc_node.net.link import LinkClosed, LinkConfig, LinkRefused, PeerLink, RekeyPolicy
from tests.net.conftest import wall_now
from tests.net.test_links import dial

pytestmark = pytest.mark.timeout(60)


def tls_bytes(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            chunk = conn.bio_read(1 << 20)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


async def pair(netpool: Any, serve: Any, *, server_cfg: dict[str, Any] | None = None,
               client_cfg: dict[str, Any] | None = None) -> tuple[PeerLink, PeerLink, Any]:
    a, b = netpool.creds("node-a"), netpool.creds("node-b")  # both logged before the configs snapshot the log
    srv = await serve(netpool.config(a, **(server_cfg or {})), {"node-b"})
    client = await dial(netpool, b, srv.port, **(client_cfg or {}))
    server = await srv.links.get()
    assert isinstance(server, PeerLink)
    return client, server, srv


# -- 2: close_notify in the same read as application data ---------------------------------

async def test_data_and_close_notify_in_one_write_are_all_delivered(netpool: Any, serve: Any) -> None:
    client, server, _ = await pair(netpool, serve)
    assert client._conn is not None
    for i in range(3):
        client._conn.send(encode_frame(FrameKind.DATA, i, bytes([i]) * 5000))
    client._conn.shutdown()  # close_notify queued right behind the data records
    client._writer.write(tls_bytes(client._conn))  # one TCP write: one read on the other side
    await client._writer.drain()
    for i in range(3):
        assert await server.recv(i) == bytes([i]) * 5000
    with pytest.raises(LinkClosed):
        await server.recv(99)
    await client.close()


async def test_fragmented_message_then_close_notify_in_one_write(netpool: Any, serve: Any) -> None:
    client, server, _ = await pair(netpool, serve, client_cfg={"max_frame": 4096})
    assert client._conn is not None
    message = bytes(range(256)) * 100  # 25600 bytes: 7 frames of at most 4096
    from pqmpc_node.net.framing import fragment_message

    for frame in fragment_message(7, message, max_payload=4096):
        client._conn.send(frame)
    client._conn.shutdown()
    client._writer.write(tls_bytes(client._conn))
    await client._writer.drain()
    assert await server.recv(7) == message
    await client.close()


async def test_closing_right_after_send_loses_nothing(netpool: Any, serve: Any) -> None:
    """No closing barrier: the dialer sends and closes at once, the acceptor still reads all."""
    client, server, _ = await pair(netpool, serve)
    for i in range(20):
        await client.send(i, bytes([i]) * (1000 * i + 1))
    await client.close()
    for i in range(20):
        assert await server.recv(i) == bytes([i]) * (1000 * i + 1)
    with pytest.raises(LinkClosed):
        await server.recv(1000)


@pytest.mark.parametrize("rep", range(3))
async def test_close_with_unread_input_does_not_reset_away_sent_data(netpool: Any, serve: Any, rep: int) -> None:
    """The real cause behind the node's closing barrier: closing a socket that still holds
    unread input sends a TCP reset, and the peer loses what it had not read yet. The link
    closes gracefully (close_notify, FIN, drain until the peer closes) instead."""
    client, server, srv = await pair(netpool, serve, client_cfg={"max_buffered": 1024})

    async def flood() -> None:  # the client's reader is paused: unread input piles up on its side
        for i in range(200):
            await server.send(10_000 + i, b"f" * 65536)

    task = asyncio.create_task(flood())
    await asyncio.sleep(0.2)
    msgs = [bytes([i]) * 300_000 for i in range(8)]
    for i, m in enumerate(msgs):
        await client.send(i, m)
    await client.close()
    for i, m in enumerate(msgs):
        assert await server.recv(i) == m
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert srv.counters.snapshot() == {}


async def test_close_gives_up_lingering_on_a_silent_peer(netpool: Any, serve: Any) -> None:
    client, server, _ = await pair(netpool, serve, client_cfg={"close_linger_s": 0.3})
    server._writer.transport.pause_reading()  # a peer that never reads our close_notify nor closes
    t0 = asyncio.get_running_loop().time()
    await client.close()
    assert 0.25 <= asyncio.get_running_loop().time() - t0 < 3
    with pytest.raises(LinkClosed):
        await client.recv(1)


# -- 3: the acceptor enforces an overdue re-handshake ---------------------------------------

async def test_acceptor_closes_link_when_dialer_never_rekeys_by_time(netpool: Any, serve: Any) -> None:
    enforce = RekeyPolicy(interval_s=0.3, overdue_grace_s=0.2)
    lazy = RekeyPolicy(interval_s=3600)  # this dialer never re-handshakes in time
    client, server, srv = await pair(netpool, serve, server_cfg={"rekey": enforce}, client_cfg={"rekey": lazy})
    await client.send(1, b"early")
    assert await server.recv(1) == b"early"
    with pytest.raises(LinkRefused) as e:
        await asyncio.wait_for(server.recv(2), 5)
    assert e.value.reason == "rekey_overdue" and "re-handshake" in str(e.value)
    assert srv.counters.get("rekey_overdue") == 1
    with pytest.raises((LinkClosed, LinkRefused)):  # the dialer sees the close_notify
        await asyncio.wait_for(client.recv(3), 5)
    with pytest.raises(LinkRefused):
        await server.send(4, b"late")
    assert srv.counters.get("rekey_overdue") == 1  # counted once


async def test_acceptor_closes_link_when_dialer_never_rekeys_by_bytes(netpool: Any, serve: Any) -> None:
    enforce = RekeyPolicy(max_bytes=50_000, overdue_grace_bytes=50_000)
    client, server, srv = await pair(netpool, serve, server_cfg={"rekey": enforce})
    for i in range(5):  # 150 KB: past max_bytes + grace = 100 KB
        await client.send(i, b"z" * 30_000)
    with pytest.raises(LinkRefused) as e:
        for i in range(5):
            await asyncio.wait_for(server.recv(i), 5)
    assert e.value.reason == "rekey_overdue" and srv.counters.get("rekey_overdue") == 1
    await client.close()


async def test_dialer_rekeying_in_time_is_not_closed(netpool: Any, serve: Any) -> None:
    policy = RekeyPolicy(interval_s=0.25, overdue_grace_s=0.5)
    client, server, srv = await pair(netpool, serve, server_cfg={"rekey": policy}, client_cfg={"rekey": policy})
    await asyncio.sleep(1.2)  # several intervals: the dialer's timer re-handshakes each time
    await client.send(1, b"still here")
    assert await server.recv(1) == b"still here"
    assert client.attestation().handshakes >= 4
    assert srv.counters.get("rekey_overdue") == 0
    await client.close()


async def test_receive_only_dialer_rekeys_by_bytes(netpool: Any, serve: Any) -> None:
    """A dialer that only receives still re-handshakes before the acceptor's limit."""
    policy = RekeyPolicy(max_bytes=100_000, overdue_grace_bytes=100_000)
    client, server, srv = await pair(netpool, serve, server_cfg={"rekey": policy}, client_cfg={"rekey": policy})
    for i in range(20):
        await server.send(i, b"r" * 20_000)
        assert await client.recv(i) == b"r" * 20_000
    assert srv.counters.get("rekey_overdue") == 0 and not server.closed
    assert client.attestation().handshakes >= 3
    await client.close()


# -- 5: transparent fragmentation -----------------------------------------------------------

async def test_message_over_frame_limit_is_fragmented_and_reassembled(netpool: Any, serve: Any) -> None:
    cfg = {"max_frame": 64 * 1024}
    client, server, _ = await pair(netpool, serve, server_cfg=cfg, client_cfg=cfg)
    big = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: seventeen frames
    await client.send(3, b"small")
    await client.send(5, big)
    await server.send(6, big[::-1])
    assert await server.recv(5) == big and await server.recv(3) == b"small"
    assert await client.recv(6) == big[::-1]
    await client.close()


async def test_fragmented_message_survives_a_rekey_midway(netpool: Any, serve: Any) -> None:
    cfg = {"max_frame": 16 * 1024}
    client, server, _ = await pair(netpool, serve, server_cfg=cfg,
                                   client_cfg={**cfg, "rekey": RekeyPolicy(max_bytes=100_000)})
    big = b"".join(i.to_bytes(4, "big") for i in range(100_000))  # 400 KB: rekeys inside the message
    await client.send(1, big)
    assert await server.recv(1) == big
    assert client.attestation().handshakes >= 4
    await client.close()


async def test_truncated_fragment_stream_refused(netpool: Any, serve: Any) -> None:
    client, server, srv = await pair(netpool, serve)
    await client._write_plaintext(encode_frame(FrameKind.FRAGMENT, 1, b"first half"))
    await client._write_plaintext(encode_frame(FrameKind.DATA, 2, b"other tag"))  # not the end of tag 1
    await client.close()
    assert await server.recv(2) == b"other tag"
    with pytest.raises(LinkRefused) as e:
        await server.recv(1)
    assert e.value.reason == "truncated_message" and srv.counters.get("truncated_message") == 1


async def test_oversized_total_refused_before_buffering_it(netpool: Any, serve: Any) -> None:
    client, server, srv = await pair(netpool, serve, server_cfg={"max_frame": 8192, "max_message": 50_000},
                                     client_cfg={"max_frame": 8192})
    await client.send(1, b"ok" * 1000)
    assert await server.recv(1) == b"ok" * 1000
    task = asyncio.create_task(client.send(2, b"x" * 10_000_000))
    with pytest.raises(LinkRefused) as e:
        await server.recv(2)
    assert e.value.reason == "oversized_message" and srv.counters.get("oversized_message") == 1
    assert server._reassembler.pending <= 50_000
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()


async def test_sender_refuses_message_over_its_own_limit(netpool: Any, serve: Any) -> None:
    client, server, _ = await pair(netpool, serve, client_cfg={"max_message": 1000})
    with pytest.raises(FrameError) as e:
        await client.send(1, b"y" * 1001)
    assert e.value.reason == "oversized_message"
    await client.send(1, b"y" * 1000)  # the link is still usable
    assert await server.recv(1) == b"y" * 1000
    await client.close()


# -- 6: a live transparency-log source --------------------------------------------------------

async def test_shared_verifier_updated_in_place_admits_later_certificates(netpool: Any, serve: Any) -> None:
    shared = netpool.verifier()
    srv = await serve(LinkConfig(tls=netpool.creds("node-a"), log=shared, clock=wall_now), {"node-late"})
    late = netpool.creds("node-late")  # logged after `shared` was verified
    with pytest.raises((LinkRefused, LinkClosed, ConnectionError)):
        c = await dial(netpool, late, srv.port)
        await c.recv(1)
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "not_in_log"
    shared.update(netpool.log.entries, netpool.log.signed_tree_head(now=wall_now()))
    client = await dial(netpool, late, srv.port)
    server = await srv.links.get()
    assert isinstance(server, PeerLink) and server.attestation().peer_node_id == "node-late"
    await client.close()


async def test_log_provider_callable_is_read_at_each_handshake(netpool: Any, serve: Any) -> None:
    current: list[LogVerifier] = [netpool.verifier()]
    cfg = LinkConfig(tls=netpool.creds("node-a"), log=lambda: current[0], clock=wall_now)
    srv = await serve(cfg, {"node-later"})
    later = netpool.creds("node-later")
    with pytest.raises((LinkRefused, LinkClosed, ConnectionError)):
        c = await dial(netpool, later, srv.port)
        await c.recv(1)
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "not_in_log"
    current[0] = netpool.verifier()  # a fresh snapshot, swapped in
    client = await dial(netpool, later, srv.port)
    assert isinstance(await srv.links.get(), PeerLink)
    await client.close()


def test_log_source_of_wrong_type_is_refused(netpool: Any) -> None:
    cfg = LinkConfig(tls=netpool.creds("node-a"), log=42, clock=wall_now)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cfg.inclusion_checker()


# -- 1: one SSL context per identity and policy ---------------------------------------------

async def test_links_share_one_ssl_context_per_identity(netpool: Any, serve: Any) -> None:
    a, b = netpool.creds("node-a"), netpool.creds("node-b")
    srv = await serve(netpool.config(a), {"node-b"})
    links = []
    for _ in range(3):
        links.append(await dial(netpool, b, srv.port))
        links.append(await srv.links.get())
    assert len({id(link._ctx) for link in links[0::2]}) == 1
    assert len({id(link._ctx) for link in links[1::2]}) == 1
    assert links[0]._ctx is not links[1]._ctx
    assert tlsmod.cached_context(b) is links[0]._ctx
    assert tlsmod.cached_context(b, offer_groups=["X25519"]) is not links[0]._ctx  # another policy
    renewed = netpool.creds("node-b")
    assert tlsmod.cached_context(renewed) is not links[0]._ctx  # another certificate
    for link in links[0::2]:
        await link.close()
    tlsmod.clear_context_cache()
    assert tlsmod.cached_context(b) is not links[0]._ctx


async def test_cached_context_still_checks_each_peer(netpool: Any, serve: Any) -> None:
    """Sharing a context must not share verification state between connections."""
    a, b = netpool.creds("node-a"), netpool.creds("node-b")
    srv = await serve(netpool.config(a), {"node-b"})
    good = await dial(netpool, b, srv.port)
    assert isinstance(await srv.links.get(), PeerLink)
    with pytest.raises((LinkRefused, LinkClosed, ConnectionError)):
        c = await dial(netpool, netpool.creds("node-b", logged=False), srv.port)
        await c.recv(1)
    refused = await srv.links.get()
    assert isinstance(refused, LinkRefused) and refused.reason == "not_in_log"
    await good.close()


__all__ = ["RefusalCounters", "NodeId"]


async def test_only_the_leaf_certificate_is_sent(netpool: Any, serve: Any) -> None:
    """No auto-built chain: the peer already trusts the pool CA, so it is neither rebuilt nor sent."""
    client, server, _ = await pair(netpool, serve)
    # OpenSSL's peer chain includes the peer's leaf on the client side, not on the server side.
    for link, sent_leaf_only in ((client, 1), (server, 0)):
        assert link._conn is not None
        chain = link._conn.get_peer_cert_chain(as_cryptography=True)
        assert chain is not None and len(chain) == sent_leaf_only
        assert netpool.ca.certificate not in chain
        verified = link._conn.get_verified_chain(as_cryptography=True)
        assert verified is not None and verified[-1] == netpool.ca.certificate  # still checked up to the CA
    await client.close()
