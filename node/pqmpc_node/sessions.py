"""Session execution at one node: plans, sealed inputs, PQ peer mesh, engine run, sealed outputs.

Life of a session here (phases as in ``MPCSession.status.phase``):

1. ``AwaitingInputs``: the operator posts a signed plan (:meth:`SessionManager.accept_plan`);
   the node fences its KEM key epoch so the key is not retired under the session. The
   dealer (the operator) posts this party's own preprocessing material
   (:meth:`SessionManager.accept_preprocessing`, :mod:`pqmpc_node.dealer`): its seed and
   correction stream, sealed to this node and signed with the plan-signing key; no node
   ever receives another party's material. A dealer-free session (plan provider ``prss``
   or ``ot``) gets nothing from the operator and refuses dealt material: its parties make
   their own when the computation starts (step 3).
2. Data owners post sealed input envelopes (:meth:`SessionManager.accept_input`): checked
   (sender key from the plan, signature, epoch, replay), opened, validated against the
   declared fields, and the *sealed* envelope is kept under ``PQMPC_STATE_DIR`` until
   the session ends. When every owner has delivered and the material is here (its row
   counts must match the inputs'), computing starts; the status reports ``inputRows``
   and ``awaitingPreprocessing`` for the dealer.
3. ``Computing``: the party with the lower index dials each peer over a PQ mutual-TLS
   :class:`~pqmpc_node.net.link.PeerLink`, the peer's certificate must name the node
   the plan names with the plan's fingerprint; the engine runs the program over a
   :class:`~pqmpc_node.net.pq_channel.PqChannel` (:func:`pqmpc_node.engine.execute`:
   owners' inputs authenticated, program, every opening MAC-checked before outputs).
   The attempt's preprocessing provider is made first: the dealt material, or a
   dealer-free provider agreed with the live parties over the same links
   (:class:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider` for ``prss``,
   :class:`~pqmpc_node.mpc.ot.provider.OtProvider` for ``ot``: ML-KEM base OTs, then OT
   extension as the program consumes triples).
   A lost peer aborts an additive session (every owner's input stays secret: nothing
   unmasked was opened, no output released); a Shamir session restarts the computation
   (next attempt, fresh round tags, the next attempt's fresh material) with the
   remaining parties while at least ``t + 1`` remain and material is left. A failed
   check aborts and sends the peers an abort notice (they stop with ``peer-abort``);
   the status names the check (``failedCheck``) and, where the evidence is the
   culprit's own message, the culprit (``blamedParties``).
4. ``Succeeded``: each recipient's allowed outputs — this party's shares, with its shares
   of per-output MAC keys and tags in malicious sessions — are sealed to its KEM key,
   signed with the node identity key, and served at ``/v1/sessions/{id}/outputs``; no
   node ever holds an output in the clear. Or ``Failed`` with a reason. Fences are
   released and the stored envelopes deleted.
5. Cancelled (the MPCSession was deleted): the operator posts a cancel signed with the
   plan-signing key (:meth:`SessionManager.cancel`, :func:`pqmpc_node.plan.verify_cancel`);
   the run stops, and the session ends ``Failed`` with reason ``cancelled`` as in step 4.

Restart: identity and KEM keys live in memory only, so a restarted node is a new node
(new CSR) and envelopes sealed to the old KEM key cannot be opened; the operator
re-plans and owners resubmit. See docs/node.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import hmac
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pqmpc_node.crypto.envelopes import (
    EnvelopeError,
    EnvelopeHeader,
    MalformedEnvelopeError,
    ReplayError,
    ReplayGuard,
    SealedEnvelope,
    key_fingerprint,
    open_envelope,
    seal_envelope,
)
from pqmpc_node.crypto.kemkeys import KeyRetiredError, kem_public_key_from_bytes
from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.crypto.suites import MLDSAPublicKey
from pqmpc_node.dealer import (
    PartyMaterial,
    PreprocessingError,
    PreprocessingMismatchError,
    open_preprocessing,
    party_provider,
)
from pqmpc_node.engine import CompiledSession, PartyInputs, RunOutcome, compile_session, execute
from pqmpc_node.keystore import NodeKeys
from pqmpc_node.metrics import NodeMetrics
from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.channel import LostPartyError
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Domain
from pqmpc_node.mpc.errors import MacCheckError, PeerAbortedError
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.honest_majority import HonestMajorityProvider
from pqmpc_node.mpc.ot.provider import OtProvider
from pqmpc_node.mpc.preprocessing import AnyProvider
from pqmpc_node.mpc.sharing import AdditiveScheme, ShamirScheme
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.inputs import OwnerShares
from pqmpc_node.mpc.programs import ModelOutOfRangeError, ProgramError, model_shapes
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.link import STREAM_LIMIT, LinkClosed, LinkConfig, LinkRefused, PeerLink
from pqmpc_node.crypto.transparency import LogForkError, require_same_history
from pqmpc_node.net.pq_channel import HELLO_TAG, Hello, PeerLostError, PqChannel
from pqmpc_node.net.tls import TlsIdentity
from pqmpc_node.payloads import DomainName, InputPayload, OutputPayload, OutputShare, PayloadError, domain_for
from pqmpc_node.plan import (
    DEALER_FREE,
    PlanError,
    SessionPlan,
    check_supersedes,
    verify_cancel,
    verify_signed_plan,
)

__all__ = ["InputRejected", "Phase", "SessionError", "SessionManager", "SessionRuntime", "UnknownSessionError"]

log = logging.getLogger("pqmpc_node.sessions")


class Phase(str, enum.Enum):
    """Where a session is at this node."""

    AWAITING_INPUTS = "AwaitingInputs"
    COMPUTING = "Computing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SessionError(Exception):
    """A session request that cannot be served; ``status`` and ``reason`` shape the HTTP answer."""

    def __init__(self, message: str, *, reason: str, status: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.extra = extra or {}


class UnknownSessionError(SessionError):
    """No plan for this session id at this node."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is unknown at this node; check the id or wait for the operator's plan",
                         reason="unknown_session", status=404)


