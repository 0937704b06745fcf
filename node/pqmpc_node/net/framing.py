"""Message framing for MPC traffic inside a peer link: kind, round tag, length, payload.

Wire format (big-endian), 16-byte header then payload::

    magic "PQ" | version u8 (=1) | kind u8 | round tag u64 | length u32 | payload

Pure parsing: :class:`FrameDecoder` takes bytes in arbitrary chunks and yields
complete frames, refusing bad magic, unknown kinds, and lengths over its bound before
buffering them; :meth:`FrameDecoder.close` refuses a truncated trailing frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameKind",
    "HEADER_SIZE",
    "encode_frame",
]

_HEADER = struct.Struct(">2sBBQI")
HEADER_SIZE = _HEADER.size
_MAGIC = b"PQ"
_VERSION = 1
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
MAX_TAG = 2**64 - 1


class FrameKind(enum.IntEnum):
    """What a frame carries."""

    DATA = 0
    REKEY = 1
    REKEY_ACK = 2


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
        self._buf = bytearray()
        self._max = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame now complete."""
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            magic, version, kind, tag, length = _HEADER.unpack_from(self._buf)
            if magic != _MAGIC or version != _VERSION:
                raise FrameError("frame header has bad magic or version", "bad_frame")
            try:
                fkind = FrameKind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}", "bad_frame") from None
            if length > self._max:
                raise FrameError(f"frame announces {length} bytes; the limit is {self._max}", "oversized_frame")
            if len(self._buf) < HEADER_SIZE + length:
                break
            out.append(Frame(fkind, tag, bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])))
            del self._buf[: HEADER_SIZE + length]
        return out

    def close(self) -> None:
        """The stream ended: refuse a partial frame (``truncated_frame``)."""
        if self._buf:
            raise FrameError(f"stream ended inside a frame ({len(self._buf)} bytes pending)", "truncated_frame")
