"""The link's bulk paths: many TLS records per OpenSSL call (the fast path is in use and
carries multi-megabyte and fragmented messages intact, also across a re-handshake), a
tampered record still fails the link, frame parts equal the encoded frames without
copying, and the decoder holds a partial large frame in one exactly-sized buffer."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.net import records as recmod
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.framing import HEADER_SIZE, FrameDecoder, FrameKind, iter_fragments, iter_frame_parts
from pqmpc_node.net.link import LinkClosed, LinkRefused, PeerLink

pytestmark = pytest.mark.timeout(60)


async def pair(netpool: Any, serve: Any, **cfg: Any) -> tuple[PeerLink, PeerLink]:
    a, b = netpool.creds("node-a"), netpool.creds("node-b")  # both logged before either side reads the log
    srv = await serve(netpool.config(a, **cfg), {"node-b"})
    client = await PeerLink.connect("127.0.0.1", srv.port, config=netpool.config(b, **cfg),
                                    expected_peer=NodeId("node-a"), counters=RefusalCounters())
    server = await srv.links.get()
    return client, server


async def test_bulk_messages_use_the_record_fast_path(netpool: Any, serve: Any, monkeypatch: Any) -> None:
    calls = {"SSL_read": 0, "SSL_write": 0}
    real_read, real_write = recmod._lib.SSL_read, recmod._lib.SSL_write

    def counting_read(*a: Any) -> Any:
        calls["SSL_read"] += 1
        return real_read(*a)

    def counting_write(*a: Any) -> Any:
        calls["SSL_write"] += 1
        return real_write(*a)

    client, server = await pair(netpool, serve, max_frame=1 << 20)
    assert client._records is not None and client._records.fast and server._records is not None and server._records.fast
    monkeypatch.setattr(recmod, "_lib", _Shim(recmod._lib, counting_read, counting_write))
    big = os.urandom(5 * 2**20 + 123)  # fragments into 6 frames of at most 1 MiB
    await client.send(7, big)
    assert await asyncio.wait_for(server.recv(7), 10) == big
    # 5 MiB is ~330 TLS records: one call per record would be >= 330 writes and reads.
    assert 0 < calls["SSL_write"] < 40, calls
    assert 0 < calls["SSL_read"] < 400 and calls["SSL_read"] < 2 * 330, calls
    await server.send(8, big[:1000])
    assert await asyncio.wait_for(client.recv(8), 10) == big[:1000]
    await client.rekey()
    await client.send(9, big)
    assert await asyncio.wait_for(server.recv(9), 10) == big
    await client.close()


class _Shim:
    def __init__(self, lib: Any, read: Any, write: Any) -> None:
        self._lib, self.SSL_read, self.SSL_write = lib, read, write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


async def test_tampered_record_fails_the_link(netpool: Any, serve: Any) -> None:
    client, server = await pair(netpool, serve)
    await client.send(1, b"ok")
    assert await server.recv(1) == b"ok"
    records = client._records
    assert records is not None
    real = records.ciphertext

    def flipped() -> bytes | bytearray:
        out = bytearray(real())
        if len(out) > 40:
            out[30] ^= 1  # inside the record body: the AEAD tag no longer verifies
        return out

    records.ciphertext = flipped  # type: ignore[method-assign]
    await client.send(2, b"x" * 5000)
    with pytest.raises((LinkClosed, LinkRefused)):
        await asyncio.wait_for(server.recv(2), 10)
    await client.close()


@pytest.mark.parametrize("size,max_payload", [(0, 16), (5, 16), (16, 16), (17, 16), (100, 7), (1 << 16, 1000)])
def test_frame_parts_equal_encoded_frames(size: int, max_payload: int) -> None:
    payload = os.urandom(size)
    parts = list(iter_frame_parts(9, payload, max_payload=max_payload))
    assert [h + bytes(b) for h, b in parts] == list(iter_fragments(9, payload, max_payload=max_payload))
    assert all(isinstance(b, memoryview) and (not len(b) or b.obj is payload) for _, b in parts)  # views, no copies


def test_decoder_holds_a_partial_frame_in_one_buffer() -> None:
    payload = os.urandom(3 * 2**20)
    (frame,) = iter_fragments(4, payload)
    dec = FrameDecoder()
    assert dec.feed(frame[:10]) == [] and dec.buffered == 10
    assert dec.feed(frame[10 : HEADER_SIZE + 5]) == []
    assert len(dec._buf) == len(frame)  # sized once the header is known, never regrown
    out = []
    for i in range(HEADER_SIZE + 5, len(frame), 65_537):
        out += dec.feed(frame[i : i + 65_537])
        assert len(dec._buf) in (0, len(frame))
    assert [(f.kind, f.tag, f.payload) for f in out] == [(FrameKind.DATA, 4, payload)]
    assert dec.buffered == 0
    dec.close()
