"""Session plans: what the operator tells the chosen nodes to compute, signed with ML-DSA.

A :class:`SessionPlan` is the operator's decision for one MPCSession: which nodes are
parties (in order, with their addresses, certificate fingerprints and KEM key epochs),
the sharing, threshold and security, the program, the input owners (their ML-DSA
identity keys and declared fields), the output recipients (their KEM public keys and
allow-lists), the deadline and the plan's own validity window.

Wire form (``POST /v1/sessions`` body)::

    {"plan": {...canonical fields...}, "signature": "<base64>", "signer": "<hex>"}

``signature`` is ML-DSA over :func:`canonical_bytes` of ``plan`` under the context
string :data:`PLAN_SIGNATURE_CONTEXT`; ``signer`` is the SHA-256 of the signer's raw
public key (a hint; the node checks against the key it trusts, never the hint alone).
Canonical bytes: JSON with sorted keys, ``(",", ":")`` separators, ASCII only.

Checks a node makes, in order (:func:`verify_signed_plan`), each with its own error:
shape (:class:`MalformedPlanError`), signature (:class:`UnsignedPlanError`,
:class:`BadPlanSignatureError`), pool (:class:`ForeignPlanError`), time
(:class:`ExpiredPlanError`), membership (:class:`NotAPartyError`). Staleness against
a plan already held (:class:`StalePlanError`) is :func:`check_supersedes`.

Preprocessing (a trusted dealer: the operator) does not travel in the plan: the dealer
posts each party its *own* material, sealed to that party's KEM key and signed with the
plan-signing key (:func:`pqmpc_node.dealer.deal`), so no node ever holds another
party's seed. ``preprocessing.sealedSeeds`` (one seed shared by all parties, from an
earlier version) is still parsed and signed for compatibility, but nothing seals or
opens it any more: any node holding a shared seed could derive every party's triples
and unmask the inputs.

Cancellation (``POST /v1/sessions/{id}/cancel`` body, :func:`sign_cancel`)::

    {"cancel": {"format": ..., "sessionId": ..., "planDigest": ..., "issuedAt": <unix>},
     "signature": "<base64>", "signer": "<hex>"}

signed with the same plan-signing key under :data:`CANCEL_SIGNATURE_CONTEXT` (a
different context, so no plan signature can pass for a cancel or the other way round).
:func:`verify_cancel` checks shape, signature, session, plan digest and age, in that
order. A replayed cancel can only cancel the very session and plan version it names,
within its five minutes, which is what its signer asked for anyway.

Pure: no I/O; the clock is a ``now`` argument and randomness is passed in.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NewType, cast

from cryptography.exceptions import InvalidSignature

from pqmpc_node.crypto.suites import MLDSAPrivateKey, MLDSAPublicKey, SuiteName
from pqmpc_node.mpc.numerics import DEFAULT_MAX_ROWS_PER_OWNER, RowBound
from pqmpc_node.mpc.prss import MAX_PARTIES as PRSS_MAX_PARTIES
from pqmpc_node.mpc.programs import ExecutionPlan, compile_program

__all__ = [
    "BadPlanSignatureError",
    "CANCEL_FORMAT",
    "CANCEL_SIGNATURE_CONTEXT",
    "DEALER_FREE",
    "CancelMismatchError",
    "SessionCancel",
    "StaleCancelError",
    "ExpiredPlanError",
    "FieldDecl",
    "ForeignPlanError",
    "InputRole",
    "MalformedPlanError",
    "NotAPartyError",
    "OPERATOR_SENDER",
    "PLAN_FORMAT",
    "PLAN_SIGNATURE_CONTEXT",
    "PREPROCESSING_PROVIDERS",
    "Preprocessing",
    "PlanError",
    "PlanInput",
    "PlanOutput",
    "PlanParty",
    "SessionId",
    "SessionPlan",
    "SignedPlan",
    "StalePlanError",
    "UnsignedPlanError",
    "canonical_bytes",
    "check_supersedes",
    "parse_signed_plan",
    "sign_plan",
    "sign_cancel",
    "signer_fingerprint",
    "verify_cancel",
    "verify_signed_plan",
]

SessionId = NewType("SessionId", str)
PLAN_SIGNATURE_CONTEXT = b"pqmpc/v1/session-plan"
PLAN_FORMAT = "pqmpc.io/plan/v1"
CANCEL_SIGNATURE_CONTEXT = b"pqmpc/v1/session-cancel"
CANCEL_FORMAT = "pqmpc.io/cancel/v1"
MAX_CANCEL_BYTES = 64 * 1024
MAX_CANCEL_MESSAGE = 2000
"""The longest reason message a cancel carries (characters)."""
OPERATOR_SENDER = "operator"
"""Envelope sender name of the operator (it seals dealt preprocessing with its plan-signing key)."""
MAX_PLAN_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,126}[A-Za-z0-9])?$")
InputRole = Literal["data", "model"]
Sharing = Literal["additive", "shamir"]
Security = Literal["semi-honest", "malicious"]
Preprocessing = Literal["dealer", "prss", "ot"]
"""Who makes the session's correlated randomness: the operator as trusted dealer, or the
parties themselves — with PRSS and degree reduction (``prss``: honest-majority Shamir) or
with oblivious transfer (``ot``: additive n-of-n, any n >= 2, dishonest majority)."""
PREPROCESSING_PROVIDERS: tuple[Preprocessing, ...] = ("dealer", "prss", "ot")
DEALER_FREE: frozenset[Preprocessing] = frozenset({"prss", "ot"})
"""The providers whose material the parties make themselves: nothing is dealt, no seed travels."""


class PlanError(ValueError):
    """A plan was refused; ``reason`` is a stable label (metrics, JSON error bodies)."""

    reason: ClassVar[str] = "invalid_plan"


class MalformedPlanError(PlanError):
    """Missing, mistyped or inconsistent fields."""

    reason = "malformed"


class UnsignedPlanError(PlanError):
    """No signature at all."""

    reason = "unsigned"


class BadPlanSignatureError(PlanError):
    """A signature that does not verify under the operator's plan-signing key."""

    reason = "bad_signature"


