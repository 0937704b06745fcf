"""Sealed envelopes: data owner → node (inputs) and node → recipient (outputs).

Construction (docs/architecture.md "Cryptography", row "Data owner → node"): HPKE
(RFC 9180) base mode with the suite's KEM (X-Wing for ``pq-default``), sealed to the
recipient's certified KEM key.

Steps of :func:`seal_envelope`:

1. Encode the header (suite, session id, node id, party index, input id, key epoch,
   sender id, the SHA-256 fingerprint of the sender's ML-DSA key, and the digest and
   generation of the signed session plan the sender verified: an envelope is valid
   under that plan only, so a re-plan with other parties, program or output policy
   cannot reuse it).
2. HPKE-seal the plaintext with the encoded header as HPKE ``info``. pyca's public
   single-shot API has no AAD parameter; ``info`` enters the key schedule (RFC 9180
   §5.1), so any change to the header makes decryption fail, which is the binding AAD
   would give.
3. Sign ``header ‖ ciphertext`` with the sender's ML-DSA key under
   :data:`ENVELOPE_SIGNATURE_CONTEXT`.

:func:`open_envelope` checks, in order: size and format, session / plan / node / party,
known sender, signature, key epoch, replay, decryption; each refusal is an
:class:`EnvelopeError` with a ``reason`` label. :func:`open_envelope_counted` does the
same and counts every refusal's reason into a :class:`RefusalSink` (the node's
:class:`~pqmpc_node.net.counters.RefusalCounters`) before re-raising it, so a caller
cannot forget the metric.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag

from pqmpc_node.crypto.kemkeys import KemKeyPair, KemPublicKey, KeyRetiredError, UnknownEpochError
from pqmpc_node.crypto.suites import MLDSAPrivateKey, MLDSAPublicKey, Suite, SuiteName
from pqmpc_node.crypto.wire import Reader, WireFormatError, put_bytes, put_str, put_u32, put_u64

__all__ = [
    "BadEnvelopeSignatureError",
    "DecryptionError",
    "ENVELOPE_INFO_PREFIX",
    "ENVELOPE_SIGNATURE_CONTEXT",
    "EnvelopeError",
    "EnvelopeHeader",
    "EnvelopeTooLargeError",
    "KemKeySource",
    "MAX_ENVELOPE_BYTES",
    "MalformedEnvelopeError",
    "OpenedEnvelope",
    "RefusalSink",
    "ReplayError",
    "ReplayGuard",
    "RetiredKeyError",
    "SealedEnvelope",
    "UnknownSenderError",
    "UnsignedEnvelopeError",
    "WrongEpochError",
    "WrongNodeError",
    "WrongPartyError",
    "WrongPlanError",
    "WrongSessionError",
    "key_fingerprint",
    "open_envelope",
    "open_envelope_counted",
    "seal_envelope",
]

ENVELOPE_SIGNATURE_CONTEXT = b"pqmpc/v1/envelope-signature"
ENVELOPE_INFO_PREFIX = b"pqmpc/v1/envelope"
_MAGIC = b"PQE2"  # PQE2: the header binds the plan digest and generation
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
_MAX_ID = 256
_MAX_SIG = 8 * 1024


class EnvelopeError(Exception):
    """An envelope was refused; ``reason`` is the metric label."""

    reason: ClassVar[str] = "invalid_envelope"


class MalformedEnvelopeError(EnvelopeError):
    """Not a well-formed envelope."""

    reason = "malformed"


class EnvelopeTooLargeError(EnvelopeError):
    """Over the size limit."""

    reason = "too_large"


class WrongSessionError(EnvelopeError):
    """Sealed for another session."""

    reason = "wrong_session"


class WrongPlanError(EnvelopeError):
    """Sealed under another version of the session's plan (another digest or generation)."""

    reason = "wrong_plan"


class WrongNodeError(EnvelopeError):
    """Sealed for another node."""

    reason = "wrong_node"


class WrongPartyError(EnvelopeError):
    """Sealed for another party index."""

    reason = "wrong_party"


