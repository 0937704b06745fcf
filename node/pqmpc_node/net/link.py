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

Rekeys trigger after ``RekeyPolicy.interval_s`` seconds or ``max_bytes`` bytes (sent
plus received): the dialer's timer fires at the due time, ``send`` checks before every
frame, and a dialer that only receives starts one from its reader. The accepting side
enforces it: a link whose dialer has not re-handshaken ``overdue_grace_s`` seconds or
``overdue_grace_bytes`` bytes past the due point is closed by the acceptor with a
close_notify and :class:`LinkRefused` reason ``rekey_overdue`` (counted).

Messages longer than ``max_frame`` are split into FRAGMENT frames and reassembled per
round tag under ``max_message`` (see :mod:`pqmpc_node.net.framing`); one message's
frames are written under the send lock, so they never interleave with another send.

A close_notify that arrives in the same read as application data ends the link only
after every record before it has been decrypted and delivered. Closing is graceful:
:meth:`PeerLink.close` sends close_notify and a TCP FIN, then keeps reading (and
discarding) until the peer closes too, at most ``close_linger_s`` seconds. Closing a
socket with unread input makes the kernel send a TCP reset, and the peer would lose
whatever it had not yet read of what this side sent before closing.

The transparency log (``LinkConfig.log``) is read at every handshake: pass the shared
:class:`~pqmpc_node.crypto.transparency.LogVerifier` that is updated in place, or a
zero-argument callable returning the current checker, and links made later see
certificates logged later. SSL contexts come from :func:`~pqmpc_node.net.tls.cached_context`.

Backpressure: ``send`` awaits the socket's drain; the reader stops reading when
``max_buffered`` bytes wait unconsumed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar, cast

from OpenSSL import SSL

from pqmpc_node.crypto.pki import CertificateError, InclusionChecker, NodeId, VerifiedNode
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.framing import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_PAYLOAD,
    FrameDecoder,
    FrameError,
    FrameKind,
    Reassembler,
    encode_frame,
    iter_frame_parts,
)
from pqmpc_node.net.records import READ_CHUNK as _READ_CHUNK
from pqmpc_node.net.records import WRITE_CHUNK as _WRITE_CHUNK
from pqmpc_node.net.records import RecordIO, handshake_reason
from pqmpc_node.net.tls import TlsIdentity, VerifyState, cached_context, check_peer, verify_failure_reason

__all__ = [
    "STREAM_LIMIT",
    "LinkClosed",
    "LinkConfig",
    "LinkRefused",
    "LogSource",
    "PeerLink",
    "RekeyPolicy",
    "TransportAttestation",
]

STREAM_LIMIT = 1 << 20
"""``limit`` for the :class:`asyncio.StreamReader` under a link: reads of up to ~1 MiB per call."""
_COALESCE = 16 * 1024 - 64  # payload bytes sent in one record with a frame header (one small copy)


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
    """When the dialing side re-handshakes, and when the accepting side gives up on it.

    The acceptor closes a link (``rekey_overdue``) once ``interval_s + overdue_grace_s``
    seconds or ``max_bytes + overdue_grace_bytes`` bytes pass without a re-handshake;
    ``overdue_grace_bytes=None`` means ``max_bytes`` (so twice ``max_bytes`` in all).
    """

    interval_s: float = 3600.0
    max_bytes: int = 64 * 2**30
    overdue_grace_s: float = 60.0
    overdue_grace_bytes: int | None = None

    @property
    def overdue_after_s(self) -> float:
        """Seconds since the last handshake after which the acceptor closes the link."""
        return self.interval_s + self.overdue_grace_s

    @property
    def overdue_after_bytes(self) -> int:
        """Bytes since the last handshake after which the acceptor closes the link."""
        grace = self.max_bytes if self.overdue_grace_bytes is None else self.overdue_grace_bytes
        return self.max_bytes + grace


LogSource = InclusionChecker | Callable[[], InclusionChecker]
"""A transparency-log checker, or a zero-argument callable returning the current one."""