class ForeignPlanError(PlanError):
    """A plan for another pool."""

    reason = "foreign_pool"


class ExpiredPlanError(PlanError):
    """Past its ``not_after`` (or issued in the future)."""

    reason = "expired"


class StalePlanError(PlanError):
    """Older than (or conflicting with) a plan this node already holds for the session."""

    reason = "stale"


class NotAPartyError(PlanError):
    """The plan does not name this node as a party."""

    reason = "not_a_party"


class StaleCancelError(PlanError):
    """A cancel request issued too long ago, or in the future."""

    reason = "stale_cancel"


class CancelMismatchError(PlanError):
    """A cancel request for another session, or for another version of its plan."""

    reason = "cancel_mismatch"


def _b64d(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedPlanError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPlanError(f"{what} is not valid base64") from None


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise MalformedPlanError(f"{what} must be a name of 1-128 letters, digits, '-', '_' or '.', got {value!r}")
    return value


def _int(value: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MalformedPlanError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _num(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedPlanError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedPlanError(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedPlanError(f"{what} must be a list")
    return value


def canonical_bytes(data: Any) -> bytes:
    """The canonical JSON encoding that plan signatures cover."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@dataclass(frozen=True)
class PlanParty:
    """One party of the session: a certified node, where to reach it, which KEM key epoch."""

    index: int
    node_id: str
    address: str
    dns_name: str
    peer_port: int
    api_port: int
    cert_fingerprint: str
    kem_epoch: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "nodeId": self.node_id, "address": self.address, "dnsName": self.dns_name,
            "peerPort": self.peer_port, "apiPort": self.api_port, "certFingerprint": self.cert_fingerprint,
            "kemEpoch": self.kem_epoch,
        }

    @classmethod
    def from_json(cls, raw: Any) -> PlanParty:
        o = _obj(raw, "party")
        fp = o.get("certFingerprint")
        if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
            raise MalformedPlanError("party certFingerprint must be 64 lowercase hex digits (SHA-256 of the DER)")
        addr = o.get("address")
        if not isinstance(addr, str) or not addr or len(addr) > 253:
            raise MalformedPlanError("party address must be a host name or IP address")
        dns = o.get("dnsName", "")
        if not isinstance(dns, str) or len(dns) > 253:
            raise MalformedPlanError("party dnsName must be a string")
        return cls(
            index=_int(o.get("index"), "party index", 0, 1023),
            node_id=_name(o.get("nodeId"), "party nodeId"),
            address=addr,
            dns_name=dns,
            peer_port=_int(o.get("peerPort"), "party peerPort", 1, 65535),
            api_port=_int(o.get("apiPort"), "party apiPort", 1, 65535),
            cert_fingerprint=fp,
            kem_epoch=_int(o.get("kemEpoch"), "party kemEpoch", 1),
        )


@dataclass(frozen=True)
class FieldDecl:
    """A declared input field and its accepted range (checked inside MPC)."""

    name: str
    min: float
    max: float
    decimals: int | None = None
    """Units of ``10^-decimals`` (aggregates); the operator resolves an automatic choice before signing."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "min": self.min, "max": self.max}
        if self.decimals is not None:
            out["decimals"] = self.decimals
        return out

    @classmethod
    def from_json(cls, raw: Any) -> FieldDecl:
        o = _obj(raw, "field")
        dec = o.get("decimals")
        f = cls(_name(o.get("name"), "field name"), _num(o.get("min"), "field min"), _num(o.get("max"), "field max"),
                None if dec is None else _int(dec, "field decimals", 0, 9))
        if f.min > f.max:
            raise MalformedPlanError(f"field {f.name!r} has min {f.min} > max {f.max}")
        return f


@dataclass(frozen=True)
class PlanInput:
    """An input owner: its ML-DSA identity key (raw, base64 on the wire) and what it supplies."""

    owner: str
    identity: bytes = field(repr=False)
    role: InputRole
    fields: tuple[FieldDecl, ...]

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "identity": _b64e(self.identity), "role": self.role,
                "fields": [f.to_json() for f in self.fields]}

    @classmethod
    def from_json(cls, raw: Any) -> PlanInput:
        o = _obj(raw, "input")
        role = o.get("role", "data")
        if role not in ("data", "model"):
            raise MalformedPlanError(f"input role must be 'data' or 'model', got {role!r}")
        fields = tuple(FieldDecl.from_json(f) for f in _list(o.get("fields", []), "input fields"))
        if role == "data" and not fields:
            raise MalformedPlanError("a data input must declare at least one field")
        return cls(_name(o.get("owner"), "input owner"), _b64d(o.get("identity"), "input identity"),
                   cast(InputRole, role), fields)


@dataclass(frozen=True)
class PlanOutput:
    """An output recipient: its KEM public key (raw X-Wing bytes) and the outputs it may receive."""

    recipient: str
    kem_public_key: bytes = field(repr=False)
    allow: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "kemPublicKey": _b64e(self.kem_public_key), "allow": list(self.allow)}

    @classmethod
    def from_json(cls, raw: Any) -> PlanOutput:
        o = _obj(raw, "output")
        allow = _list(o.get("allow"), "output allow")
        if not allow or not all(isinstance(a, str) and 0 < len(a) <= 256 for a in allow):
            raise MalformedPlanError("output allow must be a non-empty list of output names such as 'mean(amount)'")
        return cls(_name(o.get("recipient"), "output recipient"), _b64d(o.get("kemPublicKey"), "output kemPublicKey"),
                   tuple(allow))


@dataclass(frozen=True)
class SessionPlan:
    """The operator's signed decision for one session (see the module docstring)."""

    session_id: SessionId
    pool: str
    namespace: str
    generation: int
    issued_at: int
    not_after: int
    deadline: int
    parties: tuple[PlanParty, ...]
    sharing: Sharing
    threshold: int
    security: Security
    program: Mapping[str, Any] = field(hash=False)
    inputs: tuple[PlanInput, ...]
    outputs: tuple[PlanOutput, ...]
    sealed_dealer_seeds: Mapping[str, bytes] = field(default_factory=dict, hash=False, repr=False)
    frac_bits: int = 16
    max_rows_per_owner: int = DEFAULT_MAX_ROWS_PER_OWNER
    suite: SuiteName = SuiteName.PQ_DEFAULT
    """The pool's algorithm suite: owners sign inputs and nodes certify keys with its algorithms."""
    preprocessing: Preprocessing = "dealer"
    """The provider of correlated randomness (:data:`Preprocessing`); signed like every term."""
    inputs_held_by: tuple[int, ...] = ()
    """A re-run (:mod:`pqmpc_node.rerun`): the parties that kept every owner's input from the failed
    generation before; the other parties are replacements that get their shares by resharing
    (:mod:`pqmpc_node.input_resharing`) and take no envelopes. Empty: owners submit as usual."""

    # -- derived views ------------------------------------------------------------
    def party_of(self, node_id: str) -> PlanParty:
        """This node's party entry; :class:`NotAPartyError` when absent."""
        for p in self.parties:
            if p.node_id == node_id:
                return p
        raise NotAPartyError(f"session {self.session_id} does not place node {node_id!r}; ask the operator to re-plan")

    def is_replacement(self, party: int) -> bool:
        """Whether ``party`` is a re-run's replacement: it gets its input shares by resharing, not from owners."""
        return bool(self.inputs_held_by) and party not in self.inputs_held_by

    def input_of(self, owner: str) -> PlanInput:
        """The input entry of ``owner``; :class:`KeyError` when absent."""
        for i in self.inputs:
            if i.owner == owner:
                return i
        raise KeyError(owner)

    def output_of(self, recipient: str) -> PlanOutput:
        """The output entry of ``recipient``; :class:`KeyError` when absent."""
        for o in self.outputs:
            if o.recipient == recipient:
                return o
        raise KeyError(recipient)

    def data_fields(self) -> tuple[FieldDecl, ...]:
        """The fields data owners share, in declaration order (every data owner declares the same)."""
        for i in self.inputs:
            if i.role == "data":
                return i.fields
        return ()

    def execution_plan(self) -> ExecutionPlan:
        """The program compiled against the plan's fields, row bound and domain (the one place it is compiled).

        Raises :class:`~pqmpc_node.mpc.programs.ProgramError` (or its
        :class:`~pqmpc_node.mpc.numerics.NumericsError`) when the numbers cannot be exact.
        """
        owners = sum(1 for i in self.inputs if i.role == "data")
        return compile_program(self.program, [f.to_json() for f in self.data_fields()],
                               rows=RowBound(owners, self.max_rows_per_owner),
                               ring=self.sharing == "additive" and self.security == "semi-honest",
                               frac_bits=None if "aggregate" in self.program else self.frac_bits)

    def digest(self) -> str:
        """SHA-256 of the canonical bytes, hex (identifies a plan version)."""
        return hashlib.sha256(canonical_bytes(self.to_json())).hexdigest()

    def binding(self) -> tuple[bytes, int]:
        """(raw digest, generation): what every envelope of this session is bound to."""
        return bytes.fromhex(self.digest()), self.generation

    def terms_digest(self) -> str:
        """SHA-256 of everything an input owner consents to: the plan without its generation and times.

        A re-plan with equal terms and no later ``deadline`` (the operator re-sending after a
        restart: same deadline, a fresh signature window) may keep the inputs already
        accepted; any change of parties, program, fields or outputs may not.
        """
        terms = {k: v for k, v in self.to_json().items() if k not in ("generation", "issuedAt", "notAfter", "deadline")}
        return hashlib.sha256(canonical_bytes(terms)).hexdigest()

    # -- JSON ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object (what is signed)."""
        return {
            "format": PLAN_FORMAT,
            "sessionId": self.session_id,
            "pool": self.pool,
            "namespace": self.namespace,
            "generation": self.generation,
            "issuedAt": self.issued_at,
            "notAfter": self.not_after,
            "deadline": self.deadline,
            "parties": [p.to_json() for p in self.parties],
            "sharing": self.sharing,
            "threshold": self.threshold,
            "security": self.security,
            "fracBits": self.frac_bits,
            "maxRowsPerOwner": self.max_rows_per_owner,
            "suite": self.suite.value,
            "program": json.loads(canonical_bytes(self.program)),
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "preprocessing": {
                "provider": self.preprocessing,
                "sealedSeeds": {k: _b64e(v) for k, v in sorted(self.sealed_dealer_seeds.items())},
            },
            # Only a re-run carries it, so every other plan's canonical bytes (and digest) stay as they were.
            **({"inputsHeldBy": list(self.inputs_held_by)} if self.inputs_held_by else {}),
        }

    @classmethod
    def from_json(cls, raw: Any) -> SessionPlan:
        """Parse and check consistency; :class:`MalformedPlanError` on anything wrong."""
        o = _obj(raw, "plan")
        if o.get("format") != PLAN_FORMAT:
            raise MalformedPlanError(f"plan format must be {PLAN_FORMAT!r}, got {o.get('format')!r}")
        parties = tuple(PlanParty.from_json(p) for p in _list(o.get("parties"), "parties"))
        sharing = o.get("sharing")
        if sharing not in ("additive", "shamir"):
            raise MalformedPlanError(f"sharing must be 'additive' or 'shamir', got {sharing!r}")
        security = o.get("security")
        if security not in ("semi-honest", "malicious"):
            raise MalformedPlanError(f"security must be 'semi-honest' or 'malicious', got {security!r}")
        program = _obj(o.get("program"), "program")
        prep = _obj(o.get("preprocessing", {}), "preprocessing")
        provider = prep.get("provider", "dealer")
        if provider not in PREPROCESSING_PROVIDERS:
            raise MalformedPlanError(f"preprocessing provider must be one of {list(PREPROCESSING_PROVIDERS)}, "
                                     f"got {provider!r}")
        seeds = {_name(k, "sealedSeeds key"): _b64d(v, f"sealed seed of {k}")
                 for k, v in _obj(prep.get("sealedSeeds", {}), "sealedSeeds").items()}
        plan = cls(
            session_id=SessionId(_name(o.get("sessionId"), "sessionId")),
            pool=_name(o.get("pool"), "pool"),
            namespace=_name(o.get("namespace"), "namespace"),
            generation=_int(o.get("generation"), "generation", 1),
            issued_at=_int(o.get("issuedAt"), "issuedAt"),
            not_after=_int(o.get("notAfter"), "notAfter"),
            deadline=_int(o.get("deadline"), "deadline"),
            parties=parties,
            sharing=cast(Sharing, sharing),
            threshold=_int(o.get("threshold"), "threshold", 0, 1023),
            security=cast(Security, security),
            frac_bits=_int(o.get("fracBits", 16), "fracBits", 0, 28),  # FixedPoint's own range
            max_rows_per_owner=_int(o.get("maxRowsPerOwner", DEFAULT_MAX_ROWS_PER_OWNER), "maxRowsPerOwner", 1, 10_000_000),
            suite=_suite_name(o.get("suite", SuiteName.PQ_DEFAULT.value)),
            program=json.loads(canonical_bytes(program)),
            inputs=tuple(PlanInput.from_json(i) for i in _list(o.get("inputs"), "inputs")),
            outputs=tuple(PlanOutput.from_json(x) for x in _list(o.get("outputs"), "outputs")),
            sealed_dealer_seeds=seeds,
            preprocessing=cast(Preprocessing, provider),
            inputs_held_by=tuple(_int(p, "inputsHeldBy entry", 0, 1023)
                                 for p in _list(o.get("inputsHeldBy", []), "inputsHeldBy")),
        )
        plan._check_consistency()
        return plan

    def _check_consistency(self) -> None:
        n = len(self.parties)
        if n < 2:
            raise MalformedPlanError(f"a session needs at least 2 parties, the plan names {n}")
        if [p.index for p in self.parties] != list(range(n)):
            raise MalformedPlanError("party indexes must be 0..n-1 in order")
        if len({p.node_id for p in self.parties}) != n:
            raise MalformedPlanError("a node appears twice among the parties")
        if self.sharing == "shamir" and not 0 < self.threshold < n:
            raise MalformedPlanError(f"Shamir threshold must be in 1..{n - 1}, got {self.threshold}")
        if self.preprocessing == "prss" and not (self.sharing == "shamir" and 2 * self.threshold < n <= PRSS_MAX_PARTIES):
            raise MalformedPlanError("dealer-free 'prss' preprocessing needs Shamir sharing with an honest majority "
                                     f"(2t < n) and n <= {PRSS_MAX_PARTIES}, got {self.sharing} with t={self.threshold}, n={n}")
        if self.preprocessing == "ot" and self.sharing != "additive":
            raise MalformedPlanError(f"dealer-free 'ot' preprocessing needs additive sharing (n-of-n), got {self.sharing}; "
                                     "Shamir sessions use 'prss' (honest majority) or the dealer")
        if self.preprocessing in DEALER_FREE and self.sealed_dealer_seeds:
            raise MalformedPlanError(f"a dealer-free ({self.preprocessing!r}) plan carries no dealer seeds, this one "
                                     f"has sealed seeds for {sorted(self.sealed_dealer_seeds)}")
        if self.not_after <= self.issued_at or self.deadline <= self.issued_at:
            raise MalformedPlanError("notAfter and deadline must be later than issuedAt")
        owners = [i.owner for i in self.inputs]
        if not owners or len(set(owners)) != len(owners):
            raise MalformedPlanError("inputs must name distinct owners, at least one")
        data = [i for i in self.inputs if i.role == "data"]
        if not data:
            raise MalformedPlanError("at least one input must have role 'data'")
        if any(i.fields != data[0].fields for i in data):
            raise MalformedPlanError("every data input must declare the same fields (names and ranges)")
        recipients = [o.recipient for o in self.outputs]
        if len(set(recipients)) != len(recipients):
            raise MalformedPlanError("output recipients must be distinct")
        kinds = [k for k in ("aggregate", "linearScore", "mlp") if k in self.program]
        if len(kinds) != 1 or len(self.program) != 1:
            raise MalformedPlanError("program must have exactly one of aggregate, linearScore, mlp")
        if kinds[0] != "aggregate":
            body = self.program[kinds[0]]
            model_owner = body.get("modelOwner") if isinstance(body, Mapping) else None
            models = [i.owner for i in self.inputs if i.role == "model"]
            if models != [model_owner]:
                raise MalformedPlanError(f"{kinds[0]} needs exactly one input with role 'model' owned by its modelOwner")
        if self.inputs_held_by:
            held = self.inputs_held_by
            if self.sharing != "shamir" or self.preprocessing == "dealer":
                raise MalformedPlanError("a re-run with kept inputs (inputsHeldBy) needs Shamir sharing without a "
                                         f"dealer, got {self.sharing} with {self.preprocessing!r}")
            if list(held) != sorted(set(held)) or held[-1] >= n:
                raise MalformedPlanError(f"inputsHeldBy must list distinct party indexes in 0..{n - 1}, ascending")
            if not self.threshold + 1 <= len(held) < n:
                raise MalformedPlanError(f"inputsHeldBy names {len(held)} parties; a re-run needs t + 1 = "
                                         f"{self.threshold + 1} holders and at least one replacement")
        unknown = sorted(set(self.sealed_dealer_seeds) - {p.node_id for p in self.parties})
        if unknown:
            raise MalformedPlanError(f"sealed dealer seeds for nodes that are not parties: {unknown}")


def _suite_name(raw: Any) -> SuiteName:
    try:
        return SuiteName(raw)
    except ValueError:
        raise MalformedPlanError(f"suite must be one of {[n.value for n in SuiteName]}, got {raw!r}") from None


def signer_fingerprint(public_key: MLDSAPublicKey) -> str:
    """SHA-256 of the raw plan-signing public key, hex."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()


@dataclass(frozen=True)
class SignedPlan:
    """A plan with the operator's signature, as posted to nodes."""

    plan: SessionPlan
    signature: bytes = field(repr=False)
    signer: str

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "signature": _b64e(self.signature), "signer": self.signer}


def sign_plan(plan: SessionPlan, key: MLDSAPrivateKey) -> SignedPlan:
    """Sign ``plan`` with the operator's plan-signing key under :data:`PLAN_SIGNATURE_CONTEXT`."""
    plan._check_consistency()
    sig = key.sign(canonical_bytes(plan.to_json()), PLAN_SIGNATURE_CONTEXT)
    return SignedPlan(plan, sig, signer_fingerprint(key.public_key()))


def parse_signed_plan(body: bytes) -> tuple[dict[str, Any], bytes, SessionPlan]:
    """Parse the wire form into (raw plan JSON, signature, plan); signature not yet checked."""
    if len(body) > MAX_PLAN_BYTES:
        raise MalformedPlanError(f"plan is {len(body)} bytes; the limit is {MAX_PLAN_BYTES}")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPlanError(f"plan body is not JSON: {exc}") from None
    o = _obj(raw, "signed plan")
    plan_raw = _obj(o.get("plan"), "plan")
    sig_raw = o.get("signature")
    if sig_raw in (None, ""):
        raise UnsignedPlanError("the plan carries no signature; only operator-signed plans are accepted")
    signature = _b64d(sig_raw, "signature")
    return dict(plan_raw), signature, SessionPlan.from_json(plan_raw)


def verify_signed_plan(
    body: bytes,
    *,
    signer_key: MLDSAPublicKey,
    pool: str,
    node_id: str,
    now: dt.datetime,
    max_clock_skew: dt.timedelta = dt.timedelta(minutes=5),
) -> SessionPlan:
    """Parse and verify a posted plan for this node (see the module docstring for the order)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    raw, signature, plan = parse_signed_plan(body)
    try:
        signer_key.verify(signature, canonical_bytes(raw), PLAN_SIGNATURE_CONTEXT)
    except InvalidSignature:
        raise BadPlanSignatureError(
            "plan signature does not verify under the operator's plan-signing key (wrong signer or altered plan)"
        ) from None
    if plan.pool != pool:
        raise ForeignPlanError(f"plan is for pool {plan.pool!r}; this node belongs to pool {pool!r}")
    t = now.timestamp()
    if t >= plan.not_after:
        raise ExpiredPlanError(f"plan expired at {plan.not_after} (unix); the operator must issue a fresh one")
    if plan.issued_at > t + max_clock_skew.total_seconds():
        raise ExpiredPlanError(f"plan is issued in the future ({plan.issued_at} > now {int(t)}); check clocks")
    plan.party_of(node_id)
    return plan


def check_supersedes(new: SessionPlan, held: SessionPlan | None) -> bool:
    """Whether ``new`` should replace ``held``: True for a newer generation, False for the same plan.

    Raises :class:`StalePlanError` for an older generation, or the same generation with
    different content (a replayed or forged re-plan).
    """
    if held is None:
        return True
    if new.generation < held.generation:
        raise StalePlanError(
            f"plan generation {new.generation} of session {new.session_id} is older than the held {held.generation}"
        )
    if new.generation == held.generation:
        if new.digest() != held.digest():
            raise StalePlanError(f"a different plan with generation {new.generation} is already held; bump the generation")
        return False
    return True


@dataclass(frozen=True)
class SessionCancel:
    """The operator's request to stop one session (one plan version) at its parties.

    ``reason`` and ``message`` (optional, signed like the rest) say why when the operator
    itself ends the session (e.g. ``PreprocessingTooLarge``): the parties fail it with
    them, so an owner polling a node reads the operator's reason. Absent: the MPCSession
    was deleted.
    """

    session_id: SessionId
    plan_digest: str
    issued_at: int
    reason: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object (what is signed); ``reason``/``message`` only when set."""
        doc: dict[str, Any] = {"format": CANCEL_FORMAT, "sessionId": self.session_id, "planDigest": self.plan_digest,
                               "issuedAt": self.issued_at}
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.message is not None:
            doc["message"] = self.message
        return doc

    @classmethod
    def from_json(cls, raw: Any) -> SessionCancel:
        """Parse; :class:`MalformedPlanError` on anything wrong."""
        o = _obj(raw, "cancel")
        if o.get("format") != CANCEL_FORMAT:
            raise MalformedPlanError(f"cancel format must be {CANCEL_FORMAT!r}, got {o.get('format')!r}")
        digest = o.get("planDigest")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise MalformedPlanError("cancel planDigest must be 64 lowercase hex digits (the session's status.planDigest)")
        reason, message = o.get("reason"), o.get("message")
        if reason is not None and not (isinstance(reason, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", reason)):
            raise MalformedPlanError(f"cancel reason must be a CamelCase word of 1-64 letters and digits, got {reason!r}")
        if message is not None and not (isinstance(message, str) and 0 < len(message) <= MAX_CANCEL_MESSAGE):
            raise MalformedPlanError(f"cancel message must be text of 1-{MAX_CANCEL_MESSAGE} characters")
        return cls(SessionId(_name(o.get("sessionId"), "cancel sessionId")), digest,
                   _int(o.get("issuedAt"), "cancel issuedAt"), reason, message)


def sign_cancel(session_id: str, plan_digest: str, *, key: MLDSAPrivateKey, now: dt.datetime,
                reason: str | None = None, message: str | None = None) -> bytes:
    """The signed ``POST /v1/sessions/{id}/cancel`` body for ``session_id`` at plan ``plan_digest`` (why: optional)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cancel = SessionCancel(SessionId(session_id), plan_digest, int(now.timestamp()), reason, message)
    SessionCancel.from_json(cancel.to_json())  # refuse to sign what no node would parse
    sig = key.sign(canonical_bytes(cancel.to_json()), CANCEL_SIGNATURE_CONTEXT)
    return canonical_bytes({"cancel": cancel.to_json(), "signature": _b64e(sig),
                            "signer": signer_fingerprint(key.public_key())})


def verify_cancel(
    body: bytes,
    *,
    signer_key: MLDSAPublicKey,
    session_id: str,
    plan_digest: str,
    now: dt.datetime,
    max_age: dt.timedelta = dt.timedelta(minutes=5),
    max_clock_skew: dt.timedelta = dt.timedelta(seconds=30),
) -> SessionCancel:
    """Check a posted cancel against the session and plan held (see the module docstring for the order).

    Raises :class:`MalformedPlanError`, :class:`UnsignedPlanError`,
    :class:`BadPlanSignatureError`, :class:`CancelMismatchError` or :class:`StaleCancelError`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(body) > MAX_CANCEL_BYTES:
        raise MalformedPlanError(f"cancel body is {len(body)} bytes; the limit is {MAX_CANCEL_BYTES}")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPlanError(f"cancel body is not JSON: {exc}") from None
    o = _obj(raw, "signed cancel")
    cancel_raw = _obj(o.get("cancel"), "cancel")
    cancel = SessionCancel.from_json(cancel_raw)
    if o.get("signature") in (None, ""):
        raise UnsignedPlanError("the cancel carries no signature; only operator-signed cancels are accepted")
    signature = _b64d(o.get("signature"), "signature")
    try:
        signer_key.verify(signature, canonical_bytes(cancel_raw), CANCEL_SIGNATURE_CONTEXT)
    except InvalidSignature:
        raise BadPlanSignatureError(
            "cancel signature does not verify under the operator's plan-signing key (wrong signer or altered request)"
        ) from None
    if not hmac.compare_digest(cancel.session_id.encode(), session_id.encode()):
        raise CancelMismatchError(f"the cancel is signed for session {cancel.session_id!r}, not {session_id!r}")
    if not hmac.compare_digest(cancel.plan_digest.encode(), plan_digest.encode()):
        raise CancelMismatchError(
            f"the cancel names plan {cancel.plan_digest[:12]}, this node holds plan {plan_digest[:12]} of session "
            f"{session_id}; sign the cancel for the plan in GET /v1/sessions/{session_id}"
        )
    t = now.timestamp()
    if cancel.issued_at > t + max_clock_skew.total_seconds():
        raise StaleCancelError(f"the cancel is issued in the future ({cancel.issued_at} > now {int(t)}); check clocks")
    if t - cancel.issued_at > max_age.total_seconds():
        raise StaleCancelError(
            f"the cancel was issued at {cancel.issued_at}, more than {int(max_age.total_seconds())}s ago; sign a fresh one"
        )
    return cancel
