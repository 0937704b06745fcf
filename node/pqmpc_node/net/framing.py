"""Message framing for MPC traffic inside a peer link: kind, round tag, length, payload.

Wire format (big-endian), 16-byte header then payload::

    magic "PQ" | version u8 (=1) | kind u8 | round tag u64 | length u32 | payload

Pure parsing: :class:`FrameDecoder` takes bytes in arbitrary chunks and yields
complete frames, refusing bad magic, unknown kinds, and lengths over its bound before
buffering them; :meth:`FrameDecoder.close` refuses a truncated trailing frame.

Fragmentation. A message longer than one frame travels as FRAGMENT frames (each a
non-empty chunk, "more follows") closed by one DATA frame under the same round tag;
a message that fits is one DATA frame, as before. :func:`fragment_message` splits,
:class:`Reassembler` joins per tag under a total bound (``oversized_message``) and
refuses a stream that ends inside a message (``truncated_message``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_MAX_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameKind",
    "HEADER_SIZE",
    "Reassembler",
    "encode_frame",
    "fragment_message",
    "iter_fragments",
    "iter_frame_parts",
]

_HEADER = struct.Struct(">2sBBQI")
HEADER_SIZE = _HEADER.size
_MAGIC = b"PQ"
_VERSION = 1
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024
MAX_TAG = 2**64 - 1


class FrameKind(enum.IntEnum):
    """What a frame carries."""

    DATA = 0
    REKEY = 1
    REKEY_ACK = 2
    FRAGMENT = 3


class FrameError(Exception):
    """A frame was refused; ``reason`` is the metric label."""

    reason: ClassVar[str] = "bad_frame"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: FrameKind
    tag: int
    payload: bytes


def encode_frame(kind: FrameKind, tag: int, payload: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Header + payload; raises :class:`FrameError` (``oversized_frame``) over ``max_payload``."""
    if not 0 <= tag <= MAX_TAG:
        raise ValueError(f"round tag {tag} out of range 0..2^64-1")
    if len(payload) > max_payload:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the frame limit {max_payload}", "oversized_frame")
    return _HEADER.pack(_MAGIC, _VERSION, kind, tag, len(payload)) + payload


class FrameDecoder:
    """Incremental, bounded frame parser."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()  # the pending frame (header + payload), sized once its header is known
        self._have = 0  # bytes of it received
        self._max = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame now complete.

        Frames are parsed in place (from ``data`` itself when nothing is pending) and each
        payload copied once. A frame cut short waits in a buffer of exactly its size, so
        a large frame arriving in many reads costs linear time, not a growing buffer's
        repeated reallocation.
        """
        out: list[Frame] = []
        with memoryview(data) as src:
            src = src.cast("B") if src.format != "B" else src
            off = self._fill(src, out)
            while len(src) - off >= HEADER_SIZE:
                kind, tag, length = self._header(src, off)
                stop = off + HEADER_SIZE + length
                if stop > len(src):
                    break
                out.append(Frame(kind, tag, bytes(src[off + HEADER_SIZE : stop])))
                off = stop
            if off < len(src):
                self._start_partial(src[off:])
        return out

    def _header(self, buf: memoryview | bytearray, off: int) -> tuple[FrameKind, int, int]:
        magic, version, kind, tag, length = _HEADER.unpack_from(buf, off)
        if magic != _MAGIC or version != _VERSION:
            raise FrameError("frame header has bad magic or version", "bad_frame")
        try:
            fkind = FrameKind(kind)
        except ValueError:
            raise FrameError(f"unknown frame kind {kind}", "bad_frame") from None
        if length > self._max:
            raise FrameError(f"frame announces {length} bytes; the limit is {self._max}", "oversized_frame")
        return fkind, tag, length

    def _start_partial(self, rest: memoryview) -> None:
        # Less than a header, or a header whose frame is not complete yet.
        if len(rest) >= HEADER_SIZE:
            _, _, length = self._header(rest, 0)
            self._buf = bytearray(HEADER_SIZE + length)
        else:
            self._buf = bytearray(HEADER_SIZE)
        self._buf[: len(rest)] = rest
        self._have = len(rest)

    def _fill(self, src: memoryview, out: list[Frame]) -> int:
        """Complete the pending frame from ``src``; returns how many bytes of ``src`` it used."""
        used = 0
        while self._buf:
            take = min(len(self._buf) - self._have, len(src) - used)
            self._buf[self._have : self._have + take] = src[used : used + take]
            self._have += take
            used += take
            if self._have < len(self._buf):
                return used
            if len(self._buf) == HEADER_SIZE and self._have == HEADER_SIZE:
                kind, tag, length = self._header(self._buf, 0)
                if length:
                    grown = bytearray(HEADER_SIZE + length)
                    grown[:HEADER_SIZE] = self._buf
                    self._buf = grown
                    continue
            kind, tag, _ = self._header(self._buf, 0)
            with memoryview(self._buf) as view:
                out.append(Frame(kind, tag, bytes(view[HEADER_SIZE:])))
            self._buf = bytearray()
            self._have = 0
        return used

    def close(self) -> None:
        """The stream ended: refuse a partial frame (``truncated_frame``)."""
        if self._have:
            raise FrameError(f"stream ended inside a frame ({self._have} bytes pending)", "truncated_frame")


