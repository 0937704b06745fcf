"""Node KEM keys: one X-Wing key pair per node and epoch, certified and rotated.

Protocol (docs/architecture.md "Cryptography", row "Node KEM keys"; docs/crypto.md):

1. A node derives an envelope KEM key pair from a fresh 32-byte seed (X-Wing key
   generation, draft-connolly-cfrg-xwing-kem §5.2: SHAKE256(seed, 96) → ML-KEM-768
   d‖z and the X25519 scalar).
2. It signs a key certificate (node id, epoch, not-before/not-after, public key) with
   its ML-DSA identity key under :data:`KEM_KEY_CERT_CONTEXT`; the operator appends it
   to the transparency log.
3. Clients verify CA → node certificate → KEM key certificate → log
   (:func:`verify_kem_key_certificate`) before sealing to the key.
4. :class:`KemKeyRing` keeps current / next / retiring keys; a retiring private key is
   dropped once its grace period is over unless a running session holds a fence.

Private keys stay in memory only: nothing here serialises them.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography import x509

from pqmpc_node.crypto.pki import (
    CertificateError,
    ExpiredCertificateError,
    InclusionChecker,
    MalformedCertificateError,
    NodeId,
    NodeIdentity,
    NotYetValidError,
    Rng,
    VerifiedNode,
    WrongIdentityError,
    verify_node_certificate,
)
from pqmpc_node.crypto.suites import EnvelopeKem, Suite, SuiteName, get_suite
from pqmpc_node.crypto.wire import Reader, WireFormatError, put_bytes, put_str, put_u64

__all__ = [
    "BadKeySignatureError",
    "KEM_KEY_CERT_CONTEXT",
    "KemKeyCertificate",
    "KemKeyPair",
    "KemKeyRing",
    "KemLogChecker",
    "KemPrivateKey",
    "KemPublicKey",
    "MissingKemKeyError",
    "KeyRetiredError",
    "KeyRotationPolicy",
    "KeyState",
    "UnknownEpochError",
    "RotationReport",
    "SessionId",
    "VerifiedKemKey",
    "VerifiedKeys",
    "kem_public_key_from_bytes",
    "verify_kem_key_certificate",
    "verify_keys_document",
]

KEM_KEY_CERT_CONTEXT = b"pqmpc/v1/kem-key-certificate"
_MAGIC = b"PQK1"
MAX_KEM_CERT_BYTES = 16 * 1024
SessionId = str
KemPrivateKey = Union[hpke.MLKEM768X25519PrivateKey, hpke.MLKEM1024P384PrivateKey]
KemPublicKey = Union[hpke.MLKEM768X25519PublicKey, hpke.MLKEM1024P384PublicKey]
_PUBLIC_LEN = {EnvelopeKem.XWING: 1184 + 32, EnvelopeKem.MLKEM1024_P384: 1568 + 97}


class BadKeySignatureError(CertificateError):
    """A KEM key certificate whose signature does not verify under the node's identity."""

    reason = "bad_signature"


class KeyRetiredError(Exception):
    """A KEM key epoch whose private key is gone (past its grace period) or never existed."""

    reason: ClassVar[str] = "kem_key_retired"


class UnknownEpochError(KeyRetiredError):
    """A KEM key epoch this node never had (an envelope for another epoch or node)."""

    reason = "wrong_epoch"


def _unix(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return int(t.timestamp())


def kem_public_key_from_bytes(kem: EnvelopeKem, data: bytes) -> KemPublicKey:
    """Parse an envelope KEM public key (X-Wing: ML-KEM-768 key ‖ X25519 key)."""
    if len(data) != _PUBLIC_LEN[kem]:
        raise ValueError(f"{kem.value} public key must be {_PUBLIC_LEN[kem]} bytes, got {len(data)}")
    if kem is EnvelopeKem.XWING:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:1184]),
            x25519.X25519PublicKey.from_public_bytes(data[1184:]),
        )
    return hpke.MLKEM1024P384PublicKey(
        mlkem.MLKEM1024PublicKey.from_public_bytes(data[:1568]),
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), data[1568:]),
    )