class InputRejected(SessionError):
    """An input envelope was refused."""


@dataclass(frozen=True)
class _AttemptProvider:
    """One attempt's preprocessing provider, and what the run does with a dealer-free one.

    A dealer-free provider (``prss``, ``ot``) draws on its context's channel, coins and
    MAC checks, so it is bound to the context that takes it (``bind``); afterwards the
    node counts the material it made (``made``: kind -> count, public numbers). Dealt
    material needs neither.
    """

    provider: AnyProvider
    bind: Callable[[MPCContext], None] | None = None
    made: Callable[[], dict[str, int]] | None = None


def _prss_made(provider: HonestMajorityProvider) -> dict[str, int]:
    st = provider.stats
    return {"triples": st.triples, "bits": st.bits, "reduced": st.reduced_elements}


def _ot_made(provider: OtProvider) -> dict[str, int]:
    st = provider.stats
    return {"triples": st.triples, "bits": st.bits, "extended_ots": st.extended_ots, "base_ots": st.base_ots}


def _lost_detail(exc: LostPartyError) -> str:
    """The cause of a lost party, without the ``lost party N:`` prefix a re-raise adds again."""
    return str(exc).removeprefix(f"lost party {exc.peer}: ")


ADDITIVE_LOST = ("additive sharing needs every party, so the session ends here; every owner's input is kept "
                 "secret (nothing unmasked was opened, no output was released): create a new session and the "
                 "owners submit again")
"""Why an additive session ends on a lost party (the node's message; the operator's NodeLost says the same)."""


class ForkedPeerError(ValueError):
    """A peer's CA-signed transparency log forks from this node's: the two were shown different histories."""


def _same_input(input_id: str, accepted_id: str) -> bool:
    """Whether an envelope's input id names the content of the input accepted from its owner.

    The client names an input ``input/<owner>/<tag>``, the tag a keyed digest of its
    content (:class:`pqmpc_node.client._InputDerivation`): the same tag is the same
    content submitted again (a re-run of the same command), which is already accepted.
    An untagged id (``input/<owner>``) never matches: its content cannot be told.
    """
    return input_id.count("/") >= 2 and hmac.compare_digest(input_id.encode(), accepted_id.encode())


