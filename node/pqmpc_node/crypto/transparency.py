"""Key transparency: a hash-chained, CA-signed log of every certificate and KEM key.

Design (after Certificate Transparency, RFC 9162, simplified to a hash chain because
pools are small and every verifier holds the whole log from the key directory):

1. The CA side (:class:`TransparencyLog`) appends an entry per issued node certificate
   and per certified KEM key: ``h_i = SHA-256(ctx || i || kind || time || h_{i-1} || payload)``.
2. It publishes a signed tree head (size, head hash, time) signed by the CA under
   :data:`STH_CONTEXT`.
3. A verifier (:class:`LogVerifier`) recomputes the chain, checks the signature,
   accepts only append-only extensions, and refuses any key absent from the log
   (:class:`~pqmpc_node.crypto.pki.NotInLogError`): a rogue issuance becomes visible
   because it must be logged to be accepted.
4. The operator pushes, and clients fetch, a copy of the log as a :class:`LogBundle`
   (JSON: base64 entries and tree head); node, operator and client SDK share this one
   wire form, so it lives here and not in the node's keystore.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from pqmpc_node.crypto.pki import CertificateError, NotInLogError, PoolCA
from pqmpc_node.crypto.suites import MLDSAPublicKey
from pqmpc_node.crypto.wire import Reader, WireFormatError, put_bytes, put_u8, put_u32, put_u64

__all__ = [
    "EntryKind",
    "LogBundle",
    "LogEntry",
    "LogForkError",
    "LogIntegrityError",
    "LogVerifier",
    "MalformedLogError",
    "STH_CONTEXT",
    "SignedTreeHead",
    "TransparencyLog",
    "require_same_history",
]

STH_CONTEXT = b"pqmpc/v1/transparency-tree-head"
_ENTRY_CONTEXT = b"pqmpc/v1/transparency-entry"
_ENTRY_MAGIC = b"PQL1"
_STH_MAGIC = b"PQH1"
MAX_PAYLOAD_BYTES = 32 * 1024
MAX_SIGNATURE_BYTES = 8 * 1024
_GENESIS = bytes(32)


class EntryKind(enum.IntEnum):
    """What a log entry records."""

    NODE_CERTIFICATE = 1
    KEM_KEY_CERTIFICATE = 2


class LogIntegrityError(CertificateError):
    """The log or its tree head does not verify (broken chain, bad signature, rewrite)."""

    reason = "log_inconsistent"


class MalformedLogError(CertificateError):
    """A pushed or fetched copy of the log is not the documented JSON (bad base64, bad entry)."""

    reason = "malformed"


def _unix(now: dt.datetime) -> int:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp())


@dataclass(frozen=True)
class LogEntry:
    """One log entry; ``entry_hash`` chains it to its predecessor."""

    index: int
    kind: EntryKind
    timestamp: int
    prev_hash: bytes
    payload: bytes

    @property
    def entry_hash(self) -> bytes:
        """The chained hash of this entry."""
        h = hashlib.sha256(_ENTRY_CONTEXT)
        h.update(put_u64(self.index) + put_u8(self.kind) + put_u64(self.timestamp) + self.prev_hash)
        h.update(put_bytes(self.payload))
        return h.digest()

    def to_bytes(self) -> bytes:
        """Serialise (the key directory ConfigMap carries these)."""
        return (
            _ENTRY_MAGIC + put_u64(self.index) + put_u8(self.kind) + put_u64(self.timestamp)
            + self.prev_hash + put_bytes(self.payload)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LogEntry:
        """Strict parse; raises :class:`WireFormatError` on anything unexpected."""
        r = Reader(data, "log entry")
        r.magic(_ENTRY_MAGIC)
        index = r.u64()
        kind_raw = r.u8()
        try:
            kind = EntryKind(kind_raw)
        except ValueError:
            raise WireFormatError(f"log entry kind {kind_raw} is unknown") from None
        ts = r.u64()
        prev = r.fixed(32)
        payload = r.bytes(MAX_PAYLOAD_BYTES, "payload")
        r.finish()
        return cls(index, kind, ts, prev, payload)


@dataclass(frozen=True)
class SignedTreeHead:
    """The CA's signed statement of the log's size and head hash at a time."""

    size: int
    head_hash: bytes
    timestamp: int
    signature: bytes

    @staticmethod
    def signed_bytes(size: int, head_hash: bytes, timestamp: int) -> bytes:
        """The bytes the CA signs."""
        return _STH_MAGIC + put_u64(size) + head_hash + put_u64(timestamp)

    def to_bytes(self) -> bytes:
        """Serialise."""
        return self.signed_bytes(self.size, self.head_hash, self.timestamp) + put_bytes(self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTreeHead:
        """Strict parse."""
        r = Reader(data, "signed tree head")
        r.magic(_STH_MAGIC)
        size = r.u64()
        head = r.fixed(32)
        ts = r.u64()
        sig = r.bytes(MAX_SIGNATURE_BYTES, "signature")
        r.finish()
        return cls(size, head, ts, sig)


@dataclass(frozen=True)
class LogBundle:
    """A copy of the transparency log as the operator pushes it and clients fetch it."""

    entries: tuple[LogEntry, ...]
    tree_head: SignedTreeHead

    def to_json(self) -> dict[str, Any]:
        """``{"entries": [base64], "treeHead": base64}``."""
        return {
            "entries": [base64.b64encode(e.to_bytes()).decode() for e in self.entries],
            "treeHead": base64.b64encode(self.tree_head.to_bytes()).decode(),
        }

    @classmethod
    def from_json(cls, raw: Any, *, max_entries: int = 100_000) -> LogBundle:
        """Strict parse; :class:`MalformedLogError` on anything wrong (signatures are not checked here)."""
        try:
            entries_raw = raw["entries"]
            if not isinstance(entries_raw, list) or len(entries_raw) > max_entries:
                raise TypeError("entries must be a list")
            entries = tuple(LogEntry.from_bytes(base64.b64decode(e, validate=True)) for e in entries_raw)
            head = SignedTreeHead.from_bytes(base64.b64decode(raw["treeHead"], validate=True))
        except (KeyError, TypeError, ValueError, WireFormatError) as exc:
            raise MalformedLogError(f"log must be {{entries: [base64], treeHead: base64}}: {exc}") from None
        return cls(entries, head)


class TransparencyLog:
    """The CA-side append-only log (held by the operator next to the CA key)."""

    def __init__(self, ca: PoolCA) -> None:
        self._ca = ca
        self._entries: list[LogEntry] = []

    @property
    def entries(self) -> tuple[LogEntry, ...]:
        """All entries in order."""
        return tuple(self._entries)

    @property
    def head_hash(self) -> bytes:
        """The hash of the latest entry (32 zero bytes when empty)."""
        return self._entries[-1].entry_hash if self._entries else _GENESIS

    def append(self, kind: EntryKind, payload: bytes, *, now: dt.datetime) -> LogEntry:
        """Append ``payload`` (a certificate's DER or a KEM key certificate)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"log payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        entry = LogEntry(len(self._entries), kind, _unix(now), self.head_hash, payload)
        self._entries.append(entry)
        return entry

    def signed_tree_head(self, *, now: dt.datetime) -> SignedTreeHead:
        """Sign the current head."""
        ts = _unix(now)
        size, head = len(self._entries), self.head_hash
        return SignedTreeHead(size, head, ts, self._ca.sign(SignedTreeHead.signed_bytes(size, head, ts), STH_CONTEXT))


class LogVerifier:
    """A verifier's copy of the log, checked against a CA-signed tree head."""

    def __init__(self, ca_public_key: MLDSAPublicKey) -> None:
        self._ca_public_key = ca_public_key
        self._entries: list[LogEntry] = []
        self._index: set[tuple[EntryKind, bytes]] = set()

    @property
    def size(self) -> int:
        """How many entries have been verified."""
        return len(self._entries)

    def chain(self) -> tuple[bytes, ...]:
        """The entry hashes of the verified log, in order (its history, for fork checks)."""
        return tuple(e.entry_hash for e in self._entries)

    def update(self, entries: Sequence[LogEntry], tree_head: SignedTreeHead) -> None:
        """Accept a longer log that extends the one already verified (append-only).

        Steps: the first ``size`` entries must equal those already held; recompute the
        chain over all entries; the head hash and size must match the tree head; the
        tree head's signature must verify under the CA key.
        """
        if len(entries) < len(self._entries):
            raise LogIntegrityError(f"log shrank from {len(self._entries)} to {len(entries)} entries")
        for old, new in zip(self._entries, entries):
            if old != new:
                raise LogIntegrityError(f"log entry {old.index} was rewritten")
        prev = _GENESIS
        for i, e in enumerate(entries):
            if e.index != i or not hmac.compare_digest(e.prev_hash, prev):
                raise LogIntegrityError(f"log chain breaks at entry {i}")
            prev = e.entry_hash
        if tree_head.size != len(entries) or not hmac.compare_digest(tree_head.head_hash, prev):
            raise LogIntegrityError("signed tree head does not match the log")
        signed = SignedTreeHead.signed_bytes(tree_head.size, tree_head.head_hash, tree_head.timestamp)
        try:
            self._ca_public_key.verify(tree_head.signature, signed, STH_CONTEXT)
        except InvalidSignature:
            raise LogIntegrityError("signed tree head signature does not verify under the pool CA key") from None
        self._entries = list(entries)
        self._index = {(e.kind, hashlib.sha256(e.payload).digest()) for e in entries}

    def contains(self, kind: EntryKind, payload: bytes) -> bool:
        """Whether ``payload`` of ``kind`` is in the verified log."""
        return (kind, hashlib.sha256(payload).digest()) in self._index

    def require_node_certificate(self, der: bytes) -> None:
        """Raise :class:`NotInLogError` unless this certificate was logged."""
        if not self.contains(EntryKind.NODE_CERTIFICATE, der):
            raise NotInLogError("node certificate is not in the transparency log (possible rogue issuance)")

    def require_kem_key_certificate(self, data: bytes) -> None:
        """Raise :class:`NotInLogError` unless this KEM key certificate was logged."""
        if not self.contains(EntryKind.KEM_KEY_CERTIFICATE, data):
            raise NotInLogError("KEM key certificate is not in the transparency log")


class LogForkError(LogIntegrityError):
    """Two CA-signed views of the log disagree on their common history (a split view)."""

    reason = "log_fork"


def require_same_history(seen: Sequence[bytes], other: Sequence[bytes], *, what: str) -> tuple[bytes, ...]:
    """Two verified views of the log, as their chains of entry hashes, must share history.

    Each entry's hash covers its predecessor's, so two chains agree on their common
    prefix exactly when they agree at its last index. A CA that signs two different
    logs (or a node that serves a fork) shows two valid views that differ there; a view
    that is merely older or newer is fine. Returns the longer chain (the history to
    remember); raises :class:`LogForkError` naming ``what`` otherwise.
    """
    common = min(len(seen), len(other))
    if common and not hmac.compare_digest(seen[common - 1], other[common - 1]):
        raise LogForkError(f"{what}: the transparency log forks at entry {common - 1} from the log seen before "
                           "(the pool CA signed two different histories); refusing to trust either. Report it to "
                           "the pool's operators")
    return tuple(seen if len(seen) >= len(other) else other)