@dataclass(frozen=True)
class LinkConfig:
    """Everything a link needs; ``clock`` gives wall time for certificate checks.

    ``log`` is consulted at every handshake (see the module docstring); ``max_frame``
    bounds one frame, ``max_message`` one reassembled message.
    """

    tls: TlsIdentity
    log: LogSource
    clock: Callable[[], dt.datetime]
    rekey: RekeyPolicy = RekeyPolicy()
    max_frame: int = DEFAULT_MAX_PAYLOAD
    max_buffered: int = 64 * 2**20
    handshake_timeout_s: float = 10.0
    max_message: int = DEFAULT_MAX_MESSAGE
    close_linger_s: float = 2.0

    def inclusion_checker(self) -> InclusionChecker:
        """The log checker to use now: ``log`` itself, or what the ``log`` callable returns."""
        if hasattr(self.log, "require_node_certificate"):
            return cast(InclusionChecker, self.log)
        if callable(self.log):
            return self.log()
        raise TypeError("LinkConfig.log must be an InclusionChecker or a callable returning one")


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
        self._ctx = cached_context(config.tls)
        self._conn: SSL.Connection | None = None
        self._records: RecordIO | None = None
        self._peer: VerifiedNode | None = None
        self._decoder = FrameDecoder(max_payload=config.max_frame)
        self._reassembler = Reassembler(max_message=config.max_message)
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
        self._rekey_task: asyncio.Task[None] | None = None
        self._rekeying = False  # acceptor: a REKEY arrived and the new handshake runs
        self._closing = False  # closed locally: the pump only drains until the peer closes

    # -- construction ---------------------------------------------------------------

    @classmethod
    async def connect(
        cls, host: str, port: int, *, config: LinkConfig, expected_peer: NodeId, counters: RefusalCounters
    ) -> PeerLink:
        """Dial ``host:port`` and authenticate; the peer must be ``expected_peer``."""
        reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        return await cls.connect_stream(reader, writer, config=config, expected_peer=expected_peer, counters=counters)

    @classmethod
    async def connect_stream(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        config: LinkConfig,
        expected_peer: NodeId,
        counters: RefusalCounters,
    ) -> PeerLink:
        """Authenticate as the dialing side over an already open stream (a relay, a pre-opened socket)."""
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
            self._counters.count("handshake_timeout", self._refused_peer())
            await self._abort()
            raise LinkRefused("TLS handshake timed out", "handshake_timeout") from None
        except LinkRefused:
            await self._abort()
            raise
        self._pump_task = asyncio.create_task(self._pump())
        self._timer_task = asyncio.create_task(self._rekey_timer() if self._is_client else self._rekey_watchdog())

    async def _abort(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    # -- TLS plumbing -----------------------------------------------------------------

    def _flush(self) -> None:
        assert self._records is not None  # set by _handshake before any flush
        out = self._records.ciphertext()
        if out:
            self._writer.write(out)

    async def _handshake(self, *, client: bool) -> None:
        """Run a full TLS 1.3 handshake on the stream, then check the peer's identity."""
        conn = SSL.Connection(self._ctx, None)
        state = VerifyState()
        conn.set_app_data(state)
        conn.set_connect_state() if client else conn.set_accept_state()
        self._conn = conn
        self._records = RecordIO(conn)
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
                    self._counters.count(reason, self._refused_peer())
                    raise LinkRefused("peer closed the connection during the TLS handshake", reason) from None
                conn.bio_write(data)
            except SSL.Error as exc:
                self._flush()  # deliver our alert to the peer
                await self._drain_quietly()
                reason = verify_failure_reason(state) or handshake_reason(exc)
                self._counters.count(reason, self._refused_peer())
                raise LinkRefused(f"TLS handshake failed ({reason}): {exc}", reason) from None
        self._flush()
        await self._writer.drain()
        if conn.get_protocol_version_name() != "TLSv1.3" or conn.get_group_name() != self._config.tls.suite.tls_group.value:
            self._counters.count("downgrade", self._refused_peer())
            raise LinkRefused(f"negotiated {conn.get_protocol_version_name()} / {conn.get_group_name()}", "downgrade")
        try:
            self._peer = check_peer(conn, self._config.tls, expected=self._expected, log=self._config.inclusion_checker(),
                                    now=self._config.clock())
        except CertificateError as exc:
            self._counters.count(exc.reason, self._refused_peer())
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

    async def _write_plaintext(self, data: bytes | memoryview) -> None:
        assert self._records is not None  # the link is established
        view = memoryview(data)
        for i in range(0, len(view), _WRITE_CHUNK):
            self._records.encrypt(view[i : i + _WRITE_CHUNK])
            self._flush()
            await self._writer.drain()
        self._bytes_since += len(view)

    async def _write_frame(self, header: bytes, body: memoryview) -> None:
        # The header rides in the first record with the start of the body (a copy of at
        # most one record), the rest of the body is encrypted from the caller's buffer.
        await self._write_plaintext(header + body[:_COALESCE])
        if len(body) > _COALESCE:
            await self._write_plaintext(body[_COALESCE:])

    async def send(self, tag: int, payload: bytes) -> None:
        """Send one message under round ``tag``; waits while the peer is slow (backpressure).

        A message longer than ``max_frame`` goes as several frames (see the module docstring);
        one over ``max_message`` raises :class:`FrameError` (``oversized_message``).
        """
        self._raise_if_closed()
        frames = iter_frame_parts(tag, payload, max_payload=self._config.max_frame, max_message=self._config.max_message)
        async with self._send_lock:
            for header, body in frames:
                self._raise_if_closed()
                if self._is_client and self._rekey_due():
                    await self._rekey_locked()
                elif not self._is_client and self._overdue_bytes():
                    await self._refuse_overdue()
                    self._raise_if_closed()
                await self._write_frame(header, body)

    def _rekey_due(self) -> bool:
        p = self._config.rekey
        elapsed = asyncio.get_running_loop().time() - self._since
        return self._bytes_since >= p.max_bytes or elapsed >= p.interval_s

    def _overdue_bytes(self) -> bool:
        return not self._rekeying and self._bytes_since >= self._config.rekey.overdue_after_bytes

    async def rekey(self) -> None:
        """Re-handshake now with a fresh TLS 1.3 session (dialing side only; see module docstring)."""
        if not self._is_client:
            raise RuntimeError("only the dialing side initiates a re-handshake")
        async with self._send_lock:
            await self._rekey_locked()

    async def _rekey_if_due(self) -> None:
        async with self._send_lock:
            if self._rekey_due():
                await self._rekey_locked()

    async def _rekey_locked(self) -> None:
        self._raise_if_closed()
        self._rekey_done = asyncio.get_running_loop().create_future()
        await self._write_plaintext(encode_frame(FrameKind.REKEY, 0, b""))
        await self._rekey_done

    async def _rekey_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while self._closed is None:
            delay = self._since + self._config.rekey.interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                await self._rekey_if_due()
            except (LinkClosed, LinkRefused, ConnectionError, OSError, SSL.Error):
                return

    def _rekey_in_background(self) -> None:
        """Dialer only: start a rekey from the reader (a link that only receives still rekeys)."""
        if self._rekey_task is None or self._rekey_task.done():
            self._rekey_task = asyncio.create_task(self._background_rekey())

    async def _background_rekey(self) -> None:
        try:
            await self._rekey_if_due()
        except (LinkClosed, LinkRefused, ConnectionError, OSError, SSL.Error):
            pass  # the pump reports the failure to every waiter

    async def _rekey_watchdog(self) -> None:
        """Acceptor: close the link when the dialer lets a re-handshake become overdue (time)."""
        loop = asyncio.get_running_loop()
        while self._closed is None:
            delay = self._since + self._config.rekey.overdue_after_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if self._rekeying:  # a re-handshake runs; its own timeout bounds it
                await asyncio.sleep(0.05)
                continue
            await self._refuse_overdue()
            return

    async def _refuse_overdue(self) -> None:
        if self._closed is not None:
            return
        p = self._config.rekey
        exc = LinkRefused(
            f"the dialing peer did not re-handshake within {p.overdue_after_s:g}s or {p.overdue_after_bytes} bytes",
            "rekey_overdue",
        )
        self._counters.count(exc.reason, self._refused_peer())
        await self.close(exc)

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

    def _read_plaintext(self) -> bytearray:
        assert self._records is not None  # established before the pump starts
        plain, closed = self._records.decrypt()
        if closed:
            self._peer_closed = True  # deliver what came before close_notify, then stop
        return plain

    async def _pump(self) -> None:
        try:
            while True:
                # Records may already sit in the TLS buffer (sent right behind a peer's
                # Finished), so decrypt what is there before reading the socket again.
                # Everything decrypted before a close_notify is fed to the decoder first.
                plain = self._read_plaintext()
                if not plain and self._peer_closed:
                    self._end_of_stream()  # a frame or message cut short by close_notify is refused
                    raise LinkClosed("peer closed the TLS session")
                if not plain:
                    if not self._closing:
                        await self._drained.wait()
                    data = await self._reader.read(_READ_CHUNK)
                    if not data:
                        self._end_of_stream()
                        raise LinkClosed("peer closed the link")
                    assert self._conn is not None  # established before the pump starts
                    self._conn.bio_write(data)
                    continue
                if self._closing:
                    continue  # closed locally: drain and discard until the peer closes
                self._bytes_since += len(plain)
                frames = self._decoder.feed(plain)
                for i, frame in enumerate(frames):
                    if frame.kind in (FrameKind.DATA, FrameKind.FRAGMENT):
                        message = self._reassembler.add(frame)
                        if message is not None:
                            self._deliver(frame.tag, message)
                        continue
                    if i != len(frames) - 1 or self._decoder.buffered:
                        raise FrameError("data after a rekey marker on the old session", "rekey_protocol")
                    await self._on_rekey_frame(frame.kind)
                if self._is_client:
                    if self._rekey_due():
                        self._rekey_in_background()
                elif self._overdue_bytes():
                    self._counters.count("rekey_overdue", self._refused_peer())
                    p = self._config.rekey
                    raise LinkRefused(
                        f"the dialing peer did not re-handshake within {p.overdue_after_bytes} bytes", "rekey_overdue"
                    )
        except FrameError as exc:
            if not self._closing:
                self._counters.count(exc.reason, self._refused_peer())
            self._fail(LinkRefused(str(exc), exc.reason))
        except LinkRefused as exc:
            self._fail(exc)
            if exc.reason == "rekey_overdue":
                self._send_close_notify()
        except (LinkClosed, ConnectionError, OSError, SSL.Error) as exc:
            self._fail(exc if isinstance(exc, LinkClosed) else LinkClosed(f"link failed: {exc}"))
        finally:
            self._writer.close()

    def _end_of_stream(self) -> None:
        self._decoder.close()
        self._reassembler.close()

    async def _on_rekey_frame(self, kind: FrameKind) -> None:
        if kind is FrameKind.REKEY and not self._is_client:
            self._rekeying = True
            try:
                async with self._send_lock:
                    await self._write_plaintext(encode_frame(FrameKind.REKEY_ACK, 0, b""))
                    await asyncio.wait_for(self._handshake(client=False), self._config.handshake_timeout_s)
            except TimeoutError:
                self._counters.count("handshake_timeout", self._refused_peer())
                raise LinkRefused("re-handshake timed out", "handshake_timeout") from None
            finally:
                self._rekeying = False
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
    def peer_node_id(self) -> str:
        """The authenticated peer's node id; ``""`` before the first handshake completed."""
        return self._peer.node_id if self._peer is not None else ""

    def _refused_peer(self) -> str:
        """Whom a refusal counts against: the authenticated peer, else the node dialed, else unknown ("")."""
        if self._peer is not None:
            return self._peer.node_id
        if self._is_client and len(self._expected) == 1:
            return next(iter(self._expected))
        return ""

    @property
    def closed(self) -> bool:
        """Whether the link has ended."""
        return self._closed is not None

    def _send_close_notify(self) -> None:
        if self._conn is not None:
            try:
                self._conn.shutdown()
                self._flush()
            except (SSL.Error, ConnectionError, OSError, RuntimeError):
                pass

    async def close(self, reason: BaseException | None = None) -> None:
        """Close the link gracefully (idempotent) and stop its tasks.

        Sends close_notify and a FIN, then drains input until the peer closes (at most
        ``close_linger_s``; see the module docstring). ``reason`` (default
        :class:`LinkClosed`) is what pending and later calls raise.
        """
        if self._closed is None:
            self._closed = reason if reason is not None else LinkClosed("link closed locally")
            self._closing = True
            self._drained.set()
            self._fail(self._closed)
            self._send_close_notify()
            try:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            except (OSError, RuntimeError):
                pass
            pump = self._pump_task
            if pump is not None and pump is not asyncio.current_task() and not pump.done():
                try:
                    await asyncio.wait_for(asyncio.shield(pump), self._config.close_linger_s)
                except (TimeoutError, Exception):
                    pass  # the peer did not close in time (or the pump failed): close anyway
        for task in (self._timer_task, self._rekey_task, self._pump_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._fail(self._closed)
        await self._abort()
