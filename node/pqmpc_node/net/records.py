"""TLS records on pyOpenSSL memory BIOs, many per OpenSSL call (see :class:`RecordIO`).

Shared by the peer links (:mod:`pqmpc_node.net.link`) and the HTTPS layer
(:mod:`pqmpc_node.net.https`): both run TLS in memory BIOs and move the ciphertext
over sockets the event loop (or the caller) owns.
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi  # pyOpenSSL's cffi binding: the record fast path, see RecordIO
from OpenSSL._util import lib as _lib

__all__ = ["READ_CHUNK", "RECORD_SLACK", "WRITE_CHUNK", "RecordIO", "handshake_reason"]

READ_CHUNK = 1 << 20
"""Ciphertext read from a socket per call."""
WRITE_CHUNK = 1 << 20
"""Plaintext encrypted per ``SSL_write`` (64 records) before handing ciphertext to the socket."""
RECORD_SLACK = 2 * (16 * 1024 + 256)
"""Plaintext OpenSSL may hold beyond the pending ciphertext: a partial record."""


class RecordIO:
    """Many TLS records per call on pyOpenSSL memory BIOs, without an exception per call.

    pyOpenSSL's ``send``/``recv``/``bio_read`` handle one record or one buffer per call and
    signal "nothing more" by raising ``WantReadError``; at 16 KiB records that dominated a
    link's cost. Here the same OpenSSL calls are made through pyOpenSSL's own cffi
    binding: partial writes are turned off so one ``SSL_write`` encrypts a whole chunk,
    ciphertext is drained with one ``BIO_read`` of exactly what is pending, and
    ``SSL_read`` is looped into one preallocated buffer until ``SSL_ERROR_WANT_READ``.
    Any other error goes to pyOpenSSL's own error mapping, so failures raise the same
    :class:`OpenSSL.SSL.Error` subclasses as before. Every security check (handshake,
    certificate, record MAC) stays in OpenSSL. Where the binding lacks a piece (another
    pyOpenSSL version), the public one-record API is used instead.
    """

    def __init__(self, conn: SSL.Connection) -> None:
        self.conn = conn
        self._ssl = getattr(conn, "_ssl", None)
        self._from_ssl = getattr(conn, "_from_ssl", None)
        self._into_ssl = getattr(conn, "_into_ssl", None)
        self.fast = (
            self._ssl is not None and self._from_ssl is not None and self._into_ssl is not None
            and hasattr(conn, "_raise_ssl_error")
            and all(hasattr(_lib, f) for f in ("SSL_clear_mode", "BIO_get_mem_data", "SSL_pending", "SSL_get_error"))
        )
        if self.fast:
            _lib.SSL_clear_mode(self._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)

    def _raise(self, result: int) -> None:
        self.conn._raise_ssl_error(self._ssl, result)
        raise SSL.Error(f"OpenSSL call failed ({result}) without an error")  # not reached: the above raises

    def ciphertext(self) -> bytes | bytearray:
        """All ciphertext OpenSSL has produced so far (b"" when none)."""
        if not self.fast:
            out = bytearray()
            while True:
                try:
                    chunk = self.conn.bio_read(1 << 20)
                except SSL.WantReadError:
                    return out
                if not chunk:
                    return out
                out += chunk
        n = int(_lib.BIO_get_mem_data(self._from_ssl, _ffi.NULL))
        if n <= 0:
            return b""
        out = bytearray(n)
        got = int(_lib.BIO_read(self._from_ssl, _ffi.from_buffer(out), n))
        if got != n:
            del out[max(got, 0):]
        return out

    def encrypt(self, data: memoryview) -> None:
        """Encrypt all of ``data`` into the outgoing BIO (read it back with :meth:`ciphertext`)."""
        if not self.fast:
            while data:
                n = self.conn.send(data)
                data = data[n:]
            return
        with _ffi.from_buffer(data) as ptr:
            off, total = 0, len(data)
            while off < total:
                n = int(_lib.SSL_write(self._ssl, ptr + off, total - off))
                if n <= 0:
                    self._raise(n)
                off += n

    def decrypt(self) -> tuple[bytearray, bool]:
        """All plaintext decryptable from the ciphertext fed so far, and whether close_notify came."""
        if not self.fast:
            plain = bytearray()
            while True:
                try:
                    plain += self.conn.recv(1 << 20)
                except SSL.WantReadError:
                    return plain, False
                except SSL.ZeroReturnError:
                    return plain, True
        # Plaintext is never longer than the ciphertext it comes from: what waits in the
        # BIO, plus a record OpenSSL may have started reading, plus what it has decrypted.
        cap = int(_lib.BIO_get_mem_data(self._into_ssl, _ffi.NULL)) + int(_lib.SSL_pending(self._ssl)) + RECORD_SLACK
        buf = bytearray(cap)
        off, closed = 0, False
        with _ffi.from_buffer(buf) as ptr:
            while off < cap:
                n = int(_lib.SSL_read(self._ssl, ptr + off, cap - off))
                if n > 0:
                    off += n
                    continue
                err = int(_lib.SSL_get_error(self._ssl, n))
                if err == _lib.SSL_ERROR_WANT_READ:
                    break
                if err == _lib.SSL_ERROR_ZERO_RETURN:
                    closed = True
                    break
                self._raise(n)
        del buf[off:]
        return buf, closed


def handshake_reason(exc: SSL.Error) -> str:
    """Map a failed handshake's OpenSSL error to our reason label (``no_shared_group``, ...)."""
    text = str(exc).lower()
    if "key share" in text or "shared group" in text or "no suitable" in text or "handshake failure" in text:
        return "no_shared_group"
    if "unknown ca" in text or "certificate verify failed" in text or "bad certificate" in text:
        return "peer_rejected_certificate"
    if "expired" in text:
        return "peer_rejected_expired"
    return "handshake_failed"