@dataclass(frozen=True)
class KemKeyPair:
    """An envelope KEM key pair; the private half never appears in ``repr``."""

    kem: EnvelopeKem
    public_bytes: bytes
    private_key: KemPrivateKey = field(repr=False)

    @classmethod
    def from_seed(cls, kem: EnvelopeKem, seed: bytes) -> KemKeyPair:
        """Derive a key pair from a 32-byte seed (X-Wing: draft-connolly-cfrg-xwing-kem §5.2)."""
        if len(seed) != 32:
            raise ValueError(f"a KEM key seed is 32 bytes, got {len(seed)}")
        if kem is EnvelopeKem.XWING:
            expanded = hashlib.shake_256(seed).digest(96)
            mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
            xk = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
            public = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
            return cls(kem, public, hpke.MLKEM768X25519PrivateKey(mk, xk))
        # ML-KEM-1024 + P-384: same expansion idea, P-384 scalar reduced into [1, n-1].
        expanded = hashlib.shake_256(b"pqmpc/v1/mlkem1024-p384" + seed).digest(64 + 64)
        mk1024 = mlkem.MLKEM1024PrivateKey.from_seed_bytes(expanded[:64])
        order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
        scalar = int.from_bytes(expanded[64:], "big") % (order - 1) + 1
        pk = ec.derive_private_key(scalar, ec.SECP384R1())
        public = mk1024.public_key().public_bytes_raw() + pk.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        return cls(kem, public, hpke.MLKEM1024P384PrivateKey(mk1024, pk))

    def public_key(self) -> KemPublicKey:
        """The public key object for HPKE."""
        return kem_public_key_from_bytes(self.kem, self.public_bytes)


