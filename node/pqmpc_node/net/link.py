"""PeerLink: an asyncio PQ mutual-TLS link carrying framed MPC messages by round tag.

TLS runs in pyOpenSSL memory BIOs over asyncio streams (the event loop owns the
socket). Messages are buffered per round tag, MPyC-style: early data waits in a queue,
late data resolves a waiting future.

Re-handshake. OpenSSL 4 forbids renegotiation in TLS 1.3 and pyOpenSSL exposes no
``SSL_key_update``; a KeyUpdate would also reuse the old (EC)DHE/ML-KEM secret. So a
link re-handshakes with a *fresh* TLS 1.3 session (new X25519MLKEM768 exchange, both
certificates checked again) over the same TCP stream:

1. The dialing side (the only one that initiates) sends a REKEY frame and sends
   nothing else on the old session.
2. The accepting side, reading REKEY, answers REKEY_ACK on the old session, then
   waits for a ClientHello.
3. The dialer, reading REKEY_ACK, starts the new handshake as TLS client; both sides
   drop the old session and verify the peer again.

Rekeys trigger after ``RekeyPolicy.interval_s`` seconds or ``max_bytes`` bytes.
Backpressure: ``send`` awaits the socket's drain; the reader stops reading when
``max_buffered`` bytes wait unconsumed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar

from OpenSSL import SSL

from pqmpc_node.crypto.pki import CertificateError, InclusionChecker, NodeId, VerifiedNode
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.framing import DEFAULT_MAX_PAYLOAD, FrameDecoder, FrameError, FrameKind, encode_frame
from pqmpc_node.net.tls import TlsIdentity, VerifyState, check_peer, make_context, verify_failure_reason

__all__ = ["LinkClosed", "LinkConfig", "LinkRefused", "PeerLink", "RekeyPolicy", "TransportAttestation"]

_READ_CHUNK = 1 << 18


class LinkRefused(Exception):
    """The link was refused or torn down; ``reason`` is the metric label."""

    reason: ClassVar[str] = "refused"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]


class LinkClosed(Exception):
    """The link is closed; no more messages will arrive."""


@dataclass(frozen=True)
class RekeyPolicy:
    """When the dialing side re-handshakes."""

    interval_s: float = 3600.0
    max_bytes: int = 64 * 2**30


@dataclass(frozen=True)
class LinkConfig:
    """Everything a link needs; ``clock`` gives wall time for certificate checks."""

    tls: TlsIdentity
    log: InclusionChecker
    clock: Callable[[], dt.datetime]
    rekey: RekeyPolicy = RekeyPolicy()
    max_frame: int = DEFAULT_MAX_PAYLOAD
    max_buffered: int = 64 * 2**20
    handshake_timeout_s: float = 10.0


@dataclass(frozen=True)
class TransportAttestation:
    """What the link negotiated, for the node's transport attestation."""

    protocol: str
    group: str
    cipher: str
    signature_algorithm: str
    peer_node_id: NodeId
    peer_fingerprint: str
    handshakes: int


