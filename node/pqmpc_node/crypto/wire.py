"""A strict length-prefixed binary codec shared by the log, KEM key and envelope formats.

Every field is either a fixed-width big-endian integer or a byte string with a
4-byte length prefix and an explicit upper bound. The reader refuses short input,
lengths over their bound and trailing bytes, always with :class:`WireFormatError`.
"""

from __future__ import annotations

import struct

__all__ = ["Reader", "WireFormatError", "put_bytes", "put_str", "put_u8", "put_u32", "put_u64"]


class WireFormatError(ValueError):
    """Bytes that do not follow the expected format."""


def put_u8(v: int) -> bytes:
    """One unsigned byte."""
    return struct.pack(">B", v)


def put_u32(v: int) -> bytes:
    """A 32-bit unsigned big-endian integer."""
    return struct.pack(">I", v)


def put_u64(v: int) -> bytes:
    """A 64-bit unsigned big-endian integer."""
    return struct.pack(">Q", v)


def put_bytes(b: bytes) -> bytes:
    """A byte string with a 4-byte length prefix."""
    return struct.pack(">I", len(b)) + b


def put_str(s: str) -> bytes:
    """A UTF-8 string with a 4-byte length prefix."""
    return put_bytes(s.encode("utf-8"))


class Reader:
    """Consumes a buffer field by field; call :meth:`finish` to refuse trailing bytes."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise WireFormatError(f"{self._what} is truncated (needed {n} more bytes at offset {self._pos})")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def magic(self, expected: bytes) -> None:
        """Require the format's magic bytes."""
        if self._take(len(expected)) != expected:
            raise WireFormatError(f"{self._what} does not start with {expected!r}")

    def u8(self) -> int:
        """One unsigned byte."""
        return int(struct.unpack(">B", self._take(1))[0])

    def u32(self) -> int:
        """A 32-bit unsigned integer."""
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        """A 64-bit unsigned integer."""
        return int(struct.unpack(">Q", self._take(8))[0])

    def fixed(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        return self._take(n)

    def bytes(self, max_len: int, field: str) -> bytes:
        """A length-prefixed byte string of at most ``max_len`` bytes."""
        n = self.u32()
        if n > max_len:
            raise WireFormatError(f"{self._what} field {field} is {n} bytes; the limit is {max_len}")
        return self._take(n)

    def str(self, max_len: int, field: str) -> str:
        """A length-prefixed UTF-8 string of at most ``max_len`` bytes."""
        raw = self.bytes(max_len, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WireFormatError(f"{self._what} field {field} is not UTF-8") from None

    def finish(self) -> None:
        """Refuse trailing bytes."""
        if self._pos != len(self._data):
            raise WireFormatError(f"{self._what} has {len(self._data) - self._pos} trailing bytes")
