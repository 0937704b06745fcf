"""HTTP over post-quantum TLS: a TLS front for the node's aiohttp API, and httpx transports.

Why. The node's HTTP API must run over TLS 1.3 with the hybrid group of the pool suite
(``X25519MLKEM768`` or ``SecP384r1MLKEM1024``) and ML-DSA certificates. The stdlib
:mod:`ssl` module here links OpenSSL 3.0, which has neither ML-KEM nor ML-DSA, so neither
aiohttp's nor httpx's own TLS can be used. pyOpenSSL bundles OpenSSL 4 (through
cryptography) and can; this module runs TLS in pyOpenSSL memory BIOs, like the peer
links (:mod:`pqmpc_node.net.link`), with the contexts of :mod:`pqmpc_node.net.tls`.

Server side: :class:`TlsFront` is an asyncio TCP server that terminates TLS in process
and pipes each connection's plaintext, both ways, to a private Unix-domain socket where
the aiohttp app listens (``web.UnixSite``). aiohttp sees ordinary HTTP/1.1 (keep-alive,
large bodies, half-close all travel through the byte pipe). The served context is
chosen per ClientHello by ``context_for(server_name)``; ``None`` refuses the connection
(``unknown_server_name``), as before the node is certified. No client certificate is
asked for.

Client side: :func:`pq_transport` and :func:`async_pq_transport` give httpx transports
whose httpcore network backends open plain TCP and, at httpcore's ``start_tls``, run the
pyOpenSSL handshake with :func:`~pqmpc_node.net.tls.client_context` (the stdlib
``SSLContext`` httpcore passes is ignored). The server's certificate must chain to the
given CA; names are not checked by default: pass ``verify_peer(certificate, host)`` to
check the certificate against the host (raise to refuse). :func:`peer_certificate` gives
the server certificate a response came over. These transports speak ``https://`` only.

There is no classical fallback anywhere: both sides offer only the suite's hybrid group
and TLS 1.3, and check after the handshake that it is what was negotiated (``downgrade``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import select
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpcore
import httpx
from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi  # pyOpenSSL's cffi binding: our own servername callback
from OpenSSL._util import lib as _lib

from pqmpc_node.crypto.suites import Suite, TlsGroup
from pqmpc_node.net.records import READ_CHUNK, WRITE_CHUNK, RecordIO, handshake_reason
from pqmpc_node.net.tls import VerifyState, base_context, client_context, verify_failure_reason

__all__ = [
    "ContextFor",
    "PeerVerifier",
    "PqAsyncNetworkBackend",
    "PqAsyncTransport",
    "PqNetworkBackend",
    "PqTransport",
    "TlsFront",
    "async_pq_transport",
    "peer_certificate",
    "pq_transport",
]

_log = logging.getLogger(__name__)

ContextFor = Callable[[str | None], SSL.Context | None]
"""``context_for(server_name)``: the context to serve a ClientHello with, or None to refuse."""
PeerVerifier = Callable[[x509.Certificate, str], None]
"""``verify_peer(certificate, host)``: raise to refuse the server (after the chain check)."""

_SSL_AD_UNRECOGNIZED_NAME = 112  # TLS alert unrecognized_name (RFC 6066); pyOpenSSL's binding does not name it
_ALL_SIGALGS = ("mldsa44", "mldsa65", "mldsa87")
_STREAM_LIMIT = 1 << 20
_CLOSE_LINGER_S = 2.0


class _Refused(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _FrontState(VerifyState):
    """Per-connection state of the front: verification errors and the SNI decision."""

    def __init__(self) -> None:
        super().__init__()
        self.server_name: str | None = None
        self.refused_name = False
        self.served: SSL.Context | None = None


def _expected_group(ctx: SSL.Context) -> str | None:
    suite = ctx.get_app_data()
    return suite.tls_group.value if isinstance(suite, Suite) else None


def _downgraded(conn: SSL.Connection, expected_group: str | None) -> str | None:
    """Why the negotiated session is not what we require (None when it is)."""
    proto, group = conn.get_protocol_version_name(), conn.get_group_name()
    allowed = {expected_group} if expected_group is not None else {g.value for g in TlsGroup}
    if proto != "TLSv1.3" or group not in allowed:
        return f"negotiated {proto} / {group}"
    return None


# -- server side -------------------------------------------------------------------------------


class TlsFront:
    """Terminates PQ TLS on a TCP port and pipes each connection's plaintext to a Unix socket.

    ``context_for(server_name)`` is called for every ClientHello (``server_name`` is the SNI,
    None when the client sent none) and returns the context to serve (build it with
    :func:`~pqmpc_node.net.tls.server_context`), or None to refuse. Refusals call
    ``on_refusal(reason)`` and are logged at INFO; they never stop the server.

    Resource bounds: at most ``max_connections`` connections at once (beyond that a new
    one is closed at once, reason ``too_many_connections``); a client that sends nothing
    for ``idle_timeout_s`` after the handshake is disconnected; the handshake itself must
    finish within ``handshake_timeout_s``.
    """

    def __init__(
        self,
        context_for: ContextFor,
        upstream_path: str,
        *,
        on_refusal: Callable[[str], None] | None = None,
        handshake_timeout_s: float = 10.0,
        max_connections: int = 256,
        idle_timeout_s: float = 300.0,
    ) -> None:
        self._context_for = context_for
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._upstream_path = upstream_path
        self._on_refusal = on_refusal
        self._handshake_timeout_s = handshake_timeout_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # The context a connection starts on: protocol settings only, no certificate. The
        # servername callback switches it to the one context_for returns. The group list
        # stays the one of this context (OpenSSL does not take it from the switched one),
        # so it offers every PQ hybrid group; the served suite's group is checked after
        # the handshake.
        self._default = base_context([g.value for g in TlsGroup], _ALL_SIGALGS)
        self._servername_cb = _ffi.callback(
            "int (*)(SSL *, int *, void *)", self._on_servername, error=int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)
        )
        _lib.SSL_CTX_set_tlsext_servername_callback(self._default._context, self._servername_cb)

    # -- lifecycle

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free port, see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("TlsFront already started")
        self._server = await asyncio.start_server(self._on_client, host, port, limit=_STREAM_LIMIT)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("TlsFront not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    # -- ClientHello

    def _on_servername(self, ssl_ptr: Any, alert: Any, arg: Any) -> int:
        conn = SSL.Connection._reverse_mapping.get(ssl_ptr)
        if conn is None:
            return int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)
        state = conn.get_app_data()
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace") if raw is not None else None
        try:
            ctx = self._context_for(name)
        except Exception:
            _log.exception("context_for(%r) failed; refusing the connection", name)
            ctx = None
        if isinstance(state, _FrontState):
            state.server_name = name
        if ctx is None:
            if isinstance(state, _FrontState):
                state.refused_name = True
            alert[0] = _SSL_AD_UNRECOGNIZED_NAME
            return int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)
        conn.set_context(ctx)
        if isinstance(state, _FrontState):
            state.served = ctx
        return int(_lib.SSL_TLSEXT_ERR_OK)

    # -- connections

    def _refuse(self, peer: str, reason: str, detail: str) -> None:
        _log.info("HTTPS front refused a connection from %s: %s (%s)", peer, reason, detail)
        if self._on_refusal is not None:
            try:
                self._on_refusal(reason)
            except Exception:
                _log.exception("on_refusal(%r) failed", reason)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "?"
        try:
            if len(self._tasks) > self._max_connections:
                self._refuse(peer, "too_many_connections", f"{self._max_connections} connections are open")
                return
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one connection take the server down
            _log.exception("HTTPS front connection from %s failed", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        conn = SSL.Connection(self._default, None)
        state = _FrontState()
        conn.set_app_data(state)
        conn.set_accept_state()
        records = RecordIO(conn)
        try:
            await asyncio.wait_for(self._handshake(conn, records, state, reader, writer), self._handshake_timeout_s)
        except TimeoutError:
            self._refuse(peer, "handshake_timeout", f"no handshake within {self._handshake_timeout_s:g}s")
            return
        except _Refused as exc:
            self._refuse(peer, exc.reason, str(exc))
            return
        except (ConnectionError, OSError) as exc:
            self._refuse(peer, "peer_aborted", str(exc))
            return
        served = state.served if state.served is not None else conn.get_context()
        why = _downgraded(conn, _expected_group(served))
        if why is not None:
            self._refuse(peer, "downgrade", why)
            _send_close_notify(conn, records, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._upstream_path, limit=_STREAM_LIMIT)
        except OSError as exc:
            _log.warning("HTTPS front cannot reach its upstream %s: %s", self._upstream_path, exc)
            _send_close_notify(conn, records, writer)
            return
        try:
            await self._pipe(conn, records, reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def _handshake(
        self,
        conn: SSL.Connection,
        records: RecordIO,
        state: _FrontState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                _flush(records, writer)
                await writer.drain()
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise _Refused("peer closed the connection during the TLS handshake", "peer_aborted") from None
                conn.bio_write(data)
            except SSL.Error as exc:
                _flush(records, writer)  # our alert, for the client
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
                if state.refused_name:
                    raise _Refused(f"no context for server name {state.server_name!r}", "unknown_server_name") from None
                reason = verify_failure_reason(state) or handshake_reason(exc)
                raise _Refused(f"TLS handshake failed: {exc}", reason) from None
        _flush(records, writer)
        await writer.drain()

    async def _pipe(
        self,
        conn: SSL.Connection,
        records: RecordIO,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        inbound = asyncio.create_task(self._client_to_upstream(conn, records, reader, writer, up_writer,
                                                               self._idle_timeout_s))
        outbound = asyncio.create_task(self._upstream_to_client(conn, records, up_reader, writer))
        try:
            done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
            failed = any(t.exception() is not None for t in done)
            if failed:
                return
            if outbound in done:
                # The upstream closed (close_notify and FIN are sent): keep reading what the
                # client still sends until it closes too, so the kernel sends no reset.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(inbound), _CLOSE_LINGER_S)
            else:
                # The client half-closed: the upstream may still answer what it received.
                await asyncio.wait({outbound})
        finally:
            for t in (inbound, outbound):
                t.cancel()
            for t in (inbound, outbound):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for t in (inbound, outbound):
                if t.done() and not t.cancelled() and t.exception() is not None:
                    _log.info("HTTPS front connection ended: %s", t.exception())

    @staticmethod
    async def _client_to_upstream(
        conn: SSL.Connection,
        records: RecordIO,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
        idle_timeout_s: float,
    ) -> None:
        while True:
            plain, closed = records.decrypt()
            _flush(records, writer)  # post-handshake replies OpenSSL may have produced
            if plain:
                up_writer.write(plain)
                await up_writer.drain()
                continue
            if closed:
                break  # close_notify
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), idle_timeout_s)
            except TimeoutError:
                break  # an idle client: end it like a close
            if not data:
                break  # TCP FIN without close_notify: pass the end on all the same
            conn.bio_write(data)
        if up_writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                up_writer.write_eof()

    @staticmethod
    async def _upstream_to_client(
        conn: SSL.Connection, records: RecordIO, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await up_reader.read(WRITE_CHUNK)
            if not data:
                break
            records.encrypt(memoryview(data))
            _flush(records, writer)
            await writer.drain()
        _send_close_notify(conn, records, writer)
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()


def _flush(records: RecordIO, writer: asyncio.StreamWriter) -> None:
    out = records.ciphertext()
    if out:
        writer.write(out)


def _send_close_notify(conn: SSL.Connection, records: RecordIO, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(SSL.Error, ConnectionError, OSError, RuntimeError):
        conn.shutdown()
        _flush(records, writer)


# -- client side: the TLS handshake, shared by both backends --------------------------------------


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _client_connection(ctx: SSL.Context, server_hostname: str | None) -> tuple[SSL.Connection, RecordIO, VerifyState]:
    conn = SSL.Connection(ctx, None)
    state = VerifyState()
    conn.set_app_data(state)
    conn.set_connect_state()
    if server_hostname and not _is_ip_literal(server_hostname):
        name = server_hostname.rstrip(".")
        conn.set_tlsext_host_name(name.encode("ascii") if name.isascii() else name.encode("idna"))
    return conn, RecordIO(conn), state


def _handshake_error(host: str, state: VerifyState, exc: SSL.Error) -> httpcore.ConnectError:
    verify = verify_failure_reason(state)
    if verify is not None:
        return httpcore.ConnectError(f"PQ TLS to {host}: refused the server certificate ({verify}): {exc}")
    return httpcore.ConnectError(f"PQ TLS handshake with {host} failed ({handshake_reason(exc)}): {exc}")


def _finish_client(
    conn: SSL.Connection, suite: Suite, host: str, verify_peer: PeerVerifier | None
) -> x509.Certificate:
    """After the handshake: TLS 1.3 and the suite group, a server certificate, the caller's check."""
    why = _downgraded(conn, suite.tls_group.value)
    if why is not None:
        raise httpcore.ConnectError(f"PQ TLS to {host} refused (downgrade): {why}")
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is None:
        raise httpcore.ConnectError(f"PQ TLS to {host}: the server presented no certificate")
    if verify_peer is not None:
        try:
            verify_peer(cert, host)
        except Exception as exc:
            raise httpcore.ConnectError(f"PQ TLS to {host}: server certificate refused by verify_peer: {exc}") from exc
    return cert