def iter_fragments(
    tag: int, payload: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_message: int = DEFAULT_MAX_MESSAGE
) -> Iterator[bytes]:
    """Encoded frames for one message, one at a time (at most one frame copied at once).

    FRAGMENT chunks of ``max_payload`` bytes, then a final DATA frame; a message that fits
    is one DATA frame. Raises :class:`FrameError` (``oversized_message``) over
    ``max_message`` before yielding anything.
    """
    if max_payload < 1:
        raise ValueError("max_payload must be at least 1")
    if len(payload) > max_message:
        raise FrameError(f"message of {len(payload)} bytes exceeds the message limit {max_message}", "oversized_message")
    return _fragments(tag, payload, max_payload)


def _fragments(tag: int, payload: bytes, max_payload: int) -> Iterator[bytes]:
    if len(payload) <= max_payload:
        yield encode_frame(FrameKind.DATA, tag, payload, max_payload=max_payload)
        return
    view = memoryview(payload)
    last = (len(payload) - 1) // max_payload * max_payload
    for i in range(0, len(payload), max_payload):
        kind = FrameKind.DATA if i == last else FrameKind.FRAGMENT
        chunk = view[i : i + max_payload]
        yield _HEADER.pack(_MAGIC, _VERSION, kind, tag, len(chunk)) + chunk


def iter_frame_parts(
    tag: int, payload: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_message: int = DEFAULT_MAX_MESSAGE,
) -> Iterator[tuple[bytes, memoryview]]:
    """The frames of :func:`iter_fragments` as ``(header, payload view)`` pairs: nothing is copied.

    Same checks, same frames: ``header + bytes(view)`` is the encoded frame.
    """
    if max_payload < 1:
        raise ValueError("max_payload must be at least 1")
    if not 0 <= tag <= MAX_TAG:
        raise ValueError(f"round tag {tag} out of range 0..2^64-1")
    if len(payload) > max_message:
        raise FrameError(f"message of {len(payload)} bytes exceeds the message limit {max_message}", "oversized_message")
    return _frame_parts(tag, memoryview(payload).cast("B"), max_payload)


def _frame_parts(tag: int, view: memoryview, max_payload: int) -> Iterator[tuple[bytes, memoryview]]:
    if len(view) <= max_payload:
        yield _HEADER.pack(_MAGIC, _VERSION, FrameKind.DATA, tag, len(view)), view
        return
    last = (len(view) - 1) // max_payload * max_payload
    for i in range(0, len(view), max_payload):
        kind = FrameKind.DATA if i == last else FrameKind.FRAGMENT
        chunk = view[i : i + max_payload]
        yield _HEADER.pack(_MAGIC, _VERSION, kind, tag, len(chunk)), chunk


def fragment_message(
    tag: int, payload: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_message: int = DEFAULT_MAX_MESSAGE
) -> list[bytes]:
    """All frames of :func:`iter_fragments` as a list."""
    return list(iter_fragments(tag, payload, max_payload=max_payload, max_message=max_message))


class Reassembler:
    """Joins FRAGMENT ... DATA runs per round tag; at most ``max_message`` bytes pending in all."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._parts: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._pending = 0
        self._max = max_message

    @property
    def pending(self) -> int:
        """Bytes held for incomplete messages."""
        return self._pending

    def add(self, frame: Frame) -> bytes | None:
        """Take a DATA or FRAGMENT frame; return the whole message when ``frame`` completes one."""
        if frame.kind is FrameKind.FRAGMENT:
            if not frame.payload:
                raise FrameError(f"empty fragment under round tag {frame.tag}", "bad_frame")
            self._grow(frame.tag, len(frame.payload))
            self._parts.setdefault(frame.tag, []).append(frame.payload)
            return None
        if frame.kind is not FrameKind.DATA:
            raise ValueError(f"{frame.kind.name} frames are not message data")
        parts = self._parts.pop(frame.tag, None)
        if parts is None:
            if len(frame.payload) > self._max:
                raise FrameError(f"message of {len(frame.payload)} bytes exceeds the limit {self._max}", "oversized_message")
            return frame.payload
        size = self._sizes.pop(frame.tag)
        self._pending -= size
        if size + len(frame.payload) > self._max:
            raise FrameError(f"message under round tag {frame.tag} exceeds the limit {self._max}", "oversized_message")
        parts.append(frame.payload)
        return b"".join(parts)

    def _grow(self, tag: int, n: int) -> None:
        if self._pending + n > self._max:
            raise FrameError(
                f"fragmented messages exceed the limit {self._max} bytes (round tag {tag})", "oversized_message"
            )
        self._pending += n
        self._sizes[tag] = self._sizes.get(tag, 0) + n

    def close(self) -> None:
        """The stream ended: refuse a message cut short (``truncated_message``)."""
        if self._parts:
            tags = sorted(self._parts)
            raise FrameError(f"stream ended inside fragmented message(s) under round tag(s) {tags[:4]}", "truncated_message")