class WrongEpochError(EnvelopeError):
    """Sealed to a KEM key epoch this node never had."""

    reason = "wrong_epoch"


class RetiredKeyError(EnvelopeError):
    """Sealed to a KEM key whose grace period is over."""

    reason = "kem_key_retired"


class UnknownSenderError(EnvelopeError):
    """From a sender that is not expected, or with a key other than the registered one."""

    reason = "unknown_sender"


class UnsignedEnvelopeError(EnvelopeError):
    """No signature."""

    reason = "unsigned"


class BadEnvelopeSignatureError(EnvelopeError):
    """The signature does not verify under the sender's registered key."""

    reason = "bad_signature"


class ReplayError(EnvelopeError):
    """This (session, sender, input id) was already accepted."""

    reason = "replay"


class DecryptionError(EnvelopeError):
    """HPKE decryption failed (tampered ciphertext or tag, wrong key)."""

    reason = "decrypt_failed"


def key_fingerprint(public_key: MLDSAPublicKey) -> bytes:
    """SHA-256 of the raw ML-DSA public key: how an envelope names its sender's key."""
    return hashlib.sha256(public_key.public_bytes_raw()).digest()


@dataclass(frozen=True)
class EnvelopeHeader:
    """Everything the envelope binds; encoded, it is the HPKE info and part of the signed bytes."""

    suite: SuiteName
    session_id: str
    node_id: str
    party_index: int
    input_id: str
    key_epoch: int
    sender: str
    sender_key_fingerprint: bytes
    plan_digest: bytes
    """SHA-256 of the canonical signed plan (:meth:`~pqmpc_node.plan.SessionPlan.digest`), raw."""
    generation: int

    def encode(self) -> bytes:
        """Canonical encoding."""
        for name in ("session_id", "node_id", "input_id", "sender"):
            if not 0 < len(getattr(self, name).encode()) <= _MAX_ID:
                raise ValueError(f"envelope {name} must be 1..{_MAX_ID} bytes")
        if not 0 <= self.party_index < 2**32 or not 0 <= self.key_epoch < 2**64:
            raise ValueError("party_index or key_epoch out of range")
        if len(self.sender_key_fingerprint) != 32 or len(self.plan_digest) != 32:
            raise ValueError("sender_key_fingerprint and plan_digest must be 32 bytes")
        if not 0 < self.generation < 2**64:
            raise ValueError("generation out of range")
        return (
            _MAGIC + put_str(self.suite.value) + put_str(self.session_id) + put_str(self.node_id)
            + put_u32(self.party_index) + put_str(self.input_id) + put_u64(self.key_epoch)
            + put_str(self.sender) + self.sender_key_fingerprint + self.plan_digest + put_u64(self.generation)
        )

    @classmethod
    def _read(cls, r: Reader) -> EnvelopeHeader:
        r.magic(_MAGIC)
        suite_raw = r.str(32, "suite")
        try:
            suite = SuiteName(suite_raw)
        except ValueError:
            raise WireFormatError(f"envelope names unknown suite {suite_raw!r}") from None
        session, node = r.str(_MAX_ID, "session_id"), r.str(_MAX_ID, "node_id")
        party = r.u32()
        input_id = r.str(_MAX_ID, "input_id")
        epoch = r.u64()
        sender = r.str(_MAX_ID, "sender")
        fp = r.fixed(32)
        plan_digest = r.fixed(32)
        generation = r.u64()
        for name, v in (("session_id", session), ("node_id", node), ("input_id", input_id), ("sender", sender)):
            if not v:
                raise WireFormatError(f"envelope {name} is empty")
        if generation == 0:
            raise WireFormatError("envelope plan generation is 0")
        return cls(suite, session, node, party, input_id, epoch, sender, fp, plan_digest, generation)