@dataclass
class SessionRuntime:
    """Mutable state of one session at this node (owned by :class:`SessionManager`)."""

    plan: SessionPlan
    body: bytes = field(repr=False)
    party: int
    started: float
    compiled: CompiledSession = field(repr=False)
    """The plan's program, compiled once when the plan is accepted (:func:`~pqmpc_node.engine.compile_session`)."""
    phase: Phase = Phase.AWAITING_INPUTS
    reason: str = ""
    message: str = ""
    inputs: dict[str, InputPayload] = field(default_factory=dict, repr=False)
    input_digests: dict[str, str] = field(default_factory=dict)
    input_ids: dict[str, str] = field(default_factory=dict)
    """The accepted envelope's input id per owner; the client puts a keyed tag of the content into it."""
    outputs: dict[str, bytes] = field(default_factory=dict, repr=False)
    attempts: int = 0
    live: tuple[int, ...] = ()
    rejected_rows: int | None = None
    blamed_parties: tuple[int, ...] = ()
    failed_check: str = ""
    links: dict[int, PeerLink] = field(default_factory=dict, repr=False)
    incoming: dict[int, asyncio.Future[PeerLink]] = field(default_factory=dict, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    material: PartyMaterial | None = field(default=None, repr=False)
    material_digest: str = ""
    cancelled_by: str = ""

    def cancelled(self) -> bool:
        """Whether the session ended on a cancel (the operator's, or the node's shutdown)."""
        return self.phase is Phase.FAILED and self.reason == "cancelled"

    def input_rows(self) -> dict[str, int]:
        """Rows each data owner delivered (public: every party holds shares of this length)."""
        return {o: p.rows for o, p in self.inputs.items() if p.kind == "rows"}

    def status(self) -> dict[str, Any]:
        """The public status document (no secrets, no results)."""
        p = self.plan
        return {
            "sessionId": p.session_id,
            "generation": p.generation,
            "planDigest": p.digest(),
            "phase": self.phase.value,
            "reason": self.reason,
            "message": self.message,
            "party": self.party,
            "parties": len(p.parties),
            "sharing": p.sharing,
            "security": p.security,
            "inputs": [{"owner": i.owner, "role": i.role, "received": i.owner in self.inputs} for i in p.inputs],
            "inputRows": self.input_rows(),
            "preprocessing": p.preprocessing,
            "preprocessingReceived": self.material is not None,
            "awaitingPreprocessing": p.preprocessing == "dealer" and self.phase is Phase.AWAITING_INPUTS
            and self.material is None and all(i.owner in self.inputs for i in p.inputs),
            "outputsReady": sorted(self.outputs),
            "liveParties": list(self.live),
            "attempts": self.attempts,
            "rejectedRows": self.rejected_rows,
            "blamedParties": list(self.blamed_parties),
            "failedCheck": self.failed_check,
            "deadline": p.deadline,
        }


@dataclass(frozen=True)
class SessionSettings:
    """Tunables of session execution."""

    mesh_timeout_s: float = 30.0
    round_timeout_s: float = 120.0
    backend: str = "numpy"


class SessionManager:
    """All sessions of this node, the peer listener, and the engine runs."""

    def __init__(
        self,
        *,
        node_id: str,
        pool: str,
        keys: NodeKeys,
        signer_key: MLDSAPublicKey,
        metrics: NodeMetrics,
        counters: RefusalCounters,
        state_dir: Path,
        clock: Callable[[], dt.datetime],
        settings: SessionSettings = SessionSettings(),
    ) -> None:
        self.node_id = node_id
        self.pool = pool
        self.keys = keys
        self.signer_key = signer_key
        self.metrics = metrics
        self.counters = counters
        self.state_dir = state_dir
        self.clock = clock
        self.settings = settings
        self.sessions: dict[str, SessionRuntime] = {}
        self.replay = ReplayGuard()
        self._server: asyncio.Server | None = None
        self._accepting: set[asyncio.Task[None]] = set()

    # -- plans ------------------------------------------------------------------------

    def accept_plan(self, body: bytes) -> tuple[SessionRuntime, bool]:
        """Verify and hold a posted plan; returns (runtime, created). Raises :class:`PlanError`/:class:`SessionError`."""
        now = self.clock()
        try:
            plan = verify_signed_plan(body, signer_key=self.signer_key, pool=self.pool, node_id=self.node_id, now=now)
            held = self.sessions.get(plan.session_id)
            if not check_supersedes(plan, held.plan if held else None):
                assert held is not None  # check_supersedes returns False only for a held plan
                return held, False
        except PlanError as exc:
            self.metrics.plans_refused.labels(exc.reason).inc()
            raise
        if plan.suite is not self.keys.suite.name:
            self.metrics.plans_refused.labels("wrong_suite").inc()
            raise SessionError(f"the plan is for suite {plan.suite.value}, but this node's pool runs "
                               f"{self.keys.suite.name.value}", reason="wrong_suite", status=422)
        if held is not None and held.phase is not Phase.AWAITING_INPUTS:
            raise SessionError(f"session {plan.session_id} is already {held.phase.value}; a re-plan cannot replace it",
                               reason="session_running", status=409)
        party = plan.party_of(self.node_id)
        try:
            compiled = compile_session(plan, self.settings.backend)
        except ProgramError as exc:  # the operator compiled it at admission: a plan it signed passes
            raise SessionError(f"the plan's program cannot run exactly: {exc}", reason="bad_program", status=422) from None
        try:
            self.keys.ring.fence(self._fence_id(plan.session_id, party.kem_epoch), party.kem_epoch)
        except KeyRetiredError as exc:
            raise SessionError(str(exc), reason=exc.reason, status=409) from None
        rt = SessionRuntime(plan=plan, body=body, party=party.index, started=time.monotonic(), compiled=compiled,
                            live=tuple(range(len(plan.parties))))
        if held is not None and held.plan.terms_digest() == plan.terms_digest() and plan.deadline <= held.plan.deadline:
            # Same parties, program, fields and outputs, no later deadline (the operator re-sent
            # the plan): the owners consented to these terms, so the inputs accepted stay.
            rt.inputs, rt.input_digests, rt.input_ids = held.inputs, held.input_digests, held.input_ids
        elif held is not None and held.inputs:
            # Other terms: an input is valid only under the plan its owner sealed it for.
            log.info("session %s: plan generation %d changes the session's terms; dropping the %d input(s) "
                     "accepted under generation %d (their owners must submit again)", plan.session_id,
                     plan.generation, len(held.inputs), held.plan.generation)
            self.replay.forget_session(plan.session_id)
        self.sessions[plan.session_id] = rt
        sdir = self._session_dir(plan.session_id)
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "plan.json").write_bytes(body)
        log.info("session %s: plan generation %d accepted, party %d of %d", plan.session_id, plan.generation,
                 party.index, len(plan.parties))
        self._maybe_start(rt)
        return rt, True

    def get(self, session_id: str) -> SessionRuntime:
        rt = self.sessions.get(session_id)
        if rt is None:
            raise UnknownSessionError(session_id)
        return rt

    @staticmethod
    def _fence_id(session_id: str, epoch: int) -> str:
        return f"{session_id}@{epoch}"

    def _session_dir(self, session_id: str) -> Path:
        return self.state_dir / "sessions" / hashlib.sha256(session_id.encode()).hexdigest()[:32]

    # -- inputs -----------------------------------------------------------------------

    def _refuse_repeats(self, rt: SessionRuntime, h: EnvelopeHeader, data: bytes) -> None:
        """Refuse an input this session already holds (the same one: idempotent; another: not replaceable yet)."""
        plan = rt.plan
        if rt.input_digests.get(h.sender) == hashlib.sha256(data).hexdigest():
            # The very envelope accepted before (a client's retry, even after the session ended
            # and its replay ids were forgotten): idempotent, nothing changes.
            raise InputRejected(
                f"input {h.input_id!r} from {h.sender!r} was already accepted in session {rt.plan.session_id!r}",
                reason=ReplayError.reason, status=409, extra={"alreadyAccepted": True},
            )
        if _same_input(h.input_id, rt.input_ids.get(h.sender, "")):  # input_ids outlive the inputs a run consumed
            raise InputRejected(f"{h.sender!r} already delivered this very input (same content) to session "
                                f"{rt.plan.session_id}", reason="already_accepted", status=409,
                                extra={"alreadyAccepted": True})
        if h.sender in rt.inputs:
            raise InputRejected(
                f"{h.sender!r} already delivered a different input to session {rt.plan.session_id}; replacing an accepted "
                "input is not supported yet: to submit other data, the MPCSession must be deleted and created "
                "again (every owner then submits again)", reason="duplicate_input", status=409,
                extra={"alreadyAccepted": False})
        if self.replay.seen(plan.session_id, h.sender, h.input_id):  # the same id, other bytes
            raise InputRejected(
                f"input {h.input_id!r} from {h.sender!r} was already accepted in session {rt.plan.session_id!r}",
                reason=ReplayError.reason, status=409, extra={"alreadyAccepted": False},
            )
        if rt.phase is not Phase.AWAITING_INPUTS:
            raise InputRejected(f"session {rt.plan.session_id} is {rt.phase.value}; inputs are closed",
                                reason="inputs_closed", status=409)

    def _decode_input(self, rt: SessionRuntime, sender: str, plaintext: bytes) -> InputPayload:
        """An opened input's payload, checked against what the plan declares for its owner."""
        plan = rt.plan
        owner = plan.input_of(sender)
        domain: DomainName = domain_for(plan.sharing, plan.security)
        if owner.role == "data":
            payload = InputPayload.decode(plaintext, domain=domain, fields=[f.name for f in owner.fields],
                                          keyed=plan.security == "malicious")
            if payload.kind != "rows":
                raise PayloadError("a data owner must send rows")
            if payload.rows > plan.max_rows_per_owner:
                raise InputRejected(
                    f"{sender!r} sent {payload.rows} rows; the session accepts at most {plan.max_rows_per_owner} "
                    "per owner (spec.maxRowsPerOwner, which the program's numbers are proven for): split the data "
                    "or ask for a session with a larger maxRowsPerOwner", reason="too_many_rows", status=422)
        else:
            shapes = model_shapes(rt.compiled.program)
            payload = InputPayload.decode(plaintext, domain=domain, model_shapes=shapes,
                                          keyed=plan.security == "malicious")
            if payload.kind != "model":
                raise PayloadError("the model owner must send model parameters")
        if rt.material is not None and payload.kind == "rows" and rt.material.rows.get(sender) != payload.rows:
            raise InputRejected(
                f"{sender!r} sent {payload.rows} rows; the session's preprocessing was dealt for "
                f"{rt.material.rows.get(sender)}", reason="rows_mismatch", status=422)
        return payload

    def accept_input(self, session_id: str, data: bytes) -> dict[str, Any]:
        """Check, open and keep (sealed) one input envelope; see the module docstring, step 2."""
        rt = self.get(session_id)
        plan = rt.plan
        try:
            env = SealedEnvelope.from_bytes(data)
            h = env.header
            self._refuse_repeats(rt, h, data)
            senders = {i.owner: self.keys.suite.signature.public_key_from_bytes(i.identity) for i in plan.inputs}
            opened = open_envelope(
                data, suite=self.keys.suite, session_id=plan.session_id, plan=plan.binding(), node_id=self.node_id,
                party_index=rt.party,
                senders=senders, keys=self.keys.ring, replay_guard=ReplayGuard(), now=self.clock(),
            )
            payload = self._decode_input(rt, h.sender, opened.plaintext)
        except EnvelopeError as exc:
            self.metrics.envelopes_refused.labels(exc.reason).inc()
            raise InputRejected(str(exc), reason=exc.reason, status=422 if isinstance(exc, MalformedEnvelopeError) else 403) from None
        except InputRejected as exc:
            self.metrics.envelopes_refused.labels(exc.reason).inc()
            raise
        except (PayloadError, ProgramError, ValueError) as exc:
            self.metrics.envelopes_refused.labels("bad_payload").inc()
            raise InputRejected(f"input does not match the session's declarations: {exc}", reason="bad_payload",
                                status=422) from None
        self.replay.record(plan.session_id, h.sender, h.input_id)
        if h.key_epoch != plan.party_of(self.node_id).kem_epoch:
            self.keys.ring.fence(self._fence_id(plan.session_id, h.key_epoch), h.key_epoch)
        rt.inputs[h.sender] = payload
        rt.input_digests[h.sender] = hashlib.sha256(data).hexdigest()
        rt.input_ids[h.sender] = h.input_id
        inputs_dir = self._session_dir(plan.session_id) / "inputs"
        inputs_dir.mkdir(parents=True, exist_ok=True)
        (inputs_dir / f"{hashlib.sha256(h.sender.encode()).hexdigest()[:32]}.sealed").write_bytes(data)
        self.metrics.envelopes_accepted.inc()
        self._maybe_start(rt)
        return {"sessionId": session_id, "owner": h.sender, "inputId": h.input_id, "keyEpoch": h.key_epoch,
                "accepted": True, "phase": rt.phase.value}

    # -- preprocessing ----------------------------------------------------------------

    def accept_preprocessing(self, session_id: str, body: bytes) -> dict[str, Any]:
        """Verify (the plan signer's signature), open and hold this party's preprocessing material."""
        rt = self.get(session_id)
        if rt.plan.preprocessing != "dealer":
            raise SessionError(f"session {session_id} makes its own preprocessing ({rt.plan.preprocessing!r}, no dealer); "
                               "dealt material is refused", reason="dealer_free_session", status=409)
        digest = hashlib.sha256(body).hexdigest()
        if rt.material is not None:
            if hmac.compare_digest(digest, rt.material_digest):
                return {"sessionId": session_id, "accepted": True, "alreadyAccepted": True, "phase": rt.phase.value}
            raise SessionError(f"session {session_id} already holds preprocessing material", reason="duplicate_preprocessing",
                               status=409)
        if rt.phase is not Phase.AWAITING_INPUTS:
            raise SessionError(f"session {session_id} is {rt.phase.value}; preprocessing is closed",
                               reason="session_running", status=409)
        try:
            material = open_preprocessing(body, rt.plan, suite=self.keys.suite, node_id=self.node_id,
                                          signer_key=self.signer_key, keys=self.keys.ring, now=self.clock())
        except EnvelopeError as exc:
            self.metrics.envelopes_refused.labels(f"preprocessing_{exc.reason}").inc()
            raise SessionError(f"preprocessing refused: {exc}", reason=exc.reason,
                               status=422 if isinstance(exc, MalformedEnvelopeError) else 403) from None
        except PreprocessingError as exc:
            self.metrics.envelopes_refused.labels(f"preprocessing_{exc.reason}").inc()
            raise SessionError(f"preprocessing refused: {exc}", reason=exc.reason,
                               status=409 if exc.reason == "stale_preprocessing" else 422) from None
        have = rt.input_rows()
        wrong = {o: (n, material.rows.get(o)) for o, n in have.items() if material.rows.get(o) != n}
        if wrong:
            raise SessionError(f"preprocessing was dealt for other row counts than the inputs held: {wrong}",
                               reason="rows_mismatch", status=409)
        rt.material, rt.material_digest = material, digest
        log.info("session %s: preprocessing accepted (%d requests, %d correction words)", session_id,
                 len(material.manifest), sum(int(st.size) for st in material.streams))
        self._maybe_start(rt)
        return {"sessionId": session_id, "accepted": True, "phase": rt.phase.value}

    def _maybe_start(self, rt: SessionRuntime) -> None:
        ready = rt.material is not None or rt.plan.preprocessing in DEALER_FREE  # dealer-free: nothing to wait for
        if (rt.phase is Phase.AWAITING_INPUTS and ready
                and all(i.owner in rt.inputs for i in rt.plan.inputs)):
            rt.phase = Phase.COMPUTING
            rt.task = asyncio.get_running_loop().create_task(self._run(rt))

    # -- cancellation -----------------------------------------------------------------

    async def cancel(self, session_id: str, body: bytes) -> dict[str, Any]:
        """Stop a session on the operator's signed request; idempotent, a finished session stays as it is."""
        rt = self.get(session_id)
        try:
            verify_cancel(body, signer_key=self.signer_key, session_id=rt.plan.session_id,
                          plan_digest=rt.plan.digest(), now=self.clock())
        except PlanError as exc:
            self.metrics.plans_refused.labels(f"cancel_{exc.reason}").inc()
            status = {"malformed": 400, "unsigned": 401, "cancel_mismatch": 409}.get(exc.reason, 403)
            raise SessionError(f"cancel refused: {exc}", reason=exc.reason, status=status) from None
        answer = {"sessionId": session_id, "planDigest": rt.plan.digest()}
        if rt.phase in (Phase.SUCCEEDED, Phase.FAILED):
            return {**answer, "cancelled": rt.cancelled(), "alreadyFinished": True, "phase": rt.phase.value,
                    "reason": rt.reason}
        message = "cancelled by the operator (the MPCSession was deleted)"
        rt.cancelled_by = message
        if rt.task is not None and not rt.task.done():
            rt.task.cancel()
            # _run ends the session (Failed/cancelled, fences, envelopes, metric); never
            # await the task itself, whose CancelledError would read as this request's own.
            await asyncio.wait([rt.task], timeout=30.0)
        elif rt.task is None:
            # Not started yet (awaiting inputs or preprocessing): nothing runs, end it here.
            self._fail(rt, "cancelled", message)
            self.metrics.sessions.labels("cancelled").inc()
            self.metrics.session_duration.labels("cancelled").observe(time.monotonic() - rt.started)
            self._end(rt)
        log.info("session %s: cancelled by the operator", session_id)
        return {**answer, "cancelled": rt.cancelled(), "alreadyFinished": False,
                "phase": rt.phase.value, "reason": rt.reason}

    # -- outputs ----------------------------------------------------------------------

    def output_for(self, session_id: str, recipient: str) -> bytes:
        """The sealed output for ``recipient``; refuses recipients the plan does not name."""
        rt = self.get(session_id)
        try:
            rt.plan.output_of(recipient)
        except KeyError:
            raise SessionError(f"{recipient!r} is not an output recipient of session {session_id}",
                               reason="not_a_recipient", status=403) from None
        if rt.phase is Phase.FAILED:
            raise SessionError(f"session {session_id} failed: {rt.message}", reason="session_failed", status=409,
                               extra={"sessionReason": rt.reason})
        if rt.phase is not Phase.SUCCEEDED:
            raise SessionError(f"session {session_id} is {rt.phase.value}; outputs are not ready yet",
                               reason="not_ready", status=409)
        return rt.outputs[recipient]

    # -- peer mesh --------------------------------------------------------------------

    def _link_config(self) -> LinkConfig:
        cert = self.keys.certificate
        return LinkConfig(tls=TlsIdentity(self.keys.identity, cert.certificate, self.keys.ca_certificate),
                          log=self.keys.log, clock=self.clock)

    def _expected_peers(self) -> set[NodeId]:
        return {NodeId(p.node_id) for rt in self.sessions.values() if rt.phase is not Phase.SUCCEEDED
                for p in rt.plan.parties if p.node_id != self.node_id}

    async def start_listener(self, host: str, port: int) -> None:
        """Listen for peer links on ``host:port``."""
        self._server = await asyncio.start_server(self._on_peer, host, port, limit=STREAM_LIMIT)

    async def _on_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        expected = self._expected_peers()
        if not self.keys.certified or not expected:
            writer.close()
            return
        try:
            link = await PeerLink.accept(reader, writer, config=self._link_config(), expected_peers=expected,
                                         counters=self.counters)
        except (LinkRefused, ConnectionError, OSError):
            return
        try:
            hello = Hello.decode(await asyncio.wait_for(link.recv(HELLO_TAG), 10.0))
            rt = self.sessions[hello.session_id]
            party = rt.plan.parties[hello.party]
            att = link.attestation()
            if att.peer_node_id != party.node_id or att.peer_fingerprint != party.cert_fingerprint:
                raise ValueError(f"peer {att.peer_node_id} is not party {hello.party} of the plan")
            self._same_log(party.node_id, hello)
            await link.send(HELLO_TAG, self._hello(rt))
            fut = rt.incoming.setdefault(hello.party, asyncio.get_running_loop().create_future())
            if fut.done():
                raise ValueError(f"party {hello.party} connected twice")
            fut.set_result(link)
        except (ValueError, KeyError, IndexError, TimeoutError, Exception) as exc:  # noqa: BLE001 - any bad hello closes the link
            reason = "log_fork" if isinstance(exc, ForkedPeerError) else "unexpected_session"
            self.counters.count(reason, link.peer_node_id)  # authenticated by the handshake
            log.warning("peer link refused after handshake: %s", exc)
            await link.close()

    def _hello(self, rt: SessionRuntime) -> bytes:
        chain = self.keys.log.chain()
        return Hello(rt.plan.session_id, rt.party, len(chain), chain[-1] if chain else b"").encode()

    def _same_log(self, peer_node: str, hello: Hello) -> None:
        """Refuse a peer whose log head is not in this node's history (when this node's log is at least as long).

        A longer peer log is checked by the peer itself (it receives this node's head).
        """
        chain = self.keys.log.chain()
        if not hello.log_size or hello.log_size > len(chain):
            return
        try:
            require_same_history(chain, chain[: hello.log_size - 1] + (hello.log_head,), what=f"peer {peer_node}")
        except LogForkError:
            self.metrics.log_forks.labels(peer_node).inc()
            log.error("peer %s shows a transparency log that forks from this node's at entry %d: link refused",
                      peer_node, hello.log_size - 1)
            raise ForkedPeerError(f"peer {peer_node}'s transparency log forks from this node's at entry "
                                  f"{hello.log_size - 1} (the pool CA signed two histories)") from None

    async def _dial(self, rt: SessionRuntime, peer: int, deadline: float) -> PeerLink:
        p = rt.plan.parties[peer]
        delay = 0.05
        while True:
            try:
                link = await PeerLink.connect(p.address, p.peer_port, config=self._link_config(),
                                              expected_peer=NodeId(p.node_id), counters=self.counters)
                if link.attestation().peer_fingerprint != p.cert_fingerprint:
                    await link.close()
                    raise LinkRefused(f"peer {p.node_id} presents a certificate other than the plan's", "wrong_fingerprint")
                await link.send(HELLO_TAG, self._hello(rt))
                try:
                    answer = Hello.decode(await asyncio.wait_for(link.recv(HELLO_TAG), 10.0))
                    if answer.session_id != rt.plan.session_id:
                        raise ValueError(f"peer {p.node_id} answered for session {answer.session_id!r}")
                    self._same_log(p.node_id, answer)
                except ForkedPeerError as exc:
                    await link.close()
                    raise PeerLostError(peer, str(exc)) from None  # no retry: the histories will not converge
                except (ValueError, TimeoutError, LinkClosed) as exc:
                    await link.close()
                    raise LinkRefused(f"peer {p.node_id}: {exc}", "bad_hello") from None
                return link
            except (LinkRefused, ConnectionError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise PeerLostError(peer, f"could not link to {p.node_id} at {p.address}:{p.peer_port}: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _mesh(self, rt: SessionRuntime) -> None:
        """Links to every live peer: dial higher indexes, wait for lower ones."""
        deadline = time.monotonic() + self.settings.mesh_timeout_s
        loop = asyncio.get_running_loop()
        for peer in rt.live:
            if peer == rt.party or peer in rt.links:
                continue
            if peer > rt.party:
                rt.links[peer] = await self._dial(rt, peer, deadline)
            else:
                fut = rt.incoming.setdefault(peer, loop.create_future())
                try:
                    rt.links[peer] = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise PeerLostError(peer, f"party {peer} ({rt.plan.parties[peer].node_id}) never linked") from None
            att = rt.links[peer].attestation()
            self.metrics.link_info.labels(att.peer_node_id, att.group, att.signature_algorithm).set(1)

    # -- computation ------------------------------------------------------------------

    async def _run(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        outcome = "failed"
        try:
            remaining = plan.deadline - self.clock().timestamp()
            await asyncio.wait_for(self._attempts(rt), max(1.0, remaining))
            outcome = "succeeded"
            rt.phase = Phase.SUCCEEDED
        except MacCheckError as exc:
            self.metrics.mac_failures.inc()
            rt.failed_check = exc.check  # which check caught it (MAC, canonical element, owner input key...)
            if isinstance(exc, BlamedCheckError):
                rt.blamed_parties = tuple(p for p in exc.blamed_parties if p != rt.party)
            self._fail(rt, "mac_check_failed", str(exc))
            outcome = "mac_check_failed"
        except PreprocessingMismatchError as exc:
            self._fail(rt, "preprocessing_mismatch", str(exc))
            outcome = "preprocessing_mismatch"
        except LostPartyError as exc:
            self._fail(rt, "peer_lost", str(exc))
            outcome = "peer_lost"
        except TimeoutError:
            self._fail(rt, "deadline_exceeded", f"session passed its deadline ({plan.deadline})")
            outcome = "deadline_exceeded"
        except ModelOutOfRangeError as exc:  # the model owner's parameters break the program's proven bounds
            self._fail(rt, "model_out_of_range", str(exc))
            outcome = "model_out_of_range"
        except asyncio.CancelledError:
            self._fail(rt, "cancelled", rt.cancelled_by or "the node is shutting down")
            outcome = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure ends the session with its reason
            log.exception("session %s: engine error", plan.session_id)
            self._fail(rt, "engine_error", f"{type(exc).__name__}: {exc}")
            outcome = "engine_error"
        finally:
            self.metrics.sessions.labels(outcome).inc()
            self.metrics.session_duration.labels(outcome).observe(time.monotonic() - rt.started)
            for link in rt.links.values():
                await link.close()
            rt.links.clear()
            self._end(rt)
            log.info("session %s: %s %s", plan.session_id, rt.phase.value, rt.message)

    def _fail(self, rt: SessionRuntime, reason: str, message: str) -> None:
        rt.phase, rt.reason, rt.message = Phase.FAILED, reason, message

    def _end(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        for p in plan.parties:
            self.keys.ring.release(self._fence_id(plan.session_id, p.kem_epoch))
        for epoch in range(1, self.keys.current_epoch() + 2):
            self.keys.ring.release(self._fence_id(plan.session_id, epoch))
        shutil.rmtree(self._session_dir(plan.session_id) / "inputs", ignore_errors=True)
        rt.inputs.clear()
        self.replay.forget_session(plan.session_id)  # inputs are closed for good; the guard stays bounded
        rt.material = None  # the seed and corrections are single-use

    async def _attempts(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        while True:
            try:
                await self._mesh(rt)
                outcome, ctx, channel = await self._compute(rt)
                # Closing barrier: a peer closes its links only once every party is done, so no
                # in-flight message is cut off by a close (PeerLink drops bytes that share a read
                # with the peer's close_notify).
                await channel.send_many("session/finished", {p: b"" for p in rt.live if p != rt.party})
                await channel.receive_many("session/finished", [p for p in rt.live if p != rt.party])
                channel.release()
                self._record_traffic(plan, channel)
                break
            except LostPartyError as exc:  # a broken link, or a party that stopped answering mid-check
                self.metrics.peers_lost.labels(plan.parties[exc.peer].node_id).inc()
                lost = rt.links.pop(exc.peer, None)
                if lost is not None:
                    await lost.close()
                survivors = tuple(p for p in rt.live if p != exc.peer)
                if plan.sharing != "shamir":
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; {ADDITIVE_LOST}") from None
                if len(survivors) < plan.threshold + 1:
                    raise
                if plan.preprocessing == "prss" and len(survivors) < 2 * plan.threshold + 1:
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; dealer-free multiplication needs 2t + 1 = "
                                        f"{2 * plan.threshold + 1} live parties and only {len(survivors)} remain "
                                        f"(a session survives a lost node only where n >= 2t + 2)") from None
                if plan.preprocessing == "dealer" and (rt.material is None or rt.attempts >= len(rt.material.seeds)):
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; no fresh preprocessing is left for another attempt "
                                        "(a restart never reuses material)") from None
                log.warning("session %s: %s; carrying on with parties %s", plan.session_id, exc, survivors)
                rt.live = survivors
                rt.incoming.pop(exc.peer, None)
        rt.rejected_rows = outcome.result.rejected_rows
        self.metrics.rows_rejected.inc(outcome.result.rejected_rows)
        self._seal_outputs(rt, outcome)

    async def _compute(self, rt: SessionRuntime) -> tuple[RunOutcome, MPCContext, PqChannel]:
        plan = rt.plan
        n = len(plan.parties)
        rt.attempts += 1
        cfg = rt.compiled.config
        domain = cfg.domain()
        channel = PqChannel(party=rt.party, n=n, links={p: rt.links[p] for p in rt.live if p != rt.party},
                            attempt=rt.attempts, round_timeout_s=self.settings.round_timeout_s)
        self.metrics.preprocessing_sessions.labels(plan.preprocessing).inc()
        try:
            attempt = await self._provider(rt, cfg, domain, channel)  # fresh per attempt
            ctx = MPCContext(party=rt.party, channel=channel, domain=domain, scheme=cfg.scheme(),
                             provider=attempt.provider, rng=AesCtrRandom.from_os(), security=plan.security,
                             fixed=FixedPoint(plan.frac_bits), live=rt.live)
            if attempt.bind is not None:
                attempt.bind(ctx)
            outcome = await execute(ctx, rt.compiled.program, rt.compiled.fields, self._party_inputs(rt),
                                    rt.compiled.requests)
            if attempt.made is not None:
                for kind, count in attempt.made().items():
                    self.metrics.preprocessing_material.labels(plan.preprocessing, kind).inc(count)
        except MacCheckError as exc:
            # Tell the others (so they stop on a check too, not on a lost party); a notice
            # received is answered with one, so nobody closes a link under a notice in flight.
            await channel.abort("peer-abort" if isinstance(exc, PeerAbortedError) else exc.check)
            channel.release()
            raise
        except BaseException:
            channel.release()
            raise
        return outcome, ctx, channel

    async def _provider(self, rt: SessionRuntime, cfg: EngineConfig, domain: Domain,
                        channel: PqChannel) -> _AttemptProvider:
        """This attempt's preprocessing: the dealt material, or a dealer-free provider set up now with the live
        parties (PRSS keys for ``prss``; base OTs and OT extension for ``ot``)."""
        plan = rt.plan
        session = f"{plan.session_id}/attempt-{rt.attempts}"
        authenticated = plan.security == "malicious"
        scheme = cfg.scheme()
        if plan.preprocessing == "prss":
            if not isinstance(scheme, ShamirScheme):  # the plan's own consistency check refuses this
                raise ValueError("dealer-free 'prss' preprocessing needs Shamir sharing")
            hm = await HonestMajorityProvider.create(channel, domain=domain, scheme=scheme, live=rt.live,
                                                     session=session, authenticated=authenticated)
            return _AttemptProvider(hm, bind=hm.bind, made=lambda: _prss_made(hm))
        if plan.preprocessing == "ot":
            if not isinstance(scheme, AdditiveScheme):  # the plan's own consistency check refuses this
                raise ValueError("dealer-free 'ot' preprocessing needs additive sharing")
            ot = await OtProvider.create(channel, domain=domain, scheme=scheme, live=rt.live, session=session,
                                         authenticated=authenticated)
            for seconds in ot.stats.base_ot_seconds:
                self.metrics.ot_base_seconds.observe(seconds)
            return _AttemptProvider(ot, bind=ot.bind, made=lambda: _ot_made(ot))
        if rt.material is None:  # _maybe_start waits for it
            raise RuntimeError("dealt preprocessing missing at start")
        return _AttemptProvider(party_provider(plan, rt.material, cfg, domain.xp, attempt=rt.attempts))

    def _party_inputs(self, rt: SessionRuntime) -> PartyInputs:
        """The owners' raw shares held here, as the engine takes them (kept for every attempt)."""
        plan = rt.plan
        names = [f.name for f in plan.data_fields()]
        data = []
        for i in plan.inputs:
            if i.role != "data":
                continue
            p = rt.inputs[i.owner]
            tags = None if p.tags is None else np.stack([p.tags[f] for f in names])
            data.append(OwnerShares(i.owner, np.stack([p.columns[f] for f in names]), tags, p.key))
        model = None
        for i in plan.inputs:
            if i.role == "model":
                p = rt.inputs[i.owner]
                keys = sorted(p.params)
                flat = np.concatenate([p.params[k].reshape(-1) for k in keys])
                tags = None if p.tags is None else np.concatenate([p.tags[k].reshape(-1) for k in keys])
                model = OwnerShares(i.owner, flat, tags, p.key)
        return PartyInputs(data, model)

    def _record_traffic(self, plan: SessionPlan, channel: PqChannel) -> None:
        t = channel.traffic
        for wait in t.round_waits:
            self.metrics.round_latency.observe(wait)
        for peer, waits in t.peer_waits.items():
            histogram = self.metrics.peer_wait.labels(plan.parties[peer].node_id)
            for wait in waits:
                histogram.observe(wait)
        for peer in set(t.sent) | set(t.received):
            node = plan.parties[peer].node_id
            sent, recv = t.sent.get(peer, 0), t.received.get(peer, 0)
            self.metrics.peer_bytes.labels(node, "sent").inc(sent)
            self.metrics.peer_bytes.labels(node, "received").inc(recv)
            self.metrics.traffic_deviation.labels(node).set(abs(recv - sent) / max(sent, 1))

    def _seal_outputs(self, rt: SessionRuntime, outcome: RunOutcome) -> None:
        """Seal each recipient's checked output shares to its KEM key; only what the policy names."""
        plan = rt.plan
        suite = self.keys.suite
        domain = domain_for(plan.sharing, plan.security)
        result = outcome.result
        for out in plan.outputs:
            shares: dict[str, OutputShare] = {}
            for name, share in outcome.delivered.get(out.recipient, {}).items():
                kind: Literal["fixed", "integer"] = "integer" if name in result.integer_outputs else "fixed"
                shares[name] = OutputShare(kind, np.asarray(to_host(share.value), dtype=np.uint64),
                                           None if share.key is None else np.asarray(to_host(share.key), dtype=np.uint64),
                                           None if share.tag is None else np.asarray(to_host(share.tag), dtype=np.uint64))
            public = {name: _jsonable(v) for name, v in result.public.items() if name in out.allow}
            undefined = tuple(sorted(n for n in result.undefined if n in out.allow))
            payload = OutputPayload(plan.session_id, rt.party, domain, plan.sharing, plan.threshold, plan.frac_bits,
                                    shares, public, undefined, result.valid_rows)
            header = EnvelopeHeader(
                suite=suite.name, session_id=plan.session_id, node_id=out.recipient, party_index=rt.party,
                input_id=f"output/{self.node_id}", key_epoch=1, sender=self.node_id,
                sender_key_fingerprint=key_fingerprint(self.keys.identity.public_key),
                plan_digest=plan.binding()[0], generation=plan.generation,
            )
            recipient_key = kem_public_key_from_bytes(suite.envelope_kem, out.kem_public_key)
            sealed = seal_envelope(payload.encode(), suite=suite, header=header, recipient_key=recipient_key,
                                   sender_key=self.keys.identity.private_key)
            rt.outputs[out.recipient] = sealed
            out_dir = self._session_dir(plan.session_id) / "outputs"
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{hashlib.sha256(out.recipient.encode()).hexdigest()[:32]}.sealed").write_bytes(sealed)

    async def close(self) -> None:
        """Stop the listener and cancel running sessions."""
        if self._server is not None:
            self._server.close()
        for rt in self.sessions.values():
            if rt.task is not None and not rt.task.done():
                rt.task.cancel()
                try:
                    await rt.task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                    pass


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v

