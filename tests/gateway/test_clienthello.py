"""The gateway's ClientHello parser: real hellos (stdlib TLS and the PQ client), no SNI, truncated,
split across records, oversized, garbage, and malformed inner lengths."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from OpenSSL import SSL

from pqmpc_node.crypto.pki import PoolCA
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.gateway.clienthello import (
    MAX_CLIENT_HELLO_BYTES,
    MAX_HELLO_RECORDS,
    ClientHelloError,
    Incomplete,
    server_name,
)


def stdlib_hello(sni: str | None) -> bytes:
    """The first flight of a stdlib TLS client (OpenSSL 3), with or without SNI."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def pq_hello(sni: str) -> bytes:
    """The first flight of the pqmpc client (pyOpenSSL, X25519MLKEM768 key share: a large hello)."""
    import datetime as dt
    import os

    from pqmpc_node.net.tls import client_context

    suite = get_suite(SuiteName.PQ_DEFAULT)
    ca = PoolCA.create(suite, name="t", now=dt.datetime.now(dt.timezone.utc), lifetime=dt.timedelta(days=1),
                       rng=os.urandom)
    cert: x509.Certificate = ca.certificate
    conn = SSL.Connection(client_context(cert, suite), None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(sni.encode())
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(1 << 16)


def records(hello: bytes, size: int) -> bytes:
    """The same handshake bytes re-framed into records of at most ``size`` bytes."""
    assert hello[0] == 0x16
    body = b""
    pos = 0
    while pos < len(hello):
        n = int.from_bytes(hello[pos + 3:pos + 5], "big")
        body += hello[pos + 5:pos + 5 + n]
        pos += 5 + n
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i:i + size]
        out += bytes([0x16, 3, 1]) + len(chunk).to_bytes(2, "big") + chunk
    return out


def test_stdlib_hello_names_the_server() -> None:
    assert server_name(stdlib_hello("banks-bank-a-eu-0.banks.example.com")) == "banks-bank-a-eu-0.banks.example.com"


def test_pq_client_hello_names_the_server() -> None:
    hello = pq_hello("Node-1.Pool.Example")
    assert len(hello) > 1200  # the ML-KEM key share is in there
    assert server_name(hello) == "node-1.pool.example"  # names compare case-insensitively


def test_hello_split_over_many_records_is_joined() -> None:
    hello = pq_hello("n.example")
    split = records(hello, 100)
    assert split.count(bytes([0x16, 3, 1])) >= 10
    assert server_name(split) == "n.example"


def test_hello_in_too_many_records_is_refused() -> None:
    """One-byte records would make the gateway buffer five times the hello: the record count is bounded."""
    hello = pq_hello("n.example")
    assert server_name(records(hello, len(hello) // MAX_HELLO_RECORDS + 1)) == "n.example"
    with pytest.raises(ClientHelloError) as exc:
        server_name(records(hello, 1))
    assert exc.value.reason == "too_large"


def test_every_prefix_asks_for_more_and_never_guesses() -> None:
    hello = stdlib_hello("n.example")
    for cut in range(len(hello)):
        result = server_name(hello[:cut])
        assert isinstance(result, Incomplete), cut
        assert result.needed > cut


def test_no_sni() -> None:
    with pytest.raises(ClientHelloError) as exc:
        server_name(stdlib_hello(None))
    assert exc.value.reason == "no_sni"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b"SSH-2.0-OpenSSH_9.6\r\n"])
def test_garbage_is_not_tls(data: bytes) -> None:
    with pytest.raises(ClientHelloError) as exc:
        server_name(data)
    assert exc.value.reason == "not_tls"


def test_other_handshake_message() -> None:
    server_hello = bytes([0x16, 3, 3, 0, 4, 2, 0, 0, 0])
    with pytest.raises(ClientHelloError) as exc:
        server_name(server_hello)
    assert exc.value.reason == "not_client_hello"


def test_oversized_hello_is_refused_from_its_header() -> None:
    length = MAX_CLIENT_HELLO_BYTES  # with the 4-byte header: over the limit
    head = bytes([1]) + length.to_bytes(3, "big")
    data = bytes([0x16, 3, 1]) + (len(head)).to_bytes(2, "big") + head
    with pytest.raises(ClientHelloError) as exc:
        server_name(data)
    assert exc.value.reason == "too_large"


def test_record_longer_than_tls_allows() -> None:
    with pytest.raises(ClientHelloError) as exc:
        server_name(bytes([0x16, 3, 1, 0x40, 0x01]) + b"\x01" * 10)
    assert exc.value.reason == "malformed"


def _with_extensions(extensions: bytes) -> bytes:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    msg = bytes([1]) + len(body).to_bytes(3, "big") + body
    return bytes([0x16, 3, 1]) + len(msg).to_bytes(2, "big") + msg


def _sni_ext(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([kind]) + len(v).to_bytes(2, "big") + v for kind, v in entries)
    body = len(names).to_bytes(2, "big") + names
    return b"\x00\x00" + len(body).to_bytes(2, "big") + body


def test_hand_built_hello() -> None:
    assert server_name(_with_extensions(_sni_ext((0, b"a.b")))) == "a.b"


@pytest.mark.parametrize(("extensions", "reason"), [
    (_sni_ext((0, b"a.b"), (0, b"c.d")), "malformed"),          # two host names
    (_sni_ext((0, b"a.b")) + _sni_ext((0, b"a.b")), "malformed"),  # the extension twice
    (_sni_ext((0, b"bad_name!")), "bad_sni"),
    (_sni_ext((0, "bücher.de".encode())), "bad_sni"),
    (_sni_ext((0, b"")), "bad_sni"),
    (_sni_ext((1, b"a.b")), "no_sni"),                           # only a non-host name type
    (b"\x00\x00\x00\x05\x00\x09\x00", "malformed"),              # server name list longer than its extension
    (b"\x00\x0a\x00\x02\x00", "malformed"),                      # an extension longer than the block
])
def test_malformed_or_unusable_server_names(extensions: bytes, reason: str) -> None:
    with pytest.raises(ClientHelloError) as exc:
        server_name(_with_extensions(extensions))
    assert exc.value.reason == reason


def test_truncated_inside_the_message_is_malformed_not_incomplete() -> None:
    good = _with_extensions(_sni_ext((0, b"a.b")))
    # Claim a handshake message shorter than its fields: every field read must stay inside it.
    msg = bytearray(good[5:])
    msg[1:4] = (40).to_bytes(3, "big")
    cut = bytes(msg[:44])
    with pytest.raises(ClientHelloError) as exc:
        server_name(bytes([0x16, 3, 1]) + len(cut).to_bytes(2, "big") + cut)
    assert exc.value.reason == "malformed"