@dataclass(frozen=True)
class SealedEnvelope:
    """A parsed envelope: header, HPKE ciphertext (enc ‖ ct), signature (may be empty)."""

    header: EnvelopeHeader
    ciphertext: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """Serialise."""
        return self.header.encode() + put_bytes(self.ciphertext) + put_bytes(self.signature)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> SealedEnvelope:
        """Strict parse; raises :class:`EnvelopeTooLargeError` or :class:`MalformedEnvelopeError`."""
        if len(data) > max_bytes:
            raise EnvelopeTooLargeError(f"envelope is {len(data)} bytes; the limit is {max_bytes}")
        try:
            r = Reader(data, "envelope")
            header = EnvelopeHeader._read(r)
            ct = r.bytes(max_bytes, "ciphertext")
            sig = r.bytes(_MAX_SIG, "signature")
            r.finish()
        except WireFormatError as exc:
            raise MalformedEnvelopeError(str(exc)) from None
        return cls(header, ct, sig)

    def signed_bytes(self) -> bytes:
        """What the sender signs."""
        return self.header.encode() + put_bytes(self.ciphertext)


class KemKeySource(Protocol):
    """Where the opener finds the private KEM key of an epoch (a :class:`KemKeyRing`)."""

    def keypair_for(self, epoch: int, *, now: dt.datetime) -> KemKeyPair:
        """The key pair, or :class:`KeyRetiredError` / :class:`UnknownEpochError`."""
        ...


def seal_envelope(
    plaintext: bytes,
    *,
    suite: Suite,
    header: EnvelopeHeader,
    recipient_key: KemPublicKey,
    sender_key: MLDSAPrivateKey,
) -> bytes:
    """Seal and sign ``plaintext`` for the recipient named in ``header``."""
    if header.suite is not suite.name:
        raise ValueError(f"header names suite {header.suite.value}, sealing with {suite.name.value}")
    if not hmac.compare_digest(header.sender_key_fingerprint, key_fingerprint(sender_key.public_key())):
        raise ValueError("header.sender_key_fingerprint is not the fingerprint of sender_key")
    info = ENVELOPE_INFO_PREFIX + header.encode()
    ct = suite.hpke_suite().encrypt(plaintext, recipient_key, info)
    env = SealedEnvelope(header, ct, b"")
    if len(env.to_bytes()) + _MAX_SIG > MAX_ENVELOPE_BYTES:
        raise ValueError(f"plaintext too large for an envelope (limit {MAX_ENVELOPE_BYTES} bytes)")
    sig = sender_key.sign(env.signed_bytes(), ENVELOPE_SIGNATURE_CONTEXT)
    return SealedEnvelope(header, ct, sig).to_bytes()


class ReplayGuard:
    """Remembers accepted (session, sender, input id) triples and refuses them again."""

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        self._seen: dict[str, set[tuple[str, str]]] = {}
        self._count = 0
        self._max = max_entries

    def seen(self, session_id: str, sender: str, input_id: str) -> bool:
        """Whether this triple was accepted before."""
        return (sender, input_id) in self._seen.get(session_id, set())

    def record(self, session_id: str, sender: str, input_id: str) -> None:
        """Remember an accepted triple; refuses new ones when full rather than forgetting old ones."""
        if self._count >= self._max:
            raise EnvelopeTooLargeError(f"replay guard is full ({self._max} ids); finish or forget sessions")
        bucket = self._seen.setdefault(session_id, set())
        if (sender, input_id) not in bucket:
            bucket.add((sender, input_id))
            self._count += 1

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's ids (its KEM fence is released too, so replays fail anyway)."""
        self._count -= len(self._seen.pop(session_id, set()))


@dataclass(frozen=True)
class OpenedEnvelope:
    """An accepted envelope."""

    header: EnvelopeHeader
    plaintext: bytes