@dataclass(frozen=True)
class KemKeyCertificate:
    """A node's statement, signed by its identity key, that it holds this KEM key."""

    suite: SuiteName
    node_id: NodeId
    epoch: int
    not_before: int
    not_after: int
    public_key: bytes
    signature: bytes

    @staticmethod
    def signed_bytes(suite: SuiteName, node_id: NodeId, epoch: int, nb: int, na: int, public_key: bytes) -> bytes:
        """What the identity key signs."""
        return (
            _MAGIC + put_str(suite.value) + put_str(node_id) + put_u64(epoch) + put_u64(nb)
            + put_u64(na) + put_bytes(public_key)
        )

    def to_bytes(self) -> bytes:
        """Serialise."""
        return (
            self.signed_bytes(self.suite, self.node_id, self.epoch, self.not_before, self.not_after, self.public_key)
            + put_bytes(self.signature)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KemKeyCertificate:
        """Strict parse; raises :class:`WireFormatError`."""
        if len(data) > MAX_KEM_CERT_BYTES:
            raise WireFormatError(f"KEM key certificate is {len(data)} bytes; the limit is {MAX_KEM_CERT_BYTES}")
        r = Reader(data, "KEM key certificate")
        r.magic(_MAGIC)
        suite_raw = r.str(32, "suite")
        try:
            suite = SuiteName(suite_raw)
        except ValueError:
            raise WireFormatError(f"KEM key certificate names unknown suite {suite_raw!r}") from None
        node = r.str(253, "node_id")
        epoch, nb, na = r.u64(), r.u64(), r.u64()
        pk = r.bytes(4096, "public_key")
        sig = r.bytes(8192, "signature")
        r.finish()
        return cls(suite, NodeId(node), epoch, nb, na, pk, sig)

    @classmethod
    def issue(
        cls,
        identity: NodeIdentity,
        *,
        node_id: NodeId,
        epoch: int,
        keypair: KemKeyPair,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> KemKeyCertificate:
        """Certify ``keypair`` for ``node_id`` and ``epoch`` with the node's identity key."""
        if keypair.kem is not identity.suite.envelope_kem:
            raise ValueError(f"suite {identity.suite.name.value} certifies {identity.suite.envelope_kem.value} keys only")
        nb, na = _unix(not_before), _unix(not_after)
        if na <= nb:
            raise ValueError("not_after must be later than not_before")
        tbs = cls.signed_bytes(identity.suite.name, node_id, epoch, nb, na, keypair.public_bytes)
        return cls(identity.suite.name, node_id, epoch, nb, na, keypair.public_bytes, identity.sign(tbs, KEM_KEY_CERT_CONTEXT))


class KemLogChecker(InclusionChecker, Protocol):
    """What KEM key verification needs from a transparency-log verifier."""

    def require_kem_key_certificate(self, data: bytes) -> None:
        """Raise :class:`~pqmpc_node.crypto.pki.NotInLogError` when ``data`` is not logged."""
        ...


@dataclass(frozen=True)
class VerifiedKemKey:
    """A KEM public key a client may seal to."""

    node_id: NodeId
    epoch: int
    suite: Suite
    public_key: KemPublicKey = field(repr=False)
    public_bytes: bytes = field(repr=False)
    not_after: int


def verify_kem_key_certificate(
    data: bytes,
    *,
    node_certificate: x509.Certificate | bytes,
    ca_certificate: x509.Certificate,
    suite: Suite,
    expected_node_id: NodeId,
    log: KemLogChecker,
    now: dt.datetime,
) -> VerifiedKemKey:
    """Verify CA → node certificate → KEM key certificate → log.

    Steps: verify the node certificate (see
    :func:`~pqmpc_node.crypto.pki.verify_node_certificate`, including its log entry);
    parse the key certificate (``malformed``); suite and node id match
    (``wrong_algorithm``/``wrong_identity``); signature under the node's identity key
    with :data:`KEM_KEY_CERT_CONTEXT` (``bad_signature``); validity at ``now``; the key
    certificate itself is in the log (``not_in_log``).
    """
    node = verify_node_certificate(
        node_certificate, ca_certificate=ca_certificate, suite=suite, now=now,
        expected_node_ids={expected_node_id}, log=log,
    )
    try:
        kc = KemKeyCertificate.from_bytes(data)
    except WireFormatError as exc:
        raise MalformedCertificateError(str(exc)) from None
    if kc.suite is not suite.name:
        raise MalformedCertificateError(f"KEM key certificate is for suite {kc.suite.value}, expected {suite.name.value}")
    if kc.node_id != expected_node_id:
        raise WrongIdentityError(f"KEM key certificate names node {kc.node_id!r}; expected {expected_node_id!r}")
    tbs = KemKeyCertificate.signed_bytes(kc.suite, kc.node_id, kc.epoch, kc.not_before, kc.not_after, kc.public_key)
    try:
        node.public_key.verify(kc.signature, tbs, KEM_KEY_CERT_CONTEXT)
    except InvalidSignature:
        raise BadKeySignatureError("KEM key certificate signature does not verify under the node identity key") from None
    t = _unix(now)
    if t >= kc.not_after:
        raise ExpiredCertificateError(f"KEM key epoch {kc.epoch} expired; fetch the node's current key")
    if t < kc.not_before:
        raise NotYetValidError(f"KEM key epoch {kc.epoch} is not valid yet")
    log.require_kem_key_certificate(data)
    try:
        public = kem_public_key_from_bytes(suite.envelope_kem, kc.public_key)
    except ValueError as exc:
        raise MalformedCertificateError(f"KEM public key: {exc}") from None
    return VerifiedKemKey(kc.node_id, kc.epoch, suite, public, kc.public_key, kc.not_after)


class MissingKemKeyError(CertificateError):
    """The node publishes no KEM key of the wanted epoch (or no current one)."""

    reason = "no_kem_key"


@dataclass(frozen=True)
class VerifiedKeys:
    """A node's keys document, verified: its certificate and the KEM key to seal to."""

    node: VerifiedNode
    kem: VerifiedKemKey


def verify_keys_document(
    doc: Mapping[str, Any],
    *,
    node_id: NodeId,
    ca_certificate: x509.Certificate,
    suite: Suite,
    log: KemLogChecker,
    now: dt.datetime,
    epoch: int | None = None,
    fingerprint: str | None = None,
) -> VerifiedKeys:
    """Verify a node's ``GET /v1/keys`` document before anything is sealed to its KEM key.

    Whoever answers at a node's address may serve this document, so nothing in it is
    trusted until checked (the certificate and key certificate are public, so an
    impostor can relay them, but cannot open what is sealed to the verified key):

    1. the node certificate chains to the pool CA, names ``node_id``, is valid at ``now``
       and is in ``log`` (:func:`~pqmpc_node.crypto.pki.verify_node_certificate`); when
       ``fingerprint`` is given (a plan's), it is that certificate;
    2. the KEM key certificate of ``epoch`` (default: the newest ``current`` one) is
       signed by that certificate's key, names ``node_id``, is valid and is in ``log``
       (:func:`verify_kem_key_certificate`).

    Raises a :class:`~pqmpc_node.crypto.pki.CertificateError` whose ``reason`` names the
    failed step.
    """
    try:
        cert_der = base64.b64decode(str(doc["certificate"]), validate=True)
        entries = [k for k in doc["kemKeys"] if isinstance(k, Mapping)]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedCertificateError(f"the keys document of {node_id} is malformed ({exc})") from None
    node = verify_node_certificate(cert_der, ca_certificate=ca_certificate, suite=suite, now=now,
                                   expected_node_ids={node_id}, log=log)
    if fingerprint is not None and node.fingerprint != fingerprint:
        raise WrongIdentityError(f"node {node_id} presents a certificate other than the plan's")
    wanted = [k for k in entries if (k.get("epoch") == epoch if epoch is not None else k.get("state") == "current")]
    if not wanted:
        what = f"KEM key epoch {epoch}" if epoch is not None else "current KEM key"
        raise MissingKemKeyError(f"node {node_id} publishes no {what}")
    try:
        data = base64.b64decode(str(wanted[-1]["certificate"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise MalformedCertificateError(f"the KEM key certificate of {node_id} is malformed ({exc})") from None
    kem = verify_kem_key_certificate(data, node_certificate=cert_der, ca_certificate=ca_certificate, suite=suite,
                                     expected_node_id=node_id, log=log, now=now)
    if epoch is not None and kem.epoch != epoch:
        raise WrongIdentityError(f"node {node_id} labels KEM key epoch {kem.epoch} as epoch {epoch}")
    return VerifiedKeys(node, kem)


@dataclass(frozen=True)
class KeyRotationPolicy:
    """``spec.keys.rotation``: key lifetime, when to prepare the next, grace after retiring."""

    duration: dt.timedelta
    renew_before: dt.timedelta
    grace_period: dt.timedelta

    def __post_init__(self) -> None:
        if not dt.timedelta(0) < self.renew_before < self.duration:
            raise ValueError("renew_before must be positive and shorter than duration")
        if self.grace_period < dt.timedelta(0):
            raise ValueError("grace_period must not be negative")


class KeyState(str, enum.Enum):
    """Where a key epoch is in its life."""

    NEXT = "next"
    CURRENT = "current"
    RETIRING = "retiring"


@dataclass
class _Slot:
    keypair: KemKeyPair = field(repr=False)
    certificate: KemKeyCertificate
    state: KeyState
    retired_at: dt.datetime | None = None


@dataclass(frozen=True)
class RotationReport:
    """What one :meth:`KemKeyRing.step` did; new certificates must be logged by the caller."""

    prepared: tuple[KemKeyCertificate, ...] = ()
    activated: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()


class KemKeyRing:
    """A node's KEM keys by epoch: current, next and retiring (pure: ``now`` is passed in)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        identity: NodeIdentity,
        policy: KeyRotationPolicy,
        rng: Rng,
    ) -> None:
        self.node_id = node_id
        self._identity = identity
        self.policy = policy
        self._rng = rng
        self._slots: dict[int, _Slot] = {}
        self._fences: dict[SessionId, int] = {}
        self._next_epoch = 1

    def __repr__(self) -> str:
        return f"KemKeyRing(node_id={self.node_id!r}, states={self.states()!r})"

    @property
    def suite(self) -> Suite:
        """The identity's suite."""
        return self._identity.suite

    def states(self) -> dict[int, KeyState]:
        """Epoch → state for every private key still held."""
        return {e: s.state for e, s in sorted(self._slots.items())}

    def certificate(self, state: KeyState) -> KemKeyCertificate | None:
        """The key certificate in ``state`` (the newest, for ``retiring``)."""
        found = [s.certificate for e, s in sorted(self._slots.items()) if s.state is state]
        return found[-1] if found else None

    def _new_slot(self, now: dt.datetime, state: KeyState, start: dt.datetime) -> KemKeyCertificate:
        epoch = self._next_epoch
        self._next_epoch += 1
        kp = KemKeyPair.from_seed(self.suite.envelope_kem, self._rng(32))
        cert = KemKeyCertificate.issue(
            self._identity, node_id=self.node_id, epoch=epoch, keypair=kp,
            not_before=now, not_after=start + self.policy.duration + self.policy.grace_period,
        )
        self._slots[epoch] = _Slot(kp, cert, state)
        return cert

    def step(self, now: dt.datetime) -> RotationReport:
        """Advance the rotation state machine to ``now``.

        Steps: (1) no current key → create one; (2) within ``renew_before`` of the
        current key's rotation time and no next key → prepare the next (publish it so
        clients can fetch it early); (3) rotation time reached → current becomes
        retiring, next becomes current; (4) drop retiring keys past their grace period
        that no fence holds.
        """
        prepared: list[KemKeyCertificate] = []
        activated: list[int] = []
        current = self._find(KeyState.CURRENT)
        if current is None:
            prepared.append(self._new_slot(now, KeyState.CURRENT, now))
            activated.append(prepared[-1].epoch)
            current = self._find(KeyState.CURRENT)
        assert current is not None  # invariant: created just above
        rotate_at = dt.datetime.fromtimestamp(current.certificate.not_after, dt.timezone.utc) - self.policy.grace_period
        if now >= rotate_at - self.policy.renew_before and self._find(KeyState.NEXT) is None:
            prepared.append(self._new_slot(now, KeyState.NEXT, rotate_at))
        nxt = self._find(KeyState.NEXT)
        if now >= rotate_at and nxt is not None:
            current.state, current.retired_at = KeyState.RETIRING, now
            nxt.state = KeyState.CURRENT
            activated.append(nxt.certificate.epoch)
        dropped = []
        for epoch, slot in list(self._slots.items()):
            if slot.state is KeyState.RETIRING and not self._usable(epoch, slot, now):
                del self._slots[epoch]
                dropped.append(epoch)
        return RotationReport(tuple(prepared), tuple(activated), tuple(dropped))

    def _find(self, state: KeyState) -> _Slot | None:
        for slot in self._slots.values():
            if slot.state is state:
                return slot
        return None

    def _usable(self, epoch: int, slot: _Slot, now: dt.datetime) -> bool:
        if slot.state is not KeyState.RETIRING or slot.retired_at is None:
            return True
        if epoch in self._fences.values():
            return True
        return now < slot.retired_at + self.policy.grace_period

    def fence(self, session_id: SessionId, epoch: int) -> None:
        """Keep ``epoch``'s private key while session ``session_id`` runs."""
        if epoch not in self._slots:
            raise KeyRetiredError(f"cannot fence epoch {epoch} for session {session_id}: key no longer held")
        self._fences[session_id] = epoch

    def release(self, session_id: SessionId) -> None:
        """Drop session ``session_id``'s fence (idempotent); the next :meth:`step` may drop keys."""
        self._fences.pop(session_id, None)

    def keypair_for(self, epoch: int, *, now: dt.datetime) -> KemKeyPair:
        """The key pair of ``epoch``, refusing keys past their grace period."""
        if epoch <= 0 or epoch >= self._next_epoch:
            raise UnknownEpochError(f"node {self.node_id} has no KEM key epoch {epoch}; check the envelope's target")
        slot = self._slots.get(epoch)
        if slot is None or not self._usable(epoch, slot, now):
            raise KeyRetiredError(f"KEM key epoch {epoch} of node {self.node_id} is retired or unknown; reseal to the current key")
        return slot.keypair