def _tls_info(conn: SSL.Connection, cert: x509.Certificate, info: str) -> Any:
    if info == "peer_certificate":
        return cert
    if info == "tls_version":
        return conn.get_protocol_version_name()
    if info == "tls_group":
        return conn.get_group_name()
    if info == "cipher":
        return conn.get_cipher_name()
    return None


def _socket_readable(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class _Plaintext:
    """Decrypted bytes not yet handed out (reads return at most ``max_bytes``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0

    def __bool__(self) -> bool:
        return self._off < len(self._buf)

    def put(self, data: bytearray) -> None:
        if self:
            self._buf = self._buf[self._off :] + data
        else:
            self._buf = data
        self._off = 0

    def take(self, max_bytes: int) -> bytes:
        end = min(len(self._buf), self._off + max(max_bytes, 1))
        out = bytes(memoryview(self._buf)[self._off : end])
        self._off = end
        return out


# -- client side: sync ------------------------------------------------------------------------------


def _map_sync(exc: OSError, timeout_exc: type[Exception], other: type[Exception]) -> Exception:
    return timeout_exc(str(exc) or "timed out") if isinstance(exc, socket.timeout) else other(str(exc))


class _TcpInfo:
    """``get_extra_info`` of both plain-TCP streams (before ``start_tls``)."""

    _sock: socket.socket

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _socket_readable(self._sock)
        return None


class _TlsState:
    """State and ``get_extra_info`` of both PQ-TLS streams (sync and async share them)."""

    def __init__(self, sock: socket.socket, conn: SSL.Connection, records: RecordIO, cert: x509.Certificate) -> None:
        self._sock, self._conn, self._records, self._cert = sock, conn, records, cert
        self._plain = _Plaintext()
        self._eof = False

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return bool(self._plain) or self._eof or _socket_readable(self._sock)
        return _tls_info(self._conn, self._cert, info)


class _SyncTcpStream(_TcpInfo, httpcore.NetworkStream):
    """Plain TCP until :meth:`start_tls`."""

    def __init__(self, sock: socket.socket, backend: PqNetworkBackend) -> None:
        self._sock, self._backend = sock, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except OSError as exc:
            raise _map_sync(exc, httpcore.ReadTimeout, httpcore.ReadError) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except OSError as exc:
            raise _map_sync(exc, httpcore.WriteTimeout, httpcore.WriteError) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        """The PQ handshake with the backend's pyOpenSSL context (``ssl_context`` is ignored)."""
        host = server_hostname or "?"
        conn, records, state = _client_connection(self._backend.context, server_hostname)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    self._send(records, deadline)
                    self._sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
                    data = self._sock.recv(READ_CHUNK)
                    if not data:
                        raise httpcore.ConnectError(
                            f"PQ TLS to {host}: the server closed the connection during the handshake"
                        ) from None
                    conn.bio_write(data)
                except SSL.Error as exc:
                    with contextlib.suppress(OSError):
                        self._send(records, deadline)
                    raise _handshake_error(host, state, exc) from None
            self._send(records, deadline)
            cert = _finish_client(conn, self._backend.suite, host, self._backend.verify_peer)
        except OSError as exc:
            self._sock.close()
            raise _map_sync(exc, httpcore.ConnectTimeout, httpcore.ConnectError) from exc
        except BaseException:
            self._sock.close()
            raise
        return _SyncTlsStream(self._sock, conn, records, cert)

    def _send(self, records: RecordIO, deadline: float | None) -> None:
        out = records.ciphertext()
        if out:
            self._sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
            self._sock.sendall(out)


class _SyncTlsStream(_TlsState, httpcore.NetworkStream):
    """Blocking PQ-TLS stream: records on the socket, plaintext buffered for httpcore."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            while not self._plain and not self._eof:
                plain, closed = self._records.decrypt()
                self._flush(timeout)
                if plain:
                    self._plain.put(plain)
                    break
                if closed:
                    self._eof = True
                    break
                self._sock.settimeout(timeout)
                data = self._sock.recv(READ_CHUNK)
                if not data:
                    self._eof = True
                    break
                self._conn.bio_write(data)
        except OSError as exc:
            raise _map_sync(exc, httpcore.ReadTimeout, httpcore.ReadError) from exc
        except SSL.Error as exc:
            raise httpcore.ReadError(f"PQ TLS read failed: {exc}") from exc
        return self._plain.take(max_bytes) if self._plain else b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            for i in range(0, len(view), WRITE_CHUNK):
                self._records.encrypt(view[i : i + WRITE_CHUNK])
                self._flush(timeout)
        except OSError as exc:
            raise _map_sync(exc, httpcore.WriteTimeout, httpcore.WriteError) from exc
        except SSL.Error as exc:
            raise httpcore.WriteError(f"PQ TLS write failed: {exc}") from exc

    def _flush(self, timeout: float | None) -> None:
        out = self._records.ciphertext()
        if out:
            self._sock.settimeout(timeout)
            self._sock.sendall(out)

    def close(self) -> None:
        with contextlib.suppress(SSL.Error, OSError):
            self._conn.shutdown()
            out = self._records.ciphertext()
            if out:
                self._sock.setblocking(False)
                self._sock.send(out)  # best effort: never block a close
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS in TLS is not supported by the PQ transport")


class _ClientTls:
    """What both backends hold: the client context (pool CA, suite group) and the peer check."""

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        suite: Suite,
        *,
        verify_peer: PeerVerifier | None = None,
        offer_groups: Sequence[str] | None = None,
        connect_to: tuple[str, int] | None = None,
    ) -> None:
        self.suite = suite
        self.verify_peer = verify_peer
        self.context = client_context(ca_certificate, suite, offer_groups=offer_groups)
        self.connect_to = connect_to
        """Open every TCP connection to this address instead of the URL's host (an SNI gateway; the
        URL's host is still the TLS server name and what ``verify_peer`` checks): curl's ``--connect-to``."""


class PqNetworkBackend(_ClientTls, httpcore.NetworkBackend):
    """httpcore's blocking backend with PQ TLS at ``start_tls`` (see the module docstring)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        source = (local_address, 0) if local_address else None
        try:
            sock = socket.create_connection(self.connect_to or (host, port), timeout, source_address=source)
        except OSError as exc:
            raise _map_sync(exc, httpcore.ConnectTimeout, httpcore.ConnectError) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return _SyncTcpStream(sock, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("the PQ transport connects over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# -- client side: async -----------------------------------------------------------------------------
#
# The event loop's socket calls (sock_recv, sock_sendall) on a non-blocking socket: nothing
# reads ahead of httpcore, so "is the socket readable" (httpcore's test for a server that
# closed an idle keep-alive connection) sees exactly what the server sent.


async def _with_timeout(aw: Any, timeout: float | None, timeout_exc: type[Exception], other: type[Exception]) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError as exc:
        raise timeout_exc("timed out") from exc
    except OSError as exc:
        raise other(str(exc)) from exc


class _AsyncTcpStream(_TcpInfo, httpcore.AsyncNetworkStream):
    """Plain TCP until :meth:`start_tls`."""

    def __init__(self, sock: socket.socket, backend: PqAsyncNetworkBackend) -> None:
        self._sock, self._backend = sock, backend

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        data: bytes = await _with_timeout(loop.sock_recv(self._sock, max_bytes), timeout,
                                          httpcore.ReadTimeout, httpcore.ReadError)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        await _with_timeout(loop.sock_sendall(self._sock, buffer), timeout, httpcore.WriteTimeout, httpcore.WriteError)

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        """The PQ handshake with the backend's pyOpenSSL context (``ssl_context`` is ignored)."""
        host = server_hostname or "?"
        conn, records, state = _client_connection(self._backend.context, server_hostname)
        try:
            await _with_timeout(self._handshake(conn, records, state, host), timeout,
                                httpcore.ConnectTimeout, httpcore.ConnectError)
            cert = _finish_client(conn, self._backend.suite, host, self._backend.verify_peer)
        except BaseException:
            self._sock.close()
            raise
        return _AsyncTlsStream(self._sock, conn, records, cert)

    async def _handshake(self, conn: SSL.Connection, records: RecordIO, state: VerifyState, host: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                out = records.ciphertext()
                if out:
                    await loop.sock_sendall(self._sock, out)
                data = await loop.sock_recv(self._sock, READ_CHUNK)
                if not data:
                    raise httpcore.ConnectError(
                        f"PQ TLS to {host}: the server closed the connection during the handshake"
                    ) from None
                conn.bio_write(data)
            except SSL.Error as exc:
                out = records.ciphertext()
                if out:
                    with contextlib.suppress(OSError):
                        await loop.sock_sendall(self._sock, out)
                raise _handshake_error(host, state, exc) from None
        out = records.ciphertext()
        if out:
            await loop.sock_sendall(self._sock, out)


class _AsyncTlsStream(_TlsState, httpcore.AsyncNetworkStream):
    """asyncio PQ-TLS stream: records on the socket, plaintext buffered for httpcore."""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._plain and not self._eof:
            try:
                await _with_timeout(self._fill(), timeout, httpcore.ReadTimeout, httpcore.ReadError)
            except SSL.Error as exc:
                raise httpcore.ReadError(f"PQ TLS read failed: {exc}") from exc
        return self._plain.take(max_bytes) if self._plain else b""

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            plain, closed = self._records.decrypt()
            out = self._records.ciphertext()
            if out:
                await loop.sock_sendall(self._sock, out)
            if plain:
                self._plain.put(plain)
                return
            if closed:
                self._eof = True
                return
            data = await loop.sock_recv(self._sock, READ_CHUNK)
            if not data:
                self._eof = True
                return
            self._conn.bio_write(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            await _with_timeout(self._write(buffer), timeout, httpcore.WriteTimeout, httpcore.WriteError)
        except SSL.Error as exc:
            raise httpcore.WriteError(f"PQ TLS write failed: {exc}") from exc

    async def _write(self, buffer: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(buffer)
        for i in range(0, len(view), WRITE_CHUNK):
            self._records.encrypt(view[i : i + WRITE_CHUNK])
            out = self._records.ciphertext()
            if out:
                await loop.sock_sendall(self._sock, out)

    async def aclose(self) -> None:
        with contextlib.suppress(SSL.Error, OSError):
            self._conn.shutdown()
            out = self._records.ciphertext()
            if out:
                self._sock.send(out)  # non-blocking, best effort: never block a close
        self._sock.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS in TLS is not supported by the PQ transport")


class PqAsyncNetworkBackend(_ClientTls, httpcore.AsyncNetworkBackend):
    """httpcore's asyncio backend with PQ TLS at ``start_tls`` (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        host, port = self.connect_to or (host, port)
        sock: socket.socket = await _with_timeout(
            self._connect(host, port, local_address, socket_options), timeout,
            httpcore.ConnectTimeout, httpcore.ConnectError,
        )
        return _AsyncTcpStream(sock, self)

    @staticmethod
    async def _connect(
        host: str, port: int, local_address: str | None, socket_options: Iterable[Any] | None
    ) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await loop.sock_connect(sock, addr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the PQ transport connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# -- httpx transports -------------------------------------------------------------------------------

_EXC_MAP: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
)


@contextlib.contextmanager
def _map_httpcore_exceptions() -> Iterator[None]:
    """httpcore's exceptions as httpx's, the most specific match (as httpx's own transport does)."""
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.HTTPError] | None = None
        for source, target in _EXC_MAP:
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


_POOL_OWNED = frozenset({"ssl_context", "network_backend", "http1", "http2", "uds", "proxy"})


def _pool_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    clash = _POOL_OWNED & kwargs.keys()
    if clash:
        raise TypeError(f"the PQ transport sets {', '.join(sorted(clash))} itself")
    # httpcore builds (and mutates: ALPN) a stdlib context per connection when given none;
    # ours never reaches a handshake, so one bare context avoids loading a CA bundle per connection.
    return {"ssl_context": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "http1": True, "http2": False, **kwargs}


def _core_request(request: httpx.Request, content: Any) -> httpcore.Request:
    if request.url.scheme != "https":
        raise httpx.UnsupportedProtocol(f"the PQ transport speaks https:// only, not {request.url.scheme}://")
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port, target=request.url.raw_path
        ),
        headers=request.headers.raw,
        content=content,
        extensions=request.extensions,
    )


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _map_httpcore_exceptions():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _AsyncResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_httpcore_exceptions():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class PqTransport(httpx.BaseTransport):
    """An httpx transport over :class:`PqNetworkBackend` (HTTP/1.1, ``https://`` only)."""

    def __init__(self, backend: PqNetworkBackend, **pool_kwargs: Any) -> None:
        self._pool = httpcore.ConnectionPool(network_backend=backend, **_pool_kwargs(pool_kwargs))

    def __enter__(self) -> PqTransport:
        self._pool.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        with _map_httpcore_exceptions():
            self._pool.__exit__(exc_type, exc_value, traceback)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = _core_request(request, request.stream)
        with _map_httpcore_exceptions():
            resp = self._pool.handle_request(core)
        assert isinstance(resp.stream, Iterable)
        return httpx.Response(
            status_code=resp.status, headers=resp.headers, stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class PqAsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport over :class:`PqAsyncNetworkBackend` (HTTP/1.1, ``https://`` only)."""

    def __init__(self, backend: PqAsyncNetworkBackend, **pool_kwargs: Any) -> None:
        self._pool = httpcore.AsyncConnectionPool(network_backend=backend, **_pool_kwargs(pool_kwargs))

    async def __aenter__(self) -> PqAsyncTransport:
        await self._pool.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        with _map_httpcore_exceptions():
            await self._pool.__aexit__(exc_type, exc_value, traceback)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = _core_request(request, request.stream)
        with _map_httpcore_exceptions():
            resp = await self._pool.handle_async_request(core)
        assert isinstance(resp.stream, AsyncIterable)
        return httpx.Response(
            status_code=resp.status, headers=resp.headers, stream=_AsyncResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def pq_transport(
    ca_certificate: x509.Certificate,
    suite: Suite,
    *,
    verify_peer: PeerVerifier | None = None,
    offer_groups: Sequence[str] | None = None,
    connect_to: tuple[str, int] | None = None,
    **pool_kwargs: Any,
) -> httpx.BaseTransport:
    """A blocking httpx transport speaking HTTP/1.1 over PQ TLS to servers of ``ca_certificate``.

    ``pool_kwargs`` go to :class:`httpcore.ConnectionPool` (``max_connections``,
    ``keepalive_expiry``, ``retries``, ...). ``offer_groups`` is for tests only.
    ``connect_to=(host, port)``: every connection goes there (an SNI gateway), the URL's
    host still being the TLS server name.
    """
    backend = PqNetworkBackend(ca_certificate, suite, verify_peer=verify_peer, offer_groups=offer_groups,
                               connect_to=connect_to)
    return PqTransport(backend, **pool_kwargs)


def async_pq_transport(
    ca_certificate: x509.Certificate,
    suite: Suite,
    *,
    verify_peer: PeerVerifier | None = None,
    offer_groups: Sequence[str] | None = None,
    connect_to: tuple[str, int] | None = None,
    **pool_kwargs: Any,
) -> httpx.AsyncBaseTransport:
    """The asyncio counterpart of :func:`pq_transport`."""
    backend = PqAsyncNetworkBackend(ca_certificate, suite, verify_peer=verify_peer, offer_groups=offer_groups,
                                    connect_to=connect_to)
    return PqAsyncTransport(backend, **pool_kwargs)


def peer_certificate(response: httpx.Response) -> x509.Certificate | None:
    """The server certificate ``response`` came over (None when not over this module's TLS)."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    cert = stream.get_extra_info("peer_certificate")
    return cert if isinstance(cert, x509.Certificate) else None