def open_envelope(
    data: bytes,
    *,
    suite: Suite,
    session_id: str,
    plan: tuple[bytes, int],
    node_id: str,
    party_index: int | None,
    senders: Mapping[str, MLDSAPublicKey],
    keys: KemKeySource,
    replay_guard: ReplayGuard,
    now: dt.datetime,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> OpenedEnvelope:
    """Check and open an envelope addressed to (``session_id``, ``plan``, ``node_id``, ``party_index``).

    ``plan`` is the (raw digest, generation) of the plan the receiver holds.

    ``senders`` maps each expected sender id to its registered ML-DSA public key
    (``MPCSession.spec.inputs[].identity``). ``party_index=None`` accepts any index
    (output recipients). See the module docstring for the order of checks.
    """
    env = SealedEnvelope.from_bytes(data, max_bytes=max_bytes)
    h = env.header
    if h.suite is not suite.name:
        raise MalformedEnvelopeError(f"envelope uses suite {h.suite.value}; this pool uses {suite.name.value}")
    if h.session_id != session_id:
        raise WrongSessionError(f"envelope is for session {h.session_id!r}, not {session_id!r}")
    if not hmac.compare_digest(h.plan_digest, plan[0]) or h.generation != plan[1]:
        raise WrongPlanError(
            f"envelope was sealed under plan {h.plan_digest.hex()[:12]} (generation {h.generation}) of session "
            f"{session_id!r}, which now runs plan {plan[0].hex()[:12]} (generation {plan[1]}); seal it again "
            "under the current plan (re-run the submit)")
    if h.node_id != node_id:
        raise WrongNodeError(f"envelope is for node {h.node_id!r}, not {node_id!r}")
    if party_index is not None and h.party_index != party_index:
        raise WrongPartyError(f"envelope is for party {h.party_index}, not {party_index}")
    sender_key = senders.get(h.sender)
    if sender_key is None:
        raise UnknownSenderError(f"sender {h.sender!r} is not an input owner of session {session_id!r}")
    if not hmac.compare_digest(h.sender_key_fingerprint, key_fingerprint(sender_key)):
        raise UnknownSenderError(f"envelope names a key for {h.sender!r} other than the registered one")
    if not env.signature:
        raise UnsignedEnvelopeError(f"envelope from {h.sender!r} carries no signature")
    try:
        sender_key.verify(env.signature, env.signed_bytes(), ENVELOPE_SIGNATURE_CONTEXT)
    except InvalidSignature:
        raise BadEnvelopeSignatureError(f"signature does not verify under {h.sender!r}'s registered key") from None
    try:
        keypair = keys.keypair_for(h.key_epoch, now=now)
    except UnknownEpochError as exc:
        raise WrongEpochError(str(exc)) from None
    except KeyRetiredError as exc:
        raise RetiredKeyError(str(exc)) from None
    if replay_guard.seen(h.session_id, h.sender, h.input_id):
        raise ReplayError(f"input {h.input_id!r} from {h.sender!r} was already accepted in session {h.session_id!r}")
    try:
        plaintext = suite.hpke_suite().decrypt(env.ciphertext, keypair.private_key, ENVELOPE_INFO_PREFIX + h.encode())
    except (InvalidTag, ValueError):
        raise DecryptionError("HPKE decryption failed: ciphertext or tag altered, or sealed to another key") from None
    replay_guard.record(h.session_id, h.sender, h.input_id)
    return OpenedEnvelope(h, plaintext)


class RefusalSink(Protocol):
    """Where refusals are counted by reason label (:class:`~pqmpc_node.net.counters.RefusalCounters`)."""

    def count(self, reason: str) -> None:
        """Add one refusal for ``reason``."""
        ...


def open_envelope_counted(
    data: bytes,
    *,
    counters: RefusalSink,
    suite: Suite,
    session_id: str,
    plan: tuple[bytes, int],
    node_id: str,
    party_index: int | None,
    senders: Mapping[str, MLDSAPublicKey],
    keys: KemKeySource,
    replay_guard: ReplayGuard,
    now: dt.datetime,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> OpenedEnvelope:
    """:func:`open_envelope`, counting the reason of any refusal into ``counters`` (once) before re-raising it."""
    try:
        return open_envelope(
            data, suite=suite, session_id=session_id, plan=plan, node_id=node_id, party_index=party_index, senders=senders,
            keys=keys, replay_guard=replay_guard, now=now, max_bytes=max_bytes,
        )
    except EnvelopeError as exc:
        counters.count(exc.reason)
        raise
