"""The server name (SNI) of a TLS ClientHello, read from the raw bytes without terminating TLS.

Contract: pure. Bytes in, a name (or "need more bytes") out; every malformed input is a
:class:`ClientHelloError` with a stable ``reason``. Only what routing needs is parsed
(RFC 8446 §4.1.2 and RFC 6066 §3): TLS records of type handshake, the handshake header,
the ClientHello's fixed fields (skipped), and among the extensions the ``server_name``
one. Key shares, cipher suites and the rest are left to the node, which terminates TLS.

The ClientHello may span several records (a post-quantum key share makes it large);
fragments are joined up to :data:`MAX_CLIENT_HELLO_BYTES`, and anything longer is refused
(``too_large``), as is a hello split into more than :data:`MAX_HELLO_RECORDS` records, so
a client cannot make the gateway buffer without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_HELLO_BYTES",
    "MAX_HELLO_RECORDS",
    "ClientHelloError",
    "Incomplete",
    "server_name",
]

MAX_CLIENT_HELLO_BYTES = 32 * 1024
"""The longest ClientHello message accepted (an X25519MLKEM768 hello is about 1.5 KiB)."""

MAX_HELLO_RECORDS = 64
"""The most records a ClientHello may be split into (32 KiB in fragments of at least 512 bytes, the smallest
``max_fragment_length``): with :data:`MAX_CLIENT_HELLO_BYTES` this bounds what is buffered per connection."""

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_CONTENT_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 0x01
_MAX_RECORD = 1 << 14  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14
_EXT_SERVER_NAME = 0x0000
_NAME_TYPE_HOST = 0x00
_HOST_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ClientHelloError(ValueError):
    """The bytes are not a ClientHello the gateway can route; ``reason`` is a stable label.

    Reasons: ``not_tls`` (not a TLS handshake record), ``not_client_hello``,
    ``malformed`` (lengths or fields inconsistent), ``too_large``, ``no_sni`` (a valid
    ClientHello without a server name), ``bad_sni`` (a server name that is not a host name).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Incomplete:
    """Not enough bytes yet: at least ``needed`` bytes in all are required to go on."""

    needed: int


def _handshake_bytes(data: bytes) -> bytes | Incomplete:
    """The ClientHello handshake message (header included), joined from as many records as it spans."""
    out = bytearray()
    pos = 0
    want: int | None = None
    records = 0
    while True:
        if records == MAX_HELLO_RECORDS:
            raise ClientHelloError(f"a ClientHello split into more than {MAX_HELLO_RECORDS} records", "too_large")
        if len(data) < pos + _RECORD_HEADER:
            return Incomplete(pos + _RECORD_HEADER)
        content, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if content != _CONTENT_HANDSHAKE or major != 3:
            what = "a TLS handshake record" if pos == 0 else "a handshake record continuing the ClientHello"
            raise ClientHelloError(f"the first bytes are not {what} (type {content:#04x}, version {major})",
                                   "not_tls" if pos == 0 else "malformed")
        if length == 0 or length > _MAX_RECORD:
            raise ClientHelloError(f"a TLS record of {length} bytes (allowed: 1 to {_MAX_RECORD})", "malformed")
        if len(data) < pos + _RECORD_HEADER + length:
            return Incomplete(pos + _RECORD_HEADER + length)
        out += data[pos + _RECORD_HEADER:pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        records += 1
        if want is None and len(out) >= _HANDSHAKE_HEADER:
            if out[0] != _HANDSHAKE_CLIENT_HELLO:
                raise ClientHelloError(f"handshake message type {out[0]} is not a ClientHello (1)", "not_client_hello")
            want = _HANDSHAKE_HEADER + int.from_bytes(out[1:4], "big")
            if want > MAX_CLIENT_HELLO_BYTES:
                raise ClientHelloError(f"a ClientHello of {want} bytes exceeds the {MAX_CLIENT_HELLO_BYTES}-byte limit",
                                       "too_large")
        if want is not None and len(out) >= want:
            return bytes(out[:want])


class _Reader:
    """Bounds-checked reads over one byte string; running out is ``malformed``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ClientHelloError(f"the ClientHello ends inside its {what}", "malformed")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def number(self, width: int, what: str) -> int:
        return int.from_bytes(self.take(width, what), "big")

    def vector(self, width: int, what: str) -> bytes:
        return self.take(self.number(width, f"{what} length"), what)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _host_name(raw: bytes) -> str:
    """A server name as a lower-case host name (RFC 6066: ASCII, no trailing dot), or ``bad_sni``."""
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise ClientHelloError("the server name is not ASCII", "bad_sni") from None
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ClientHelloError(f"the server name {name[:80]!r} is not a host name", "bad_sni")
    return name


def _sni_extension(body: bytes) -> str:
    names = _Reader(body)
    entries = _Reader(names.vector(2, "server name list"))
    if names.left:
        raise ClientHelloError("bytes after the server name list", "malformed")
    found: str | None = None
    while entries.left:
        kind = entries.number(1, "server name type")
        value = entries.vector(2, "server name")
        if kind == _NAME_TYPE_HOST:
            if found is not None:
                raise ClientHelloError("two host names in the server name extension", "malformed")
            found = _host_name(value)
    if found is None:
        raise ClientHelloError("the server name extension holds no host name", "no_sni")
    return found


def server_name(data: bytes) -> str | Incomplete:
    """The host name a client asks for in the ClientHello at the start of ``data``.

    Returns :class:`Incomplete` while the ClientHello is not complete (read more and call
    again with everything so far); raises :class:`ClientHelloError` for anything else
    than a complete, well-formed ClientHello with exactly one host name.
    """
    hello = _handshake_bytes(data)
    if isinstance(hello, Incomplete):
        return hello
    r = _Reader(hello[_HANDSHAKE_HEADER:])
    r.take(2, "legacy_version")
    r.take(32, "random")
    if len(r.vector(1, "legacy_session_id")) > 32:
        raise ClientHelloError("a legacy_session_id longer than 32 bytes", "malformed")
    suites = r.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise ClientHelloError(f"a cipher suite list of {len(suites)} bytes", "malformed")
    if not r.vector(1, "legacy_compression_methods"):
        raise ClientHelloError("an empty compression method list", "malformed")
    if not r.left:
        raise ClientHelloError("a ClientHello without extensions has no server name", "no_sni")
    extensions = _Reader(r.vector(2, "extensions"))
    if r.left:
        raise ClientHelloError("bytes after the extensions", "malformed")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.number(2, "extension type")
        body = extensions.vector(2, "extension")
        if kind in seen:
            raise ClientHelloError(f"extension {kind} appears twice", "malformed")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            name = _sni_extension(body)
    if name is None:
        raise ClientHelloError("the ClientHello has no server_name extension", "no_sni")
    return name