class PeerLink:
    """One authenticated link to one expected peer node. Build it with :meth:`connect` or :meth:`accept`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        config: LinkConfig,
        counters: RefusalCounters,
        is_client: bool,
        expected: Collection[NodeId],
    ) -> None:
        self._reader, self._writer = reader, writer
        self._config, self._counters = config, counters
        self._is_client, self._expected = is_client, frozenset(expected)
        self._ctx = make_context(config.tls)
        self._conn: SSL.Connection | None = None
        self._peer: VerifiedNode | None = None
        self._decoder = FrameDecoder(max_payload=config.max_frame)
        self._queues: dict[int, deque[bytes]] = {}
        self._waiters: dict[int, asyncio.Future[bytes]] = {}
        self._buffered = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._send_lock = asyncio.Lock()
        self._rekey_done: asyncio.Future[None] | None = None
        self._handshakes = 0
        self._bytes_since = 0
        self._since = 0.0
        self._closed: BaseException | None = None
        self._peer_closed = False
        self._pump_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None

    # -- construction ---------------------------------------------------------------

    @classmethod
    async def connect(
        cls, host: str, port: int, *, config: LinkConfig, expected_peer: NodeId, counters: RefusalCounters
    ) -> PeerLink:
        """Dial ``host:port`` and authenticate; the peer must be ``expected_peer``."""
        reader, writer = await asyncio.open_connection(host, port)
        link = cls(reader, writer, config=config, counters=counters, is_client=True, expected={expected_peer})
        await link._start()
        return link

    @classmethod
    async def accept(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        config: LinkConfig,
        expected_peers: Collection[NodeId],
        counters: RefusalCounters,
    ) -> PeerLink:
        """Authenticate an accepted connection; the peer must be one of ``expected_peers``."""
        link = cls(reader, writer, config=config, counters=counters, is_client=False, expected=expected_peers)
        await link._start()
        return link

    async def _start(self) -> None:
        try:
            await asyncio.wait_for(self._handshake(client=self._is_client), self._config.handshake_timeout_s)
        except TimeoutError:
            self._counters.count("handshake_timeout")
            await self._abort()
            raise LinkRefused("TLS handshake timed out", "handshake_timeout") from None
        except LinkRefused:
            await self._abort()
            raise
        self._pump_task = asyncio.create_task(self._pump())
        if self._is_client:
            self._timer_task = asyncio.create_task(self._rekey_timer())

    async def _abort(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    # -- TLS plumbing -----------------------------------------------------------------

    def _flush(self) -> None:
        assert self._conn is not None  # set by _handshake before any flush
        while True:
            try:
                out = self._conn.bio_read(1 << 20)
            except SSL.WantReadError:
                return
            if not out:
                return
            self._writer.write(out)

    async def _handshake(self, *, client: bool) -> None:
        """Run a full TLS 1.3 handshake on the stream, then check the peer's identity."""
        conn = SSL.Connection(self._ctx, None)
        state = VerifyState()
        conn.set_app_data(state)
        conn.set_connect_state() if client else conn.set_accept_state()
        self._conn = conn
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                self._flush()
                await self._writer.drain()
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    reason = verify_failure_reason(state) or "peer_aborted"
                    self._counters.count(reason)
                    raise LinkRefused("peer closed the connection during the TLS handshake", reason) from None
                conn.bio_write(data)
            except SSL.Error as exc:
                self._flush()  # deliver our alert to the peer
                await self._drain_quietly()
                reason = verify_failure_reason(state) or _handshake_reason(exc)
                self._counters.count(reason)
                raise LinkRefused(f"TLS handshake failed ({reason}): {exc}", reason) from None
        self._flush()
        await self._writer.drain()
        if conn.get_protocol_version_name() != "TLSv1.3" or conn.get_group_name() != self._config.tls.suite.tls_group.value:
            self._counters.count("downgrade")
            raise LinkRefused(f"negotiated {conn.get_protocol_version_name()} / {conn.get_group_name()}", "downgrade")
        try:
            self._peer = check_peer(conn, self._config.tls, expected=self._expected, log=self._config.log, now=self._config.clock())
        except CertificateError as exc:
            self._counters.count(exc.reason)
            raise LinkRefused(f"peer refused: {exc}", exc.reason) from None
        self._handshakes += 1
        self._bytes_since = 0
        self._since = asyncio.get_running_loop().time()

    async def _drain_quietly(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

    # -- sending ------------------------------------------------------------------------

    async def _write_plaintext(self, data: bytes) -> None:
        assert self._conn is not None  # the link is established
        view = memoryview(data)
        while view:
            n = self._conn.send(view)
            view = view[n:]
            self._flush()
        await self._writer.drain()
        self._bytes_since += len(data)

    async def send(self, tag: int, payload: bytes) -> None:
        """Send one message under round ``tag``; waits while the peer is slow (backpressure)."""
        self._raise_if_closed()
        frame = encode_frame(FrameKind.DATA, tag, payload, max_payload=self._config.max_frame)
        if self._is_client and self._rekey_due():
            await self.rekey()
        async with self._send_lock:
            self._raise_if_closed()
            await self._write_plaintext(frame)

    def _rekey_due(self) -> bool:
        p = self._config.rekey
        elapsed = asyncio.get_running_loop().time() - self._since
        return self._bytes_since >= p.max_bytes or elapsed >= p.interval_s

    async def rekey(self) -> None:
        """Re-handshake now with a fresh TLS 1.3 session (dialing side only; see module docstring)."""
        if not self._is_client:
            raise RuntimeError("only the dialing side initiates a re-handshake")
        async with self._send_lock:
            self._raise_if_closed()
            self._rekey_done = asyncio.get_running_loop().create_future()
            await self._write_plaintext(encode_frame(FrameKind.REKEY, 0, b""))
            await self._rekey_done

    async def _rekey_timer(self) -> None:
        while self._closed is None:
            await asyncio.sleep(self._config.rekey.interval_s)
            if self._closed is None and self._rekey_due():
                try:
                    await self.rekey()
                except (LinkClosed, LinkRefused):
                    return

    # -- receiving ----------------------------------------------------------------------

    async def recv(self, tag: int) -> bytes:
        """The next message under round ``tag`` (buffered if it came early)."""
        q = self._queues.get(tag)
        if q:
            return self._take(tag, q)
        self._raise_if_closed()
        if tag in self._waiters:
            raise RuntimeError(f"another task is already waiting for round tag {tag}")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[tag] = fut
        try:
            return await fut
        finally:
            self._waiters.pop(tag, None)

    def _take(self, tag: int, q: deque[bytes]) -> bytes:
        payload = q.popleft()
        if not q:
            del self._queues[tag]
        self._buffered -= len(payload)
        if self._buffered <= self._config.max_buffered:
            self._drained.set()
        return payload

    def _deliver(self, tag: int, payload: bytes) -> None:
        fut = self._waiters.pop(tag, None)
        if fut is not None and not fut.done():
            fut.set_result(payload)
            return
        self._queues.setdefault(tag, deque()).append(payload)
        self._buffered += len(payload)
        if self._buffered > self._config.max_buffered:
            self._drained.clear()

    def _read_plaintext(self) -> bytes:
        assert self._conn is not None  # established before the pump starts
        plain = bytearray()
        while True:
            try:
                plain += self._conn.recv(1 << 20)
            except SSL.WantReadError:
                return bytes(plain)
            except SSL.ZeroReturnError:
                self._peer_closed = True  # deliver what came before close_notify, then stop
                return bytes(plain)

    async def _pump(self) -> None:
        try:
            while True:
                # Records may already sit in the TLS buffer (sent right behind a peer's
                # Finished), so decrypt what is there before reading the socket again.
                plain = self._read_plaintext()
                if not plain and self._peer_closed:
                    self._decoder.close()  # a frame cut short by close_notify is refused
                    raise LinkClosed("peer closed the TLS session")
                if not plain:
                    await self._drained.wait()
                    data = await self._reader.read(_READ_CHUNK)
                    if not data:
                        self._decoder.close()
                        raise LinkClosed("peer closed the link")
                    assert self._conn is not None  # established before the pump starts
                    self._conn.bio_write(data)
                    continue
                self._bytes_since += len(plain)
                frames = self._decoder.feed(plain)
                for i, frame in enumerate(frames):
                    if frame.kind is FrameKind.DATA:
                        self._deliver(frame.tag, frame.payload)
                        continue
                    if i != len(frames) - 1 or self._decoder.buffered:
                        raise FrameError("data after a rekey marker on the old session", "rekey_protocol")
                    await self._on_rekey_frame(frame.kind)
        except FrameError as exc:
            self._counters.count(exc.reason)
            self._fail(LinkRefused(str(exc), exc.reason))
        except LinkRefused as exc:
            self._fail(exc)
        except (LinkClosed, ConnectionError, OSError, SSL.Error) as exc:
            self._fail(exc if isinstance(exc, LinkClosed) else LinkClosed(f"link failed: {exc}"))
        finally:
            self._writer.close()

    async def _on_rekey_frame(self, kind: FrameKind) -> None:
        if kind is FrameKind.REKEY and not self._is_client:
            async with self._send_lock:
                await self._write_plaintext(encode_frame(FrameKind.REKEY_ACK, 0, b""))
                await self._handshake(client=False)
            return
        if kind is FrameKind.REKEY_ACK and self._is_client and self._rekey_done is not None:
            await self._handshake(client=True)
            if not self._rekey_done.done():
                self._rekey_done.set_result(None)
            return
        raise FrameError(f"unexpected {kind.name} frame", "rekey_protocol")

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        if self._rekey_done is not None and not self._rekey_done.done():
            self._rekey_done.set_exception(exc)

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed

    # -- status and shutdown -------------------------------------------------------------

    def attestation(self) -> TransportAttestation:
        """The negotiated protocol, group, cipher and signature algorithm, and who the peer is."""
        if self._conn is None or self._peer is None:
            raise LinkClosed("link not established")
        return TransportAttestation(
            protocol=self._conn.get_protocol_version_name(),
            group=self._conn.get_group_name() or "",
            cipher=self._conn.get_cipher_name() or "",
            signature_algorithm=self._config.tls.suite.signature.label,
            peer_node_id=self._peer.node_id,
            peer_fingerprint=self._peer.fingerprint,
            handshakes=self._handshakes,
        )

    @property
    def closed(self) -> bool:
        """Whether the link has ended."""
        return self._closed is not None

    async def close(self) -> None:
        """Close the link (idempotent) and stop its tasks."""
        if self._closed is None:
            self._closed = LinkClosed("link closed locally")
            if self._conn is not None:
                try:
                    self._conn.shutdown()
                    self._flush()
                except SSL.Error:
                    pass
        for task in (self._timer_task, self._pump_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._fail(self._closed)
        await self._abort()


def _handshake_reason(exc: SSL.Error) -> str:
    text = str(exc).lower()
    if "key share" in text or "shared group" in text or "no suitable" in text or "handshake failure" in text:
        return "no_shared_group"
    if "unknown ca" in text or "certificate verify failed" in text or "bad certificate" in text:
        return "peer_rejected_certificate"
    if "expired" in text:
        return "peer_rejected_expired"
    return "handshake_failed"
